package rp

import (
	"context"
	"crypto/elliptic"
	"errors"
	"strings"
	"testing"
	"time"
)

// FuzzVerifyRecord throws arbitrary record strings (what a browser, or
// anyone, puts in Sec-Redemption-Record) at a verifier that trusts one
// issuer. Nothing panics; every failure is one of the package's errors;
// a record that verifies says what a good record says.
func FuzzVerifyRecord(f *testing.F) {
	fx := newFixture(f)
	good := fx.iss.claims(rpOrigin, t0.Add(-time.Minute))
	f.Add(fx.iss.sign("rr-1", RecordType, good))
	f.Add(fx.iss.sign("rr-1", "JWT", good))
	f.Add(fx.iss.sign("rr-1", RecordType, fx.iss.claims("https://other.example", t0)))
	f.Add("eyJhbGciOiJFUzI1NiJ9.e30.AAAA")
	f.Add("a.b.c")
	f.Add("")
	f.Add(strings.Repeat("A", 5000))
	f.Fuzz(func(t *testing.T, record string) {
		rec, err := fx.v.VerifyRecord(context.Background(), fx.iss.origin, record)
		if err != nil {
			for _, known := range []error{ErrMalformed, ErrBadAlgorithm, ErrWrongType, ErrUnknownKID, ErrBadSignature,
				ErrWrongIssuer, ErrExpired, ErrNotYetValid, ErrAudienceMismatch, ErrJWKSUnavailable, ErrUntrustedIssuer} {
				if errors.Is(err, known) {
					return
				}
			}
			t.Fatalf("error of no known kind: %v", err)
		}
		if rec.Issuer != fx.iss.origin || rec.Audience != rpOrigin || rec.RRKeyID != "rr-1" || !rec.Expiry.After(t0) {
			t.Fatalf("verified record with claims %+v", rec)
		}
	})
}

// FuzzParseJWKS throws arbitrary bodies at the JWKS parser (an issuer's
// server, or whoever answers for it, chooses them). Nothing panics, and
// every key kept is a P-256 key with a kid.
func FuzzParseJWKS(f *testing.F) {
	fx := newFixture(f)
	fx.iss.addKey("rr-2", true)
	f.Add(fx.iss.jwks())
	f.Add([]byte(`{"keys":[]}`))
	f.Add([]byte(`{"keys":[{"kty":"EC","crv":"P-384","x":"AA","y":"AA","kid":"a"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"r"},{"kty":"oct","k":"AA"}]}`))
	f.Add([]byte(`{"keys":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		keys, err := parseJWKS(body)
		if err != nil {
			return
		}
		for kid, k := range keys {
			if kid == "" || k == nil || k.Curve != elliptic.P256() {
				t.Fatalf("kept key %q: %+v", kid, k)
			}
		}
	})
}
