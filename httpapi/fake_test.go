package httpapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pstd/pstd/internal/pstderr"
)

// fakeIssuer is a test double behind the Issuer interface. By default it
// checks only the §4 framing (returning Malformed for junk) and answers
// with well-framed dummy messages.
type fakeIssuer struct {
	mu         sync.Mutex
	batch      int
	readyErr   error
	commitment []byte
	commitID   uint64
	jwks       []byte
	issueErr   error
	redeemErr  error
	record     string
	issueHook  func(ctx context.Context) // runs inside Issue before answering
	redeemHook func(ctx context.Context)
	lastMax    int
	issued     int // override of the issued count when > 0
	readyCalls int
}

func newFake() *fakeIssuer {
	return &fakeIssuer{
		batch:      10,
		commitment: []byte(`{"PrivateStateTokenV1VOPRF":{"protocol_version":"PrivateStateTokenV1VOPRF","id":1,"batchsize":10,"keys":{}}}`),
		commitID:   1,
		jwks:       []byte(`{"keys":[]}`),
		record:     "eyJhbGciOiJFUzI1NiIsInR5cCI6InBzdC1yci1qd3QifQ.eyJpc3MiOiJ4In0.c2ln",
	}
}

func (f *fakeIssuer) set(fn func(f *fakeIssuer)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeIssuer) Commitment(ctx context.Context) ([]byte, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.commitment == nil {
		return nil, 0, pstderr.New(pstderr.Unavailable, "no key commitment loaded")
	}
	return f.commitment, f.commitID, nil
}

func (f *fakeIssuer) BatchSize() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.batch
}

func (f *fakeIssuer) Issue(ctx context.Context, req []byte, max int) ([]byte, int, error) {
	f.mu.Lock()
	hook, ierr, override := f.issueHook, f.issueErr, f.issued
	f.lastMax = max
	f.mu.Unlock()
	if hook != nil {
		hook(ctx)
	}
	if ierr != nil {
		return nil, 0, ierr
	}
	if len(req) < 2 {
		return nil, 0, pstderr.New(pstderr.Malformed, "short issue request")
	}
	count := int(binary.BigEndian.Uint16(req))
	if count == 0 || len(req) != 2+97*count {
		return nil, 0, pstderr.New(pstderr.Malformed, "bad issue request length")
	}
	n := min(count, max)
	if override > 0 {
		n = override
	}
	resp := binary.BigEndian.AppendUint16(nil, uint16(n))
	resp = binary.BigEndian.AppendUint32(resp, 1)
	resp = append(resp, bytes.Repeat([]byte{4}, 97*n)...)
	resp = binary.BigEndian.AppendUint16(resp, 96)
	resp = append(resp, make([]byte, 96)...)
	return resp, n, nil
}

func (f *fakeIssuer) Redeem(ctx context.Context, req []byte) (string, error) {
	f.mu.Lock()
	hook, rerr, record := f.redeemHook, f.redeemErr, f.record
	f.mu.Unlock()
	if hook != nil {
		hook(ctx)
	}
	if rerr != nil {
		return "", rerr
	}
	if len(req) < 2 || int(binary.BigEndian.Uint16(req)) != 165 || len(req) < 2+165+2 {
		return "", pstderr.New(pstderr.Malformed, "bad redemption request framing")
	}
	if int(binary.BigEndian.Uint16(req[167:])) != len(req)-169 {
		return "", pstderr.New(pstderr.Malformed, "bad client data length")
	}
	return record, nil
}

func (f *fakeIssuer) JWKS(ctx context.Context) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.jwks, nil
}

func (f *fakeIssuer) Ready(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.readyCalls++
	return f.readyErr
}

// issueRequest is a well-framed issue request of count elements.
func issueRequest(count int) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(count))
	return append(b, bytes.Repeat([]byte{4}, 97*count)...)
}

// redeemRequest is a well-framed redemption request.
func redeemRequest() []byte {
	b := binary.BigEndian.AppendUint16(nil, 165)
	b = append(b, make([]byte, 165)...)
	cd := []byte("\xa2\x70redeeming-origin\x72https://rp.example")
	b = binary.BigEndian.AppendUint16(b, uint16(len(cd)))
	return append(b, cd...)
}

var (
	issueB64  = base64.StdEncoding.EncodeToString(issueRequest(10))
	redeemB64 = base64.StdEncoding.EncodeToString(redeemRequest())
)

// syncBuffer is a concurrency-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lines returns the JSON log records.
func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line not JSON: %q", l)
		}
		out = append(out, m)
	}
	return out
}

type harness struct {
	s   *Server
	iss *fakeIssuer
	log *syncBuffer
	reg *prometheus.Registry
	// done closes when the test ends: hooks that must hang block on it.
	done chan struct{}
}

// newHarness builds a ready server around a fake issuer. mod may adjust the
// config before New.
func newHarness(t testing.TB, mod func(*Config)) *harness {
	t.Helper()
	h := &harness{iss: newFake(), log: &syncBuffer{}, reg: prometheus.NewRegistry(), done: make(chan struct{})}
	t.Cleanup(func() { close(h.done) })
	cfg := Config{
		IssuerOrigin:       "https://issuer.example",
		RedemptionLifetime: 7 * 24 * time.Hour,
		Logger:             slog.New(slog.NewJSONHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:         h.reg,
		RequestTimeout:     2 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	h.s = New(cfg, h.iss)
	if err := h.s.CheckReady(context.Background()); err != nil && h.iss.readyErr == nil {
		t.Fatalf("CheckReady: %v", err)
	}
	return h
}

// do sends one request through the handler.
func (h *harness) do(method, path string, hdr map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return h.doReq(req)
}

func (h *harness) doReq(req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.s.Handler().ServeHTTP(rec, req)
	return rec
}

// pstHeaders are the request headers of a good request.
func pstHeaders(token string) map[string]string {
	return map[string]string{HeaderCryptoVersion: CryptoVersion, HeaderToken: token}
}

// metricsText scrapes /metrics.
func (h *harness) metricsText(t testing.TB) string {
	t.Helper()
	rec := h.do(http.MethodGet, PathMetrics, nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	return rec.Body.String()
}

// problemOf decodes a problem body and checks the refusal invariants.
func problemOf(t testing.TB, rec *httptest.ResponseRecorder) Problem {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != contentTypeProblem {
		t.Errorf("problem Content-Type = %q", ct)
	}
	if v := rec.Header().Values(HeaderToken); len(v) != 0 {
		t.Errorf("refusal carries %s: %q", HeaderToken, v)
	}
	if v := rec.Header().Values(HeaderLifetime); len(v) != 0 {
		t.Errorf("refusal carries %s: %q", HeaderLifetime, v)
	}
	var p Problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatalf("problem body %q: %v", rec.Body.String(), err)
	}
	if p.Status != rec.Code {
		t.Errorf("problem status %d, response %d", p.Status, rec.Code)
	}
	if p.Title == "" {
		t.Errorf("problem without title")
	}
	return p
}

type httptestRecorder = httptest.ResponseRecorder

// httptestDo sends one request to s.
func httptestDo(s *Server, method, path string, hdr map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	return rec
}
