package db

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pstd/pstd/internal/pstderr"
)

func TestKeyEpochCreateAndPartition(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)

	id, err := s.NextKeyID(ctx)
	if err != nil || id != 1 {
		t.Fatalf("first NextKeyID = %d, %v; want 1", id, err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	e := epoch(t, id, now.Add(time.Hour), now.Add(61*24*time.Hour))
	e.CreatedAt = now
	if err := s.CreateKeyEpoch(ctx, e, "alice"); err != nil {
		t.Fatalf("CreateKeyEpoch: %v", err)
	}
	got, err := s.GetKeyEpoch(ctx, id)
	if err != nil {
		t.Fatalf("GetKeyEpoch: %v", err)
	}
	e.Protocol = ProtocolV1VOPRF
	if string(got.Sealed) != string(e.Sealed) || string(got.PublicKey) != string(e.PublicKey) ||
		got.KeyID != e.KeyID || got.Protocol != e.Protocol || got.KEKLabel != e.KEKLabel ||
		!got.CreatedAt.Equal(e.CreatedAt) || !got.NotBefore.Equal(e.NotBefore) || !got.Expiry.Equal(e.Expiry) ||
		!got.RetiredAt.IsZero() || got.Imported {
		t.Fatalf("stored epoch differs:\n got %+v\nwant %+v", got, e)
	}
	if st := got.State(now); st != KeyPending {
		t.Fatalf("state before not_before: %s", st)
	}
	parts, err := s.RedemptionPartitions(ctx)
	if err != nil || !slices.Equal(parts, []uint32{id}) {
		t.Fatalf("redemption partitions: %v, %v; want [%d]", parts, err, id)
	}
	var exists bool
	if err := s.pool.QueryRow(ctx, `SELECT to_regclass('redemptions_k1') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		t.Fatalf("partition redemptions_k1 missing: %v", err)
	}

	// Same id again: ErrExists, and no second audit record.
	if err := s.CreateKeyEpoch(ctx, e, "alice"); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate key id: %v, want ErrExists", err)
	}
	// An imported key takes id 2; allocation skips it.
	imp := epoch(t, 2, now, now.Add(time.Hour))
	imp.Imported = true
	if err := s.CreateKeyEpoch(ctx, imp, "bob"); err != nil {
		t.Fatalf("import: %v", err)
	}
	if next, err := s.NextKeyID(ctx); err != nil || next != 3 {
		t.Fatalf("NextKeyID after an import of 2: %d, %v; want 3", next, err)
	}
	// The largest uint32 key id is storable.
	if err := s.CreateKeyEpoch(ctx, epoch(t, 0xffffffff, now, now.Add(time.Hour)), "bob"); err != nil {
		t.Fatalf("key id 2^32-1: %v", err)
	}

	if _, err := s.GetKeyEpoch(ctx, 77); !errors.Is(err, pstderr.UnknownKey) {
		t.Fatalf("GetKeyEpoch(unknown): %v", err)
	}
	want := []string{"schema.migrate schema", "key.create key:1", "key.create key:2", "key.create key:4294967295"}
	if got := auditActions(t, s); !slices.Equal(got, want) {
		t.Fatalf("audit: %q, want %q", got, want)
	}
	entries, _ := s.ListAudit(ctx, 2, 1) // after the key introduction and schema.migrate
	if len(entries) != 1 || entries[0].Actor != "alice" || !containsAll(string(entries[0].Details), `"public_key_sha256"`, `"not_before"`, `"expiry"`) {
		t.Fatalf("key.create record: %+v", entries)
	}
	if containsAll(string(entries[0].Details), "sealed") {
		t.Fatalf("key.create record mentions the sealed secret: %s", entries[0].Details)
	}
}

func TestRetireKeyEpoch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	a := mustCreateKey(t, s)
	b := mustCreateKey(t, s)
	if err := s.RetireKeyEpoch(ctx, a, "carol"); err != nil {
		t.Fatalf("RetireKeyEpoch: %v", err)
	}
	if err := s.RetireKeyEpoch(ctx, a, "carol"); err != nil {
		t.Fatalf("retiring again: %v", err)
	}
	if err := s.RetireKeyEpoch(ctx, 99, "carol"); !errors.Is(err, pstderr.UnknownKey) {
		t.Fatalf("retiring an unknown key: %v", err)
	}
	live, err := s.KeyEpochs(ctx)
	if err != nil || len(live) != 1 || live[0].KeyID != b {
		t.Fatalf("KeyEpochs: %+v, %v; want only %d", live, err, b)
	}
	all, err := s.ListKeyEpochs(ctx)
	if err != nil || len(all) != 2 || all[0].RetiredAt.IsZero() || all[0].State(time.Now()) != KeyRetired {
		t.Fatalf("ListKeyEpochs: %+v, %v", all, err)
	}
	if got := auditActions(t, s); len(got) != 4 || got[3] != "key.retire key:1" {
		t.Fatalf("audit: %q (one key.retire, not two)", got)
	}
}

func TestKeyStateDerivedFromTimes(t *testing.T) {
	t.Parallel()
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	e := KeyEpoch{NotBefore: nb, Expiry: nb.Add(time.Hour)}
	for _, c := range []struct {
		at   time.Time
		want KeyState
	}{
		{nb.Add(-time.Second), KeyPending},
		{nb, KeyActive},
		{nb.Add(59 * time.Minute), KeyActive},
		{nb.Add(time.Hour), KeyExpired},
	} {
		if got := e.State(c.at); got != c.want {
			t.Errorf("State(%v) = %s, want %s", c.at, got, c.want)
		}
	}
	e.RetiredAt = nb
	if got := e.State(nb.Add(-time.Hour)); got != KeyRetired {
		t.Errorf("retired: %s", got)
	}
}

func TestSealedSecretShortRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	now := time.Now()
	e := epoch(t, 1, now, now.Add(time.Hour))
	e.Sealed = randomBytes(t, 48) // a bare P-384 scalar
	if err := s.CreateKeyEpoch(ctx, e, "op"); err == nil {
		t.Fatal("CreateKeyEpoch stored a 48-byte 'sealed' secret")
	}
	// The schema refuses it too, for writers that bypass this package.
	err := superExec(t, s, `INSERT INTO key_epochs (key_id, sealed_secret, public_key, not_before, expiry)
		VALUES (1, $1, $2, now(), now() + interval '1 hour')`, e.Sealed, e.PublicKey)
	wantSQLState(t, err, "23514")
	if se := sanitize(err).(*SQLError); se.Constraint != "key_epochs_sealed_secret_not_plaintext" {
		t.Fatalf("refused by %q", se.Constraint)
	}
	// A public key blob that names another key id is refused.
	e = epoch(t, 1, now, now.Add(time.Hour))
	err = superExec(t, s, `INSERT INTO key_epochs (key_id, sealed_secret, public_key, not_before, expiry)
		VALUES (2, $1, $2, now(), now() + interval '1 hour')`, e.Sealed, e.PublicKey)
	wantSQLState(t, err, "23514")
	// Key id 0 and ids above 2^32-1 are refused.
	for _, id := range []int64{0, 1 << 32} {
		err = superExec(t, s, `INSERT INTO key_epochs (key_id, sealed_secret, public_key, not_before, expiry)
			VALUES ($1, $2, $3, now(), now() + interval '1 hour')`, id, e.Sealed, e.PublicKey)
		wantSQLState(t, err, "23514")
	}
	if es, _ := s.ListKeyEpochs(ctx); len(es) != 0 {
		t.Fatalf("stored %d epochs", len(es))
	}
}

func TestKeyEpochsImmutable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	id := mustCreateKey(t, s)
	for _, q := range []string{
		`UPDATE key_epochs SET expiry = expiry + interval '1 day'`,
		`UPDATE key_epochs SET sealed_secret = sealed_secret || '\x00'::bytea`,
		`DELETE FROM key_epochs`,
		`TRUNCATE key_epochs CASCADE`,
	} {
		wantSQLState(t, superExec(t, s, q), "23001")
	}
	if err := s.RetireKeyEpoch(ctx, id, "op"); err != nil {
		t.Fatal(err)
	}
	wantSQLState(t, superExec(t, s, `UPDATE key_epochs SET retired_at = now()`), "23001")
	wantSQLState(t, superExec(t, s, `UPDATE key_epochs SET retired_at = NULL`), "23001")
}

func TestRRKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	der1, der2 := randomBytes(t, 91), randomBytes(t, 91)
	if err := s.CreateRRKey(ctx, RRKey{ID: "rr-1", PublicDER: der1}, "op"); err != nil {
		t.Fatalf("CreateRRKey rr-1: %v", err)
	}
	if err := s.CreateRRKey(ctx, RRKey{ID: "rr-2", PublicDER: der2}, "op"); err == nil {
		t.Fatal("two record keys sign at once")
	}
	if err := s.CreateRRKey(ctx, RRKey{ID: "rr-1", PublicDER: der2}, "op"); err == nil {
		t.Fatal("rr-1 created twice")
	}
	if err := s.CreateRRKey(ctx, RRKey{ID: "key-3", PublicDER: der2}, "op"); err == nil {
		t.Fatal("bad id accepted")
	}
	notAfter := time.Now().Add(8 * 24 * time.Hour).UTC().Truncate(time.Second)
	// Rotate atomically: retire and create in one transaction.
	err := s.runInTx(ctx, func(ctx context.Context) error {
		if err := s.RetireRRKey(ctx, "rr-1", notAfter, "op"); err != nil {
			return err
		}
		return s.CreateRRKey(ctx, RRKey{ID: "rr-2", PublicDER: der2}, "op")
	})
	if err != nil {
		t.Fatalf("record key rotation: %v", err)
	}
	if err := s.RetireRRKey(ctx, "rr-1", notAfter.Add(time.Hour), "op"); err != nil {
		t.Fatalf("retiring again: %v", err)
	}
	if err := s.RetireRRKey(ctx, "rr-9", notAfter, "op"); err == nil {
		t.Fatal("retired an unknown record key")
	}
	keys, err := s.RRKeys(ctx)
	if err != nil || len(keys) != 2 {
		t.Fatalf("RRKeys: %+v, %v", keys, err)
	}
	if k := keys[0]; k.ID != "rr-1" || !k.Retired || !k.NotAfter.Equal(notAfter) || string(k.PublicDER) != string(der1) {
		t.Fatalf("rr-1: %+v", k)
	}
	if k := keys[1]; k.ID != "rr-2" || k.Retired || !k.NotAfter.IsZero() || k.CreatedAt.IsZero() {
		t.Fatalf("rr-2: %+v", k)
	}
	want := []string{"schema.migrate schema", "rr_key.create rr:rr-1", "rr_key.retire rr:rr-1", "rr_key.create rr:rr-2"}
	if got := auditActions(t, s); !slices.Equal(got, want) {
		t.Fatalf("audit: %q, want %q", got, want)
	}
	wantSQLState(t, superExec(t, s, `DELETE FROM rr_keys`), "23001")
	wantSQLState(t, superExec(t, s, `UPDATE rr_keys SET public_key = $1 WHERE id = 'rr-2'`, der1), "23001")
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}
