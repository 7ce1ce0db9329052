// Package version reports what a pstd binary was built from: the module
// version, the VCS revision and the Go version, as the Go toolchain records
// them in the binary (runtime/debug.ReadBuildInfo).
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// Info is what a binary was built from.
type Info struct {
	Version   string // module version, or "(devel)" for a build from a checkout
	Revision  string // VCS revision, with "-dirty" if the tree had changes; "unknown" without VCS data
	GoVersion string
}

// Get reads the binary's build information.
func Get() Info {
	in := Info{Version: "(devel)", Revision: "unknown", GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return in
	}
	if v := bi.Main.Version; v != "" {
		in.Version = v
	}
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Revision = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && in.Revision != "unknown" {
		in.Revision += "-dirty"
	}
	return in
}

// String is the line --version prints.
func (in Info) String(binary string) string {
	return fmt.Sprintf("%s %s (commit %s, %s)", binary, in.Version, in.Revision, in.GoVersion)
}

// Collector is the pstd_build_info gauge: always 1, with the build as labels.
func (in Info) Collector() prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "pstd", Name: "build_info",
		Help:        "Always 1; the labels say what this pstd was built from.",
		ConstLabels: prometheus.Labels{"version": in.Version, "revision": in.Revision, "goversion": in.GoVersion},
	})
	g.Set(1)
	return g
}
