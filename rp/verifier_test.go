package rp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const rpOrigin = "https://rp.example"

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

type fixture struct {
	iss   *testIssuer
	clock *fakeClock
	v     *Verifier
}

func newFixture(t testing.TB, mutate ...func(*Config)) *fixture {
	t.Helper()
	iss := newTestIssuer(t)
	iss.addKey("rr-1", true)
	clock := &fakeClock{t: t0}
	cfg := Config{
		Issuers:   map[string]string{iss.origin: ""},
		Audiences: []string{rpOrigin},
		Now:       clock.Now,
	}
	for _, m := range mutate {
		m(&cfg)
	}
	v, err := NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{iss: iss, clock: clock, v: v}
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func TestVerifyRecordGood(t *testing.T) {
	f := newFixture(t)
	c := f.iss.claims(rpOrigin, t0.Add(-time.Minute))
	rec, err := f.v.VerifyRecord(context.Background(), f.iss.origin, f.iss.sign("rr-1", RecordType, c))
	if err != nil {
		t.Fatal(err)
	}
	want := Record{
		Issuer:         f.iss.origin,
		KeyID:          3,
		RecordID:       c.ID,
		Audience:       rpOrigin,
		IssuedAt:       c.IssuedAt.Time(),
		Expiry:         c.Expiry.Time(),
		RedemptionTime: time.Unix(c.RedemptionTime, 0),
		RRKeyID:        "rr-1",
	}
	if rec != want {
		t.Fatalf("record\n got %+v\nwant %+v", rec, want)
	}
}

func TestVerifyRecordRefusals(t *testing.T) {
	f := newFixture(t)
	iss := f.iss
	iss.addKey("rogue", false) // a key the issuer never published
	good := func() claims { return iss.claims(rpOrigin, t0.Add(-time.Minute)) }
	with := func(m func(*claims)) claims { c := good(); m(&c); return c }

	hmacToken := func(alg jose.SignatureAlgorithm) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: make([]byte, 64)},
			(&jose.SignerOptions{}).WithType(RecordType).WithHeader(jose.HeaderKey("kid"), "rr-1"))
		if err != nil {
			t.Fatal(err)
		}
		out, err := jwt.Signed(s).Claims(good()).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	es384, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES384, Key: p384},
		(&jose.SignerOptions{}).WithType(RecordType).WithHeader(jose.HeaderKey("kid"), "rr-1"))
	es384Token, _ := jwt.Signed(es384).Claims(good()).Serialize()

	payload, _ := json.Marshal(good())
	none := b64(`{"alg":"none","typ":"pst-rr+jwt","kid":"rr-1"}`) + "." + b64(string(payload)) + "."

	tamper := func() string {
		parts := strings.Split(iss.sign("rr-1", RecordType, good()), ".")
		c := good()
		c.KeyID = 4
		p, _ := json.Marshal(c)
		parts[1] = base64.RawURLEncoding.EncodeToString(p)
		return strings.Join(parts, ".")
	}
	rawClaims := func(m map[string]any) string { return iss.sign("rr-1", RecordType, m) }
	base := map[string]any{
		"iss": iss.origin, "aud": rpOrigin, "iat": t0.Unix(), "exp": t0.Add(time.Hour).Unix(),
		"jti": "x", "pst_key_id": 1, "pst_redemption_time": t0.Unix(),
	}
	without := func(k string) string {
		m := map[string]any{}
		for kk, v := range base {
			if kk != k {
				m[kk] = v
			}
		}
		return rawClaims(m)
	}
	withClaim := func(k string, v any) string {
		m := map[string]any{}
		for kk, vv := range base {
			m[kk] = vv
		}
		m[k] = v
		return rawClaims(m)
	}

	cases := []struct {
		name   string
		issuer string
		jws    string
		want   error // nil: must verify
	}{
		{"expired", "", iss.sign("rr-1", RecordType, with(func(c *claims) {
			c.IssuedAt = jwt.NewNumericDate(t0.Add(-2 * time.Hour))
			c.Expiry = jwt.NewNumericDate(t0.Add(-time.Hour))
		})), ErrExpired},
		{"expired within skew", "", iss.sign("rr-1", RecordType, with(func(c *claims) {
			c.Expiry = jwt.NewNumericDate(t0.Add(-30 * time.Second))
		})), nil},
		{"expired just beyond skew", "", iss.sign("rr-1", RecordType, with(func(c *claims) {
			c.Expiry = jwt.NewNumericDate(t0.Add(-DefaultClockSkew - time.Second))
		})), ErrExpired},
		{"issued in the future", "", iss.sign("rr-1", RecordType, with(func(c *claims) {
			c.IssuedAt = jwt.NewNumericDate(t0.Add(5 * time.Minute))
		})), ErrNotYetValid},
		{"nbf in the future", "", iss.sign("rr-1", RecordType, with(func(c *claims) {
			c.NotBefore = jwt.NewNumericDate(t0.Add(5 * time.Minute))
		})), ErrNotYetValid},
		{"wrong issuer claim", "", iss.sign("rr-1", RecordType, with(func(c *claims) {
			c.Issuer = "https://other-issuer.example"
		})), ErrWrongIssuer},
		{"issuer claim in another spelling", "", iss.sign("rr-1", RecordType, with(func(c *claims) {
			c.Issuer = strings.Replace(iss.origin, "http://", "HTTP://", 1) + "/"
		})), nil},
		{"tampered payload", "", tamper(), ErrBadSignature},
		{"signed by an unpublished key under a published kid", "", func() string {
			iss.mu.Lock()
			iss.keys["rr-1"], iss.keys["rogue"] = iss.keys["rogue"], iss.keys["rr-1"]
			iss.mu.Unlock()
			defer func() {
				iss.mu.Lock()
				iss.keys["rr-1"], iss.keys["rogue"] = iss.keys["rogue"], iss.keys["rr-1"]
				iss.mu.Unlock()
			}()
			return iss.sign("rr-1", RecordType, good())
		}(), ErrBadSignature},
		{"HS256", "", hmacToken(jose.HS256), ErrBadAlgorithm},
		{"HS512", "", hmacToken(jose.HS512), ErrBadAlgorithm},
		{"alg none", "", none, ErrBadAlgorithm},
		{"ES384", "", es384Token, ErrBadAlgorithm},
		{"typ JWT", "", iss.sign("rr-1", "JWT", good()), ErrWrongType},
		{"typ missing", "", iss.sign("rr-1", "", good()), ErrWrongType},
		{"typ with application/ and upper case", "", iss.sign("rr-1", "application/PST-RR+JWT", good()), nil},
		{"audience mismatch", "", iss.sign("rr-1", RecordType, iss.claims("https://evil.example", t0)), ErrAudienceMismatch},
		{"audience in another spelling", "", iss.sign("rr-1", RecordType, iss.claims("https://RP.example:443", t0)), nil},
		{"two audiences", "", iss.sign("rr-1", RecordType, with(func(c *claims) {
			c.Audience = jwt.Audience{rpOrigin, "https://evil.example"}
		})), ErrMalformed},
		{"unknown kid", "", iss.sign("rogue", RecordType, good()), ErrUnknownKID},
		{"no kid", "", func() string {
			iss.mu.Lock()
			k := iss.keys["rr-1"]
			iss.mu.Unlock()
			s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, (&jose.SignerOptions{}).WithType(RecordType))
			out, _ := jwt.Signed(s).Claims(good()).Serialize()
			return out
		}(), ErrMalformed},
		{"no iss", "", without("iss"), ErrMalformed},
		{"no aud", "", without("aud"), ErrMalformed},
		{"no exp", "", without("exp"), ErrMalformed},
		{"no iat", "", without("iat"), ErrMalformed},
		{"no jti", "", without("jti"), ErrMalformed},
		{"no pst_key_id", "", without("pst_key_id"), ErrMalformed},
		{"no pst_redemption_time", "", without("pst_redemption_time"), ErrMalformed},
		{"pst_key_id negative", "", withClaim("pst_key_id", -1), ErrMalformed},
		{"pst_key_id above uint32", "", withClaim("pst_key_id", uint64(1)<<32), ErrMalformed},
		{"pst_key_id a string", "", withClaim("pst_key_id", "1"), ErrMalformed},
		{"payload not JSON", "", func() string {
			iss.mu.Lock()
			k := iss.keys["rr-1"]
			iss.mu.Unlock()
			s, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k},
				(&jose.SignerOptions{}).WithType(RecordType).WithHeader(jose.HeaderKey("kid"), "rr-1"))
			obj, _ := s.Sign([]byte("not json"))
			out, _ := obj.CompactSerialize()
			return out
		}(), ErrMalformed},
		{"garbage", "", "abc", ErrMalformed},
		{"empty", "", "", ErrMalformed},
		{"bad base64", "", "!!!.###.$$$", ErrMalformed},
		{"JSON serialization", "", `{"payload":"e30","protected":"eyJhbGciOiJFUzI1NiJ9","signature":"AA"}`, ErrMalformed},
		{"oversized", "", strings.Repeat("a", MaxRecordBytes+1), ErrMalformed},
		{"untrusted issuer", "https://stranger.example", iss.sign("rr-1", RecordType, good()), ErrUntrustedIssuer},
		{"issuer not an origin", "https://stranger.example/path", iss.sign("rr-1", RecordType, good()), ErrUntrustedIssuer},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			issuer := tc.issuer
			if issuer == "" {
				issuer = iss.origin
			}
			_, err := f.v.VerifyRecord(context.Background(), issuer, tc.jws)
			t.Logf("err: %v", err)
			switch {
			case tc.want == nil && err != nil:
				t.Fatalf("want success, got %v", err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("want %v, got %v", tc.want, err)
			}
		})
	}
}

