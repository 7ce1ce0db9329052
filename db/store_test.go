package db

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pstd/pstd/internal/pstderr"
	"github.com/pstd/pstd/internal/testenv"
)

func TestMigrateFromEmptyAndAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := testenv.NewDatabase(t)
	s := openStore(t, url)
	cur, latest, err := s.SchemaVersion(ctx)
	if err != nil {
		t.Fatalf("SchemaVersion on an empty database: %v", err)
	}
	if cur != 0 || latest < 1 {
		t.Fatalf("empty database: version %d of %d", cur, latest)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	cur, latest, err = s.SchemaVersion(ctx)
	if err != nil || cur != latest {
		t.Fatalf("after Migrate: version %d of %d, %v", cur, latest, err)
	}
	var recorded int64
	if err := s.pool.QueryRow(ctx, `SELECT max(version_id) FROM goose_db_version WHERE is_applied`).Scan(&recorded); err != nil || recorded != latest {
		t.Fatalf("goose_db_version: %d, %v; want %d", recorded, err, latest)
	}
	if err := s.Migrate(ctx); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	if got := auditActions(t, s); !slices.Equal(got, []string{"schema.migrate schema"}) {
		t.Fatalf("audit after two migrations: %q, want one schema.migrate", got)
	}
	if n, err := verifyAudit(t, s); n != 2 || err != nil {
		t.Fatalf("VerifyAuditChain: %d, %v", n, err)
	}
}

func TestMigrationDownRefuses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	p, sqlDB, err := s.provider()
	if err != nil {
		t.Fatal(err)
	}
	defer sqlDB.Close()
	if _, err := p.Down(ctx); err == nil || !strings.Contains(err.Error(), "cannot be reverted") {
		t.Fatalf("Down: %v; want a refusal", err)
	}
	if cur, latest, err := s.SchemaVersion(ctx); err != nil || cur != latest {
		t.Fatalf("after a refused Down: version %d of %d, %v", cur, latest, err)
	}
}

func TestOpenSessionDefaults(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, url := newStore(t)
	var app, idle string
	if err := s.pool.QueryRow(ctx, `SELECT current_setting('application_name'), current_setting('idle_in_transaction_session_timeout')`).Scan(&app, &idle); err != nil {
		t.Fatal(err)
	}
	if app != "pstd" || idle != "1min" {
		t.Fatalf("application_name %q, idle_in_transaction_session_timeout %q", app, idle)
	}
	custom := openStore(t, url+"&application_name=pstd-replica-2")
	if err := custom.pool.QueryRow(ctx, `SELECT current_setting('application_name')`).Scan(&app); err != nil || app != "pstd-replica-2" {
		t.Fatalf("URL application_name not kept: %q, %v", app, err)
	}
	if _, err := Open(ctx, "postgres://u:hunter2@[::1"); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("bad URL: %v (must fail without echoing the password)", err)
	}
}

func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	url := testenv.NewDatabase(t)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		s := openStore(t, url)
		wg.Go(func() { errs[i] = s.Migrate(context.Background()) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("replica %d: Migrate: %v", i, err)
		}
	}
	s := openStore(t, url)
	if got := auditActions(t, s); len(got) != 1 {
		t.Fatalf("audit: %q, want exactly one schema.migrate", got)
	}
}

