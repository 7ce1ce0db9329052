package doctor

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ids returns the ids of the checks with status st.
func ids(r *Report, st Status) []string {
	var out []string
	for _, c := range r.Checks {
		if c.Status == st {
			out = append(out, c.ID)
		}
	}
	sort.Strings(out)
	return out
}

// everyCheck is the full list of ids, in report order.
var everyCheck = []string{CheckOrigin, CheckTLS, CheckCommitmentGet, CheckContentType, CheckJSON, CheckID,
	CheckIDMonotonic, CheckBatchSize, CheckKeyCount, CheckKeyIDs, CheckKeyY, CheckExpiryFormat, CheckExpiry,
	CheckCORSCommitment, CheckJWKS, CheckCORSJWKS, CheckIssuance, CheckIssuanceProof, CheckCORSIssuance,
	CheckCORSPreflight, CheckRedemption, CheckRecord}

func runDoctor(t *testing.T, f *fixture, opts Options) *Report {
	t.Helper()
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.dial == nil {
		opts.dial = f.dial
	}
	rep, err := Run(context.Background(), f.origin, opts)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range rep.Checks {
		got = append(got, c.ID)
		if c.Status != StatusPass && c.Status != StatusSkip && c.Fix == "" {
			t.Errorf("check %s is %s without a fix: %s", c.ID, c.Status, c.Message)
		}
	}
	if strings.Join(got, " ") != strings.Join(everyCheck, " ") {
		t.Errorf("report lists checks\n%v\nwant\n%v", got, everyCheck)
	}
	return rep
}

func dump(t *testing.T, rep *Report) {
	t.Helper()
	var b bytes.Buffer
	_ = rep.WriteTable(&b)
	t.Log("\n" + b.String())
}

// TestCorrectFixturePasses: the unbroken fixture passes everything, with
// --redeem, and only warns that http://127.0.0.1 is not registrable.
func TestCorrectFixturePasses(t *testing.T) {
	f := newFixture(t, breakage{}).start()
	rep := runDoctor(t, f, Options{Redeem: true})
	if testing.Verbose() {
		dump(t, rep)
	}
	if rep.Failed() || strings.Join(ids(rep, StatusWarn), ",") != CheckOrigin || strings.Join(ids(rep, StatusSkip), ",") != CheckTLS {
		dump(t, rep)
		t.Fatalf("fail %v warn %v skip %v; want only origin warning, tls skipped", ids(rep, StatusFail), ids(rep, StatusWarn), ids(rep, StatusSkip))
	}
	if !rep.Summary.OK || rep.Summary.Pass != len(everyCheck)-2 {
		t.Fatalf("summary %+v", rep.Summary)
	}
}

func microsFromNow(d time.Duration) func(int) string {
	return func(int) string { return strconv.FormatInt(time.Now().Add(d).UnixMicro(), 10) }
}

func editEntry(fn func(e map[string]any)) func(map[string]any) { return fn }

func editKey(fn func(k map[string]any)) func(map[string]any) {
	return func(e map[string]any) { fn(e["keys"].(map[string]any)["1"].(map[string]any)) }
}

func editY(fn func(blob []byte) string) func(map[string]any) {
	return editKey(func(k map[string]any) {
		blob, _ := base64.StdEncoding.DecodeString(k["Y"].(string))
		k["Y"] = fn(blob)
	})
}

