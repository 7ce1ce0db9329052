package rp

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
)

// contextKey is where Middleware leaves its outcome in the echo.Context.
const contextKey = "github.com/pstd/pstd/rp.outcome"

type outcome struct {
	res Result
	err error
}

// MiddlewareOptions tunes Middleware.
type MiddlewareOptions struct {
	// Required refuses requests without a valid record: 401 when the header
	// is absent, 403 when it is present but malformed or holds no record
	// that verifies. The body is an RFC 9457 problem document.
	Required bool
	// Skipper, if set, lets requests for which it returns true through
	// untouched (no verification, nothing stored).
	Skipper func(echo.Context) bool
}

// Problem types answered in Required mode.
const (
	ProblemMissing = "urn:pstd:rp:redemption-record-missing"
	ProblemInvalid = "urn:pstd:rp:redemption-record-invalid"
)

// Middleware verifies Sec-Redemption-Record when present and stores the
// outcome in the echo.Context for RecordsFrom and ResultFrom. Without
// Required it never refuses a request: the handler decides what a missing
// or invalid record means.
func Middleware(v *Verifier, opts MiddlewareOptions) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if opts.Skipper != nil && opts.Skipper(c) {
				return next(c)
			}
			values := c.Request().Header.Values(HeaderName)
			if len(values) == 0 {
				if opts.Required {
					return problem(c, http.StatusUnauthorized, ProblemMissing,
						"Redemption record required",
						"the request carries no "+HeaderName+" header")
				}
				return next(c)
			}
			res, err := v.VerifyHeader(c.Request().Context(), values...)
			c.Set(contextKey, &outcome{res: res, err: err})
			if opts.Required && len(res.Records) == 0 {
				detail := "no redemption record in " + HeaderName
				switch {
				case err != nil:
					detail = reason(err)
				case len(res.Failures) > 0:
					parts := make([]string, len(res.Failures))
					for i, f := range res.Failures {
						parts[i] = f.Issuer + ": " + reason(f.Err)
					}
					detail = strings.Join(parts, "; ")
				}
				return problem(c, http.StatusForbidden, ProblemInvalid, "Redemption record not valid", detail)
			}
			return next(c)
		}
	}
}

// reason is the short stable text of an error kind: a client learns why it
// was refused, not the verifier's internals (fetch errors, URLs, offsets).
func reason(err error) string {
	for _, k := range []error{
		ErrHeaderTooLarge, ErrMalformedHeader, ErrUntrustedIssuer, ErrMalformed, ErrBadAlgorithm,
		ErrWrongType, ErrUnknownKID, ErrBadSignature, ErrWrongIssuer, ErrExpired,
		ErrNotYetValid, ErrAudienceMismatch, ErrJWKSUnavailable,
	} {
		if errors.Is(err, k) {
			return strings.TrimPrefix(k.Error(), "rp: ")
		}
	}
	return "verification failed"
}

func problem(c echo.Context, status int, typ, title, detail string) error {
	body, err := json.Marshal(struct {
		Type   string `json:"type"`
		Title  string `json:"title"`
		Status int    `json:"status"`
		Detail string `json:"detail"`
	}{typ, title, status, detail})
	if err != nil {
		return err
	}
	return c.Blob(status, "application/problem+json", body)
}

// RecordsFrom returns the verified records Middleware stored for this
// request (nil if none, or if the middleware did not run).
func RecordsFrom(c echo.Context) []Record {
	o, _ := c.Get(contextKey).(*outcome)
	if o == nil {
		return nil
	}
	return o.res.Records
}

// ResultFrom returns the whole outcome Middleware stored: verified records,
// per-entry failures, and the header-level error (ErrMalformedHeader) if
// the header could not be parsed. Absent header: zero Result, nil.
func ResultFrom(c echo.Context) (Result, error) {
	o, _ := c.Get(contextKey).(*outcome)
	if o == nil {
		return Result{}, nil
	}
	return o.res, o.err
}
