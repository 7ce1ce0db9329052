package e2e

// Fault tests: the real pstd binary on real PostgreSQL and SoftHSM while
// one of them goes away. What must hold (README, "Failing closed"):
//   - no redemption record leaves the server unless its row is committed;
//   - while the database or the token is unusable, /readyz, issuance and
//     redemption answer 503 with the "unavailable" problem, never a 500;
//   - the process stays up and recovers by itself when the dependency
//     returns;
//   - a start-up without a usable token is a clear error and exit status 1.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pstd/pstd/httpapi"
	"github.com/pstd/pstd/internal/testenv"
	"github.com/pstd/pstd/rp"
	"github.com/pstd/pstd/signer/voprf"
)

// outcome is what one issuance or redemption request got.
type outcome struct {
	status  int
	token   string // Sec-Private-State-Token of the response
	problem string // the problem type of a refusal
	detail  string
	err     error // transport error
}

func (s *stack) pst(path, token string) outcome {
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.listen+path, nil)
	req.Header.Set(httpapi.HeaderCryptoVersion, voprf.ProtocolVersion)
	req.Header.Set(httpapi.HeaderToken, token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return outcome{err: err}
	}
	defer resp.Body.Close()
	o := outcome{status: resp.StatusCode, token: resp.Header.Get(httpapi.HeaderToken)}
	if resp.StatusCode != http.StatusOK {
		var p struct{ Type, Detail string }
		body, _ := io.ReadAll(resp.Body)
		_ = json.Unmarshal(body, &p)
		o.problem, o.detail = p.Type, p.Detail
	}
	return o
}

// issueTokens gets n tokens over HTTP with the Go client, 10 per request.
func (s *stack) issueTokens(n int) []voprf.Token {
	s.t.Helper()
	_, keys, err := voprf.ParseCommitment(getBody(s.t, "http://"+s.listen+"/.well-known/private-state-token/key-commitment"))
	if err != nil {
		s.t.Fatal(err)
	}
	var out []voprf.Token
	for len(out) < n {
		o, toks := s.issueOnce(keys, min(10, n-len(out)))
		if o.status != http.StatusOK {
			s.t.Fatalf("issuance: %+v", o)
		}
		out = append(out, toks...)
	}
	return out
}

func (s *stack) issueOnce(keys map[uint32]*voprf.PublicKey, n int) (outcome, []voprf.Token) {
	s.t.Helper()
	return s.issueOnceAt(keys, n, httpapi.PathIssuance)
}

// issueOnceAt is issueOnce at another path (e.g. with a query).
func (s *stack) issueOnceAt(keys map[uint32]*voprf.PublicKey, n int, path string) (outcome, []voprf.Token) {
	s.t.Helper()
	ids := voprf.SortedKeyIDs(keys)
	client := voprf.NewClient(keys[ids[len(ids)-1]])
	p, err := client.Blind(n, rand.Reader)
	if err != nil {
		s.t.Fatal(err)
	}
	o := s.pst(path, base64.StdEncoding.EncodeToString(p.Request()))
	if o.status != http.StatusOK {
		return o, nil
	}
	raw, err := base64.StdEncoding.DecodeString(o.token)
	if err != nil {
		s.t.Fatal(err)
	}
	// The response names the key that signed; find its client.
	if len(raw) < 6 {
		s.t.Fatalf("issuance response of %d bytes", len(raw))
	}
	id := uint32(raw[2])<<24 | uint32(raw[3])<<16 | uint32(raw[4])<<8 | uint32(raw[5])
	toks, err := voprf.NewClient(keys[id]).Finish(p, raw)
	if err != nil {
		s.t.Fatalf("finishing issuance: %v", err)
	}
	return o, toks
}

// issueStatus makes one issuance request for one token.
func (s *stack) issueStatus() outcome {
	s.t.Helper()
	_, keys, err := voprf.ParseCommitment(getBody(s.t, "http://"+s.listen+"/.well-known/private-state-token/key-commitment"))
	if err != nil {
		s.t.Fatal(err)
	}
	o, _ := s.issueOnce(keys, 1)
	return o
}

