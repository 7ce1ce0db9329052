package db

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// body builds a commitment body that a jsonb round trip would change (key
// order, spacing), to show the published bytes are kept exactly.
func body(keys []uint32) func(uint64) ([]byte, error) {
	return func(id uint64) ([]byte, error) {
		return fmt.Appendf(nil, `{"PrivateStateTokenV1VOPRF":  {"protocol_version":"PrivateStateTokenV1VOPRF","id":%d,"keys":%v}}`, id, len(keys)), nil
	}
}

func TestCommitmentIDChangesOnlyWithKeySet(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t)
	k1, k2, k3 := mustCreateKey(t, s), mustCreateKey(t, s), mustCreateKey(t, s)

	if v, err := s.KeySetVersion(ctx); err != nil || v != 0 {
		t.Fatalf("KeySetVersion before any commitment: %d, %v", v, err)
	}
	if id, ids, b, err := s.LatestCommitment(ctx); err != nil || id != 0 || ids != nil || b != nil {
		t.Fatalf("LatestCommitment before any: %d %v %q %v", id, ids, b, err)
	}
	steps := []struct {
		keys    []uint32
		id      uint64
		changed bool
	}{
		{[]uint32{k1}, 1, true},
		{[]uint32{k1}, 1, false},
		{[]uint32{k2, k1}, 2, true},
		{[]uint32{k1, k2}, 2, false},
		{[]uint32{k2, k3}, 3, true},
		{[]uint32{k1}, 4, true}, // back to an earlier set is still a change
	}
	for i, st := range steps {
		id, changed, err := s.PublishCommitment(ctx, st.keys, body(st.keys), "rotation")
		if err != nil || id != st.id || changed != st.changed {
			t.Fatalf("step %d %v: id=%d changed=%v err=%v; want id=%d changed=%v", i, st.keys, id, changed, err, st.id, st.changed)
		}
	}
	id, ids, b, err := s.LatestCommitment(ctx)
	want, _ := body([]uint32{k1})(4)
	if err != nil || id != 4 || !slices.Equal(ids, []uint32{k1}) || string(b) != string(want) {
		t.Fatalf("LatestCommitment = %d %v %q %v", id, ids, b, err)
	}
	if v, err := s.KeySetVersion(ctx); err != nil || v != 4 {
		t.Fatalf("KeySetVersion = %d, %v", v, err)
	}

	// Only existing, unretired keys; no empty or duplicate sets; JSON only.
	if err := s.RetireKeyEpoch(ctx, k3, "op"); err != nil {
		t.Fatal(err)
	}
	for _, keys := range [][]uint32{{k3}, {k1, 99}, {}, {k1, k1, k2}} {
		if _, _, err := s.PublishCommitment(ctx, keys, body(keys), "rotation"); err == nil {
			t.Errorf("published %v", keys)
		}
	}
	if _, _, err := s.PublishCommitment(ctx, []uint32{k2}, func(uint64) ([]byte, error) { return []byte("not json"), nil }, "rotation"); err == nil {
		t.Error("published a body that is not JSON")
	}
	n := 0
	for _, a := range auditActions(t, s) {
		if strings.HasPrefix(a, "commitment.publish ") {
			n++
		}
	}
	if n != 4 {
		t.Fatalf("%d commitment.publish records, want 4", n)
	}
	wantSQLState(t, superExec(t, s, `UPDATE commitments SET body = '{}'`), "23001")
	wantSQLState(t, superExec(t, s, `DELETE FROM commitments`), "23001")
}

func TestCommitmentConcurrentReplicas(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, url := newStore(t)
	b := openStore(t, url)
	k1, k2, k3 := mustCreateKey(t, a), mustCreateKey(t, a), mustCreateKey(t, a)

	for round, keys := range [][]uint32{{k1}, {k1, k2}, {k2, k3}} {
		var builds, changes atomic.Int32
		ids := make([]uint64, 16)
		var wg sync.WaitGroup
		for i := range ids {
			s := a
			if i%2 == 1 {
				s = b
			}
			wg.Go(func() {
				id, changed, err := s.PublishCommitment(ctx, keys, func(id uint64) ([]byte, error) {
					builds.Add(1)
					return body(keys)(id)
				}, "rotation")
				if err != nil {
					t.Error(err)
				}
				if changed {
					changes.Add(1)
				}
				ids[i] = id
			})
		}
		wg.Wait()
		want := uint64(round + 1)
		for i, id := range ids {
			if id != want {
				t.Fatalf("round %d: replica %d saw id %d, want %d", round, i, id, want)
			}
		}
		if changes.Load() != 1 || builds.Load() != 1 {
			t.Fatalf("round %d: %d publications, %d builds; want 1 and 1", round, changes.Load(), builds.Load())
		}
	}
	if n, err := verifyAudit(t, a); err != nil || n != 2+3+3 {
		t.Fatalf("VerifyAuditChain: %d, %v", n, err)
	}
}