func TestKeyRotationRefetch(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	f.iss.addKey("rr-2", false) // the issuer's next key, not yet announced
	rec1 := f.iss.sign("rr-1", RecordType, f.iss.claims(rpOrigin, t0))
	rec2 := f.iss.sign("rr-2", RecordType, f.iss.claims(rpOrigin, t0))

	if _, err := f.v.VerifyRecord(ctx, f.iss.origin, rec1); err != nil {
		t.Fatal(err)
	}
	if _, err := f.v.VerifyRecord(ctx, f.iss.origin, rec2); !errors.Is(err, ErrUnknownKID) {
		t.Fatalf("unpublished kid: %v", err)
	}
	if n := f.iss.fetches.Load(); n != 1 {
		t.Fatalf("first fetch then rate limited: %d fetches", n)
	}

	f.iss.publish("rr-2")
	// Still within the refetch interval: no new fetch, still unknown.
	f.clock.Advance(DefaultRefetchInterval - time.Second)
	for range 5 {
		if _, err := f.v.VerifyRecord(ctx, f.iss.origin, rec2); !errors.Is(err, ErrUnknownKID) {
			t.Fatalf("rate-limited unknown kid: %v", err)
		}
	}
	if n := f.iss.fetches.Load(); n != 1 {
		t.Fatalf("unknown kids refetched inside the interval: %d fetches", n)
	}

	f.clock.Advance(time.Second)
	rec, err := f.v.VerifyRecord(ctx, f.iss.origin, rec2)
	if err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if rec.RRKeyID != "rr-2" {
		t.Fatalf("kid %q", rec.RRKeyID)
	}
	if n := f.iss.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
	// Known kids are served from the cache.
	for range 5 {
		if _, err := f.v.VerifyRecord(ctx, f.iss.origin, rec1); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.iss.fetches.Load(); n != 2 {
		t.Fatalf("cached keys refetched: %d fetches", n)
	}
}

func TestJWKSTTLAndRemoval(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	rec := f.iss.sign("rr-1", RecordType, f.iss.claims(rpOrigin, t0))
	if _, err := f.v.VerifyRecord(ctx, f.iss.origin, rec); err != nil {
		t.Fatal(err)
	}
	// The issuer retires rr-1; after the TTL we notice.
	f.iss.mu.Lock()
	f.iss.published["rr-1"] = false
	f.iss.mu.Unlock()
	f.clock.Advance(DefaultJWKSTTL - time.Second)
	if _, err := f.v.VerifyRecord(ctx, f.iss.origin, rec); err != nil {
		t.Fatalf("within TTL: %v", err)
	}
	f.clock.Advance(time.Second)
	if _, err := f.v.VerifyRecord(ctx, f.iss.origin, rec); !errors.Is(err, ErrUnknownKID) {
		t.Fatalf("retired key after TTL: %v", err)
	}
}

func TestJWKSDown(t *testing.T) {
	rec := func(f *fixture) string { return f.iss.sign("rr-1", RecordType, f.iss.claims(rpOrigin, t0)) }
	cases := []struct {
		name   string
		break_ func(f *fixture)
		want   string
	}{
		{"HTTP 500", func(f *fixture) { f.iss.status.Store(http.StatusInternalServerError) }, "HTTP 500"},
		{"HTTP 404", func(f *fixture) { f.iss.status.Store(http.StatusNotFound) }, "HTTP 404"},
		{"server gone", func(f *fixture) { f.iss.srv.Close() }, "connect"},
		{"not JSON", func(f *fixture) { b := []byte("<html>"); f.iss.body.Store(&b) }, "not a JWKS"},
		{"no keys array", func(f *fixture) { b := []byte(`{"kty":"EC"}`); f.iss.body.Store(&b) }, "no \"keys\""},
		{"too large", func(f *fixture) {
			b := []byte(`{"keys":[],"pad":"` + strings.Repeat("x", DefaultMaxJWKSBytes) + `"}`)
			f.iss.body.Store(&b)
		}, "larger than"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			tc.break_(f)
			_, err := f.v.VerifyRecord(context.Background(), f.iss.origin, rec(f))
			if !errors.Is(err, ErrJWKSUnavailable) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want ErrJWKSUnavailable mentioning %q, got %v", tc.want, err)
			}
		})
	}

	t.Run("timeout", func(t *testing.T) {
		block := make(chan struct{})
		defer close(block)
		f := newFixture(t, func(c *Config) { c.FetchTimeout = 100 * time.Millisecond })
		f.iss.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-block:
			case <-r.Context().Done():
			}
		})
		// The handler answers only when block closes (after the test), so
		// returning at all, with DeadlineExceeded, is the timeout working.
		_, err := f.v.VerifyRecord(context.Background(), f.iss.origin, rec(f))
		if !errors.Is(err, ErrJWKSUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("want a timeout, got %v", err)
		}
	})

	t.Run("failure is rate limited, then recovers", func(t *testing.T) {
		f := newFixture(t)
		f.iss.status.Store(http.StatusServiceUnavailable)
		for range 3 {
			if _, err := f.v.VerifyRecord(context.Background(), f.iss.origin, rec(f)); !errors.Is(err, ErrJWKSUnavailable) {
				t.Fatal(err)
			}
		}
		if n := f.iss.fetches.Load(); n != 1 {
			t.Fatalf("failing JWKS fetched %d times inside the interval", n)
		}
		f.iss.status.Store(0)
		f.clock.Advance(DefaultRefetchInterval)
		if _, err := f.v.VerifyRecord(context.Background(), f.iss.origin, rec(f)); err != nil {
			t.Fatalf("after recovery: %v", err)
		}
	})

	t.Run("stale keys serve while the issuer is down, up to MaxStale", func(t *testing.T) {
		f := newFixture(t)
		ctx := context.Background()
		if _, err := f.v.VerifyRecord(ctx, f.iss.origin, rec(f)); err != nil {
			t.Fatal(err)
		}
		f.iss.status.Store(http.StatusBadGateway)
		f.clock.Advance(DefaultJWKSTTL + time.Minute)
		// Records must stay valid across the long advance.
		fresh := func() string { return f.iss.sign("rr-1", RecordType, f.iss.claims(rpOrigin, f.clock.Now())) }
		if _, err := f.v.VerifyRecord(ctx, f.iss.origin, fresh()); err != nil {
			t.Fatalf("stale-if-error: %v", err)
		}
		// An unknown kid during the outage says both things.
		f.iss.addKey("rr-9", true)
		f.clock.Advance(DefaultRefetchInterval)
		_, err := f.v.VerifyRecord(ctx, f.iss.origin, f.iss.sign("rr-9", RecordType, f.iss.claims(rpOrigin, f.clock.Now())))
		if !errors.Is(err, ErrUnknownKID) || !errors.Is(err, ErrJWKSUnavailable) {
			t.Fatalf("unknown kid while down: %v", err)
		}
		f.clock.Advance(DefaultMaxStale)
		if _, err := f.v.VerifyRecord(ctx, f.iss.origin, fresh()); !errors.Is(err, ErrJWKSUnavailable) {
			t.Fatalf("beyond MaxStale: %v", err)
		}
	})

	t.Run("cancelled context while another fetch runs", func(t *testing.T) {
		f := newFixture(t)
		ks := f.v.issuers[f.iss.origin]
		ks.sem <- struct{}{} // a fetch in progress
		defer func() { <-ks.sem }()
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		if _, err := f.v.VerifyRecord(ctx, f.iss.origin, rec(f)); !errors.Is(err, ErrJWKSUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v", err)
		}
	})
}

