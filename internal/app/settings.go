// Package app wires pstd's parts for the commands: settings from flags and
// PSTD_* environment variables, the database, the HSM and the issuer
// service. It is the only place that knows all of them.
package app

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pstd/pstd/signer"
	"github.com/pstd/pstd/signer/hsm"
)

// Settings are every setting the binaries take. Each is a flag and, through
// ff, the environment variable PSTD_<FLAG NAME IN CAPITALS>.
type Settings struct {
	DatabaseURL     string
	PKCS11Module    string
	PKCS11Token     string
	PKCS11PINFile   string
	PKCS11PIN       string
	PKCS11URI       string
	IssuerOrigin    string
	Listen          string
	BatchSize       int
	RecordLifetime  time.Duration
	SigningPeriod   time.Duration
	PublishLead     time.Duration
	RedeemGrace     time.Duration
	Migrate         bool
	Demo            bool
	RateLimit       int
	RateWindow      time.Duration
	TrustedProxies  string
	AllowedOrigins  string
	LogLevel        string
	LogClientAddr   bool
	RequestTimeout  time.Duration
	ShutdownTimeout time.Duration
}

// Register adds the settings' flags to fs.
func (s *Settings) Register(fs *flag.FlagSet) {
	p := signer.DefaultRotationPolicy()
	fs.StringVar(&s.DatabaseURL, "database-url", "", "PostgreSQL connection string (PSTD_DATABASE_URL)")
	fs.StringVar(&s.PKCS11Module, "pkcs11-module", "", "PKCS#11 module path (PSTD_PKCS11_MODULE)")
	fs.StringVar(&s.PKCS11Token, "pkcs11-token-label", "", "PKCS#11 token label (PSTD_PKCS11_TOKEN_LABEL)")
	fs.StringVar(&s.PKCS11PINFile, "pkcs11-pin-file", "", "file holding the token's user PIN (PSTD_PKCS11_PIN_FILE)")
	fs.StringVar(&s.PKCS11PIN, "pkcs11-pin", "", "the token's user PIN; prefer the PIN file (PSTD_PKCS11_PIN)")
	fs.StringVar(&s.PKCS11URI, "pkcs11-uri", "", "RFC 7512 PKCS#11 URI instead of module/label/PIN (PSTD_PKCS11_URI)")
	fs.StringVar(&s.IssuerOrigin, "issuer-origin", "http://localhost:8480", "the issuer's origin, as browsers see it (PSTD_ISSUER_ORIGIN)")
	fs.StringVar(&s.Listen, "listen", "127.0.0.1:8480", "listen address HOST:PORT (PSTD_LISTEN)")
	fs.IntVar(&s.BatchSize, "batch-size", 10, "the commitment's batchsize, at most 100 (PSTD_BATCH_SIZE)")
	fs.DurationVar(&s.RecordLifetime, "record-lifetime", 7*24*time.Hour, "how long a redemption record stays valid (PSTD_RECORD_LIFETIME)")
	fs.DurationVar(&s.SigningPeriod, "signing-period", p.SigningPeriod, "how long each key signs, at least 60 days (PSTD_SIGNING_PERIOD)")
	fs.DurationVar(&s.PublishLead, "publish-lead", p.PublishLead, "how long before it signs a new key is published (PSTD_PUBLISH_LEAD)")
	fs.DurationVar(&s.RedeemGrace, "redeem-grace", p.RedeemGrace, "how long tokens still redeem after their key stops signing (PSTD_REDEEM_GRACE)")
	fs.BoolVar(&s.Migrate, "migrate", false, "apply database migrations at start-up (PSTD_MIGRATE)")
	fs.BoolVar(&s.Demo, "demo", false, "serve the demo issuer and relying-party pages (PSTD_DEMO)")
	fs.IntVar(&s.RateLimit, "rate-limit", 0, "issuance requests per client address per window; 0 allows all (PSTD_RATE_LIMIT)")
	fs.DurationVar(&s.RateWindow, "rate-window", time.Minute, "window of the per-address rate limit (PSTD_RATE_WINDOW)")
	fs.StringVar(&s.TrustedProxies, "trusted-proxies", "", "comma-separated CIDRs of reverse proxies whose X-Forwarded-For the rate limit believes (PSTD_TRUSTED_PROXIES)")
	fs.StringVar(&s.AllowedOrigins, "allowed-origins", "*", "comma-separated origins allowed by CORS, or * (PSTD_ALLOWED_ORIGINS)")
	fs.StringVar(&s.LogLevel, "log-level", "info", "debug, info, warn or error (PSTD_LOG_LEVEL)")
	fs.BoolVar(&s.LogClientAddr, "log-client-addr", false, "log client addresses (off: privacy) (PSTD_LOG_CLIENT_ADDR)")
	fs.DurationVar(&s.RequestTimeout, "request-timeout", 10*time.Second, "upper bound on one request (PSTD_REQUEST_TIMEOUT)")
	fs.DurationVar(&s.ShutdownTimeout, "shutdown-timeout", 20*time.Second, "how long in-flight requests may finish at shutdown (PSTD_SHUTDOWN_TIMEOUT)")
}

