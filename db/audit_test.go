package db

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/pstd/pstd/auditlog"
)

// appendN appends n test events.
func appendN(t *testing.T, s *Store, n int) {
	t.Helper()
	for i := range n {
		if _, err := s.AppendAudit(context.Background(), Event{
			Actor: "auditor", Action: "test.event", Subject: fmt.Sprintf("thing:%d", i),
			Details: map[string]any{"i": i, "note": "ünïcödé \"quoted\" <&>", "nested": map[string]any{"b": 1, "a": []int{1, 2}}},
		}); err != nil {
			t.Fatalf("AppendAudit: %v", err)
		}
	}
}

// checkpoint signs and stores a checkpoint of the current head, as the
// service's checkpointer does, and returns it (the anchor an HSM would keep).
func checkpoint(t *testing.T, s *Store) auditlog.Signed {
	t.Helper()
	ctx := context.Background()
	st, err := s.AuditState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := auditlog.Checkpoint{V: 1, N: 1, At: time.Now().UTC().Format(auditlog.TimeFormat), AuditSeq: st.Seq,
		Head: hex.EncodeToString(st.Hash), RedemptionHWM: st.RedemptionHWM, Key: testAuditKey.ID}
	if last, ok, err := s.LatestCheckpoint(ctx); err != nil {
		t.Fatal(err)
	} else if ok {
		lc, _, _ := last.Open()
		c.N = lc.N + 1
		c.Prev, _ = last.Digest()
	}
	body, err := c.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	sig, err := testAuditKey.Signer.Sign(rand.Reader, auditlog.Digest(body), crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	signed := auditlog.Signed{Body: body, Sig: sig}
	if err := s.InsertCheckpoint(ctx, signed); err != nil {
		t.Fatal(err)
	}
	return signed
}

// verifyWith verifies the stored log and, if anchor is set, that the log
// reaches it.
func verifyWith(t *testing.T, s *Store, anchor *auditlog.Signed) error {
	t.Helper()
	v, err := s.VerifyAuditChain(context.Background())
	if err == nil && anchor != nil {
		err = v.Anchor(*anchor, "the HSM")
	}
	return err
}

// asOwner runs SQL as the database owner with every trigger bypassed
// (session_replication_role = replica), as an insider with database rights
// can.
func asOwner(t *testing.T, s *Store, stmts ...string) {
	t.Helper()
	ctx := context.Background()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(ctx, `SET session_replication_role = DEFAULT`)
	for _, q := range stmts {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

func wantBreak(t *testing.T, err error, what string) *auditlog.Error {
	t.Helper()
	var ae *auditlog.Error
	if !errors.As(err, &ae) {
		t.Fatalf("%s: verify = %v, want an audit error", what, err)
	}
	return ae
}

// The attacks of a database owner with triggers bypassed, each on a fresh
// log: every one makes verification fail and names the first bad event or
// checkpoint; the untouched log passes.
func TestAuditTamperingAsDatabaseOwner(t *testing.T) {
	t.Parallel()
	fresh := func(t *testing.T) (*Store, auditlog.Signed) {
		s, _ := newStore(t)
		appendN(t, s, 6)
		a := checkpoint(t, s)
		appendN(t, s, 2) // events after the newest checkpoint, signed one by one
		return s, a
	}
	t.Run("untouched", func(t *testing.T) {
		t.Parallel()
		s, a := fresh(t)
		if err := verifyWith(t, s, &a); err != nil {
			t.Fatal(err)
		}
		if n, _ := verifyAudit(t, s); n != 10 { // intro, schema.migrate, 6 + 2
			t.Fatalf("%d events", n)
		}
	})
	t.Run("delete the newest rows", func(t *testing.T) {
		t.Parallel()
		s, a := fresh(t)
		asOwner(t, s, `DELETE FROM audit_log WHERE seq >= 7`, `DELETE FROM audit_checkpoints`)
		ae := wantBreak(t, verifyWith(t, s, &a), "truncated log")
		if ae.Checkpoint != 1 {
			t.Fatalf("named %+v, want the anchored checkpoint 1", ae)
		}
	})
	t.Run("delete the newest rows and keep the checkpoint", func(t *testing.T) {
		t.Parallel()
		s, a := fresh(t)
		asOwner(t, s, `DELETE FROM audit_log WHERE seq >= 7`)
		ae := wantBreak(t, verifyWith(t, s, &a), "truncated log")
		if ae.Checkpoint != 1 {
			t.Fatalf("named %+v, want checkpoint 1", ae)
		}
	})
	t.Run("rewrite a row and recompute every later hash", func(t *testing.T) {
		t.Parallel()
		s, a := fresh(t)
		// The rewritten event keeps its (now wrong) signature; every hash
		// from it on is recomputed with the database's own function.
		asOwner(t, s, `UPDATE audit_log SET actor = 'mallory',
			canonical = replace(canonical, '"actor":"auditor"', '"actor":"mallory"') WHERE seq = 4`)
		asOwner(t, s, `DO $$
			DECLARE r record; prev bytea;
			BEGIN
				SELECT hash INTO prev FROM audit_log WHERE seq = 3;
				FOR r IN SELECT * FROM audit_log WHERE seq >= 4 ORDER BY seq LOOP
					UPDATE audit_log SET prev_hash = prev, hash = audit_log_hash_v2(prev, r.seq, r.canonical, r.sig) WHERE seq = r.seq;
					SELECT hash INTO prev FROM audit_log WHERE seq = r.seq;
				END LOOP;
			END $$`)
		if ae := wantBreak(t, verifyWith(t, s, &a), "rewritten row"); ae.Seq != 4 {
			t.Fatalf("named %+v, want event 4", ae)
		}
	})
	t.Run("insert a forged row", func(t *testing.T) {
		t.Parallel()
		s, a := fresh(t)
		// A row signed by a key of the attacker's own, chained correctly.
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
		forger := &AuditSigner{ID: "audit-1", PublicDER: der, Signer: k}
		if _, err := s.InsertSignedBy(context.Background(), forger, Event{Actor: "pstd", Action: "key.retire", Subject: "key:1"}); err != nil {
			t.Fatal(err)
		}
		if ae := wantBreak(t, verifyWith(t, s, &a), "forged row"); ae.Seq != 11 {
			t.Fatalf("named %+v, want event 11", ae)
		}
	})
	t.Run("insert a replayed row", func(t *testing.T) {
		t.Parallel()
		s, a := fresh(t)
		// A genuine signed row copied to the end and chained (the owner
		// drops the index that would refuse its repeated event id).
		asOwner(t, s, `DROP INDEX audit_log_event_id`, `INSERT INTO audit_log (seq, at, actor, action, subject, details, version, event_id, canonical, key_id, sig, prev_hash, hash)
			SELECT 11, r.at, r.actor, r.action, r.subject, r.details, 2, r.event_id, r.canonical, r.key_id, r.sig, h.hash,
			       audit_log_hash_v2(h.hash, 11, r.canonical, r.sig)
			  FROM audit_log r, audit_log h WHERE r.seq = 5 AND h.seq = 10`)
		if ae := wantBreak(t, verifyWith(t, s, &a), "replayed row"); ae.Seq != 11 {
			t.Fatalf("named %+v, want event 11", ae)
		}
	})
	t.Run("reorder two rows", func(t *testing.T) {
		t.Parallel()
		s, a := fresh(t)
		asOwner(t, s, `UPDATE audit_log SET seq = 1000 WHERE seq = 4`, `UPDATE audit_log SET seq = 4 WHERE seq = 5`, `UPDATE audit_log SET seq = 5 WHERE seq = 1000`)
		if ae := wantBreak(t, verifyWith(t, s, &a), "reordered rows"); ae.Seq != 4 {
			t.Fatalf("named %+v, want event 4", ae)
		}
	})
	t.Run("a checkpoint signed by another key", func(t *testing.T) {
		t.Parallel()
		s, a := fresh(t)
		asOwner(t, s, `UPDATE audit_checkpoints SET sig = sig || '\x00'::bytea`)
		if ae := wantBreak(t, verifyWith(t, s, &a), "bad checkpoint"); ae.Checkpoint != 1 {
			t.Fatalf("named %+v, want checkpoint 1", ae)
		}
	})
}

func TestAuditLogRefusesChanges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	checkpoint(t, s)
	for _, q := range []string{
		`UPDATE audit_log SET actor = 'x'`,
		`DELETE FROM audit_log`,
		`TRUNCATE audit_log`,
		`UPDATE audit_checkpoints SET audit_seq = 0`,
		`DELETE FROM audit_checkpoints`,
		`TRUNCATE audit_checkpoints`,
	} {
		wantSQLState(t, superExec(t, s, q), "23001")
	}
	// Unsigned rows are refused outright.
	wantSQLState(t, superExec(t, s, `INSERT INTO audit_log (actor, action) VALUES ('forger', 'key.create')`), "23514")
	if n, err := verifyAudit(t, s); err != nil || n != 2 {
		t.Fatalf("verify = %d, %v", n, err)
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
	_, err = s.appendAudit(ctx, tx, Event{Actor: "x", Action: "test.event"})
	wantSQLState(t, err, "55000")
}

// Without an audit key nothing is written; a second key that the chain never
// introduced is refused rather than starting a second root.
func TestAuditNeedsItsKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, url := newStore(t)
	bare, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer bare.Close()
	if _, err := bare.AppendAudit(ctx, Event{Actor: "op", Action: "test.event"}); !errors.Is(err, ErrNoAuditSigner) {
		t.Fatalf("append without a key: %v", err)
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	bare.SetAuditSigner(&AuditSigner{ID: "audit-2", PublicDER: der, Signer: k})
	if _, err := bare.AppendAudit(ctx, Event{Actor: "op", Action: "test.event"}); err == nil {
		t.Fatal("an unintroduced key appended")
	}
	// Introduced by the trusted key, it may sign.
	if _, err := s.AppendAudit(ctx, KeyIntroEvent("op", "audit-2", der)); err != nil {
		t.Fatal(err)
	}
	if _, err := bare.AppendAudit(ctx, Event{Actor: "op", Action: "test.event"}); err != nil {
		t.Fatal(err)
	}
	if n, err := verifyAudit(t, s); err != nil || n != 4 {
		t.Fatalf("verify = %d, %v", n, err)
	}
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
	if n, err := verifyAudit(t, a); err != nil || n != 82 {
		t.Fatalf("verify = %d, %v; want 82", n, err)
	}
}
