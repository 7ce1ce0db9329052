package doctor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

const wellKnown = "/.well-known/private-state-token/"

// newClient returns the HTTP client of a run: redirects are not followed
// (the well-known paths must answer themselves), every request is bounded by
// the timeout, and certificates are verified against opts.RootCAs.
func newClient(opts Options) *http.Client {
	dialer := &net.Dialer{Timeout: opts.Timeout}
	dial := dialer.DialContext
	if opts.dial != nil {
		dial = opts.dial
	}
	tr := &http.Transport{
		DialContext:            dial,
		TLSClientConfig:        &tls.Config{RootCAs: opts.RootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    opts.Timeout,
		ResponseHeaderTimeout:  opts.Timeout,
		MaxResponseHeaderBytes: maxHeaderBytes,
		DisableCompression:     true,
		ForceAttemptHTTP2:      true,
		Proxy:                  nil, // the doctor checks the issuer itself, not a proxy's view of it
	}
	return &http.Client{
		Transport:     tr,
		Timeout:       opts.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// response is a fetched response with its body read up to a limit.
type response struct {
	status int
	header http.Header
	body   []byte
}

// errTooLarge is a body over the limit.
var errTooLarge = errors.New("response body too large")

// do sends req (bounded by the run's timeout) and reads at most limit bytes
// of the body; a larger body is errTooLarge.
func (d *run) do(ctx context.Context, req *http.Request, limit int64) (*response, error) {
	ctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	req = req.WithContext(ctx)
	resp, err := d.client.Do(req)
	if err != nil {
		return nil, describeNetErr(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, describeNetErr(err)
	}
	if int64(len(body)) > limit {
		return &response{status: resp.StatusCode, header: resp.Header}, fmt.Errorf("%w: more than %d bytes", errTooLarge, limit)
	}
	return &response{status: resp.StatusCode, header: resp.Header, body: body}, nil
}

// get fetches a well-known resource, with an Origin header if origin is set.
func (d *run) get(ctx context.Context, name, origin string, limit int64) (*response, error) {
	req, err := http.NewRequest(http.MethodGet, d.url(name), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Cache-Control", "no-cache")
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	return d.do(ctx, req, limit)
}

// describeNetErr turns transport errors into sentences; a timeout says so.
func describeNetErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // the message names the URL already
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("no answer within the timeout (%w)", err)
	}
	return err
}

// isLoopbackHost reports whether host (no port) is localhost or a loopback
// address, which browsers treat as a secure context over plain http.
func isLoopbackHost(host string) bool {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// checkOrigin: Chrome only runs PST with a "suitable" issuer origin — a
// potentially trustworthy one, i.e. https, or http on localhost/loopback —
// and Google's registration takes https issuers on their own host only. So
// https passes, http on loopback is a warning (fine for development, never
// registrable) and any other http fails.
func (d *run) checkOrigin() {
	switch {
	case d.issuer.Scheme == "https":
		d.pass(CheckOrigin, "%s is an https origin", d.issuer)
	case isLoopbackHost(d.issuer.Hostname()):
		d.warn(CheckOrigin, "serve the issuer over https on its own public host before registering it",
			"%s is plain http on localhost: Chrome accepts it for local testing (with --additional-private-state-token-key-commitments), but registration needs https", d.issuer)
	default:
		d.fail(CheckOrigin, "serve the issuer over https (a certificate from a public CA for "+d.issuer.Hostname()+")",
			"%s is plain http: Chrome refuses a non-localhost http issuer and registration needs https", d.issuer)
	}
}

// checkTLS verifies the issuer's certificate chain (against the system roots,
// or Options.RootCAs), the host name and the validity period, with a
// handshake of its own so that the finding is about TLS alone. Google's
// collector refetches the commitment about hourly: a certificate that
// expires lapses the issuer, so one expiring within 14 days is a warning.
func (d *run) checkTLS(ctx context.Context) {
	if d.issuer.Scheme != "https" {
		d.skip(CheckTLS, "plain http: no TLS to check")
		return
	}
	host := d.issuer.Hostname()
	addr := d.issuer.Host
	if d.issuer.Port() == "" {
		addr = net.JoinHostPort(host, "443")
	}
	ctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	dial := (&net.Dialer{}).DialContext
	if d.opts.dial != nil {
		dial = d.opts.dial
	}
	raw, err := dial(ctx, "tcp", addr)
	if err != nil {
		d.fail(CheckTLS, "make "+addr+" reachable from the internet", "cannot connect to %s: %v", addr, describeNetErr(err))
		return
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	now := d.opts.Now()
	conn := tls.Client(raw, &tls.Config{ServerName: host, RootCAs: d.opts.RootCAs, MinVersion: tls.VersionTLS12, Time: func() time.Time { return now }})
	if err := conn.HandshakeContext(ctx); err != nil {
		msg, fix := describeTLSErr(err, host)
		d.fail(CheckTLS, fix, "TLS handshake with %s failed: %s", addr, msg)
		return
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	left := leaf.NotAfter.Sub(now)
	if left < soonWindow {
		d.warn(CheckTLS, "renew the certificate now (automate renewal, e.g. ACME)",
			"certificate for %s expires in %s (%s): an expired certificate stops browsers and Google's collector",
			host, left.Round(time.Hour), leaf.NotAfter.UTC().Format(time.RFC3339))
		return
	}
	d.pass(CheckTLS, "certificate for %s verifies, valid until %s", host, leaf.NotAfter.UTC().Format(time.RFC3339))
}

// describeTLSErr explains a verification failure and how to fix it.
func describeTLSErr(err error, host string) (msg, fix string) {
	var inv x509.CertificateInvalidError
	var unk x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ve *tls.CertificateVerificationError
	switch {
	case errors.As(err, &inv) && inv.Reason == x509.Expired:
		return "the certificate has expired or is not yet valid (" + inv.Error() + ")",
			"renew the certificate and install the new one (check the server's clock too)"
	case errors.As(err, &unk):
		return "the certificate chain does not lead to a trusted root (" + unk.Error() + ")",
			"use a certificate from a publicly trusted CA and serve the full chain (leaf and intermediates)"
	case errors.As(err, &hn):
		return "the certificate is not valid for " + host + " (" + hn.Error() + ")",
			"install a certificate whose subjectAltName covers " + host
	case errors.As(err, &ve):
		return ve.Error(), "install a valid certificate chain for " + host
	}
	return describeNetErr(err).Error(), "make the server complete a TLS 1.2+ handshake for " + host
}
