// Command pstd is the Private State Token issuer service.
//
//	pstd serve     serve the issuer's well-known endpoints
//	pstd migrate   apply database migrations
//
// Every setting is a flag and a PSTD_* environment variable; see README.md.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/peterbourgon/ff/v3"
	"github.com/peterbourgon/ff/v3/ffcli"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/labstack/echo/v4"

	"github.com/pstd/pstd/cmd/internal/wiring"
	"github.com/pstd/pstd/demo"
	"github.com/pstd/pstd/httpapi"
	"github.com/pstd/pstd/internal/cli"
	"github.com/pstd/pstd/internal/secmem"
	"github.com/pstd/pstd/internal/version"
	"github.com/pstd/pstd/rp"
	"github.com/pstd/pstd/signer"
)

func main() {
	// Before anything else: secrets leave the kernel's copy of the
	// environment (a re-execution), and the process stops being dumpable.
	if err := wiring.SecureProcess(); err != nil {
		fmt.Fprintln(os.Stderr, "pstd:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal, the default action again: a second one ends
	// the process at once, should the graceful shutdown hang.
	go func() { <-ctx.Done(); stop() }()
	os.Exit(cli.Run(ctx, root(), os.Args[1:], os.Stderr))
}

func newLogger(level string) *slog.Logger {
	l, err := wiring.ParseLogLevel(level)
	if err != nil {
		l = slog.LevelInfo // ValidateServe reports the bad value
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

func root() *ffcli.Command {
	var s wiring.Settings
	serveFS := flag.NewFlagSet("pstd serve", flag.ContinueOnError)
	s.Register(serveFS, wiring.All)
	var m wiring.Settings
	migrateFS := flag.NewFlagSet("pstd migrate", flag.ContinueOnError)
	m.Register(migrateFS, wiring.Database|wiring.Logging)
	rootFS := flag.NewFlagSet("pstd", flag.ContinueOnError)
	showVersion := rootFS.Bool("version", false, "print the version and exit")
	opts := []ff.Option{ff.WithEnvVarPrefix("PSTD")}
	c := &ffcli.Command{
		Name:       "pstd",
		ShortUsage: "pstd serve|migrate [flags]",
		FlagSet:    rootFS,
		Subcommands: []*ffcli.Command{
			{Name: "serve", ShortUsage: "pstd serve [flags]", ShortHelp: "serve the issuer", FlagSet: serveFS, Options: opts,
				Exec: func(ctx context.Context, args []string) error {
					if len(args) > 0 {
						return cli.Usagef("pstd serve takes no arguments, not %q", args)
					}
					return serve(ctx, &s, serveFS)
				}},
			{Name: "migrate", ShortUsage: "pstd migrate [flags]", ShortHelp: "apply database migrations", FlagSet: migrateFS, Options: opts,
				Exec: func(ctx context.Context, args []string) error {
					if len(args) > 0 {
						return cli.Usagef("pstd migrate takes no arguments, not %q", args)
					}
					store, err := wiring.OpenStore(ctx, &m, newLogger(m.LogLevel))
					if err != nil {
						return err
					}
					defer store.Close()
					return store.Migrate(ctx)
				}},
		},
	}
	group := cli.Group(c, os.Stderr)
	c.Exec = func(ctx context.Context, args []string) error {
		if *showVersion {
			fmt.Println(version.Get().String("pstd"))
			return nil
		}
		return group(ctx, args)
	}
	return c
}

func serve(ctx context.Context, s *wiring.Settings, fs *flag.FlagSet) error {
	log := newLogger(s.LogLevel)
	if err := s.ValidateServe(); err != nil {
		return cli.Usagef("%v", err)
	}
	log.Info("starting pstd", "settings", s)
	if s.AllowCoreDumps {
		if err := wiring.AllowCoreDumps(); err != nil {
			return err
		}
		log.Warn("core dumps allowed (--allow-core-dumps): a core of this process holds the database password and requests in flight")
	}
	for _, w := range s.Warnings(fs, os.Environ()) {
		log.Warn(w)
	}

	// Before Open, which clears the PIN from the settings.
	digest := s.Digest()
	reg := prometheus.NewRegistry()
	build := version.Get()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), build.Collector())
	log.Info("build", "version", build.Version, "revision", build.Revision, "go", build.GoVersion)
	a, err := wiring.Open(ctx, s, log, s.Migrate, reg)
	if err != nil {
		return err
	}
	defer a.Close()

	if n := secmem.Unlocked(); n > 0 {
		log.Warn("the kernel refused to lock the memory that holds the PIN and the keys (RLIMIT_MEMLOCK): it stays out of core dumps but may be swapped; allow pstd to lock a few pages (systemd LimitMEMLOCK=, ulimit -l)", "unlocked_pages", n)
	}
	if n, err := a.Store.AsyncStandbys(ctx); err == nil && n > 0 {
		log.Warn("PostgreSQL streams to standbys without synchronous_standby_names: a failover can lose committed redemptions, and their tokens would redeem again; configure a synchronous standby", "standbys", n)
	}

	// One rotation step at start (bootstraps an empty database; another
	// replica may hold the lock, which is fine), then load the key set.
	if _, err := a.Service.Rotate(ctx); err != nil {
		log.Error("rotation at start-up failed", "err", err)
	}
	if err := a.Service.Reload(ctx); err != nil {
		log.Error("loading keys failed; not ready until they load", "err", err)
	}
	if err := a.Service.Started(ctx, signer.ReplicaInfo{Version: build.Version, Revision: build.Revision,
		GoVersion: build.GoVersion, SettingsDigest: digest}); err != nil {
		log.Error("recording the replica's start on the audit log failed", "err", err)
	}
	svcCtx, cancelSvc := context.WithCancel(ctx)
	var svcRun sync.WaitGroup
	svcRun.Go(func() { a.Service.Run(svcCtx) })
	// Stop the refresh and rotation loop, and wait for it, before the
	// deferred Close wipes the keys: a reload finishing after the wipe
	// would leave unsealed keys behind.
	defer svcRun.Wait()
	defer cancelSvc()

	var policy httpapi.Policy = httpapi.AllowAll{}
	clientKey := func(r *http.Request) string { return httpapi.ClientAddrKey(r.RemoteAddr) }
	proxies, _ := s.TrustedProxyPrefixes() // validated by ValidateServe
	if len(proxies) > 0 {
		clientKey = httpapi.ForwardedClientKey(proxies)
	} else {
		clientKey = warnForwarded(clientKey, log)
	}
	// On by default (httpapi.DefaultRateLimit); 0 turns it off, which
	// Settings.Warnings reports on a listener beyond loopback.
	if s.RateLimit > 0 {
		policy = httpapi.NewRateLimit(httpapi.RateLimitConfig{Tokens: s.RateLimit * s.BatchSize, Window: s.RateWindow, ClientKey: clientKey})
	}
	// Issuance must be earned: a ticket from the trusting site and/or the
	// operator's webhook, after the (cheap) rate limit.
	earned := []httpapi.Policy{policy}
	if s.TicketKeyFile != "" {
		key, err := wiring.ReadSecretFile(s.TicketKeyFile)
		if err != nil {
			return fmt.Errorf("PSTD_ISSUANCE_TICKET_KEY_FILE: %w", err)
		}
		if err := httpapi.CheckTicketKey(key); err != nil {
			return fmt.Errorf("PSTD_ISSUANCE_TICKET_KEY_FILE: %w", err)
		}
		earned = append(earned, &httpapi.TicketPolicy{Key: key, Spent: a.Store})
	}
	if s.Webhook != "" {
		var hdrs []string
		for _, h := range strings.Split(s.WebhookHeaders, ",") {
			if h = strings.TrimSpace(h); h != "" {
				hdrs = append(hdrs, h)
			}
		}
		earned = append(earned, &httpapi.WebhookPolicy{URL: s.Webhook, Headers: hdrs, Timeout: s.WebhookTimeout})
	}
	if len(earned) > 1 {
		policy = httpapi.AllOf(earned...)
	} else if s.OpenIssuance {
		log.Warn("PSTD_OPEN_ISSUANCE: anyone who asks gets tokens and can redeem them for records; give a ticket key or webhook unless that is what you want")
	}
	var redemptionPolicy httpapi.Policy
	var redeemLimits []httpapi.Policy
	if s.RedeemMaxRate > 0 {
		redeemLimits = append(redeemLimits, httpapi.NewRateLimit(httpapi.RateLimitConfig{Tokens: s.RedeemMaxRate, Window: time.Second,
			What: "redemptions", ClientKey: func(*http.Request) string { return "all" }}))
	}
	if s.RedeemRateLimit > 0 {
		redeemLimits = append(redeemLimits, httpapi.NewRateLimit(httpapi.RateLimitConfig{Tokens: s.RedeemRateLimit, Window: s.RateWindow,
			What: "redemptions", ClientKey: clientKey}))
	}
	if len(redeemLimits) > 0 {
		redemptionPolicy = httpapi.AllOf(redeemLimits...)
	}
	var opts []httpapi.Option
	if s.Demo {
		refusals := demo.NewRefusals(policy, clientKey)
		policy = refusals
		cfg := demo.Config{IssuerOrigin: s.IssuerOrigin, RateLimit: s.RateLimit, RateWindow: s.RateWindow, Refusals: refusals}
		if s.DemoRPListen != "" {
			jwks := "http://" + s.Listen + rp.JWKSPath // this very server
			if s.TLSCert != "" {
				jwks = "" // the issuer origin's own, whose name the certificate carries
			}
			origin, done, err := demo.StartRelyingParty(svcCtx, s.DemoRPListen, cfg, jwks)
			if err != nil {
				return err
			}
			go func() {
				if err := <-done; err != nil {
					log.Error("the demo relying party stopped", "err", err)
				}
			}()
			cfg.RPOrigin = origin
			log.Info("demo relying party", "url", origin)
		}
		opts = append(opts, httpapi.WithRoutes(func(e *echo.Echo) { demo.Register(e, cfg) }))
	}
	maxIssue, maxRedeem := s.AdmissionLimits()
	var origins []string
	if s.AllowedOrigins != "" && s.AllowedOrigins != "*" {
		origins = strings.Split(s.AllowedOrigins, ",")
	}
	var tlsConfig *tls.Config
	if s.TLSCert != "" {
		certs, err := httpapi.NewCertReloader(s.TLSCert, s.TLSKey, log)
		if err != nil {
			return err
		}
		go certs.Watch(svcCtx, 10*time.Second)
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		go func() {
			for {
				select {
				case <-svcCtx.Done():
					return
				case <-hup:
					if err := certs.Reload(); err != nil {
						log.Error("SIGHUP: the TLS certificate does not load; keeping the current one", "err", err)
					}
				}
			}
		}()
		tlsConfig = certs.TLSConfig()
	}
	srv := httpapi.New(httpapi.Config{
		IssuerOrigin:       s.IssuerOrigin,
		RedemptionLifetime: s.RecordLifetime,
		RequestTimeout:     s.RequestTimeout,
		ShutdownTimeout:    s.ShutdownTimeout,
		ShutdownDelay:      s.ShutdownDelay,
		TLS:                tlsConfig,
		SeparateAdmin:      s.AdminListen != "",
		AllowedOrigins:     origins,
		Logger:             log,
		LogClientAddr:      s.LogClientAddr,
		Registerer:         reg,
		Gatherer:           reg,
		Policy:             policy,
		RedemptionPolicy:   redemptionPolicy,
		Demo:               s.Demo,
		MaxConns:           s.MaxConns,
		MaxConnsPerAddr:    s.MaxConnsPerAddr,
		ConnCapExempt:      proxies,
		MaxIssuance:        maxIssue,
		MaxRedemption:      maxRedeem,
		ClientKey:          clientKey,
	}, a.Service, opts...)
	log.Info("serving", "url", s.IssuerOrigin, "listen", s.Listen)
	err = srv.Run(ctx, s.Listen, s.AdminListen)
	cancelSvc()
	// Requests have drained and the service loop is stopping: flush every
	// count bucket, the open ones too, and record the clean stop; then a
	// signed checkpoint covers all of it. ctx is already cancelled by the
	// signal, hence a context of its own.
	svcRun.Wait()
	stopCtx, cancelStop := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	if serr := a.Service.Stopped(stopCtx); serr != nil {
		log.Error("flushing counts and recording the stop failed; the counts since the last flush are lost", "err", serr)
	}
	if _, cerr := a.Service.Checkpoint(stopCtx, false); cerr != nil {
		log.Warn("the audit checkpoint at shutdown failed", "err", cerr)
	}
	cancelStop()
	log.Info("stopped; wiping keys and closing the HSM and database")
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// warnForwarded wraps the client key of a pstd that trusts no proxy: the
// first request that carries X-Forwarded-For is logged once, since pstd is
// then probably behind a proxy it was not told about, and every client
// behind it shares the proxy's address, its rate-limit bucket and its share
// of the admission slots. The header itself is never believed.
func warnForwarded(key func(*http.Request) string, log *slog.Logger) func(*http.Request) string {
	var once sync.Once
	return func(r *http.Request) string {
		if _, ok := r.Header["X-Forwarded-For"]; ok {
			once.Do(func() {
				log.Warn("a request carries X-Forwarded-For but PSTD_TRUSTED_PROXIES is not set: the per-address limits key on the TCP peer, so behind a reverse proxy every client shares the proxy's address; set PSTD_TRUSTED_PROXIES to the proxies' CIDRs (the header is ignored until then)")
			})
		}
		return key(r)
	}
}
