// Command perfplot draws docs/PERFORMANCE.md's charts from pstbench's JSON
// reports (pstbench --format json) with gonum/plot. It is its own module so
// that pstd's go.mod does not carry a plotting library's dependencies.
//
//	perfplot -out docs/perf results/*.json
//
// Which chart a report feeds depends on its --label:
//
//	concurrency         throughput.png, latency.png, memory.png (x: --concurrency)
//	batch               issue-cost.png (x: --batch; server CPU per token)
//	stored=N            redeem-history.png (x: N; the median of the repeats)
//	stored=burst        the same chart's "right after a bulk load" point
//
// and a file named bssl.json (written by deploy/perf/bssl.sh) feeds
// bssl.png. Charts without data are not drawn.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/pstd/pstd/cmd/pstbench/report"
)

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("perfplot", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "docs/perf", "directory the PNGs are written to")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "perfplot: name the pstbench JSON reports to plot")
		return 2
	}
	written, err := plotAll(*out, fs.Args())
	for _, w := range written {
		fmt.Fprintln(stdout, w)
	}
	if err != nil {
		fmt.Fprintln(stderr, "perfplot:", err)
		return 1
	}
	return 0
}

// BSSL is deploy/perf/bssl.sh's output: one core, the same batch, measured
// one after the other in one run.
type BSSL struct {
	Measured          string  `json:"measured"`
	Batch             int     `json:"batch"`
	BoringSSLTokPerS  float64 `json:"boringssl_issue_tokens_per_s"`
	PstdTokPerS       float64 `json:"pstd_issue_tokens_per_s"`
	PstdRedeemPerS    float64 `json:"pstd_redeem_per_s"`
	SoftHSMSignPerS   float64 `json:"softhsm_sign_per_s"`
	BoringSSLRedeemPS float64 `json:"boringssl_redeem_per_s,omitempty"`
}

func plotAll(dir string, files []string) ([]string, error) {
	var runs []report.Run
	var bssl *BSSL
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		if filepath.Base(f) == "bssl.json" {
			bssl = new(BSSL)
			if err := json.Unmarshal(b, bssl); err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			continue
		}
		var r report.Run
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if len(r.Phases) == 0 {
			return nil, fmt.Errorf("%s: a pstbench report without phases", f)
		}
		runs = append(runs, r)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var written []string
	save := func(p *plot.Plot, name string) error {
		path := filepath.Join(dir, name)
		if err := p.Save(8*vg.Inch, 4.5*vg.Inch, path); err != nil {
			return err
		}
		written = append(written, path)
		return nil
	}
	charts := []func() (*plot.Plot, string, error){
		func() (*plot.Plot, string, error) { return throughput(labelled(runs, "concurrency")) },
		func() (*plot.Plot, string, error) { return latency(labelled(runs, "concurrency")) },
		func() (*plot.Plot, string, error) { return memory(labelled(runs, "concurrency")) },
		func() (*plot.Plot, string, error) { return issueCost(labelled(runs, "batch")) },
		func() (*plot.Plot, string, error) { return history(runs) },
		func() (*plot.Plot, string, error) { return bsslChart(bssl) },
	}
	for _, c := range charts {
		p, name, err := c()
		if err != nil {
			return written, err
		}
		if p == nil {
			continue
		}
		if err := save(p, name); err != nil {
			return written, err
		}
	}
	return written, nil
}

func labelled(runs []report.Run, label string) []report.Run {
	var out []report.Run
	for _, r := range runs {
		if r.Label == label {
			out = append(out, r)
		}
	}
	return out
}

// series collects y(phase) against x(run) per phase name, x ascending; a
// repeated x keeps the median y.
func series(runs []report.Run, x func(report.Run) float64, y func(report.Phase) float64) map[string]plotter.XYs {
	raw := map[string]map[float64][]float64{}
	for _, r := range runs {
		for _, ph := range r.Phases {
			if raw[ph.Name] == nil {
				raw[ph.Name] = map[float64][]float64{}
			}
			raw[ph.Name][x(r)] = append(raw[ph.Name][x(r)], y(ph))
		}
	}
	out := map[string]plotter.XYs{}
	for name, m := range raw {
		var xs []float64
		for k := range m {
			xs = append(xs, k)
		}
		slices.Sort(xs)
		for _, k := range xs {
			out[name] = append(out[name], plotter.XY{X: k, Y: median(m[k])})
		}
	}
	return out
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	return p
}

