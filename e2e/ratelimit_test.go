package e2e

// The per-address issuance limit as an attacker finds it: the real pstd
// binary started with no PSTD_RATE_LIMIT (nor window, nor trusted proxies),
// so with httpapi.DefaultRateLimit.

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pstd/pstd/httpapi"
	"github.com/pstd/pstd/internal/testenv"
	"github.com/pstd/pstd/signer/voprf"
)

// limitedIssuance is one prepared issuance request of a whole batch (blinded
// before the timed part, so the requests go out back to back) and what the
// issuer answered.
type limitedIssuance struct {
	pending *voprf.Pending
	body    string

	status     int
	granted    int // tokens in the response
	raw        []byte
	problem    string
	retryAfter string
}

// send sends it from client c, with X-Forwarded-For if forwarded is set.
func (li *limitedIssuance) send(t *testing.T, c *http.Client, s *stack, forwarded string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.listen+httpapi.PathIssuance, nil)
	req.Header.Set(httpapi.HeaderCryptoVersion, voprf.ProtocolVersion)
	req.Header.Set(httpapi.HeaderToken, li.body)
	if forwarded != "" {
		req.Header.Set("X-Forwarded-For", forwarded)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("issuance: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	li.status, li.retryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
	if h := resp.Header.Get(httpapi.HeaderToken); h != "" {
		if li.raw, err = base64.StdEncoding.DecodeString(h); err != nil || len(li.raw) < 2 {
			t.Fatalf("issuance response %q: %v", h, err)
		}
		li.granted = int(binary.BigEndian.Uint16(li.raw))
	}
	if resp.StatusCode != http.StatusOK {
		var p struct{ Type string }
		_ = json.Unmarshal(body, &p)
		li.problem = p.Type
	}
}

// finish verifies the issuer's proof and unblinds the tokens.
func (li *limitedIssuance) finish(t *testing.T, keys map[uint32]*voprf.PublicKey) []voprf.Token {
	t.Helper()
	if len(li.raw) < 6 {
		t.Fatalf("issuance response of %d bytes", len(li.raw))
	}
	toks, err := voprf.NewClient(keys[binary.BigEndian.Uint32(li.raw[2:6])]).Finish(li.pending, li.raw)
	if err != nil {
		t.Fatalf("finishing issuance: %v", err)
	}
	return toks
}

// prepareIssuances blinds n requests of a whole batch for the newest key.
func prepareIssuances(t *testing.T, s *stack, n int) (keys map[uint32]*voprf.PublicKey, batch int, out []*limitedIssuance) {
	t.Helper()
	c, keys, err := voprf.ParseCommitment(getBody(t, "http://"+s.listen+httpapi.PathKeyCommitment))
	if err != nil {
		t.Fatal(err)
	}
	ids := voprf.SortedKeyIDs(keys)
	client := voprf.NewClient(keys[ids[len(ids)-1]])
	for range n {
		p, err := client.Blind(c.BatchSize, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, &limitedIssuance{pending: p, body: base64.StdEncoding.EncodeToString(p.Request())})
	}
	return keys, c.BatchSize, out
}

// withoutSettings drops the named settings from env, so that pstd runs
// with their defaults whatever the test's own environment holds.
func withoutSettings(env []string, names ...string) []string {
	var out []string
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		keep := true
		for _, n := range names {
			if name == n {
				keep = false
			}
		}
		if keep {
			out = append(out, kv)
		}
	}
	return out
}

// assertRateLimited checks a refusal by the rate limit: 429, the
// machine-readable reason, a Retry-After of whole seconds in [1, max], and
// no token.
func assertRateLimited(t *testing.T, what string, li *limitedIssuance, maxRetry int) {
	t.Helper()
	ra, err := strconv.Atoi(li.retryAfter)
	if li.status != http.StatusTooManyRequests || li.problem != httpapi.ProblemTypePrefix+"rate-limited" || li.raw != nil ||
		err != nil || ra < 1 || ra > maxRetry {
		t.Fatalf("%s: status %d, problem %q, Retry-After %q, %d tokens; want 429 %srate-limited, Retry-After 1–%d s, no token",
			what, li.status, li.problem, li.retryAfter, li.granted, httpapi.ProblemTypePrefix, maxRetry)
	}
}

