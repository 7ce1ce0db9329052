package signer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

func TestSignRecordVerifiesAgainstJWKS(t *testing.T) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k := RRKey{KID: "rr-1", Signer: priv}
	now := time.Unix(1767225600, 0)
	c, err := NewRecordClaims("https://issuer.example", "https://rp.example", 3, now.Add(-time.Second), now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := SignRecord(k, c)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(rec, ".") != 2 {
		t.Fatalf("not a compact JWS: %q", rec)
	}
	raw, err := JWKS([]RRKey{k})
	if err != nil {
		t.Fatal(err)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &set); err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.ParseSigned(rec, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	h := tok.Headers[0]
	if h.KeyID != "rr-1" || h.ExtraHeaders[jose.HeaderType] != RecordType {
		t.Fatalf("headers %+v", h)
	}
	keys := set.Key(h.KeyID)
	if len(keys) != 1 {
		t.Fatal("kid not in JWKS")
	}
	var got RecordClaims
	if err := tok.Claims(keys[0].Key, &got); err != nil {
		t.Fatalf("signature does not verify: %v", err)
	}
	if got.Issuer != "https://issuer.example" || got.KeyID != 3 || got.Audience[0] != "https://rp.example" ||
		got.RedemptionTime != now.Unix()-1 || got.ID == "" {
		t.Fatalf("claims %+v", got)
	}
	if err := got.Claims.ValidateWithLeeway(jwt.Expected{Issuer: "https://issuer.example", Time: now}, 0); err != nil {
		t.Fatal(err)
	}
	// Another key's JWKS does not verify it.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := tok.Claims(&other.PublicKey, &got); err == nil {
		t.Fatal("verified under the wrong key")
	}
}
