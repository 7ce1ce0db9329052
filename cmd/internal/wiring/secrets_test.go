package wiring

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The re-executed image trusts only a memfd of pstd's own name: a
// PSTD_SECRETS_FD pointing anywhere else is refused, not read.
func TestRestoreSecretsTrustsOnlyItsMemfd(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "x"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("PSTD_PKCS11_PIN=1234\x00"); err != nil {
		t.Fatal(err)
	}
	if err := restoreSecrets(strconv.Itoa(int(f.Fd()))); err == nil || !strings.Contains(err.Error(), "not pstd's secrets memfd") {
		t.Fatalf("a regular file was trusted: %v", err)
	}
	for _, bad := range []string{"", "x", "1", "-5"} {
		if err := restoreSecrets(bad); err == nil {
			t.Errorf("PSTD_SECRETS_FD=%q accepted", bad)
		}
	}
}

// A memfd of the right name is read into Go's environment, only with
// secret variables, and closed.
func TestRestoreSecretsFromMemfd(t *testing.T) {
	t.Setenv("PSTD_PKCS11_PIN", "")
	t.Setenv("PGPASSWORD", "")
	write := func(content string) int {
		fd, err := unix.MemfdCreate(memfdName, 0)
		if err != nil {
			t.Skipf("memfd: %v", err)
		}
		if _, err := unix.Write(fd, []byte(content)); err != nil {
			t.Fatal(err)
		}
		return fd
	}
	fd := write("PSTD_PKCS11_PIN=12=34\x00PGPASSWORD=pw\x00")
	if err := restoreSecrets(strconv.Itoa(fd)); err != nil {
		t.Fatal(err)
	}
	// The PIN is held in protected memory; Go's environment (and libc's)
	// gets only a placeholder for it.
	if got := os.Getenv("PSTD_PKCS11_PIN"); got != pinPlaceholder || resolvePIN(got) != "12=34" {
		t.Fatalf("restored PIN: environment %q, resolved %q", got, resolvePIN(got))
	}
	if resolvePIN("5678") != "5678" {
		t.Error("a PIN that is not the placeholder was changed")
	}
	if os.Getenv("PGPASSWORD") != "pw" {
		t.Fatalf("restored PGPASSWORD %q", os.Getenv("PGPASSWORD"))
	}
	// An empty PIN stays empty (a missing setting), never the placeholder:
	// a placeholder sent to C_Login would count down the token's retries.
	heldPIN = ""
	fd = write("PSTD_PKCS11_PIN=\x00")
	if err := restoreSecrets(strconv.Itoa(fd)); err != nil {
		t.Fatal(err)
	}
	if got := os.Getenv("PSTD_PKCS11_PIN"); got != "" || resolvePIN(pinPlaceholder) != "" {
		t.Fatalf("an empty PIN was restored as %q, resolving to %q", got, resolvePIN(got))
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
		t.Error("the memfd was left open")
	}
	fd = write("PATH=/evil\x00")
	if err := restoreSecrets(strconv.Itoa(fd)); err == nil {
		t.Error("a non-secret variable was taken from the memfd")
	}
}

// Without secret variables, scrubEnvironment does nothing (it returns).
func TestScrubEnvironmentWithoutSecrets(t *testing.T) {
	for _, v := range SecretVariables {
		if val, ok := os.LookupEnv(v); ok {
			t.Setenv(v, val)
			os.Unsetenv(v)
		}
	}
	if err := scrubEnvironment(); err != nil {
		t.Fatal(err)
	}
}

func TestAdmissionAndConnSettings(t *testing.T) {
	base := func() Settings {
		return Settings{DatabaseURL: "postgres://x@h/d", PKCS11URI: "pkcs11:token=t", IssuerOrigin: "https://i.example",
			BatchSize: 10, RecordLifetime: 1, RateWindow: 1, RequestTimeout: 1, ShutdownTimeout: 1, LogLevel: "info",
			MaxConnsPerAddr: 256, SigningPeriod: 60 * 24 * 3600e9, PublishLead: 7 * 24 * 3600e9, RedeemGrace: 60 * 24 * 3600e9}
	}
	s := base()
	if err := s.ValidateServe(); err != nil {
		t.Fatalf("base settings: %v", err)
	}
	for name, mod := range map[string]func(*Settings){
		"max-conns < 0":  func(s *Settings) { s.MaxConns = -1 },
		"per-addr 0":     func(s *Settings) { s.MaxConnsPerAddr = 0 },
		"per-addr -2":    func(s *Settings) { s.MaxConnsPerAddr = -2 },
		"issuance < 0":   func(s *Settings) { s.MaxInflightIssue = -1 },
		"redemption < 0": func(s *Settings) { s.MaxInflightRedeem = -1 },
	} {
		s := base()
		mod(&s)
		if err := s.ValidateServe(); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	s = base()
	s.MaxConnsPerAddr = -1
	if err := s.ValidateServe(); err != nil {
		t.Errorf("per-addr -1 (no cap) refused: %v", err)
	}
	issue, redeem := s.AdmissionLimits()
	if issue < 1 || redeem < 1 || redeem > hsmSessions-2 {
		t.Errorf("derived limits %d, %d", issue, redeem)
	}
	s.MaxInflightIssue, s.MaxInflightRedeem = 7, 9
	if i, r := s.AdmissionLimits(); i != 7 || r != 9 {
		t.Errorf("explicit limits %d, %d", i, r)
	}
}
