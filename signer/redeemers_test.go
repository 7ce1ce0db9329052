package signer

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pstd/pstd/internal/pstderr"
	"github.com/pstd/pstd/signer/voprf"
)

func TestRedeemers(t *testing.T) {
	r, err := ParseRedeemers("https://RP.example:443/, https://*.shop.example, http://localhost:8481")
	if err != nil {
		t.Fatal(err)
	}
	for o, want := range map[string]bool{
		"https://rp.example":          true,
		"https://a.shop.example":      true,
		"https://a.b.shop.example":    true,
		"https://shop.example":        false,
		"http://a.shop.example":       false,
		"https://evilshop.example":    false,
		"http://localhost:8481":       true,
		"http://localhost:8482":       false,
		"https://rp.example.evil.com": false,
	} {
		if got := r.Allows(o); got != want {
			t.Errorf("Allows(%q) = %v, want %v", o, got, want)
		}
	}
	if any, _ := ParseRedeemers(""); !any.Allows("https://anything.example") {
		t.Error("an empty list refused an origin")
	}
	for _, bad := range []string{"rp.example", "https://rp.example/path", "https://rp.example:99999", "ftp://x"} {
		if _, err := ParseRedeemers(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

// A redemption for an origin that is not allowed, not an origin, or dated
// more than a day away is refused before the token is verified, the
// database written or the HSM asked to sign; the canonical origin is what is
// stored and signed.
func TestRedeemerPolicy(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s, st, _ := newService(t, clock)
	var err error
	if s.cfg.Redeemers, err = ParseRedeemers("https://rp.example"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	tok := issueToken(t, s)
	req := func(origin string, at time.Time) []byte {
		cd, err := voprf.MarshalClientData(&voprf.ClientData{RedeemingOrigin: origin, RedemptionTimestamp: uint64(at.Unix())})
		if err != nil {
			t.Fatal(err)
		}
		b, err := voprf.MarshalRedeemRequest(&tok, cd)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, c := range []struct {
		origin string
		at     time.Time
		kind   pstderr.Kind
	}{
		{"https://other.example", clock.t, pstderr.Denied},
		{"https://rp.example:99999", clock.t, pstderr.Malformed},
		{"https://rp.example", clock.t.Add(25 * time.Hour), pstderr.Malformed},
		{"https://rp.example", clock.t.Add(-25 * time.Hour), pstderr.Malformed},
	} {
		if _, err := s.Redeem(ctx, req(c.origin, c.at)); !errors.Is(err, c.kind) {
			t.Errorf("%s at %v: %v, want %s", c.origin, c.at, err, c.kind)
		}
	}
	if st.signs != 0 || len(st.redemptions) != 0 {
		t.Fatalf("refusals reached the database (%d signatures, %d rows)", st.signs, len(st.redemptions))
	}
	if _, err := s.Redeem(ctx, req("HTTPS://RP.EXAMPLE:443", clock.t)); err != nil {
		t.Fatal(err)
	}
	for _, r := range st.redemptions {
		if r.RedeemingOrigin != "https://rp.example" {
			t.Fatalf("stored origin %q, want the canonical one", r.RedeemingOrigin)
		}
	}
}
