package httpapi

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pstd/pstd/internal/pstderr"
)

func TestIssuanceSuccess(t *testing.T) {
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		t.Run(method, func(t *testing.T) {
			h := newHarness(t, nil)
			rec := h.do(method, PathIssuance, pstHeaders(issueB64))
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			v := rec.Header().Get(HeaderToken)
			raw, err := base64.StdEncoding.Strict().DecodeString(v)
			if err != nil {
				t.Fatalf("response header not std base64: %v", err)
			}
			if want := 2 + 4 + 10*97 + 2 + 96; len(raw) != want || raw[1] != 10 {
				t.Fatalf("response %d bytes, count %d", len(raw), raw[1])
			}
			if h.iss.lastMax != 10 {
				t.Errorf("Issue max = %d, want batch size 10", h.iss.lastMax)
			}
			if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control = %q", cc)
			}
			m := h.metricsText(t)
			for _, want := range []string{`pstd_issuance_requests_total{outcome="issued"} 1`, "pstd_tokens_issued_total 10"} {
				if !strings.Contains(m, want) {
					t.Errorf("metrics lack %q", want)
				}
			}
		})
	}
}

func TestIssuanceFewerThanBatch(t *testing.T) {
	h := newHarness(t, nil)
	rec := h.do(http.MethodPost, PathIssuance, pstHeaders(base64.StdEncoding.EncodeToString(issueRequest(3))))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	// AllowAll grants what was asked: max = min(batch, allowed) = 3.
	if h.iss.lastMax != 3 {
		t.Errorf("max = %d", h.iss.lastMax)
	}
}

func TestRedemptionSuccess(t *testing.T) {
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		t.Run(method, func(t *testing.T) {
			h := newHarness(t, nil)
			rec := h.do(method, PathRedemption, pstHeaders(redeemB64))
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			if got := rec.Header().Get(HeaderToken); got != h.iss.record {
				t.Errorf("record header %q, want the record verbatim %q", got, h.iss.record)
			}
			if got := rec.Header().Get(HeaderLifetime); got != "604800" {
				t.Errorf("lifetime %q", got)
			}
			if cc := rec.Header().Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control = %q", cc)
			}
			if !strings.Contains(h.metricsText(t), `pstd_redemption_requests_total{outcome="redeemed"} 1`) {
				t.Error("redemption not counted")
			}
		})
	}
}

func TestRedemptionNoLifetime(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.RedemptionLifetime = 0 })
	rec := h.do(http.MethodPost, PathRedemption, pstHeaders(redeemB64))
	if rec.Code != 200 || rec.Header().Values(HeaderLifetime) != nil {
		t.Fatalf("status %d lifetime %q", rec.Code, rec.Header().Values(HeaderLifetime))
	}
}

// rejection is one refusal case for a PST endpoint.
type rejection struct {
	name   string
	path   string // PathIssuance or PathRedemption; "" for both
	hdr    map[string]string
	multi  map[string][]string // headers with several values
	setup  func(h *harness)
	cfg    func(c *Config)
	status int
	reason string
	retry  bool // Retry-After expected
}

