// Command pstbench loads one or more PST issuer replicas with real PST v1
// client cryptography: it fetches the key commitment, blinds nonces, sends
// issuance requests, verifies every DLEQ proof and unblinds the tokens, then
// redeems them.
//
// Client crypto costs more CPU than the issuer's, so pstbench prepares the
// requests before each timed phase and checks the responses after it: the
// figures measure the servers, not the load tool. To compare machines it
// reads each server's own process_cpu_seconds_total from /metrics before and
// after a phase and reports tokens per server CPU-second.
//
// All of its load comes from one address: start the pstd replicas under
// test with PSTD_RATE_LIMIT=0, or their per-address issuance limit (on by
// default) refuses it after 30 batches.
//
//	pstbench --targets http://a:8480,http://b:8480 --metrics http://a:9090/metrics,http://b:9090/metrics \
//	         --workload redeem --concurrency 16 --requests 20000 --format json
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/peterbourgon/ff/v3"

	"github.com/pstd/pstd/cmd/pstbench/report"
	"github.com/pstd/pstd/internal/version"
)

type config struct {
	targets     []string
	metrics     []string // one per target; "" derives target+"/metrics"
	workload    string
	batch       int
	concurrency int
	requests    int
	duration    time.Duration
	origin      string
	format      string
	label       string
	cpuPID      int
	// progressOut, when not nil, gets a live progress line: stdout, when it
	// is a terminal (the line is erased before any result is printed).
	progressOut io.Writer
}

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

// realMain returns the exit code: 0 ok or help, 1 failure, 2 usage.
func realMain(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "pstbench:", err)
		return 2
	}
	if cfg == nil { // --version
		fmt.Fprintln(stdout, version.Get().String("pstbench"))
		return 0
	}
	if f, ok := stdout.(*os.File); ok {
		if isatty.IsTerminal(f.Fd()) {
			cfg.progressOut = stdout
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	rep, err := run(ctx, *cfg, stdout)
	if rep != nil && cfg.format == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if jerr := enc.Encode(rep); jerr != nil && err == nil {
			err = jerr
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "pstbench:", err)
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	var cfg config
	var issuer, targets, metrics, mode string
	fs := flag.NewFlagSet("pstbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&issuer, "issuer", "http://localhost:8480", "issuer origin, when --targets is not set")
	fs.StringVar(&targets, "targets", "", "comma-separated issuer origins (replicas); requests go to them in turn")
	fs.StringVar(&metrics, "metrics", "", "comma-separated /metrics URLs, one per target (pstd's admin listener when --admin-listen is set); default: each target's /metrics; \"none\" reads no metrics")
	fs.StringVar(&cfg.workload, "workload", "", "issue, redeem, mixed (issuance and redemption interleaved) or both (an issue phase, then a redeem phase); default: --mode")
	fs.StringVar(&mode, "mode", "both", "older name of --workload")
	fs.IntVar(&cfg.batch, "batch", 10, "tokens asked per issuance request")
	fs.IntVar(&cfg.concurrency, "concurrency", 8, "concurrent requests (closed loop: each worker sends its next request when the last is answered)")
	fs.IntVar(&cfg.requests, "requests", 1000, "requests per timed phase (prepared before timing)")
	fs.DurationVar(&cfg.duration, "duration", 60*time.Second, "upper bound on each timed phase")
	fs.StringVar(&cfg.origin, "redeeming-origin", "https://rp.example", "redeeming-origin put in the client data")
	fs.StringVar(&cfg.format, "format", "text", "text or json (one JSON document on stdout, for tools/perfplot)")
	fs.StringVar(&cfg.label, "label", "", "free text copied into the JSON report, e.g. stored=1000000")
	fs.IntVar(&cfg.cpuPID, "cpu-pid", 0, "also count the CPU time of this local process and its descendants as server CPU, e.g. PostgreSQL's postmaster (first line of $PGDATA/postmaster.pid) when it runs on this machine; Linux only")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := ff.Parse(fs, args, ff.WithEnvVarPrefix("PSTBENCH")); err != nil {
		return nil, err
	}
	if *showVersion {
		return nil, nil
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if targets == "" {
		targets = issuer
	}
	for t := range strings.SplitSeq(targets, ",") {
		t = strings.TrimRight(strings.TrimSpace(t), "/")
		if !strings.HasPrefix(t, "http://") && !strings.HasPrefix(t, "https://") {
			return nil, fmt.Errorf("target %q: want an http:// or https:// origin", t)
		}
		cfg.targets = append(cfg.targets, t)
	}
	switch {
	case metrics == "none":
		cfg.metrics = make([]string, len(cfg.targets))
		for i := range cfg.metrics {
			cfg.metrics[i] = "none"
		}
	case metrics == "":
		for _, t := range cfg.targets {
			cfg.metrics = append(cfg.metrics, t+"/metrics")
		}
	default:
		cfg.metrics = strings.Split(metrics, ",")
		if len(cfg.metrics) != len(cfg.targets) {
			return nil, fmt.Errorf("--metrics names %d URLs for %d targets", len(cfg.metrics), len(cfg.targets))
		}
	}
	if cfg.workload == "" {
		cfg.workload = mode
	}
	switch cfg.workload {
	case "issue", "redeem", "mixed", "both":
	default:
		return nil, fmt.Errorf("--workload %q: want issue, redeem, mixed or both", cfg.workload)
	}
	switch cfg.format {
	case "text", "json":
	default:
		return nil, fmt.Errorf("--format %q: want text or json", cfg.format)
	}
	if cfg.batch < 1 || cfg.concurrency < 1 || cfg.requests < 1 {
		return nil, errors.New("--batch, --concurrency and --requests must be at least 1")
	}
	if cfg.workload == "mixed" && cfg.requests < 2 {
		return nil, errors.New("--workload mixed needs at least 2 requests")
	}
	return &cfg, nil
}

// httpClient allows cfg.concurrency connections to each target.
func httpClient(cfg config) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			MaxIdleConnsPerHost: cfg.concurrency,
			MaxConnsPerHost:     cfg.concurrency,
			ForceAttemptHTTP2:   true,
		},
	}
}

func newReport(cfg config) *report.Run {
	return &report.Run{
		Tool:        version.Get().String("pstbench"),
		Started:     time.Now().UTC().Truncate(time.Second),
		Label:       cfg.label,
		Targets:     cfg.targets,
		Workload:    cfg.workload,
		Batch:       cfg.batch,
		Concurrency: cfg.concurrency,
		Requests:    cfg.requests,
	}
}
