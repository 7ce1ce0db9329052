package httpapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// Issuer is the PST issuer service behind the HTTP API.
type Issuer interface {
	// Commitment returns the key commitment JSON (docs/PROTOCOL.md, "Keys and the key commitment": the object keyed by protocol version) and its commitment id (changes whenever the key set changes).
	Commitment(ctx context.Context) (body []byte, id uint64, err error)
	// BatchSize is the commitment's batchsize.
	BatchSize() int
	// Issue signs a raw (base64-decoded) issue request, issuing at most max tokens; returns the raw issue response and how many were issued.
	Issue(ctx context.Context, request []byte, max int) (response []byte, issued int, err error)
	// Redeem checks a raw redemption request, durably records the redemption, and only then returns the redemption record (a compact JWS string).
	Redeem(ctx context.Context, request []byte) (record string, err error)
	// JWKS returns the JSON Web Key Set of the redemption-record keys.
	JWKS(ctx context.Context) ([]byte, error)
	// Ready reports whether the database, the HSM and the keys are usable.
	Ready(ctx context.Context) error
}

// Config configures the HTTP API. Zero values take the defaults noted.
type Config struct {
	// IssuerOrigin is the issuer's origin (e.g. "https://issuer.example").
	// It is always an allowed CORS origin.
	IssuerOrigin string
	// RedemptionLifetime is sent as Sec-Private-State-Token-Lifetime (whole
	// seconds) with each redemption record; 0 omits the header. It should
	// equal the records' own lifetime (their exp claim).
	RedemptionLifetime time.Duration

	// MaxHeaderBytes bounds the request line and headers (default 64 KiB: a
	// full 100-token issue request is under 13 KB of base64, plus cookies).
	MaxHeaderBytes int
	// BodyLimit bounds request bodies (default 64 KiB). The PST endpoints
	// read none; larger bodies are refused with 413.
	BodyLimit int64
	// RequestTimeout bounds the work on one request, issuer calls included
	// (default 10 s). A request that runs out answers 503.
	RequestTimeout time.Duration
	// ReadHeaderTimeout bounds how long a client may take to send its
	// headers (default 5 s): a slow client cannot hold a connection open.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes idle keep-alive connections (default 60 s).
	IdleTimeout time.Duration
	// ShutdownTimeout is how long Run lets in-flight requests finish once
	// its context ends (default 20 s); then the connections are closed.
	ShutdownTimeout time.Duration
	// ShutdownDelay is how long the listeners keep serving once the
	// context ends, with /readyz already failing, so a load balancer stops
	// sending new requests before connections close (default 0).
	ShutdownDelay time.Duration

	// TLS, if set, makes the public listener speak TLS (HTTP/2 offered by
	// ALPN). Its GetCertificate may reload certificates; see CertReloader.
	TLS *tls.Config
	// SeparateAdmin serves /metrics only on the admin handler
	// (AdminHandler), which the caller serves on its own listener; the
	// public listener then answers /metrics with 404. /healthz and
	// /readyz stay on both.
	SeparateAdmin bool

	// AllowedOrigins are the origins CORS lets read responses and that may
	// run issuance and redemption from a cross-origin page. Empty, or
	// containing "*", means any origin (the default; see doc.go).
	AllowedOrigins []string

	// Logger receives one JSON line per request (default: discard).
	Logger *slog.Logger
	// LogClientAddr adds the client address to request logs. Off by
	// default: addresses could link a client's issuance to its redemption.
	LogClientAddr bool

	// Registerer receives pstd's metrics (default: a private registry).
	// The global registry is never used.
	Registerer prometheus.Registerer
	// Gatherer is what /metrics serves (default: Registerer, when it is a
	// Gatherer, as a *prometheus.Registry is). With neither, no /metrics.
	Gatherer prometheus.Gatherer

	// Policy limits issuance (default AllowAll).
	Policy Policy
	// RedemptionPolicy, if set, limits redemptions (asked for 1 per
	// request) before the issuer does any work: no signature, no database
	// write for a refused one.
	RedemptionPolicy Policy

	// ReadyInterval is the period of the background readiness probe
	// (default 2 s); ReadyTimeout bounds one probe (default 1 s).
	ReadyInterval time.Duration
	ReadyTimeout  time.Duration
	// ReadyTimeouts is how many probes in a row must time out before a
	// ready replica reports not ready (default 3). A timeout without an
	// answer says nothing certain about the dependencies (a busy CPU delays
	// the probe too); an answer that is an error counts at once.
	ReadyTimeouts int

	// MaxConns caps the open connections of the public listener (default:
	// the descriptor limit less ReserveFDs and the admin listener's 64).
	MaxConns int
	// ReserveFDs is what the default MaxConns leaves for the database
	// pool and the PKCS#11 module (default DefaultReserveFDs).
	ReserveFDs int
	// MaxConnsPerAddr caps one client address's connections (an IPv6
	// client's /64; default DefaultMaxConnsPerAddr; < 0: no cap).
	// ConnCapExempt (trusted reverse proxies) are exempt.
	MaxConnsPerAddr int
	ConnCapExempt   []netip.Prefix

	// MaxIssuance and MaxRedemption bound the issuance and redemption
	// requests that run at once (defaults DefaultMaxIssuance and
	// DefaultMaxRedemption). MaxQueued more of each may wait up to
	// MaxQueueWait for a slot (defaults 8 × the route's limit, <0 none; and
	// DefaultMaxQueueWait). MaxIssuancePerClient bounds one client's
	// running and waiting issuance requests (default half the slots, at
	// least 1, so one client never holds them all; <0: no cap); MaxRedemptionPerClient the same
	// for redemption (default no cap). A request beyond them is refused at
	// once: 503 overloaded, Retry-After 1.
	MaxIssuance            int
	MaxRedemption          int
	MaxQueued              int
	MaxQueueWait           time.Duration
	MaxIssuancePerClient   int
	MaxRedemptionPerClient int
	// ClientKey names a request's client for the per-client caps (default:
	// ClientAddrKey of the TCP peer; behind proxies, ForwardedClientKey).
	ClientKey func(r *http.Request) string

	// Demo is reserved for the demo pages; the caller mounts them with
	// WithRoutes.
	Demo bool
}

