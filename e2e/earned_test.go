package e2e

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pstd/pstd/httpapi"
	"github.com/pstd/pstd/internal/testenv"
	"github.com/pstd/pstd/signer/voprf"
)

// TestIssuanceMustBeEarned: the real pstd with a ticket key issues only to a
// request carrying a fresh ticket from the trusting site, once per ticket
// (spent tickets are kept in PostgreSQL, shared by replicas); it refuses to
// start on a public listener with no issuance policy at all.
func TestIssuanceMustBeEarned(t *testing.T) {
	s := prepareStack(t, testenv.NewDatabase(t), testenv.NewToken(t))
	key := []byte("an issuance ticket key of 32+ bytes, test only")
	keyFile := filepath.Join(t.TempDir(), "ticket-key")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	s.env = append(s.env, "PSTD_ISSUANCE_TICKET_KEY_FILE="+keyFile)
	s.start()

	issue := func(ticket string) outcome {
		path := httpapi.PathIssuance
		if ticket != "" {
			path += "?" + httpapi.TicketParam + "=" + ticket
		}
		_, keys, err := voprf.ParseCommitment(getBody(t, "http://"+s.listen+httpapi.PathKeyCommitment))
		if err != nil {
			t.Fatal(err)
		}
		o, _ := s.issueOnceAt(keys, 1, path)
		return o
	}
	// Refusals cost no signature: the issued-token counters stay at 0
	// until the good ticket, and move by its one token only.
	signed := func() float64 {
		return s.metric("pstd_tokens_issued_total") + s.metric("pstd_key_tokens_issued_total")
	}
	if o := issue(""); o.status != http.StatusForbidden || o.problem != httpapi.ProblemTypePrefix+"denied" {
		t.Fatalf("without a ticket: %+v", o)
	}
	good, err := httpapi.MintTicket(key, 5*time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	expired, _ := httpapi.MintTicket(key, -time.Minute, time.Now())
	if o := issue(expired); o.status != http.StatusForbidden {
		t.Fatalf("an expired ticket: %+v", o)
	}
	if n := signed(); n != 0 {
		t.Fatalf("%v tokens signed for requests without a valid ticket", n)
	}
	if o := issue(good); o.status != http.StatusOK {
		t.Fatalf("a good ticket: %+v", o)
	}
	if o := issue(good); o.status != http.StatusForbidden || !strings.Contains(o.detail, "already used") {
		t.Fatalf("a replayed ticket: %+v", o)
	}
	if n := signed(); n != 2 { // one token, counted once overall and once for its key
		t.Fatalf("issued-token counters sum to %v after one good ticket and a replay, want 2", n)
	}
	if n := s.count(`SELECT count(*) FROM spent_tickets`); n != 1 {
		t.Fatalf("%d spent tickets stored", n)
	}
	s.stop()

	// A public listener without any issuance policy: refused at start.
	cmd := exec.Command(filepath.Join(binDir, "pstd"), "serve")
	for _, kv := range s.env {
		if !strings.HasPrefix(kv, "PSTD_LISTEN=") && !strings.HasPrefix(kv, "PSTD_ISSUANCE_TICKET_KEY_FILE=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "PSTD_LISTEN=0.0.0.0:1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "no issuance policy") {
		t.Fatalf("pstd on 0.0.0.0 without a policy: %v\n%s", err, out)
	}

	// With PSTD_OPEN_ISSUANCE it starts, issues to anyone, and says so.
	var env []string
	for _, kv := range s.env {
		if !strings.HasPrefix(kv, "PSTD_LISTEN=") && !strings.HasPrefix(kv, "PSTD_ISSUANCE_TICKET_KEY_FILE=") {
			env = append(env, kv)
		}
	}
	_, port, _ := strings.Cut(s.listen, ":")
	s.env = append(env, "PSTD_LISTEN=0.0.0.0:"+port, "PSTD_OPEN_ISSUANCE=true")
	s.start()
	if o := issue(""); o.status != http.StatusOK {
		t.Fatalf("open issuance: %+v", o)
	}
	if len(s.logLines("WARN", "PSTD_OPEN_ISSUANCE")) != 1 {
		t.Fatalf("no warning about open issuance at start:\n%s", s.logs.String())
	}
}

// TestRedemptionMaxRate: PSTD_REDEEM_MAX_RATE caps redemptions over all
// clients of a replica; the excess is refused (429) before any signature or
// database write, so the redemptions table holds exactly the ones allowed.
func TestRedemptionMaxRate(t *testing.T) {
	s := prepareStack(t, testenv.NewDatabase(t), testenv.NewToken(t))
	s.env = append(s.env, "PSTD_REDEEM_MAX_RATE=3")
	s.start()
	toks := s.issueTokens(10)
	ok, limited := 0, 0
	start := time.Now()
	for _, tok := range toks {
		switch o := s.redeemToken(tok); {
		case o.status == http.StatusOK:
			ok++
		case o.status == http.StatusTooManyRequests && o.problem == httpapi.ProblemTypePrefix+"rate-limited":
			limited++
		default:
			t.Fatalf("redemption: %+v", o)
		}
	}
	elapsed := time.Since(start)
	t.Logf("%d redeemed, %d refused in %s", ok, limited, elapsed.Round(time.Millisecond))
	if limited == 0 || ok > 3+int(3*elapsed.Seconds())+1 {
		t.Fatalf("%d redeemed and %d refused in %s at 3 a second", ok, limited, elapsed)
	}
	if n := s.redemptions(); n != ok {
		t.Fatalf("%d redemptions stored for %d allowed", n, ok)
	}
}

// TestIssuanceWebhook: the real pstd asks the operator's webhook before
// each issuance and issues only on an explicit yes; a no, a webhook slower
// than PSTD_ISSUANCE_WEBHOOK_TIMEOUT, or one that is down gets no token and
// no signature. The webhook never sees the blinded elements.
func TestIssuanceWebhook(t *testing.T) {
	var mode atomic.Value
	mode.Store("yes")
	var lastBody atomic.Value
	lastBody.Store("")
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		lastBody.Store(string(b))
		switch mode.Load() {
		case "yes":
			io.WriteString(w, `{"issue": true}`)
		case "no":
			io.WriteString(w, `{"issue": false}`)
		case "slow":
			time.Sleep(time.Second)
			io.WriteString(w, `{"issue": true}`)
		}
	}))
	defer hook.Close()

	s := prepareStack(t, testenv.NewDatabase(t), testenv.NewToken(t))
	s.env = append(s.env, "PSTD_ISSUANCE_WEBHOOK="+hook.URL, "PSTD_ISSUANCE_WEBHOOK_TIMEOUT=200ms")
	s.start()
	_, keys, err := voprf.ParseCommitment(getBody(t, "http://"+s.listen+httpapi.PathKeyCommitment))
	if err != nil {
		t.Fatal(err)
	}
	signed := func() float64 {
		return s.metric("pstd_tokens_issued_total") + s.metric("pstd_key_tokens_issued_total")
	}

	o, toks := s.issueOnce(keys, 1)
	if o.status != http.StatusOK || len(toks) != 1 {
		t.Fatalf("webhook says yes: %+v", o)
	}
	if body := lastBody.Load().(string); !strings.Contains(body, `"requested":1`) || strings.Contains(strings.ToLower(body), strings.ToLower(httpapi.HeaderToken)) {
		t.Fatalf("the webhook was asked %s", body)
	}
	base := signed()
	for _, m := range []string{"no", "slow", "down"} {
		mode.Store(m)
		if m == "down" {
			hook.Close()
		}
		start := time.Now()
		o, toks := s.issueOnce(keys, 1)
		if o.status == http.StatusOK || len(toks) != 0 {
			t.Errorf("webhook %s: issued %+v", m, o)
		}
		t.Logf("webhook %s: %d %s after %s", m, o.status, o.problem, time.Since(start).Round(time.Millisecond))
	}
	if got := signed(); got != base {
		t.Errorf("issued-token counters moved by %v while the webhook refused", got-base)
	}
}

