package db

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pstd/pstd/internal/testenv"
)

// asRole connects to url as a login member of role (see testenv.RoleURL).
func asRole(t *testing.T, url, role string) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testenv.RoleURL(t, url, role))
	if err != nil {
		t.Fatalf("connect as %s: %v", role, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	var cur string
	if err := conn.QueryRow(ctx, `SELECT current_user`).Scan(&cur); err != nil || cur != role+"_login" {
		t.Fatalf("connected as %q (%v), want %s_login", cur, err, role)
	}
	return conn
}

// refused runs sql and wants it refused with SQLSTATE code
// (42501 insufficient_privilege, P0001/23001 a guard trigger, …).
func refused(t *testing.T, conn *pgx.Conn, code, sql string, args ...any) {
	t.Helper()
	_, err := conn.Exec(context.Background(), sql, args...)
	if err == nil {
		t.Fatalf("%s: allowed, want SQLSTATE %s", sql, code)
	}
	if got := sqlState(err); got != code {
		t.Fatalf("%s: %v (SQLSTATE %s), want SQLSTATE %s", sql, err, got, code)
	}
}

func TestServiceRoleCannotChangeAuditRows(t *testing.T) {
	s, url := newStore(t)
	ctx := context.Background()
	id := mustCreateKey(t, s)
	if _, err := s.AppendAudit(ctx, Event{Actor: "test", Action: "test.event"}); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordCounts(ctx, "pstd", "r1", []IssuanceCount{{KeyID: id, Start: time.Unix(0, 0), End: time.Unix(60, 0), Tokens: 10, Requests: 1}}, nil); err != nil {
		t.Fatal(err)
	}
	svc := asRole(t, url, "pstd_service")

	// What the server does works as the service role: audit appends
	// (through the chain trigger), counts, redemptions, key ids.
	svcStore := openStore(t, testenv.RoleURL(t, url, "pstd_service"))
	if _, err := svcStore.AppendAudit(ctx, Event{Actor: "svc", Action: "test.event"}); err != nil {
		t.Fatalf("service role cannot append to the audit log: %v", err)
	}
	if err := svcStore.RecordCounts(ctx, "pstd", "r1", []IssuanceCount{{KeyID: id, Start: time.Unix(60, 0), End: time.Unix(120, 0), Tokens: 5, Requests: 1}},
		[]RefusalCount{{Reason: RefusalReplay, KeyID: id, Start: time.Unix(60, 0), End: time.Unix(120, 0), Refusals: 1}}); err != nil {
		t.Fatalf("service role cannot record counts: %v", err)
	}
	if err := svcStore.RecordRedemption(ctx, redemption(t, id), nil); err != nil {
		t.Fatalf("service role cannot record a redemption: %v", err)
	}
	if _, err := svcStore.NextKeyID(ctx); err != nil {
		t.Fatalf("service role cannot allocate a key id: %v", err)
	}
	if _, err := svcStore.RecordKeyTransitions(ctx, time.Now(), "pstd"); err != nil {
		t.Fatalf("service role cannot record key transitions: %v", err)
	}

	// What it must not do.
	for _, sql := range []string{
		`UPDATE audit_log SET actor = 'mallory'`,
		`DELETE FROM audit_log`,
		`TRUNCATE audit_log`,
		`UPDATE issuance_counts SET tokens = 0`,
		`DELETE FROM issuance_counts`,
		`DELETE FROM refusal_counts`,
		`DELETE FROM redemption_counts`,
		`DELETE FROM key_transitions`,
		`ALTER TABLE audit_log DISABLE TRIGGER audit_log_immutable`,
		`ALTER TABLE audit_log DISABLE TRIGGER USER`,
		`ALTER TABLE redemptions DETACH PARTITION redemptions_k` + itoa(id),
		`DROP TABLE redemptions_k` + itoa(id),
		`SELECT redemptions_drop_partition(` + itoa(id) + `)`,
		`UPDATE key_epochs SET expiry = expiry + interval '1 year'`,
		`DELETE FROM key_epochs`,
		`CREATE TABLE sneaky (x int)`,
	} {
		_, err := svc.Exec(ctx, sql)
		if err == nil {
			t.Errorf("service role: %s: allowed", sql)
			continue
		}
		// Refused either by privilege (42501), ownership (42501) or a
		// guard trigger; never by accident of syntax.
		if code := sqlState(err); code != "42501" && code != "23001" {
			t.Errorf("service role: %s: %v (SQLSTATE %s), want a privilege or guard refusal", sql, err, code)
		}
	}
	// Triggers cannot be bypassed by the replication role switch.
	refused(t, svc, "42501", `SET session_replication_role = replica`)

	// The audit chain still verifies: nothing changed.
	if _, err := s.VerifyAuditChain(ctx); err != nil {
		t.Fatalf("audit chain after the service role's attempts: %v", err)
	}
}

func itoa(id uint32) string { return strconv.FormatUint(uint64(id), 10) }

func TestAuditorRoleReadsNoSecretAndWritesNothing(t *testing.T) {
	s, url := newStore(t)
	ctx := context.Background()
	id := mustCreateKey(t, s)
	if err := s.RecordRedemption(ctx, redemption(t, id), nil); err != nil {
		t.Fatal(err)
	}
	aud := asRole(t, url, "pstd_auditor")

	// What an auditor reads.
	for _, sql := range []string{
		`SELECT count(*) FROM audit_log`,
		`SELECT count(*) FROM issuance_counts`,
		`SELECT count(*) FROM refusal_counts`,
		`SELECT count(*) FROM redemption_counts`,
		`SELECT sum(redemptions) FROM redemption_counts_live`,
		`SELECT count(*) FROM key_transitions`,
		`SELECT count(*) FROM commitments`,
		`SELECT count(*) FROM rr_keys`,
		`SELECT key_id, public_key, not_before, expiry, retired_at FROM key_epochs`,
		`SELECT * FROM key_epoch_states`,
	} {
		if _, err := aud.Exec(ctx, sql); err != nil {
			t.Errorf("auditor: %s: %v", sql, err)
		}
	}
	var live int64
	if err := aud.QueryRow(ctx, `SELECT sum(redemptions) FROM redemption_counts_live WHERE key_id = $1`, int64(id)).Scan(&live); err != nil || live != 1 {
		t.Errorf("auditor reads %d live redemptions (%v), want 1", live, err)
	}
	// The summary works with exactly the auditor's privileges.
	audStore := openStore(t, testenv.RoleURL(t, url, "pstd_auditor"))
	sum, err := audStore.Summarize(ctx, time.Time{}, time.Time{})
	if err != nil {
		t.Fatalf("Summarize as auditor: %v", err)
	}
	if len(sum.Keys) != 1 || sum.Keys[0].Redemptions != 1 {
		t.Fatalf("auditor summary: %+v", sum.Keys)
	}

	// Never a sealed secret, never a redemption row, never a write.
	for _, sql := range []string{
		`SELECT sealed_secret FROM key_epochs`,
		`SELECT * FROM key_epochs`,
		`SELECT nonce_hash FROM redemptions`,
		`SELECT * FROM redemptions_k` + itoa(id),
		`INSERT INTO audit_log (actor, action) VALUES ('auditor', 'test.event')`,
		`INSERT INTO issuance_counts (audit_seq, key_id, bucket_start, bucket_end, tokens, requests, replica) VALUES (1, 1, now(), now() + interval '1 minute', 1, 1, 'x')`,
		`UPDATE key_epochs SET retired_at = now()`,
		`DELETE FROM commitments`,
		`SELECT redemptions_rollup_and_drop(` + itoa(id) + `)`,
		`SELECT nextval('key_id_seq')`,
	} {
		refused(t, aud, "42501", sql)
	}
}

// Two databases of one cluster migrating at the same moment both succeed,
// although the roles are cluster-wide (the tests themselves do this all the
// time; this makes it certain).
func TestRolesMigrationConcurrentDatabases(t *testing.T) {
	urls := []string{testenv.NewDatabase(t), testenv.NewDatabase(t), testenv.NewDatabase(t)}
	var wg sync.WaitGroup
	errs := make([]error, len(urls))
	for i, u := range urls {
		st := openStore(t, u)
		wg.Go(func() { errs[i] = st.Migrate(context.Background()) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("database %d: Migrate: %v", i, err)
		}
	}
	st := openStore(t, urls[0])
	var n int
	if err := st.pool.QueryRow(context.Background(),
		`SELECT count(*) FROM pg_roles WHERE rolname IN ('pstd_service', 'pstd_auditor') AND NOT rolcanlogin AND NOT rolsuper`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("roles: %d (%v), want pstd_service and pstd_auditor, NOLOGIN", n, err)
	}
}
