package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/pstd/pstd/internal/pstderr"
)

func TestReadinessFlips(t *testing.T) {
	h := newHarness(t, nil)
	issue := func() int { return h.do(http.MethodPost, PathIssuance, pstHeaders(issueB64)).Code }

	if c := issue(); c != 200 {
		t.Fatalf("ready: %d", c)
	}
	h.iss.set(func(f *fakeIssuer) { f.readyErr = pstderr.New(pstderr.Unavailable, "HSM session unusable") })
	// The cached state still says ready until a probe runs: requests do not call Ready.
	calls := h.iss.readyCalls
	if c := issue(); c != 200 || h.iss.readyCalls != calls {
		t.Fatalf("request called Ready or saw a fresh state: %d, calls %d→%d", c, calls, h.iss.readyCalls)
	}
	rec := h.do(http.MethodGet, PathReadyz, nil)
	if rec.Code != 503 {
		t.Fatalf("/readyz %d", rec.Code)
	}
	if p := problemOf(t, rec); p.Type != ProblemTypePrefix+"unavailable" || !strings.Contains(p.Detail, "HSM session unusable") {
		t.Errorf("readyz problem %+v", p)
	}
	if c := issue(); c != 503 {
		t.Fatalf("not ready but issuance %d", c)
	}
	if c := h.do(http.MethodPost, PathRedemption, pstHeaders(redeemB64)).Code; c != 503 {
		t.Fatalf("not ready but redemption %d", c)
	}
	if !strings.Contains(h.metricsText(t), "pstd_ready 0") {
		t.Error("ready gauge not 0")
	}
	h.iss.set(func(f *fakeIssuer) { f.readyErr = nil })
	if rec := h.do(http.MethodGet, PathReadyz, nil); rec.Code != 200 {
		t.Fatalf("/readyz after recovery %d", rec.Code)
	}
	if c := issue(); c != 200 {
		t.Fatalf("recovered but issuance %d", c)
	}
	// A plain error from Ready is not shown to the client.
	h.iss.set(func(f *fakeIssuer) { f.readyErr = errors.New("dial tcp 10.0.0.5:5432: hunter2") })
	rec = h.do(http.MethodGet, PathReadyz, nil)
	if rec.Code != 503 || strings.Contains(rec.Body.String(), "hunter2") {
		t.Errorf("readyz %d %s", rec.Code, rec.Body)
	}
}

func TestReadinessStartsNotReady(t *testing.T) {
	iss := newFake()
	s := New(Config{}, iss)
	rec := httptestDo(s, http.MethodPost, PathIssuance, pstHeaders(issueB64))
	if rec.Code != 503 {
		t.Fatalf("before the first probe: %d", rec.Code)
	}
}