// TestEachRuleBrokenOnce breaks one rule at a time in the fixture and
// asserts that exactly the check for that rule fails (the ones depending on
// it may be skipped, none other fails).
func TestEachRuleBrokenOnce(t *testing.T) {
	cases := []struct {
		name   string
		b      breakage
		redeem bool
		want   string
	}{
		{"commitment 404", breakage{status: map[string]int{"key-commitment": 404}}, false, CheckCommitmentGet},
		{"commitment redirect", breakage{redirect: true}, false, CheckCommitmentGet},
		{"commitment too large", breakage{huge: true}, false, CheckCommitmentGet},
		{"content type with charset", breakage{contentType: "application/pst-issuer-directory; charset=utf-8"}, false, CheckContentType},
		{"content type json", breakage{contentType: "application/json"}, false, CheckContentType},
		{"not json", breakage{rawBody: "<html>hello</html>"}, false, CheckJSON},
		{"no VOPRF member", breakage{rawBody: `{"PrivateStateTokenV1PMB": {}}`}, false, CheckJSON},
		{"protocol_version differs", breakage{mutate: editEntry(func(e map[string]any) { e["protocol_version"] = "TrustTokenV3VOPRF" })}, false, CheckJSON},
		{"keys not an object", breakage{mutate: editEntry(func(e map[string]any) { e["keys"] = []any{} })}, false, CheckJSON},
		{"id a string", breakage{mutate: editEntry(func(e map[string]any) { e["id"] = "7" })}, false, CheckID},
		{"id zero", breakage{mutate: editEntry(func(e map[string]any) { e["id"] = 0 })}, false, CheckID},
		{"id beyond int32", breakage{mutate: editEntry(func(e map[string]any) { e["id"] = int64(1) << 31 })}, false, CheckID},
		{"id a float", breakage{mutate: editEntry(func(e map[string]any) { e["id"] = 7.5 })}, false, CheckID},
		{"id goes down", breakage{secondID: commitmentID - 1}, false, CheckIDMonotonic},
		{"batchsize zero", breakage{mutate: editEntry(func(e map[string]any) { e["batchsize"] = 0 })}, false, CheckBatchSize},
		{"batchsize 101", breakage{mutate: editEntry(func(e map[string]any) { e["batchsize"] = 101 })}, false, CheckBatchSize},
		{"batchsize a string", breakage{mutate: editEntry(func(e map[string]any) { e["batchsize"] = "10" })}, false, CheckBatchSize},
		{"seven keys", breakage{keys: 7}, false, CheckKeyCount},
		{"no keys", breakage{mutate: editEntry(func(e map[string]any) { e["keys"] = map[string]any{} })}, false, CheckKeyCount},
		{"label not decimal", breakage{mutate: editEntry(func(e map[string]any) {
			ks := e["keys"].(map[string]any)
			ks["one"] = ks["1"]
			delete(ks, "1")
		})}, false, CheckKeyIDs},
		{"label names another key", breakage{mutate: editEntry(func(e map[string]any) {
			ks := e["keys"].(map[string]any)
			ks["2"] = ks["1"]
			delete(ks, "1")
		})}, false, CheckKeyIDs},
		{"Y 100 bytes", breakage{mutate: editY(func(b []byte) string { return base64.StdEncoding.EncodeToString(b[:100]) })}, false, CheckKeyY},
		{"Y off the curve", breakage{mutate: editY(func(b []byte) string { b[100] ^= 1; return base64.StdEncoding.EncodeToString(b) })}, false, CheckKeyY},
		{"Y unpadded", breakage{mutate: editY(func(b []byte) string { return base64.RawStdEncoding.EncodeToString(b) })}, false, CheckKeyY},
		{"Y a number", breakage{mutate: editKey(func(k map[string]any) { k["Y"] = 12 })}, false, CheckKeyY},
		{"expiry a number", breakage{mutate: editKey(func(k map[string]any) { k["expiry"] = time.Now().Add(90 * 24 * time.Hour).UnixMicro() })}, false, CheckExpiryFormat},
		{"expiry in nanoseconds", breakage{expiry: func(int) string { return strconv.FormatInt(time.Now().Add(90*24*time.Hour).UnixNano(), 10) }}, false, CheckExpiryFormat},
		{"expiry negative", breakage{expiry: func(int) string { return "-5" }}, false, CheckExpiryFormat},
		{"expiry in seconds", breakage{expiry: func(int) string { return strconv.FormatInt(time.Now().Add(90*24*time.Hour).Unix(), 10) }}, false, CheckExpiry},
		{"expiry past", breakage{expiry: microsFromNow(-time.Hour)}, false, CheckExpiry},
		{"no CORS on the commitment", breakage{noCORS: map[string]bool{"key-commitment": true}}, false, CheckCORSCommitment},
		{"no CORS on the JWKS", breakage{noCORS: map[string]bool{"jwks.json": true}}, false, CheckCORSJWKS},
		{"bad JWKS", breakage{status: map[string]int{"jwks.json": 500}}, false, CheckJWKS},
		{"issuance 404", breakage{status: map[string]int{"issuance": 404}}, false, CheckIssuance},
		{"issuance refused without header", breakage{noToken: true}, false, CheckIssuance},
		{"issuance header quoted", breakage{quoted: true}, false, CheckIssuance},
		{"proof does not verify", breakage{badProof: true}, false, CheckIssuanceProof},
		{"signed by an unpublished key", breakage{rogueKey: true}, false, CheckIssuanceProof},
		{"signed under an unpublished key id", breakage{unknownKey: true}, false, CheckIssuanceProof},
		{"no CORS on issuance", breakage{noCORS: map[string]bool{"issuance": true}}, false, CheckCORSIssuance},
		{"redemption 404", breakage{status: map[string]int{"redemption": 404}}, false, CheckRedemption},
		{"redemption without record", breakage{noRecord: true}, true, CheckRedemption},
		{"no CORS on redemption", breakage{noCORS: map[string]bool{"redemption": true}}, true, CheckRedemption},
		{"record signed by another key", breakage{rogueRecord: true}, true, CheckRecord},
		{"no JWKS to verify the record", breakage{status: map[string]int{"jwks.json": 404}}, true, CheckRecord},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, c.b).start()
			rep := runDoctor(t, f, Options{Redeem: c.redeem})
			if testing.Verbose() {
				fc, _ := rep.Find(c.want)
				t.Logf("%s: %s\n    fix: %s", fc.Status, fc.Message, fc.Fix)
			}
			if got := ids(rep, StatusFail); len(got) != 1 || got[0] != c.want {
				dump(t, rep)
				t.Fatalf("failed checks %v, want exactly [%s]", got, c.want)
			}
			fc, _ := rep.Find(c.want)
			if fc.Fix == "" || fc.Message == "" {
				t.Fatalf("failure of %s has no message or fix: %+v", c.want, fc)
			}
		})
	}
}

