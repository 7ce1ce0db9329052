package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pstd/pstd/internal/pstderr"
)

// Paths.
const (
	PathKeyCommitment = "/.well-known/private-state-token/key-commitment"
	PathIssuance      = "/.well-known/private-state-token/issuance"
	PathRedemption    = "/.well-known/private-state-token/redemption"
	PathJWKS          = "/.well-known/private-state-token/jwks.json"
	PathHealthz       = "/healthz"
	PathReadyz        = "/readyz"
	PathMetrics       = "/metrics"
)

// Headers and values of docs/PROTOCOL.md, "HTTP: headers and status codes".
const (
	HeaderToken         = "Sec-Private-State-Token"
	HeaderCryptoVersion = "Sec-Private-State-Token-Crypto-Version"
	HeaderLifetime      = "Sec-Private-State-Token-Lifetime"
	// CryptoVersion is the only version pstd runs.
	CryptoVersion = "PrivateStateTokenV1VOPRF"

	// ContentTypeCommitment is the key commitment's media type, with no
	// parameter: issuer registration rejects "; charset=utf-8".
	ContentTypeCommitment = "application/pst-issuer-directory"
	// ContentTypeJWKS is RFC 7517's JWK Set media type.
	ContentTypeJWKS = "application/jwk-set+json"
)

// Size bounds of the decoded Sec-Private-State-Token request header.
const (
	// MaxIssueRequest is u16(count) plus 100 (Chrome's batch cap) points.
	MaxIssueRequest = 2 + 100*97
	// MaxRedeemRequest is u16 + 165-byte token + u16 + client_data; Chrome's
	// client_data is under 100 bytes, 4 KiB leaves ample room.
	MaxRedeemRequest = 4096
)

// cacheControlPublic is for the key commitment and the JWKS: Chrome's
// collector refetches about hourly, relying parties may cache briefly.
const cacheControlPublic = "public, max-age=300"

func (s *Server) registerRoutes() {
	e := s.echo
	e.Match([]string{http.MethodGet, http.MethodHead}, PathKeyCommitment, s.keyCommitment)
	e.Match([]string{http.MethodGet, http.MethodPost}, PathIssuance, s.issuance)
	e.Match([]string{http.MethodGet, http.MethodPost}, PathRedemption, s.redemption)
	e.Match([]string{http.MethodGet, http.MethodHead}, PathJWKS, s.jwks)
	s.registerProbes(e, !s.cfg.SeparateAdmin)
}

// registerProbes mounts the liveness and readiness probes and, with
// metrics set, /metrics on e.
func (s *Server) registerProbes(e *echo.Echo, metrics bool) {
	e.Match([]string{http.MethodGet, http.MethodHead}, PathHealthz, func(c echo.Context) error {
		c.Response().Header().Set(echo.HeaderCacheControl, "no-store")
		return c.String(http.StatusOK, "ok\n")
	})
	e.Match([]string{http.MethodGet, http.MethodHead}, PathReadyz, s.readyz)
	if metrics && s.cfg.Gatherer != nil {
		e.GET(PathMetrics, echo.WrapHandler(promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{})))
	}
}

// tokenHeader reads the one Sec-Private-State-Token request header: raw,
// unquoted, padded standard base64 (Chromium's own form), at most max bytes
// once decoded. Anything else is Malformed. Go's decoder skips CR and LF
// even in strict mode, so the alphabet is checked first.
func tokenHeader(r *http.Request, max int) ([]byte, error) {
	vals := r.Header.Values(HeaderToken)
	if len(vals) == 0 || vals[0] == "" {
		return nil, kindProblem(pstderr.Malformed, "missing "+HeaderToken+" header")
	}
	if len(vals) > 1 {
		return nil, kindProblem(pstderr.Malformed, "more than one "+HeaderToken+" header")
	}
	v := vals[0]
	if len(v) > base64.StdEncoding.EncodedLen(max) {
		return nil, kindProblem(pstderr.Malformed, HeaderToken+" header too large")
	}
	if len(v)%4 != 0 {
		return nil, kindProblem(pstderr.Malformed, HeaderToken+" is not padded standard base64")
	}
	for i := 0; i < len(v); i++ {
		b := v[i]
		if !(b >= 'A' && b <= 'Z' || b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '+' || b == '/' || b == '=') {
			return nil, kindProblem(pstderr.Malformed, HeaderToken+" is not unquoted standard base64")
		}
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(v)
	if err != nil {
		return nil, kindProblem(pstderr.Malformed, HeaderToken+" is not valid standard base64")
	}
	if len(raw) > max {
		return nil, kindProblem(pstderr.Malformed, HeaderToken+" header too large")
	}
	return raw, nil
}

// checkVersion requires the one crypto version pstd runs.
func checkVersion(r *http.Request) error {
	vals := r.Header.Values(HeaderCryptoVersion)
	if len(vals) != 1 || vals[0] != CryptoVersion {
		return kindProblem(pstderr.Unsupported, "unsupported or missing "+HeaderCryptoVersion+"; pstd runs "+CryptoVersion)
	}
	return nil
}

// checkReady answers from the cached readiness; when not ready it asks for
// an early probe, so recovery is noticed within a moment.
func (s *Server) checkReady() error {
	if err := s.ready.current(); err != nil {
		s.ready.request()
		if errors.Is(err, pstderr.DatabaseBehind) {
			return kindProblem(pstderr.DatabaseBehind, "the database is behind the audit head the HSM holds; an operator must fence (pstctl keys fence)")
		}
		return kindProblem(pstderr.Unavailable, "the issuer is not ready")
	}
	return nil
}

// call runs f, but returns when ctx ends even if f does not (f's result is
// then dropped), and turns a panic in f into an error: the issuer cannot
// hang or crash a request. Serve waits for calls still running before it
// returns, so the keys they use are not wiped under them.
func (s *Server) call(ctx context.Context, f func() error) error {
	done := make(chan error, 1)
	s.inflight.Add(1)
	go func() {
		defer s.inflight.Done()
		defer func() {
			if v := recover(); v != nil {
				done <- newPanicError(v)
			}
		}()
		done <- f()
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return newProblem(http.StatusServiceUnavailable, reasonTimeout, "the request took too long", ctx.Err())
	}
}

// recovered runs f and turns its panic into an error, so the outcome of a
// token operation is counted even then (recoverPanics covers the rest).
func recovered(f func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			err = newPanicError(v)
		}
	}()
	return f()
}

