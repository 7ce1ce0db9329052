package httpapi

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

type memSpent struct {
	mu   sync.Mutex
	seen map[[32]byte]bool
}

func (m *memSpent) Spend(_ context.Context, h [32]byte, _ time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.seen == nil {
		m.seen = map[[32]byte]bool{}
	}
	if m.seen[h] {
		return false, nil
	}
	m.seen[h] = true
	return true, nil
}

// issueWith makes an issuance request with ?pst-ticket=ticket (none if "").
func (h *harness) issueWith(ticket string) *httptest.ResponseRecorder {
	path := PathIssuance
	if ticket != "" {
		path += "?" + TicketParam + "=" + ticket
	}
	return h.do(http.MethodGet, path, pstHeaders(base64.StdEncoding.EncodeToString(issueRequest(1))))
}

// Without a ticket, with an expired, forged, too long-lived or replayed
// one, issuance is refused before the issuer is asked to do anything.
func TestTicketPolicy(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	pol := &TicketPolicy{Key: key, Spent: &memSpent{}, Now: func() time.Time { return now }}
	h := newHarness(t, func(c *Config) { c.Policy = pol })
	calls := 0
	h.iss.set(func(f *fakeIssuer) { f.issueHook = func(context.Context) { calls++ } })

	good, _ := MintTicket(key, 5*time.Minute, now)
	expired, _ := MintTicket(key, -time.Second, now)
	longLived, _ := MintTicket(key, time.Hour, now)
	forged, _ := MintTicket([]byte("another key, also 32 bytes long!"), 5*time.Minute, now)
	for name, ticket := range map[string]string{"none": "", "expired": expired, "too long-lived": longLived, "forged": forged, "garbage": "AAAA"} {
		if rec := h.issueWith(ticket); rec.Code != http.StatusForbidden || problemOf(t, rec).Type != ProblemTypePrefix+"denied" {
			t.Errorf("%s: %d %s", name, rec.Code, rec.Body)
		}
	}
	if calls != 0 {
		t.Fatalf("the issuer was asked %d times for refused tickets", calls)
	}
	if rec := h.issueWith(good); rec.Code != http.StatusOK {
		t.Fatalf("a good ticket: %d %s", rec.Code, rec.Body)
	}
	if rec := h.issueWith(good); rec.Code != http.StatusForbidden {
		t.Fatalf("a replayed ticket: %d", rec.Code)
	}
	if calls != 1 {
		t.Fatalf("the issuer was asked %d times, want once", calls)
	}
}

// The webhook: yes issues; no, down, slow, or a non-answer refuse.
func TestWebhookPolicy(t *testing.T) {
	var mu sync.Mutex
	var seen webhookRequest
	answer := func(w http.ResponseWriter, r *http.Request) {
		var got webhookRequest
		_ = json.NewDecoder(r.Body).Decode(&got)
		if r.URL.Path == "/yes" {
			mu.Lock()
			seen = got
			mu.Unlock()
		}
		switch r.URL.Path {
		case "/yes":
			_, _ = w.Write([]byte(`{"issue": true}`))
		case "/no":
			_, _ = w.Write([]byte(`{"issue": false}`))
		case "/slow":
			time.Sleep(300 * time.Millisecond)
			_, _ = w.Write([]byte(`{"issue": true}`))
		case "/garbage":
			_, _ = w.Write([]byte(`yes`))
		default:
			http.Error(w, "no", http.StatusInternalServerError)
		}
	}
	srv := httptest.NewServer(http.HandlerFunc(answer))
	defer srv.Close()
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close()
	for path, want := range map[string]int{"/yes": 200, "/no": 403, "/slow": 503, "/garbage": 403, "/error": 403, "down": 503} {
		url := srv.URL + path
		if path == "down" {
			url = downURL
		}
		h := newHarness(t, func(c *Config) {
			c.Policy = &WebhookPolicy{URL: url, Headers: []string{"X-Session"}, Timeout: 100 * time.Millisecond}
		})
		req := httptest.NewRequest(http.MethodGet, PathIssuance, nil)
		req.Header.Set(HeaderCryptoVersion, CryptoVersion)
		req.Header.Set(HeaderToken, base64.StdEncoding.EncodeToString(issueRequest(1)))
		req.Header.Set("Cookie", "sid=abc")
		req.Header.Set("X-Session", "trusted")
		if rec := h.doReq(req); rec.Code != want {
			t.Errorf("%s: %d, want %d (%s)", path, rec.Code, want, rec.Body)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen.Cookies) != 1 || seen.Cookies[0] != "sid=abc" || seen.Headers["X-Session"][0] != "trusted" {
		t.Fatalf("the webhook saw %+v", seen)
	}
	if _, ok := seen.Headers[HeaderToken]; ok {
		t.Fatal("the webhook saw the blinded elements")
	}
}

// Redemption limits refuse before the issuer is asked.
func TestRedemptionPolicy(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.RedemptionPolicy = NewRateLimit(RateLimitConfig{Tokens: 1, Window: time.Hour, What: "redemptions"})
	})
	calls := 0
	h.iss.set(func(f *fakeIssuer) { f.redeemHook = func(context.Context) { calls++ } })
	tok := base64.StdEncoding.EncodeToString(redeemRequest())
	if rec := h.do(http.MethodGet, PathRedemption, pstHeaders(tok)); rec.Code != http.StatusOK {
		t.Fatalf("first: %d", rec.Code)
	}
	if rec := h.do(http.MethodGet, PathRedemption, pstHeaders(tok)); rec.Code != http.StatusTooManyRequests {
		t.Fatalf("second: %d", rec.Code)
	}
	if calls != 1 {
		t.Fatalf("the issuer was asked %d times", calls)
	}
}
