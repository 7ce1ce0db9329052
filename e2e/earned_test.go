package e2e

import (
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	if o := issue(good); o.status != http.StatusOK {
		t.Fatalf("a good ticket: %+v", o)
	}
	if o := issue(good); o.status != http.StatusForbidden || !strings.Contains(o.detail, "already used") {
		t.Fatalf("a replayed ticket: %+v", o)
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