// Policy returns the rotation policy the settings describe.
func (s *Settings) Policy() signer.RotationPolicy {
	return signer.RotationPolicy{SigningPeriod: s.SigningPeriod, PublishLead: s.PublishLead, RedeemGrace: s.RedeemGrace}
}

// ValidateServe checks what serving needs.
func (s *Settings) ValidateServe() error {
	var errs []error
	if s.DatabaseURL == "" {
		errs = append(errs, errors.New("PSTD_DATABASE_URL (--database-url) is required"))
	}
	if err := s.validateHSM(); err != nil {
		errs = append(errs, err)
	}
	if err := validateOrigin(s.IssuerOrigin); err != nil {
		errs = append(errs, fmt.Errorf("PSTD_ISSUER_ORIGIN: %w", err))
	}
	if s.BatchSize < 1 || s.BatchSize > 100 {
		errs = append(errs, errors.New("PSTD_BATCH_SIZE must be in [1, 100]"))
	}
	if err := s.Policy().Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, err := ParseLogLevel(s.LogLevel); err != nil {
		errs = append(errs, err)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"PSTD_RECORD_LIFETIME", s.RecordLifetime}, {"PSTD_RATE_WINDOW", s.RateWindow},
		{"PSTD_REQUEST_TIMEOUT", s.RequestTimeout}, {"PSTD_SHUTDOWN_TIMEOUT", s.ShutdownTimeout},
	} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, not %v", d.name, d.v))
		}
	}
	if s.RateLimit < 0 {
		errs = append(errs, errors.New("PSTD_RATE_LIMIT must not be negative"))
	}
	if _, err := s.TrustedProxyPrefixes(); err != nil {
		errs = append(errs, err)
	}
	if s.AllowedOrigins != "*" && s.AllowedOrigins != "" {
		for _, o := range strings.Split(s.AllowedOrigins, ",") {
			if err := validateOrigin(o); err != nil {
				errs = append(errs, fmt.Errorf("PSTD_ALLOWED_ORIGINS: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// TrustedProxyPrefixes parses PSTD_TRUSTED_PROXIES.
func (s *Settings) TrustedProxyPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range strings.Split(s.TrustedProxies, ",") {
		if c = strings.TrimSpace(c); c == "" {
			continue
		}
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("PSTD_TRUSTED_PROXIES: %q is not a CIDR prefix", c)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// ParseLogLevel accepts debug, info, warn or error.
func ParseLogLevel(s string) (slog.Level, error) {
	switch s {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("PSTD_LOG_LEVEL %q is not debug, info, warn or error", s)
}

// Warnings are settings that work but that an operator should hear about:
// environment variables that name no setting (a typo silently ignored
// otherwise), and an http issuer origin on a listener beyond loopback.
func (s *Settings) Warnings(fs *flag.FlagSet, environ []string) []string {
	known := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) {
		known["PSTD_"+strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))] = true
	})
	var out []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		// PSTD_TEST_*, PSTD_DEV_* and PSTD_GO_PREFIX belong to the
		// project's own scripts and tests.
		if strings.HasPrefix(name, "PSTD_") && !known[name] && !strings.HasPrefix(name, "PSTD_TEST_") &&
			!strings.HasPrefix(name, "PSTD_DEV_") && name != "PSTD_GO_PREFIX" && name != "PSTD_ROOT" && name != "PSTD_SCRIPT" {
			out = append(out, fmt.Sprintf("environment variable %s is not a pstd setting (a typo?); it is ignored", name))
		}
	}
	if strings.HasPrefix(s.IssuerOrigin, "http://") {
		if host, _, err := net.SplitHostPort(s.Listen); err == nil && host != "127.0.0.1" && host != "localhost" && host != "::1" {
			out = append(out, fmt.Sprintf("PSTD_ISSUER_ORIGIN is %s (plain http) while listening on %s: browsers accept PST issuers on http only for localhost", s.IssuerOrigin, s.Listen))
		}
	}
	return out
}

func (s *Settings) validateHSM() error {
	if s.PKCS11URI != "" {
		return nil
	}
	var missing []string
	if s.PKCS11Module == "" {
		missing = append(missing, "PSTD_PKCS11_MODULE")
	}
	if s.PKCS11Token == "" {
		missing = append(missing, "PSTD_PKCS11_TOKEN_LABEL")
	}
	if s.PKCS11PINFile == "" && s.PKCS11PIN == "" {
		missing = append(missing, "PSTD_PKCS11_PIN_FILE or PSTD_PKCS11_PIN")
	}
	if len(missing) > 0 {
		return fmt.Errorf("HSM settings missing: %s (or set PSTD_PKCS11_URI)", strings.Join(missing, ", "))
	}
	return nil
}

func validateOrigin(o string) error {
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return fmt.Errorf("%q is not an origin like https://issuer.example", o)
	}
	return nil
}

// LogValue prints the effective settings without secrets.
func (s *Settings) LogValue() slog.Value {
	pin := "unset"
	if s.PKCS11PIN != "" {
		pin = "from a flag"
		if os.Getenv("PSTD_PKCS11_PIN") != "" {
			pin = "from environment"
		}
	}
	if s.PKCS11PINFile != "" {
		pin = "from file " + s.PKCS11PINFile
	}
	uri := ""
	if s.PKCS11URI != "" {
		if u, err := hsm.ParseURI(s.PKCS11URI); err == nil {
			uri = u.String() // pin-value redacted
		} else {
			uri = "(unparsable)"
		}
	}
	return slog.GroupValue(
		slog.String("database", redactURL(s.DatabaseURL)),
		slog.String("pkcs11_uri", uri),
		slog.String("pkcs11_module", s.PKCS11Module),
		slog.String("pkcs11_token_label", s.PKCS11Token),
		slog.String("pkcs11_pin", pin),
		slog.String("issuer_origin", s.IssuerOrigin),
		slog.String("listen", s.Listen),
		slog.Int("batch_size", s.BatchSize),
		slog.Duration("record_lifetime", s.RecordLifetime),
		slog.Duration("signing_period", s.SigningPeriod),
		slog.Duration("publish_lead", s.PublishLead),
		slog.Duration("redeem_grace", s.RedeemGrace),
		slog.Bool("migrate", s.Migrate),
		slog.Bool("demo", s.Demo),
		slog.Int("rate_limit", s.RateLimit),
		slog.Duration("rate_window", s.RateWindow),
		slog.String("trusted_proxies", s.TrustedProxies),
		slog.String("allowed_origins", s.AllowedOrigins),
		slog.String("log_level", s.LogLevel),
		slog.Bool("log_client_addr", s.LogClientAddr),
		slog.Duration("request_timeout", s.RequestTimeout),
		slog.Duration("shutdown_timeout", s.ShutdownTimeout),
	)
}

// redactURL describes a connection string for logging: host, port, user
// and database only. Passwords can hide in several places (user:pass@, a
// ?password= parameter, a keyword string's password=, sslpassword), so
// nothing else is printed.
func redactURL(raw string) string {
	if raw == "" {
		return "unset"
	}
	cfg, err := pgconn.ParseConfig(raw)
	if err != nil {
		return "(unparsable)" // pgconn's error could quote the string
	}
	return fmt.Sprintf("postgres://%s@%s/%s", cfg.User, net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))), cfg.Database)
}
