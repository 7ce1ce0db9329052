// Package demo serves pstd's demo (pstd serve --demo): the issuer's page,
// which asks the browser for tokens, on the issuer's origin; and a
// relying-party site on a second listener, another origin and another site,
// whose page has the browser redeem a token at the issuer and send the
// record to its own server, which verifies it with package rp. Each failure
// the pages can meet is explained in a sentence (see static/pst.js). Off by
// default: a production issuer serves only its well-known endpoints.
package demo

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/pstd/pstd/httpapi"
	"github.com/pstd/pstd/rp"
)

//go:embed static
var static embed.FS

// Config is what the demo pages are told about the deployment.
type Config struct {
	IssuerOrigin string        // the issuer's origin, as in its key commitment
	RPOrigin     string        // the relying party's origin ("" if none is served)
	RateLimit    int           // issuance requests per address per RateWindow; 0: none
	RateWindow   time.Duration // window of the rate limit
	// Refusals, if set, tells the issuer page whether its address is being
	// rate limited (the browser hides the issuer's 429 from the page).
	Refusals *Refusals
}

// pageConfig is config.json, read by pst.js.
type pageConfig struct {
	Issuer     string `json:"issuer"`
	RP         string `json:"rp,omitempty"`
	RateLimit  int    `json:"rate_limit"`
	RateWindow string `json:"rate_window"`
}

func (c Config) page() pageConfig {
	return pageConfig{Issuer: strings.TrimRight(c.IssuerOrigin, "/"), RP: strings.TrimRight(c.RPOrigin, "/"),
		RateLimit: c.RateLimit, RateWindow: shortDuration(c.RateWindow)}
}

// shortDuration drops the zero tails of a Duration's text: 1h, not 1h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func files() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree always has static/
	}
	return sub
}

// issuerFiles and rpFiles are what each origin serves of static/.
var (
	issuerFiles = []string{"index.html", "frame.html", "pst.js", "style.css"}
	rpFiles     = []string{"rp.html", "pst.js", "style.css"}
)

// Register mounts the issuer's demo pages under /demo/ on e.
func Register(e *echo.Echo, cfg Config) {
	fileServer := http.FileServer(http.FS(files()))
	e.GET("/demo", func(c echo.Context) error { return c.Redirect(http.StatusFound, "/demo/") })
	e.GET("/demo/config.json", func(c echo.Context) error {
		c.Response().Header().Set(echo.HeaderCacheControl, "no-store")
		return c.JSON(http.StatusOK, cfg.page())
	})
	e.GET("/demo/diagnosis", func(c echo.Context) error {
		c.Response().Header().Set(echo.HeaderCacheControl, "no-store")
		var d diagnosis
		if cfg.Refusals != nil {
			d.RateLimitedSeconds = cfg.Refusals.limitedFor(c.Request())
		}
		return c.JSON(http.StatusOK, d)
	})
	e.GET("/demo/*", echo.WrapHandler(serveOnly(issuerFiles, http.StripPrefix("/demo", fileServer))))
}

// diagnosis is what the issuer page learns about its own address.
type diagnosis struct {
	// RateLimitedSeconds is how long this address is still refused
	// issuance by the rate limit (0: it is not).
	RateLimitedSeconds int `json:"rate_limited_seconds"`
}

// RelyingParty returns the demo relying party's site: its page at /, and
// /verify, which accepts a request only with a redemption record of the
// issuer that was redeemed for this site (rp.Handler, Required). v must
// trust cfg.IssuerOrigin and accept cfg.RPOrigin as its audience.
func RelyingParty(cfg Config, v *rp.Verifier) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /verify", rp.Handler(v, rp.HandlerOptions{Required: true})(http.HandlerFunc(verified)))
	mux.HandleFunc("GET /config.json", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, cfg.page())
	})
	fileServer := http.FileServer(http.FS(files()))
	mux.Handle("GET /", serveOnly(rpFiles, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/" {
			http.ServeFileFS(w, r, files(), "rp.html")
			return
		}
		fileServer.ServeHTTP(w, r)
	})))
	return securityHeaders(mux)
}

// VerifiedRecord is what the relying-party page shows of a verified record.
type VerifiedRecord struct {
	Issuer   string    `json:"issuer"`
	KeyID    uint32    `json:"key_id"`
	RecordID string    `json:"record_id"`
	Audience string    `json:"audience"`
	IssuedAt time.Time `json:"issued_at"`
	Expiry   time.Time `json:"expiry"`
}