// noteUnavailable asks for an early readiness probe when the issuer says a
// dependency is down, so other requests start failing fast.
func (s *Server) noteUnavailable(err error) {
	if errors.Is(err, pstderr.Unavailable) {
		s.ready.request()
	}
}

// tokenRequest runs the checks every PST request shares — origin, readiness,
// crypto version — and returns the decoded Sec-Private-State-Token value.
func (s *Server) tokenRequest(c echo.Context, max int) ([]byte, error) {
	req := c.Request()
	c.Response().Header().Set(echo.HeaderCacheControl, "no-store")
	if err := s.checkOrigin(req); err != nil {
		return nil, err
	}
	if err := s.checkReady(); err != nil {
		return nil, err
	}
	if err := checkVersion(req); err != nil {
		return nil, err
	}
	return tokenHeader(req, max)
}

// counted runs a PST handler with panic recovery and counts its outcome.
func counted(vec *prometheus.CounterVec, success string, h func() error) error {
	err := recovered(h)
	outcome := success
	if err != nil {
		outcome = problemFrom(err).reason
	}
	vec.WithLabelValues(outcome).Inc()
	return err
}

func (s *Server) issuance(c echo.Context) error {
	return counted(s.metrics.issuance, "issued", func() error { return s.doIssuance(c) })
}

func (s *Server) doIssuance(c echo.Context) error {
	req := c.Request()
	ctx := req.Context()
	raw, err := s.tokenRequest(c, MaxIssueRequest)
	if err != nil {
		return err
	}
	batch := s.iss.BatchSize()
	if batch <= 0 {
		return pstderr.New(pstderr.Unavailable, "no batch size")
	}
	// The count is the message's first field (§4); the issuer validates
	// the rest. An unparsable count leaves the policy the whole batch.
	requested := batch
	if len(raw) >= 2 {
		if n := int(binary.BigEndian.Uint16(raw)); n > 0 && n < batch {
			requested = n
		}
	}
	release, err := s.admit(s.issueAdm, req)
	if err != nil {
		return err
	}
	defer func() { release() }()
	allowed, err := s.cfg.Policy.Allow(ctx, req, requested)
	if err != nil {
		return err
	}
	if allowed <= 0 {
		return kindProblem(pstderr.Denied, "issuance not allowed")
	}
	limit := min(batch, allowed)

	var resp []byte
	var issued int
	slot := release
	release = func() {} // the call gives the slot back when the work ends
	err = s.call(ctx, func() error {
		defer slot()
		var err error
		resp, issued, err = s.iss.Issue(ctx, raw, limit)
		return err
	})
	if err != nil {
		s.noteUnavailable(err)
		return err
	}
	if issued < 0 || issued > limit || len(resp) == 0 {
		return errIssuerContract
	}
	s.metrics.tokensIssued.Add(float64(issued))
	c.Response().Header().Set(HeaderToken, base64.StdEncoding.EncodeToString(resp))
	return c.NoContent(http.StatusOK)
}

func (s *Server) redemption(c echo.Context) error {
	return counted(s.metrics.redemptions, "redeemed", func() error { return s.doRedemption(c) })
}

