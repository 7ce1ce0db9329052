// Package rp is for relying parties: sites that ask the browser to attach
// Private State Token redemption records (send-redemption-record) and must
// check them before trusting them.
//
// The browser sends the records in the Sec-Redemption-Record request header,
// an RFC 8941 list of issuer origins, each carrying its record in the
// redemption-record parameter:
//
//	Sec-Redemption-Record: "https://issuer.example";redemption-record="eyJ…"
//
// (docs/PROTOCOL.md, "The redemption record", has what Chromium sends.)
//
// A pstd record is a compact JWS (ES256, typ pst-rr+jwt) whose claims are
// described in docs/ARCHITECTURE.md. A Verifier checks it against the JWKS
// the issuer publishes at JWKSPath: signature, kid, typ, iss, exp, iat and
// aud. JWKS are cached (JWKSTTL) and refetched, at most once per
// RefetchInterval and issuer, when a record names an unknown kid, so issuer
// key rotation needs no RP change.
//
// Typical use with echo:
//
//	v, err := rp.NewVerifier(rp.Config{
//		Issuers:   map[string]string{"https://issuer.example": ""}, // default JWKS URL
//		Audiences: []string{"https://shop.example"},                // our own origin
//	})
//	if err != nil { … }
//	e.GET("/checkout", checkout, rp.Middleware(v, rp.MiddlewareOptions{Required: true}))
//
//	func checkout(c echo.Context) error {
//		for _, r := range rp.RecordsFrom(c) { … r.Issuer, r.KeyID, r.RedemptionTime … }
//	}
//
// Without echo, Handler is the same middleware as a plain
// func(http.Handler) http.Handler (handlers read RecordsFromContext), or call
// Verifier.VerifyRequest, Verifier.VerifyHeader or, for one record,
// Verifier.VerifyRecord. docs/RELYING-PARTIES.md shows verification in Go,
// with pstctl and in another language.
//
// What this package does not do: it keeps no state about records it has
// seen. A browser re-sends a cached record (refreshPolicy "none"), so a
// repeated RecordID is normal; a site that wants one-use semantics must
// track RecordID itself. The package depends only on public formats (never
// on pstd's signer or database), so any site can import it.
package rp
