package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/pstd/pstd/internal/pstderr"
)

// Keys of values the handlers leave in the echo context for the log line.
const (
	ctxReason    = "pstd.reason"
	ctxCause     = "pstd.cause"
	ctxRequestID = "pstd.request_id"
)

// HeaderRequestID is honoured when sane, except on the issuance and
// redemption routes, and always echoed back.
const HeaderRequestID = "X-Request-Id"

// saneRequestID accepts 1–64 characters of [A-Za-z0-9._:-]; anything else
// is replaced by a random id, so logs cannot be injected into.
func saneRequestID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		b := id[i]
		switch {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9',
			b == '.', b == '_', b == ':', b == '-':
		default:
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// requestLog is the outermost middleware: it assigns the request id, turns
// a handler's error into the problem response (so it knows the final status
// and reason), records metrics and writes one JSON log line. It logs no
// header values, no query string, no tokens or records and, unless
// LogClientAddr, no client address.
func (s *Server) requestLog(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		req := c.Request()
		// On the token routes the id is always ours: one chosen by the
		// client (or a page embedding it) would be a correlator of its
		// choosing written next to issuances and redemptions.
		id := req.Header.Get(HeaderRequestID)
		if p := req.URL.Path; p == PathIssuance || p == PathRedemption || !saneRequestID(id) {
			id = newRequestID()
		}
		c.Set(ctxRequestID, id)
		c.Response().Header().Set(HeaderRequestID, id)

		if err := next(c); err != nil {
			p := problemFrom(err)
			if p.cause != nil && p.Status >= 500 {
				c.Set(ctxCause, p.cause)
			}
			c.Set(ctxReason, p.reason)
			if !c.Response().Committed {
				if werr := writeProblem(c, p); werr != nil {
					c.Set(ctxCause, werr)
				}
			}
		}

		status := c.Response().Status
		route := s.routeLabel(c)
		elapsed := time.Since(start)
		s.metrics.duration.WithLabelValues(route, strconv.Itoa(status)).Observe(elapsed.Seconds())

		attrs := []slog.Attr{
			slog.String("request_id", id),
			slog.String("method", sanitizeMethod(req.Method)),
			slog.String("route", route),
			slog.Int("status", status),
			slog.Float64("latency_ms", float64(elapsed.Microseconds())/1000),
		}
		reason, _ := c.Get(ctxReason).(string)
		if reason != "" {
			attrs = append(attrs, slog.String("reason", reason))
		}
		if s.cfg.LogClientAddr {
			attrs = append(attrs, slog.String("client_addr", req.RemoteAddr))
		}
		level := slog.LevelInfo
		if (route == PathHealthz || route == PathReadyz || route == PathMetrics) && status < 500 {
			// Load balancers and scrapers poll these; at info they would
			// drown the lines that matter. A failing /readyz is a 503,
			// so it still shows.
			level = slog.LevelDebug
		}
		if cause, ok := c.Get(ctxCause).(error); ok && cause != nil {
			level = slog.LevelError
			attrs = append(attrs, slog.String("error", cause.Error()))
			if pe, ok := cause.(*panicError); ok {
				attrs = append(attrs, slog.String("stack", pe.stack))
			}
		}
		s.cfg.Logger.LogAttrs(req.Context(), level, "request", attrs...)
		return nil
	}
}

// sanitizeMethod keeps a method name out of the log unless it is a known one.
func sanitizeMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "other"
}

// panicError is a recovered panic, kept with its stack for the log.
type panicError struct {
	value any
	stack string
}

func (p *panicError) Error() string { return fmt.Sprintf("panic: %v", p.value) }

func newPanicError(v any) *panicError {
	return &panicError{value: v, stack: string(debug.Stack())}
}

// recoverPanics turns a panic in a handler into a 500 problem and a log
// line; the process goes on. http.ErrAbortHandler is re-raised: it is how
// a handler deliberately aborts a response.
func (s *Server) recoverPanics(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				err = newPanicError(v)
			}
		}()
		return next(c)
	}
}

// securityHeaders sets the headers every response carries.
//
// Permissions-Policy delegates PST issuance and redemption to every origin
// for documents the issuer serves (its own pages, e.g. the demo frame), so
// those pages keep working when a partner site embeds them in an iframe
// with allow="private-state-token-issuance; private-state-token-redemption".
// On non-document responses the header has no effect.
func (s *Server) securityHeaders(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		h := c.Response().Header()
		h.Set("Permissions-Policy", "private-state-token-issuance=*, private-state-token-redemption=*")
		h.Set(echo.HeaderXContentTypeOptions, "nosniff")
		return next(c)
	}
}