// TestRotationYouCanSee: pstctl keys list says which key signs and until
// when it signs and redeems; keys plan lays out the next keys and warns
// about a registration close to lapsing.
func TestRotationYouCanSee(t *testing.T) {
	s := newStackOn(t, testenv.NewDatabase(t), testenv.NewToken(t))
	list := s.pstctl("keys", "list")
	if !strings.Contains(list, "SIGNS UNTIL") || !strings.Contains(list, "REDEEMS UNTIL") || !strings.Contains(list, "yes") ||
		!strings.Contains(list, "next rotation:") {
		t.Fatalf("keys list:\n%s", list)
	}
	soon := time.Now().Add(5 * 24 * time.Hour).UTC().Format(time.DateOnly)
	plan := s.pstctl("keys", "plan", "--days", "180", "--registration-expires", soon)
	if !strings.Contains(plan, "(next)") || !strings.Contains(plan, "next rotation:") || !strings.Contains(plan, "registration lapses on "+soon) {
		t.Fatalf("keys plan:\n%s", plan)
	}
	js := s.pstctl("keys", "plan", "--format", "json")
	if !strings.Contains(js, `"next_rotation"`) || !strings.Contains(js, `"planned": true`) {
		t.Fatalf("keys plan --format json:\n%s", js)
	}
	if got := s.metric("pstd_successor_key_published"); got != 0 {
		t.Fatalf("pstd_successor_key_published = %v on a fresh key", got)
	}
	if s.metric("pstd_next_rotation_timestamp_seconds") < float64(time.Now().Add(50*24*time.Hour).Unix()) {
		t.Fatal("pstd_next_rotation_timestamp_seconds is not ~60 days ahead")
	}
}