func rejections() []rejection {
	kindCase := func(k pstderr.Kind, status int) []rejection {
		err := pstderr.New(k, "detail of %s", k)
		return []rejection{
			{name: "issuer-" + k.String(), path: PathIssuance, setup: func(h *harness) { h.iss.set(func(f *fakeIssuer) { f.issueErr = err }) },
				status: status, reason: k.String(), retry: k == pstderr.RateLimited},
			{name: "issuer-" + k.String(), path: PathRedemption, setup: func(h *harness) { h.iss.set(func(f *fakeIssuer) { f.redeemErr = err }) },
				status: status, reason: k.String(), retry: k == pstderr.RateLimited},
		}
	}
	cases := []rejection{
		{name: "missing-token", hdr: map[string]string{HeaderCryptoVersion: CryptoVersion}, status: 400, reason: "malformed"},
		{name: "empty-token", hdr: pstHeaders(""), status: 400, reason: "malformed"},
		{name: "bad-base64", hdr: pstHeaders("!!!!"), status: 400, reason: "malformed"},
		{name: "quoted", hdr: pstHeaders(`"` + issueB64[:8] + `"`), status: 400, reason: "malformed"},
		{name: "quoted-whole", hdr: pstHeaders(`"AAAA"`), status: 400, reason: "malformed"},
		{name: "inner-space", hdr: pstHeaders("AAAA AAAA"), status: 400, reason: "malformed"},
		{name: "inner-crlf", hdr: pstHeaders("AAAA\r\nAAAA"), status: 400, reason: "malformed"},
		{name: "inner-lf", hdr: pstHeaders("AAAA\nAAAA"), status: 400, reason: "malformed"},
		{name: "tab", hdr: pstHeaders("AA\tAAAAA"), status: 400, reason: "malformed"},
		{name: "unpadded", hdr: pstHeaders("AAA"), status: 400, reason: "malformed"},
		{name: "url-alphabet", hdr: pstHeaders("AA-_"), status: 400, reason: "malformed"},
		{name: "non-canonical-bits", hdr: pstHeaders("AB=="), status: 400, reason: "malformed"},
		{name: "junk-framing", hdr: pstHeaders("AAAA"), status: 400, reason: "malformed"},
		{name: "two-token-headers", multi: map[string][]string{HeaderCryptoVersion: {CryptoVersion}, HeaderToken: {issueB64, issueB64}}, status: 400, reason: "malformed"},
		{name: "oversized-issue", path: PathIssuance, hdr: pstHeaders(base64.StdEncoding.EncodeToString(make([]byte, MaxIssueRequest+1))), status: 400, reason: "malformed"},
		{name: "oversized-redeem", path: PathRedemption, hdr: pstHeaders(base64.StdEncoding.EncodeToString(make([]byte, MaxRedeemRequest+1))), status: 400, reason: "malformed"},
		{name: "oversized-redeem-by-padding", path: PathRedemption, hdr: pstHeaders(base64.StdEncoding.EncodeToString(make([]byte, MaxRedeemRequest+2))), status: 400, reason: "malformed"},
		{name: "missing-version", hdr: map[string]string{HeaderToken: issueB64}, status: 400, reason: "unsupported-version"},
		{name: "pmb-version", hdr: map[string]string{HeaderToken: issueB64, HeaderCryptoVersion: "PrivateStateTokenV1PMB"}, status: 400, reason: "unsupported-version"},
		{name: "v3-version", hdr: map[string]string{HeaderToken: issueB64, HeaderCryptoVersion: "PrivateStateTokenV3"}, status: 400, reason: "unsupported-version"},
		{name: "version-case", hdr: map[string]string{HeaderToken: issueB64, HeaderCryptoVersion: "privatestatetokenv1voprf"}, status: 400, reason: "unsupported-version"},
		{name: "two-versions", multi: map[string][]string{HeaderToken: {issueB64}, HeaderCryptoVersion: {CryptoVersion, CryptoVersion}}, status: 400, reason: "unsupported-version"},
		{name: "plain-error", path: PathIssuance, setup: func(h *harness) {
			h.iss.set(func(f *fakeIssuer) { f.issueErr = errors.New("pq: password=hunter2 connection refused") })
		}, status: 500, reason: "internal"},
		{name: "plain-error", path: PathRedemption, setup: func(h *harness) {
			h.iss.set(func(f *fakeIssuer) { f.redeemErr = errors.New("pq: password=hunter2 connection refused") })
		}, status: 500, reason: "internal"},
		{name: "wrapped-kind", path: PathRedemption, setup: func(h *harness) {
			h.iss.set(func(f *fakeIssuer) {
				f.redeemErr = errors.Join(errors.New("ctx"), pstderr.Wrap(pstderr.AlreadyRedeemed, errors.New("unique violation hunter2"), "token already redeemed"))
			})
		}, status: 409, reason: "already-redeemed"},
		{name: "not-ready", setup: func(h *harness) {
			h.iss.set(func(f *fakeIssuer) { f.readyErr = pstderr.New(pstderr.Unavailable, "database unreachable") })
			_ = h.s.CheckReady(context.Background())
		}, status: 503, reason: "unavailable"},
		{name: "not-ready-plain", setup: func(h *harness) {
			h.iss.set(func(f *fakeIssuer) { f.readyErr = errors.New("boom hunter2") })
			_ = h.s.CheckReady(context.Background())
		}, status: 503, reason: "unavailable"},
		{name: "issuer-panics", path: PathIssuance, setup: func(h *harness) {
			h.iss.set(func(f *fakeIssuer) { f.issueHook = func(context.Context) { panic("hunter2 exploded") } })
		}, status: 500, reason: "internal"},
		{name: "issuer-panics", path: PathRedemption, setup: func(h *harness) {
			h.iss.set(func(f *fakeIssuer) { f.redeemHook = func(context.Context) { panic("hunter2 exploded") } })
		}, status: 500, reason: "internal"},
		{name: "issuer-hangs", path: PathIssuance, cfg: func(c *Config) { c.RequestTimeout = 50 * time.Millisecond },
			setup: func(h *harness) {
				h.iss.set(func(f *fakeIssuer) { f.issueHook = func(context.Context) { <-h.done } })
			}, status: 503, reason: "timeout"},
		{name: "issuer-hangs", path: PathRedemption, cfg: func(c *Config) { c.RequestTimeout = 50 * time.Millisecond },
			setup: func(h *harness) {
				h.iss.set(func(f *fakeIssuer) { f.redeemHook = func(context.Context) { <-h.done } })
			}, status: 503, reason: "timeout"},
		{name: "issuer-honours-deadline", path: PathIssuance, cfg: func(c *Config) { c.RequestTimeout = 50 * time.Millisecond },
			setup: func(h *harness) {
				h.iss.set(func(f *fakeIssuer) {
					f.issueHook = func(ctx context.Context) { <-ctx.Done() }
					f.issueErr = context.DeadlineExceeded
				})
			}, status: 503, reason: "timeout"},
		{name: "issued-more-than-max", path: PathIssuance, setup: func(h *harness) {
			h.iss.set(func(f *fakeIssuer) { f.issued = 11 })
		}, status: 500, reason: "internal"},
		{name: "record-with-newline", path: PathRedemption, setup: func(h *harness) {
			h.iss.set(func(f *fakeIssuer) { f.record = "abc\r\nSet-Cookie: x=y" })
		}, status: 500, reason: "internal"},
		{name: "empty-record", path: PathRedemption, setup: func(h *harness) {
			h.iss.set(func(f *fakeIssuer) { f.record = "" })
		}, status: 500, reason: "internal"},
		{name: "policy-denies", path: PathIssuance, cfg: func(c *Config) { c.Policy = denyPolicy{} }, status: 403, reason: "denied"},
		{name: "policy-zero", path: PathIssuance, cfg: func(c *Config) { c.Policy = zeroPolicy{} }, status: 403, reason: "denied"},
		{name: "policy-rate-limits", path: PathIssuance, cfg: func(c *Config) {
			c.Policy = NewRateLimit(RateLimitConfig{Tokens: 1, Window: time.Hour})
		}, setup: func(h *harness) {
			h.do(http.MethodPost, PathIssuance, pstHeaders(issueB64)) // spends the one token
		}, status: 429, reason: "rate-limited", retry: true},
		{name: "policy-panics", path: PathIssuance, cfg: func(c *Config) { c.Policy = panicPolicy{} }, status: 500, reason: "internal"},
		{name: "origin-not-allowed", cfg: func(c *Config) { c.AllowedOrigins = []string{"https://partner.example"} },
			hdr:    map[string]string{HeaderCryptoVersion: CryptoVersion, "Origin": "https://evil.example"},
			status: 403, reason: "denied"},
	}
	for _, k := range []struct {
		k      pstderr.Kind
		status int
	}{
		{pstderr.Malformed, 400}, {pstderr.BadPoint, 400}, {pstderr.BadCount, 400}, {pstderr.Unsupported, 400},
		{pstderr.UnknownKey, 400}, {pstderr.InvalidToken, 400}, {pstderr.BadProof, 400},
		{pstderr.AlreadyRedeemed, 409}, {pstderr.Denied, 403}, {pstderr.RateLimited, 429}, {pstderr.Unavailable, 503},
		{pstderr.Kind(0), 500},
	} {
		cases = append(cases, kindCase(k.k, k.status)...)
	}
	return cases
}

