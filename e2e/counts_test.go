package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pstd/pstd/httpapi"
	"github.com/pstd/pstd/internal/testenv"
	"github.com/pstd/pstd/signer/voprf"
)

// summaryJSON is what the test reads of `pstctl audit summary --format json`.
type summaryJSON struct {
	Keys []struct {
		KeyID               uint32           `json:"key_id"`
		State               string           `json:"state"`
		NotBefore           string           `json:"not_before"`
		Expiry              string           `json:"expiry"`
		TokensIssued        int64            `json:"tokens_issued"`
		Redemptions         int64            `json:"redemptions"`
		Refusals            map[string]int64 `json:"refusals"`
		RedemptionsByOrigin []struct {
			RedeemingOrigin string `json:"redeeming_origin"`
			Redemptions     int64  `json:"redemptions"`
		} `json:"redemptions_by_origin"`
	} `json:"keys"`
}

func (s summaryJSON) totals() (issued, redeemed, replays int64, byOrigin map[string]int64) {
	byOrigin = map[string]int64{}
	for _, k := range s.Keys {
		issued += k.TokensIssued
		redeemed += k.Redemptions
		replays += k.Refusals["replay"]
		for _, o := range k.RedemptionsByOrigin {
			byOrigin[o.RedeemingOrigin] += o.Redemptions
		}
	}
	return
}

// pstctlAs runs pstctl with the stack's settings but the database URL of
// role (a login member of it), and returns stdout.
func (s *stack) pstctlAs(role string, args ...string) string {
	s.t.Helper()
	return s.pstctlEnv([]string{"PSTD_DATABASE_URL=" + testenv.RoleURL(s.t, s.dbURL, role)}, args...)
}

// pstctlEnv runs pstctl with the stack's settings plus env, and returns stdout.
func (s *stack) pstctlEnv(env []string, args ...string) string {
	s.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "pstctl"), args...)
	cmd.Env = append(append([]string{}, s.env...), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		s.t.Fatalf("pstctl %s (%v): %v\n%s", strings.Join(args, " "), env, err, errb.String())
	}
	return out.String()
}

func (s *stack) summary() summaryJSON {
	s.t.Helper()
	var sum summaryJSON
	out := s.pstctlAs("pstd_auditor", "audit", "summary", "--format", "json")
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		s.t.Fatalf("summary is not one JSON document: %v\n%s", err, out)
	}
	return sum
}

// issueCapture makes one issuance request for n tokens and returns the
// tokens with the request and response bytes, as a client sees them.
func (s *stack) issueCapture(n int) (toks []voprf.Token, request, response []byte) {
	s.t.Helper()
	_, keys, err := voprf.ParseCommitment(getBody(s.t, "http://"+s.listen+"/.well-known/private-state-token/key-commitment"))
	if err != nil {
		s.t.Fatal(err)
	}
	ids := voprf.SortedKeyIDs(keys)
	client := voprf.NewClient(keys[ids[len(ids)-1]])
	p, err := client.Blind(n, rand.Reader)
	if err != nil {
		s.t.Fatal(err)
	}
	request = p.Request()
	o := s.pst(httpapi.PathIssuance, base64.StdEncoding.EncodeToString(request))
	if o.status != http.StatusOK {
		s.t.Fatalf("issuance: %+v", o)
	}
	if response, err = base64.StdEncoding.DecodeString(o.token); err != nil {
		s.t.Fatal(err)
	}
	if toks, err = client.Finish(p, response); err != nil {
		s.t.Fatal(err)
	}
	return toks, request, response
}

