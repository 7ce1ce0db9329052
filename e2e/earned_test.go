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
