package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pstd/pstd/cmd/pstbench/report"
	"github.com/pstd/pstd/signer/voprf"
)

const (
	wellKnown     = "/.well-known/private-state-token/"
	headerToken   = "Sec-Private-State-Token"
	headerVersion = "Sec-Private-State-Token-Crypto-Version"
)

// job is one prepared request.
type job struct {
	kind   string // "issue" or "redeem"
	body   string // the Sec-Private-State-Token header value
	tokens int    // tokens it issues or redeems when answered 200
	// pending is the client state an issuance response is finished with.
	pending *voprf.Pending
}

// outcome is what came back for one job.
type outcome struct {
	status  int // 0: transport error
	header  string
	latency time.Duration
}

// bench holds what a run shares: clients, the key set, the effective batch.
type bench struct {
	cfg    config
	out    io.Writer
	client *http.Client
	keys   map[uint32]*voprf.PublicKey
	batch  int
}

func run(ctx context.Context, cfg config, out io.Writer) (*report.Run, error) {
	b := &bench{cfg: cfg, out: out, client: httpClient(cfg)}
	if cfg.format == "json" {
		b.out = io.Discard
	}
	rep := newReport(cfg)
	maxBatch := 0
	for _, t := range cfg.targets {
		keys, n, err := fetchCommitment(ctx, b.client, t)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t, err)
		}
		if b.keys == nil {
			b.keys, maxBatch = keys, n
			continue
		}
		// Replicas of one issuer publish one key set.
		if !sameKeys(b.keys, keys) || n != maxBatch {
			return nil, fmt.Errorf("%s publishes another key commitment than %s: not replicas of one issuer", t, cfg.targets[0])
		}
	}
	b.batch = min(cfg.batch, maxBatch)
	rep.Batch = b.batch
	fmt.Fprintf(b.out, "issuer %s: %d keys, batchsize %d, using %d\n", strings.Join(cfg.targets, ","), len(b.keys), maxBatch, b.batch)

	switch cfg.workload {
	case "issue":
		jobs, err := b.issueJobs(cfg.requests)
		if err != nil {
			return nil, err
		}
		_, err = b.phase(ctx, rep, "issue", jobs)
		return rep, err
	case "redeem":
		tokens, err := b.prepareTokens(ctx, cfg.requests)
		if err != nil {
			return nil, err
		}
		jobs, err := b.redeemJobs(tokens)
		if err != nil {
			return nil, err
		}
		_, err = b.phase(ctx, rep, "redeem", jobs)
		return rep, err
	case "mixed":
		nRedeem := cfg.requests / 2
		tokens, err := b.prepareTokens(ctx, nRedeem)
		if err != nil {
			return nil, err
		}
		rj, err := b.redeemJobs(tokens)
		if err != nil {
			return nil, err
		}
		ij, err := b.issueJobs(cfg.requests - nRedeem)
		if err != nil {
			return nil, err
		}
		jobs := make([]job, 0, cfg.requests)
		for i := range max(len(ij), len(rj)) {
			if i < len(ij) {
				jobs = append(jobs, ij[i])
			}
			if i < len(rj) {
				jobs = append(jobs, rj[i])
			}
		}
		_, err = b.phase(ctx, rep, "mixed", jobs)
		return rep, err
	default: // both
		jobs, err := b.issueJobs(cfg.requests)
		if err != nil {
			return nil, err
		}
		tokens, err := b.phase(ctx, rep, "issue", jobs)
		if err != nil {
			return rep, err
		}
		tokens = tokens[:min(len(tokens), cfg.requests)]
		if len(tokens) == 0 {
			return rep, errors.New("no tokens to redeem")
		}
		rj, err := b.redeemJobs(tokens)
		if err != nil {
			return rep, err
		}
		_, err = b.phase(ctx, rep, "redeem", rj)
		return rep, err
	}
}

func sameKeys(a, b map[uint32]*voprf.PublicKey) bool {
	if len(a) != len(b) {
		return false
	}
	for id, k := range a {
		o, ok := b[id]
		if !ok || string(k.MarshalBlob()) != string(o.MarshalBlob()) {
			return false
		}
	}
	return true
}