func TestJWKSKeyFiltering(t *testing.T) {
	f := newFixture(t)
	// A JWKS with keys a record must never verify under, plus one good one.
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	f.iss.mu.Lock()
	good := f.iss.keys["rr-1"]
	f.iss.mu.Unlock()
	set := map[string]any{"keys": []any{
		map[string]any{"kty": "OKP", "crv": "X25519", "x": "AA", "kid": "weird"},
		jose.JSONWebKey{Key: &p384.PublicKey, KeyID: "p384"},
		jose.JSONWebKey{Key: &good.PublicKey, KeyID: "enc", Use: "enc"},
		jose.JSONWebKey{Key: &good.PublicKey, KeyID: "rs", Algorithm: "RS256"},
		jose.JSONWebKey{Key: &good.PublicKey, KeyID: ""},
		jose.JSONWebKey{Key: good, KeyID: "rr-1", Algorithm: "ES256", Use: "sig"}, // private half leaked: public part used
	}}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	f.iss.body.Store(&b)
	keys, err := f.v.fetchJWKS(context.Background(), f.iss.srv.URL+JWKSPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys["rr-1"] == nil || !keys["rr-1"].Equal(&good.PublicKey) {
		t.Fatalf("kept keys %v", keys)
	}
}

func TestVerifyHeaderMultipleIssuers(t *testing.T) {
	a := newTestIssuer(t)
	a.addKey("rr-1", true)
	b := newTestIssuer(t)
	b.addKey("rr-1", true)
	untrusted := newTestIssuer(t)
	untrusted.addKey("rr-1", true)
	clock := &fakeClock{t: t0}
	v, err := NewVerifier(Config{
		Issuers:   map[string]string{a.origin: "", b.origin: b.srv.URL + JWKSPath},
		Audiences: []string{rpOrigin},
		Now:       clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	expired := b.claims(rpOrigin, t0.Add(-3*time.Hour))
	h, err := FormatRedemptionRecordHeader([]Entry{
		{untrusted.origin, untrusted.sign("rr-1", RecordType, untrusted.claims(rpOrigin, t0))},
		{a.origin, a.sign("rr-1", RecordType, a.claims(rpOrigin, t0))},
		{b.origin, b.sign("rr-1", RecordType, expired)},
		// A's key signing a record that claims to be B's: refused.
		{b.origin, a.sign("rr-1", RecordType, b.claims(rpOrigin, t0))},
	})
	if err != nil {
		t.Fatal(err)
	}
	res, err := v.VerifyHeader(context.Background(), h)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Records) != 1 || res.Records[0].Issuer != a.origin {
		t.Fatalf("records %+v", res.Records)
	}
	if len(res.Failures) != 3 {
		t.Fatalf("failures %v", res.Failures)
	}
	for i, want := range []struct {
		index int
		err   error
	}{{0, ErrUntrustedIssuer}, {2, ErrExpired}, {3, ErrBadSignature}} {
		got := res.Failures[i]
		if got.Index != want.index || !errors.Is(got, want.err) {
			t.Errorf("failure %d: %v, want entry %d %v", i, got, want.index, want.err)
		}
	}
	if err := res.Err(); !errors.Is(err, ErrUntrustedIssuer) || !errors.Is(err, ErrExpired) {
		t.Fatalf("joined: %v", err)
	}
	if n := untrusted.fetches.Load(); n != 0 {
		t.Fatalf("untrusted issuer's JWKS fetched %d times", n)
	}

	// The same entries as separate field lines.
	first, _ := FormatRedemptionRecordHeader([]Entry{{a.origin, a.sign("rr-1", RecordType, a.claims(rpOrigin, t0))}})
	second, _ := FormatRedemptionRecordHeader([]Entry{{b.origin, b.sign("rr-1", RecordType, b.claims(rpOrigin, t0))}})
	res, err = v.VerifyHeader(context.Background(), first, second)
	if err != nil || len(res.Records) != 2 || len(res.Failures) != 0 {
		t.Fatalf("two field lines: %+v, %v", res, err)
	}

	if _, err := v.VerifyHeader(context.Background(), `"https://a.example";redemption-record=`); !errors.Is(err, ErrMalformedHeader) {
		t.Fatalf("malformed: %v", err)
	}
}

func TestVerifyRequest(t *testing.T) {
	f := newFixture(t)
	h, _ := FormatRedemptionRecordHeader([]Entry{{f.iss.origin, f.iss.sign("rr-1", RecordType, f.iss.claims(rpOrigin, t0))}})
	r, _ := http.NewRequest(http.MethodGet, rpOrigin+"/", nil)
	r.Header.Set(HeaderName, h)
	res, err := f.v.VerifyRequest(r)
	if err != nil || len(res.Records) != 1 {
		t.Fatalf("%+v %v", res, err)
	}
}

// Many goroutines verifying while keys rotate and the TTL expires: for -race.
func TestConcurrentVerify(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.RefetchInterval = time.Nanosecond; c.JWKSTTL = time.Millisecond })
	f.iss.addKey("rr-2", true)
	recs := []string{
		f.iss.sign("rr-1", RecordType, f.iss.claims(rpOrigin, t0)),
		f.iss.sign("rr-2", RecordType, f.iss.claims(rpOrigin, t0)),
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64*20)
	for g := range 64 {
		wg.Go(func() {
			for i := range 20 {
				if g == 0 && i%5 == 0 {
					f.clock.Advance(time.Millisecond)
				}
				if _, err := f.v.VerifyRecord(context.Background(), f.iss.origin, recs[(g+i)%2]); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestNewVerifierConfig(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"no issuers", Config{}, false},
		{"issuer with path", Config{Issuers: map[string]string{"https://i.example/x": ""}}, false},
		{"issuer not http", Config{Issuers: map[string]string{"ftp://i.example": ""}}, false},
		{"issuer duplicated in spelling", Config{Issuers: map[string]string{"https://i.example": "", "https://I.example:443": ""}}, false},
		{"relative JWKS URL", Config{Issuers: map[string]string{"https://i.example": "/jwks.json"}}, false},
		{"bad audience", Config{Issuers: map[string]string{"https://i.example": ""}, Audiences: []string{"rp.example"}}, false},
		{"negative TTL", Config{Issuers: map[string]string{"https://i.example": ""}, JWKSTTL: -time.Second}, false},
		{"negative skew means none", Config{Issuers: map[string]string{"https://i.example": ""}, ClockSkew: -1}, true},
		{"good", Config{Issuers: map[string]string{"https://i.example/": "https://keys.example/jwks"}, Audiences: []string{"https://rp.example"}}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v, err := NewVerifier(tc.cfg)
			if (err == nil) != tc.ok {
				t.Fatalf("ok=%v, err=%v", tc.ok, err)
			}
			if tc.name == "negative skew means none" && v.skew != 0 {
				t.Fatalf("skew %s", v.skew)
			}
			if tc.name == "good" && v.issuers["https://i.example"].url != "https://keys.example/jwks" {
				t.Fatal("JWKS URL not kept")
			}
		})
	}
	v, err := NewVerifier(Config{Issuers: map[string]string{"https://i.example": ""}})
	if err != nil {
		t.Fatal(err)
	}
	if got := v.issuers["https://i.example"].url; got != "https://i.example"+JWKSPath {
		t.Fatalf("default JWKS URL %q", got)
	}
}

func TestCanonicalOrigin(t *testing.T) {
	cases := map[string]string{
		"https://issuer.example":           "https://issuer.example",
		"https://Issuer.Example/":          "https://issuer.example",
		"HTTPS://issuer.example:443":       "https://issuer.example",
		"http://localhost:8480":            "http://localhost:8480",
		"http://localhost:80":              "http://localhost",
		"https://issuer.example:8443":      "https://issuer.example:8443",
		"http://[::1]:8480":                "http://[::1]:8480",
		"https://issuer.example/path":      "",
		"https://issuer.example?q":         "",
		"https://issuer.example#f":         "",
		"https://user@issuer.example":      "",
		"issuer.example":                   "",
		"https://":                         "",
		"javascript:alert(1)":              "",
		"https://issuer.example:443/x/../": "",
	}
	for in, want := range cases {
		got, err := canonicalOrigin(in)
		if want == "" {
			if err == nil {
				t.Errorf("%q: want error, got %q", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: got %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestCanonicalOriginRules(t *testing.T) {
	for in, want := range map[string]string{
		"HTTPS://RP.EXAMPLE":         "https://rp.example",
		"https://rp.example:443/":    "https://rp.example",
		"http://rp.example:80":       "http://rp.example",
		"https://rp.example:8443":    "https://rp.example:8443",
		"https://bücher.example":     "https://xn--bcher-kva.example",
		"http://[::1]:8080":          "http://[::1]:8080",
		"http://127.0.0.1:8481":      "http://127.0.0.1:8481",
		"https://rp.example:99999":   "",
		"https://rp.example:0":       "",
		"https://rp.example:0443":    "",
		"http://[fe80::1%25eth0]:80": "",
		"https://":                   "",
		"https://rp.example/path":    "",
		"https://user@rp.example":    "",
		"ftp://rp.example":           "",
	} {
		got, err := CanonicalOrigin(in)
		if (err != nil) != (want == "") || got != want {
			t.Errorf("CanonicalOrigin(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
