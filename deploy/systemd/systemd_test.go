// Package systemd_test checks the single-host units in this directory with
// systemd's own tools: `systemd-analyze verify` must be silent and
// `systemd-analyze security --offline=true` must rate each unit's exposure
// below 2.0.
package systemd_test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// units are the unit files shipped in this directory.
var units = []string{"pstd.service", "pstd-migrate.service"}

// maxExposure is the bar for `systemd-analyze security`.
const maxExposure = 2.0

// shippedBinary is where the units expect pstd.
const shippedBinary = "/usr/bin/pstd"

func required() bool {
	return os.Getenv("PSTD_TEST_REQUIRE") == "1" || os.Getenv("CI") == "true"
}

func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if required() {
			t.Fatal("systemd-analyze not installed (deploy/dev/deps.sh installs systemd)")
		}
		t.Skip("systemd-analyze not installed; run make test")
	}
	return p
}

func readUnit(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// directives returns the values of key in section of a unit file, in order.
func directives(unit, section, key string) []string {
	var out []string
	cur := ""
	sc := bufio.NewScanner(strings.NewReader(unit))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			cur = line[1 : len(line)-1]
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if ok && cur == section && strings.TrimSpace(k) == key {
			out = append(out, strings.TrimSpace(v))
		}
	}
	return out
}

// buildPstd builds cmd/pstd, so verify checks ExecStart= against a real
// executable rather than a stand-in.
func buildPstd(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/pstd/pstd/cmd/pstd")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build pstd: %v\n%s", err, out)
	}
	return filepath.Join(dir, "pstd")
}