// TestWarnings: findings that do not block registration warn and exit 0.
func TestWarnings(t *testing.T) {
	cases := []struct {
		name   string
		b      breakage
		redeem bool
		want   string
	}{
		{"last key expires within 14 days", breakage{expiry: microsFromNow(3 * 24 * time.Hour)}, false, CheckExpiry},
		{"key expires in two years", breakage{expiry: microsFromNow(2 * 365 * 24 * time.Hour)}, false, CheckExpiry},
		{"unknown member", breakage{mutate: editEntry(func(e map[string]any) { e["extra"] = true })}, false, CheckJSON},
		{"no preflight", breakage{noPreflight: true}, false, CheckCORSPreflight},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, c.b).start()
			rep := runDoctor(t, f, Options{Redeem: c.redeem})
			warns := ids(rep, StatusWarn)
			if rep.Failed() || len(warns) != 2 || (warns[0] != c.want && warns[1] != c.want) {
				dump(t, rep)
				t.Fatalf("failed %v, warnings %v; want no failure and warnings [%s origin]", ids(rep, StatusFail), warns, c.want)
			}
		})
	}
}

// TestGETOnlyIssuer: pages choose the method of their PST fetches, so an
// issuer that takes GET only is still checked end to end.
func TestGETOnlyIssuer(t *testing.T) {
	f := newFixture(t, breakage{getOnly: true}).start()
	rep := runDoctor(t, f, Options{Redeem: true})
	if rep.Failed() {
		dump(t, rep)
		t.Fatalf("failed %v", ids(rep, StatusFail))
	}
	if c, _ := rep.Find(CheckRecord); c.Status != StatusPass {
		t.Fatalf("record %s: %s", c.Status, c.Message)
	}
}

// TestOldKeyExpiringSoonIsNormalRotation: a key about to expire is fine
// while a later key covers the time after it.
func TestOldKeyExpiringSoonIsNormalRotation(t *testing.T) {
	f := newFixture(t, breakage{keys: 2, expiry: func(i int) string {
		return strconv.FormatInt(time.Now().Add(time.Duration(1+i*60)*24*time.Hour).UnixMicro(), 10)
	}}).start()
	rep := runDoctor(t, f, Options{})
	if c, _ := rep.Find(CheckExpiry); c.Status != StatusPass {
		dump(t, rep)
		t.Fatalf("expiry %s: %s", c.Status, c.Message)
	}
}

// TestHangingIssuer: an issuer that never answers costs one timeout, and
// the checks that need it are skipped.
func TestHangingIssuer(t *testing.T) {
	f := newFixture(t, breakage{hang: true}).start()
	rep := runDoctor(t, f, Options{Timeout: 300 * time.Millisecond})
	c, _ := rep.Find(CheckCommitmentGet)
	if c.Status != StatusFail || !strings.Contains(c.Message, "timeout") {
		dump(t, rep)
		t.Fatalf("commitment-get %s: %s", c.Status, c.Message)
	}
	if got := ids(rep, StatusFail); len(got) != 1 {
		dump(t, rep)
		t.Fatalf("failed %v, want only commitment-get", got)
	}
}

// TestSilentTLSServer: a server that accepts connections and never speaks
// fails the TLS check after one timeout instead of hanging the doctor.
func TestSilentTLSServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c) // never read or written
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range held {
			c.Close()
		}
	})
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, ln.Addr().String())
	}
	rep, err := Run(context.Background(), "https://issuer.example", Options{Timeout: 300 * time.Millisecond, dial: dial})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := rep.Find(CheckTLS)
	if c.Status != StatusFail || !strings.Contains(c.Message, "timeout") || ids(rep, StatusFail)[0] != CheckTLS || rep.Summary.Fail != 1 {
		dump(t, rep)
		t.Fatalf("tls %s: %s", c.Status, c.Message)
	}
}