// After two issuances of 10 tokens, 3 redemptions, one replay and a clean
// stop, the auditor's summary has grown by exactly 20 tokens issued, 3
// redemptions and 1 replay refusal; the server ran as pstd_service.
func TestAuditSummaryCountsAfterCleanStop(t *testing.T) {
	s := newStackOn(t, testenv.NewDatabase(t), testenv.NewToken(t))
	before := s.summary()
	bIssued, bRedeemed, bReplays, bOrigins := before.totals()

	var toks []voprf.Token
	for range 2 {
		got, _, _ := s.issueCapture(10)
		toks = append(toks, got...)
	}
	for i := range 3 {
		if o := s.redeemToken(toks[i]); o.status != http.StatusOK {
			t.Fatalf("redemption %d: %+v", i, o)
		}
	}
	if o := s.redeemToken(toks[0]); o.status == http.StatusOK {
		t.Fatal("a replayed token redeemed")
	}
	s.stop()

	after := s.summary()
	aIssued, aRedeemed, aReplays, aOrigins := after.totals()
	if aIssued-bIssued != 20 {
		t.Errorf("tokens_issued grew by %d, want 20", aIssued-bIssued)
	}
	if aRedeemed-bRedeemed != 3 {
		t.Errorf("redemptions grew by %d, want 3", aRedeemed-bRedeemed)
	}
	if aOrigins["https://rp.example"]-bOrigins["https://rp.example"] != 3 {
		t.Errorf("redemptions from https://rp.example grew by %d, want 3", aOrigins["https://rp.example"]-bOrigins["https://rp.example"])
	}
	if aReplays-bReplays != 1 {
		t.Errorf("replay refusals grew by %d, want 1", aReplays-bReplays)
	}
	for _, k := range after.Keys {
		if k.State == "" || k.NotBefore == "" || k.Expiry == "" {
			t.Errorf("key %d lacks its state or lifecycle times: %+v", k.KeyID, k)
		}
	}

	// The replica's start and stop are on the log, with version and
	// settings digest; the counts are events the chain covers.
	var starts, stops int
	for _, line := range strings.Split(strings.TrimSpace(s.pstctlAs("pstd_auditor", "audit", "query", "--format", "json")), "\n") {
		var e struct {
			Action  string         `json:"action"`
			Details map[string]any `json:"details"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("audit query line %q: %v", line, err)
		}
		switch e.Action {
		case "replica.start", "replica.stop":
			if d, _ := e.Details["settings_digest"].(string); len(d) != 64 || e.Details["version"] == nil {
				t.Errorf("%s without version or settings digest: %v", e.Action, e.Details)
			}
			if e.Action == "replica.start" {
				starts++
			} else {
				stops++
			}
		}
	}
	if starts != 1 || stops != 1 {
		t.Errorf("%d replica.start and %d replica.stop events, want 1 each", starts, stops)
	}
	// The same rows as CSV, filtered by action. PSTD_ACTOR (who an
	// operator is) must not act as query's --actor filter.
	auditor := "PSTD_DATABASE_URL=" + testenv.RoleURL(t, s.dbURL, "pstd_auditor")
	r := csv.NewReader(strings.NewReader(s.pstctlEnv([]string{auditor, "PSTD_ACTOR=somebody@else"},
		"audit", "query", "--format", "csv", "--action", "count.issuance")))
	recs, err := r.ReadAll()
	if err != nil {
		t.Fatalf("audit query --format csv: %v", err)
	}
	var tokens int64
	for _, rec := range recs[1:] {
		var d struct{ Tokens int64 }
		if err := json.Unmarshal([]byte(rec[5]), &d); err != nil {
			t.Fatal(err)
		}
		tokens += d.Tokens
	}
	if tokens != 20 {
		t.Errorf("count.issuance events carry %d tokens, want 20", tokens)
	}
	// --actor on the command line filters.
	lines := strings.Split(strings.TrimSpace(s.pstctlEnv([]string{auditor}, "audit", "query", "--format", "json", "--actor", "nobody@nowhere")), "\n")
	if len(lines) != 1 || lines[0] != "" {
		t.Errorf("--actor nobody@nowhere printed %d rows", len(lines))
	}
}

// Nothing stored and no log line holds anything an issuance and a
// redemption share: the issuance request and response, the tokens' nonces
// and signed points appear in no column of any table (bytea as hex) and in
// none of pstd's log lines, and the stored issuance counts are minute
// buckets, not request times.
func TestNothingStoredLinksIssuanceToRedemption(t *testing.T) {
	s := newStackOn(t, testenv.NewDatabase(t), testenv.NewToken(t))
	toks, request, response := s.issueCapture(5)
	for _, tok := range toks[:2] {
		if o := s.redeemToken(tok); o.status != http.StatusOK {
			t.Fatalf("redemption: %+v", o)
		}
	}
	s.stop()

	// Everything the client holds at issuance and shows at redemption, in
	// every encoding a careless log or column could use.
	var secrets []string
	add := func(b []byte) {
		secrets = append(secrets, hex.EncodeToString(b), base64.StdEncoding.EncodeToString(b),
			base64.RawURLEncoding.EncodeToString(b), base64.RawStdEncoding.EncodeToString(b))
	}
	add(request[2:])  // the blinded elements (after the count)
	add(response[6:]) // the evaluated elements and proof (after count and key id)
	for _, tok := range toks {
		add(tok.Nonce[:])
		add(tok.W[:])
		add(tok.W[1:33]) // a prefix of the point's x coordinate
	}

	var dump strings.Builder
	for _, tbl := range s.column(`SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'`) {
		for _, l := range s.column(`SELECT row_to_json(t)::text FROM ` + tbl + ` t`) {
			dump.WriteString(strings.ToLower(l))
			dump.WriteByte('\n')
		}
	}
	// The dump is searchable as the checks below assume: it holds the
	// redemption's nonce hash (which the issuer never sees at issuance),
	// as hex, and the count events.
	h := sha256.Sum256(toks[0].Nonce[:])
	if !strings.Contains(dump.String(), hex.EncodeToString(h[:])) || !strings.Contains(dump.String(), "count.issuance") {
		t.Fatal("the dump lacks the nonce hash or the count events: the test reads the wrong thing")
	}
	logs := s.logs.String()
	for _, sec := range secrets {
		if strings.Contains(dump.String(), strings.ToLower(sec)) {
			t.Errorf("the database holds client material from issuance or redemption (%.16s…)", sec)
		}
		if strings.Contains(logs, sec) {
			t.Errorf("pstd's log holds client material from issuance or redemption (%.16s…)", sec)
		}
	}
	if fine := s.count(`SELECT count(*) FROM issuance_counts
		WHERE extract(epoch FROM bucket_start)::bigint % 60 <> 0 OR bucket_end - bucket_start < interval '1 minute'`); fine != 0 {
		t.Errorf("%d issuance counts finer than a minute", fine)
	}
}
