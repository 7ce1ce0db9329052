package e2e

// The demo explains itself: the relying party is another site and verifies
// the record, and each failure the pages can meet shows a sentence saying
// what happened and what to do. Each scenario clicks the page's buttons as
// a user would, asserts the state and sentence the page shows and what the
// server did, and saves a screenshot under PSTD_TEST_ARTIFACTS (or the
// test's temporary directory).

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/pstd/pstd/internal/testenv"
	"github.com/pstd/pstd/signer/voprf"
)

// artifactsDir is where screenshots go.
func artifactsDir(t *testing.T) string {
	if d := os.Getenv("PSTD_TEST_ARTIFACTS"); d != "" {
		return d
	}
	return t.TempDir()
}

// pageOutcome is what a demo page shows in its result box.
type pageOutcome struct {
	State string `json:"state"`
	Text  string `json:"text"`
	Fix   string `json:"fix"` // the command of the "commitment" state
}

// click navigates to url (unless empty), clicks button and waits until the
// result box leaves its idle and working states; then it saves a
// screenshot named shot (unless empty) and returns what the box shows.
func click(t *testing.T, b *browser, url, button, result, shot string) pageOutcome {
	t.Helper()
	if url != "" {
		b.navigate(t, url)
	}
	if _, err := chromedp.Run(b.ctx, chromedp.Click(button)); err != nil {
		t.Fatalf("click %s: %v", button, err)
	}
	o, err := chromedp.Run(b.ctx, chromedp.PollFunction[pageOutcome](`(id) => {
		const el = document.getElementById(id);
		const s = el.dataset.state;
		if (s === 'idle' || s === 'working' || s === 'has-tokens') return false;
		const fix = document.getElementById('fix');
		return {state: s, text: el.textContent, fix: fix ? fix.textContent : ''};
	}`, chromedp.WithPollingArgs(result), chromedp.WithPollingTimeout(30*time.Second)))
	if err != nil {
		t.Fatalf("%s: the page showed no outcome: %v", button, err)
	}
	t.Logf("%s → %s: %s", button, o.State, o.Text)
	if shot != "" {
		png, err := chromedp.Run(b.ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		path := filepath.Join(artifactsDir(t), shot)
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot %s", path)
	}
	return o
}

func wantState(t *testing.T, o pageOutcome, state string, phrases ...string) {
	t.Helper()
	if o.State != state {
		t.Fatalf("page shows %q (%s), want %q", o.State, o.Text, state)
	}
	for _, p := range phrases {
		if !strings.Contains(o.Text, p) {
			t.Fatalf("page says %q, want it to say %q", o.Text, p)
		}
	}
}

// TestDemo: the cross-site flow, then the failures a healthy issuer's pages
// can meet, then a stopped issuer.
func TestDemo(t *testing.T) {
	requireChromium(t)
	s := newStack(t)
	commitments := commitmentSwitch(t, s)
	if s.rp == "" || strings.HasPrefix(s.rp, "http://localhost") {
		t.Fatalf("the relying party %q is not another site than %s", s.rp, s.origin)
	}
	issuerPage, rpPage := s.origin+"/demo/", s.rp+"/"

	t.Run("relying party on another site verifies the record", func(t *testing.T) {
		b := newBrowser(t, commitments, t.TempDir())
		wantState(t, click(t, b, issuerPage, "#issue", "issue-result", "demo-1-issued.png"), "issued", s.rp)
		before := s.redemptions()
		o := click(t, b, rpPage, "#redeem", "result", "demo-2-rp-verified.png")
		wantState(t, o, "verified", "Verified", s.origin)
		// The record was redeemed on the relying party's page: its aud is
		// that other site, and the relying party's server accepted it for
		// itself (rp.Handler, Required, audience = its origin).
		aud, err := chromedp.Run(b.ctx, chromedp.TextContent("#aud"))
		if err != nil || aud != s.rp {
			t.Fatalf("record redeemed for %q (%v), want %s", aud, err, s.rp)
		}
		if got := s.redemptions(); got != before+1 {
			t.Fatalf("server recorded %d redemptions, want 1", got-before)
		}

		// Chromium's own limit: a third redemption on this site in a row is
		// refused by the browser, before it reaches the issuer.
		wantState(t, click(t, b, rpPage, "#redeem", "result", ""), "verified")
		before = s.redemptions()
		o = click(t, b, rpPage, "#redeem", "result", "demo-3-browser-quota.png")
		wantState(t, o, "browser-quota", "the browser's limit", "send it instead")
		if got := s.redemptions(); got != before {
			t.Fatalf("a redemption the browser refused reached the issuer (%d rows)", got-before)
		}
		// …and the record it holds is still good, as the sentence says.
		wantState(t, click(t, b, rpPage, "#send", "result", ""), "verified")
	})

	t.Run("no tokens left", func(t *testing.T) {
		b := newBrowser(t, commitments, t.TempDir())
		before := len(s.logLines(`"route":"/.well-known/private-state-token/redemption"`))
		o := click(t, b, rpPage, "#redeem", "result", "demo-4-no-tokens.png")
		wantState(t, o, "no-tokens", "No tokens left", issuerPage)
		if n := len(s.logLines(`"route":"/.well-known/private-state-token/redemption"`)) - before; n != 0 {
			t.Fatalf("the page without tokens sent %d redemptions", n)
		}
		wantState(t, click(t, b, rpPage, "#send", "result", ""), "no-record", "Redeem a token first")
	})

	t.Run("stale browser commitment", func(t *testing.T) {
		// A browser started with the commitment of an issuer whose key is
		// not this one's: as after a rotation it was not restarted for.
		wrong, _ := foreignCommitment(t, s)
		b := newBrowser(t, wrong, t.TempDir())
		o := click(t, b, issuerPage, "#issue", "issue-result", "demo-5-stale-commitment.png")
		wantState(t, o, "commitment", "does not match the issuer's current keys", "start it again with this line")
		want := "chromium --additional-private-state-token-key-commitments='" + commitments + "' " + issuerPage
		if o.Fix != want {
			t.Fatalf("page prints\n%s\nwant (pstctl commitment --chromium)\n%s", o.Fix, want)
		}
		// The printed line is the cure: a browser started with its switch
		// value gets tokens.
		value := strings.TrimSuffix(strings.TrimPrefix(o.Fix, "chromium --additional-private-state-token-key-commitments='"), "' "+issuerPage)
		b.close(t)
		fixed := newBrowser(t, value, t.TempDir())
		wantState(t, click(t, fixed, issuerPage, "#issue", "issue-result", ""), "issued")
	})

	t.Run("browser commitment stale after a key rotation", func(t *testing.T) {
		// The owner's case: Chromium started with the commitment of the
		// day, then the issuer rotates; the new key signs at once.
		b := newBrowser(t, commitments, t.TempDir())
		s.pstctl("keys", "rotate", "--force")
		newKey := uint32(s.count("SELECT max(key_id) FROM key_epochs"))
		deadline := time.Now().Add(20 * time.Second)
		for {
			_, keys, err := voprf.ParseCommitment(getBody(t, s.origin+"/.well-known/private-state-token/key-commitment"))
			if err == nil && keys[newKey] != nil {
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
		o := click(t, b, issuerPage, "#issue", "issue-result", "demo-6-commitment-after-rotation.png")
		wantState(t, o, "commitment", "does not match the issuer's current keys")
		if want := "chromium --additional-private-state-token-key-commitments='" + rotated + "' " + issuerPage; o.Fix != want {
			t.Fatalf("page prints\n%s\nwant the rotated commitment\n%s", o.Fix, want)
		}
	})

	t.Run("issuer stopped", func(t *testing.T) {
		b := newBrowser(t, commitments, t.TempDir())
		b.navigate(t, issuerPage)
		s.stop()
		o := click(t, b, "", "#issue", "issue-result", "demo-7-issuer-stopped.png")
		wantState(t, o, "stopped", "does not answer", s.origin, "make run")
	})
}

// TestDemoIssuerDegraded: an issuer that rate limits, then loses its
// database.
func TestDemoIssuerDegraded(t *testing.T) {
	requireChromium(t)
	cluster := testenv.NewCluster(t)
	s := prepareStack(t, cluster.URL, testenv.NewToken(t))
	s.env = append(s.env, "PSTD_RATE_LIMIT=1", "PSTD_RATE_WINDOW=1h")
	s.start()
	b := newBrowser(t, commitmentSwitch(t, s), t.TempDir())
	issuerPage := s.origin + "/demo/"

	t.Run("rate limited", func(t *testing.T) {
		wantState(t, click(t, b, issuerPage, "#issue", "issue-result", ""), "issued")
		o := click(t, b, issuerPage, "#issue", "issue-result", "demo-8-rate-limited.png")
		wantState(t, o, "rate-limited", "at most 1 issuance request(s) every 1h", "PSTD_RATE_LIMIT", "Try again in")
		s.waitLog(`"route":"/.well-known/private-state-token/issuance"`, `"status":429`)
	})

	t.Run("database down", func(t *testing.T) {
		cluster.Stop(t)
		s.waitNotReady(30 * time.Second)
		o := click(t, b, issuerPage, "#issue", "issue-result", "demo-9-not-ready.png")
		wantState(t, o, "not-ready", "not ready", "database", "recovers by itself")
		s.waitLog(`"route":"/.well-known/private-state-token/issuance"`, `"status":503`)
		cluster.Start(t)
		s.waitReady(30 * time.Second)
		if r := s.readyz(); r.status != http.StatusOK {
			t.Fatalf("/readyz after the database returned: %+v", r)
		}
	})
}