type denyPolicy struct{}

func (denyPolicy) Allow(context.Context, *http.Request, int) (int, error) {
	return 0, pstderr.New(pstderr.Denied, "not for you")
}

type zeroPolicy struct{}

func (zeroPolicy) Allow(context.Context, *http.Request, int) (int, error) { return 0, nil }

type panicPolicy struct{}

func (panicPolicy) Allow(context.Context, *http.Request, int) (int, error) { panic("policy hunter2") }

func TestRejections(t *testing.T) {
	for _, tc := range rejections() {
		paths := []string{PathIssuance, PathRedemption}
		if tc.path != "" {
			paths = []string{tc.path}
		}
		for _, path := range paths {
			op := strings.TrimPrefix(path, "/.well-known/private-state-token/")
			t.Run(op+"/"+tc.name, func(t *testing.T) {
				h := newHarness(t, tc.cfg)
				if tc.setup != nil {
					tc.setup(h)
				}
				hdr := tc.hdr
				if hdr != nil {
					hdr = map[string]string{}
					for k, v := range tc.hdr {
						hdr[k] = v
					}
					if _, ok := hdr[HeaderToken]; !ok && tc.name == "origin-not-allowed" {
						hdr[HeaderToken] = map[string]string{PathIssuance: issueB64, PathRedemption: redeemB64}[path]
					}
				}
				if hdr == nil && tc.multi == nil {
					hdr = pstHeaders(map[string]string{PathIssuance: issueB64, PathRedemption: redeemB64}[path])
				}
				req, _ := http.NewRequest(http.MethodPost, path, nil)
				req.RemoteAddr = "192.0.2.1:1234"
				for k, v := range hdr {
					req.Header[http.CanonicalHeaderKey(k)] = []string{v}
				}
				for k, v := range tc.multi {
					req.Header[http.CanonicalHeaderKey(k)] = v
				}
				rec := h.doReq(req)
				if rec.Code != tc.status {
					t.Fatalf("status %d, want %d: %s", rec.Code, tc.status, rec.Body)
				}
				p := problemOf(t, rec)
				if want := ProblemTypePrefix + tc.reason; p.Type != want {
					t.Errorf("type %q, want %q", p.Type, want)
				}
				if ra := rec.Header().Get("Retry-After"); tc.retry != (ra != "") {
					t.Errorf("Retry-After %q, expected: %v", ra, tc.retry)
				}
				if strings.Contains(rec.Body.String(), "hunter2") {
					t.Errorf("body leaks the cause: %s", rec.Body)
				}
				if tc.status == 500 && p.Detail != "internal error" {
					t.Errorf("500 detail %q", p.Detail)
				}
				// The outcome is counted under its reason.
				metric := "pstd_issuance_requests_total"
				if path == PathRedemption {
					metric = "pstd_redemption_requests_total"
				}
				if m := h.metricsText(t); !strings.Contains(m, metric+`{outcome="`+tc.reason+`"}`) {
					t.Errorf("%s{outcome=%q} not counted", metric, tc.reason)
				}
			})
		}
	}
}