// redeemToken redeems tok as https://rp.example; safe from goroutines.
func (s *stack) redeemToken(tok voprf.Token) outcome {
	cd, err := voprf.MarshalClientData(&voprf.ClientData{RedeemingOrigin: "https://rp.example", RedemptionTimestamp: uint64(time.Now().Unix())})
	if err != nil {
		return outcome{err: err}
	}
	raw, err := voprf.MarshalRedeemRequest(&tok, cd)
	if err != nil {
		return outcome{err: err}
	}
	return s.pst(httpapi.PathRedemption, base64.StdEncoding.EncodeToString(raw))
}

func (s *stack) readyz() outcome {
	resp, err := http.Get("http://" + s.listen + "/readyz")
	if err != nil {
		return outcome{err: err}
	}
	defer resp.Body.Close()
	var p struct{ Type, Detail string }
	body, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(body, &p)
	return outcome{status: resp.StatusCode, problem: p.Type, detail: p.Detail}
}

// waitNotReady waits until /readyz answers 503 and returns its answer.
func (s *stack) waitNotReady(within time.Duration) outcome {
	s.t.Helper()
	deadline := time.Now().Add(within)
	for {
		o := s.readyz()
		if o.status == http.StatusServiceUnavailable {
			return o
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("/readyz still %+v after %v", o, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// assertUnavailable checks a fail-closed refusal: 503, the unavailable
// problem, and no token header.
func assertUnavailable(t *testing.T, what string, o outcome) {
	t.Helper()
	if o.err != nil || o.status != http.StatusServiceUnavailable || o.problem != httpapi.ProblemTypePrefix+"unavailable" || o.token != "" {
		t.Fatalf("%s: got %+v, want 503 %sunavailable with no %s", what, o, httpapi.ProblemTypePrefix, httpapi.HeaderToken)
	}
}

// verifyRecords checks every record against the JWKS and returns their ids.
func (s *stack) verifyRecords(records []string) []string {
	s.t.Helper()
	v, err := rp.NewVerifier(rp.Config{Issuers: map[string]string{s.origin: "http://" + s.listen + rp.JWKSPath}})
	if err != nil {
		s.t.Fatal(err)
	}
	var ids []string
	for _, r := range records {
		rec, err := v.VerifyRecord(context.Background(), s.origin, r)
		if err != nil {
			s.t.Fatalf("record does not verify: %v", err)
		}
		ids = append(ids, rec.RecordID)
	}
	return ids
}

// assertNo500 fails if pstd logged a 5xx other than 503, or a panic.
func (s *stack) assertNo500() {
	s.t.Helper()
	for _, code := range []string{"500", "501", "502", "504"} {
		if l := s.logLines(`"status":` + code); len(l) > 0 {
			s.t.Errorf("pstd answered %s: %s", code, l[0])
		}
	}
	if l := s.logLines("panic"); len(l) > 0 {
		s.t.Errorf("pstd logged a panic: %s", l[0])
	}
}

func (s *stack) assertRunning() {
	s.t.Helper()
	select {
	case <-s.stopped:
		s.t.Fatalf("pstd exited:\n%s", s.logs.String())
	default:
	}
}

// TestDatabaseOutage runs pstd on a private PostgreSQL cluster that is down
// at start, comes up, goes down mid-run while redemptions are flowing, and
// comes back. Every record a client received has its row; every token
// refused for the outage redeems once the database is back.
func TestDatabaseOutage(t *testing.T) {
	cluster := testenv.NewCluster(t)
	s := prepareStack(t, cluster.URL, testenv.NewToken(t))

	// Down at start: pstd starts (the pool connects lazily), is not ready,
	// and becomes ready by itself once the database is up.
	cluster.Stop(t)
	s.launch()
	if o := s.waitNotReady(30 * time.Second); !strings.Contains(o.detail, "database") {
		t.Fatalf("/readyz with the database down at start: %+v, want a detail naming the database", o)
	}
	cluster.Start(t)
	s.waitReady(30 * time.Second)

	toks := s.issueTokens(40)
	var records []string
	if o := s.redeemToken(toks[0]); o.status != http.StatusOK || o.token == "" {
		t.Fatalf("redemption before the outage: %+v", o)
	} else {
		records = append(records, o.token)
	}

	// Mid-run: redeem from four clients while the database stops and
	// starts again. Each answer is a record (200) or a fail-closed 503.
	var (
		mu       sync.Mutex
		refused  []voprf.Token
		outcomes = map[int]int{}
		wg       sync.WaitGroup
	)
	work := make(chan voprf.Token)
	for range 4 {
		wg.Go(func() {
			for tok := range work {
				o := s.redeemToken(tok)
				mu.Lock()
				outcomes[o.status]++
				switch {
				case o.status == http.StatusOK && o.token != "":
					records = append(records, o.token)
				case o.status == http.StatusServiceUnavailable && o.token == "" && o.problem == httpapi.ProblemTypePrefix+"unavailable":
					refused = append(refused, tok)
				default:
					t.Errorf("redemption during the outage: %+v", o)
				}
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	feed := func(ts []voprf.Token, gap time.Duration) {
		for _, tok := range ts {
			work <- tok
			time.Sleep(gap)
		}
	}
	feed(toks[1:6], 0)
	cluster.Stop(t)
	feed(toks[6:16], 0)
	// While it is down, readiness fails closed and so does issuance.
	if o := s.waitNotReady(10 * time.Second); !strings.Contains(o.detail, "database") {
		t.Fatalf("/readyz with the database down: %+v", o)
	}
	assertUnavailable(t, "issuance with the database down", s.issueStatus())
	var restart sync.WaitGroup
	var restartErr error
	restart.Go(func() { restartErr = cluster.Restart() })
	// Spread over the restart and the recovery (readiness probe, key-set
	// refresh), so that some of these meet the database back.
	feed(toks[16:40], 300*time.Millisecond)
	close(work)
	wg.Wait()
	restart.Wait()
	if restartErr != nil {
		t.Fatal(restartErr)
	}
	s.waitReady(30 * time.Second)
	if outcomes[http.StatusServiceUnavailable] < 10 {
		t.Fatalf("outcomes %v: the ten redemptions sent while the database was down should all be 503", outcomes)
	}

	// Back: a refused token redeems now, unless its commit reached the
	// database and only the acknowledgement was lost (README: the token is
	// then spent, with its row and without a record handed out). That is
	// the one case where rows may outnumber records.
	ackLost := 0
	for _, tok := range refused {
		o := s.redeemToken(tok)
		switch {
		case o.status == http.StatusOK && o.token != "":
			records = append(records, o.token)
		case o.status == http.StatusConflict:
			ackLost++
		default:
			t.Fatalf("redeeming a token refused during the outage: %+v", o)
		}
	}
	if o := s.redeemToken(toks[1]); o.status != http.StatusConflict {
		t.Fatalf("second redemption after the outage: %+v, want 409", o)
	}
	if o := s.issueStatus(); o.status != http.StatusOK {
		t.Fatalf("issuance after the outage: %+v", o)
	}

	// No record without its row: every record handed out has exactly one,
	// and the only rows without a record are those of lost acknowledgements.
	if len(records)+ackLost != len(toks) {
		t.Fatalf("%d records and %d lost acknowledgements for %d tokens", len(records), ackLost, len(toks))
	}
	for _, id := range s.verifyRecords(records) {
		if n := s.count("SELECT count(*) FROM redemptions WHERE record_id = $1", id); n != 1 {
			t.Fatalf("record %s has %d rows", id, n)
		}
	}
	if n := s.redemptions(); n != len(toks) {
		t.Fatalf("%d redemption rows for %d tokens", n, len(toks))
	}
	t.Logf("during the outage: %v; acknowledgements lost: %d", outcomes, ackLost)
	s.assertRunning()
	s.assertNo500()
}

// TestHSMOutage takes the token away from a running pstd (its SoftHSM
// directory leaves the token store, as an HSM partition going offline) and
// brings it back.
func TestHSMOutage(t *testing.T) {
	tok := testenv.NewToken(t)
	s := newStackOn(t, testenv.NewDatabase(t), tok)
	toks := s.issueTokens(3)
	o := s.redeemToken(toks[0])
	if o.status != http.StatusOK {
		t.Fatalf("redemption before the outage: %+v", o)
	}
	records := []string{o.token}

	tok.Unplug(t)
	if o := s.waitNotReady(10 * time.Second); !strings.Contains(o.detail, "HSM") {
		t.Fatalf("/readyz with the token gone: %+v, want a detail naming the HSM", o)
	}
	assertUnavailable(t, "redemption with the token gone", s.redeemToken(toks[1]))
	assertUnavailable(t, "issuance with the token gone", s.issueStatus())
	if n := s.redemptions(); n != 1 {
		t.Fatalf("%d redemption rows after a refused redemption, want 1", n)
	}

	tok.Replug(t)
	s.waitReady(45 * time.Second)
	for _, tk := range toks[1:] {
		o := s.redeemToken(tk)
		if o.status != http.StatusOK {
			t.Fatalf("redemption after the token came back: %+v", o)
		}
		records = append(records, o.token)
	}
	if o := s.issueStatus(); o.status != http.StatusOK {
		t.Fatalf("issuance after the token came back: %+v", o)
	}
	s.verifyRecords(records)
	if n := s.redemptions(); n != 3 {
		t.Fatalf("%d redemption rows, want 3", n)
	}
	if len(s.logLines("hsm: token session restored")) == 0 {
		t.Errorf("no reconnect logged:\n%s", s.logs.String())
	}
	if strings.Contains(s.logs.String(), tok.PIN) {
		t.Fatal("the PIN appears in pstd's logs")
	}
	s.assertRunning()
	s.assertNo500()
}

// TestStartWithoutUsableToken: `pstd serve` with a token it cannot use
// exits at once with status 1 and a message saying what is wrong, without
// the PIN, and without retrying the login.
func TestStartWithoutUsableToken(t *testing.T) {
	tok := testenv.NewToken(t)
	s := prepareStack(t, testenv.NewDatabase(t), tok)
	badPIN := filepath.Join(t.TempDir(), "bad-pin")
	if err := os.WriteFile(badPIN, []byte("not-"+tok.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		env  []string
		want string
	}{
		{"wrong label", []string{"PSTD_PKCS11_TOKEN_LABEL=no-such-token"}, `no token labelled "no-such-token"`},
		{"wrong PIN", []string{"PSTD_PKCS11_PIN_FILE=" + badPIN}, "PIN"},
		{"missing module", []string{"PSTD_PKCS11_MODULE=/nonexistent/libpkcs11.so"}, "/nonexistent/libpkcs11.so"},
		{"missing PIN file", []string{"PSTD_PKCS11_PIN_FILE=/nonexistent/pin"}, "/nonexistent/pin"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, filepath.Join(binDir, "pstd"), "serve")
			cmd.Env = append(append([]string{}, s.env...), c.env...)
			start := time.Now()
			out, err := cmd.CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("pstd did not exit within 20 s:\n%s", out)
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Fatalf("exit: %v, want status 1\n%s", err, out)
			}
			last := lastLine(string(out))
			if !strings.HasPrefix(last, "pstd: ") || !strings.Contains(last, c.want) {
				t.Fatalf("last line %q; want a pstd: error containing %q", last, c.want)
			}
			if strings.Contains(string(out), tok.PIN) {
				t.Fatal("the PIN appears in pstd's output")
			}
			t.Logf("%s, after %v", last, time.Since(start).Round(time.Millisecond))
		})
	}
	// The wrong PIN cost one login attempt, not a lockout: the right one
	// still works.
	s.start()
	s.assertRunning()
	// And the key in use is visible to monitoring.
	if id := s.metric("pstd_key_epoch"); id != 1 {
		t.Errorf("pstd_key_epoch = %v, want 1", id)
	}
	if exp := s.metric("pstd_signing_key_expiry_timestamp_seconds"); exp < float64(time.Now().Add(30*24*time.Hour).Unix()) {
		t.Errorf("pstd_signing_key_expiry_timestamp_seconds = %v, want a month or more ahead", exp)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestSIGTERMUnderLoad: SIGTERM while redemptions are flowing. pstd stops
// accepting, finishes what is in flight and exits 0; every record a client
// got has its row, and every row belongs to a record a client got.
func TestSIGTERMUnderLoad(t *testing.T) {
	s := newStackOn(t, testenv.NewDatabase(t), testenv.NewToken(t))
	toks := s.issueTokens(60)
	var (
		mu      sync.Mutex
		records []string
		seen    = map[string]int{}
		wg      sync.WaitGroup
	)
	work := make(chan voprf.Token)
	for range 4 {
		wg.Go(func() {
			for tok := range work {
				o := s.redeemToken(tok)
				mu.Lock()
				switch {
				case o.err != nil:
					seen["transport error"]++
				case o.status == http.StatusOK && o.token != "":
					records = append(records, o.token)
					seen["200"]++
				case o.status == http.StatusServiceUnavailable && o.token == "":
					seen["503"]++
				default:
					t.Errorf("redemption during shutdown: %+v", o)
				}
				mu.Unlock()
			}
		})
	}
	for i, tok := range toks {
		if i == 20 {
			if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
		}
		work <- tok
		time.Sleep(5 * time.Millisecond)
	}
	close(work)
	wg.Wait()
	select {
	case <-s.stopped:
	case <-time.After(30 * time.Second):
		t.Fatalf("pstd still running 30 s after SIGTERM:\n%s", s.logs.String())
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit status %d after SIGTERM:\n%s", code, s.logs.String())
	}
	if len(s.logLines("stopped; wiping keys")) == 0 {
		t.Errorf("no shutdown line logged:\n%s", s.logs.String())
	}
	if len(records) < 15 {
		t.Fatalf("outcomes %v: the redemptions before SIGTERM should have succeeded", seen)
	}
	if n := s.redemptions(); n != len(records) {
		t.Fatalf("%d rows for %d records returned (outcomes %v)", n, len(records), seen)
	}
	t.Logf("outcomes: %v", seen)
	s.assertNo500()
}

// TestRetireKey: the compromise response. After `pstctl keys rotate
// --force` and `pstctl keys retire 1`, the running pstd stops redeeming key
// 1's tokens and stops publishing it, without a restart; the only key left
// that signs cannot be retired.
func TestRetireKey(t *testing.T) {
	s := newStackOn(t, testenv.NewDatabase(t), testenv.NewToken(t))
	old := s.issueTokens(2)
	if old[0].KeyID != 1 {
		t.Fatalf("first token under key %d, want 1", old[0].KeyID)
	}
	s.pstctl("keys", "rotate", "--force")
	s.pstctl("keys", "retire", "1")

	// The replica notices at its next key-set refresh (at most 5 s; until
	// then the token may still redeem, or answer 409 once it has).
	deadline := time.Now().Add(30 * time.Second)
	for {
		o := s.redeemToken(old[0])
		if o.status == http.StatusBadRequest && o.problem == httpapi.ProblemTypePrefix+"unknown-key" {
			break
		}
		if o.status != http.StatusOK && o.status != http.StatusConflict {
			t.Fatalf("redeeming during the refresh window: %+v", o)
		}
		if time.Now().After(deadline) {
			t.Fatalf("retired key's token still answered %+v after 30 s", o)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// From then on no token of key 1 redeems.
	if o := s.redeemToken(old[1]); o.status != http.StatusBadRequest || o.problem != httpapi.ProblemTypePrefix+"unknown-key" {
		t.Fatalf("an unspent token of the retired key: %+v, want 400 unknown-key", o)
	}
	// The database refuses the retired key's tokens at once (the redemption
	// transaction checks); the replica's commitment drops it at its next
	// key-set refresh.
	deadline = time.Now().Add(30 * time.Second)
	for {
		c, keys, err := voprf.ParseCommitment(getBody(t, "http://"+s.listen+"/.well-known/private-state-token/key-commitment"))
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := keys[1]; !ok && len(keys) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("commitment %d still lists key 1 after 30 s: %v", c.ID, voprf.SortedKeyIDs(keys))
		}
		time.Sleep(100 * time.Millisecond)
	}
	fresh := s.issueTokens(1)
	if o := s.redeemToken(fresh[0]); o.status != http.StatusOK || fresh[0].KeyID != 2 {
		t.Fatalf("token of key %d after the retirement: %+v", fresh[0].KeyID, o)
	}
	if n := s.count("SELECT count(*) FROM audit_log WHERE action = 'key.retire' AND subject = 'key:1'"); n != 1 {
		t.Fatalf("%d key.retire entries for key 1", n)
	}

	cmd := exec.Command(filepath.Join(binDir, "pstctl"), "keys", "retire", "2")
	cmd.Env = s.env
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "only key that can sign") {
		t.Fatalf("retiring the last signing key: %v\n%s", err, out)
	}
	// The refusal is on the audit log, with who asked and why.
	if n := s.count(`SELECT count(*) FROM audit_log WHERE action = 'operator.refused' AND subject = 'key:2'
		AND actor = 'e2e@test' AND details->>'reason' = 'e2e test' AND details->>'command' = 'keys retire'`); n != 1 {
		t.Fatalf("%d operator.refused entries for retiring key 2, want 1", n)
	}
	if n := s.count(`SELECT count(*) FROM audit_log WHERE action = 'operator.command' AND subject = 'key:1' AND actor = 'e2e@test'`); n != 1 {
		t.Fatalf("%d operator.command entries for retiring key 1, want 1", n)
	}
}
