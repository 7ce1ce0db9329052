package hsm

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigNeverPrintsPIN(t *testing.T) {
	const pin = "s3cr3t-PIN-4711"
	cfg := Config{ModulePath: "/m.so", TokenLabel: "t", PIN: pin}
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("cfg", "hsm", cfg)
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("cfg", "hsm", cfg)
	for _, s := range []string{
		fmt.Sprint(cfg), fmt.Sprintf("%v|%+v|%#v|%s", cfg, cfg, cfg, cfg), fmt.Sprintf("%v", &cfg), logged.String(),
	} {
		if strings.Contains(s, pin) {
			t.Fatalf("PIN printed: %s", s)
		}
	}
	u := URI{TokenLabel: "t", PINValue: pin}
	for _, s := range []string{u.String(), fmt.Sprintf("%v|%+v|%#v", u, u, u)} {
		if strings.Contains(s, pin) {
			t.Fatalf("PIN printed: %s", s)
		}
	}
}

func TestParseURI(t *testing.T) {
	good := []struct {
		in   string
		want URI
	}{
		{"pkcs11:token=pstd-dev?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pstd/pin",
			URI{TokenLabel: "pstd-dev", ModulePath: "/usr/lib/softhsm/libsofthsm2.so", PINSource: "/run/pstd/pin"}},
		{"pkcs11:token=pstd-dev?pin-source=/run/pstd/pin", URI{TokenLabel: "pstd-dev", PINSource: "/run/pstd/pin"}},
		{"pkcs11:token=pstd-dev?pin-source=file:///run/pstd/pin", URI{TokenLabel: "pstd-dev", PINSource: "/run/pstd/pin"}},
		{"pkcs11:token=pstd-dev?pin-source=file://localhost/run/pin", URI{TokenLabel: "pstd-dev", PINSource: "/run/pin"}},
		{"pkcs11:token=pstd-dev?pin-source=relative/pin", URI{TokenLabel: "pstd-dev", PINSource: "relative/pin"}},
		{"pkcs11:token=My%20Token%3b1?pin-value=12%2634", URI{TokenLabel: "My Token;1", PINValue: "12&34"}},
	}
	for _, tc := range good {
		got, err := ParseURI(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseURI(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	bad := []string{
		"", "token=x", "pkcs11:", "pkcs11:?module-path=/m.so", "pkcs11:serial=1234", "pkcs11:token=a;slot-id=0",
		"pkcs11:token=a;token=b", "pkcs11:token=a?module-name=softhsm2", "pkcs11:token=a?pin-source=https://example/pin",
		"pkcs11:token=a?pin-source=file://other.host/pin", "pkcs11:token=a?pin-value=1&pin-source=/p",
		"pkcs11:token=%zz", "pkcs11:token=a?foo=bar", "pkcs11:token", "pkcs11:token=a?pin-source=",
		"pkcs11:token=a?module-path=/a&module-path=/b",
	}
	for _, in := range bad {
		if _, err := ParseURI(in); err == nil {
			t.Errorf("ParseURI(%q) accepted", in)
		}
	}
	// Errors never echo the URI (it may hold a pin-value).
	_, err := ParseURI("pkcs11:token=a?pin-value=topsecret&bogus=1")
	if err == nil || strings.Contains(err.Error(), "topsecret") {
		t.Fatalf("error: %v", err)
	}
	// String round-trips.
	u := URI{TokenLabel: "My Token;1", ModulePath: "/usr/lib/x.so", PINSource: "/run/pin"}
	if back, err := ParseURI(u.String()); err != nil || back != u {
		t.Fatalf("round trip %q: %+v, %v", u.String(), back, err)
	}
}

func TestLoadPIN(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for body, want := range map[string]string{
		"1234\n": "1234", "1234": "1234", "1234\r\n": "1234", "12 34\n\n": "12 34\n", " 1234": " 1234",
	} {
		got, err := LoadPIN(write("pin", body), "env-pin")
		if err != nil || got != want {
			t.Errorf("LoadPIN(file %q) = %q, %v; want %q", body, got, err, want)
		}
	}
	if got, err := LoadPIN("", "env-pin"); err != nil || got != "env-pin" {
		t.Errorf("env: %q, %v", got, err)
	}
	if _, err := LoadPIN("", ""); !errors.Is(err, ErrNoPIN) {
		t.Errorf("nothing: %v", err)
	}
	if _, err := LoadPIN(write("empty", "\n"), ""); !errors.Is(err, ErrNoPIN) {
		t.Errorf("empty file: %v", err)
	}
	if _, err := LoadPIN(filepath.Join(dir, "missing"), "env-pin"); err == nil {
		t.Error("a missing PIN file fell back to the environment")
	}
	if _, err := LoadPIN(write("huge", strings.Repeat("9", maxPINFile+1)), ""); err == nil {
		t.Error("huge PIN file accepted")
	}

	pinFile := write("uri-pin", "from-file\n")
	u, err := ParseURI("pkcs11:token=t?pin-source=" + pinFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := u.Config("/default.so", "", "")
	if err != nil || cfg.PIN != "from-file" || cfg.ModulePath != "/default.so" || cfg.TokenLabel != "t" {
		t.Fatalf("URI.Config: %v, %v", cfg, err)
	}
	u, _ = ParseURI("pkcs11:token=t?module-path=/m.so")
	if cfg, err = u.Config("", "", "env"); err != nil || cfg.PIN != "env" || cfg.ModulePath != "/m.so" {
		t.Fatalf("URI.Config with env PIN: %v, %v", cfg, err)
	}
	if _, err := ConfigFromURI("pkcs11:token=t?pin-value=1"); !errors.Is(err, ErrNoModule) {
		t.Fatalf("no module: %v", err)
	}
}

// TestPINFileExposedRefused: a PIN file others may read, or another user
// owns, is refused with a message that says what to fix; 0600 and 0400
// files of pstd's own user are read.
func TestPINFileExposedRefused(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("1234\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620, 0o666} {
		p := write(fmt.Sprintf("pin-%o", mode), mode)
		_, err := LoadPIN(p, "")
		if !errors.Is(err, ErrPINFileExposed) || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %04o: %v", mode, err)
		}
		if err != nil && strings.Contains(err.Error(), "1234") {
			t.Errorf("error quotes the PIN: %v", err)
		}
	}
	for _, mode := range []os.FileMode{0o600, 0o400} {
		if pin, err := LoadPIN(write(fmt.Sprintf("ok-%o", mode), mode), ""); err != nil || pin != "1234" {
			t.Errorf("mode %04o: %q, %v", mode, pin, err)
		}
	}
	if os.Geteuid() == 0 {
		p := write("foreign", 0o600)
		if err := os.Chown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadPIN(p, ""); !errors.Is(err, ErrPINFileExposed) || !strings.Contains(err.Error(), "owned by uid 65534") {
			t.Errorf("foreign-owned PIN file: %v", err)
		}
	}
}