func TestStatusMapping(t *testing.T) {
	want := map[pstderr.Kind]int{
		pstderr.Kind(0): 500, pstderr.Malformed: 400, pstderr.BadPoint: 400, pstderr.BadCount: 400,
		pstderr.UnknownKey: 400, pstderr.InvalidToken: 400, pstderr.BadProof: 400, pstderr.AlreadyRedeemed: 409,
		pstderr.Unsupported: 400, pstderr.Denied: 403, pstderr.RateLimited: 429, pstderr.Unavailable: 503,
		pstderr.Kind(99): 500,
	}
	for k, s := range want {
		if got := Status(k); got != s {
			t.Errorf("Status(%v) = %d, want %d", k, got, s)
		}
	}
}

func TestRateLimitedRetryAfterFromError(t *testing.T) {
	h := newHarness(t, nil)
	h.iss.set(func(f *fakeIssuer) {
		f.issueErr = &RateLimitedError{Err: pstderr.New(pstderr.RateLimited, "slow down"), After: 2500 * time.Millisecond}
	})
	rec := h.do(http.MethodPost, PathIssuance, pstHeaders(issueB64))
	if rec.Code != 429 || rec.Header().Get("Retry-After") != "3" {
		t.Fatalf("status %d Retry-After %q", rec.Code, rec.Header().Get("Retry-After"))
	}
}