// TestVerify runs `systemd-analyze verify` on both units together (pstd.service
// requires pstd-migrate.service). systemd-analyze reports some problems —
// an unknown key, a key in the wrong section, an unparsable value — only as a
// warning with exit status 0, so any output at all fails the test. The
// copies differ from the shipped units only in ExecStart='s binary path,
// which verify requires to exist.
func TestVerify(t *testing.T) {
	sa := systemdAnalyze(t)
	bin := buildPstd(t)
	dir := t.TempDir()
	var paths []string
	for _, u := range units {
		body := readUnit(t, u)
		starts := directives(body, "Service", "ExecStart")
		if len(starts) != 1 || !strings.HasPrefix(starts[0], shippedBinary+" ") {
			t.Fatalf("%s: want one ExecStart=%s ..., have %q", u, shippedBinary, starts)
		}
		body = strings.Replace(body, "ExecStart="+shippedBinary+" ", "ExecStart="+bin+" ", 1)
		p := filepath.Join(dir, u)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	cmd := exec.Command(sa, append([]string{"verify", "--man=no", "--generators=no"}, paths...)...)
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

var exposureRE = regexp.MustCompile(`(?m)^→ Overall exposure level for (\S+): ([0-9]+\.[0-9]+) `)

// TestSecurityExposure parses the overall exposure level that
// `systemd-analyze security --offline=true` gives each unit.
func TestSecurityExposure(t *testing.T) {
	sa := systemdAnalyze(t)
	for _, u := range units {
		abs, err := filepath.Abs(u)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(sa, "security", "--offline=true", "--no-pager", abs).CombinedOutput()
		if err != nil {
			t.Fatalf("systemd-analyze security %s: %v\n%s", u, err, out)
		}
		m := exposureRE.FindSubmatch(out)
		if m == nil || string(m[1]) != u {
			t.Fatalf("%s: no overall exposure level in:\n%s", u, out)
		}
		level, err := strconv.ParseFloat(string(m[2]), 64)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: overall exposure level %.1f", u, level)
		if level >= maxExposure {
			t.Errorf("%s: exposure %.1f, want below %.1f:\n%s", u, level, maxExposure, out)
		}
	}
}

// TestSecretsAreCredentials checks that secrets reach pstd only as systemd
// credentials: never inline in Environment=, and that every *_FILE setting
// points into the credentials directory at a credential the unit loads.
func TestSecretsAreCredentials(t *testing.T) {
	secretVars := []string{"PSTD_PKCS11_PIN", "PSTD_DATABASE_URL", "PSTD_PKCS11_URI"}
	wantFiles := map[string]map[string]string{
		"pstd.service":         {"PSTD_PKCS11_PIN_FILE": "pkcs11-pin", "PSTD_DATABASE_URL_FILE": "database-url"},
		"pstd-migrate.service": {"PSTD_DATABASE_URL_FILE": "database-url"},
	}
	for _, u := range units {
		body := readUnit(t, u)
		if len(directives(body, "Service", "EnvironmentFile")) != 1 {
			t.Errorf("%s: want exactly one EnvironmentFile=", u)
		}
		env := map[string]string{}
		for _, e := range directives(body, "Service", "Environment") {
			k, v, _ := strings.Cut(e, "=")
			env[k] = v
			for _, s := range secretVars {
				if k == s {
					t.Errorf("%s: secret %s set inline in Environment=", u, s)
				}
			}
		}
		creds := map[string]bool{}
		for _, c := range directives(body, "Service", "LoadCredential") {
			id, src, ok := strings.Cut(c, ":")
			if !ok || !strings.HasPrefix(src, "/etc/pstd/credentials/") {
				t.Errorf("%s: LoadCredential=%s does not load from /etc/pstd/credentials/", u, c)
			}
			creds[id] = true
		}
		for k, id := range wantFiles[u] {
			if env[k] != "%d/"+id {
				t.Errorf("%s: %s=%q, want %%d/%s", u, k, env[k], id)
			}
			if !creds[id] {
				t.Errorf("%s: %s names credential %q that no LoadCredential= loads", u, k, id)
			}
		}
		if users := directives(body, "Service", "User"); len(users) != 1 || users[0] == "root" || users[0] == "0" {
			t.Errorf("%s: User=%q, want one non-root user", u, users)
		}
	}
	// The example settings file must not invite secrets into it.
	ex := readUnit(t, "pstd.env.example")
	for _, s := range secretVars {
		if regexp.MustCompile(`(?m)^\s*#?\s*` + s + `=`).MatchString(ex) {
			t.Errorf("pstd.env.example sets the secret %s", s)
		}
	}
}

// pendingSettings are settings the deployment files use that pstd is
// gaining (issue 14) and README.md's configuration table does not list
// yet. Once the table lists them, this set can go.
var pendingSettings = map[string]bool{
	"PSTD_ADMIN_LISTEN": true, "PSTD_TLS_CERT": true, "PSTD_TLS_KEY": true,
	"PSTD_SHUTDOWN_DELAY": true, "PSTD_DATABASE_URL_FILE": true,
}

// knownSettings returns the variables README.md's configuration table names.
func knownSettings(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	name := regexp.MustCompile("`((?:PSTD|SOFTHSM2)_[A-Z0-9_]+)`")
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "| `PSTD_") || strings.HasPrefix(line, "| `SOFTHSM2_") {
			cells := strings.SplitN(line, "|", 3)
			for _, m := range name.FindAllStringSubmatch(cells[1], -1) {
				known[m[1]] = true
			}
		}
	}
	if len(known) < 10 {
		t.Fatalf("found only %d settings in README.md's configuration table", len(known))
	}
	return known
}

// TestSettingsAreKnown catches a misspelt setting in the units or the
// example settings file, which pstd would only warn about.
func TestSettingsAreKnown(t *testing.T) {
	known := knownSettings(t)
	use := regexp.MustCompile(`\b((?:PSTD|SOFTHSM2)_[A-Z0-9_]+)=`)
	for _, f := range append(slices.Clone(units), "pstd.env.example") {
		for _, m := range use.FindAllStringSubmatch(readUnit(t, f), -1) {
			if !known[m[1]] && !pendingSettings[m[1]] {
				t.Errorf("%s sets %s, which is no setting in README.md's configuration table", f, m[1])
			}
		}
	}
}