// Defaults of the settings the binaries expose; they take these rather than
// repeating them.
const (
	DefaultRequestTimeout  = 10 * time.Second
	DefaultShutdownTimeout = 20 * time.Second
	DefaultRateWindow      = time.Minute
)

// DefaultRateLimit is the per-address issuance limit pstd serves with unless
// told otherwise (PSTD_RATE_LIMIT; 0 turns it off): a bucket of
// DefaultRateLimit full batches per client address (IPv6: its /64) per
// DefaultRateWindow, so 30 issuance requests of a whole batch a minute. Why
// 30:
//   - A browser issues rarely: it asks for a batch only when its store for
//     the issuer runs low, and Chromium keeps at most 500 tokens per issuer
//     and top-level site, so one browser makes a few issuance requests a
//     day. Far above that, 30 a minute refuses no real browser.
//   - Many browsers share one address: a home or office NAT, and a mobile
//     or carrier-grade NAT with hundreds of subscribers per IPv4 address.
//     A crowd that issues a few times a day each stays well under 30 a
//     minute, and its bursts fit the bucket; a much lower limit would
//     refuse them, and Chromium shows a refused issuance to the page only
//     as a failed one.
//   - It still bounds one address: 300 tokens a minute at batch 10 (about
//     0.1 s of CPU) instead of whatever it can send. Whether an address
//     deserves tokens at all is the issuance policy's decision (tickets or
//     the webhook), not this limit's.
//
// Behind a reverse proxy every client arrives from the proxy's address and
// would share one bucket: operators there set PSTD_TRUSTED_PROXIES, so the
// limit keys on the client's own address from X-Forwarded-For. The limit is
// per replica (docs/OPERATIONS.md).
const DefaultRateLimit = 30

