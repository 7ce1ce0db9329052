package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/procfs"

	"github.com/pstd/pstd/cmd/pstbench/report"
)

// monitor reads the servers' own CPU and memory figures: each target's
// process_cpu_seconds_total and process_resident_memory_bytes from its
// /metrics, and, with --cpu-pid, the CPU time of a local process tree.
type monitor struct {
	client  *http.Client
	cfg     config
	mu      sync.Mutex
	rssPeak []float64
}

type snapshot struct {
	cpu   []float64 // per target; NaN-free: valid only where err is nil
	rss   []float64
	err   []error
	local float64 // CPU-seconds of the --cpu-pid process tree
	lerr  error
}

func newMonitor(client *http.Client, cfg config) *monitor {
	return &monitor{client: client, cfg: cfg, rssPeak: make([]float64, len(cfg.targets))}
}

func (m *monitor) snapshot(ctx context.Context) snapshot {
	n := len(m.cfg.targets)
	s := snapshot{cpu: make([]float64, n), rss: make([]float64, n), err: make([]error, n)}
	for i, u := range m.cfg.metrics {
		if u == "none" {
			s.err[i] = errors.New("--metrics none")
			continue
		}
		s.cpu[i], s.rss[i], s.err[i] = scrape(ctx, m.client, u)
		if s.err[i] == nil {
			m.notePeak(i, s.rss[i])
		}
	}
	if m.cfg.cpuPID != 0 {
		s.local, s.lerr = treeCPUSeconds(m.cfg.cpuPID)
	}
	return s
}

func (m *monitor) notePeak(i int, rss float64) {
	m.mu.Lock()
	m.rssPeak[i] = max(m.rssPeak[i], rss)
	m.mu.Unlock()
}

// sample records each target's resident memory every interval until ctx ends.
func (m *monitor) sample(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for i, u := range m.cfg.metrics {
				if u == "none" {
					continue
				}
				if _, rss, err := scrape(ctx, m.client, u); err == nil {
					m.notePeak(i, rss)
				}
			}
		}
	}
}

// delta turns two snapshots into per-server figures, the servers' total CPU
// time and the local part of it.
func (m *monitor) delta(a, b snapshot) ([]report.Server, float64, float64) {
	out := make([]report.Server, len(m.cfg.targets))
	total := 0.0
	for i, t := range m.cfg.targets {
		out[i] = report.Server{URL: t, Metrics: m.cfg.metrics[i]}
		if err := errors.Join(a.err[i], b.err[i]); err != nil {
			out[i].Error = err.Error()
			continue
		}
		out[i].CPUS = b.cpu[i] - a.cpu[i]
		out[i].RSSEnd = b.rss[i]
		m.mu.Lock()
		out[i].RSSPeak = m.rssPeak[i]
		m.mu.Unlock()
		total += out[i].CPUS
	}
	local := 0.0
	if m.cfg.cpuPID != 0 && a.lerr == nil && b.lerr == nil {
		local = b.local - a.local
		total += local
	}
	return out, total, local
}

// scrape reads process_cpu_seconds_total and process_resident_memory_bytes
// from a Prometheus text exposition.
func scrape(ctx context.Context, client *http.Client, url string) (cpu, rss float64, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return 0, 0, fmt.Errorf("%s: HTTP %d", url, resp.StatusCode)
	}
	return parseProcessMetrics(io.LimitReader(resp.Body, 16<<20))
}

func parseProcessMetrics(r io.Reader) (cpu, rss float64, err error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(r)
	if err != nil {
		return 0, 0, fmt.Errorf("parsing metrics: %w", err)
	}
	value := func(name string) (float64, error) {
		f, ok := families[name]
		if !ok || len(f.GetMetric()) != 1 {
			return 0, fmt.Errorf("metrics have no single %s (is the process collector registered?)", name)
		}
		m := f.GetMetric()[0]
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), nil
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), nil
		case m.GetUntyped() != nil:
			return m.GetUntyped().GetValue(), nil
		}
		return 0, fmt.Errorf("%s is neither a counter nor a gauge", name)
	}
	if cpu, err = value("process_cpu_seconds_total"); err != nil {
		return 0, 0, err
	}
	if rss, err = value("process_resident_memory_bytes"); err != nil {
		return 0, 0, err
	}
	return cpu, rss, nil
}

// treeCPUSeconds sums user plus system CPU time of process pid and all its
// live descendants (for PostgreSQL: the postmaster, whose pid is the first
// line of $PGDATA/postmaster.pid, and its backends and workers). Children
// that exit between two readings take their time with them, so this suits
// long-lived processes such as backends behind a connection pool.
func treeCPUSeconds(pid int) (float64, error) {
	procs, err := procfs.AllProcs()
	if err != nil {
		return 0, err
	}
	children := map[int][]procfs.ProcStat{}
	var root *procfs.ProcStat
	for _, p := range procs {
		st, err := p.Stat()
		if err != nil {
			continue // gone
		}
		if st.PID == pid {
			root = &st
		}
		children[st.PPID] = append(children[st.PPID], st)
	}
	if root == nil {
		return 0, fmt.Errorf("no process %d", pid)
	}
	total := 0.0
	queue := []procfs.ProcStat{*root}
	for len(queue) > 0 {
		st := queue[0]
		queue = queue[1:]
		total += st.CPUTime()
		queue = append(queue, children[st.PID]...)
	}
	return total, nil
}