// TestDefaultRateLimit: pstd as it starts with nothing said about the rate
// limit. One address gets httpapi.DefaultRateLimit full batches and is then
// refused with 429 rate-limited and a Retry-After, before any signature
// (the tokens pstd counts as signed are exactly the tokens the clients
// got); a forged X-Forwarded-For gets it no fresh bucket (and is warned
// about, once); another address still gets tokens.
//
// At the default window the bucket refills at DefaultRateLimit × batch
// tokens a minute (5 a second at batch 10), so whether the request right
// after the burst finds a token depends on how long the burst took: the
// tokens granted after it must stay within what refilled meanwhile, and
// with less than one token back the very next request is the 429. With a
// one-hour window (the limit still its default) refilling is negligible,
// and the request after DefaultRateLimit full batches is refused, always.
func TestDefaultRateLimit(t *testing.T) {
	limit := httpapi.DefaultRateLimit
	s := prepareStack(t, testenv.NewDatabase(t), testenv.NewToken(t))
	s.env = withoutSettings(s.env, "PSTD_RATE_LIMIT", "PSTD_RATE_WINDOW", "PSTD_TRUSTED_PROXIES")
	s.start()

	attacker := clientFrom("127.0.0.1", 1, 10*time.Second)
	other := clientFrom("127.0.0.2", 1, 10*time.Second)
	const forgedAfter = 2 // requests sent after the first refusal, each with another forged X-Forwarded-For
	keys, batch, reqs := prepareIssuances(t, s, limit+20+forgedAfter)
	refill := float64(limit*batch) / httpapi.DefaultRateWindow.Seconds() // tokens per second
	maxRetry := int(math.Ceil(1 / refill))

	signed0, keySigned0, limited0 := s.metric("pstd_tokens_issued_total"), s.metric("pstd_key_tokens_issued_total"),
		s.metric(`pstd_issuance_requests_total{outcome="rate-limited"}`)
	start := time.Now()
	for i, li := range reqs[:limit] {
		li.send(t, attacker, s, "")
		if li.status != http.StatusOK || li.granted != batch {
			t.Fatalf("request %d of %d from one address: status %d, %d tokens, problem %q; want a full batch of %d",
				i+1, limit, li.status, li.granted, li.problem, batch)
		}
	}
	// Past the bucket: every request now is refused or gets only what has
	// refilled. They claim other clients in X-Forwarded-For, which pstd,
	// trusting no proxy, must ignore.
	var after []*limitedIssuance
	refused, stopAt := 0, -1
	for i, li := range reqs[limit:] {
		if len(after) == stopAt {
			break
		}
		li.send(t, attacker, s, fmt.Sprintf("198.51.100.%d", i+1))
		after = append(after, li)
		switch {
		case li.status == http.StatusTooManyRequests:
			assertRateLimited(t, fmt.Sprintf("request %d from one address", limit+i+1), li, maxRetry)
			if refused++; stopAt < 0 {
				stopAt = len(after) + forgedAfter
			}
		case li.status != http.StatusOK:
			t.Fatalf("request %d from one address: status %d %q, want 429 or a partial batch", limit+i+1, li.status, li.problem)
		}
	}
	elapsed := time.Since(start)
	extra := 0
	for _, li := range after {
		extra += li.granted
	}
	t.Logf("%d full batches in %v, then %d requests: %d refused, %d tokens granted (%.1f refilled meanwhile at most)",
		limit, elapsed.Round(time.Millisecond), len(after), refused, extra, refill*elapsed.Seconds())
	if refused == 0 {
		t.Fatalf("no refusal in %d requests after %d full batches from one address", len(after), limit)
	}
	if float64(extra) > refill*elapsed.Seconds() {
		t.Fatalf("one address got %d tokens beyond its %d full batches in %v: more than the %.1f that refilled",
			extra, limit, elapsed.Round(time.Millisecond), refill*elapsed.Seconds())
	}

	// Another address is not affected.
	_, _, more := prepareIssuances(t, s, 1)
	fresh := more[0]
	fresh.send(t, other, s, "")
	if fresh.status != http.StatusOK || fresh.granted != batch {
		t.Fatalf("another address: status %d, %d tokens, problem %q; want a full batch", fresh.status, fresh.granted, fresh.problem)
	}
	fresh.finish(t, keys)
	for _, li := range reqs[:limit] {
		li.finish(t, keys) // the tokens granted were real ones
	}

	// Refusals cost no signature: pstd counts as signed exactly what the
	// clients got, and every refusal as rate-limited.
	want := float64(limit*batch + extra + batch)
	if got := s.metric("pstd_tokens_issued_total") - signed0; got != want {
		t.Errorf("pstd_tokens_issued_total grew by %v, want %v (the tokens the clients got)", got, want)
	}
	if got := s.metric("pstd_key_tokens_issued_total") - keySigned0; got != want {
		t.Errorf("pstd_key_tokens_issued_total grew by %v, want %v (the tokens the clients got)", got, want)
	}
	if got := s.metric(`pstd_issuance_requests_total{outcome="rate-limited"}`) - limited0; got != float64(refused) {
		t.Errorf(`pstd_issuance_requests_total{outcome="rate-limited"} grew by %v, want %d`, got, refused)
	}
	if n := len(s.logLines("X-Forwarded-For but PSTD_TRUSTED_PROXIES is not set")); n != 1 {
		t.Errorf("pstd warned %d times about X-Forwarded-For without PSTD_TRUSTED_PROXIES, want once:\n%s", n, s.logs.String())
	}

	// The same default limit with a window long enough that nothing
	// refills during the test: exactly DefaultRateLimit full batches, and
	// the next request is refused. (A new process: new buckets.)
	s.stop()
	s.env = append(s.env, "PSTD_RATE_WINDOW=1h")
	s.start()
	keys, _, reqs = prepareIssuances(t, s, limit+1)
	slowRefill := float64(limit*batch) / time.Hour.Seconds()
	start = time.Now()
	for i, li := range reqs[:limit] {
		li.send(t, attacker, s, "")
		if li.status != http.StatusOK || li.granted != batch {
			t.Fatalf("window 1h, request %d of %d: status %d, %d tokens, problem %q; want a full batch", i+1, limit, li.status, li.granted, li.problem)
		}
	}
	next := reqs[limit]
	next.send(t, attacker, s, "")
	if took := time.Since(start); took.Seconds()*slowRefill >= 1 {
		t.Fatalf("window 1h: %d requests took %v, long enough for a token to refill; the test needs them faster", limit+1, took)
	}
	assertRateLimited(t, fmt.Sprintf("window 1h, request %d", limit+1), next, int(math.Ceil(1/slowRefill)))
	reqs[0].finish(t, keys)
}