// queueOf is the wait queue of a route with limit running: queued, or by
// default 8 × running; none when queued < 0.
func queueOf(queued, running int) int {
	switch {
	case queued < 0:
		return 0
	case queued == 0:
		return 8 * running
	}
	return queued
}

func (c *Config) setDefaults() {
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = 64 << 10
	}
	if c.BodyLimit <= 0 {
		c.BodyLimit = 64 << 10
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = 5 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 60 * time.Second
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Policy == nil {
		c.Policy = AllowAll{}
	}
	if c.ReadyInterval <= 0 {
		c.ReadyInterval = 2 * time.Second
	}
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = time.Second
	}
	if c.ReadyTimeouts <= 0 {
		c.ReadyTimeouts = 3
	}
	if c.ReserveFDs <= 0 {
		c.ReserveFDs = DefaultReserveFDs
	}
	if c.MaxConns <= 0 {
		c.MaxConns = connCapFor(DescriptorLimit(), c.ReserveFDs)
	}
	if c.MaxConnsPerAddr == 0 {
		c.MaxConnsPerAddr = DefaultMaxConnsPerAddr
	}
	if c.MaxIssuance <= 0 {
		c.MaxIssuance = DefaultMaxIssuance()
	}
	if c.MaxRedemption <= 0 {
		c.MaxRedemption = DefaultMaxRedemption()
	}
	if c.MaxQueueWait <= 0 {
		c.MaxQueueWait = DefaultMaxQueueWait
	}
	if c.MaxIssuancePerClient == 0 {
		c.MaxIssuancePerClient = max(1, c.MaxIssuance/2)
	}
	if c.ClientKey == nil {
		c.ClientKey = func(r *http.Request) string { return ClientAddrKey(r.RemoteAddr) }
	}
	if c.Registerer == nil {
		reg := prometheus.NewRegistry()
		c.Registerer = reg
		if c.Gatherer == nil {
			c.Gatherer = reg
		}
	}
	if c.Gatherer == nil {
		if g, ok := c.Registerer.(prometheus.Gatherer); ok {
			c.Gatherer = g
		}
	}
}

// Option changes a Server at construction.
type Option func(*Server)

// WithRoutes lets the caller mount more routes (the demo pages) on the
// server's echo instance; they get the same middleware (logging, recovery,
// limits, CORS and Permissions-Policy).
func WithRoutes(register func(e *echo.Echo)) Option {
	return func(s *Server) { s.extraRoutes = append(s.extraRoutes, register) }
}

// Server is pstd's HTTP API.
type Server struct {
	cfg         Config
	iss         Issuer
	echo        *echo.Echo
	admin       *echo.Echo // the probes and /metrics, for the admin listener
	metrics     *metrics
	ready       *readiness
	cors        corsPolicy
	routes      map[string]bool // route templates, for log and metric labels
	extraRoutes []func(*echo.Echo)
	inflight    sync.WaitGroup // issuer calls, including ones their request gave up on
	issueAdm    *admission
	redeemAdm   *admission
	conns       atomic.Pointer[connLimiter] // the public listener's, once serving
}

