// Package e2e proves pstd against real headless Chromium: issuance,
// redemption, redemption records sent to a relying party on another site
// (and, in demo_test.go, each failure the demo pages explain), the record cache,
// key rotation, a browser with the wrong commitment, and embedded issuer
// frames. Every scenario asserts what the browser reports and what the server
// recorded. docs/PROTOCOL.md, "Driving headless Chromium", explains the
// flags, profiles and page scripts.
package e2e

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pstd/pstd/signer/voprf"
)

type issueResult struct {
	OK     bool   `json:"ok"`
	Status int    `json:"status"`
	Has    bool   `json:"has"`
	Name   string `json:"name"`
	Msg    string `json:"msg"`
}

const jsHelpers = `
const O = location.origin;
const WK = O + '/.well-known/private-state-token/';
async function op(url, privateToken) {
  try { const r = await fetch(url, {privateToken}); return {ok: true, status: r.status}; }
  catch (e) { return {ok: false, name: e.name, msg: e.message}; }
}
`

func issueJS() string {
	return jsHelpers + `
const r = await op(WK + 'issuance', {version: 1, operation: 'token-request', issuer: O});
r.has = await document.hasPrivateToken(O);
return r;`
}

func redeemJS(policy string) string {
	return jsHelpers + fmt.Sprintf(`
const r = await op(WK + 'redemption', {version: 1, operation: 'token-redemption', issuer: O, refreshPolicy: %q});
r.has = await document.hasRedemptionRecord(O);
return r;`, policy)
}

type rpResult struct {
	Verified []struct {
		Issuer   string `json:"issuer"`
		KeyID    uint32 `json:"key_id"`
		RecordID string `json:"record_id"`
		Audience string `json:"audience"`
	} `json:"verified"`
	Detail string `json:"detail"`
}

// rpRedeemJS redeems a token of issuer from a page of another site (the
// demo relying party): the record's aud is that page's origin.
func rpRedeemJS(issuer, policy string) string {
	return fmt.Sprintf(`
const I = %q;
let r;
try { const x = await fetch(I + '/.well-known/private-state-token/redemption', {privateToken: {version: 1, operation: 'token-redemption', issuer: I, refreshPolicy: %q}}); r = {ok: true, status: x.status}; }
catch (e) { r = {ok: false, name: e.name, msg: e.message}; }
r.has = await document.hasRedemptionRecord(I);
return r;`, issuer, policy)
}

// sendRecordJS has the relying party's page send its record of issuer to
// its own server, which verifies it (rp.Handler; 401/403 problem if not).
func sendRecordJS(issuer string) string {
	return fmt.Sprintf(`
const r = await fetch('/verify', {privateToken: {version: 1, operation: 'send-redemption-record', issuers: [%q]}});
return await r.json();`, issuer)
}

// foreignCommitment is a commitment switch value for s's origin whose key
// (returned) s does not hold.
func foreignCommitment(t *testing.T, s *stack) (string, *voprf.PrivateKey) {
	t.Helper()
	foreign, err := voprf.GenerateKey(uint32(s.count("SELECT max(key_id) FROM key_epochs")), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	body, err := voprf.BuildCommitment(1, 10, []voprf.PublishedKey{{Public: foreign.Public(), Expiry: time.Now().AddDate(0, 3, 0)}})
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`{%q: %s}`, s.origin, body), foreign
}

func commitmentSwitch(t *testing.T, s *stack) string {
	t.Helper()
	out := strings.TrimSpace(s.pstctl("commitment", "--chromium"))
	var v map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("pstctl commitment --chromium printed no JSON object: %v\n%s", err, out)
	}
	if _, ok := v[s.origin]; !ok {
		t.Fatalf("commitment not keyed by the issuer origin %s: %s", s.origin, out)
	}
	return out
}