// TestTLS: https issuers behind certificates from a private CA.
func TestTLS(t *testing.T) {
	ca := newTestCA(t)
	other := newTestCA(t)
	now := time.Now()
	cases := []struct {
		name   string
		pool   *testCA
		status Status
	}{
		{"valid", ca, StatusPass},
		{"expired", ca, StatusFail},
		{"untrusted CA", other, StatusFail},
		{"wrong host", ca, StatusFail},
		{"expires in 3 days", ca, StatusWarn},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var f *fixture
			switch c.name {
			case "valid", "untrusted CA":
				f = newFixture(t, breakage{}).startTLS(ca.leaf(t, "issuer.example", now.Add(-time.Hour), now.Add(90*24*time.Hour)))
			case "expired":
				f = newFixture(t, breakage{}).startTLS(ca.leaf(t, "issuer.example", now.Add(-48*time.Hour), now.Add(-time.Hour)))
			case "wrong host":
				f = newFixture(t, breakage{}).startTLS(ca.leaf(t, "other.example", now.Add(-time.Hour), now.Add(90*24*time.Hour)))
			case "expires in 3 days":
				f = newFixture(t, breakage{}).startTLS(ca.leaf(t, "issuer.example", now.Add(-time.Hour), now.Add(3*24*time.Hour)))
			}
			rep := runDoctor(t, f, Options{Redeem: true, RootCAs: c.pool.pool})
			tc, _ := rep.Find(CheckTLS)
			if tc.Status != c.status {
				dump(t, rep)
				t.Fatalf("tls %s (%s), want %s", tc.Status, tc.Message, c.status)
			}
			if o, _ := rep.Find(CheckOrigin); o.Status != StatusPass {
				t.Fatalf("origin %s for %s", o.Status, f.origin)
			}
			wantFail := 0
			if c.status == StatusFail {
				wantFail = 1
			}
			if rep.Summary.Fail != wantFail {
				dump(t, rep)
				t.Fatalf("%d failures, want %d", rep.Summary.Fail, wantFail)
			}
			if c.status == StatusFail && rep.Summary.Skip != len(everyCheck)-2 {
				t.Fatalf("after a TLS failure every network check should be skipped: %+v", rep.Summary)
			}
		})
	}
}

// TestPlainHTTPOnPublicHost: http on a name that is not localhost fails the
// origin check and nothing else.
func TestPlainHTTPOnPublicHost(t *testing.T) {
	f := newFixture(t, breakage{}).start()
	_, port, _ := strings.Cut(strings.TrimPrefix(f.origin, "http://"), ":")
	f.origin = "http://issuer.example:" + port
	rep := runDoctor(t, f, Options{Redeem: true})
	if got := ids(rep, StatusFail); len(got) != 1 || got[0] != CheckOrigin {
		dump(t, rep)
		t.Fatalf("failed %v, want [origin]", got)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, u := range []string{"", "issuer.example", "ftp://issuer.example", "https://issuer.example/some/path", "https://u:p@issuer.example", "https://issuer.example/?q=1"} {
		if _, err := Run(context.Background(), u, Options{}); err == nil {
			t.Errorf("%q: no usage error", u)
		} else if _, ok := err.(*UsageError); !ok {
			t.Errorf("%q: %T, not a usage error", u, err)
		}
	}
	for _, o := range []string{"rp.example", "https://rp.example/path", "https://issuer.example"} {
		if _, err := Run(context.Background(), "https://issuer.example", Options{Origin: o}); err == nil {
			t.Errorf("origin %q: no usage error", o)
		}
	}
	if _, err := Run(context.Background(), "http://localhost:1", Options{Origin: "https://RP.example/", Timeout: time.Second}); err != nil {
		t.Errorf("origin in upper case with a slash: %v", err)
	}
	u, err := ParseIssuer("HTTPS://Issuer.Example/.well-known/private-state-token/key-commitment")
	if err != nil || u.String() != "https://issuer.example" {
		t.Fatalf("ParseIssuer: %v %v", u, err)
	}
}

// TestJSONReport: the JSON form carries every check and the verdict.
func TestJSONReport(t *testing.T) {
	f := newFixture(t, breakage{contentType: "application/json"}).start()
	rep := runDoctor(t, f, Options{})
	var b bytes.Buffer
	if err := rep.Write(&b, "json"); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Summary.OK || back.Summary.Fail != 1 || len(back.Checks) != len(everyCheck) || back.Issuer != f.origin {
		t.Fatalf("round trip: %+v", back.Summary)
	}
	c, _ := back.Find(CheckContentType)
	if c.Status != StatusFail || !strings.Contains(c.Fix, "application/pst-issuer-directory") {
		t.Fatalf("content-type in JSON: %+v", c)
	}
	b.Reset()
	if err := rep.Write(&b, "table"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "FAIL    content-type") || !strings.Contains(b.String(), "fix: send Content-Type") {
		t.Fatalf("table:\n%s", b.String())
	}
	if err := rep.Write(&b, "yaml"); err == nil {
		t.Fatal("unknown format accepted")
	}
}
