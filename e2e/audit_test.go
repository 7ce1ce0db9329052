package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
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
)

// pgTool finds a PostgreSQL client program (pg_dump, pg_restore).
func pgTool(t *testing.T, name string) string {
	t.Helper()
	if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + name); len(m) > 0 {
		return m[len(m)-1]
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found", name)
	}
	return p
}

func run(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return out
}

// onDatabase is a copy of s whose pstd and pstctl use another database.
func (s *stack) onDatabase(url string) *stack {
	r := &stack{t: s.t, dbURL: url, origin: s.origin, listen: s.listen}
	for _, kv := range s.env {
		if !strings.HasPrefix(kv, "PSTD_DATABASE_URL=") {
			r.env = append(r.env, kv)
		}
	}
	r.env = append(r.env, "PSTD_DATABASE_URL="+url)
	return r
}

// TestRestoreFence: a backup restored after a token was spent would let the
// token redeem again. The HSM's audit anchor says the database is behind, so
// the replica on it refuses (503 database-behind-hsm) until an operator
// fences: then the keys live at the anchor are retired, the spent token gets
// no record, and fresh tokens issue and redeem on the restored database.
func TestRestoreFence(t *testing.T) {
	dbURL, tok := testenv.NewDatabase(t), testenv.NewToken(t)
	s := newStackOn(t, dbURL, tok)
	toks := s.issueTokens(3)
	if o := s.redeemToken(toks[0]); o.status != http.StatusOK {
		t.Fatalf("redeeming token A: %+v", o)
	}
	s.stop() // a clean stop checkpoints
	dump := filepath.Join(t.TempDir(), "pstd.dump")
	run(t, pgTool(t, "pg_dump"), "-Fc", "-f", dump, "-d", dbURL)

	s.start()
	if o := s.redeemToken(toks[1]); o.status != http.StatusOK || o.token == "" {
		t.Fatalf("redeeming token B after the dump: %+v", o)
	}
	s.stop()

	restoredURL := testenv.NewDatabase(t)
	run(t, pgTool(t, "pg_restore"), "--no-owner", "-d", restoredURL, dump)
	r := s.onDatabase(restoredURL)
	r.launch()
	deadline := time.Now().Add(30 * time.Second)
	for {
		o := r.readyz()
		if o.status == http.StatusServiceUnavailable && o.problem == httpapi.ProblemTypePrefix+"database-behind-hsm" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("readyz on the restored database: %+v\n%s", o, r.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	o := r.redeemToken(toks[1])
	if o.status != http.StatusServiceUnavailable || o.problem != httpapi.ProblemTypePrefix+"database-behind-hsm" || o.token != "" {
		t.Fatalf("token B on the restored database: %+v", o)
	}
	if o := r.issueStatus(); o.status != http.StatusServiceUnavailable {
		t.Fatalf("issuance on the restored database: %+v", o)
	}
	if n := r.count("SELECT count(*) FROM redemptions"); n != 1 {
		t.Fatalf("%d redemptions on the restored database, want A's alone", n)
	}

	// The operator fences.
	cmd := exec.Command(filepath.Join(binDir, "pstctl"), "keys", "fence")
	for _, kv := range r.env {
		if !strings.HasPrefix(kv, "PSTD_REASON=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "--reason") {
		t.Fatalf("fence without a reason: %v %s", err, out)
	}
	out := r.pstctl("keys", "fence", "--reason", "restored the pre-incident backup")
	if !strings.Contains(out, "retired keys [1]") {
		t.Fatalf("fence: %s", out)
	}
	r.waitReady(30 * time.Second)
	for i, tk := range toks[1:] {
		if o := r.redeemToken(tk); o.status != http.StatusBadRequest || o.problem != httpapi.ProblemTypePrefix+"unknown-key" || o.token != "" {
			t.Fatalf("token %d of the fenced key: %+v", i+1, o)
		}
	}
	fresh := r.issueTokens(2)
	for _, tk := range fresh {
		if o := r.redeemToken(tk); o.status != http.StatusOK || tk.KeyID == 1 {
			t.Fatalf("fresh token of key %d: %+v", tk.KeyID, o)
		}
	}
	if n := r.count("SELECT count(*) FROM audit_log WHERE action = 'audit.fence'"); n != 1 {
		t.Fatalf("%d audit.fence events", n)
	}
	r.stop()
	if out := r.pstctl("audit", "verify"); !strings.Contains(out, `"ok": true`) || !strings.Contains(out, "the HSM's anchor") {
		t.Fatalf("audit verify after the fence: %s", out)
	}
}

// TestAuditEvidence: export a bundle and verify it with an empty
// environment (no database, HSM or settings); one edited action name fails
// it. A kept head is still extended by the log after more changes.
func TestAuditEvidence(t *testing.T) {
	s := newStackOn(t, testenv.NewDatabase(t), testenv.NewToken(t))
	toks := s.issueTokens(2)
	if o := s.redeemToken(toks[0]); o.status != http.StatusOK {
		t.Fatal(o)
	}
	s.stop()
	dir := t.TempDir()
	head := filepath.Join(dir, "head.json")
	if err := os.WriteFile(head, []byte(s.pstctl("audit", "head")), 0o644); err != nil {
		t.Fatal(err)
	}
	s.pstctl("keys", "rotate", "--force")
	bundle := filepath.Join(dir, "bundle.json")
	s.pstctl("audit", "export", "--out", bundle)

	verify := func(args ...string) (int, string) {
		cmd := exec.Command(filepath.Join(binDir, "pstctl"), append([]string{"audit", "verify"}, args...)...)
		cmd.Env = []string{} // nothing: no database, no HSM, no PSTD_*
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), out.String()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, out.String()
	}
	if code, out := verify("--bundle", bundle, "--since", head); code != 0 || !strings.Contains(out, `"ok": true`) ||
		!strings.Contains(out, "the bundle's anchor") || !strings.Contains(out, "the kept head") {
		t.Fatalf("verify --bundle: exit %d\n%s", code, out)
	}
	raw, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	edited := filepath.Join(dir, "edited.json")
	if !bytes.Contains(raw, []byte(`"action": "key.create"`)) {
		t.Fatalf("bundle lacks a readable key.create event:\n%.1000s", raw)
	}
	if err := os.WriteFile(edited, bytes.Replace(raw, []byte(`"action": "key.create"`), []byte(`"action": "key.crate"`), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out := verify("--bundle", edited); code != 1 || !strings.Contains(out, "does not verify") {
		t.Fatalf("an edited bundle: exit %d\n%s", code, out)
	}
	// Against the live database and the HSM's anchor, since the kept head.
	if out := s.pstctl("audit", "verify", "--since", head); !strings.Contains(out, `"ok": true`) || !strings.Contains(out, "the HSM's anchor") {
		t.Fatalf("audit verify --since: %s", out)
	}
}

// TestRotateRecordKeyTwice: `pstctl keys rotate-rr` on a live stack, twice.
// Each rotation retires the signing record key and makes the next in one
// transaction; records signed by every key still verify against the JWKS.
func TestRotateRecordKeyTwice(t *testing.T) {
	s := newStackOn(t, testenv.NewDatabase(t), testenv.NewToken(t))
	toks := s.issueTokens(3)
	var records []string
	for i, tk := range toks {
		if i > 0 {
			out := s.pstctl("keys", "rotate-rr")
			want := "rr-" + string(rune('1'+i))
			if !strings.Contains(out, want) {
				t.Fatalf("rotate-rr %d: %s", i, out)
			}
			// The replica loads the new key at its next refresh; the JWKS
			// and the signing key are swapped together.
			deadline := time.Now().Add(30 * time.Second)
			for !strings.Contains(string(getBody(t, "http://"+s.listen+"/.well-known/private-state-token/jwks.json")), want) {
				if time.Now().After(deadline) {
					t.Fatalf("the JWKS never listed %s", want)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		o := s.redeemToken(tk)
		if o.status != http.StatusOK {
			t.Fatalf("redemption %d: %+v", i, o)
		}
		if kid := recordKID(t, o.token); kid != "rr-"+string(rune('1'+i)) {
			t.Fatalf("redemption %d signed by %s", i, kid)
		}
		records = append(records, o.token)
	}
	s.verifyRecords(records)
	if n := s.count("SELECT count(*) FROM rr_keys WHERE retired_at IS NULL"); n != 1 {
		t.Fatalf("%d signing record keys", n)
	}
	if n := s.count("SELECT count(*) FROM rr_keys"); n != 3 {
		t.Fatalf("%d record keys, want 3", n)
	}
}

// recordKID reads the kid of a redemption record (a compact JWS).
func recordKID(t *testing.T, jws string) string {
	t.Helper()
	h, _, _ := strings.Cut(jws, ".")
	raw, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		t.Fatal(err)
	}
	var hdr struct{ Kid string }
	if err := json.Unmarshal(raw, &hdr); err != nil {
		t.Fatal(err)
	}
	return hdr.Kid
}
