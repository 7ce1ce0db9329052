// Package wiring is pstd's composition root, shared by the binaries in
// cmd/: the settings (each a flag and a PSTD_* environment variable, defined
// once here), and the code that opens the database and the HSM and builds the
// issuer service from them. It is the only package besides cmd/ that knows
// all of pstd's parts; it holds no behaviour of its own.
package wiring

import (
	"crypto/sha256"
	"encoding/hex"
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

	"github.com/pstd/pstd/httpapi"
	"github.com/pstd/pstd/signer"
	"github.com/pstd/pstd/signer/hsm"
)

// Settings are every setting the binaries take. Each is a flag and, through
// ff, the environment variable PSTD_<FLAG NAME IN CAPITALS>; a command
// registers only the groups it uses. The flag's default is the one source of
// each default (taken from the package that owns the setting), and README.md's
// configuration table is the one place that documents them
// (TestREADMEListsEverySetting keeps the two together).
type Settings struct {
	DatabaseURL     string
	DatabaseURLFile string
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
	RegistrationExp string // YYYY-MM-DD
	RedeemerOrigins string
	Migrate         bool
	Demo            bool
	DemoRPListen    string
	RateLimit       int
	RateWindow      time.Duration
	TrustedProxies  string
	AllowedOrigins  string
	LogLevel        string
	LogClientAddr   bool
	RequestTimeout  time.Duration
	ShutdownTimeout time.Duration
	ShutdownDelay   time.Duration
	TicketKeyFile   string
	Webhook         string
	WebhookHeaders  string
	WebhookTimeout  time.Duration
	OpenIssuance    bool
	RedeemRateLimit int
	RedeemMaxRate   int
	TLSCert         string
	TLSKey          string
	AdminListen     string
	Actor           string
	Reason          string

	MaxConns          int
	MaxConnsPerAddr   int
	MaxInflightIssue  int
	MaxInflightRedeem int
	AllowCoreDumps    bool

	fs *flag.FlagSet // where the settings were registered
}

// Group is a set of settings a command can take.
type Group uint

const (
	// Database: the PostgreSQL connection.
	Database Group = 1 << iota
	// HSM: the PKCS#11 module, token and PIN.
	HSM
	// Origin: the issuer's origin.
	Origin
	// Issuer: what the issuer service needs besides its origin (batch
	// size, record lifetime, rotation).
	Issuer
	// Server: the HTTP listener, policies and timeouts of pstd serve.
	Server
	// Logging: the log level.
	Logging
	// Operator: who acts and why, for the audit log (--actor, --reason).
	Operator

	// All is every setting: pstd serve.
	All = Database | HSM | Origin | Issuer | Server | Logging | Operator
)

