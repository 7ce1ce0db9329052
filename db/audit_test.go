package db

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
)

func TestAuditChainVerifiesAndDetectsTampering(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	for i := range 5 {
		if _, err := s.AppendAudit(ctx, Event{
			Actor:   "auditor",
			Action:  "test.event",
			Subject: fmt.Sprintf("thing:%d", i),
			Details: map[string]any{"i": i, "note": "ünïcödé \"quoted\"", "nested": map[string]any{"b": 1, "a": []int{1, 2}}},
		}); err != nil {
			t.Fatalf("AppendAudit: %v", err)
		}
	}
	n, err := s.VerifyAuditChain(ctx)
	if err != nil || n != 6 {
		t.Fatalf("VerifyAuditChain = %d, %v; want 6, nil", n, err)
	}
	seq, head, err := s.AuditHead(ctx)
	if err != nil || seq != 6 || len(head) != 32 {
		t.Fatalf("AuditHead = %d %x %v", seq, head, err)
	}
	// The Go hash and the database's agree on every row.
	entries, err := s.ListAudit(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if got := auditHash(e.PrevHash, e.Seq, e.At, e.Actor, e.Action, e.Subject, string(e.Details)); !bytes.Equal(got, e.Hash) {
			t.Fatalf("seq %d: Go hash %x, stored %x", e.Seq, got, e.Hash)
		}
	}

	// As the superuser: disable the guard and change record 3.
	tamper := func(q string) {
		t.Helper()
		for _, stmt := range []string{`ALTER TABLE audit_log DISABLE TRIGGER audit_log_immutable`, q, `ALTER TABLE audit_log ENABLE TRIGGER audit_log_immutable`} {
			if err := superExec(t, s, stmt); err != nil {
				t.Fatalf("%s: %v", stmt, err)
			}
		}
	}
	tamper(`UPDATE audit_log SET actor = 'mallory' WHERE seq = 3`)
	n, err = s.VerifyAuditChain(ctx)
	var ce *AuditChainError
	if !errors.As(err, &ce) || ce.Seq != 3 || n != 2 {
		t.Fatalf("after changing seq 3: %d, %v; want 2 and a break at seq 3", n, err)
	}
	tamper(`UPDATE audit_log SET actor = 'auditor' WHERE seq = 3`)
	if n, err := s.VerifyAuditChain(ctx); err != nil || n != 6 {
		t.Fatalf("after undoing: %d, %v", n, err)
	}
	// Details changed (jsonb): detected.
	tamper(`UPDATE audit_log SET details = details || '{"i": 40}' WHERE seq = 5`)
	if _, err := s.VerifyAuditChain(ctx); !errors.As(err, &ce) || ce.Seq != 5 {
		t.Fatalf("after changing details of seq 5: %v", err)
	}
	tamper(`UPDATE audit_log SET details = details || '{"i": 3}' WHERE seq = 5`)
	// A record recomputed consistently by the tamperer breaks the next link.
	tamper(`UPDATE audit_log SET actor = 'mallory', hash = audit_log_hash(prev_hash, seq, at, 'mallory', action, subject, details) WHERE seq = 4`)
	if _, err := s.VerifyAuditChain(ctx); !errors.As(err, &ce) || ce.Seq != 5 {
		t.Fatalf("after rehashing seq 4: %v; want a break at seq 5", err)
	}
	// A deleted record is a gap.
	tamper(`DELETE FROM audit_log WHERE seq = 2`)
	if n, err := s.VerifyAuditChain(ctx); !errors.As(err, &ce) || ce.Seq != 2 || n != 1 {
		t.Fatalf("after deleting seq 2: %d, %v", n, err)
	}
}

func TestAuditLogRefusesChanges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	for _, q := range []string{
		`UPDATE audit_log SET actor = 'x'`,
		`DELETE FROM audit_log`,
		`TRUNCATE audit_log`,
	} {
		wantSQLState(t, superExec(t, s, q), "23001")
	}
	// Inserted values for seq, at and the hashes are replaced by the chain trigger.
	if err := superExec(t, s, `INSERT INTO audit_log (seq, at, actor, action, subject, prev_hash, hash)
		VALUES (99, '2000-01-01', 'forger', 'key.create', 'key:1', '\x00'::bytea, '\x00'::bytea)`); err != nil {
		t.Fatal(err)
	}
	if n, err := s.VerifyAuditChain(ctx); err != nil || n != 2 {
		t.Fatalf("VerifyAuditChain = %d, %v", n, err)
	}
	if seq, _, _ := s.AuditHead(ctx); seq != 2 {
		t.Fatalf("forged seq kept: head %d", seq)
	}
	// Only under READ COMMITTED (a later snapshot could miss the last record).
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SET TRANSACTION ISOLATION LEVEL REPEATABLE READ`); err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec(ctx, `INSERT INTO audit_log (actor, action) VALUES ('x', 'test.event')`)
	wantSQLState(t, err, "55000")
}

func TestAuditRefusesSecretsAndBadEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	for _, e := range []Event{
		{Actor: "op", Action: "key.create", Details: map[string]any{"sealed_secret": "00"}},
		{Actor: "op", Action: "redemption.record", Details: map[string]any{"Nonce": "00"}},
		{Actor: "op", Action: "hsm.login", Details: map[string]any{"user_pin": "1234"}},
		{Actor: "op", Action: "key.import", Details: map[string]any{"private-key": "00"}},
		{Actor: "", Action: "key.create"},
		{Actor: "op", Action: "KeyCreate"},
	} {
		if _, err := s.AppendAudit(ctx, e); err == nil {
			t.Errorf("appended %+v", e)
		}
	}
	if got := auditActions(t, s); len(got) != 1 {
		t.Fatalf("audit: %q", got)
	}
	// Words that merely contain a forbidden one are fine.
	if _, err := s.AppendAudit(ctx, Event{Actor: "op", Action: "test.event", Details: map[string]any{"mapping": 1, "spinner": 2, "public_key_sha256": "ab"}}); err != nil {
		t.Fatalf("harmless details refused: %v", err)
	}
}

func TestAuditConcurrentAppendsStayLinear(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, url := newStore(t)
	b := openStore(t, url)
	var wg sync.WaitGroup
	for i := range 8 {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			for j := range 10 {
				if _, err := s.AppendAudit(ctx, Event{Actor: "replica", Action: "test.event", Subject: fmt.Sprintf("%d/%d", i, j)}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if n, err := a.VerifyAuditChain(ctx); err != nil || n != 81 {
		t.Fatalf("VerifyAuditChain = %d, %v; want 81", n, err)
	}
}