func TestCommitment(t *testing.T) {
	h := newHarness(t, nil)
	rec := h.do(http.MethodGet, PathKeyCommitment, nil)
	if rec.Code != 200 {
		t.Fatalf("status %d", rec.Code)
	}
	if got := rec.Header().Values("Content-Type"); len(got) != 1 || got[0] != "application/pst-issuer-directory" {
		t.Fatalf("Content-Type %q, want exactly application/pst-issuer-directory", got)
	}
	if rec.Body.String() != string(h.iss.commitment) {
		t.Errorf("body %q", rec.Body)
	}
	if cc := rec.Header().Get("Cache-Control"); cc != "public, max-age=300" {
		t.Errorf("Cache-Control %q", cc)
	}
	etag := rec.Header().Get("ETag")
	if !strings.HasPrefix(etag, `"1-`) || !strings.HasSuffix(etag, `"`) {
		t.Fatalf("ETag %q", etag)
	}
	for _, inm := range []string{etag, "W/" + etag, `"nope", ` + etag, "*"} {
		rec = h.do(http.MethodGet, PathKeyCommitment, map[string]string{"If-None-Match": inm})
		if rec.Code != http.StatusNotModified || rec.Body.Len() != 0 || rec.Header().Get("ETag") != etag {
			t.Errorf("If-None-Match %s: status %d, body %d bytes, ETag %q", inm, rec.Code, rec.Body.Len(), rec.Header().Get("ETag"))
		}
	}
	rec = h.do(http.MethodGet, PathKeyCommitment, map[string]string{"If-None-Match": `"0-deadbeef"`})
	if rec.Code != 200 {
		t.Errorf("stale If-None-Match: status %d", rec.Code)
	}

	// A new key set changes the id and so the ETag.
	h.iss.set(func(f *fakeIssuer) {
		f.commitID = 2
		f.commitment = []byte(`{"PrivateStateTokenV1VOPRF":{"id":2}}`)
	})
	rec = h.do(http.MethodGet, PathKeyCommitment, map[string]string{"If-None-Match": etag})
	if rec.Code != 200 || rec.Header().Get("ETag") == etag || !strings.HasPrefix(rec.Header().Get("ETag"), `"2-`) {
		t.Errorf("after key change: status %d ETag %q", rec.Code, rec.Header().Get("ETag"))
	}
	// Same id, different body: still a new tag.
	h.iss.set(func(f *fakeIssuer) { f.commitment = []byte(`{"PrivateStateTokenV1VOPRF":{"id":2,"x":1}}`) })
	if e2 := h.do(http.MethodGet, PathKeyCommitment, nil).Header().Get("ETag"); e2 == rec.Header().Get("ETag") {
		t.Error("ETag ignores the body")
	}

	rec = h.do(http.MethodHead, PathKeyCommitment, nil)
	if rec.Code != 200 || rec.Header().Get("Content-Type") != ContentTypeCommitment || rec.Body.Len() != 0 {
		t.Errorf("HEAD: %d %q %d", rec.Code, rec.Header().Get("Content-Type"), rec.Body.Len())
	}
}