func TestRotationLockExclusiveAcrossPools(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, url := newStore(t)
	b := openStore(t, url)

	inside := make(chan struct{})
	release := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		ok, err := a.WithRotationLock(ctx, func(context.Context) error {
			close(inside)
			<-release
			return nil
		})
		if err == nil && !ok {
			err = errors.New("first replica did not get the lock")
		}
		done <- err
	}()
	<-inside
	called := false
	ok, err := b.WithRotationLock(ctx, func(context.Context) error { called = true; return nil })
	if err != nil || ok || called {
		t.Fatalf("second replica while the first rotates: ok=%v called=%v err=%v; want false, not called", ok, called, err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ok, err = b.WithRotationLock(ctx, func(context.Context) error { called = true; return nil })
	if err != nil || !ok || !called {
		t.Fatalf("second replica after the first finished: ok=%v called=%v err=%v", ok, called, err)
	}

	// Many attempts from both pools at once: never two inside.
	var inFlight, maxInFlight, runs atomic.Int32
	var wg sync.WaitGroup
	for i := range 16 {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			for range 5 {
				_, err := s.WithRotationLock(ctx, func(context.Context) error {
					n := inFlight.Add(1)
					for {
						m := maxInFlight.Load()
						if n <= m || maxInFlight.CompareAndSwap(m, n) {
							break
						}
					}
					runs.Add(1)
					time.Sleep(2 * time.Millisecond)
					inFlight.Add(-1)
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if maxInFlight.Load() != 1 || runs.Load() == 0 {
		t.Fatalf("rotations in flight at once: %d (runs %d), want 1", maxInFlight.Load(), runs.Load())
	}
}

func TestRotationLockRollsBackEverything(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	var id uint32
	ok, err := s.WithRotationLock(ctx, func(ctx context.Context) error {
		var err error
		if id, err = s.NextKeyID(ctx); err != nil {
			return err
		}
		now := time.Now()
		if err := s.CreateKeyEpoch(ctx, epoch(t, id, now, now.Add(time.Hour)), "rotation"); err != nil {
			return err
		}
		// Inside the transaction the new key and its partition are visible.
		if es, err := s.KeyEpochs(ctx); err != nil || len(es) != 1 {
			return errors.New("key not visible inside the rotation transaction")
		}
		return errTest
	})
	if !ok || !errors.Is(err, errTest) {
		t.Fatalf("WithRotationLock: ok=%v err=%v", ok, err)
	}
	if es, err := s.ListKeyEpochs(ctx); err != nil || len(es) != 0 {
		t.Fatalf("after rollback: %d key epochs, %v", len(es), err)
	}
	if parts, err := s.RedemptionPartitions(ctx); err != nil || len(parts) != 0 {
		t.Fatalf("after rollback: partitions %v, %v", parts, err)
	}
	if got := auditActions(t, s); len(got) != 1 {
		t.Fatalf("after rollback the audit log has %q", got)
	}
	next, err := s.NextKeyID(ctx)
	if err != nil || next == id {
		t.Fatalf("NextKeyID after rollback = %d (%v); id %d must never be handed out again", next, err, id)
	}
}

func TestInTxNestedWritesUseSavepoints(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	now := time.Now()
	err := s.runInTx(ctx, func(ctx context.Context) error {
		if err := s.CreateKeyEpoch(ctx, epoch(t, 5, now, now.Add(time.Hour)), "op"); err != nil {
			return err
		}
		// A failing nested write rolls back to its savepoint only.
		if err := s.CreateKeyEpoch(ctx, epoch(t, 5, now, now.Add(time.Hour)), "op"); !errors.Is(err, ErrExists) {
			t.Errorf("duplicate key id: %v, want ErrExists", err)
		}
		_, err := s.AppendAudit(ctx, Event{Actor: "op", Action: "test.note", Subject: "x"})
		return err
	})
	if err != nil {
		t.Fatalf("InTx: %v", err)
	}
	if _, err := s.GetKeyEpoch(ctx, 5); err != nil {
		t.Fatalf("GetKeyEpoch(5): %v", err)
	}
	want := []string{"schema.migrate schema", "key.create key:5", "test.note x"}
	if got := auditActions(t, s); !slices.Equal(got, want) {
		t.Fatalf("audit: %q, want %q", got, want)
	}
	if n, err := verifyAudit(t, s); n != 4 || err != nil {
		t.Fatalf("VerifyAuditChain: %d, %v", n, err)
	}
}

func closedPortURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "postgres://pstd@" + addr + "/pstd?sslmode=disable&connect_timeout=2"
}

func TestDatabaseDownIsUnavailable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := Open(ctx, closedPortURL(t))
	if err != nil {
		t.Fatalf("Open must not connect: %v", err)
	}
	defer s.Close()
	wantKind(t, s.Ping(ctx), pstderr.Unavailable)
	wantKind(t, s.RecordRedemption(ctx, redemption(t, 1), nil), pstderr.Unavailable)
	_, err = s.KeyEpochs(ctx)
	wantKind(t, err, pstderr.Unavailable)
	_, _, _, err = s.LatestCommitment(ctx)
	wantKind(t, err, pstderr.Unavailable)
	_, err = s.KeySetVersion(ctx)
	wantKind(t, err, pstderr.Unavailable)
	_, err = s.NextKeyID(ctx)
	wantKind(t, err, pstderr.Unavailable)
	ok, err := s.WithRotationLock(ctx, func(context.Context) error { t.Error("fn called without a database"); return nil })
	if ok {
		t.Error("WithRotationLock reported the lock held")
	}
	wantKind(t, err, pstderr.Unavailable)
	wantKind(t, s.Migrate(ctx), pstderr.Unavailable)
	if errors.Is(s.Ping(ctx), pstderr.AlreadyRedeemed) {
		t.Error("Unavailable matched AlreadyRedeemed")
	}
}

func TestClosedStoreAndDeadlineAreUnavailable(t *testing.T) {
	t.Parallel()
	s, url := newStore(t)
	id := mustCreateKey(t, s)

	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	wantKind(t, s.RecordRedemption(expired, redemption(t, id), nil), pstderr.Unavailable)

	// Connections killed under the store (a database restart): the next
	// calls either succeed on fresh connections or fail Unavailable, never
	// anything else.
	other := openStore(t, url)
	if err := superExec(t, other, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'pstd'`); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := s.RecordRedemption(context.Background(), redemption(t, id), nil); err != nil {
			wantKind(t, err, pstderr.Unavailable)
		}
		if _, err := s.KeyEpochs(context.Background()); err != nil {
			wantKind(t, err, pstderr.Unavailable)
		}
	}

	s.Close()
	wantKind(t, s.Ping(context.Background()), pstderr.Unavailable)
	wantKind(t, s.RecordRedemption(context.Background(), redemption(t, id), nil), pstderr.Unavailable)
}

func TestErrorClassification(t *testing.T) {
	t.Parallel()
	for code, want := range map[string]pstderr.Kind{
		"08006": pstderr.Unavailable, // connection_failure
		"57P01": pstderr.Unavailable, // admin_shutdown
		"57014": pstderr.Unavailable, // query_canceled
		"53100": pstderr.Unavailable, // disk_full
		"55P03": pstderr.Unavailable, // lock_not_available
		"25006": pstderr.Unavailable, // read_only_sql_transaction
		"23514": pstderr.Kind(0),     // check_violation
		"42P01": pstderr.Kind(0),     // undefined_table
	} {
		err := wrap("op", &pgconn.PgError{Code: code, Message: "m", Detail: "Failing row contains (secret)"})
		if got, _ := pstderr.KindOf(err); got != want {
			t.Errorf("SQLSTATE %s: kind %s, want %s", code, got, want)
		}
		if msg := err.Error(); strings.Contains(msg, "secret") {
			t.Errorf("SQLSTATE %s: error text carries the server DETAIL: %q", code, msg)
		}
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			t.Errorf("SQLSTATE %s: the raw *pgconn.PgError (with DETAIL) is still in the chain", code)
		}
	}
	if wrap("op", nil) != nil {
		t.Error("wrap(nil) != nil")
	}
	already := pstderr.New(pstderr.AlreadyRedeemed, "x")
	if wrap("op", already) != error(already) {
		t.Error("wrap re-wrapped a pstderr error")
	}
}
