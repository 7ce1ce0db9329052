// Package doctor checks a live Private State Token issuer — pstd or any
// other — against the rules Chromium applies to an issuer's key commitment
// and endpoints and the ones Google's issuer-registration reviewers enforce,
// and says how to fix each failure. It is `pstctl doctor URL`.
//
// Every check has a stable id (see the Check* constants), a status (pass,
// warn, fail or skip), a message and, when it does not pass, a fix. A check
// that depends on one that failed is skipped with the reason. The doctor
// speaks to the issuer only over HTTP(S), each request bounded by a timeout
// and each body read with a size limit, so a hanging or hostile issuer cannot
// hang it or make it allocate without bound. It never prints a token, a
// blind or a redemption record.
package doctor

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Status is the outcome of one check.
type Status string

// The four outcomes. Only StatusFail makes the doctor exit 1.
const (
	StatusPass Status = "pass"
	StatusWarn Status = "warn"
	StatusFail Status = "fail"
	StatusSkip Status = "skip"
)

// Check ids, stable across releases: scripts and monitoring may key on them.
const (
	CheckOrigin         = "origin"          // https, or http on localhost (warn)
	CheckTLS            = "tls"             // certificate chain, host name, validity
	CheckCommitmentGet  = "commitment-get"  // the exact well-known path answers 200, no redirect, bounded body
	CheckContentType    = "content-type"    // exactly application/pst-issuer-directory
	CheckJSON           = "json"            // object → PrivateStateTokenV1VOPRF → protocol_version, keys object
	CheckID             = "id"              // JSON integer in [1, 2^31-1]
	CheckIDMonotonic    = "id-monotonic"    // a second fetch never shows a smaller id
	CheckBatchSize      = "batchsize"       // JSON integer in [1, 100]
	CheckKeyCount       = "key-count"       // 1 to 6 keys
	CheckKeyIDs         = "key-ids"         // labels are decimal uint32s matching each blob's key id
	CheckKeyY           = "key-y"           // Y is base64 of 101 bytes: u32 id || an uncompressed P-384 point on the curve
	CheckExpiryFormat   = "expiry-format"   // expiry is a JSON string of decimal microseconds
	CheckExpiry         = "expiry"          // not past, not about to leave no key, not absurdly far
	CheckCORSCommitment = "cors-commitment" // a cross-origin page may read the commitment
	CheckJWKS           = "jwks"            // the redemption-record keys, if published
	CheckCORSJWKS       = "cors-jwks"       // a cross-origin page may read the JWKS
	CheckIssuance       = "issuance"        // a real issue request gets a well-formed response
	CheckIssuanceProof  = "issuance-proof"  // its batched DLEQ proof verifies against the published key
	CheckCORSIssuance   = "cors-issuance"   // the issuance response is readable by the requesting page
	CheckCORSPreflight  = "cors-preflight"  // a preflight for the issuance endpoint is answered
	CheckRedemption     = "redemption"      // the redemption endpoint exists; with --redeem a token is spent
	CheckRecord         = "redemption-record"
)

// CheckResult is one line of the report.
type CheckResult struct {
	ID      string `json:"id"`
	Status  Status `json:"status"`
	Message string `json:"message"`
	Fix     string `json:"fix,omitempty"`
}

// Report is the doctor's verdict on one issuer.
type Report struct {
	Issuer  string        `json:"issuer"`
	Time    time.Time     `json:"time"`
	Redeem  bool          `json:"redeem"`
	Checks  []CheckResult `json:"checks"`
	Summary Summary       `json:"summary"`
}

// Summary counts the checks by status.
type Summary struct {
	Pass int  `json:"pass"`
	Warn int  `json:"warn"`
	Fail int  `json:"fail"`
	Skip int  `json:"skip"`
	OK   bool `json:"ok"` // no failure (warnings allowed)
}

// Failed reports whether any check failed.
func (r *Report) Failed() bool { return r.Summary.Fail > 0 }

// Find returns the result of the check with the given id.
func (r *Report) Find(id string) (CheckResult, bool) {
	for _, c := range r.Checks {
		if c.ID == id {
			return c, true
		}
	}
	return CheckResult{}, false
}