// TestChromium runs the scenarios against one pstd; each has its own browser
// profile unless it needs to keep one.
func TestChromium(t *testing.T) {
	requireChromium(t)
	t.Logf("browser: %s", chromiumVersion(t))
	s := newStack(t)
	commitments := commitmentSwitch(t, s)

	t.Run("1 issuance of a full batch", func(t *testing.T) {
		b := newBrowser(t, commitments, t.TempDir())
		b.navigate(t, s.origin+"/demo/")
		before := s.metric("pstd_tokens_issued_total")
		r := eval[issueResult](t, b, issueJS())
		if !r.OK || !r.Has {
			t.Fatalf("browser reports %+v, want issuance to succeed and hasPrivateToken true", r)
		}
		if got := s.metric("pstd_tokens_issued_total") - before; got != 10 {
			t.Fatalf("server issued %v tokens, want a full batch of 10", got)
		}
		s.waitLog(`"route":"/.well-known/private-state-token/issuance"`, `"status":200`)
		// The issuer page as a new user sees it.
		wantState(t, click(t, b, s.origin+"/demo/", "#issue", "issue-result", "demo-issuer.png"), "issued")
	})

	profile := t.TempDir() // kept across scenarios 2–4
	var shared *browser    // scenarios 2 and 3 share one running browser
	outer := t
	t.Run("2 redemption and record sent to a relying party on another site", func(t *testing.T) {
		b := newBrowser(outer, commitments, profile)
		shared = b
		b.navigate(t, s.origin+"/demo/")
		if r := eval[issueResult](t, b, issueJS()); !r.OK || !r.Has {
			t.Fatalf("issuance: %+v", r)
		}
		// Redemption and the record's use happen on the relying party's
		// page, another site (127.0.0.1 vs localhost), as in production.
		b.navigate(t, s.rp+"/")
		before := s.redemptions()
		r := eval[issueResult](t, b, rpRedeemJS(s.origin, "refresh"))
		if !r.OK || !r.Has {
			t.Fatalf("redemption: browser reports %+v, want a stored record", r)
		}
		if got := s.redemptions(); got != before+1 {
			t.Fatalf("server recorded %d redemptions, want 1", got-before)
		}
		rp := eval[rpResult](t, b, sendRecordJS(s.origin))
		if len(rp.Verified) != 1 || rp.Verified[0].Issuer != s.origin || rp.Verified[0].Audience != s.rp {
			t.Fatalf("relying party verified %+v (detail %q), want one record of %s redeemed for %s", rp.Verified, rp.Detail, s.origin, s.rp)
		}
		if n := s.count("SELECT count(*) FROM redemptions WHERE record_id = $1", rp.Verified[0].RecordID); n != 1 {
			t.Fatalf("the verified record %s has %d redemption rows, want 1", rp.Verified[0].RecordID, n)
		}
		wantState(t, click(t, b, s.rp+"/", "#send", "result", "demo-rp.png"), "verified")
	})

	t.Run("3 refreshPolicy none with a cached record", func(t *testing.T) {
		b := shared
		if b == nil {
			t.Skip("scenario 2 did not run")
		}
		b.navigate(t, s.rp+"/")
		before := s.redemptions()
		r := eval[issueResult](t, b, rpRedeemJS(s.origin, "none"))
		// Chromium answers from its record cache: in a fresh document the
		// fetch resolves (status 200) without a network request; in the
		// document that redeemed it rejects with NoModificationAllowedError.
		// Either way the record stays available and the issuer sees nothing.
		if !(r.OK || r.Name == "NoModificationAllowedError") || !r.Has {
			t.Fatalf("browser reports %+v, want the cached record served", r)
		}
		t.Logf("page saw %+v", r)
		if got := s.redemptions(); got != before {
			t.Fatalf("a cached-record redemption reached the server (%d new rows)", got-before)
		}
	})

	t.Run("4 tokens of the old key redeem after rotation", func(t *testing.T) {
		oldKey := s.count("SELECT max(key_id) FROM key_epochs")
		s.pstctl("keys", "rotate", "--force")
		newKey := s.count("SELECT max(key_id) FROM key_epochs")
		if newKey == oldKey {
			t.Fatal("rotation created no key")
		}
		// Wait until the server loaded the new key set (it polls).
		deadline := time.Now().Add(20 * time.Second)
		for {
			c, keys, err := voprf.ParseCommitment(getBody(t, s.origin+"/.well-known/private-state-token/key-commitment"))
			if err == nil && c.ID > 0 && keys[uint32(newKey)] != nil && keys[uint32(oldKey)] != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("server did not publish the rotated key set")
			}
			time.Sleep(200 * time.Millisecond)
		}
		rotated := commitmentSwitch(t, s)
		if rotated == commitments {
			t.Fatal("commitment did not change")
		}
		// Restart the browser with the new commitment and the same profile:
		// its tokens were issued under the old key. Close it gracefully so
		// Chromium writes its token store to the profile.
		if shared != nil {
			shared.close(t)
		}
		b := newBrowser(t, rotated, profile)
		b.navigate(t, s.origin+"/demo/")
		if !eval[bool](t, b, `return await document.hasPrivateToken(location.origin);`) {
			t.Fatal("the browser dropped its tokens of the old key")
		}
		before := s.count("SELECT count(*) FROM redemptions WHERE key_id = $1", oldKey)
		r := eval[issueResult](t, b, redeemJS("refresh"))
		if !r.OK || !r.Has {
			t.Fatalf("redeeming an old-key token after rotation: %+v\n%s", r, strings.Join(s.logLines("redemption"), "\n"))
		}
		if got := s.count("SELECT count(*) FROM redemptions WHERE key_id = $1", oldKey); got != before+1 {
			t.Fatalf("server recorded %d redemptions under the old key %d, want 1", got-before, oldKey)
		}
		commitments = rotated
	})

	t.Run("5 a commitment whose key the server does not hold", func(t *testing.T) {
		wrong, foreign := foreignCommitment(t, s)
		b := newBrowser(t, wrong, t.TempDir())
		b.navigate(t, s.origin+"/demo/")
		before := len(s.logLines(`"route":"/.well-known/private-state-token/issuance"`))
		r := eval[issueResult](t, b, issueJS())
		if r.OK || r.Name != "OperationError" || r.Has {
			t.Fatalf("browser reports %+v, want OperationError and no tokens", r)
		}
		// The issue request carries no key id: the server cannot tell that
		// the browser expects another key, signs, and the browser rejects
		// the proof. The server saw exactly one issuance.
		if n := len(s.logLines(`"route":"/.well-known/private-state-token/issuance"`)) - before; n != 1 {
			t.Fatalf("server logged %d issuance requests, want 1", n)
		}
		// A token of a key the server does not hold is refused with a clear 4xx.
		c := voprf.NewClient(foreign.Public())
		p, _ := c.Blind(1, rand.Reader)
		req, _ := voprf.ParseIssueRequest(p.Request())
		resp, _, _ := foreign.Issue(req, 1, rand.Reader)
		toks, err := c.Finish(p, resp)
		if err != nil {
			t.Fatal(err)
		}
		toks[0].KeyID = 4000000000
		status, problem := redeemRaw(t, s, toks[0])
		if status != http.StatusBadRequest || !strings.Contains(problem, "unknown-key") {
			t.Fatalf("redeeming a token of an unknown key: %d %s", status, problem)
		}
		s.waitLog(`"status":400`, "unknown-key")
	})

	t.Run("6 embedded issuer frame and Permissions-Policy", func(t *testing.T) {
		top := topLevelSite(t, s.origin)
		b := newBrowser(t, commitments, t.TempDir())
		cases := []struct {
			name, query string
			wantOK      bool
			wantErr     string
		}{
			// Chromium's default allowlist for private-state-token-issuance is *: a
			// cross-site frame may issue without an allow attribute.
			{"no allow attribute", "", true, ""},
			{"allow attribute", "allow=private-state-token-issuance", true, ""},
			// A top-level page that switches the feature off for frames wins.
			{"top-level policy forbids", "policy=none", false, "NotAllowedError"},
			{"top-level policy forbids, allow attribute", "policy=none&allow=private-state-token-issuance", false, "NotAllowedError"},
		}
		for _, tc := range cases {
			b.navigate(t, top+"/top.html?"+tc.query)
			got := eval[issueResult](t, b, `return await window.frameResult;`)
			t.Logf("%s: frame reports %+v", tc.name, got)
			if !got.OK {
				t.Logf("%s", strings.Join(s.logLines("issuance"), "\n"))
			}
			if got.OK != tc.wantOK || (tc.wantErr != "" && got.Name != tc.wantErr) {
				t.Fatalf("%s: frame reports %+v, want ok=%v %s", tc.name, got, tc.wantOK, tc.wantErr)
			}
		}
	})
}