// EnvName is the environment variable of flag name.
func EnvName(flagName string) string {
	return "PSTD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Register adds the flags of groups to fs.
func (s *Settings) Register(fs *flag.FlagSet, groups Group) {
	s.fs = fs
	p := signer.DefaultRotationPolicy()
	h := func(help, flagName string) string { return help + " (" + EnvName(flagName) + ")" }
	if groups&Database != 0 {
		fs.StringVar(&s.DatabaseURL, "database-url", "", h("PostgreSQL connection string", "database-url"))
		fs.StringVar(&s.DatabaseURLFile, "database-url-file", "", h("file holding the PostgreSQL connection string, so a password need not sit in the environment", "database-url-file"))
	}
	if groups&HSM != 0 {
		fs.StringVar(&s.PKCS11Module, "pkcs11-module", "", h("PKCS#11 module path", "pkcs11-module"))
		fs.StringVar(&s.PKCS11Token, "pkcs11-token-label", "", h("PKCS#11 token label", "pkcs11-token-label"))
		fs.StringVar(&s.PKCS11PINFile, "pkcs11-pin-file", "", h("file holding the token's user PIN", "pkcs11-pin-file"))
		fs.StringVar(&s.PKCS11PIN, "pkcs11-pin", "", h("the token's user PIN; prefer the PIN file", "pkcs11-pin"))
		fs.StringVar(&s.PKCS11URI, "pkcs11-uri", "", h("RFC 7512 PKCS#11 URI instead of module/label/PIN", "pkcs11-uri"))
	}
	if groups&Origin != 0 {
		fs.StringVar(&s.IssuerOrigin, "issuer-origin", "http://localhost:8480", h("the issuer's origin, as browsers see it", "issuer-origin"))
	}
	if groups&Issuer != 0 {
		fs.IntVar(&s.BatchSize, "batch-size", signer.DefaultBatchSize, h("the commitment's batchsize, at most 100", "batch-size"))
		fs.DurationVar(&s.RecordLifetime, "record-lifetime", signer.DefaultRecordLifetime, h("how long a redemption record stays valid", "record-lifetime"))
		fs.DurationVar(&s.SigningPeriod, "signing-period", p.SigningPeriod, h("how long each key signs, at least 60 days", "signing-period"))
		fs.DurationVar(&s.PublishLead, "publish-lead", p.PublishLead, h("how long before it signs a new key is published", "publish-lead"))
		fs.DurationVar(&s.RedeemGrace, "redeem-grace", p.RedeemGrace, h("how long tokens still redeem after their key stops signing", "redeem-grace"))
		fs.StringVar(&s.RedeemerOrigins, "redeemer-origins", "", h("comma-separated origins allowed to redeem (exact, or https://*.example.com for subdomains); empty allows any", "redeemer-origins"))
		fs.StringVar(&s.RegistrationExp, "registration-expires", "", h("date (YYYY-MM-DD) the issuer's registration with Google lapses, for pstctl keys plan and the metric to alert on", "registration-expires"))
	}
	if groups&Server != 0 {
		fs.StringVar(&s.Listen, "listen", "127.0.0.1:8480", h("listen address HOST:PORT", "listen"))
		fs.StringVar(&s.TLSCert, "tls-cert", "", h("PEM certificate chain for TLS on the public listener; reloaded when the file changes or on SIGHUP", "tls-cert"))
		fs.StringVar(&s.TLSKey, "tls-key", "", h("PEM private key for --tls-cert", "tls-key"))
		fs.StringVar(&s.AdminListen, "admin-listen", "", h("listen address for /metrics, /healthz and /readyz; when set, the public listener no longer serves /metrics", "admin-listen"))
		fs.BoolVar(&s.Migrate, "migrate", false, h("apply database migrations at start-up", "migrate"))
		fs.BoolVar(&s.Demo, "demo", false, h("serve the demo issuer and relying-party pages", "demo"))
		fs.StringVar(&s.DemoRPListen, "demo-rp-listen", "127.0.0.1:8481", h("with --demo, listen address HOST:PORT of the demo relying party, served as http://HOST:PORT, another site than a localhost issuer; empty: none", "demo-rp-listen"))
		fs.IntVar(&s.RateLimit, "rate-limit", httpapi.DefaultRateLimit, h("issuance per client address per window, in full batches: a bucket of this many times the batch size in tokens, refilled over the window; 0: no limit", "rate-limit"))
		fs.StringVar(&s.TicketKeyFile, "issuance-ticket-key-file", "", h("file holding the HMAC key (32+ bytes) of single-use issuance tickets: issuance then needs ?pst-ticket= from the trusting site", "issuance-ticket-key-file"))
		fs.StringVar(&s.Webhook, "issuance-webhook", "", h("URL of the operator's service asked before each issuance (cookies and chosen headers, never the blinded elements); issue only on {\"issue\": true}", "issuance-webhook"))
		fs.StringVar(&s.WebhookHeaders, "issuance-webhook-headers", "", h("comma-separated request headers passed to the issuance webhook besides Cookie", "issuance-webhook-headers"))
		fs.DurationVar(&s.WebhookTimeout, "issuance-webhook-timeout", 500*time.Millisecond, h("how long the issuance webhook may take; slower is a refusal", "issuance-webhook-timeout"))
		fs.BoolVar(&s.OpenIssuance, "open-issuance", false, h("issue to anyone who asks, on a non-loopback listener without a ticket key or webhook (warned about at every start)", "open-issuance"))
		fs.IntVar(&s.RedeemRateLimit, "redeem-rate-limit", 0, h("redemptions per client address per window, refused before any signature or database write; 0: no limit", "redeem-rate-limit"))
		fs.IntVar(&s.RedeemMaxRate, "redeem-max-rate", 0, h("redemptions per second over all clients of this replica; 0: no limit", "redeem-max-rate"))
		fs.DurationVar(&s.RateWindow, "rate-window", httpapi.DefaultRateWindow, h("window of the per-address rate limit", "rate-window"))
		fs.StringVar(&s.TrustedProxies, "trusted-proxies", "", h("comma-separated CIDRs of reverse proxies whose X-Forwarded-For the rate limit believes", "trusted-proxies"))
		fs.StringVar(&s.AllowedOrigins, "allowed-origins", "*", h("comma-separated origins allowed by CORS, or *", "allowed-origins"))
		fs.BoolVar(&s.LogClientAddr, "log-client-addr", false, h("log client addresses (off: privacy)", "log-client-addr"))
		fs.DurationVar(&s.RequestTimeout, "request-timeout", httpapi.DefaultRequestTimeout, h("upper bound on one request", "request-timeout"))
		fs.DurationVar(&s.ShutdownTimeout, "shutdown-timeout", httpapi.DefaultShutdownTimeout, h("how long in-flight requests may finish at shutdown", "shutdown-timeout"))
		fs.DurationVar(&s.ShutdownDelay, "shutdown-delay", 0, h("on SIGTERM, how long /readyz fails while the listeners keep serving, so load balancers drain first", "shutdown-delay"))
		fs.IntVar(&s.MaxConns, "max-conns", 0, h("open connections the public listener holds at most; 0: the descriptor limit less a reserve for the database pool and the PKCS#11 module", "max-conns"))
		fs.IntVar(&s.MaxConnsPerAddr, "max-conns-per-addr", httpapi.DefaultMaxConnsPerAddr, h("open connections one client address (IPv6: /64) may hold; trusted proxies are exempt; -1: no cap", "max-conns-per-addr"))
		fs.IntVar(&s.MaxInflightIssue, "max-inflight-issuance", 0, h("issuance requests that run at once (8 times as many may wait up to 1 s; one client at most half); beyond, 503 overloaded; 0: twice the CPUs", "max-inflight-issuance"))
		fs.IntVar(&s.MaxInflightRedeem, "max-inflight-redemption", 0, h("redemption requests that run at once (8 times as many may wait up to 1 s); beyond, 503 overloaded; 0: four times the CPUs, at most the HSM sessions less two", "max-inflight-redemption"))
		fs.BoolVar(&s.AllowCoreDumps, "allow-core-dumps", false, h("debugging only: let the process be dumped (a core holds the database password and requests in flight; the PIN and the VOPRF scalars stay in memory left out of dumps); off, pstd is not dumpable and its core limit is 0", "allow-core-dumps"))
	}
	if groups&Logging != 0 {
		fs.StringVar(&s.LogLevel, "log-level", "info", h("debug, info, warn or error", "log-level"))
	}
	if groups&Operator != 0 {
		fs.StringVar(&s.Actor, "actor", "", h("who the audit log names: an operator's name for pstctl (default USER@HOST), the service's for pstd serve (default pstd)", "actor"))
		fs.StringVar(&s.Reason, "reason", "", h("why: a change ticket or a sentence, recorded in the audit log; required by every pstctl command that changes keys", "reason"))
	}
}

// MaxReasonLen bounds --reason.
const MaxReasonLen = 1024

// ValidateOperator checks --actor and --reason: printable text of sane
// length, and a reason when one is required.
func (s *Settings) ValidateOperator(requireReason bool) error {
	if requireReason && strings.TrimSpace(s.Reason) == "" {
		return errors.New("--reason (PSTD_REASON) is required for a command that changes keys: give a change ticket or a sentence")
	}
	for name, v := range map[string]string{"--actor (PSTD_ACTOR)": s.Actor, "--reason (PSTD_REASON)": s.Reason} {
		if len(v) > MaxReasonLen {
			return fmt.Errorf("%s is longer than %d bytes", name, MaxReasonLen)
		}
		if strings.IndexFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
			return fmt.Errorf("%s holds control characters", name)
		}
	}
	return nil
}