func TestCommitmentUnavailable(t *testing.T) {
	h := newHarness(t, nil)
	h.iss.set(func(f *fakeIssuer) { f.commitment = nil })
	rec := h.do(http.MethodGet, PathKeyCommitment, nil)
	if rec.Code != 503 || problemOf(t, rec).Type != ProblemTypePrefix+"unavailable" {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if rec.Header().Get("ETag") != "" || rec.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("refusal is cacheable: ETag %q Cache-Control %q", rec.Header().Get("ETag"), rec.Header().Get("Cache-Control"))
	}
}

func TestJWKS(t *testing.T) {
	h := newHarness(t, nil)
	rec := h.do(http.MethodGet, PathJWKS, nil)
	if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/jwk-set+json" || rec.Body.String() != `{"keys":[]}` {
		t.Fatalf("%d %q %s", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
	}
	if rec.Header().Get("ETag") == "" || rec.Header().Get("Cache-Control") != "public, max-age=300" {
		t.Errorf("not cacheable")
	}
	rec = h.do(http.MethodGet, PathJWKS, map[string]string{"If-None-Match": rec.Header().Get("ETag")})
	if rec.Code != 304 {
		t.Errorf("If-None-Match: %d", rec.Code)
	}
}

func TestHealthAndNotFound(t *testing.T) {
	h := newHarness(t, nil)
	if rec := h.do(http.MethodGet, PathHealthz, nil); rec.Code != 200 {
		t.Errorf("healthz %d", rec.Code)
	}
	rec := h.do(http.MethodGet, "/nope?secret=1", nil)
	if rec.Code != 404 || problemOf(t, rec).Type != ProblemTypePrefix+"not-found" {
		t.Errorf("404: %d %s", rec.Code, rec.Body)
	}
	rec = h.do(http.MethodDelete, PathIssuance, pstHeaders(issueB64))
	if rec.Code != 405 || problemOf(t, rec).Type != ProblemTypePrefix+"method-not-allowed" {
		t.Errorf("405: %d %s", rec.Code, rec.Body)
	}
	if rec.Header().Get("Allow") == "" {
		t.Error("405 without Allow")
	}
	if strings.Contains(h.log.String(), "secret") || strings.Contains(h.log.String(), "/nope") {
		t.Errorf("log carries the raw path: %s", h.log)
	}
}

func TestBodyLimit(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.BodyLimit = 16 })
	req, _ := http.NewRequest(http.MethodPost, PathIssuance, strings.NewReader(strings.Repeat("x", 17)))
	for k, v := range pstHeaders(issueB64) {
		req.Header.Set(k, v)
	}
	rec := h.doReq(req)
	if rec.Code != http.StatusRequestEntityTooLarge || problemOf(t, rec).Type != ProblemTypePrefix+"body-too-large" {
		t.Fatalf("status %d %s", rec.Code, rec.Body)
	}
}

func TestMetrics(t *testing.T) {
	h := newHarness(t, nil)
	h.do(http.MethodGet, PathHealthz, nil)
	text := h.metricsText(t)
	for _, want := range []string{"pstd_ready 1", `pstd_http_request_duration_seconds_count{code="200",route="/healthz"} 1`} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// A second server on the same registry reuses the collectors.
	s2 := New(Config{Registerer: h.reg}, h.iss)
	if s2.metrics.ready != h.s.metrics.ready {
		t.Error("a second server registered its own collectors")
	}
}
