package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/pstd/pstd/cmd/pstbench/report"
	"github.com/pstd/pstd/db"
	"github.com/pstd/pstd/httpapi"
	"github.com/pstd/pstd/internal/testenv"
	"github.com/pstd/pstd/signer"
	"github.com/pstd/pstd/signer/hsm"
)

// replica is one pstd replica in process: its own pool and HSM session on
// the shared database and token, a public server and an admin server whose
// /metrics carries the process collector, as pstd serve registers it.
type replica struct {
	url, metrics string
}

func startReplicas(t *testing.T, n int) (string, []replica) {
	t.Helper()
	return startReplicasWith(t, n, nil)
}

// startReplicasWith is startReplicas with an issuance policy (nil: none).
func startReplicasWith(t *testing.T, n int, policy httpapi.Policy) (string, []replica) {
	t.Helper()
	ctx := context.Background()
	dbURL := testenv.NewDatabase(t)
	tok := testenv.NewToken(t)
	var out []replica
	for i := range n {
		store, err := db.Open(ctx, dbURL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(store.Close)
		if i == 0 {
			if err := store.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
		}
		h, err := hsm.Open(hsm.Config{ModulePath: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		if err := h.EnsureKEK(ctx); err != nil {
			t.Fatal(err)
		}
		svc, err := signer.New(signer.Config{IssuerOrigin: "https://issuer.example"}, store, h)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(svc.Close)
		if err := svc.EnsureAuditKey(ctx); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if _, err := svc.Rotate(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := svc.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		api := httpapi.New(httpapi.Config{IssuerOrigin: "https://issuer.example", SeparateAdmin: true, Registerer: reg, Gatherer: reg, Policy: policy,
			// One load client from one address on a loaded machine: no per-client share, and waits rather than 503s.
			MaxIssuancePerClient: -1, MaxQueueWait: time.Minute}, svc)
		if err := api.CheckReady(ctx); err != nil {
			t.Fatalf("replica %d not ready: %v", i, err)
		}
		pub := httptest.NewServer(api.Handler())
		t.Cleanup(pub.Close)
		adm := httptest.NewServer(api.AdminHandler())
		t.Cleanup(adm.Close)
		out = append(out, replica{url: pub.URL, metrics: adm.URL + "/metrics"})
	}
	return dbURL, out
}

func countRedemptions(t *testing.T, dbURL string) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM redemptions`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestMixedJSONAcrossReplicas runs a small mixed workload over two replicas
// with metrics on their admin listeners and checks the JSON report
// tools/perfplot reads: every request answered, tokens counted per kind,
// CPU read from both servers, and exactly the redeemed tokens stored.
func TestMixedJSONAcrossReplicas(t *testing.T) {
	dbURL, reps := startReplicas(t, 2)
	var stdout, stderr bytes.Buffer
	code := realMain([]string{
		"--targets", reps[0].url + "," + reps[1].url,
		"--metrics", reps[0].metrics + "," + reps[1].metrics,
		"--workload", "mixed", "--requests", "40", "--batch", "5", "--concurrency", "4",
		"--format", "json", "--label", "smoke",
	}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var r report.Run
	dec := json.NewDecoder(&stdout)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("stdout is not one report: %v\n%s", err, stdout.String())
	}
	if dec.More() {
		t.Fatal("stdout holds more than the JSON report")
	}
	if r.Label != "smoke" || r.Workload != "mixed" || r.Batch != 5 || len(r.Targets) != 2 || len(r.Phases) != 1 {
		t.Fatalf("report header: %+v", r)
	}
	ph := r.Phases[0]
	if ph.Name != "mixed" || ph.Requests != 40 || ph.OK != 40 || ph.Statuses["200"] != 40 || ph.Failures != 0 {
		t.Fatalf("phase: %+v", ph)
	}
	if want := 20*5 + 20; ph.Tokens != want {
		t.Errorf("tokens %d, want %d (20 issuances of 5, 20 redemptions)", ph.Tokens, want)
	}
	if ph.ByKind["issue"].Count != 20 || ph.ByKind["redeem"].Count != 20 {
		t.Errorf("latency by kind: %+v", ph.ByKind)
	}
	l := ph.Latency
	if l.Count != 40 || !(0 < l.P50 && l.P50 <= l.P90 && l.P90 <= l.P99 && l.P99 <= l.P999 && l.P999 <= l.Max) {
		t.Errorf("latency percentiles out of order: %+v", l)
	}
	if len(ph.Servers) != 2 {
		t.Fatalf("servers: %+v", ph.Servers)
	}
	for _, s := range ph.Servers {
		if s.Error != "" || s.CPUS <= 0 || s.RSSPeak <= 0 || s.RSSEnd <= 0 {
			t.Errorf("server figures: %+v", s)
		}
	}
	if ph.ServerCPUS <= 0 || ph.TokensPerCPUS <= 0 {
		t.Errorf("no tokens per server CPU-second: %+v", ph)
	}
	if n := countRedemptions(t, dbURL); n != 20 {
		t.Errorf("%d redemptions stored, want the 20 redeemed", n)
	}
}

// TestMetricsMissingIsReportedNotFatal: a target whose /metrics lacks the
// process collector still gets its load; the report names why there is no
// CPU figure instead of printing zero tokens per CPU-second.
func TestMetricsMissingIsReportedNotFatal(t *testing.T) {
	_, reps := startReplicas(t, 1)
	noProc := httptest.NewServer(nil) // 404 on every path
	t.Cleanup(noProc.Close)
	var stdout, stderr bytes.Buffer
	code := realMain([]string{
		"--targets", reps[0].url, "--metrics", noProc.URL + "/metrics",
		"--workload", "issue", "--requests", "4", "--batch", "2", "--format", "json",
	}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var r report.Run
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatal(err)
	}
	ph := r.Phases[0]
	if ph.OK != 4 || ph.Tokens != 8 {
		t.Fatalf("phase: %+v", ph)
	}
	if ph.Servers[0].Error == "" || ph.ServerCPUS != 0 || ph.TokensPerCPUS != 0 {
		t.Errorf("missing metrics not reported: %+v", ph.Servers[0])
	}
}

// TestRateLimitedIssuerIsNamed: against an issuer that limits issuance per
// address, as pstd does by default, pstbench fails and says which setting
// lifts the limit, whether the limit answered 429 or a partial batch.
func TestRateLimitedIssuerIsNamed(t *testing.T) {
	// 7 tokens per hour for the one address: a batch of 5, a partial batch
	// of 2, then 429s.
	_, reps := startReplicasWith(t, 1, httpapi.NewRateLimit(httpapi.RateLimitConfig{Tokens: 7, Window: time.Hour}))
	var stdout, stderr bytes.Buffer
	code := realMain([]string{
		"--targets", reps[0].url, "--metrics", reps[0].metrics,
		"--workload", "issue", "--requests", "4", "--batch", "5", "--concurrency", "1",
	}, &stdout, &stderr)
	if code != 1 {
		t.Fatalf("exit %d, want 1: %s", code, stderr.String())
	}
	for _, want := range []string{"429:2", "1 issuance responses carried fewer tokens than asked", "PSTD_RATE_LIMIT=0"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}

// TestUsageErrors: bad flags exit 2, --version exits 0.
func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--workload", "burst"},
		{"--format", "xml"},
		{"--targets", "a:1,b:2"},
		{"--targets", "http://a,http://b", "--metrics", "http://a/metrics"},
		{"--requests", "0"},
		{"extra"},
	} {
		var stdout, stderr bytes.Buffer
		if code := realMain(args, &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage); stderr %s", args, code, stderr.String())
		}
	}
	var stdout, stderr bytes.Buffer
	if code := realMain([]string{"--version"}, &stdout, &stderr); code != 0 || !strings.HasPrefix(stdout.String(), "pstbench ") {
		t.Errorf("--version: exit %d, %q", code, stdout.String())
	}
}

func TestParseProcessMetrics(t *testing.T) {
	const text = `# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 3.3554432e+07
# TYPE pstd_redemption_requests_total counter
pstd_redemption_requests_total{result="ok"} 7
`
	cpu, rss, err := parseProcessMetrics(strings.NewReader(text))
	if err != nil || cpu != 12.5 || rss != 33554432 {
		t.Fatalf("got %v %v %v", cpu, rss, err)
	}
	if _, _, err := parseProcessMetrics(strings.NewReader("pstd_up 1\n")); err == nil || !strings.Contains(err.Error(), "process_cpu_seconds_total") {
		t.Errorf("metrics without the process collector: %v", err)
	}
}

// TestLatenciesNearestRank checks the exact percentiles on 1..1000 ms.
func TestLatenciesNearestRank(t *testing.T) {
	var d []time.Duration
	for i := 1000; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	l := latencies(d)
	if l.Count != 1000 || l.P50 != 500 || l.P90 != 900 || l.P99 != 990 || l.P999 != 999 || l.Max != 1000 || l.Mean != 500.5 {
		t.Fatalf("%+v", l)
	}
	if (latencies(nil) != report.Latency{}) {
		t.Error("no latencies must give zeros")
	}
}
