package wiring

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pstd/pstd/db"
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
	// when the binary called ScrubEnvironment first (see secrets.go).
	defer func() {
		s.PKCS11PIN = ""
		_ = os.Unsetenv("PSTD_PKCS11_PIN")
		_ = os.Unsetenv("PSTD_PKCS11_URI")
	}()
	if s.PKCS11PIN != "" && os.Getenv("PSTD_PKCS11_PIN") == "" {
		log.Warn("the PKCS#11 PIN was given as a command-line flag, which other local users can read (ps); use PSTD_PKCS11_PIN_FILE")
	}
	if strings.Contains(s.PKCS11URI, "pin-value=") {
		log.Warn("the PKCS#11 URI carries pin-value, which other local users can read when it is a flag; use pin-source")
	}
	if s.PKCS11URI != "" {
		u, err := hsm.ParseURI(s.PKCS11URI)
		if err != nil {
			return cfg, err
		}
		if cfg, err = u.Config(s.PKCS11Module, s.PKCS11PINFile, s.PKCS11PIN); err != nil {
			return cfg, err
		}
	} else {
		pin, err := hsm.LoadPIN(s.PKCS11PINFile, s.PKCS11PIN)
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
	if migrate {
		if err := store.Migrate(ctx); err != nil {
			store.Close()
			return nil, fmt.Errorf("migrate: %w", err)
		}
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
	svc, err := signer.New(signer.Config{
		IssuerOrigin:   s.IssuerOrigin,
		BatchSize:      s.BatchSize,
		RecordLifetime: s.RecordLifetime,
		Policy:         s.Policy(),
		Logger:         log,
		Registerer:     reg,
	}, store, h)
	if err != nil {
		h.Close()
		store.Close()
		return nil, err
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
