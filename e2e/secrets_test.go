package e2e

// Secrets out of the process image (issue 13, item 6), checked as an
// attacker would: the kernel's /proc/PID/environ and cmdline, and the core
// file a crash leaves.

import (
	"bytes"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pstd/pstd/internal/testenv"
	"github.com/pstd/pstd/signer/voprf"
)

// secretStack is a stack whose PIN and database password are given in the
// environment (PSTD_PKCS11_PIN, a PSTD_DATABASE_URL with a password),
// the way the review found them leaking. The throwaway cluster trusts
// local connections, so the password is carried but not needed.
// With pinFile, the PIN comes from the stack's PIN file instead.
func secretStack(t *testing.T, pinFile bool) (s *stack, pin, password string) {
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
		if (pinFile || !strings.HasPrefix(kv, "PSTD_PKCS11_PIN_FILE=")) && !strings.HasPrefix(kv, "PSTD_DATABASE_URL=") {
			env = append(env, kv)
		}
	}
	s.env = append(env, "PSTD_DATABASE_URL="+u.String())
	if !pinFile {
		s.env = append(s.env, "PSTD_PKCS11_PIN="+tok.PIN)
	}
	return s, tok.PIN, password
}

// TestSecretsNotInProcEnviron: with the PIN and the database password in
// pstd's environment at start, neither is in /proc/PID/environ (nor
// cmdline) of the running server, while the other variables are.
func TestSecretsNotInProcEnviron(t *testing.T) {
	s, pin, password := secretStack(t, false)
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

// proof is the DLEQ proof (c, s) of one issuance response.
type proof struct{ c, s []byte }

// crash starts pstd (extra args) in dir with core dumps enabled by the
// shell (ulimit -c unlimited) and GOTRACEBACK=crash, waits until it is
// ready, issues three batches, aborts it with SIGABRT and returns the core
// files left in dir, the key ids that signed and the batches' proofs.
func crash(t *testing.T, s *stack, dir string, args ...string) (cores []string, keyIDs map[uint32]bool, proofs []proof) {
	t.Helper()
	s.env = append(s.env, "GOTRACEBACK=crash")
	s.launchWith([]string{"sh", "-c", `ulimit -c unlimited && exec "$@"`, "sh"}, dir, args...)
	s.waitReady(30 * time.Second)
	_, keys, err := voprf.ParseCommitment(getBody(t, "http://"+s.listen+"/.well-known/private-state-token/key-commitment"))
	if err != nil {
		t.Fatal(err)
	}
	keyIDs = map[uint32]bool{}
	for range 3 { // keys and PIN in use
		o, toks := s.issueOnce(keys, 10)
		raw, err := base64.StdEncoding.DecodeString(o.token)
		if len(toks) != 10 || err != nil || len(raw) < 2*48 {
			t.Fatalf("issuance: %+v", o)
		}
		for _, tok := range toks {
			keyIDs[tok.KeyID] = true
		}
		proofs = append(proofs, proof{c: raw[len(raw)-96 : len(raw)-48], s: raw[len(raw)-48:]})
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
	cores, _ = filepath.Glob(filepath.Join(dir, "core*"))
	return cores, keyIDs, proofs
}

// cores a crash leaves must land in the crashed process's working
// directory for these tests to see them.
func skipUnlessCoresInWorkingDir(t *testing.T) {
	t.Helper()
	pattern, err := os.ReadFile("/proc/sys/kernel/core_pattern")
	if err != nil {
		t.Fatal(err)
	}
	if p := strings.TrimSpace(string(pattern)); p == "" || strings.HasPrefix(p, "|") || strings.Contains(p, "/") {
		// A core handler (systemd-coredump, apport) or another directory:
		// the cores would not land where this test can see them.
		t.Skipf("core_pattern %q does not write cores into the working directory", p)
	}
}

const importedKeyID = 4242

// importKnownKey imports a VOPRF key whose scalar the test chose, as the
// signing key, and returns the scalar.
func importKnownKey(t *testing.T, s *stack) []byte {
	t.Helper()
	blob := make([]byte, 4+48)
	binary.BigEndian.PutUint32(blob, importedKeyID)
	if _, err := rand.Read(blob[4:]); err != nil {
		t.Fatal(err)
	}
	blob[4] = 0x01 | blob[4]&0x7f // below the group order, and not zero
	f := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(f, blob, 0o600); err != nil {
		t.Fatal(err)
	}
	if out := s.pstctl("keys", "import", "--file", f); !strings.Contains(out, fmt.Sprintf("imported key %d", importedKeyID)) {
		t.Fatalf("keys import: %s", out)
	}
	return blob[4:]
}

// scalarForms are the byte strings an attacker with a core looks for to
// find a 48-byte big-endian scalar: the bytes as they are, and reversed,
// which is also how little-endian 32- or 64-bit limbs (big-number code on
// amd64 and arm64) lay it out.
func scalarForms(k []byte) map[string][]byte {
	rev := make([]byte, len(k))
	for i := range k {
		rev[i] = k[len(k)-1-i]
	}
	return map[string][]byte{"big-endian": k, "little-endian limbs": rev}
}

// TestCrashWritesNoCore: a crashed pstd leaves no core (so no PIN, no
// scalar), although the shell allowed cores. And even with
// --allow-core-dumps, when the same crash leaves a core, the core holds
// neither the PIN (given in the environment) nor, in any of the forms code
// keeps it, the scalar of the key pstd signs with: both live only in memory
// the kernel leaves out of dumps. The database password, which pgx keeps
// in ordinary memory, is in that core: the control that shows the search
// finds a secret that is there.
func TestCrashWritesNoCore(t *testing.T) {
	skipUnlessCoresInWorkingDir(t)
	for _, pinFrom := range []string{"environment", "file"} {
		t.Run("PIN from "+pinFrom, func(t *testing.T) {
			s, pin, password := secretStack(t, pinFrom == "file")
			scalar := importKnownKey(t, s)
			dir := t.TempDir()
			if cores, _, _ := crash(t, s, dir); len(cores) != 0 {
				t.Fatalf("a crashed pstd left a core: %v", cores)
			}

			cores, keyIDs, proofs := crash(t, s, t.TempDir(), "--allow-core-dumps")
			if len(cores) == 0 {
				t.Fatal("no core even with --allow-core-dumps; the test proves nothing here")
			}
			if !keyIDs[importedKeyID] {
				t.Fatalf("pstd issued with keys %v, not the imported key %d", keyIDs, importedKeyID)
			}
			defer func() {
				for _, c := range cores {
					os.Remove(c)
				}
			}()
			core, err := os.ReadFile(cores[0])
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("core with --allow-core-dumps: %d bytes", len(core))
			if !bytes.Contains(core, []byte(password)) {
				t.Error("control: the database password is not in the core; the search would not find a secret")
			}
			if i := bytes.Index(core, []byte(pin)); i >= 0 {
				t.Errorf("the core holds the PIN (at offset %d)", i)
			}
			// k itself, and what gives k away with a response's public c and
			// s: its proof nonce r = s + c·k, and c·k.
			secrets := map[string][]byte{"the signing key's scalar k": scalar}
			n := elliptic.P384().Params().N
			k := new(big.Int).SetBytes(scalar)
			for i, p := range proofs {
				ck := new(big.Int).Mul(new(big.Int).SetBytes(p.c), k)
				ck.Mod(ck, n)
				r := new(big.Int).Add(new(big.Int).SetBytes(p.s), ck)
				r.Mod(r, n)
				secrets[fmt.Sprintf("issuance %d's proof nonce r", i)] = r.FillBytes(make([]byte, 48))
				secrets[fmt.Sprintf("issuance %d's c·k", i)] = ck.FillBytes(make([]byte, 48))
			}
			for what, v := range secrets {
				for form, b := range scalarForms(v) {
					if i := bytes.Index(core, b); i >= 0 {
						t.Errorf("the core holds %s (%s, at offset %d)", what, form, i)
					}
				}
			}
		})
	}
}

// TestPstctlScrubsItsEnvironment: pstctl, given the PIN and the database
// password in its environment, re-executes itself without them and is not
// dumpable, as pstd is. Checked while it waits for a key blob on standard
// input: /proc/PID/environ holds neither secret, and /proc/PID/limits shows
// a core limit of 0.
func TestPstctlScrubsItsEnvironment(t *testing.T) {
	s, pin, password := secretStack(t, false)
	cmd := exec.Command(filepath.Join(binDir, "pstctl"), "keys", "import", "--file", "-")
	cmd.Env = s.env
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	pid := cmd.Process.Pid
	var environ []byte
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The re-executed image carries the memfd's number, never the secrets.
		environ, err = os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err == nil && bytes.Contains(environ, []byte("PSTD_SECRETS_FD=")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pstctl did not re-execute itself (environ read: %v)", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for what, secret := range map[string]string{"PIN": pin, "database password": password} {
		if bytes.Contains(environ, []byte(secret)) {
			t.Errorf("the %s is in pstctl's /proc/PID/environ", what)
		}
	}
	// Protect runs right after the re-execution; give it a moment.
	for {
		limits, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
		if err != nil {
			t.Fatal(err)
		}
		var core string
		for _, line := range strings.Split(string(limits), "\n") {
			if strings.HasPrefix(line, "Max core file size") {
				core = line
			}
		}
		if f := strings.Fields(strings.TrimPrefix(core, "Max core file size")); len(f) > 0 && f[0] == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pstctl's core limit is not 0: %q", core)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