// issueJobs blinds n issuance requests of b.batch nonces each.
func (b *bench) issueJobs(n int) ([]job, error) {
	ids := voprf.SortedKeyIDs(b.keys)
	client := voprf.NewClient(b.keys[ids[0]])
	jobs := make([]job, n)
	for i := range jobs {
		p, err := client.Blind(b.batch, rand.Reader)
		if err != nil {
			return nil, err
		}
		jobs[i] = job{kind: "issue", body: base64.StdEncoding.EncodeToString(p.Request()), tokens: b.batch, pending: p}
	}
	return jobs, nil
}

// prepareTokens issues at least n tokens, untimed, and returns n of them.
func (b *bench) prepareTokens(ctx context.Context, n int) ([]voprf.Token, error) {
	fmt.Fprintf(b.out, "preparing %d tokens (untimed)\n", n)
	jobs, err := b.issueJobs((n + b.batch - 1) / b.batch)
	if err != nil {
		return nil, err
	}
	// Untimed, so a refused request (e.g. 503 while a replica is briefly
	// not ready) is simply sent again, a few times, after a pause.
	outs := b.hammer(ctx, jobs, "prepare", nil)
	for attempt := 1; attempt <= 5; attempt++ {
		var retry []int
		for i, o := range outs {
			if o.status != http.StatusOK {
				retry = append(retry, i)
			}
		}
		if len(retry) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(attempt) * time.Second):
		}
		again := make([]job, len(retry))
		for k, i := range retry {
			again[k] = jobs[i]
		}
		for k, o := range b.hammer(ctx, again, "prepare", nil) {
			outs[retry[k]] = o
		}
	}
	tokens, err := b.finish(jobs, outs)
	if err != nil {
		return nil, err
	}
	if len(tokens) < n {
		counts := statusCounts(outs)
		return nil, fmt.Errorf("preparing tokens: got %d of %d (statuses %v)%s", len(tokens), n, counts, rateLimitHint(counts[http.StatusTooManyRequests]))
	}
	return tokens[:n], nil
}

// rateLimitHint explains refusals by pstd's per-address issuance limit,
// which is on by default and which a load tool from one address exceeds
// within its first 30 batches; "" when there were none.
func rateLimitHint(refused int) string {
	if refused == 0 {
		return ""
	}
	return "; 429 and partial batches are the issuer's per-address rate limit, on by default: start the replicas under test with PSTD_RATE_LIMIT=0"
}

// finish verifies the DLEQ proof of every answered issuance job and
// unblinds its tokens. A response that fails verification is an error: the
// issuer signed with a key it did not commit to, or signed wrongly. So is a
// response with fewer tokens than asked (a rate limit's partial batch):
// the figures count the tokens asked.
func (b *bench) finish(jobs []job, outs []outcome) ([]voprf.Token, error) {
	var tokens []voprf.Token
	bad, short := 0, 0
	for i, o := range outs {
		if jobs[i].kind != "issue" || o.status != http.StatusOK {
			continue
		}
		raw, err := base64.StdEncoding.Strict().DecodeString(o.header)
		if err != nil || len(raw) < 6 {
			bad++
			continue
		}
		keyID := uint32(raw[2])<<24 | uint32(raw[3])<<16 | uint32(raw[4])<<8 | uint32(raw[5])
		pk, ok := b.keys[keyID]
		if !ok {
			bad++
			continue
		}
		toks, err := voprf.NewClient(pk).Finish(jobs[i].pending, raw)
		if err != nil {
			bad++
			continue
		}
		if len(toks) < jobs[i].tokens {
			short++
		}
		tokens = append(tokens, toks...)
	}
	if bad > 0 {
		return tokens, fmt.Errorf("%d issuance responses failed client verification", bad)
	}
	if short > 0 {
		return tokens, fmt.Errorf("%d issuance responses carried fewer tokens than asked%s", short, rateLimitHint(short))
	}
	return tokens, nil
}

func (b *bench) redeemJobs(tokens []voprf.Token) ([]job, error) {
	cd, err := voprf.MarshalClientData(&voprf.ClientData{RedeemingOrigin: b.cfg.origin, RedemptionTimestamp: uint64(time.Now().Unix())})
	if err != nil {
		return nil, err
	}
	jobs := make([]job, len(tokens))
	for i := range tokens {
		rr, err := voprf.MarshalRedeemRequest(&tokens[i], cd)
		if err != nil {
			return nil, err
		}
		jobs[i] = job{kind: "redeem", body: base64.StdEncoding.EncodeToString(rr), tokens: 1}
	}
	return jobs, nil
}