func verified(w http.ResponseWriter, r *http.Request) {
	out := []VerifiedRecord{}
	for _, rec := range rp.RecordsFromContext(r.Context()) {
		out = append(out, VerifiedRecord{Issuer: rec.Issuer, KeyID: rec.KeyID, RecordID: rec.RecordID,
			Audience: rec.Audience, IssuedAt: rec.IssuedAt, Expiry: rec.Expiry})
	}
	writeJSON(w, map[string]any{"verified": out})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(v)
}

// serveOnly serves the listed files (and "/", the directory's index) and
// answers 404 for anything else, so neither origin lists the embedded
// tree or serves the other's pages.
func serveOnly(names []string, h http.Handler) http.Handler {
	allowed := map[string]bool{"/": true}
	for _, n := range names {
		allowed["/"+n] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		if strings.HasPrefix(p, "/demo/") {
			p = strings.TrimPrefix(p, "/demo")
		}
		if !allowed[p] {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

// securityHeaders are the relying-party site's: its page may redeem tokens
// and send records (Permissions-Policy), and nothing sniffs its types.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Permissions-Policy", "private-state-token-redemption=(self)")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		h.ServeHTTP(w, r)
	})
}

// Refusals wraps the issuer's Policy and remembers, in memory and only while
// it lasts, which client addresses the rate limit refuses, so the demo page
// can tell "rate limited" from "the browser rejected the tokens": Chromium
// gives the page the same OperationError for both.
type Refusals struct {
	next httpapi.Policy
	key  func(*http.Request) string
	now  func() time.Time

	mu    sync.Mutex
	until map[string]time.Time
}

// maxRefusals bounds the addresses Refusals holds.
const maxRefusals = 4096

// NewRefusals wraps next; key names a request's client as next's rate
// limit does (httpapi.ClientAddrKey of RemoteAddr, or ForwardedClientKey).
func NewRefusals(next httpapi.Policy, key func(*http.Request) string) *Refusals {
	return &Refusals{next: next, key: key, now: time.Now, until: map[string]time.Time{}}
}

// Allow implements httpapi.Policy.
func (f *Refusals) Allow(ctx context.Context, r *http.Request, requested int) (int, error) {
	n, err := f.next.Allow(ctx, r, requested)
	var rl *httpapi.RateLimitedError
	if errors.As(err, &rl) {
		f.mu.Lock()
		defer f.mu.Unlock()
		now := f.now()
		if len(f.until) >= maxRefusals {
			for k, t := range f.until {
				if !t.After(now) {
					delete(f.until, k)
				}
			}
		}
		if len(f.until) < maxRefusals {
			f.until[f.key(r)] = now.Add(rl.After)
		}
	}
	return n, err
}

// limitedFor is how many more seconds r's client is refused (0: not).
func (f *Refusals) limitedFor(r *http.Request) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := f.key(r)
	t, ok := f.until[k]
	if !ok {
		return 0
	}
	left := t.Sub(f.now())
	if left <= 0 {
		delete(f.until, k)
		return 0
	}
	return int((left + time.Second - 1) / time.Second)
}

// StartRelyingParty listens on addr and serves RelyingParty there until ctx
// ends. Its origin is http://HOST:PORT of the listener (an unspecified host
// becomes 127.0.0.1), which is another site than a localhost issuer; it is
// returned, and cfg.RPOrigin is ignored. Records are verified against the
// issuer's JWKS at jwksURL ("" means the issuer origin's own) and must have
// been redeemed for this origin. done yields Serve's end (nil after ctx).
func StartRelyingParty(ctx context.Context, addr string, cfg Config, jwksURL string) (origin string, done <-chan error, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("demo relying party: %w", err)
	}
	origin = originOf(ln.Addr().(*net.TCPAddr), addr)
	v, err := rp.NewVerifier(rp.Config{
		Issuers:   map[string]string{strings.TrimRight(cfg.IssuerOrigin, "/"): jwksURL},
		Audiences: []string{origin},
	})
	if err != nil {
		ln.Close()
		return "", nil, err
	}
	cfg.RPOrigin = origin
	srv := &http.Server{Handler: RelyingParty(cfg, v), ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute}
	ch := make(chan error, 1)
	go func() {
		err := srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		ch <- err
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return origin, ch, nil
}

// originOf is the http origin of a listener on addr.
func originOf(tcp *net.TCPAddr, addr string) string {
	host, _, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(tcp.Port))
}