// addLines adds one line per name, in name order, with colours and shapes
// from *style on (advanced), so lines of several calls stay apart.
func addLines(p *plot.Plot, s map[string]plotter.XYs, suffix string, style *int) error {
	names := make([]string, 0, len(s))
	for n := range s {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		l, pts, err := plotter.NewLinePoints(s[n])
		if err != nil {
			return err
		}
		l.Color = plotutil.Color(*style)
		l.Dashes = plotutil.Dashes(*style)
		pts.Color = plotutil.Color(*style)
		pts.Shape = plotutil.Shape(*style)
		*style++
		p.Add(l, pts)
		p.Legend.Add(n+suffix, l, pts)
	}
	return nil
}

func concurrency(r report.Run) float64 { return float64(r.Concurrency) }

func throughput(runs []report.Run) (*plot.Plot, string, error) {
	if len(runs) == 0 {
		return nil, "", nil
	}
	p := newPlot("Throughput against concurrency (durable redemption)", "concurrent requests", "tokens per second")
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	err := addLines(p, series(runs, concurrency, func(ph report.Phase) float64 { return ph.TokPerS }), " tokens/s", new(int))
	return p, "throughput.png", err
}

func latency(runs []report.Run) (*plot.Plot, string, error) {
	if len(runs) == 0 {
		return nil, "", nil
	}
	p := newPlot("Latency percentiles against concurrency", "concurrent requests", "milliseconds (log scale)")
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	style := 0
	for _, pc := range []struct {
		name string
		f    func(report.Latency) float64
	}{
		{" p50", func(l report.Latency) float64 { return l.P50 }},
		{" p90", func(l report.Latency) float64 { return l.P90 }},
		{" p99", func(l report.Latency) float64 { return l.P99 }},
	} {
		if err := addLines(p, series(runs, concurrency, func(ph report.Phase) float64 { return pc.f(ph.Latency) }), pc.name, &style); err != nil {
			return nil, "", err
		}
	}
	return p, "latency.png", nil
}

func memory(runs []report.Run) (*plot.Plot, string, error) {
	if len(runs) == 0 {
		return nil, "", nil
	}
	p := newPlot("Resident memory per replica under load (peak, sampled each second)", "concurrent requests", "MiB")
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min = 0
	err := addLines(p, series(runs, concurrency, func(ph report.Phase) float64 {
		peak := 0.0
		for _, s := range ph.Servers {
			peak = max(peak, s.RSSPeak)
		}
		return peak / (1 << 20)
	}), " RSS peak", new(int))
	return p, "memory.png", err
}

func issueCost(runs []report.Run) (*plot.Plot, string, error) {
	var keep []report.Run
	for _, r := range runs {
		for _, ph := range r.Phases {
			if ph.Name == "issue" && ph.TokensPerCPUS > 0 {
				keep = append(keep, report.Run{Batch: r.Batch, Phases: []report.Phase{ph}})
			}
		}
	}
	if len(keep) == 0 {
		return nil, "", nil
	}
	p := newPlot("Issuance: server CPU per token against batch size", "tokens per issuance request (batch)", "pstd CPU microseconds per token")
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min = 0
	p.Legend.Left = false // the costly small batches are top left
	err := addLines(p, series(keep, func(r report.Run) float64 { return float64(r.Batch) },
		func(ph report.Phase) float64 { return 1e6 / ph.TokensPerCPUS }), " CPU µs/token", new(int))
	return p, "issue-cost.png", err
}

