package db

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Advisory lock keys: pg_advisory_xact_lock(lockClass, n). lockClass is
// 0x70737464, "pstd". The migration's audit_log_chain trigger uses
// lockAudit; keep the numbers in step with migrations/00001_schema.sql.
const (
	lockClass      = 1886614628
	lockRotation   = 1
	lockAudit      = 2
	lockCommitment = 3
	lockProvision  = 4 // creating token-wide objects (the KEK) once across replicas
	lockCheckpoint = 5 // one audit checkpoint writer at a time
)

// Defaults applied by Open unless the URL sets them.
const (
	defaultConnectTimeout = 5 * time.Second
	// A replica that hangs inside a transaction (for example in the middle of
	// a rotation) must not hold the rotation or audit lock for ever.
	defaultIdleInTxTimeout = "60s"
	// How long a partition DDL may wait for its lock on redemptions before it
	// gives up (and is retried later) rather than stall redemptions queued
	// behind it.
	ddlLockTimeout = "5s"
)

// Store is pstd's database. It is safe for concurrent use.
type Store struct {
	pool        *pgxpool.Pool
	log         *slog.Logger
	auditSigner atomic.Pointer[AuditSigner]
}

// Option configures Open.
type Option func(*options)

type options struct {
	logger *slog.Logger
}

// WithLogger sets where the store (and goose, during Migrate) logs. The
// default discards.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// Open returns a Store over a pgx pool for url (a PostgreSQL URL or keyword
// string; pool settings such as pool_max_conns may be given in it). It does
// not connect: call Ping to find out whether the database answers. Unless the
// URL says otherwise it sets application_name=pstd, a 5 s connect timeout and
// idle_in_transaction_session_timeout=60s.
func Open(ctx context.Context, url string, opts ...Option) (*Store, error) {
	o := options{logger: slog.New(slog.DiscardHandler)}
	for _, opt := range opts {
		opt(&o)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgconn redacts the password in its parse errors.
		return nil, fmt.Errorf("db: parsing the database URL: %w", err)
	}
	rp := cfg.ConnConfig.RuntimeParams
	if _, ok := rp["application_name"]; !ok {
		rp["application_name"] = "pstd"
	}
	if _, ok := rp["idle_in_transaction_session_timeout"]; !ok {
		rp["idle_in_transaction_session_timeout"] = defaultIdleInTxTimeout
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = defaultConnectTimeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, wrap("opening the pool", err)
	}
	return &Store{pool: pool, log: o.logger}, nil
}

// Close closes every connection. Transactions in flight are rolled back.
func (s *Store) Close() { s.pool.Close() }

// Ping checks that the database answers; a failure is pstderr Unavailable.
func (s *Store) Ping(ctx context.Context) error {
	return wrap("ping", s.pool.Ping(ctx))
}

// querier is what reads need: the pool or a transaction.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

type txKey struct{}

// txState is the transaction a context carries, tied to the Store that
// opened it so that a context from one Store never leaks into another.
type txState struct {
	store *Store
	tx    pgx.Tx
}

func (s *Store) txFrom(ctx context.Context) pgx.Tx {
	if st, ok := ctx.Value(txKey{}).(*txState); ok && st.store == s {
		return st.tx
	}
	return nil
}

func (s *Store) withTx(ctx context.Context, tx pgx.Tx) context.Context {
	return context.WithValue(ctx, txKey{}, &txState{store: s, tx: tx})
}

// q returns the context's transaction or the pool.
func (s *Store) q(ctx context.Context) querier {
	if tx := s.txFrom(ctx); tx != nil {
		return tx
	}
	return s.pool
}

// inTx runs fn in a transaction: a savepoint inside the context's
// transaction if it carries one, else a new transaction from the pool. fn's
// context carries the (inner) transaction. fn's error is returned unchanged;
// database errors of begin and commit are wrapped.
func (s *Store) inTx(ctx context.Context, op string, fn func(ctx context.Context, tx pgx.Tx) error) (err error) {
	var tx pgx.Tx
	if outer := s.txFrom(ctx); outer != nil {
		tx, err = outer.Begin(ctx) // SAVEPOINT
	} else {
		tx, err = s.pool.Begin(ctx)
	}
	if err != nil {
		return wrap(op, err)
	}
	defer func() {
		p := recover()
		if err != nil || p != nil {
			// Roll back even if ctx is done; a failed rollback closes the
			// connection, which aborts the transaction just the same.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = tx.Rollback(rctx)
			cancel()
		}
		if p != nil {
			panic(p)
		}
	}()
	if err = fn(s.withTx(ctx, tx), tx); err != nil {
		return err
	}
	return wrap(op+": commit", tx.Commit(ctx))
}

// runInTx runs fn in one transaction and commits if fn returns nil. Every Store
// method called with fn's context joins the transaction (writes nest as
// savepoints), except RecordRedemption, which always commits on its own, and
// DropExpiredRedemptions, which refuses. The context's transaction must not
// be used from more than one goroutine at a time.
func (s *Store) runInTx(ctx context.Context, fn func(ctx context.Context) error) error {
	return s.inTx(ctx, "transaction", func(ctx context.Context, _ pgx.Tx) error { return fn(ctx) })
}

// WithRotationLock runs fn while holding the cluster-wide rotation lock, so
// exactly one replica rotates at a time. It does not wait: if another
// session holds the lock it returns false without calling fn. The lock is a
// transaction-scoped advisory lock (pg_try_advisory_xact_lock); fn runs in
// that transaction (fn's context carries it, as in InTx), so everything fn
// writes through the Store commits atomically when fn returns nil and is
// rolled back otherwise. The lock is released at commit or rollback, or when
// the session dies.
func (s *Store) WithRotationLock(ctx context.Context, fn func(ctx context.Context) error) (bool, error) {
	held := false
	err := s.inTx(ctx, "rotation lock", func(ctx context.Context, tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1, $2)`, lockClass, lockRotation).Scan(&held); err != nil {
			return wrap("rotation lock", err)
		}
		if !held {
			return nil
		}
		return fn(ctx)
	})
	return held, err
}

// WithProvisionLock runs fn in a transaction holding the provisioning lock,
// waiting for it if another replica holds it. It serialises the creation of
// objects that must exist once per token, such as the key-encryption key:
// PKCS#11 has no "create if absent", so two replicas starting at once on a
// fresh token would otherwise each make one. Store calls with fn's context
// join the transaction (audit the creation there).
func (s *Store) WithProvisionLock(ctx context.Context, fn func(ctx context.Context) error) error {
	return s.inTx(ctx, "provisioning lock", func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, lockClass, lockProvision); err != nil {
			return wrap("provisioning lock", err)
		}
		return fn(ctx)
	})
}

// lockAuditChain takes the audit chain lock. Every audited write takes it
// first, before any other lock, which keeps the lock order fixed (see the
// package documentation).
func lockAuditChain(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, lockClass, lockAudit)
	return wrap("audit lock", err)
}

// errInTx is returned by operations that must run on their own.
var errInTx = errors.New("db: must not run inside a transaction")

// AsyncStandbys reports how many standbys stream from this server while no
// synchronous standby is configured. Then a failover can lose redemptions
// whose records were already handed out, and those tokens would redeem
// again: the double-spend guard is only as durable as the commit.
func (s *Store) AsyncStandbys(ctx context.Context) (int, error) {
	var n int
	var names string
	err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_stat_replication), current_setting('synchronous_standby_names')`).Scan(&n, &names)
	if err != nil {
		return 0, wrap("checking replication", err)
	}
	if names != "" {
		return 0, nil
	}
	return n, nil
}
