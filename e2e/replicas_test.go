package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pstd/pstd/internal/testenv"
)

// TestReplicasStartTogetherOnFreshToken: four `pstd serve` processes start
// at the same moment on a fresh token and an empty (migrated) database.
// PKCS#11 has no "create if absent", so without the database's
// provisioning lock each would make its own key-encryption key, and a label
// naming two objects breaks every later lookup. All four must become ready,
// with one KEK creation and one first key on the audit log.
func TestReplicasStartTogetherOnFreshToken(t *testing.T) {
	dbURL := testenv.NewDatabase(t)
	tok := testenv.NewToken(t)
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := &stack{t: t, dbURL: dbURL, env: append(os.Environ(),
		"PSTD_DATABASE_URL="+dbURL,
		"PSTD_PKCS11_MODULE="+tok.Module,
		"PSTD_PKCS11_TOKEN_LABEL="+tok.Label,
		"PSTD_PKCS11_PIN_FILE="+pinFile,
		"SOFTHSM2_CONF="+tok.Conf,
		"PSTD_ISSUER_ORIGIN=https://issuer.example",
	)}
	base.pstctl("migrate")
	// The replicas run as the service role: provisioning the KEK and the
	// first key must work with its privileges.
	base.env = append(base.env, "PSTD_DATABASE_URL="+testenv.RoleURL(t, dbURL, "pstd_service"))

	const replicas = 4
	stacks := make([]*stack, replicas)
	for i := range stacks {
		port := testenv.FreePort(t)
		stacks[i] = &stack{t: t, dbURL: dbURL, listen: fmt.Sprintf("127.0.0.1:%d", port),
			env: append(append([]string{}, base.env...), fmt.Sprintf("PSTD_LISTEN=127.0.0.1:%d", port))}
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for _, s := range stacks {
		s.logs = &syncBuffer{}
		s.cmd = exec.Command(filepath.Join(binDir, "pstd"), "serve")
		s.cmd.Env = s.env
		s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
		wg.Go(func() {
			<-start
			if err := s.cmd.Start(); err != nil {
				t.Error(err)
				return
			}
			s.stopped = make(chan struct{})
			go func() { s.cmd.Wait(); close(s.stopped) }()
		})
	}
	close(start)
	wg.Wait()
	for _, s := range stacks {
		t.Cleanup(s.stop)
	}
	// The replicas that lost the rotation lock at start wait for the key
	// set through their refresh loop (5 s).
	for i, s := range stacks {
		deadline := time.Now().Add(30 * time.Second)
		for {
			if o := s.readyz(); o.status == http.StatusOK {
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("replica %d not ready: %+v\n%s", i, o, s.logs.String())
			}
			select {
			case <-s.stopped:
				t.Fatalf("replica %d exited:\n%s", i, s.logs.String())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	if n := base.count("SELECT count(*) FROM audit_log WHERE action = 'kek.create'"); n != 1 {
		t.Fatalf("%d kek.create entries, want 1", n)
	}
	if n := base.count("SELECT count(*) FROM key_epochs"); n != 1 {
		t.Fatalf("%d key epochs after a concurrent first start, want 1", n)
	}
	// Each replica issues and the tokens redeem at another one.
	for i, s := range stacks {
		toks := s.issueTokens(1)
		if o := stacks[(i+1)%replicas].redeemToken(toks[0]); o.status != http.StatusOK {
			t.Fatalf("token from replica %d at replica %d: %+v", i, (i+1)%replicas, o)
		}
	}
	for i, s := range stacks {
		if l := s.logLines("hsm:", "more than one"); len(l) > 0 {
			t.Errorf("replica %d: %s", i, strings.Join(l, "\n"))
		}
	}
}
