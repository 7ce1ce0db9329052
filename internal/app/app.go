package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

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

// Hooks lets the caller count HSM and database errors.
type Hooks struct {
	OnHSMError   func()
	OnDBError    func()
	OnSigningKey func(keyID uint32, expiry time.Time)
	OnRotation   func(at time.Time, err error)
}

// OpenStore opens the database only.
func OpenStore(ctx context.Context, s *Settings, log *slog.Logger) (*db.Store, error) {
	if s.DatabaseURL == "" {
		return nil, fmt.Errorf("PSTD_DATABASE_URL (--database-url) is required")
	}
	return db.Open(ctx, s.DatabaseURL, db.WithLogger(log))
}

// HSMConfig builds the PKCS#11 configuration from the settings.
func (s *Settings) HSMConfig(log *slog.Logger) (hsm.Config, error) {
	if err := s.validateHSM(); err != nil {
		return hsm.Config{}, err
	}
	var cfg hsm.Config
	// Whatever happens below, this process keeps no copy of the PIN in its
	// settings or its environment (children, crash dumps, /proc/self/environ).
	defer func() {
		s.PKCS11PIN = ""
		_ = os.Unsetenv("PSTD_PKCS11_PIN")
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

// Open opens the database and the HSM (checking the PIN once, failing fast)
// and builds the issuer service. With migrate set it applies migrations.
func Open(ctx context.Context, s *Settings, log *slog.Logger, migrate bool, hooks Hooks) (*App, error) {
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
	if err := ensureKEK(ctx, store, h, hcfg.TokenLabel, log); err != nil {
		h.Close()
		store.Close()
		return nil, fmt.Errorf("HSM key-encryption key: %w", err)
	}
	svc, err := signer.New(signer.Config{
		IssuerOrigin:   s.IssuerOrigin,
		BatchSize:      s.BatchSize,
		RecordLifetime: s.RecordLifetime,
		Policy:         s.Policy(),
		Logger:         log,
		OnHSMError:     hooks.OnHSMError,
		OnDBError:      hooks.OnDBError,
		OnSigningKey:   hooks.OnSigningKey,
		OnRotation:     hooks.OnRotation,
	}, StoreAdapter{store}, h)
	if err != nil {
		h.Close()
		store.Close()
		return nil, err
	}
	return &App{Store: store, HSM: h, Service: svc}, nil
}

// ensureKEK makes sure the token holds the key-encryption key. Finding it
// needs only the token, so a provisioned replica starts even while the
// database is down. Creating it happens under the database's provisioning
// lock, so replicas starting together on a fresh token make exactly one,
// and the creation is on the audit log.
func ensureKEK(ctx context.Context, store *db.Store, h *hsm.HSM, tokenLabel string, log *slog.Logger) error {
	if ok, err := h.FindKEK(ctx); err != nil || ok {
		return err
	}
	return store.WithProvisionLock(ctx, func(ctx context.Context) error {
		ok, err := h.FindKEK(ctx) // another replica may have made it meanwhile
		if err != nil || ok {
			return err
		}
		// The audit entry first, in this transaction: if the token then
		// refuses to make the key, the entry is rolled back with it.
		label := hsm.KEKLabel(hsm.KEKGeneration)
		if _, err := store.AppendAudit(ctx, db.Event{Actor: "pstd", Action: db.ActionKEKCreate, Subject: "kek:" + label,
			Details: map[string]any{"hsm_label": tokenLabel, "generation": hsm.KEKGeneration}}); err != nil {
			return err
		}
		if err := h.EnsureKEK(ctx); err != nil {
			return err
		}
		log.Info("created the key-encryption key", "label", label)
		return nil
	})
}

// Close wipes keys and closes the HSM and the database.
func (a *App) Close() {
	a.Service.Close()
	_ = a.HSM.Close()
	a.Store.Close()
}

// StoreAdapter presents *db.Store as signer.Store: the two packages keep
// their own types so that neither imports the other.
type StoreAdapter struct{ S *db.Store }

var _ signer.Store = StoreAdapter{}

func (a StoreAdapter) Ping(ctx context.Context) error { return a.S.Ping(ctx) }

func (a StoreAdapter) KeyEpochs(ctx context.Context) ([]signer.KeyEpoch, error) {
	es, err := a.S.KeyEpochs(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]signer.KeyEpoch, len(es))
	for i, e := range es {
		out[i] = signer.KeyEpoch{KeyID: e.KeyID, Sealed: e.Sealed, KEKLabel: e.KEKLabel, PublicKey: e.PublicKey,
			CreatedAt: e.CreatedAt, NotBefore: e.NotBefore, Expiry: e.Expiry, Imported: e.Imported}
	}
	return out, nil
}

func (a StoreAdapter) NextKeyID(ctx context.Context) (uint32, error) { return a.S.NextKeyID(ctx) }

func (a StoreAdapter) CreateKeyEpoch(ctx context.Context, e signer.KeyEpoch, actor string) error {
	kek := e.KEKLabel
	if kek == "" {
		kek = hsm.KEKLabel(hsm.KEKGeneration)
	}
	return a.S.CreateKeyEpoch(ctx, db.KeyEpoch{KeyID: e.KeyID, Sealed: e.Sealed, KEKLabel: kek, PublicKey: e.PublicKey,
		Imported: e.Imported, CreatedAt: e.CreatedAt, NotBefore: e.NotBefore, Expiry: e.Expiry}, actor)
}

func (a StoreAdapter) RetireKeyEpoch(ctx context.Context, keyID uint32, actor string) error {
	return a.S.RetireKeyEpoch(ctx, keyID, actor)
}

func (a StoreAdapter) LatestCommitment(ctx context.Context) (uint64, []uint32, []byte, error) {
	return a.S.LatestCommitment(ctx)
}

func (a StoreAdapter) KeySetVersion(ctx context.Context) (uint64, error) {
	return a.S.KeySetVersion(ctx)
}

func (a StoreAdapter) PublishCommitment(ctx context.Context, ids []uint32, build func(uint64) ([]byte, error), actor string) (uint64, bool, error) {
	return a.S.PublishCommitment(ctx, ids, build, actor)
}

func (a StoreAdapter) RRKeys(ctx context.Context) ([]signer.RRKeyInfo, error) {
	ks, err := a.S.RRKeys(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]signer.RRKeyInfo, len(ks))
	for i, k := range ks {
		out[i] = signer.RRKeyInfo(k)
	}
	return out, nil
}

func (a StoreAdapter) CreateRRKey(ctx context.Context, k signer.RRKeyInfo, actor string) error {
	return a.S.CreateRRKey(ctx, db.RRKey(k), actor)
}

func (a StoreAdapter) RetireRRKey(ctx context.Context, id string, notAfter time.Time, actor string) error {
	return a.S.RetireRRKey(ctx, id, notAfter, actor)
}

func (a StoreAdapter) RecordRedemption(ctx context.Context, r signer.Redemption, sign func() error) error {
	return a.S.RecordRedemptionWith(ctx, db.Redemption(r), sign)
}

// WithRotationLock runs a rotation step and, once it committed, drops the
// redemption partitions of retired, expired keys: a token of an expired key
// can never redeem again, so its rows are dead weight. The drop runs outside
// the rotation transaction, each in its own short transaction, so its table
// lock never waits behind HSM work; it is best effort.
func (a StoreAdapter) WithRotationLock(ctx context.Context, fn func(context.Context) error) (bool, error) {
	ok, err := a.S.WithRotationLock(ctx, fn)
	if ok && err == nil {
		_, _ = a.S.DropExpiredRedemptionPartitions(ctx, "pstd")
	}
	return ok, err
}
