package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pstd/pstd/internal/testenv"
)

// runDoctor runs the real `pstctl doctor` binary and returns its stdout and
// exit status.
func runDoctor(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "pstctl"), append([]string{"doctor"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &ee):
		return out.String(), ee.ExitCode()
	}
	t.Fatalf("pstctl doctor: %v\n%s", err, errb.String())
	return "", -1
}

// TestDoctor: `pstctl doctor --redeem` against the real pstd binary (SoftHSM,
// PostgreSQL) finds no failure (exit 0, the localhost warning only) and
// spends exactly one token; against an origin where nothing answers it exits
// 1, and with a malformed URL 2.
func TestDoctor(t *testing.T) {
	s := newStackOn(t, testenv.NewDatabase(t), testenv.NewToken(t))
	out, code := runDoctor(t, "--redeem", "--format", "json", "--origin", "https://rp.example", s.origin)
	var rep struct {
		Checks  []struct{ ID, Status, Message string }
		Summary struct {
			Pass, Warn, Fail, Skip int
			OK                     bool
		}
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("doctor output is not JSON: %v\n%s", err, out)
	}
	if code != 0 || !rep.Summary.OK || rep.Summary.Fail != 0 || rep.Summary.Warn != 1 || len(rep.Checks) != 22 {
		t.Fatalf("exit %d, summary %+v:\n%s", code, rep.Summary, out)
	}
	if n := s.redemptions(); n != 1 {
		t.Fatalf("%d redemptions recorded, want the doctor's one", n)
	}

	table, code := runDoctor(t, "http://localhost:1")
	if code != 1 || !strings.Contains(table, "FAIL    commitment-get") {
		t.Fatalf("unreachable issuer: exit %d\n%s", code, table)
	}
	if _, code := runDoctor(t, "ftp://issuer.example"); code != 2 {
		t.Fatalf("malformed URL: exit %d, want 2", code)
	}
}
