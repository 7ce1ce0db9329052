// Package report is the JSON document `pstbench --format json` prints, one
// per run. tools/perfplot reads it, so the two cannot drift apart: a field
// renamed here breaks perfplot's build, not just its charts.
package report

import "time"

// Run is one pstbench invocation.
type Run struct {
	Tool        string    `json:"tool"` // "pstbench " + version
	Started     time.Time `json:"started"`
	Label       string    `json:"label,omitempty"` // free text from --label, e.g. "stored=1000000"
	Targets     []string  `json:"targets"`
	Workload    string    `json:"workload"` // issue, redeem, mixed or both
	Batch       int       `json:"batch"`
	Concurrency int       `json:"concurrency"`
	Requests    int       `json:"requests"`
	Phases      []Phase   `json:"phases"`
}

// Phase is one timed phase: every request of it was prepared beforehand and
// every response checked afterwards, outside the timing.
type Phase struct {
	Name     string             `json:"name"` // issue, redeem or mixed
	Requests int                `json:"requests"`
	OK       int                `json:"ok"`
	Statuses map[string]int     `json:"statuses"` // HTTP status → count
	Failures int                `json:"failures"` // transport errors (no HTTP status)
	Tokens   int                `json:"tokens"`   // tokens issued plus tokens redeemed by OK requests
	ElapsedS float64            `json:"elapsed_s"`
	ReqPerS  float64            `json:"requests_per_s"`
	TokPerS  float64            `json:"tokens_per_s"`
	Latency  Latency            `json:"latency_ms"`                   // every request of the phase
	ByKind   map[string]Latency `json:"latency_ms_by_kind,omitempty"` // mixed: issue and redeem apart
	Servers  []Server           `json:"servers"`
	// ServerCPUS is the CPU time the servers spent during the phase: the
	// sum of every target's process_cpu_seconds_total increase plus, with
	// --cpu-user, that of the local processes of that user (PostgreSQL).
	ServerCPUS float64 `json:"server_cpu_s"`
	LocalCPUS  float64 `json:"local_cpu_s,omitempty"` // the --cpu-pid part of ServerCPUS
	LocalPID   int     `json:"local_cpu_pid,omitempty"`
	// TokensPerCPUS is Tokens / ServerCPUS: comparable across machines and
	// independent of what else ran on the load generator.
	TokensPerCPUS float64 `json:"tokens_per_server_cpu_s,omitempty"`
}

// Latency percentiles in milliseconds, exact (from every recorded latency,
// sorted), not bucketed.
type Latency struct {
	Count int     `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
}

// Server is what one target's /metrics said about the phase.
type Server struct {
	URL     string  `json:"url"`
	Metrics string  `json:"metrics_url"`
	CPUS    float64 `json:"cpu_s"`           // process_cpu_seconds_total increase
	RSSPeak float64 `json:"rss_peak_bytes"`  // largest process_resident_memory_bytes seen (sampled each second)
	RSSEnd  float64 `json:"rss_end_bytes"`   // at the end of the phase
	Error   string  `json:"error,omitempty"` // why the metrics could not be read
}