func TestReadinessBackgroundProbe(t *testing.T) {
	iss := newFake()
	iss.readyErr = pstderr.New(pstderr.Unavailable, "keys not loaded")
	s := New(Config{ReadyInterval: 20 * time.Millisecond, ReadyTimeout: 50 * time.Millisecond}, iss)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.WatchReadiness(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	code := func() int { return httptestDo(s, http.MethodPost, PathIssuance, pstHeaders(issueB64)).Code }
	waitFor(t, func() bool { return iss.calls() > 0 })
	if c := code(); c != 503 {
		t.Fatalf("not ready: %d", c)
	}
	iss.set(func(f *fakeIssuer) { f.readyErr = nil })
	waitFor(t, func() bool { return code() == 200 })
	iss.set(func(f *fakeIssuer) { f.readyErr = pstderr.New(pstderr.Unavailable, "db down") })
	waitFor(t, func() bool { return code() == 503 })
}

func TestReadinessProbeTimeout(t *testing.T) {
	iss := &hungReady{fakeIssuer: newFake(), release: make(chan struct{})}
	defer close(iss.release)
	s := New(Config{ReadyTimeout: 30 * time.Millisecond}, iss)
	// Ready answers only once released (after this test), so the probe
	// returning at all, as Unavailable, is its timeout at work.
	err := s.CheckReady(context.Background())
	if err == nil || !errors.Is(err, pstderr.Unavailable) {
		t.Fatalf("probe of a hung Ready: %v", err)
	}
}

// hungReady's Ready ignores its context and returns only when released.
type hungReady struct {
	*fakeIssuer
	release chan struct{}
}

func (s *hungReady) Ready(context.Context) error { <-s.release; return nil }

func (f *fakeIssuer) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.readyCalls
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeClock is an injectable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func reqFrom(addr string) *http.Request {
	r, _ := http.NewRequest(http.MethodPost, PathIssuance, nil)
	r.RemoteAddr = addr
	return r
}

func TestRateLimit(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	rl := NewRateLimit(RateLimitConfig{Tokens: 10, Window: time.Minute, Now: clk.Now})
	ctx := context.Background()
	a := reqFrom("198.51.100.7:4000")

	if n, err := rl.Allow(ctx, a, 10); n != 10 || err != nil {
		t.Fatalf("first: %d %v", n, err)
	}
	_, err := rl.Allow(ctx, a, 10)
	var ra RetryAfterError
	if !errors.Is(err, pstderr.RateLimited) || !errors.As(err, &ra) || ra.RetryAfter() != 6*time.Second {
		t.Fatalf("empty bucket: %v", err)
	}
	// Another address has its own bucket.
	if n, err := rl.Allow(ctx, reqFrom("198.51.100.8:4000"), 4); n != 4 || err != nil {
		t.Fatalf("other address: %d %v", n, err)
	}
	// Half a window refills half the bucket; a request gets what is there.
	clk.Advance(30 * time.Second)
	if n, err := rl.Allow(ctx, a, 10); n != 5 || err != nil {
		t.Fatalf("half refilled: %d %v", n, err)
	}
	// The same port-less / other-port client is the same address.
	if _, err := rl.Allow(ctx, reqFrom("198.51.100.7:5000"), 1); !errors.Is(err, pstderr.RateLimited) {
		t.Fatalf("other port escaped the limit: %v", err)
	}
	if rl.Len() != 2 {
		t.Fatalf("Len %d", rl.Len())
	}
	// A whole window after its last request an address is forgotten.
	clk.Advance(59 * time.Second)
	if rl.Len() != 1 { // .8 was last seen 89 s ago, .7 59 s ago
		t.Fatalf("after 89s: Len %d, want 1", rl.Len())
	}
	clk.Advance(time.Second)
	if rl.Len() != 0 {
		t.Fatalf("after a window: Len %d, want 0", rl.Len())
	}
	if n, _ := rl.Allow(ctx, a, 10); n != 10 {
		t.Fatalf("fresh bucket: %d", n)
	}
}

func TestRateLimitBounded(t *testing.T) {
	clk := &fakeClock{now: time.Unix(0, 0)}
	rl := NewRateLimit(RateLimitConfig{Tokens: 1, Window: time.Hour, MaxAddresses: 3, Now: clk.Now})
	ctx := context.Background()
	for i := 1; i <= 10; i++ {
		clk.Advance(time.Second)
		if n, err := rl.Allow(ctx, reqFrom(fmt.Sprintf("203.0.113.%d:1", i)), 1); n != 1 || err != nil {
			t.Fatalf("addr %d: %d %v", i, n, err)
		}
		if rl.Len() > 3 {
			t.Fatalf("Len %d > 3", rl.Len())
		}
	}
	// The most recent addresses are the ones kept.
	if _, err := rl.Allow(ctx, reqFrom("203.0.113.10:1"), 1); !errors.Is(err, pstderr.RateLimited) {
		t.Fatalf("recent address forgotten: %v", err)
	}
	if n, _ := rl.Allow(ctx, reqFrom("203.0.113.1:1"), 1); n != 1 {
		t.Fatalf("oldest address not forgotten")
	}
}

func TestClientAddrKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1:443":              "192.0.2.1",
		"[2001:db8:1:2:3:4:5:6]:443": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:1":   "2001:db8:1:2::/64",
		"[::ffff:192.0.2.1]:80":      "192.0.2.1",
		"[fe80::1%eth0]:80":          "fe80::/64",
		"not an address":             "not an address",
		"2001:db8:1:2:3:4:5:6":       "2001:db8:1:2::/64",
		"192.0.2.1":                  "192.0.2.1",
	} {
		if got := ClientAddrKey(in); got != want {
			t.Errorf("ClientAddrKey(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRateLimitThroughHTTP(t *testing.T) {
	clk := &fakeClock{now: time.Unix(0, 0)}
	h := newHarness(t, func(c *Config) {
		c.Policy = NewRateLimit(RateLimitConfig{Tokens: 15, Window: time.Minute, Now: clk.Now})
	})
	send := func() *httptestRecorder {
		return h.do(http.MethodPost, PathIssuance, pstHeaders(issueB64))
	}
	if rec := send(); rec.Code != 200 || h.iss.lastMax != 10 {
		t.Fatalf("first: %d max %d", rec.Code, h.iss.lastMax)
	}
	if rec := send(); rec.Code != 200 || h.iss.lastMax != 5 {
		t.Fatalf("second gets the rest: %d max %d", rec.Code, h.iss.lastMax)
	}
	rec := send()
	if rec.Code != 429 || rec.Header().Get("Retry-After") != "4" {
		t.Fatalf("third: %d Retry-After %q", rec.Code, rec.Header().Get("Retry-After"))
	}
	problemOf(t, rec)
}

func TestPanicRecovery(t *testing.T) {
	h := newHarness(t, nil)
	s := New(Config{Logger: h.s.cfg.Logger}, h.iss, WithRoutes(func(e *echo.Echo) {
		e.GET("/boom", func(echo.Context) error { panic("kaboom") })
		e.GET("/boom-err", func(echo.Context) error { panic(errors.New("kaboom error")) })
	}))
	_ = s.CheckReady(context.Background())
	for _, p := range []string{"/boom", "/boom-err"} {
		rec := httptestDo(s, http.MethodGet, p, nil)
		if rec.Code != 500 {
			t.Fatalf("%s: %d", p, rec.Code)
		}
		if pr := problemOf(t, rec); pr.Type != ProblemTypePrefix+"internal" || pr.Detail != "internal error" || strings.Contains(rec.Body.String(), "kaboom") {
			t.Errorf("%s problem %+v", p, pr)
		}
	}
	// Still serving.
	if rec := httptestDo(s, http.MethodPost, PathIssuance, pstHeaders(issueB64)); rec.Code != 200 {
		t.Fatalf("after panics: %d", rec.Code)
	}
	log := h.log.String()
	if !strings.Contains(log, "panic: kaboom") || !strings.Contains(log, `"stack"`) {
		t.Errorf("panic not logged with its stack: %s", log)
	}
}

func TestRequestLog(t *testing.T) {
	h := newHarness(t, nil)
	req, _ := http.NewRequest(http.MethodPost, PathIssuance+"?utm=track", nil)
	req.RemoteAddr = "192.0.2.77:5555"
	req.Header.Set(HeaderCryptoVersion, CryptoVersion)
	req.Header.Set(HeaderToken, issueB64)
	req.Header.Set(HeaderRequestID, "req-123.abc")
	rec := h.doReq(req)
	// On a token route a client's id is never used: it would be a
	// correlator of the client's choosing in the issuer's logs.
	if id := rec.Header().Get(HeaderRequestID); rec.Code != 200 || !saneRequestID(id) || id == "req-123.abc" {
		t.Fatalf("%d, request id %q", rec.Code, id)
	}
	token := rec.Header().Get(HeaderToken)

	req, _ = http.NewRequest(http.MethodPost, PathRedemption, nil)
	req.RemoteAddr = "192.0.2.77:5556"
	req.Header.Set(HeaderCryptoVersion, CryptoVersion)
	req.Header.Set(HeaderToken, redeemB64)
	req.Header.Set(HeaderRequestID, "bad id\nwith newline")
	rec = h.doReq(req)
	if id := rec.Header().Get(HeaderRequestID); rec.Code != 200 || !saneRequestID(id) || strings.Contains(id, "bad") {
		t.Fatalf("%d, request id %q", rec.Code, id)
	}
	h.do(http.MethodPost, PathRedemption, pstHeaders("AAAA")) // a refusal

	log := h.log.String()
	for _, secret := range []string{issueB64[:40], redeemB64[:40], token[:40], h.iss.record, "192.0.2.77", "utm", "bad id"} {
		if strings.Contains(log, secret) {
			t.Errorf("log contains %q", secret)
		}
	}
	var reqLines []map[string]any
	for _, l := range h.log.lines(t) {
		if l["msg"] == "request" {
			reqLines = append(reqLines, l)
		}
	}
	if len(reqLines) != 3 {
		t.Fatalf("%d request lines, want 3: %s", len(reqLines), log)
	}
	first := reqLines[0]
	if first["request_id"] == "req-123.abc" || first["method"] != "POST" || first["route"] != PathIssuance ||
		first["status"] != float64(200) || first["latency_ms"] == nil {
		t.Errorf("first line %v", first)
	}
	if last := reqLines[2]; last["reason"] != "malformed" || last["status"] != float64(400) {
		t.Errorf("refusal line %v", last)
	}

	// Elsewhere (behind a proxy that sets it) a sane id is kept.
	hreq, _ := http.NewRequest(http.MethodGet, PathHealthz, nil)
	hreq.Header.Set(HeaderRequestID, "req-123.abc")
	if id := h.doReq(hreq).Header().Get(HeaderRequestID); id != "req-123.abc" {
		t.Fatalf("healthz request id %q, want the caller's", id)
	}

	// Client addresses are logged only when asked for.
	h2 := newHarness(t, func(c *Config) { c.LogClientAddr = true })
	req, _ = http.NewRequest(http.MethodGet, PathHealthz, nil)
	req.RemoteAddr = "192.0.2.78:1"
	h2.doReq(req)
	if !strings.Contains(h2.log.String(), "192.0.2.78") {
		t.Error("LogClientAddr ignored")
	}
}

func TestInternalErrorLoggedWithCause(t *testing.T) {
	h := newHarness(t, nil)
	h.iss.set(func(f *fakeIssuer) { f.issueErr = errors.New("pool exhausted") })
	rec := h.do(http.MethodPost, PathIssuance, pstHeaders(issueB64))
	if rec.Code != 500 || strings.Contains(rec.Body.String(), "pool exhausted") {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	if !strings.Contains(h.log.String(), "pool exhausted") || !strings.Contains(h.log.String(), `"level":"ERROR"`) {
		t.Errorf("cause not logged: %s", h.log)
	}
}

func TestCORS(t *testing.T) {
	h := newHarness(t, nil)
	rec := h.do(http.MethodOptions, PathIssuance, map[string]string{
		"Origin": "https://site.example", "Access-Control-Request-Method": "POST",
		"Access-Control-Request-Headers": "sec-private-state-token",
	})
	if rec.Code != 204 {
		t.Fatalf("preflight %d", rec.Code)
	}
	hd := rec.Header()
	if hd.Get("Access-Control-Allow-Origin") != "*" || !strings.Contains(hd.Get("Access-Control-Allow-Headers"), HeaderToken) ||
		!strings.Contains(hd.Get("Access-Control-Allow-Headers"), HeaderCryptoVersion) || !strings.Contains(hd.Get("Access-Control-Allow-Methods"), "POST") {
		t.Errorf("preflight headers %v", hd)
	}
	rec = h.do(http.MethodPost, PathIssuance, map[string]string{"Origin": "https://site.example", HeaderCryptoVersion: CryptoVersion, HeaderToken: issueB64})
	hd = rec.Header()
	if rec.Code != 200 || hd.Get("Access-Control-Allow-Origin") != "*" || !strings.Contains(hd.Get("Access-Control-Expose-Headers"), HeaderToken) ||
		!strings.Contains(hd.Get("Access-Control-Expose-Headers"), HeaderLifetime) {
		t.Errorf("simple response %d %v", rec.Code, hd)
	}
	if pp := hd.Get("Permissions-Policy"); pp != "private-state-token-issuance=*, private-state-token-redemption=*" {
		t.Errorf("Permissions-Policy %q", pp)
	}

	// Restricted.
	h = newHarness(t, func(c *Config) { c.AllowedOrigins = []string{"https://partner.example/"} })
	for origin, ok := range map[string]bool{"https://partner.example": true, "https://issuer.example": true, "https://evil.example": false, "null": false} {
		rec = h.do(http.MethodPost, PathRedemption, map[string]string{"Origin": origin, HeaderCryptoVersion: CryptoVersion, HeaderToken: redeemB64})
		acao := rec.Header().Get("Access-Control-Allow-Origin")
		if ok && (rec.Code != 200 || acao != origin) || !ok && (rec.Code != 403 || acao != "") {
			t.Errorf("origin %s: %d ACAO %q", origin, rec.Code, acao)
		}
		if !strings.Contains(strings.Join(rec.Header().Values("Vary"), ","), "Origin") {
			t.Errorf("origin %s: no Vary: Origin", origin)
		}
		pre := h.do(http.MethodOptions, PathRedemption, map[string]string{"Origin": origin, "Access-Control-Request-Method": "GET"})
		if ok != (pre.Code == 204) {
			t.Errorf("preflight from %s: %d", origin, pre.Code)
		}
	}
	// The public documents stay readable by anyone without Origin.
	if rec := h.do(http.MethodGet, PathKeyCommitment, nil); rec.Code != 200 {
		t.Errorf("commitment %d", rec.Code)
	}
}

// blockingIssuer's Issue waits until released.
func TestGracefulShutdown(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ShutdownTimeout = 5 * time.Second })
	entered := make(chan struct{})
	release := make(chan struct{})
	h.iss.set(func(f *fakeIssuer) {
		f.issueHook = func(context.Context) { close(entered); <-release }
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.s.Serve(ctx, ln) }()
	url := "http://" + ln.Addr().String()
	waitFor(t, func() bool {
		r, err := http.Get(url + PathHealthz)
		if err == nil {
			r.Body.Close()
		}
		return err == nil
	})
	// Serve's own probe makes it ready.
	waitFor(t, func() bool { return h.s.ready.current() == nil })

	type result struct {
		code  int
		token string
		err   error
	}
	got := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, url+PathIssuance, nil)
		req.Header.Set(HeaderCryptoVersion, CryptoVersion)
		req.Header.Set(HeaderToken, issueB64)
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			got <- result{err: err}
			return
		}
		defer r.Body.Close()
		_, _ = io.Copy(io.Discard, r.Body)
		got <- result{code: r.StatusCode, token: r.Header.Get(HeaderToken)}
	}()
	<-entered
	cancel()
	// Shutdown has begun: new connections are refused, Serve waits.
	waitFor(t, func() bool {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case err := <-served:
		t.Fatalf("Serve returned with a request in flight: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	r := <-got
	if r.err != nil || r.code != 200 || r.token == "" {
		t.Fatalf("in-flight request: %+v", r)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
}

func TestShutdownDeadline(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ShutdownTimeout = 100 * time.Millisecond; c.RequestTimeout = 10 * time.Second })
	entered := make(chan struct{})
	var once sync.Once
	release := make(chan struct{})
	defer close(release)
	h.iss.set(func(f *fakeIssuer) {
		f.issueHook = func(context.Context) { once.Do(func() { close(entered) }); <-release }
	})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.s.Serve(ctx, ln) }()
	waitFor(t, func() bool { return h.s.ready.current() == nil })
	var clientDone atomic.Bool
	go func() {
		req, _ := http.NewRequest(http.MethodPost, "http://"+ln.Addr().String()+PathIssuance, nil)
		req.Header.Set(HeaderCryptoVersion, CryptoVersion)
		req.Header.Set(HeaderToken, issueB64)
		if r, err := http.DefaultClient.Do(req); err == nil {
			r.Body.Close()
		}
		clientDone.Store(true)
	}()
	<-entered
	cancel()
	select {
	case err := <-served:
		if err == nil {
			t.Fatal("Serve reported a clean shutdown past its deadline")
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Serve did not give up after ShutdownTimeout")
	}
	waitFor(t, clientDone.Load)
}

// TestServeWaitsForAbandonedCalls: a request that timed out leaves its
// issuer call running; Serve must not return (after which the caller wipes
// the keys) until that call has finished.
func TestServeWaitsForAbandonedCalls(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ShutdownTimeout = 5 * time.Second; c.RequestTimeout = 100 * time.Millisecond })
	release := make(chan struct{})
	var finished atomic.Bool
	h.iss.set(func(f *fakeIssuer) {
		f.issueHook = func(context.Context) { <-release; finished.Store(true) }
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.s.Serve(ctx, ln) }()
	waitFor(t, func() bool { return h.s.ready.current() == nil })

	req, _ := http.NewRequest(http.MethodGet, "http://"+ln.Addr().String()+PathIssuance, nil)
	req.Header.Set(HeaderCryptoVersion, CryptoVersion)
	req.Header.Set(HeaderToken, issueB64)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("timed-out request: %d, want 503", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-served:
		t.Fatalf("Serve returned with an issuer call still running: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	select {
	case <-served:
		if !finished.Load() {
			t.Fatal("Serve returned before the call finished")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the call finished")
	}
}

// ctxReady's Ready fails when its context ends, as the real one does.
type ctxReady struct{ *fakeIssuer }

func (c ctxReady) Ready(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(50 * time.Millisecond):
		return nil
	}
}

// TestReadyzCallerCannotMarkNotReady: a /readyz whose client hangs up must
// not leave the replica not ready (it used to store the probe that its
// cancelled context had failed, so anyone could take a replica down).
func TestReadyzCallerCannotMarkNotReady(t *testing.T) {
	s := New(Config{Logger: slog.New(slog.DiscardHandler)}, ctxReady{newFake()})
	if err := s.CheckReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequest(http.MethodGet, PathReadyz, nil).WithContext(ctx)
	cancel()
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("abandoned /readyz answered %d", rec.Code)
	}
	// Let the detached probe finish; the replica stays ready.
	waitFor(t, func() bool {
		s.ready.fmu.Lock()
		defer s.ready.fmu.Unlock()
		return s.ready.flight == nil
	})
	if c := httptestDo(s, http.MethodPost, PathIssuance, pstHeaders(issueB64)).Code; c != 200 {
		t.Fatalf("issuance after an abandoned /readyz: %d", c)
	}
}
