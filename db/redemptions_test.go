package db

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pstd/pstd/internal/pstderr"
)

func TestRedemptionThenDuplicate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	k1 := mustCreateKey(t, s)
	k2 := mustCreateKey(t, s)

	r := redemption(t, k1)
	if err := s.RecordRedemption(ctx, r, nil); err != nil {
		t.Fatalf("first redemption: %v", err)
	}
	dup := r
	dup.RecordID, dup.RedeemingOrigin = "another-record", "https://other.example"
	err := s.RecordRedemption(ctx, dup, nil)
	if !errors.Is(err, pstderr.AlreadyRedeemed) {
		t.Fatalf("second redemption: %v, want AlreadyRedeemed", err)
	}
	// The same nonce hash under another key is another token.
	r2 := r
	r2.KeyID = k2
	if err := s.RecordRedemption(ctx, r2, nil); err != nil {
		t.Fatalf("same nonce hash, other key: %v", err)
	}
	// No origin is stored as NULL.
	r3 := redemption(t, k1)
	r3.RedeemingOrigin = ""
	if err := s.RecordRedemption(ctx, r3, nil); err != nil {
		t.Fatalf("redemption without origin: %v", err)
	}
	// A key without a partition fails closed.
	if err := s.RecordRedemption(ctx, redemption(t, 999), nil); !errors.Is(err, pstderr.UnknownKey) {
		t.Fatalf("redemption under a key without partition: %v, want UnknownKey", err)
	}
	if n, err := s.RedemptionCount(ctx, k1); err != nil || n != 2 {
		t.Fatalf("RedemptionCount(%d) = %d, %v; want 2", k1, n, err)
	}
	var nulls int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM redemptions WHERE redeeming_origin IS NULL`).Scan(&nulls); err != nil || nulls != 1 {
		t.Fatalf("NULL origins: %d, %v", nulls, err)
	}
	// Redemptions are not audited one by one.
	if got := auditActions(t, s); len(got) != 3 {
		t.Fatalf("audit: %q", got)
	}
	// Rows are immutable; they leave only with their partition.
	wantSQLState(t, superExec(t, s, `UPDATE redemptions SET record_id = 'x'`), "23001")
	wantSQLState(t, superExec(t, s, `DELETE FROM redemptions`), "23001")
}

func TestRedemptionConcurrentDuplicates(t *testing.T) {
	t.Parallel()
	s, url := newStore(t)
	other := openStore(t, url) // a second replica
	k := mustCreateKey(t, s)
	r := redemption(t, k)

	const n = 32
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		st := s
		if i%2 == 1 {
			st = other
		}
		wg.Go(func() {
			<-start
			rr := r
			rr.RecordID = "record-" + string(rune('a'+i))
			errs[i] = st.RecordRedemption(context.Background(), rr, nil)
		})
	}
	close(start)
	wg.Wait()
	ok, dup := 0, 0
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, pstderr.AlreadyRedeemed):
			dup++
		default:
			t.Errorf("goroutine %d: %v", i, err)
		}
	}
	if ok != 1 || dup != n-1 {
		t.Fatalf("%d succeeded, %d already redeemed; want 1 and %d", ok, dup, n-1)
	}
	if c, err := s.RedemptionCount(context.Background(), k); err != nil || c != 1 {
		t.Fatalf("rows: %d, %v", c, err)
	}
}

func TestRedemptionDurableEvenIfServerDefaultIsAsync(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, url := newStore(t)
	k := mustCreateKey(t, s)
	async := openStore(t, url+"&synchronous_commit=off")
	var setting string
	if err := async.pool.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&setting); err != nil || setting != "off" {
		t.Fatalf("session default: %q, %v", setting, err)
	}
	// RecordRedemption checks inside its transaction that the setting is on
	// and refuses otherwise; succeeding here proves SET LOCAL took effect.
	if err := async.RecordRedemption(ctx, redemption(t, k), nil); err != nil {
		t.Fatalf("RecordRedemption with synchronous_commit=off by default: %v", err)
	}
	if err := async.pool.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&setting); err != nil || setting != "off" {
		t.Fatalf("SET LOCAL leaked into the session: %q, %v", setting, err)
	}
}

func TestRedemptionIgnoresCallerTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	k := mustCreateKey(t, s)
	r := redemption(t, k)
	err := s.runInTx(ctx, func(ctx context.Context) error {
		if err := s.RecordRedemption(ctx, r, nil); err != nil {
			return err
		}
		return errTest // roll back the caller's transaction
	})
	if !errors.Is(err, errTest) {
		t.Fatal(err)
	}
	// The redemption committed on its own and stays.
	if err := s.RecordRedemption(ctx, r, nil); !errors.Is(err, pstderr.AlreadyRedeemed) {
		t.Fatalf("after the caller rolled back: %v, want AlreadyRedeemed", err)
	}
}

func TestDropExpiredRedemptions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	now := time.Now()
	expired, err := s.NextKeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateKeyEpoch(ctx, epoch(t, expired, now.Add(-3*time.Hour), now.Add(-time.Hour)), "op"); err != nil {
		t.Fatal(err)
	}
	live := mustCreateKey(t, s)
	// Rows the key got while it was live (RecordRedemption refuses an
	// expired key, so they go in directly).
	for range 3 {
		r := redemption(t, expired)
		if err := superExec(t, s, `INSERT INTO redemptions (key_id, nonce_hash, redeemed_at, record_id) VALUES ($1, $2, now(), $3)`,
			int64(r.KeyID), r.NonceHash[:], r.RecordID); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RecordRedemption(ctx, redemption(t, live), nil); err != nil {
		t.Fatal(err)
	}

	// Expired but not retired: refused.
	if _, _, err := s.DropExpiredRedemptions(ctx, expired, "op"); err == nil {
		t.Fatal("dropped the redemptions of an unretired key")
	}
	// Retired but not expired: refused.
	if err := s.RetireKeyEpoch(ctx, live, "op"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.DropExpiredRedemptions(ctx, live, "op"); err == nil {
		t.Fatal("dropped the redemptions of a key whose tokens still redeem")
	}
	// Inside a transaction: refused.
	if err := s.RetireKeyEpoch(ctx, expired, "op"); err != nil {
		t.Fatal(err)
	}
	err = s.runInTx(ctx, func(ctx context.Context) error {
		_, _, err := s.DropExpiredRedemptions(ctx, expired, "op")
		return err
	})
	if !errors.Is(err, errInTx) {
		t.Fatalf("inside a transaction: %v", err)
	}
	if _, _, err := s.DropExpiredRedemptions(ctx, 12345, "op"); !errors.Is(err, pstderr.UnknownKey) {
		t.Fatalf("unknown key: %v", err)
	}

	rows, dropped, err := s.DropExpiredRedemptions(ctx, expired, "op")
	if err != nil || !dropped || rows != 3 {
		t.Fatalf("DropExpiredRedemptions = %d, %v, %v; want 3, true", rows, dropped, err)
	}
	parts, err := s.RedemptionPartitions(ctx)
	if err != nil || !slices.Equal(parts, []uint32{live}) {
		t.Fatalf("partitions after drop: %v, %v", parts, err)
	}
	rows, dropped, err = s.DropExpiredRedemptions(ctx, expired, "op")
	if err != nil || dropped || rows != 0 {
		t.Fatalf("second drop = %d, %v, %v; want 0, false, nil", rows, dropped, err)
	}
	// A late redemption under the dropped key fails closed.
	if err := s.RecordRedemption(ctx, redemption(t, expired), nil); !errors.Is(err, pstderr.UnknownKey) {
		t.Fatalf("redemption after drop: %v", err)
	}
	got := auditActions(t, s)
	if got[len(got)-1] != "redemptions.drop key:1" || slices.Index(got, "redemptions.drop key:1") != len(got)-1 {
		t.Fatalf("audit: %q", got)
	}
	entries, err := s.ListAudit(ctx, int64(len(got)), 1) // seq 1 is the audit key's introduction
	if err != nil || string(entries[0].Details) != `{"rows": 3, "partition": "redemptions_k1"}` {
		t.Fatalf("redemptions.drop details: %+v, %v", entries, err)
	}
	if n, err := verifyAudit(t, s); err != nil || n != len(got)+1 {
		t.Fatalf("VerifyAuditChain: %d, %v", n, err)
	}
}

func TestDropExpiredRedemptionPartitionsSweep(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	now := time.Now()
	var expired []uint32
	for range 2 {
		id, err := s.NextKeyID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.CreateKeyEpoch(ctx, epoch(t, id, now.Add(-3*time.Hour), now.Add(-time.Hour)), "op"); err != nil {
			t.Fatal(err)
		}
		expired = append(expired, id)
	}
	live := mustCreateKey(t, s)
	unretired, err := s.NextKeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateKeyEpoch(ctx, epoch(t, unretired, now.Add(-3*time.Hour), now.Add(-time.Hour)), "op"); err != nil {
		t.Fatal(err)
	}
	// Retire inside a rotation, as the signer does; the sweep runs after.
	ok, err := s.WithRotationLock(ctx, func(ctx context.Context) error {
		for _, id := range append(slices.Clone(expired), live) {
			if err := s.RetireKeyEpoch(ctx, id, "rotation"); err != nil {
				return err
			}
		}
		if _, err := s.DropExpiredRedemptionPartitions(ctx, "rotation"); !errors.Is(err, errInTx) {
			t.Errorf("sweep inside the rotation transaction: %v, want a refusal", err)
		}
		return nil
	})
	if !ok || err != nil {
		t.Fatalf("rotation: %v, %v", ok, err)
	}
	dropped, err := s.DropExpiredRedemptionPartitions(ctx, "rotation")
	if err != nil || !slices.Equal(dropped, expired) {
		t.Fatalf("sweep dropped %v, %v; want %v", dropped, err, expired)
	}
	parts, err := s.RedemptionPartitions(ctx)
	if err != nil || !slices.Equal(parts, []uint32{live, unretired}) {
		t.Fatalf("partitions left: %v, %v; want [%d %d]", parts, err, live, unretired)
	}
	if dropped, err := s.DropExpiredRedemptionPartitions(ctx, "rotation"); err != nil || len(dropped) != 0 {
		t.Fatalf("second sweep: %v, %v", dropped, err)
	}
}

// RecordRedemptionWith runs its work only after the insert: a spent token
// never reaches it, its failure leaves the token unspent, and a concurrent
// redemption of the same token waits for the first to end, then is refused.
func TestRecordRedemption(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	k := mustCreateKey(t, s)

	r := redemption(t, k)
	boom := errors.New("HSM refused")
	if err := s.RecordRedemption(ctx, r, func() error { return boom }); err != boom {
		t.Fatalf("failing work: %v, want its error as is", err)
	}
	if n, _ := s.RedemptionCount(ctx, k); n != 0 {
		t.Fatalf("%d rows after the work failed, want 0", n)
	}

	inside := make(chan struct{})
	release := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- s.RecordRedemption(ctx, r, func() error { close(inside); <-release; return nil })
	}()
	<-inside
	// The first holds the row; a second redemption waits, never runs its
	// work, and is refused once the first commits.
	ran := false
	second := make(chan error, 1)
	go func() { second <- s.RecordRedemption(ctx, r, func() error { ran = true; return nil }) }()
	select {
	case err := <-second:
		t.Fatalf("second redemption finished while the first was open: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("first: %v", err)
	}
	if err := <-second; !errors.Is(err, pstderr.AlreadyRedeemed) || ran {
		t.Fatalf("second: %v (work ran: %v), want AlreadyRedeemed without work", err, ran)
	}
}

// The throwaway cluster has no standbys, so nothing to warn about; the
// query itself must work for a non-replicating server.
func TestAsyncStandbys(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	if n, err := s.AsyncStandbys(context.Background()); err != nil || n != 0 {
		t.Fatalf("AsyncStandbys = %d, %v; want 0, nil", n, err)
	}
}

// Retirement and expiry are enforced in the redemption's own transaction,
// not only in a replica's memory: a retired or expired key's token is
// refused by the database itself.
func TestRedemptionRefusesRetiredAndExpiredKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	now := time.Now()
	retired := mustCreateKey(t, s)
	if err := s.RetireKeyEpoch(ctx, retired, "op"); err != nil {
		t.Fatal(err)
	}
	expired, err := s.NextKeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateKeyEpoch(ctx, epoch(t, expired, now.Add(-3*time.Hour), now.Add(-time.Hour)), "op"); err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint32{retired, expired} {
		if err := s.RecordRedemption(ctx, redemption(t, id), nil); !errors.Is(err, pstderr.UnknownKey) {
			t.Errorf("key %d: %v, want UnknownKey", id, err)
		}
	}
	if n := countRows(t, s, `SELECT count(*) FROM redemptions`); n != 0 {
		t.Fatalf("%d rows stored", n)
	}
}

func countRows(t *testing.T, s *Store, q string) int {
	t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), q).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
