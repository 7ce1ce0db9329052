package e2e

// Secrets out of the process image (issue 13, item 6), checked as an
// attacker would: the kernel's /proc/PID/environ and cmdline, and the core
// file a crash leaves.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pstd/pstd/internal/testenv"
)

// secretStack is a stack whose PIN and database password are given in the
// environment (PSTD_PKCS11_PIN, a PSTD_DATABASE_URL with a password),
// the way the review found them leaking. The throwaway cluster trusts
// local connections, so the password is carried but not needed.
func secretStack(t *testing.T) (s *stack, pin, password string) {
	t.Helper()
	tok := testenv.NewToken(t)
	s = prepareStack(t, testenv.NewDatabase(t), tok)
	var b [12]byte
	_, _ = rand.Read(b[:])
	password = "pw-" + hex.EncodeToString(b[:])
	u, err := url.Parse(s.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), password)
	var env []string
	for _, kv := range s.env {
		if !strings.HasPrefix(kv, "PSTD_PKCS11_PIN_FILE=") && !strings.HasPrefix(kv, "PSTD_DATABASE_URL=") {
			env = append(env, kv)
		}
	}
	s.env = append(env, "PSTD_PKCS11_PIN="+tok.PIN, "PSTD_DATABASE_URL="+u.String())
	return s, tok.PIN, password
}

// TestSecretsNotInProcEnviron: with the PIN and the database password in
// pstd's environment at start, neither is in /proc/PID/environ (nor
// cmdline) of the running server, while the other variables are.
func TestSecretsNotInProcEnviron(t *testing.T) {
	s, pin, password := secretStack(t)
	s.launchWith(nil, "")
	s.waitReady(30 * time.Second)
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", s.pid()))
	if err != nil {
		t.Fatal(err)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", s.pid()))
	// The positive control: this is pstd's environment.
	if !bytes.Contains(environ, []byte("PSTD_LISTEN="+s.listen)) {
		t.Fatalf("/proc/%d/environ is not pstd's: %q", s.pid(), environ)
	}
	for what, secret := range map[string]string{"PIN": pin, "database password": password} {
		if bytes.Contains(environ, []byte(secret)) {
			t.Errorf("the %s is in /proc/PID/environ", what)
		}
		if bytes.Contains(cmdline, []byte(secret)) {
			t.Errorf("the %s is in /proc/PID/cmdline", what)
		}
		if strings.Contains(s.logs.String(), secret) {
			t.Errorf("the %s is in the log", what)
		}
	}
	for _, name := range []string{"PSTD_PKCS11_PIN=", "PSTD_DATABASE_URL="} {
		if bytes.Contains(environ, []byte(name)) {
			t.Errorf("/proc/PID/environ still names %s", name)
		}
	}
	// And the server works with what it was given.
	if len(s.issueTokens(10)) != 10 {
		t.Fatal("no tokens")
	}
}

// crash starts pstd (extra args) in dir with core dumps enabled by the
// shell (ulimit -c unlimited) and GOTRACEBACK=crash, waits until it is
// ready, aborts it with SIGABRT and returns the core files left in dir.
func crash(t *testing.T, s *stack, dir string, args ...string) []string {
	t.Helper()
	s.env = append(s.env, "GOTRACEBACK=crash")
	s.launchWith([]string{"sh", "-c", `ulimit -c unlimited && exec "$@"`, "sh"}, dir, args...)
	s.waitReady(30 * time.Second)
	if len(s.issueTokens(10)) != 10 { // keys and PIN in use
		t.Fatal("no tokens")
	}
	if err := s.cmd.Process.Signal(syscall.SIGABRT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("pstd did not die of SIGABRT")
	}
	ws, _ := s.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGABRT {
		t.Fatalf("pstd ended with %v, not SIGABRT", s.cmd.ProcessState)
	}
	s.cmd = nil
	cores, _ := filepath.Glob(filepath.Join(dir, "core*"))
	return cores
}

// TestCrashWritesNoCore: a crashed pstd leaves no core (so no PIN, no
// scalar), although the shell allowed cores; the control run with
// --allow-core-dumps shows that the same crash would otherwise have left
// one holding the PIN.
func TestCrashWritesNoCore(t *testing.T) {
	pattern, err := os.ReadFile("/proc/sys/kernel/core_pattern")
	if err != nil {
		t.Fatal(err)
	}
	if p := strings.TrimSpace(string(pattern)); p == "" || strings.HasPrefix(p, "|") || strings.Contains(p, "/") {
		// A core handler (systemd-coredump, apport) or another directory:
		// the cores would not land where this test can see them.
		t.Skipf("core_pattern %q does not write cores into the working directory", p)
	}

	s, pin, password := secretStack(t)
	dir := t.TempDir()
	if cores := crash(t, s, dir); len(cores) != 0 {
		t.Fatalf("a crashed pstd left a core: %v", cores)
	}

	// Control: with dumps allowed, the same crash leaves a core, and the
	// PIN is in it — so the check above could have failed.
	ctlDir := t.TempDir()
	cores := crash(t, s, ctlDir, "--allow-core-dumps")
	if len(cores) == 0 {
		t.Fatal("control: no core even with --allow-core-dumps; the test proves nothing here")
	}
	core, err := os.ReadFile(cores[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("control core %s: %d bytes; holds PIN %v, database password %v", filepath.Base(cores[0]), len(core),
		bytes.Contains(core, []byte(pin)), bytes.Contains(core, []byte(password)))
	if !bytes.Contains(core, []byte(pin)) {
		t.Error("control: the PIN is not in the core; the search would not find it")
	}
	for _, c := range cores {
		os.Remove(c)
	}
}
