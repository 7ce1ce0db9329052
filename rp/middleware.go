package rp

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
)

// outcomeKey is the context key under which Handler leaves its outcome.
type outcomeKey struct{}

type outcome struct {
	res Result
	err error
}

// HandlerOptions tunes Handler.
type HandlerOptions struct {
	// Required refuses requests without a valid record: 401 when the header
	// is absent, 403 when it is present but malformed or holds no record
	// that verifies. The body is an RFC 9457 problem document.
	Required bool
	// Skip, if set, lets requests for which it returns true through
	// untouched (no verification, nothing stored).
	Skip func(*http.Request) bool
}

// MiddlewareOptions tunes Middleware, the echo form of Handler.
type MiddlewareOptions struct {
	// Required: as HandlerOptions.Required.
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

// Handler is net/http middleware: it verifies Sec-Redemption-Record when
// present and stores the outcome in the request's context, where
// RecordsFromContext and ResultFromContext find it. Without Required it
// never refuses a request: the handler decides what a missing or invalid
// record means. Any router that takes func(http.Handler) http.Handler
// (net/http, chi, gorilla/mux …) can use it; echo users use Middleware.
func Handler(v *Verifier, opts HandlerOptions) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if opts.Skip != nil && opts.Skip(r) {
				next.ServeHTTP(w, r)
				return
			}
			values := r.Header.Values(HeaderName)
			if len(values) == 0 {
				if opts.Required {
					writeProblem(w, http.StatusUnauthorized, ProblemMissing,
						"Redemption record required",
						"the request carries no "+HeaderName+" header")
					return
				}
				next.ServeHTTP(w, r)
				return
			}
			res, err := v.VerifyHeader(r.Context(), values...)
			if opts.Required && len(res.Records) == 0 {
				writeProblem(w, http.StatusForbidden, ProblemInvalid, "Redemption record not valid", Reason(res, err))
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), outcomeKey{}, &outcome{res: res, err: err})))
		})
	}
}

// Middleware is Handler for echo: it verifies Sec-Redemption-Record when
// present and stores the outcome for RecordsFrom and ResultFrom (which read
// the request's context, as RecordsFromContext does).
func Middleware(v *Verifier, opts MiddlewareOptions) echo.MiddlewareFunc {
	h := Handler(v, HandlerOptions{Required: opts.Required})
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			if opts.Skipper != nil && opts.Skipper(c) {
				return next(c)
			}
			var nextErr error
			h(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
				c.SetRequest(r)
				nextErr = next(c)
			})).ServeHTTP(c.Response(), c.Request())
			return nextErr
		}
	}
}

// Reason is the short, stable text of why a header yielded no verified
// record: the header-level error if there is one, else each issuer's
// failure kind. A client learns why it was refused, never the verifier's
// internals (fetch errors, URLs, offsets) nor the record itself.
func Reason(res Result, err error) string {
	switch {
	case err != nil:
		return reason(err)
	case len(res.Failures) > 0:
		parts := make([]string, len(res.Failures))
		for i, f := range res.Failures {
			parts[i] = f.Issuer + ": " + reason(f.Err)
		}
		return strings.Join(parts, "; ")
	}
	return "no redemption record in " + HeaderName
}

// reason is the short stable text of an error kind.
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

func writeProblem(w http.ResponseWriter, status int, typ, title, detail string) {
	body, err := json.Marshal(struct {
		Type   string `json:"type"`
		Title  string `json:"title"`
		Status int    `json:"status"`
		Detail string `json:"detail"`
	}{typ, title, status, detail})
	if err != nil { // four strings and an int always marshal
		http.Error(w, http.StatusText(status), status)
		return
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// RecordsFromContext returns the verified records Handler stored for this
// request (nil if none, or if the middleware did not run).
func RecordsFromContext(ctx context.Context) []Record {
	res, _ := ResultFromContext(ctx)
	return res.Records
}

// ResultFromContext returns the whole outcome Handler stored: verified
// records, per-entry failures, and the header-level error
// (ErrMalformedHeader) if the header could not be parsed. Absent header:
// zero Result, nil.
func ResultFromContext(ctx context.Context) (Result, error) {
	o, _ := ctx.Value(outcomeKey{}).(*outcome)
	if o == nil {
		return Result{}, nil
	}
	return o.res, o.err
}

// RecordsFrom returns the verified records Middleware stored for this
// request (nil if none, or if the middleware did not run).
func RecordsFrom(c echo.Context) []Record { return RecordsFromContext(c.Request().Context()) }

// ResultFrom is ResultFromContext for echo.
func ResultFrom(c echo.Context) (Result, error) { return ResultFromContext(c.Request().Context()) }