// history plots redemption p99 and throughput against the rows stored in
// the key's partition.
func history(runs []report.Run) (*plot.Plot, string, error) {
	var steady, burst []report.Run
	for _, r := range runs {
		v, ok := strings.CutPrefix(r.Label, "stored=")
		if !ok {
			continue
		}
		if v == "burst" {
			burst = append(burst, r)
			continue
		}
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, "", fmt.Errorf("label %q: %w", r.Label, err)
		}
		r.Requests = int(n) // x; Requests is not plotted here
		steady = append(steady, r)
	}
	if len(steady) == 0 {
		return nil, "", nil
	}
	x := func(r report.Run) float64 { return float64(r.Requests) / 1e6 }
	p99 := series(steady, x, func(ph report.Phase) float64 { return ph.Latency.P99 })["redeem"]
	rps := series(steady, x, func(ph report.Phase) float64 { return ph.ReqPerS })["redeem"]
	if len(p99) == 0 || p99[0].X != 0 || p99[0].Y <= 0 || rps[0].Y <= 0 {
		return nil, "", errors.New("redeem-history needs redeem runs labelled stored=0 (the empty case the others are compared with)")
	}
	base99, baseRPS := p99[0].Y, rps[0].Y
	for i := range p99 {
		p99[i].Y /= base99
		rps[i].Y /= baseRPS
	}
	p := newPlot(fmt.Sprintf("Redemption against stored spent tokens, relative to an empty partition (p99 %.0f ms, %.0f req/s)", base99, baseRPS),
		"spent tokens stored in the key's partition (millions)", "ratio to the empty case (median of repeats)")
	p.Title.TextStyle.Font.Size = vg.Points(11)
	p.Legend.Left = false
	p.Y.Min = 0
	p.Y.Max = 2.6 // room for the legend above the data
	style := 0
	if err := addLines(p, map[string]plotter.XYs{"p99 latency": p99, "throughput": rps}, "", &style); err != nil {
		return nil, "", err
	}
	// The bounds, in their series' colours (addLines gave p99 style 0 and
	// throughput style 1: names sort "p99 latency" < "throughput").
	for _, bound := range []struct {
		y     float64
		name  string
		style int
	}{{1.5, "p99 bound: at most 1.5x", 0}, {0.8, "throughput bound: at least 0.8x", 1}} {
		l, err := plotter.NewLine(plotter.XYs{{X: 0, Y: bound.y}, {X: p99[len(p99)-1].X * 1.1, Y: bound.y}})
		if err != nil {
			return nil, "", err
		}
		l.Color = plotutil.Color(bound.style)
		l.Dashes = []vg.Length{vg.Points(2), vg.Points(4)}
		p.Add(l)
		p.Legend.Add(bound.name, l)
	}
	if len(burst) > 0 {
		var b99, brps []float64
		for _, r := range burst {
			b99 = append(b99, r.Phases[0].Latency.P99/base99)
			brps = append(brps, r.Phases[0].ReqPerS/baseRPS)
		}
		// Plotted a tenth beyond the largest steady point: the bulk load
		// added rows on top of it.
		last := p99[len(p99)-1].X * 1.1
		pts := plotter.XYs{{X: last, Y: min(median(b99), p.Y.Max)}, {X: last, Y: median(brps)}}
		sc, err := plotter.NewScatter(pts)
		if err != nil {
			return nil, "", err
		}
		sc.Shape = plotutil.Shape(4)
		sc.Color = color.RGBA{R: 200, A: 255}
		sc.Radius = vg.Points(5)
		p.Add(sc)
		p.Legend.Add(fmt.Sprintf("right after a bulk load, no checkpoint (p99 %.2fx, throughput %.2fx)", median(b99), median(brps)), sc)
	}
	return p, "redeem-history.png", nil
}

func bsslChart(b *BSSL) (*plot.Plot, string, error) {
	if b == nil {
		return nil, "", nil
	}
	p := newPlot(fmt.Sprintf("One core, measured in one run: issuance batch %d and redemption", b.Batch), "", "operations per second (tokens)")
	vals := plotter.Values{b.BoringSSLTokPerS, b.PstdTokPerS, b.PstdRedeemPerS, b.SoftHSMSignPerS}
	names := []string{"BoringSSL issue", "pstd voprf issue", "pstd voprf redeem", "SoftHSM ES256 sign"}
	if b.BoringSSLRedeemPS > 0 {
		vals = append(vals, b.BoringSSLRedeemPS)
		names = append(names, "BoringSSL redeem")
	}
	bars, err := plotter.NewBarChart(vals, vg.Points(40))
	if err != nil {
		return nil, "", err
	}
	bars.Color = plotutil.Color(0)
	p.Add(bars)
	p.NominalX(names...)
	p.Legend.Top = false
	return p, "bssl.png", nil
}
