package db

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/pstd/pstd/migrations"
)

// provider returns a goose provider over a dedicated database/sql handle
// (not the pool: goose holds a session-level advisory lock while it migrates,
// and a session lock must never be left behind on a pooled connection).
// Close the returned *sql.DB when done.
func (s *Store) provider() (*goose.Provider, *sql.DB, error) {
	sqlDB := stdlib.OpenDB(*s.pool.Config().ConnConfig)
	sqlDB.SetMaxOpenConns(2)
	// Replicas started together with PSTD_MIGRATE all call Migrate: the
	// session locker makes them take turns (the later ones find nothing to
	// do). Retry every second, for up to five minutes.
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 300))
	if err != nil {
		sqlDB.Close()
		return nil, nil, fmt.Errorf("db: goose locker: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, sqlDB, migrations.FS,
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSlog(s.log),
	)
	if err != nil {
		sqlDB.Close()
		return nil, nil, fmt.Errorf("db: goose: %w", err)
	}
	return p, sqlDB, nil
}

// Migrate applies every pending migration, each in its own transaction, and
// records the change in the audit log. Applied versions are kept in
// goose_db_version; running Migrate on a current schema does nothing.
func (s *Store) Migrate(ctx context.Context) error {
	from, to, err := s.MigrateOnly(ctx)
	if err != nil || from == to {
		return err
	}
	if s.auditSigner.Load() == nil {
		// The audit log takes only signed events; pstd records the
		// migration when it migrates at start (--migrate), and every
		// replica.start event carries the schema version.
		s.log.Info("migrated without the HSM: no schema.migrate audit event", "from_version", from, "to_version", to)
		return nil
	}
	return s.AuditMigration(ctx, from, to)
}

// MigrateOnly applies every pending migration without an audit event and
// returns the versions before and after (equal when nothing was pending).
func (s *Store) MigrateOnly(ctx context.Context) (from, to int64, err error) {
	p, sqlDB, err := s.provider()
	if err != nil {
		return 0, 0, err
	}
	defer sqlDB.Close()
	if from, err = p.GetDBVersion(ctx); err != nil {
		return 0, 0, wrap("reading the schema version", err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return from, from, wrap("migrating", err)
	}
	if len(results) == 0 {
		return from, from, nil
	}
	for _, r := range results {
		s.log.Info("applied migration", "version", r.Source.Version, "file", r.Source.Path, "duration", r.Duration)
	}
	return from, results[len(results)-1].Source.Version, nil
}

// AuditMigration records a migration from one schema version to another.
func (s *Store) AuditMigration(ctx context.Context, from, to int64) error {
	_, err := s.AppendAudit(ctx, Event{
		Actor:   "pstd migrate",
		Action:  "schema.migrate",
		Subject: "schema",
		Details: map[string]any{"from_version": from, "to_version": to},
	})
	return err
}

// SchemaVersion returns the applied schema version and the newest version
// this binary carries. A service that does not migrate at start-up should
// refuse to serve when current < latest.
func (s *Store) SchemaVersion(ctx context.Context) (current, latest int64, err error) {
	p, sqlDB, err := s.provider()
	if err != nil {
		return 0, 0, err
	}
	defer sqlDB.Close()
	current, latest, err = p.GetVersions(ctx)
	return current, latest, wrap("reading the schema version", err)
}
