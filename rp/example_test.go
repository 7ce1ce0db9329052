package rp_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/labstack/echo/v4"

	"github.com/pstd/pstd/rp"
)

// A site that sells to token holders only: the middleware refuses requests
// without a valid record (401/403 problem documents), the handler reads the
// verified records.
func ExampleMiddleware() {
	v, err := rp.NewVerifier(rp.Config{
		Issuers:   map[string]string{"https://issuer.example": ""}, // JWKS at the default path
		Audiences: []string{"https://shop.example"},                // records redeemed for us only
	})
	if err != nil {
		log.Fatal(err)
	}
	e := echo.New()
	e.POST("/checkout", func(c echo.Context) error {
		for _, r := range rp.RecordsFrom(c) {
			log.Printf("token of %s, key %d, redeemed %s", r.Issuer, r.KeyID, r.RedemptionTime)
		}
		return c.NoContent(http.StatusNoContent)
	}, rp.Middleware(v, rp.MiddlewareOptions{Required: true}))
	_ = e // e.Start(":8443") …
}

// The same with nothing but net/http: Handler is a plain
// func(http.Handler) http.Handler, so it also fits chi, gorilla/mux and the
// like.
func ExampleHandler() {
	v, err := rp.NewVerifier(rp.Config{
		Issuers:   map[string]string{"https://issuer.example": ""},
		Audiences: []string{"https://shop.example"},
	})
	if err != nil {
		log.Fatal(err)
	}
	checkout := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, rec := range rp.RecordsFromContext(r.Context()) {
			log.Printf("token of %s, key %d, redeemed %s", rec.Issuer, rec.KeyID, rec.RedemptionTime)
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux := http.NewServeMux()
	mux.Handle("POST /checkout", rp.Handler(v, rp.HandlerOptions{Required: true})(checkout))

	// A request without a record is refused before checkout runs.
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/checkout", nil))
	fmt.Println(rec.Code, rec.Header().Get("Content-Type"))
	// Output: 401 application/problem+json
}

func ExampleParseRedemptionRecordHeader() {
	entries, err := rp.ParseRedemptionRecordHeader(
		`"https://issuer.example";redemption-record="eyJhbGciOiJFUzI1NiJ9.e30.c2ln"`)
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range entries {
		fmt.Println(e.Issuer, e.Record)
	}
	// Output: https://issuer.example eyJhbGciOiJFUzI1NiJ9.e30.c2ln
}

// Verifying one record, as a tool would. The issuer here is a stand-in
// that signs like pstd and serves its JWKS over HTTP.
func ExampleVerifier_VerifyRecord() {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &key.PublicKey, KeyID: "rr-1", Algorithm: "ES256", Use: "sig"},
	}})
	issuer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(jwks)
	}))
	defer issuer.Close()

	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{}).WithType(rp.RecordType).WithHeader("kid", "rr-1"))
	now := time.Now()
	record, _ := jwt.Signed(signer).Claims(map[string]any{
		"iss": issuer.URL, "aud": "https://shop.example", "jti": "AAAAAAAAAAAAAAAAAAAAAA",
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"pst_key_id": 1, "pst_redemption_time": now.Unix(),
	}).Serialize()

	v, err := rp.NewVerifier(rp.Config{
		Issuers:   map[string]string{issuer.URL: ""},
		Audiences: []string{"https://shop.example"},
	})
	if err != nil {
		log.Fatal(err)
	}
	r, err := v.VerifyRecord(context.Background(), issuer.URL, record)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.Audience, r.KeyID, r.RRKeyID, r.RecordID)
	// Output: https://shop.example 1 rr-1 AAAAAAAAAAAAAAAAAAAAAA
}
