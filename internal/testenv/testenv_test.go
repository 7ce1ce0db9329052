package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Two tokens of one process share SOFTHSM2_CONF but not their PINs, and
// both are visible to softhsm2-util through that configuration.
func TestNewTokenSharesConfNotPINs(t *testing.T) {
	a, b := NewToken(t), NewToken(t)
	if a.Conf != b.Conf || os.Getenv("SOFTHSM2_CONF") != a.Conf {
		t.Fatalf("tokens of one process must share SOFTHSM2_CONF: %q, %q, env %q", a.Conf, b.Conf, os.Getenv("SOFTHSM2_CONF"))
	}
	if a.Label == b.Label || a.PIN == b.PIN || a.PIN == a.SOPIN {
		t.Fatalf("labels and PINs must differ: %q/%q, PINs equal %v, PIN==SO-PIN %v", a.Label, b.Label, a.PIN == b.PIN, a.PIN == a.SOPIN)
	}
	out, err := exec.Command("softhsm2-util", "--show-slots").CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --show-slots: %v: %s", err, out)
	}
	for _, l := range []string{a.Label, b.Label} {
		if !strings.Contains(string(out), l) {
			t.Errorf("token %s not among the slots:\n%s", l, out)
		}
	}
}

// softhsm/init-token.sh is idempotent, as `make setup` needs: a second run
// for an existing label leaves the token and its PIN alone, and a run for a
// label whose PIN file went missing refuses rather than inventing a PIN.
func TestInitTokenScriptIdempotent(t *testing.T) {
	tok := NewToken(t)
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "softhsm", "init-token.sh")
	dir := filepath.Dir(tok.Conf)
	pins := filepath.Join(dir, "pins", tok.Label)
	if out, err := exec.Command(script, dir, tok.Label, pins).CombinedOutput(); err != nil {
		t.Fatalf("second run: %v: %s", err, out)
	}
	if got := readPIN(t, filepath.Join(pins, "pin")); got != tok.PIN {
		t.Fatal("a second run changed the PIN of an existing token")
	}
	if err := os.Remove(filepath.Join(pins, "pin")); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(script, dir, tok.Label, pins).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "exists but") {
		t.Fatalf("run with the PIN file gone: err %v, output %s", err, out)
	}
	if strings.Contains(string(out), tok.SOPIN) {
		t.Fatal("init-token.sh printed the SO PIN")
	}
}
