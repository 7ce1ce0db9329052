package rp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// testIssuer is a stand-in pstd: real P-256 keys, a real HTTP JWKS.
type testIssuer struct {
	t      testing.TB
	srv    *httptest.Server
	origin string

	mu        sync.Mutex
	keys      map[string]*ecdsa.PrivateKey // every key we can sign with
	published map[string]bool              // kids in the JWKS

	fetches atomic.Int32
	status  atomic.Int32 // non-zero: answer the JWKS with this status
	body    atomic.Pointer[[]byte]
}

func newTestIssuer(t testing.TB) *testIssuer {
	t.Helper()
	iss := &testIssuer{t: t, keys: map[string]*ecdsa.PrivateKey{}, published: map[string]bool{}}
	iss.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != JWKSPath {
			http.NotFound(w, r)
			return
		}
		iss.fetches.Add(1)
		if s := iss.status.Load(); s != 0 {
			w.WriteHeader(int(s))
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		if b := iss.body.Load(); b != nil {
			_, _ = w.Write(*b)
			return
		}
		_, _ = w.Write(iss.jwks())
	}))
	t.Cleanup(iss.srv.Close)
	iss.origin = iss.srv.URL
	return iss
}

// addKey creates a key; publish controls whether the JWKS lists it.
func (iss *testIssuer) addKey(kid string, publish bool) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		iss.t.Fatal(err)
	}
	iss.mu.Lock()
	defer iss.mu.Unlock()
	iss.keys[kid] = k
	iss.published[kid] = publish
}

func (iss *testIssuer) publish(kid string) {
	iss.mu.Lock()
	defer iss.mu.Unlock()
	iss.published[kid] = true
}

func (iss *testIssuer) jwks() []byte {
	iss.mu.Lock()
	defer iss.mu.Unlock()
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{}}
	for kid, k := range iss.keys {
		if iss.published[kid] {
			set.Keys = append(set.Keys, jose.JSONWebKey{Key: &k.PublicKey, KeyID: kid, Algorithm: string(jose.ES256), Use: "sig"})
		}
	}
	b, err := json.Marshal(set)
	if err != nil {
		iss.t.Fatal(err)
	}
	return b
}

// claims is the pstd record payload, as signer.RecordClaims writes it.
type claims struct {
	jwt.Claims
	KeyID          uint32 `json:"pst_key_id"`
	RedemptionTime int64  `json:"pst_redemption_time"`
}

func (iss *testIssuer) claims(aud string, now time.Time) claims {
	return claims{
		Claims: jwt.Claims{
			Issuer:   iss.origin,
			Audience: jwt.Audience{aud},
			IssuedAt: jwt.NewNumericDate(now),
			Expiry:   jwt.NewNumericDate(now.Add(time.Hour)),
			ID:       "rec-" + base64.RawURLEncoding.EncodeToString([]byte(now.String()))[:8],
		},
		KeyID:          3,
		RedemptionTime: now.Add(-2 * time.Second).Unix(),
	}
}

// sign makes a compact JWS with header typ and kid, as signer.SignRecord does.
func (iss *testIssuer) sign(kid, typ string, c any) string {
	iss.t.Helper()
	iss.mu.Lock()
	k := iss.keys[kid]
	iss.mu.Unlock()
	if k == nil {
		iss.t.Fatalf("no key %q", kid)
	}
	opts := (&jose.SignerOptions{}).WithHeader(jose.HeaderKey("kid"), kid)
	if typ != "" {
		opts = opts.WithType(jose.ContentType(typ))
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, opts)
	if err != nil {
		iss.t.Fatal(err)
	}
	out, err := jwt.Signed(s).Claims(c).Serialize()
	if err != nil {
		iss.t.Fatal(err)
	}
	return out
}

// fakeClock is an injectable, advanceable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
