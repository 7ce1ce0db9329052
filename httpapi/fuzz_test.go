package httpapi

import (
	"encoding/base64"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
)

// fuzzPST throws arbitrary Sec-Private-State-Token and crypto-version header
// bytes at one token endpoint. Whatever arrives, the answer is never a 5xx
// (the fake issuer answers junk with Malformed, as the real one does), a
// refusal never carries the token header, and a success only follows a
// well-formed request.
func fuzzPST(f *testing.F, path string, good []byte) {
	f.Add(base64.StdEncoding.EncodeToString(good), CryptoVersion)
	f.Add(`"`+base64.StdEncoding.EncodeToString(good)+`"`, CryptoVersion)
	f.Add("AAAA", CryptoVersion)
	f.Add("AAA", CryptoVersion)
	f.Add("AB==", CryptoVersion)
	f.Add("AA\r\nAA", CryptoVersion)
	f.Add("", "")
	f.Add("\x00\xff", "PrivateStateTokenV1PMB")
	f.Add(base64.StdEncoding.EncodeToString(good), "PrivateStateTokenV1VOPRF\x00")
	h := newHarness(f, func(c *Config) { c.Logger = slog.New(slog.DiscardHandler) })
	f.Fuzz(func(t *testing.T, token, version string) {
		for _, method := range []string{http.MethodGet, http.MethodPost} {
			req := httptest.NewRequest(method, path, nil)
			// Set the raw bytes directly: the handler must cope with what
			// a lenient proxy might pass through.
			req.Header[HeaderToken] = []string{token}
			req.Header[HeaderCryptoVersion] = []string{version}
			rec := h.doReq(req)
			if rec.Code >= 500 {
				t.Fatalf("%s %q %q: status %d: %s", method, token, version, rec.Code, rec.Body)
			}
			got := rec.Header().Values(HeaderToken)
			if rec.Code != http.StatusOK {
				if len(got) != 0 {
					t.Fatalf("refusal %d carries %s", rec.Code, HeaderToken)
				}
				continue
			}
			if version != CryptoVersion || len(got) != 1 {
				t.Fatalf("success for version %q, header %q", version, got)
			}
			if _, err := base64.StdEncoding.Strict().DecodeString(token); err != nil {
				t.Fatalf("success for undecodable %q", token)
			}
		}
	})
}

func FuzzIssuanceHandler(f *testing.F) { fuzzPST(f, PathIssuance, issueRequest(3)) }

func FuzzRedemptionHandler(f *testing.F) { fuzzPST(f, PathRedemption, redeemRequest()) }
