package wiring

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pstd/pstd/db"
	"github.com/pstd/pstd/internal/pstderr"
	"github.com/pstd/pstd/signer"
	"github.com/pstd/pstd/signer/hsm"
)

// App is an opened database, HSM and issuer service.
type App struct {
	Store   *db.Store
	HSM     *hsm.HSM
	Service *signer.Service
}

// OpenStore opens the database only.
func OpenStore(ctx context.Context, s *Settings, log *slog.Logger) (*db.Store, error) {
	url, err := s.databaseURL()
	if err != nil {
		return nil, err
	}
	// Once opened, Go's copy of the environment (what a child process
	// would inherit) keeps no password either.
	defer func() {
		_ = os.Unsetenv("PSTD_DATABASE_URL")
		_ = os.Unsetenv("PGPASSWORD")
	}()
	return db.Open(ctx, url, db.WithLogger(log))
}

// HSMConfig builds the PKCS#11 configuration from the settings.
func (s *Settings) HSMConfig(log *slog.Logger) (hsm.Config, error) {
	if err := s.validateHSM(); err != nil {
		return hsm.Config{}, err
	}
	var cfg hsm.Config
	// Whatever happens below, the settings and Go's copy of the environment
	// (what child processes inherit) keep no copy of the PIN. The
	// environment block the kernel shows in /proc/PID/environ never held it
	// when the binary called SecureProcess first (see secrets.go).
	defer func() {
		s.PKCS11PIN = ""
		_ = os.Unsetenv("PSTD_PKCS11_PIN")
		_ = os.Unsetenv("PSTD_PKCS11_URI")
	}()
	if s.PKCS11PIN != "" && os.Getenv("PSTD_PKCS11_PIN") == "" {
		log.Warn("the PKCS#11 PIN was given as a command-line flag, which other local users can read (ps); use PSTD_PKCS11_PIN_FILE")
	}
	if strings.Contains(s.PKCS11URI, "pin-value=") {
		log.Warn("the PKCS#11 URI carries pin-value, which other local users can read when it is a flag, and which pstd cannot keep in protected memory; use pin-source")
	}
	if s.PKCS11URI != "" {
		u, err := hsm.ParseURI(s.PKCS11URI)
		if err != nil {
			return cfg, err
		}
		if cfg, err = u.Config(s.PKCS11Module, s.PKCS11PINFile, resolvePIN(s.PKCS11PIN)); err != nil {
			return cfg, err
		}
	} else {
		pin, err := hsm.LoadPIN(s.PKCS11PINFile, resolvePIN(s.PKCS11PIN))
		if err != nil {
			return cfg, err
		}
		cfg = hsm.Config{ModulePath: s.PKCS11Module, TokenLabel: s.PKCS11Token, PIN: pin}
	}
	cfg.Logger = log
	return cfg, nil
}

// Open opens the database and the HSM (checking the PIN once, failing fast),
// builds the issuer service and makes sure the token holds the
// key-encryption key. With migrate set it applies migrations first. reg, if
// not nil, receives the service's metrics.
func Open(ctx context.Context, s *Settings, log *slog.Logger, migrate bool, reg prometheus.Registerer) (*App, error) {
	store, err := OpenStore(ctx, s, log)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	var from, to int64
	if migrate {
		if from, to, err = store.MigrateOnly(ctx); err != nil {
			store.Close()
			return nil, fmt.Errorf("migrate: %w", err)
		}
	} else if cur, latest, err := store.SchemaVersion(ctx); err == nil && cur < latest {
		// Never serve on a half-migrated schema. (A database that cannot be
		// reached is not refused here: the service waits for it.)
		store.Close()
		return nil, fmt.Errorf("the database schema is at version %d and this pstd needs %d: run `pstctl migrate` (or start with --migrate) first", cur, latest)
	}
	hcfg, err := s.HSMConfig(log)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("HSM: %w", err)
	}
	h, err := hsm.Open(hcfg)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("HSM: %w", err)
	}
	regExpiry, err := s.RegistrationExpiry()
	if err != nil {
		h.Close()
		store.Close()
		return nil, err
	}
	redeemers, err := signer.ParseRedeemers(s.RedeemerOrigins)
	if err != nil {
		h.Close()
		store.Close()
		return nil, fmt.Errorf("PSTD_REDEEMER_ORIGINS: %w", err)
	}
	svc, err := signer.New(signer.Config{
		Redeemers:          redeemers,
		RegistrationExpiry: regExpiry,
		IssuerOrigin:       s.IssuerOrigin,
		BatchSize:          s.BatchSize,
		RecordLifetime:     s.RecordLifetime,
		Policy:             s.Policy(),
		Actor:              s.Actor,
		Logger:             log,
		Registerer:         reg,
	}, store, h)
	if err != nil {
		h.Close()
		store.Close()
		return nil, err
	}
	// The audit key signs every audit event, the KEK's creation included,
	// so it comes first. It needs the database; a replica that starts while
	// the database is down keeps retrying (and is not ready meanwhile).
	if err := svc.EnsureAuditKey(ctx); err != nil {
		if !errors.Is(err, pstderr.Unavailable) {
			h.Close()
			store.Close()
			return nil, fmt.Errorf("audit key: %w", err)
		}
		log.Warn("the audit key is not loaded yet; not ready until it is", "err", err)
	} else if from != to {
		if err := store.AuditMigration(ctx, from, to); err != nil {
			h.Close()
			store.Close()
			return nil, fmt.Errorf("migrate: %w", err)
		}
	}
	if err := svc.EnsureKEK(ctx, hcfg.TokenLabel); err != nil {
		h.Close()
		store.Close()
		return nil, fmt.Errorf("HSM key-encryption key: %w", err)
	}
	return &App{Store: store, HSM: h, Service: svc}, nil
}

// Close wipes keys and closes the HSM and the database.
func (a *App) Close() {
	a.Service.Close()
	_ = a.HSM.Close()
	a.Store.Close()
}

// HSMConfigured reports whether the settings name a token.
func (s *Settings) HSMConfigured() bool { return s.validateHSM() == nil }

// OpenHSM opens the token alone (for commands that read from it, such as
// the audit anchor, without running the service).
func OpenHSM(s *Settings, log *slog.Logger) (*hsm.HSM, error) {
	cfg, err := s.HSMConfig(log)
	if err != nil {
		return nil, err
	}
	return hsm.Open(cfg)
}

// ReadSecretFile reads a secret from a file that only its owner may read:
// a file readable by group or others, or owned by another user, is refused.
func ReadSecretFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by group or others (mode %v): chmod 600 it", path, fi.Mode().Perm())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("%s is owned by another user (uid %d)", path, st.Uid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return bytes.TrimRight(b, "\r\n"), nil
}
