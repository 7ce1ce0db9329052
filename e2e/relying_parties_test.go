package e2e

// docs/RELYING-PARTIES.md's three ways to verify a record, run against a
// record the real pstd signed: package rp, `pstctl rr verify`, and the Node
// example with standard libraries (jose, structured-headers). The Node part
// needs `npm ci` in docs/relying-parties/node and runs only when
// PSTD_TEST_NODE_RP=1, so `make test` stays offline and npm-free.

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pstd/pstd/internal/testenv"
	"github.com/pstd/pstd/rp"
)

func TestRelyingPartiesDoc(t *testing.T) {
	s := newStackOn(t, testenv.NewDatabase(t), testenv.NewToken(t))
	o := s.redeemToken(s.issueTokens(1)[0]) // redeemed for https://rp.example
	if o.status != http.StatusOK || o.token == "" {
		t.Fatalf("redemption: %+v", o)
	}
	record := o.token
	header, err := rp.FormatRedemptionRecordHeader([]rp.Entry{{Issuer: s.origin, Record: record}})
	if err != nil {
		t.Fatal(err)
	}
	var jti string

	t.Run("Go package rp", func(t *testing.T) {
		v, err := rp.NewVerifier(rp.Config{Issuers: map[string]string{s.origin: ""}, Audiences: []string{"https://rp.example"}})
		if err != nil {
			t.Fatal(err)
		}
		res, err := v.VerifyHeader(context.Background(), header)
		if err != nil || len(res.Records) != 1 {
			t.Fatalf("verify: %+v %v", res, err)
		}
		jti = res.Records[0].RecordID
		other, _ := rp.NewVerifier(rp.Config{Issuers: map[string]string{s.origin: ""}, Audiences: []string{"https://evil.example"}})
		if res, _ := other.VerifyHeader(context.Background(), header); len(res.Records) != 0 {
			t.Fatal("a record redeemed for another site verified")
		}
	})

	t.Run("pstctl rr verify", func(t *testing.T) {
		var got struct{ Issuer, Audience, RecordID string }
		if err := json.Unmarshal([]byte(s.pstctl("rr", "verify", "--issuer", s.origin, record)), &got); err != nil {
			t.Fatal(err)
		}
		if got.Issuer != s.origin || got.Audience != "https://rp.example" || got.RecordID != jti {
			t.Fatalf("pstctl rr verify printed %+v", got)
		}
	})

	t.Run("Node with jose", func(t *testing.T) {
		if os.Getenv("PSTD_TEST_NODE_RP") != "1" {
			t.Skip("set PSTD_TEST_NODE_RP=1 after npm ci in docs/relying-parties/node")
		}
		dir, _ := filepath.Abs("../docs/relying-parties/node")
		node := func(audience, hdr string) (string, error) {
			cmd := exec.Command("node", "verify.mjs", s.origin, audience, hdr)
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			return string(out), err
		}
		out, err := node("https://rp.example", header)
		if err != nil {
			t.Fatalf("node: %v\n%s", err, out)
		}
		var claims struct {
			Iss, Aud, Jti string
			KeyID         *uint32 `json:"pst_key_id"`
		}
		if err := json.Unmarshal([]byte(out), &claims); err != nil || claims.Iss != s.origin || claims.Aud != "https://rp.example" || claims.Jti != jti || claims.KeyID == nil {
			t.Fatalf("node printed %s (%v)", out, err)
		}
		for name, c := range map[string]struct{ aud, hdr string }{
			"another audience":                        {"https://evil.example", header},
			"a tampered record":                       {"https://rp.example", strings.Replace(header, record, record[:len(record)-4]+"AAAA", 1)},
			"an issuer that is a token, not a string": {"https://rp.example", "issuer;redemption-record=\"x.y.z\""},
		} {
			if out, err := node(c.aud, c.hdr); err == nil {
				t.Errorf("%s verified in node: %s", name, out)
			} else {
				t.Logf("%s: %s", name, strings.TrimSpace(out))
			}
		}
	})
}