// New returns the HTTP API in front of iss. It starts no goroutine: Run
// (or WatchReadiness) starts the readiness probe. It panics only when the
// metrics cannot be registered (a programming error, such as a name clash
// with another collector).
func New(cfg Config, iss Issuer, opts ...Option) *Server {
	cfg.setDefaults()
	s := &Server{cfg: cfg, iss: iss, routes: map[string]bool{}}
	for _, o := range opts {
		o(s)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		panic(fmt.Sprintf("httpapi: registering metrics: %v", err))
	}
	s.metrics = m
	s.issueAdm = newAdmission(PathIssuance, cfg.MaxIssuance, queueOf(cfg.MaxQueued, cfg.MaxIssuance), max(cfg.MaxIssuancePerClient, 0), cfg.MaxQueueWait, m)
	s.redeemAdm = newAdmission(PathRedemption, cfg.MaxRedemption, queueOf(cfg.MaxQueued, cfg.MaxRedemption), max(cfg.MaxRedemptionPerClient, 0), cfg.MaxQueueWait, m)
	s.cors = newCORSPolicy(cfg.AllowedOrigins, cfg.IssuerOrigin)
	s.ready = newReadiness(iss, cfg.ReadyInterval, cfg.ReadyTimeout, cfg.ReadyTimeouts, s.metrics, func(ok bool, err error) {
		if ok {
			cfg.Logger.Info("ready")
		} else {
			cfg.Logger.Warn("not ready", slog.String("reason", reasonOf(err)), slog.String("detail", errString(err)))
		}
	})

	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.Logger.SetOutput(io.Discard)
	e.HTTPErrorHandler = func(err error, c echo.Context) {
		// Only reached if a middleware below the logger fails; the logger
		// normally answers errors itself.
		if !c.Response().Committed {
			_ = writeProblem(c, problemFrom(err))
		}
	}
	e.Use(s.requestLog, s.recoverPanics, s.securityHeaders, s.corsMiddleware, s.limits)
	s.echo = e
	s.registerRoutes()
	admin := echo.New()
	admin.HideBanner, admin.HidePort = true, true
	admin.Logger.SetOutput(io.Discard)
	admin.HTTPErrorHandler = e.HTTPErrorHandler
	admin.Use(s.requestLog, s.recoverPanics, s.securityHeaders)
	s.registerProbes(admin, true)
	s.admin = admin
	for _, r := range s.extraRoutes {
		r(e)
	}
	for _, r := range e.Routes() {
		s.routes[r.Path] = true
	}
	return s
}

// AdminHandler serves /healthz, /readyz and /metrics, for a listener of
// their own that only the monitoring network reaches (Config.SeparateAdmin).
func (s *Server) AdminHandler() http.Handler { return s.admin }

// Handler is the API as an http.Handler.
func (s *Server) Handler() http.Handler { return s.echo }

// CheckReady runs the readiness probe now and caches its result (nil:
// ready). Issuance and redemption answer 503 until a probe has succeeded.
func (s *Server) CheckReady(ctx context.Context) error { return s.ready.probe(ctx) }

// WatchReadiness probes readiness at once, then every ReadyInterval and
// whenever a request finds the server not ready, until ctx ends. Run calls
// it; callers that serve Handler themselves should run it too.
func (s *Server) WatchReadiness(ctx context.Context) { s.ready.watch(ctx) }

// Run listens on addr (and on adminAddr for AdminHandler, unless it is
// empty) and serves until ctx ends, then shuts down gracefully.
func (s *Server) Run(ctx context.Context, addr, adminAddr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	var admin net.Listener
	if adminAddr != "" {
		if admin, err = net.Listen("tcp", adminAddr); err != nil {
			ln.Close()
			return fmt.Errorf("admin listener: %w", err)
		}
	}
	return s.ServeAll(ctx, ln, admin)
}

// Serve serves on ln until ctx ends; see ServeAll.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error { return s.ServeAll(ctx, ln, nil) }

