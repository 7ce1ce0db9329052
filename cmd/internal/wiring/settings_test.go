package wiring

import (
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pstd/pstd/httpapi"
)

// The start-up log line must not carry a database password, wherever the
// connection string puts it.
func TestRedactURLHidesPasswords(t *testing.T) {
	for _, raw := range []string{
		"postgres://pstd:s3cret-pw@db.example:5433/pstd?sslmode=disable",
		"postgres://pstd@db.example/pstd?password=s3cret-pw",
		"host=db.example user=pstd password=s3cret-pw dbname=pstd",
		"postgres://pstd@db.example/pstd?sslpassword=s3cret-pw&sslmode=disable",
		"postgres://pstd:s3cret-pw@[::1/pstd", // unparsable
	} {
		got := redactURL(raw)
		if strings.Contains(got, "s3cret-pw") {
			t.Errorf("redactURL(%q) = %q shows the password", raw, got)
		}
	}
	if got := redactURL("postgres://pstd:pw@db.example:5433/pstd"); got != "postgres://pstd@db.example:5433/pstd" {
		t.Errorf("redactURL = %q", got)
	}
}

// After the HSM configuration is built, neither the settings nor the
// environment keep the PIN.
func TestHSMConfigForgetsPIN(t *testing.T) {
	t.Setenv("PSTD_PKCS11_PIN", "pin-4711")
	s := Settings{PKCS11Module: "/m.so", PKCS11Token: "t", PKCS11PIN: "pin-4711"}
	var logged strings.Builder
	cfg, err := s.HSMConfig(slog.New(slog.NewTextHandler(&logged, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.PIN != "pin-4711" {
		t.Fatalf("config PIN %q", cfg.PIN)
	}
	if s.PKCS11PIN != "" || os.Getenv("PSTD_PKCS11_PIN") != "" {
		t.Fatal("the PIN is still in the settings or the environment")
	}
	if strings.Contains(logged.String(), "pin-4711") || strings.Contains(logged.String(), "command-line") {
		t.Fatalf("log: %s", logged.String())
	}
	// From a flag (no environment variable): a warning, without the PIN.
	s = Settings{PKCS11Module: "/m.so", PKCS11Token: "t", PKCS11PIN: "pin-4711"}
	if _, err := s.HSMConfig(slog.New(slog.NewTextHandler(&logged, nil))); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logged.String(), "command-line flag") || strings.Contains(logged.String(), "pin-4711") {
		t.Fatalf("log: %s", logged.String())
	}
}

func TestValidateServeRefusesBadValues(t *testing.T) {
	base := func() Settings {
		var s Settings
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		s.Register(fs, All)
		_ = fs.Parse(nil)
		s.DatabaseURL, s.PKCS11Module, s.PKCS11Token, s.PKCS11PINFile = "postgres://x@h/db", "/m.so", "t", "/pin"
		return s
	}
	ok := base()
	if err := ok.ValidateServe(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for name, mod := range map[string]func(*Settings){
		"log level":       func(s *Settings) { s.LogLevel = "verbose" },
		"record lifetime": func(s *Settings) { s.RecordLifetime = -time.Hour },
		"request timeout": func(s *Settings) { s.RequestTimeout = 0 },
		"rate window":     func(s *Settings) { s.RateWindow = -1 },
		"allowed origins": func(s *Settings) { s.AllowedOrigins = "https://a.example,not an origin" },
		"batch size":      func(s *Settings) { s.BatchSize = 101 },
		"trusted proxies": func(s *Settings) { s.TrustedProxies = "10.0.0.0/8, not-a-cidr" },
		"demo rp listen":  func(s *Settings) { s.Demo, s.DemoRPListen = true, "8481" },
		"demo rp same":    func(s *Settings) { s.Demo, s.DemoRPListen = true, s.Listen },
	} {
		s := base()
		mod(&s)
		if err := s.ValidateServe(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestWarnings(t *testing.T) {
	var s Settings
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	s.Register(fs, All)
	_ = fs.Parse(nil)
	s.Listen = "0.0.0.0:8480"
	w := strings.Join(s.Warnings(fs, []string{"PSTD_PKCS11_TOKEN=x", "PSTD_LISTEN=0.0.0.0:8480", "HOME=/root"}), "\n")
	if !strings.Contains(w, "PSTD_PKCS11_TOKEN is not a pstd setting") || strings.Contains(w, "PSTD_LISTEN is not") {
		t.Errorf("unknown-variable warnings: %s", w)
	}
	if !strings.Contains(w, "plain http") {
		t.Errorf("no warning for an http origin on 0.0.0.0: %s", w)
	}
	if strings.Contains(w, "PSTD_RATE_LIMIT") {
		t.Errorf("a warning about the rate limit at its default: %s", w)
	}
	// The per-address limit turned off: warned about beyond loopback only.
	s.RateLimit = 0
	for listen, want := range map[string]bool{"0.0.0.0:8480": true, ":8480": true, "[2001:db8::1]:443": true, "127.0.0.1:8480": false, "[::1]:8480": false, "localhost:8480": false} {
		s.Listen = listen
		got := strings.Contains(strings.Join(s.Warnings(fs, nil), "\n"), "PSTD_RATE_LIMIT=0")
		if got != want {
			t.Errorf("PSTD_RATE_LIMIT=0 on %s: warned %t, want %t", listen, got, want)
		}
	}
}

// The per-address issuance limit is on unless turned off: its default is
// httpapi.DefaultRateLimit, not zero, and 0 still means off and is valid.
func TestRateLimitOnByDefault(t *testing.T) {
	if httpapi.DefaultRateLimit <= 0 {
		t.Fatalf("httpapi.DefaultRateLimit = %d: the limit would be off by default", httpapi.DefaultRateLimit)
	}
	parse := func(args ...string) Settings {
		var s Settings
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		s.Register(fs, All)
		if err := fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		s.DatabaseURL, s.PKCS11Module, s.PKCS11Token, s.PKCS11PINFile = "postgres://x@h/db", "/m.so", "t", "/pin"
		return s
	}
	if s := parse(); s.RateLimit != httpapi.DefaultRateLimit || s.RateWindow != httpapi.DefaultRateWindow {
		t.Errorf("defaults: rate limit %d per %v, want %d per %v", s.RateLimit, s.RateWindow, httpapi.DefaultRateLimit, httpapi.DefaultRateWindow)
	}
	if s := parse("--rate-limit=0"); s.RateLimit != 0 || s.ValidateServe() != nil {
		t.Errorf("--rate-limit=0: %d, %v; want 0 (off) and valid", s.RateLimit, s.ValidateServe())
	}
	if s := parse("--rate-limit=-1"); s.ValidateServe() == nil {
		t.Error("--rate-limit=-1 accepted")
	}
}

// The README's configuration table names every setting, and only those.
func TestREADMEListsEverySetting(t *testing.T) {
	b, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]bool{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(PSTD_[A-Z0-9_]+)`(?: / `(PSTD_[A-Z0-9_]+)`)?").FindAllStringSubmatch(string(b), -1) {
		documented[m[1]] = true
		if m[2] != "" {
			documented[m[2]] = true
		}
	}
	var s Settings
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	s.Register(fs, All)
	fs.VisitAll(func(f *flag.Flag) {
		name := EnvName(f.Name)
		if !documented[name] {
			t.Errorf("README's configuration table lacks %s", name)
		}
		delete(documented, name)
	})
	for name := range documented {
		t.Errorf("README documents %s, which is no setting", name)
	}
}

// The README's default column says what the flags' defaults are: the
// first backquoted value of each cell (of each half, for a row of two
// settings) is the flag's default (durations compared as durations), and
// "—" is an empty default. PSTD_ACTOR's default is chosen at run time.
func TestREADMEDefaultsMatchFlags(t *testing.T) {
	b, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var s Settings
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	s.Register(fs, All)
	defaults := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) { defaults[EnvName(f.Name)] = f.DefValue })
	runtime := map[string]bool{"PSTD_ACTOR": true}
	rows := regexp.MustCompile("(?m)^\\| `(PSTD_[A-Z0-9_]+)`(?: / `(PSTD_[A-Z0-9_]+)`)? \\| ([^|]*) \\|").FindAllStringSubmatch(string(b), -1)
	checked := 0
	for _, m := range rows {
		names, cell := []string{m[1]}, strings.TrimSpace(m[3])
		cells := []string{cell}
		if m[2] != "" {
			names = append(names, m[2])
			if cells = strings.Split(cell, " / "); len(cells) != 2 {
				cells = []string{cell, cell} // one value for both
			}
		}
		for i, name := range names {
			want, ok := defaults[name]
			if !ok || runtime[name] {
				continue // TestREADMEListsEverySetting reports unknown names
			}
			got := strings.TrimSpace(cells[i])
			if got == "—" {
				got = ""
			} else if v, _, _ := strings.Cut(got, " "); len(v) > 2 && v[0] == '`' && v[len(v)-1] == '`' {
				got = v[1 : len(v)-1]
			}
			if got != want {
				gd, err1 := time.ParseDuration(got)
				wd, err2 := time.ParseDuration(want)
				if err1 != nil || err2 != nil || gd != wd {
					t.Errorf("README gives %s the default %q; the flag's is %q", name, strings.TrimSpace(cells[i]), want)
				}
			}
			checked++
		}
	}
	if checked < 30 {
		t.Errorf("checked only %d defaults: is the table's format still | `NAME` | `default` | …?", checked)
	}
}

// A command takes only the settings of the groups it registers: pstctl's
// key listing knows no PKCS#11 or HTTP setting.
func TestGroupsRegisterOnlyTheirSettings(t *testing.T) {
	var s Settings
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	s.Register(fs, Database)
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	if strings.Join(names, ",") != "database-url,database-url-file" {
		t.Fatalf("Database group registers %v", names)
	}
	if err := fs.Parse([]string{"--pkcs11-module", "/m.so"}); err == nil {
		t.Fatal("a database-only command accepted --pkcs11-module")
	}
}

// PSTD_DATABASE_URL_FILE: the URL is read from the file, and exactly one of
// the two settings is required.
func TestDatabaseURLFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "url")
	if err := os.WriteFile(path, []byte("postgres://u:secret@db.example:5432/pstd\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := Settings{DatabaseURLFile: path}
	u, err := s.databaseURL()
	if err != nil || u != "postgres://u:secret@db.example:5432/pstd" {
		t.Fatalf("databaseURL() = %q, %v", u, err)
	}
	s.DatabaseURL = "postgres://other"
	if _, err := s.databaseURL(); err == nil {
		t.Fatal("both settings accepted")
	}
	if _, err := (&Settings{}).databaseURL(); err == nil {
		t.Fatal("neither setting accepted")
	}
	// The logged settings never show the file's content.
	s = Settings{}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	s.Register(fs, Database)
	if err := fs.Parse([]string{"--database-url-file", path}); err != nil {
		t.Fatal(err)
	}
	if v := s.LogValue().String(); strings.Contains(v, "secret") || !strings.Contains(v, path) {
		t.Fatalf("logged settings: %s", v)
	}
}