func (s *Server) doRedemption(c echo.Context) error {
	req := c.Request()
	ctx := req.Context()
	raw, err := s.tokenRequest(c, MaxRedeemRequest)
	if err != nil {
		return err
	}
	if s.cfg.RedemptionPolicy != nil {
		if _, err := s.cfg.RedemptionPolicy.Allow(ctx, req, 1); err != nil {
			return err
		}
	}
	// The slot is held until the issuer's work ends, even if the request
	// gives up first: it measures work, not waiting clients.
	slot, err := s.admit(s.redeemAdm, req)
	if err != nil {
		return err
	}
	var record string
	err = s.call(ctx, func() error {
		defer slot()
		var err error
		record, err = s.iss.Redeem(ctx, raw)
		return err
	})
	if err != nil {
		s.noteUnavailable(err)
		return err
	}
	if !validHeaderValue(record) {
		return errIssuerContract
	}
	h := c.Response().Header()
	// The record goes out as is: Chromium stores the header value verbatim
	// and hands exactly that string to relying parties.
	h.Set(HeaderToken, record)
	if secs := int64(s.cfg.RedemptionLifetime.Seconds()); secs > 0 {
		h.Set(HeaderLifetime, strconv.FormatInt(secs, 10))
	}
	return c.NoContent(http.StatusOK)
}

// errIssuerContract: the issuer returned something its contract excludes.
var errIssuerContract = contractError("issuer broke its contract (issued count or empty response/record)")

type contractError string

func (e contractError) Error() string { return string(e) }

// validHeaderValue: non-empty visible ASCII, which a compact JWS always is.
func validHeaderValue(v string) bool {
	if v == "" || len(v) > 16<<10 {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x21 || v[i] > 0x7e {
			return false
		}
	}
	return true
}

// etagFor is a strong entity tag from the commitment id and a digest of
// the body (so a body change under the same id still changes the tag).
func etagFor(id uint64, body []byte) string {
	sum := sha256.Sum256(body)
	return `"` + strconv.FormatUint(id, 10) + "-" + hex.EncodeToString(sum[:8]) + `"`
}

// notModified implements If-None-Match (RFC 9110 §13.1.2, weak comparison).
func notModified(r *http.Request, etag string) bool {
	inm := r.Header.Get(headerIfNoneMatch)
	if inm == "" {
		return false
	}
	for _, t := range strings.Split(inm, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == etag {
			return true
		}
	}
	return false
}

// cacheable answers body with content type ct, ETag and public caching,
// or 304 when the client already holds it.
func cacheable(c echo.Context, ct, etag string, body []byte) error {
	h := c.Response().Header()
	h.Set(headerETag, etag)
	h.Set(echo.HeaderCacheControl, cacheControlPublic)
	if notModified(c.Request(), etag) {
		return c.NoContent(http.StatusNotModified)
	}
	if c.Request().Method == http.MethodHead {
		h.Set(echo.HeaderContentType, ct)
		h.Set(echo.HeaderContentLength, strconv.Itoa(len(body)))
		return c.NoContent(http.StatusOK)
	}
	// c.Blob sets Content-Type to exactly ct: no charset is appended.
	return c.Blob(http.StatusOK, ct, body)
}

func (s *Server) keyCommitment(c echo.Context) error {
	ctx := c.Request().Context()
	var body []byte
	var id uint64
	err := s.call(ctx, func() error {
		var err error
		body, id, err = s.iss.Commitment(ctx)
		return err
	})
	if err != nil {
		s.noteUnavailable(err)
		return err
	}
	if len(body) == 0 {
		return pstderr.New(pstderr.Unavailable, "no key commitment")
	}
	return cacheable(c, ContentTypeCommitment, etagFor(id, body), body)
}

func (s *Server) jwks(c echo.Context) error {
	ctx := c.Request().Context()
	var body []byte
	err := s.call(ctx, func() error {
		var err error
		body, err = s.iss.JWKS(ctx)
		return err
	})
	if err != nil {
		s.noteUnavailable(err)
		return err
	}
	if len(body) == 0 {
		return pstderr.New(pstderr.Unavailable, "no record keys")
	}
	return cacheable(c, ContentTypeJWKS, etagFor(0, body), body)
}

// readyz probes (shared, detached from the caller, answered from the cache
// when the probe is slow; see probeShared) and answers 200 or 503.
func (s *Server) readyz(c echo.Context) error {
	c.Response().Header().Set(echo.HeaderCacheControl, "no-store")
	err := s.ready.probeShared(c.Request().Context())
	if err == nil {
		err = s.ready.current() // draining
	}
	if err != nil {
		detail := "not ready"
		if _, ok := pstderr.KindOf(err); ok {
			detail = "not ready: " + pstderr.DetailOf(err)
		}
		reason := pstderr.Unavailable.String()
		if errors.Is(err, pstderr.DatabaseBehind) {
			reason = pstderr.DatabaseBehind.String()
		}
		return newProblem(http.StatusServiceUnavailable, reason, detail, err)
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
}
