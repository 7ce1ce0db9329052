package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/pstd/pstd/internal/pstderr"
)

// ProblemTypePrefix starts every problem document's "type": the rest is the
// stable reason, pstderr.Kind's name or one of the HTTP-level reasons below.
const ProblemTypePrefix = "urn:pstd:problem:"

// HTTP-level reasons that have no pstderr.Kind.
const (
	reasonNotFound         = "not-found"
	reasonMethodNotAllowed = "method-not-allowed"
	reasonBodyTooLarge     = "body-too-large"
	reasonTimeout          = "timeout"
)

// Headers echo has no constant for.
const (
	headerETag        = "ETag"
	headerIfNoneMatch = "If-None-Match"
)

// contentTypeProblem is RFC 9457's media type.
const contentTypeProblem = "application/problem+json"

// Problem is an RFC 9457 problem document. Every refusal pstd answers
// carries one; none carries a Sec-Private-State-Token header.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Detail string `json:"detail,omitempty"`
	Status int    `json:"status"`

	reason     string        // stable reason, for logs and metrics
	retryAfter time.Duration // Retry-After for 429 and (optionally) 503
	cause      error         // internal cause, for the log only
}

func (p *Problem) Error() string { return p.reason + ": " + p.Detail }

// Unwrap exposes the cause to errors.Is/As (never to the client).
func (p *Problem) Unwrap() error { return p.cause }

// Reason is the problem's stable machine-readable reason (the suffix of Type).
func (p *Problem) Reason() string { return p.reason }

// Status maps an error kind to its HTTP status. It is the one place that
// does so.
//
// Every "the client sent something unusable" kind is 400, never 422: the
// protocol messages travel in request headers rather than in a request body,
// so there is no enclosed representation whose content could be "well-formed
// but unprocessable" in RFC 9110's sense, and one status for the whole family
// keeps dashboards and clients simple. The problem "type" tells them apart.
func Status(k pstderr.Kind) int {
	switch k {
	case pstderr.Malformed, pstderr.BadPoint, pstderr.BadCount, pstderr.Unsupported,
		pstderr.UnknownKey, pstderr.InvalidToken, pstderr.BadProof:
		return http.StatusBadRequest
	case pstderr.AlreadyRedeemed:
		return http.StatusConflict
	case pstderr.Denied:
		return http.StatusForbidden
	case pstderr.RateLimited:
		return http.StatusTooManyRequests
	case pstderr.Unavailable, pstderr.DatabaseBehind:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// RetryAfterError is implemented by errors that know when the client may try
// again (a rate limit or a temporary outage). Its value becomes Retry-After.
type RetryAfterError interface {
	error
	RetryAfter() time.Duration
}

// RateLimitedError is a pstderr.RateLimited refusal that knows when a retry
// may succeed. errors.Is(err, pstderr.RateLimited) holds for it.
type RateLimitedError struct {
	Err   *pstderr.Error
	After time.Duration
}

func (e *RateLimitedError) Error() string { return e.Err.Error() }

// RetryAfter implements RetryAfterError.
func (e *RateLimitedError) RetryAfter() time.Duration { return e.After }

// Unwrap returns the *pstderr.Error, so errors.Is and pstderr.KindOf see the kind.
func (e *RateLimitedError) Unwrap() error { return e.Err }

// defaultRetryAfter is sent with a 429 whose cause gave no better hint.
const defaultRetryAfter = 60 * time.Second

// problemFrom turns any error into the problem the client sees. Only
// pstderr details (client-safe by contract) reach the client; a plain error
// becomes "internal error" and keeps its cause for the log.
func problemFrom(err error) *Problem {
	var p *Problem
	if errors.As(err, &p) {
		return p
	}
	var he *echo.HTTPError
	if errors.As(err, &he) {
		return httpProblem(he)
	}
	k, ok := pstderr.KindOf(err)
	if !ok && errors.Is(err, context.DeadlineExceeded) {
		// The request's own deadline ran out while the issuer worked.
		return newProblem(http.StatusServiceUnavailable, reasonTimeout, "the request took too long", err)
	}
	if !ok || k.String() == pstderr.InternalReason { // a plain error, or no kind of the catalogue
		return newProblem(http.StatusInternalServerError, pstderr.InternalReason, "internal error", err)
	}
	p = newProblem(Status(k), k.String(), pstderr.DetailOf(err), err)
	if k == pstderr.RateLimited {
		p.retryAfter = defaultRetryAfter
	}
	var ra RetryAfterError
	if errors.As(err, &ra) && ra.RetryAfter() > 0 {
		p.retryAfter = ra.RetryAfter()
	}
	return p
}

// kindProblem is a problem of pstderr kind k with a client-safe detail.
func kindProblem(k pstderr.Kind, detail string) *Problem {
	return newProblem(Status(k), k.String(), detail, nil)
}

func newProblem(status int, reason, detail string, cause error) *Problem {
	title := http.StatusText(status)
	if title == "" {
		title = "Error"
	}
	return &Problem{
		Type:   ProblemTypePrefix + reason,
		Title:  title,
		Detail: detail,
		Status: status,
		reason: reason,
		cause:  cause,
	}
}

// httpProblem maps echo's router and framework errors.
func httpProblem(he *echo.HTTPError) *Problem {
	switch he.Code {
	case http.StatusNotFound:
		return newProblem(he.Code, reasonNotFound, "no such resource", nil)
	case http.StatusMethodNotAllowed:
		return newProblem(he.Code, reasonMethodNotAllowed, "method not allowed", nil)
	case http.StatusRequestEntityTooLarge:
		return newProblem(he.Code, reasonBodyTooLarge, "request body too large", nil)
	}
	if he.Code >= 400 && he.Code < 500 {
		return newProblem(he.Code, pstderr.Malformed.String(), http.StatusText(he.Code), he)
	}
	return newProblem(http.StatusInternalServerError, pstderr.InternalReason, "internal error", he)
}

// writeProblem answers with p. It strips every PST response header first: a
// refusal must never carry one, or Chromium would take it for a success.
func writeProblem(c echo.Context, p *Problem) error {
	h := c.Response().Header()
	h.Del(HeaderToken)
	h.Del(HeaderLifetime)
	h.Del(headerETag)
	h.Set(echo.HeaderCacheControl, "no-store")
	h.Set(echo.HeaderContentType, contentTypeProblem)
	if p.retryAfter > 0 {
		secs := int64((p.retryAfter + time.Second - 1) / time.Second)
		h.Set(echo.HeaderRetryAfter, strconv.FormatInt(secs, 10))
	}
	body, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encoding problem: %w", err)
	}
	if c.Request().Method == http.MethodHead {
		return c.NoContent(p.Status)
	}
	return c.Blob(p.Status, contentTypeProblem, body)
}