// Options tune a run. The zero value is usable.
type Options struct {
	// Redeem spends one of the issued tokens and verifies the redemption
	// record against the issuer's JWKS.
	Redeem bool
	// Timeout bounds each network operation (default 10 s).
	Timeout time.Duration
	// Origin is the cross-origin page the doctor pretends to be, for the CORS
	// checks and as the redeeming origin (default https://doctor.invalid).
	Origin string
	// RootCAs verifies the issuer's certificate; nil means the system roots.
	RootCAs *x509.CertPool
	// Now is the clock (default time.Now).
	Now func() time.Time

	// dial replaces the network dialer (tests point names at local servers).
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// DefaultOrigin is the page origin the doctor claims when none is given.
const DefaultOrigin = "https://doctor.invalid"

// Limits on what the doctor reads from an issuer.
const (
	maxCommitmentBytes = 256 << 10 // a commitment of 6 keys is well under 2 KiB
	maxJWKSBytes       = 64 << 10
	maxOtherBytes      = 64 << 10
	maxHeaderBytes     = 64 << 10
	soonWindow         = 14 * 24 * time.Hour
)

// UsageError is a bad argument (exit status 2), as opposed to a finding.
type UsageError struct{ msg string }

func (e *UsageError) Error() string { return e.msg }

// ParseIssuer turns the command-line argument into an issuer origin
// (scheme://host[:port]). The key commitment's own URL is accepted too.
func ParseIssuer(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.Host == "" || u.Opaque != "" {
		return nil, &UsageError{fmt.Sprintf("%q is not an absolute URL such as https://issuer.example", raw)}
	}
	u.Scheme = strings.ToLower(u.Scheme)
	if u.Scheme != "https" && u.Scheme != "http" {
		return nil, &UsageError{fmt.Sprintf("%q: an issuer URL is https:// (or http:// for local testing)", raw)}
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, &UsageError{fmt.Sprintf("%q: give the issuer origin, without user info, query or fragment", raw)}
	}
	switch strings.TrimSuffix(u.Path, "/") {
	case "", strings.TrimSuffix(wellKnown, "/"), wellKnown + "key-commitment":
	default:
		return nil, &UsageError{fmt.Sprintf("%q: give the issuer origin (https://issuer.example); the well-known paths are fixed", raw)}
	}
	u.Host = strings.ToLower(u.Host)
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

// Run checks the issuer at rawURL. Its error is non-nil only for a usage
// error (a malformed URL or option); every finding is in the report.
func Run(ctx context.Context, rawURL string, opts Options) (*Report, error) {
	u, err := ParseIssuer(rawURL)
	if err != nil {
		return nil, err
	}
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Timeout < 0 {
		return nil, &UsageError{"--timeout must be positive"}
	}
	if opts.Origin == "" {
		opts.Origin = DefaultOrigin
	}
	po, err := ParseIssuer(opts.Origin)
	if err != nil || po.String() != strings.ToLower(strings.TrimSuffix(opts.Origin, "/")) {
		return nil, &UsageError{fmt.Sprintf("--origin %q is not an origin such as https://rp.example", opts.Origin)}
	}
	opts.Origin = po.String()
	if opts.Origin == u.String() {
		return nil, &UsageError{"--origin must differ from the issuer: the CORS checks need a cross-origin page"}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	d := &run{opts: opts, issuer: u, report: &Report{Issuer: u.String(), Time: opts.Now().UTC(), Redeem: opts.Redeem}}
	d.client = newClient(opts)
	defer d.client.CloseIdleConnections()
	d.all(ctx)
	for _, c := range d.report.Checks {
		switch c.Status {
		case StatusPass:
			d.report.Summary.Pass++
		case StatusWarn:
			d.report.Summary.Warn++
		case StatusFail:
			d.report.Summary.Fail++
		case StatusSkip:
			d.report.Summary.Skip++
		}
	}
	d.report.Summary.OK = d.report.Summary.Fail == 0
	return d.report, nil
}

// run is the state of one doctor run.
type run struct {
	opts   Options
	issuer *url.URL
	client *http.Client
	report *Report
	status map[string]Status
	// unreachable: the first request got no HTTP answer at all, so the
	// endpoint checks that do not need the commitment are skipped too.
	unreachable bool
}

func (d *run) add(c CheckResult) {
	if d.status == nil {
		d.status = map[string]Status{}
	}
	d.status[c.ID] = c.Status
	d.report.Checks = append(d.report.Checks, c)
}

func (d *run) pass(id, format string, args ...any) {
	d.add(CheckResult{ID: id, Status: StatusPass, Message: fmt.Sprintf(format, args...)})
}

func (d *run) warn(id, fix, format string, args ...any) {
	d.add(CheckResult{ID: id, Status: StatusWarn, Message: fmt.Sprintf(format, args...), Fix: fix})
}

func (d *run) fail(id, fix, format string, args ...any) {
	d.add(CheckResult{ID: id, Status: StatusFail, Message: fmt.Sprintf(format, args...), Fix: fix})
}

func (d *run) skip(id, format string, args ...any) {
	d.add(CheckResult{ID: id, Status: StatusSkip, Message: fmt.Sprintf(format, args...)})
}

// ok reports whether check id ran and did not fail or skip.
func (d *run) ok(id string) bool {
	s := d.status[id]
	return s == StatusPass || s == StatusWarn
}

// skipAll skips each id with the same reason.
func (d *run) skipAll(reason string, ids ...string) {
	for _, id := range ids {
		d.skip(id, "%s", reason)
	}
}

// url returns the issuer URL of a well-known resource.
func (d *run) url(name string) string { return d.issuer.String() + wellKnown + name }

// all runs every check in order.
func (d *run) all(ctx context.Context) {
	d.checkOrigin()
	d.checkTLS(ctx)
	network := []string{CheckCommitmentGet, CheckContentType, CheckJSON, CheckID, CheckIDMonotonic,
		CheckBatchSize, CheckKeyCount, CheckKeyIDs, CheckKeyY, CheckExpiryFormat, CheckExpiry,
		CheckCORSCommitment, CheckJWKS, CheckCORSJWKS, CheckIssuance, CheckIssuanceProof,
		CheckCORSIssuance, CheckCORSPreflight, CheckRedemption, CheckRecord}
	if d.status[CheckTLS] == StatusFail {
		d.skipAll("the TLS connection failed (see tls)", network...)
		return
	}
	c := d.checkCommitment(ctx)
	d.checkCORSCommitment(ctx)
	jwks := d.checkJWKS(ctx)
	tokens := d.checkIssuance(ctx, c)
	d.checkPreflight(ctx)
	d.checkRedemption(ctx, tokens, jwks)
}

var errNoJWKS = errors.New("no JWKS")