// ServeAll serves the API on ln (with TLS when Config.TLS is set) and, if
// admin is not nil, AdminHandler on admin, until ctx ends. Then it reports
// not-ready, keeps serving for ShutdownDelay so load balancers notice, stops
// accepting connections and lets in-flight requests finish for up to
// ShutdownTimeout before closing what is left. It returns nil after a clean
// shutdown.
//
// Both listeners are held under connection caps (see connlimit.go).
func (s *Server) ServeAll(ctx context.Context, ln, admin net.Listener) error {
	pub := newConnLimiter(ln, s.cfg.MaxConns, s.cfg.MaxConnsPerAddr, s.cfg.ConnCapExempt, s.metrics, "public")
	s.conns.Store(pub)
	ln = pub
	if admin != nil {
		admin = newConnLimiter(admin, adminConns, -1, nil, s.metrics, "admin")
	}
	s.cfg.Logger.Info("connection caps", slog.Int("max_conns", s.cfg.MaxConns), slog.Int("max_conns_per_addr", s.cfg.MaxConnsPerAddr),
		slog.Int("max_issuance", s.cfg.MaxIssuance), slog.Int("max_redemption", s.cfg.MaxRedemption), slog.Int("max_issuance_per_client", s.cfg.MaxIssuancePerClient))
	srv := s.httpServer(ctx, s.echo)
	var adminSrv *http.Server
	if admin != nil {
		adminSrv = s.httpServer(ctx, s.AdminHandler())
	}
	if s.cfg.TLS != nil {
		srv.TLSConfig = s.cfg.TLS.Clone()
	}
	probeCtx, stopProbe := context.WithCancel(ctx)
	defer stopProbe()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.ready.watch(probeCtx) }()
	defer wg.Wait()

	serveErr := make(chan error, 2)
	useTLS := srv.TLSConfig != nil // read before Serve, which writes TLSConfig (HTTP/2 set-up)
	go func() {
		if useTLS {
			serveErr <- srv.ServeTLS(ln, "", "") // certificates come from TLSConfig
		} else {
			serveErr <- srv.Serve(ln)
		}
	}()
	s.cfg.Logger.Info("serving", slog.String("listen", ln.Addr().String()), slog.Bool("tls", useTLS))
	if adminSrv != nil {
		go func() { serveErr <- adminSrv.Serve(admin) }()
		s.cfg.Logger.Info("serving admin endpoints", slog.String("listen", admin.Addr().String()))
	}

	select {
	case err := <-serveErr:
		srv.Close()
		if adminSrv != nil {
			adminSrv.Close()
		}
		return err
	case <-ctx.Done():
	}
	s.ready.draining.Store(true)
	s.metrics.setReady(false)
	if d := s.cfg.ShutdownDelay; d > 0 {
		s.cfg.Logger.Info("not ready; serving on while load balancers notice", slog.Duration("delay", d))
		time.Sleep(d)
	}
	s.cfg.Logger.Info("shutting down", slog.Duration("grace", s.cfg.ShutdownTimeout))
	shutCtx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	servers := []*http.Server{srv}
	if adminSrv != nil {
		servers = append(servers, adminSrv)
	}
	var err error
	for _, hs := range servers {
		if serr := hs.Shutdown(shutCtx); serr != nil {
			_ = hs.Close()
			if err == nil {
				err = fmt.Errorf("graceful shutdown: %w", serr)
			}
		}
	}
	for range servers {
		if serr := <-serveErr; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
			err = serr
		}
	}
	// A request that timed out leaves its issuer call running; the caller
	// wipes keys once Serve returns, so wait for those calls too, within
	// what is left of the grace period.
	calls := make(chan struct{})
	go func() { s.inflight.Wait(); close(calls) }()
	select {
	case <-calls:
	case <-shutCtx.Done():
		s.cfg.Logger.Warn("issuer calls still running at the end of the shutdown grace period")
	}
	s.cfg.Logger.Info("stopped")
	return err
}

func (s *Server) httpServer(ctx context.Context, h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		// The PST endpoints have no body to read: the whole request is due
		// shortly after its headers.
		ReadTimeout:    s.cfg.ReadHeaderTimeout + s.cfg.RequestTimeout,
		WriteTimeout:   s.cfg.RequestTimeout + 5*time.Second,
		IdleTimeout:    s.cfg.IdleTimeout,
		MaxHeaderBytes: s.cfg.MaxHeaderBytes,
		ErrorLog:       slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn),
		BaseContext:    func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
}

// routeLabel is the route template of c, or "unmatched" (so neither logs
// nor metric labels ever carry a raw, client-chosen path).
func (s *Server) routeLabel(c echo.Context) string {
	if p := c.Path(); s.routes[p] && p != "" {
		return p
	}
	return "unmatched"
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func reasonOf(err error) string { return problemFrom(err).reason }

// originAllowedAll reports whether any origin is allowed.
func originAllowedAll(list []string) bool {
	if len(list) == 0 {
		return true
	}
	for _, o := range list {
		if strings.TrimSpace(o) == "*" {
			return true
		}
	}
	return false
}
