package demo

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/pstd/pstd/httpapi"
	"github.com/pstd/pstd/rp"
)

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{time.Hour: "1h", time.Minute: "1m", 90 * time.Second: "1m30s", 36 * time.Hour: "36h", time.Hour + time.Minute: "1h1m"} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

// Refusals passes the real rate limit's answers through and remembers only
// refused addresses, for as long as the refusal lasts.
func TestRefusals(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { return now }
	key := func(r *http.Request) string { return httpapi.ClientAddrKey(r.RemoteAddr) }
	f := NewRefusals(httpapi.NewRateLimit(httpapi.RateLimitConfig{Tokens: 10, Window: time.Hour, Now: clock}), key)
	f.now = clock
	a := httptest.NewRequest(http.MethodGet, "/", nil)
	a.RemoteAddr = "192.0.2.1:1234"
	b := httptest.NewRequest(http.MethodGet, "/", nil)
	b.RemoteAddr = "192.0.2.2:1234"

	if n, err := f.Allow(context.Background(), a, 10); n != 10 || err != nil {
		t.Fatalf("first request: %d %v", n, err)
	}
	if f.limitedFor(a) != 0 {
		t.Fatal("an allowed address is reported limited")
	}
	_, err := f.Allow(context.Background(), a, 10)
	var rl *httpapi.RateLimitedError
	if !errors.As(err, &rl) {
		t.Fatalf("second request: %v, want the rate limit's own error", err)
	}
	if got, want := f.limitedFor(a), int(rl.After/time.Second); got != want || got <= 0 {
		t.Fatalf("limited for %d s, want %d (Retry-After)", got, want)
	}
	if f.limitedFor(b) != 0 {
		t.Fatal("another address is reported limited")
	}
	now = now.Add(rl.After)
	if f.limitedFor(a) != 0 || len(f.until) != 0 {
		t.Fatalf("the refusal outlived its Retry-After: %v", f.until)
	}
}

func TestIssuerRoutes(t *testing.T) {
	e := echo.New()
	Register(e, Config{IssuerOrigin: "http://localhost:8480/", RPOrigin: "http://127.0.0.1:8481", RateLimit: 2, RateWindow: time.Minute})
	get := func(path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec
	}
	var cfg pageConfig
	if rec := get("/demo/config.json"); rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &cfg) != nil {
		t.Fatalf("config.json: %d %s", rec.Code, rec.Body)
	}
	if cfg != (pageConfig{Issuer: "http://localhost:8480", RP: "http://127.0.0.1:8481", RateLimit: 2, RateWindow: "1m"}) {
		t.Fatalf("config.json = %+v", cfg)
	}
	if rec := get("/demo/diagnosis"); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"rate_limited_seconds":0`) {
		t.Fatalf("diagnosis without Refusals: %d %s", rec.Code, rec.Body)
	}
	for path, want := range map[string]int{"/demo/": 200, "/demo/pst.js": 200, "/demo/frame.html": 200, "/demo/rp.html": 404, "/demo/static/": 404, "/demo/../go.mod": 404} {
		if rec := get(path); rec.Code != want {
			t.Errorf("GET %s: %d, want %d", path, rec.Code, want)
		}
	}
}

func TestRelyingPartyRoutes(t *testing.T) {
	v, err := rp.NewVerifier(rp.Config{Issuers: map[string]string{"http://localhost:8480": ""}, Audiences: []string{"http://127.0.0.1:8481"}})
	if err != nil {
		t.Fatal(err)
	}
	h := RelyingParty(Config{IssuerOrigin: "http://localhost:8480", RPOrigin: "http://127.0.0.1:8481"}, v)
	get := func(path string, hdr ...string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		if len(hdr) == 2 {
			req.Header.Set(hdr[0], hdr[1])
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	if rec := get("/"); rec.Code != 200 || !strings.Contains(rec.Body.String(), "Relying-party demo") {
		t.Fatalf("GET /: %d", rec.Code)
	}
	for path, want := range map[string]int{"/pst.js": 200, "/style.css": 200, "/index.html": 404, "/frame.html": 404, "/rp.html": 200} {
		if rec := get(path); rec.Code != want {
			t.Errorf("GET %s: %d, want %d", path, rec.Code, want)
		}
	}
	// /verify is rp.Handler in Required mode: no record, 401; a record
	// that is not one, 403; both problem documents.
	if rec := get("/verify"); rec.Code != 401 || rec.Header().Get("Content-Type") != "application/problem+json" {
		t.Fatalf("verify without a record: %d %s", rec.Code, rec.Body)
	}
	if rec := get("/verify", rp.HeaderName, `"http://localhost:8480";redemption-record="a.b.c"`); rec.Code != 403 || !strings.Contains(rec.Body.String(), rp.ProblemInvalid) {
		t.Fatalf("verify with a bad record: %d %s", rec.Code, rec.Body)
	}
	if pp := get("/").Header().Get("Permissions-Policy"); !strings.Contains(pp, "private-state-token-redemption") {
		t.Fatalf("Permissions-Policy %q", pp)
	}
}