// Digest is a SHA-256 over the effective settings as LogValue prints them
// (so never a secret: the database URL reduced to host, user and database,
// the PIN to whether it is set), for the replica.start audit event: two
// replicas with the same digest run the same configuration.
func (s *Settings) Digest() string {
	h := sha256.New()
	for _, a := range s.LogValue().Group() {
		fmt.Fprintf(h, "%s=%q\n", a.Key, a.Value.String())
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Policy returns the rotation policy the settings describe.
func (s *Settings) Policy() signer.RotationPolicy {
	return signer.RotationPolicy{SigningPeriod: s.SigningPeriod, PublishLead: s.PublishLead, RedeemGrace: s.RedeemGrace}
}

// ValidateServe checks what serving needs.
func (s *Settings) ValidateServe() error {
	var errs []error
	if err := s.validateDatabase(); err != nil {
		errs = append(errs, err)
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
	if err := s.ValidateOperator(false); err != nil {
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
	if s.ShutdownDelay < 0 {
		errs = append(errs, errors.New("PSTD_SHUTDOWN_DELAY must not be negative"))
	}
	if (s.TLSCert == "") != (s.TLSKey == "") {
		errs = append(errs, errors.New("PSTD_TLS_CERT and PSTD_TLS_KEY go together"))
	}
	if s.RedeemRateLimit < 0 || s.RedeemMaxRate < 0 {
		errs = append(errs, errors.New("PSTD_REDEEM_RATE_LIMIT and PSTD_REDEEM_MAX_RATE must not be negative"))
	}
	if s.Webhook != "" {
		if u, err := url.Parse(s.Webhook); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			errs = append(errs, fmt.Errorf("PSTD_ISSUANCE_WEBHOOK %q is not an http(s) URL", s.Webhook))
		}
	}
	if host, _, err := net.SplitHostPort(s.Listen); err == nil && !isLoopback(host) && s.TicketKeyFile == "" && s.Webhook == "" && !s.OpenIssuance {
		errs = append(errs, fmt.Errorf("PSTD_LISTEN %s is not loopback and no issuance policy is set: give PSTD_ISSUANCE_TICKET_KEY_FILE or PSTD_ISSUANCE_WEBHOOK, or PSTD_OPEN_ISSUANCE=true to issue to anyone", s.Listen))
	}
	if s.AdminListen != "" && s.AdminListen == s.Listen {
		errs = append(errs, errors.New("PSTD_ADMIN_LISTEN must differ from PSTD_LISTEN"))
	}
	if s.Demo && s.DemoRPListen != "" {
		if _, _, err := net.SplitHostPort(s.DemoRPListen); err != nil {
			errs = append(errs, fmt.Errorf("PSTD_DEMO_RP_LISTEN: %w", err))
		} else if s.DemoRPListen == s.Listen || s.DemoRPListen == s.AdminListen {
			errs = append(errs, errors.New("PSTD_DEMO_RP_LISTEN must differ from PSTD_LISTEN and PSTD_ADMIN_LISTEN"))
		}
	}
	if s.RateLimit < 0 {
		errs = append(errs, errors.New("PSTD_RATE_LIMIT must not be negative"))
	}
	if s.MaxConns < 0 || s.MaxInflightIssue < 0 || s.MaxInflightRedeem < 0 {
		errs = append(errs, errors.New("PSTD_MAX_CONNS, PSTD_MAX_INFLIGHT_ISSUANCE and PSTD_MAX_INFLIGHT_REDEMPTION must not be negative"))
	}
	if s.MaxConnsPerAddr < -1 || s.MaxConnsPerAddr == 0 {
		errs = append(errs, errors.New("PSTD_MAX_CONNS_PER_ADDR must be positive, or -1 for no cap"))
	}
	if _, err := s.TrustedProxyPrefixes(); err != nil {
		errs = append(errs, err)
	}
	if _, err := s.RegistrationExpiry(); err != nil {
		errs = append(errs, err)
	}
	if _, err := signer.ParseRedeemers(s.RedeemerOrigins); err != nil {
		errs = append(errs, fmt.Errorf("PSTD_REDEEMER_ORIGINS: %w", err))
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

// RegistrationExpiry parses PSTD_REGISTRATION_EXPIRES (zero when unset).
func (s *Settings) RegistrationExpiry() (time.Time, error) {
	if s.RegistrationExp == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.DateOnly, s.RegistrationExp)
	if err != nil {
		return time.Time{}, fmt.Errorf("PSTD_REGISTRATION_EXPIRES %q is not a date like 2027-05-31", s.RegistrationExp)
	}
	return t, nil
}

// hsmSessions is the HSM session pool pstd opens (hsm.Config's default).
const hsmSessions = 32

// AdmissionLimits are the issuance and redemption concurrency limits: the
// settings, or sized to the CPUs; redemption, which signs each record on
// the HSM, leaves two sessions for the readiness probe and key loading.
func (s *Settings) AdmissionLimits() (issue, redeem int) {
	issue, redeem = s.MaxInflightIssue, s.MaxInflightRedeem
	if issue == 0 {
		issue = httpapi.DefaultMaxIssuance()
	}
	if redeem == 0 {
		redeem = min(httpapi.DefaultMaxRedemption(), hsmSessions-2)
	}
	return issue, redeem
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
// otherwise), an http issuer origin on a listener beyond loopback, and the
// per-address issuance limit turned off (PSTD_RATE_LIMIT=0) on a listener
// beyond loopback.
// PSTD_DEV_* and PSTD_TEST_* are reserved for the development scripts and
// the tests, and never settings.
func (s *Settings) Warnings(fs *flag.FlagSet, environ []string) []string {
	known := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { known[EnvName(f.Name)] = true })
	var out []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "PSTD_") && !known[name] &&
			!strings.HasPrefix(name, "PSTD_DEV_") && !strings.HasPrefix(name, "PSTD_TEST_") {
			out = append(out, fmt.Sprintf("environment variable %s is not a pstd setting (a typo?); it is ignored", name))
		}
	}
	if strings.HasPrefix(s.IssuerOrigin, "http://") && s.TLSCert == "" {
		if host, _, err := net.SplitHostPort(s.Listen); err == nil && host != "127.0.0.1" && host != "localhost" && host != "::1" {
			out = append(out, fmt.Sprintf("PSTD_ISSUER_ORIGIN is %s (plain http) while listening on %s: browsers accept PST issuers on http only for localhost", s.IssuerOrigin, s.Listen))
		}
	}
	if host, _, err := net.SplitHostPort(s.Listen); err == nil && !isLoopback(host) && s.RateLimit == 0 {
		out = append(out, fmt.Sprintf("PSTD_RATE_LIMIT=0 while listening on %s: issuance is not limited per address, so one address may take as many tokens and as much CPU as it asks for; leave it unset for the default of %d full batches per address per PSTD_RATE_WINDOW unless this is a load test", s.Listen, httpapi.DefaultRateLimit))
	}
	return out
}

// isLoopback reports whether a listen host only accepts local connections.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// ValidateDatabase checks the database settings.
func (s *Settings) ValidateDatabase() error { return s.validateDatabase() }

func (s *Settings) validateDatabase() error {
	switch {
	case s.DatabaseURL == "" && s.DatabaseURLFile == "":
		return errors.New("PSTD_DATABASE_URL or PSTD_DATABASE_URL_FILE is required")
	case s.DatabaseURL != "" && s.DatabaseURLFile != "":
		return errors.New("set PSTD_DATABASE_URL or PSTD_DATABASE_URL_FILE, not both")
	}
	return nil
}

// databaseURL returns the connection string, from the file if one is named.
func (s *Settings) databaseURL() (string, error) {
	if err := s.validateDatabase(); err != nil {
		return "", err
	}
	if s.DatabaseURLFile == "" {
		return s.DatabaseURL, nil
	}
	b, err := os.ReadFile(s.DatabaseURLFile)
	if err != nil {
		return "", fmt.Errorf("PSTD_DATABASE_URL_FILE: %w", err)
	}
	u := strings.TrimSpace(string(b))
	if u == "" {
		return "", fmt.Errorf("PSTD_DATABASE_URL_FILE: %s is empty", s.DatabaseURLFile)
	}
	return u, nil
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

// LogValue prints the effective settings without secrets: every setting the
// command registered, with the database URL reduced to host, user and
// database, the PIN reduced to where it came from, and a PKCS#11 URI's
// pin-value redacted.
func (s *Settings) LogValue() slog.Value {
	if s.fs == nil {
		return slog.StringValue("(no settings registered)")
	}
	var attrs []slog.Attr
	s.fs.VisitAll(func(f *flag.Flag) {
		key := strings.ReplaceAll(f.Name, "-", "_")
		v := f.Value.String()
		switch f.Name {
		case "database-url":
			v = redactURL(s.DatabaseURL)
		case "pkcs11-pin":
			v = "unset"
			if s.PKCS11PIN != "" {
				v = "set"
			}
		case "pkcs11-uri":
			if s.PKCS11URI != "" {
				if u, err := hsm.ParseURI(s.PKCS11URI); err == nil {
					v = u.String() // pin-value redacted
				} else {
					v = "(unparsable)"
				}
			}
		}
		attrs = append(attrs, slog.String(key, v))
	})
	return slog.GroupValue(attrs...)
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