// TestOperatorActorOnEveryEvent: an operator's pstctl commands are
// attributed to that operator (PSTD_ACTOR) on every event they cause, the
// key and commitment events included, never to the serving replica, which
// runs under another actor here.
func TestOperatorActorOnEveryEvent(t *testing.T) {
	s := newStackOn(t, testenv.NewDatabase(t), testenv.NewToken(t))
	mark := s.count(`SELECT coalesce(max(seq), 0) FROM audit_log`)
	const operator = "alice@ops.example"
	for _, args := range [][]string{{"keys", "rotate", "--force"}, {"keys", "retire", "1"}, {"keys", "rotate-rr"}} {
		cmd := exec.Command(filepath.Join(binDir, "pstctl"), args...)
		cmd.Env = append(slices.Clone(s.env), "PSTD_ACTOR="+operator, "PSTD_REASON=actor test")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("pstctl %v: %v\n%s", args, err, out)
		}
	}
	rows := s.column(`SELECT action || ' by ' || actor FROM audit_log WHERE seq > $1
		AND (action LIKE 'key.%' OR action LIKE 'rr_key.%' OR action LIKE 'commitment.%' OR action LIKE 'operator.%')
		AND action NOT IN ('key.activate', 'key.expire') ORDER BY seq`, mark)
	var actions []string
	for _, r := range rows {
		action, actor, _ := strings.Cut(r, " by ")
		actions = append(actions, action)
		if actor != operator {
			t.Errorf("%s is attributed to %q, not the operator", action, actor)
		}
	}
	for _, want := range []string{"key.create", "key.retire", "commitment.publish", "operator.command"} {
		if !slices.Contains(actions, want) {
			t.Errorf("no %s event among %v", want, actions)
		}
	}
	t.Logf("events caused by the operator: %v", actions)
}