// phase runs jobs as one timed phase, adds it to rep, checks every response
// and returns the tokens the issuance jobs yielded.
func (b *bench) phase(ctx context.Context, rep *report.Run, name string, jobs []job) ([]voprf.Token, error) {
	mon := newMonitor(b.client, b.cfg)
	before := mon.snapshot(ctx)
	monCtx, stopMon := context.WithCancel(ctx)
	var monDone sync.WaitGroup
	monDone.Go(func() { mon.sample(monCtx, time.Second) })
	start := time.Now()
	outs := b.hammer(ctx, jobs, name, mon)
	elapsed := time.Since(start)
	stopMon()
	monDone.Wait()
	after := mon.snapshot(ctx)

	ph := report.Phase{Name: name, Requests: len(jobs), Statuses: map[string]int{}, ElapsedS: elapsed.Seconds()}
	all := make([]time.Duration, 0, len(outs))
	byKind := map[string][]time.Duration{}
	for i, o := range outs {
		if o.status == 0 {
			ph.Failures++
			continue
		}
		ph.Statuses[strconv.Itoa(o.status)]++
		all = append(all, o.latency)
		byKind[jobs[i].kind] = append(byKind[jobs[i].kind], o.latency)
		if o.status == http.StatusOK {
			ph.OK++
			ph.Tokens += jobs[i].tokens
		}
	}
	ph.Latency = latencies(all)
	if len(byKind) > 1 {
		ph.ByKind = map[string]report.Latency{}
		for k, l := range byKind {
			ph.ByKind[k] = latencies(l)
		}
	}
	if elapsed > 0 {
		ph.ReqPerS = float64(len(all)) / elapsed.Seconds()
		ph.TokPerS = float64(ph.Tokens) / elapsed.Seconds()
	}
	ph.Servers, ph.ServerCPUS, ph.LocalCPUS = mon.delta(before, after)
	ph.LocalPID = b.cfg.cpuPID
	if ph.ServerCPUS > 0 {
		ph.TokensPerCPUS = float64(ph.Tokens) / ph.ServerCPUS
	}
	rep.Phases = append(rep.Phases, ph)
	printPhase(b.out, ph)

	var errs []error
	if ph.OK < len(jobs) {
		errs = append(errs, fmt.Errorf("%s: %d of %d requests were not answered 200 (statuses %v, transport failures %d)%s", name, len(jobs)-ph.OK, len(jobs), ph.Statuses, ph.Failures,
			rateLimitHint(ph.Statuses[strconv.Itoa(http.StatusTooManyRequests)])))
	}
	for i, o := range outs {
		if jobs[i].kind == "redeem" && o.status == http.StatusOK && strings.Count(o.header, ".") != 2 {
			errs = append(errs, fmt.Errorf("%s: a redemption answered 200 without a redemption record", name))
			break
		}
	}
	tokens, err := b.finish(jobs, outs)
	if err != nil {
		errs = append(errs, err)
	} else if len(tokens) > 0 {
		fmt.Fprintf(b.out, "%-8s %d tokens verified and unblinded\n", name, len(tokens))
	}
	return tokens, errors.Join(errs...)
}

func printPhase(w io.Writer, ph report.Phase) {
	l := ph.Latency
	fmt.Fprintf(w, "%-8s %6d requests in %6.2fs: %8.1f req/s %8.1f tokens/s  p50 %.2fms p90 %.2fms p99 %.2fms p99.9 %.2fms max %.2fms  statuses %v failures %d\n",
		ph.Name, l.Count, ph.ElapsedS, ph.ReqPerS, ph.TokPerS, l.P50, l.P90, l.P99, l.P999, l.Max, ph.Statuses, ph.Failures)
	for k, kl := range ph.ByKind {
		fmt.Fprintf(w, "  %-6s p50 %.2fms p90 %.2fms p99 %.2fms max %.2fms (%d requests)\n", k, kl.P50, kl.P90, kl.P99, kl.Max, kl.Count)
	}
	for _, s := range ph.Servers {
		if s.Error != "" {
			fmt.Fprintf(w, "  server %s: no metrics (%s)\n", s.URL, s.Error)
			continue
		}
		fmt.Fprintf(w, "  server %s: %.2f CPU-s, RSS peak %.1f MiB\n", s.URL, s.CPUS, s.RSSPeak/(1<<20))
	}
	if ph.LocalPID != 0 {
		fmt.Fprintf(w, "  process tree %d: %.2f CPU-s\n", ph.LocalPID, ph.LocalCPUS)
	}
	if ph.TokensPerCPUS > 0 {
		fmt.Fprintf(w, "  %.1f tokens per server CPU-second (%.2f CPU-s)\n", ph.TokensPerCPUS, ph.ServerCPUS)
	}
}

