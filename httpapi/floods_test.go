package httpapi

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pstd/pstd/internal/pstderr"
)

// serveOn runs s on a loopback listener until the test ends and returns
// its address.
func serveOn(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

// dialFrom connects to addr from the loopback address local (127.0.0.x).
func dialFrom(t *testing.T, local, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// refusedFrom reports whether a connection from local to addr is closed by
// the server (at connect, or right after) rather than kept open.
func refusedFrom(t *testing.T, local, addr string) bool {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return errors.Is(err, syscall.ECONNRESET)
	}
	defer c.Close()
	return closedByPeer(c, 5*time.Second)
}

// closedByPeer reports whether the server closed c (read ends in EOF or a
// reset) within a few seconds; an open idle connection times the read out.
func closedByPeer(c net.Conn, within time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// rawGet sends a GET on c and returns the status.
func rawGet(t *testing.T, c net.Conn, path string) int {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestConnCapPerAddress(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := New(Config{Registerer: reg, MaxConnsPerAddr: 4, Logger: slog.New(slog.DiscardHandler)}, newFake())
	addr := serveOn(t, s)
	var held []net.Conn
	for range 4 {
		held = append(held, dialFrom(t, "127.0.0.1", addr))
	}
	// The held ones are accepted and kept open.
	waitFor(t, func() bool { return s.conns.Load() != nil && s.conns.Load().open() == 4 })
	for range 3 {
		if !refusedFrom(t, "127.0.0.1", addr) {
			t.Fatal("a fifth connection from one address was kept open")
		}
	}
	if closedByPeer(held[0], 100*time.Millisecond) {
		t.Fatal("a connection within the cap was closed")
	}
	// Another address is served meanwhile.
	if code := rawGet(t, dialFrom(t, "127.0.0.2", addr), PathHealthz); code != 200 {
		t.Fatalf("/healthz from another address: %d", code)
	}
	if v := counterValue(t, reg, "pstd_connections_refused_total"); v < 3 {
		t.Errorf("connections_refused_total = %v, want ≥ 3", v)
	}
	// Closing frees the slots.
	for _, c := range held {
		c.Close()
	}
	waitFor(t, func() bool { return s.conns.Load() != nil && s.conns.Load().open() <= 1 })
	if code := rawGet(t, dialFrom(t, "127.0.0.1", addr), PathHealthz); code != 200 {
		t.Fatalf("/healthz after the slots freed: %d", code)
	}
}

func TestConnCapTotal(t *testing.T) {
	s := New(Config{MaxConns: 3, MaxConnsPerAddr: -1, Logger: slog.New(slog.DiscardHandler)}, newFake())
	addr := serveOn(t, s)
	for i := range 3 {
		dialFrom(t, "127.0.0."+string(rune('1'+i)), addr)
	}
	waitFor(t, func() bool { return s.conns.Load() != nil && s.conns.Load().open() == 3 })
	if !refusedFrom(t, "127.0.0.9", addr) {
		t.Fatal("a connection over the total cap was kept open")
	}
}

func TestConnCapExemptsTrustedProxies(t *testing.T) {
	s := New(Config{MaxConnsPerAddr: 1, ConnCapExempt: mustPrefixes(t, "127.0.0.5/32"), Logger: slog.New(slog.DiscardHandler)}, newFake())
	addr := serveOn(t, s)
	for range 3 {
		dialFrom(t, "127.0.0.5", addr)
	}
	waitFor(t, func() bool { return s.conns.Load() != nil && s.conns.Load().open() == 3 })
}

// TestIdleBeforeFirstRequestClosed: a connection that never sends a
// request is closed after ReadHeaderTimeout, freeing its slot.
func TestIdleBeforeFirstRequestClosed(t *testing.T) {
	s := New(Config{ReadHeaderTimeout: 300 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)}, newFake())
	addr := serveOn(t, s)
	c := dialFrom(t, "127.0.0.1", addr)
	if !closedByPeer(c, 5*time.Second) {
		t.Fatal("an idle connection that sent nothing was kept open")
	}
	waitFor(t, func() bool { return s.conns.Load() != nil && s.conns.Load().open() == 0 })
}

// TestTransferEncodingRefused: Content-Length together with
// Transfer-Encoding is refused with 400 and the connection closed.
func TestTransferEncodingRefused(t *testing.T) {
	s := New(Config{Logger: slog.New(slog.DiscardHandler)}, newFake())
	addr := serveOn(t, s)
	c := dialFrom(t, "127.0.0.1", addr)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	req := "POST " + PathIssuance + " HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !resp.Close || !strings.Contains(string(body), "transfer-encoding") {
		t.Fatalf("CL+TE: %d close=%v %s", resp.StatusCode, resp.Close, body)
	}
	// Nothing more is answered on that connection.
	if _, err := http.ReadResponse(br, nil); err == nil {
		t.Fatal("the connection answered a second, smuggled request")
	}
}

// blockingIssuer blocks Issue and Redeem until release closes.
func blockingHarness(t *testing.T, mod func(*Config)) (*harness, chan struct{}, *atomic.Int32) {
	release := make(chan struct{})
	var started atomic.Int32
	h := newHarness(t, mod)
	hook := func(ctx context.Context) {
		started.Add(1)
		<-release
	}
	h.iss.set(func(f *fakeIssuer) { f.issueHook, f.redeemHook = hook, hook })
	return h, release, &started
}

func pstReq(path, token, remote string) *http.Request {
	req, _ := http.NewRequest(http.MethodPost, path, nil)
	req.Header.Set(HeaderCryptoVersion, CryptoVersion)
	req.Header.Set(HeaderToken, token)
	req.RemoteAddr = remote
	return req
}

func TestAdmissionRefusesAtOnceWhenFull(t *testing.T) {
	h, release, started := blockingHarness(t, func(c *Config) { c.MaxIssuance, c.MaxRedemption, c.MaxQueued, c.MaxIssuancePerClient = 2, 1, -1, 1 })
	var wg sync.WaitGroup
	codes := make(chan int, 3)
	for i := range 2 {
		wg.Go(func() {
			codes <- h.doReq(pstReq(PathIssuance, issueB64, "192.0.2."+string(rune('1'+i))+":1")).Code
		})
	}
	wg.Go(func() { codes <- h.doReq(pstReq(PathRedemption, redeemB64, "192.0.2.9:1")).Code })
	waitFor(t, func() bool { return started.Load() == 3 })

	for _, r := range []*http.Request{pstReq(PathIssuance, issueB64, "192.0.2.7:1"), pstReq(PathRedemption, redeemB64, "192.0.2.8:1")} {
		start := time.Now()
		rec := h.doReq(r)
		if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "1" {
			t.Fatalf("%s when full: %d Retry-After %q", r.URL.Path, rec.Code, rec.Header().Get("Retry-After"))
		}
		if p := problemOf(t, rec); p.Type != ProblemTypePrefix+reasonOverloaded {
			t.Errorf("problem %+v", p)
		}
		// "At once": no queueing behind the blocked calls (which never end
		// before release, so any wait would be the whole test's).
		if time.Since(start) > time.Second {
			t.Errorf("refusal took %v", time.Since(start))
		}
	}
	m := h.metricsText(t)
	for _, want := range []string{
		`pstd_admission_rejected_total{route="/.well-known/private-state-token/issuance"} 1`,
		`pstd_inflight_requests{route="/.well-known/private-state-token/issuance"} 2`,
		`pstd_ready 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	close(release)
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 200 {
			t.Errorf("admitted request answered %d", c)
		}
	}
	if c := h.doReq(pstReq(PathIssuance, issueB64, "192.0.2.7:1")).Code; c != 200 {
		t.Fatalf("after the slots freed: %d", c)
	}
}

func TestAdmissionPerClientShare(t *testing.T) {
	h, release, started := blockingHarness(t, func(c *Config) { c.MaxIssuance, c.MaxQueued, c.MaxIssuancePerClient = 4, -1, 1 })
	defer close(release)
	go h.doReq(pstReq(PathIssuance, issueB64, "192.0.2.1:1"))
	waitFor(t, func() bool { return started.Load() == 1 })
	if c := h.doReq(pstReq(PathIssuance, issueB64, "192.0.2.1:2")).Code; c != http.StatusServiceUnavailable {
		t.Fatalf("second request of one client: %d", c)
	}
	go h.doReq(pstReq(PathIssuance, issueB64, "192.0.2.2:1"))
	waitFor(t, func() bool { return started.Load() == 2 })
}

// slowReady's Ready blocks until its context ends (a timeout, as when the
// CPU is too busy to run the probe in time) or returns err.
type slowReady struct {
	*fakeIssuer
	mu   sync.Mutex
	hang bool
	err  error
}

func (s *slowReady) set(hang bool, err error) {
	s.mu.Lock()
	s.hang, s.err = hang, err
	s.mu.Unlock()
}

func (s *slowReady) Ready(ctx context.Context) error {
	s.mu.Lock()
	hang, err := s.hang, s.err
	s.mu.Unlock()
	if hang {
		<-ctx.Done()
		return pstderr.Wrap(pstderr.Unavailable, ctx.Err(), "database unreachable")
	}
	return err
}

func TestReadinessToleratesTimeoutsButNotErrors(t *testing.T) {
	iss := &slowReady{fakeIssuer: newFake()}
	reg := prometheus.NewRegistry()
	s := New(Config{Registerer: reg, ReadyTimeout: 20 * time.Millisecond, ReadyTimeouts: 3, Logger: slog.New(slog.DiscardHandler)}, iss)
	ctx := context.Background()
	if err := s.CheckReady(ctx); err != nil {
		t.Fatal(err)
	}
	iss.set(true, nil)
	for i := range 2 {
		if err := s.CheckReady(ctx); err != nil {
			t.Fatalf("timed-out probe %d turned the replica not ready: %v", i+1, err)
		}
	}
	if err := s.CheckReady(ctx); !errors.Is(err, pstderr.Unavailable) {
		t.Fatalf("third timed-out probe in a row: %v, want not ready", err)
	}
	if v := counterValue(t, reg, "pstd_readiness_probe_timeouts_total"); v != 3 {
		t.Errorf("probe timeouts counted %v, want 3", v)
	}
	// Recovery needs one good probe; then an answer that is an error
	// counts at once.
	iss.set(false, nil)
	if err := s.CheckReady(ctx); err != nil {
		t.Fatal(err)
	}
	iss.set(false, pstderr.New(pstderr.Unavailable, "HSM session unusable"))
	if err := s.CheckReady(ctx); err == nil {
		t.Fatal("an error answer did not turn the replica not ready")
	}
	// A timeout streak is broken by an answer.
	iss.set(false, nil)
	_ = s.CheckReady(ctx)
	iss.set(true, nil)
	_ = s.CheckReady(ctx)
	_ = s.CheckReady(ctx)
	iss.set(false, nil)
	_ = s.CheckReady(ctx)
	iss.set(true, nil)
	if err := s.CheckReady(ctx); err != nil {
		t.Fatalf("a streak broken by a good probe still counted: %v", err)
	}
}

func counterValue(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

func mustPrefixes(t *testing.T, cidrs ...string) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

// TestAdmissionQueue: a burst beyond the slots waits in the bounded queue
// and is served when a slot frees; beyond the queue it is refused at once;
// a waiter that gets no slot within MaxQueueWait is refused, not left to
// time out.
func TestAdmissionQueue(t *testing.T) {
	h, release, started := blockingHarness(t, func(c *Config) {
		c.MaxIssuance, c.MaxQueued, c.MaxIssuancePerClient, c.MaxQueueWait = 1, 1, -1, time.Minute
	})
	go h.doReq(pstReq(PathIssuance, issueB64, "192.0.2.1:1"))
	waitFor(t, func() bool { return started.Load() == 1 })
	queued := make(chan int, 1)
	go func() { queued <- h.doReq(pstReq(PathIssuance, issueB64, "192.0.2.2:1")).Code }()
	waitFor(t, func() bool {
		h.s.issueAdm.mu.Lock()
		defer h.s.issueAdm.mu.Unlock()
		return h.s.issueAdm.admitted == 2
	})
	if c := h.doReq(pstReq(PathIssuance, issueB64, "192.0.2.3:1")).Code; c != http.StatusServiceUnavailable {
		t.Fatalf("beyond slots and queue: %d", c)
	}
	close(release)
	if c := <-queued; c != 200 {
		t.Fatalf("queued request: %d", c)
	}

	h2, release2, started2 := blockingHarness(t, func(c *Config) {
		c.MaxIssuance, c.MaxQueued, c.MaxIssuancePerClient, c.MaxQueueWait = 1, 4, -1, 50*time.Millisecond
	})
	defer close(release2)
	go h2.doReq(pstReq(PathIssuance, issueB64, "192.0.2.1:1"))
	waitFor(t, func() bool { return started2.Load() == 1 })
	rec := h2.doReq(pstReq(PathIssuance, issueB64, "192.0.2.2:1"))
	if p := problemOf(t, rec); rec.Code != http.StatusServiceUnavailable || p.Type != ProblemTypePrefix+reasonOverloaded {
		t.Fatalf("waiter past MaxQueueWait: %d %+v", rec.Code, p)
	}
}
