// Command pstbench loads a PST issuer with real PST v1 client cryptography:
// it fetches the key commitment, blinds nonces, sends issuance requests,
// verifies every DLEQ proof and unblinds the tokens, then redeems them.
//
// Client crypto costs more CPU than the issuer's, so pstbench prepares the
// requests before the timed phase and checks the responses after it: the
// figures measure the server, not the load tool.
//
//	pstbench -issuer http://localhost:8480 -mode issue -batch 10 -concurrency 8 -requests 2000
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/peterbourgon/ff/v3"

	"github.com/pstd/pstd/internal/version"
	"github.com/pstd/pstd/signer/voprf"
)

const (
	wellKnown     = "/.well-known/private-state-token/"
	headerToken   = "Sec-Private-State-Token"
	headerVersion = "Sec-Private-State-Token-Crypto-Version"
)

type config struct {
	issuer      string
	mode        string
	batch       int
	concurrency int
	requests    int
	duration    time.Duration
	origin      string
}

func main() {
	var cfg config
	fs := flag.NewFlagSet("pstbench", flag.ContinueOnError)
	fs.StringVar(&cfg.issuer, "issuer", "http://localhost:8480", "issuer origin (PSTBENCH_ISSUER)")
	fs.StringVar(&cfg.mode, "mode", "both", "issue, redeem or both")
	fs.IntVar(&cfg.batch, "batch", 10, "tokens asked per issuance request")
	fs.IntVar(&cfg.concurrency, "concurrency", 8, "concurrent requests")
	fs.IntVar(&cfg.requests, "requests", 1000, "requests per phase (prepared before timing)")
	fs.DurationVar(&cfg.duration, "duration", 60*time.Second, "upper bound on each timed phase")
	fs.StringVar(&cfg.origin, "redeeming-origin", "https://rp.example", "redeeming-origin put in the client data")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := ff.Parse(fs, os.Args[1:], ff.WithEnvVarPrefix("PSTBENCH")); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "pstbench:", err)
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println(version.Get().String("pstbench"))
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "pstbench:", err)
		os.Exit(1)
	}
}

type result struct {
	latencies []time.Duration
	statuses  map[int]int
	elapsed   time.Duration
	failures  int
}

func (r *result) report(w io.Writer, name string, tokensPer int) {
	n := len(r.latencies)
	sort.Slice(r.latencies, func(i, j int) bool { return r.latencies[i] < r.latencies[j] })
	pct := func(p float64) time.Duration {
		if n == 0 {
			return 0
		}
		return r.latencies[min(n-1, int(p*float64(n)))]
	}
	rps := float64(n) / r.elapsed.Seconds()
	fmt.Fprintf(w, "%-10s %6d requests in %6.2fs: %8.1f req/s", name, n, r.elapsed.Seconds(), rps)
	if tokensPer > 0 {
		fmt.Fprintf(w, " %8.1f tokens/s", rps*float64(tokensPer))
	}
	fmt.Fprintf(w, "  p50 %v  p90 %v  p99 %v  max %v  statuses %v  failures %d\n",
		pct(0.50).Round(10*time.Microsecond), pct(0.90).Round(10*time.Microsecond),
		pct(0.99).Round(10*time.Microsecond), pct(1).Round(10*time.Microsecond), r.statuses, r.failures)
}

func run(ctx context.Context, cfg config, out io.Writer) error {
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: cfg.concurrency, MaxConnsPerHost: cfg.concurrency},
	}
	keys, batchSize, err := fetchCommitment(ctx, client, cfg.issuer)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "issuer %s: %d keys, batchsize %d\n", cfg.issuer, len(keys), batchSize)
	batch := min(cfg.batch, batchSize)

	// Prepare issue requests for every key we might be answered with.
	pendings := make([]*voprf.Pending, cfg.requests)
	bodies := make([]string, cfg.requests)
	ids := voprf.SortedKeyIDs(keys)
	anyClient := voprf.NewClient(keys[ids[0]])
	for i := range pendings {
		p, err := anyClient.Blind(batch, rand.Reader)
		if err != nil {
			return err
		}
		pendings[i] = p
		bodies[i] = base64.StdEncoding.EncodeToString(p.Request())
	}
	responses := make([]string, cfg.requests)
	res := hammer(ctx, cfg, client, cfg.issuer+wellKnown+"issuance", bodies, responses)
	res.report(out, "issue", batch)

	// Verify every proof and unblind, outside the timed phase.
	var tokens []voprf.Token
	bad := 0
	for i, r := range responses {
		if r == "" {
			continue
		}
		raw, err := base64.StdEncoding.Strict().DecodeString(r)
		if err != nil || len(raw) < 6 {
			bad++
			continue
		}
		keyID := uint32(raw[2])<<24 | uint32(raw[3])<<16 | uint32(raw[4])<<8 | uint32(raw[5])
		pk, ok := keys[keyID]
		if !ok {
			bad++
			continue
		}
		toks, err := voprf.NewClient(pk).Finish(pendings[i], raw)
		if err != nil {
			bad++
			continue
		}
		tokens = append(tokens, toks...)
	}
	fmt.Fprintf(out, "issue      %d tokens verified and unblinded, %d responses rejected by the client\n", len(tokens), bad)
	if bad > 0 {
		return fmt.Errorf("%d issuance responses failed client verification", bad)
	}
	if cfg.mode == "issue" {
		return nil
	}
	n := min(len(tokens), cfg.requests)
	if n == 0 {
		return errors.New("no tokens to redeem")
	}
	cd, err := voprf.MarshalClientData(&voprf.ClientData{RedeemingOrigin: cfg.origin, RedemptionTimestamp: uint64(time.Now().Unix())})
	if err != nil {
		return err
	}
	rbodies := make([]string, n)
	for i := range n {
		rr, err := voprf.MarshalRedeemRequest(&tokens[i], cd)
		if err != nil {
			return err
		}
		rbodies[i] = base64.StdEncoding.EncodeToString(rr)
	}
	records := make([]string, n)
	rres := hammer(ctx, cfg, client, cfg.issuer+wellKnown+"redemption", rbodies, records)
	rres.report(out, "redeem", 0)
	missing := 0
	for _, r := range records {
		if r == "" || strings.Count(r, ".") != 2 {
			missing++
		}
	}
	if missing > 0 {
		return fmt.Errorf("%d redemptions returned no record", missing)
	}
	return nil
}

// hammer sends each body once with cfg.concurrency workers and stores each
// response header in out.
func hammer(ctx context.Context, cfg config, client *http.Client, url string, bodies, out []string) *result {
	ctx, cancel := context.WithTimeout(ctx, cfg.duration)
	defer cancel()
	var next atomic.Int64
	var mu sync.Mutex
	res := &result{statuses: map[int]int{}}
	start := time.Now()
	var wg sync.WaitGroup
	for range cfg.concurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(bodies) || ctx.Err() != nil {
					return
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
				req.Header.Set(headerVersion, voprf.ProtocolVersion)
				req.Header.Set(headerToken, bodies[i])
				t0 := time.Now()
				resp, err := client.Do(req)
				d := time.Since(t0)
				mu.Lock()
				if err != nil {
					res.failures++
					mu.Unlock()
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				res.statuses[resp.StatusCode]++
				res.latencies = append(res.latencies, d)
				mu.Unlock()
				if resp.StatusCode == http.StatusOK {
					out[i] = resp.Header.Get(headerToken)
				}
			}
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
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
	return keys, c.BatchSize, nil
}