// latencies gives exact percentiles by sorting every recorded latency
// (nearest-rank). A phase records at most --requests values, so exact
// sorting costs little and has none of a bucketed histogram's error.
func latencies(d []time.Duration) report.Latency {
	if len(d) == 0 {
		return report.Latency{}
	}
	slices.Sort(d)
	ms := func(x time.Duration) float64 { return float64(x) / float64(time.Millisecond) }
	rank := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(d)))) - 1
		return ms(d[max(0, min(len(d)-1, i))])
	}
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return report.Latency{
		Count: len(d),
		Mean:  ms(sum / time.Duration(len(d))),
		P50:   rank(0.50), P90: rank(0.90), P99: rank(0.99), P999: rank(0.999),
		Max: ms(d[len(d)-1]),
	}
}

func statusCounts(outs []outcome) map[int]int {
	m := map[int]int{}
	for _, o := range outs {
		m[o.status]++
	}
	return m
}

// hammer sends every job once with cfg.concurrency workers, job i to target
// i mod len(targets), and returns the outcomes in job order. mon, if not
// nil, is told of each answer for the progress line.
func (b *bench) hammer(ctx context.Context, jobs []job, name string, mon *monitor) []outcome {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.duration)
	defer cancel()
	outs := make([]outcome, len(jobs))
	var next, done atomic.Int64
	stopProgress := b.progress(name, len(jobs), &done)
	defer stopProgress()
	var wg sync.WaitGroup
	for range b.cfg.concurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(jobs) || ctx.Err() != nil {
					return
				}
				url := b.cfg.targets[i%len(b.cfg.targets)] + wellKnown + "issuance"
				if jobs[i].kind == "redeem" {
					url = b.cfg.targets[i%len(b.cfg.targets)] + wellKnown + "redemption"
				}
				outs[i] = b.do(ctx, url, jobs[i].body)
				done.Add(1)
			}
		})
	}
	wg.Wait()
	return outs
}

func (b *bench) do(ctx context.Context, url, body string) outcome {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
	if err != nil {
		return outcome{}
	}
	req.Header.Set(headerVersion, voprf.ProtocolVersion)
	req.Header.Set(headerToken, body)
	t0 := time.Now()
	resp, err := b.client.Do(req)
	if err != nil {
		return outcome{}
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return outcome{status: resp.StatusCode, header: resp.Header.Get(headerToken), latency: time.Since(t0)}
}

// progress draws "name done/total rate" on one terminal line four times a
// second, only when stdout is a terminal; the returned func erases it.
func (b *bench) progress(name string, total int, done *atomic.Int64) func() {
	w := b.cfg.progressOut
	if w == nil {
		return func() {}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	wg.Go(func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				fmt.Fprint(w, "\r\033[K")
				return
			case <-t.C:
				n := done.Load()
				fmt.Fprintf(w, "\r\033[K%-8s %d/%d  %.0f req/s  %s", name, n, total, float64(n)/time.Since(start).Seconds(), time.Since(start).Round(time.Second))
			}
		}
	})
	return func() { close(stop); wg.Wait() }
}

func fetchCommitment(ctx context.Context, client *http.Client, issuer string) (map[uint32]*voprf.PublicKey, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, issuer+wellKnown+"key-commitment", nil)
	if err != nil {
		return nil, 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, 0, fmt.Errorf("key commitment: HTTP %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, 0, err
	}
	c, keys, err := voprf.ParseCommitment(body)
	if err != nil {
		return nil, 0, fmt.Errorf("key commitment: %w", err)
	}
	if len(keys) == 0 {
		return nil, 0, errors.New("key commitment lists no keys")
	}
	return keys, c.BatchSize, nil
}