// reasonTransferEncoding refuses a request body in Transfer-Encoding.
const reasonTransferEncoding = "transfer-encoding"

// limits bounds the request body and the time a handler may work.
//
// A request with a Transfer-Encoding is refused (400) and its connection
// closed: pstd's endpoints read no body, so only a smuggling attempt sends
// one that way, and one with Content-Length as well (which Go's server
// resolves by dropping Content-Length before the handler sees it) might
// have been framed differently by a proxy in front. Closing the connection
// leaves no unread bytes to be taken for the next request.
func (s *Server) limits(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		if len(req.TransferEncoding) > 0 {
			c.Response().Header().Set(echo.HeaderConnection, "close")
			req.Close = true
			return newProblem(http.StatusBadRequest, reasonTransferEncoding, "Transfer-Encoding request bodies are not accepted", nil)
		}
		if req.ContentLength > s.cfg.BodyLimit {
			return echo.NewHTTPError(http.StatusRequestEntityTooLarge)
		}
		if req.Body != nil && req.Body != http.NoBody {
			req.Body = http.MaxBytesReader(c.Response(), req.Body, s.cfg.BodyLimit)
		}
		ctx, cancel := context.WithTimeout(req.Context(), s.cfg.RequestTimeout)
		defer cancel()
		c.SetRequest(req.WithContext(ctx))
		return next(c)
	}
}

// corsPolicy is the CORS configuration: either any origin, or a set.
type corsPolicy struct {
	any     bool
	origins map[string]bool
}

func newCORSPolicy(list []string, issuerOrigin string) corsPolicy {
	p := corsPolicy{any: originAllowedAll(list), origins: map[string]bool{}}
	for _, o := range list {
		if o = strings.TrimRight(strings.TrimSpace(o), "/"); o != "" && o != "*" {
			p.origins[strings.ToLower(o)] = true
		}
	}
	if issuerOrigin != "" {
		p.origins[strings.ToLower(strings.TrimRight(issuerOrigin, "/"))] = true
	}
	return p
}

func (p corsPolicy) allowed(origin string) bool {
	return p.any || p.origins[strings.ToLower(origin)]
}

// checkOrigin refuses an issuance or redemption request from a
// cross-origin page that AllowedOrigins does not list, so that no token is
// issued or record returned to it. Requests without Origin (non-browser
// clients) pass.
func (s *Server) checkOrigin(r *http.Request) error {
	if o := r.Header.Get(echo.HeaderOrigin); o != "" && !s.cors.allowed(o) {
		return kindProblem(pstderr.Denied, "origin not allowed")
	}
	return nil
}

// CORS header values.
var (
	corsExposeHeaders = strings.Join([]string{HeaderToken, HeaderLifetime, HeaderRequestID, echo.HeaderRetryAfter}, ", ")
	corsAllowHeaders  = strings.Join([]string{HeaderToken, HeaderCryptoVersion}, ", ")
)

// corsMiddleware answers preflights and sets Access-Control-Allow-Origin.
// Any origin: "*" (no credentials are involved). A set of origins: the
// request's Origin echoed when listed, with Vary: Origin; a cross-origin
// page not listed cannot read responses (and checkOrigin refuses its
// issuance and redemption requests).
func (s *Server) corsMiddleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		h := c.Response().Header()
		origin := req.Header.Get(echo.HeaderOrigin)
		if !s.cors.any {
			h.Add(echo.HeaderVary, echo.HeaderOrigin)
		}
		if origin == "" {
			return next(c)
		}
		ok := s.cors.allowed(origin)
		if ok {
			if s.cors.any {
				h.Set(echo.HeaderAccessControlAllowOrigin, "*")
			} else {
				h.Set(echo.HeaderAccessControlAllowOrigin, origin)
			}
			h.Set(echo.HeaderAccessControlExposeHeaders, corsExposeHeaders)
		}
		if req.Method == http.MethodOptions && req.Header.Get(echo.HeaderAccessControlRequestMethod) != "" {
			if !ok {
				return kindProblem(pstderr.Denied, "origin not allowed")
			}
			h.Add(echo.HeaderVary, echo.HeaderAccessControlRequestMethod)
			h.Add(echo.HeaderVary, echo.HeaderAccessControlRequestHeaders)
			h.Set(echo.HeaderAccessControlAllowMethods, "GET, HEAD, POST")
			h.Set(echo.HeaderAccessControlAllowHeaders, corsAllowHeaders)
			h.Set(echo.HeaderAccessControlMaxAge, "600")
			return c.NoContent(http.StatusNoContent)
		}
		return next(c)
	}
}