// topLevelSite serves a page on 127.0.0.1 — another site than localhost —
// that embeds pstd's issuer frame.
func topLevelSite(t *testing.T, issuer string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("policy") == "none" {
			w.Header().Set("Permissions-Policy", "private-state-token-issuance=()")
		}
		allow := ""
		if a := q.Get("allow"); a != "" {
			allow = fmt.Sprintf(` allow=%q`, a)
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><script>window.frameResult = new Promise(res => addEventListener('message', e => { if (e.data && e.data.pstdFrame) res(e.data.pstdFrame); }));</script>
<iframe src="%s/demo/frame.html"%s></iframe>`, issuer, allow)
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

func redeemRaw(t *testing.T, s *stack, tok voprf.Token) (int, string) {
	t.Helper()
	cd, _ := voprf.MarshalClientData(&voprf.ClientData{RedeemingOrigin: s.origin, RedemptionTimestamp: uint64(time.Now().Unix())})
	raw, _ := voprf.MarshalRedeemRequest(&tok, cd)
	req, _ := http.NewRequest(http.MethodGet, s.origin+"/.well-known/private-state-token/redemption", nil)
	req.Header.Set("Sec-Private-State-Token-Crypto-Version", voprf.ProtocolVersion)
	req.Header.Set("Sec-Private-State-Token", b64(raw))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.Header.Get("Sec-Private-State-Token") != "" {
		t.Fatal("a refusal carried a Sec-Private-State-Token header")
	}
	return resp.StatusCode, string(body)
}
