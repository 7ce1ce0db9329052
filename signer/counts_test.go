package signer

import (
	"context"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pstd/pstd/db"
	"github.com/pstd/pstd/internal/pstderr"
	"github.com/pstd/pstd/signer/voprf"
)

// issueN makes one issuance request for n tokens and returns them.
func issueN(t *testing.T, s *Service, n int) []voprf.Token {
	t.Helper()
	body, _, err := s.Commitment(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, keys, err := voprf.ParseCommitment(body)
	if err != nil {
		t.Fatal(err)
	}
	ids := voprf.SortedKeyIDs(keys)
	c := voprf.NewClient(keys[ids[0]])
	p, err := c.Blind(n, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	resp, got, err := s.Issue(context.Background(), p.Request(), 100)
	if err != nil || got != n {
		t.Fatalf("issue %d: got %d, %v", n, got, err)
	}
	toks, err := c.Finish(p, resp)
	if err != nil {
		t.Fatal(err)
	}
	return toks
}

func sumIssued(st *memStore) (tokens, requests int64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, c := range st.issued {
		tokens += c.Tokens
		requests += c.Requests
	}
	return
}

func TestCountsFlushClosedBucketsOnly(t *testing.T) {
	clock := &fakeClock{time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC)}
	reg := prometheus.NewRegistry()
	st := newMemStore()
	s, err := New(Config{IssuerOrigin: "https://issuer.example", Clock: clock, Registerer: reg}, st, newMemCustody(t))
	if err != nil {
		t.Fatal(err)
	}
	pending := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "pstd_count_buckets_pending" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("pstd_count_buckets_pending is not registered")
		return 0
	}
	ctx := context.Background()
	if _, err := s.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	auditBefore := len(st.audit)
	toks := issueN(t, s, 10)
	issueN(t, s, 10)
	if _, err := s.Redeem(ctx, redeemRequest(t, toks[0], clock.t)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Redeem(ctx, redeemRequest(t, toks[0], clock.t)); !errors.Is(err, pstderr.AlreadyRedeemed) {
		t.Fatalf("replay: %v", err)
	}
	if _, _, err := s.Issue(ctx, []byte{0, 1}, 10); err == nil {
		t.Fatal("malformed issuance accepted")
	}
	// Counting never writes per request.
	if len(st.audit) != auditBefore {
		t.Fatalf("requests wrote %d audit events; counts must wait for a flush", len(st.audit)-auditBefore)
	}
	// The bucket is still open: nothing to flush.
	if err := s.FlushCounts(ctx, false); err != nil {
		t.Fatal(err)
	}
	if tok, _ := sumIssued(st); tok != 0 {
		t.Fatalf("flushed %d tokens of an open bucket", tok)
	}
	// The bucket closes; a failed flush keeps the counts for the next one.
	clock.t = clock.t.Add(CountBucket)
	st.countsErr = pstderr.New(pstderr.Unavailable, "database went away")
	if err := s.FlushCounts(ctx, false); err == nil {
		t.Fatal("flush into a failing store reported success")
	}
	issueN(t, s, 3) // counted in the new, open bucket
	if got := pending(); got != 3 {
		t.Fatalf("pstd_count_buckets_pending = %v after the failed flush, want 3 (issuance, replay, malformed)", got)
	}
	st.countsErr = nil
	if err := s.FlushCounts(ctx, false); err != nil {
		t.Fatal(err)
	}
	if got := pending(); got != 1 {
		t.Fatalf("pstd_count_buckets_pending = %v after the flush, want 1 (the open bucket)", got)
	}
	if tok, req := sumIssued(st); tok != 20 || req != 2 {
		t.Fatalf("flushed %d tokens in %d requests, want 20 in 2", tok, req)
	}
	reasons := map[string]int64{}
	for _, r := range st.refused {
		reasons[r.Reason] += r.Refusals
		if r.Reason == db.RefusalReplay && r.KeyID == 0 {
			t.Error("a replay's refusal does not name its key")
		}
	}
	if reasons[db.RefusalReplay] != 1 || reasons[db.RefusalMalformed] != 1 {
		t.Fatalf("refusals %v, want one replay and one malformed", reasons)
	}
	// A clean stop flushes the open bucket too.
	if err := s.Stopped(ctx); err != nil {
		t.Fatal(err)
	}
	if tok, req := sumIssued(st); tok != 23 || req != 3 {
		t.Fatalf("after the stop %d tokens in %d requests, want 23 in 3", tok, req)
	}
	if st.audit[len(st.audit)-1].Action != ActionReplicaStop {
		t.Fatalf("last event %q, want %s", st.audit[len(st.audit)-1].Action, ActionReplicaStop)
	}
}

func TestOperatorEvents(t *testing.T) {
	clock := &fakeClock{time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s, st, _ := newService(t, clock)
	ctx := context.Background()
	if _, err := s.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	op := Operator{Actor: "alice@ops1", Reason: "CHG-42 suspected compromise", Command: "keys retire"}
	// Retiring the only signing key is refused, and the refusal is on the log.
	err := s.RetireKey(WithOperator(ctx, op), 1, op.Actor)
	if err == nil {
		t.Fatal("retiring the only signing key was allowed")
	}
	last := st.audit[len(st.audit)-1]
	if last.Action != ActionOperatorRefused || last.Actor != op.Actor || last.Details["reason"] != op.Reason || last.Details["command"] != "keys retire" {
		t.Fatalf("last event %+v, want operator.refused by alice with the reason", last)
	}
	// An accepted command records who and why in its transaction.
	op.Command = "keys rotate"
	if _, err := s.ForceRotate(WithOperator(ctx, op), true, op.Actor); err != nil {
		t.Fatal(err)
	}
	last = st.audit[len(st.audit)-1]
	if last.Action != ActionOperatorCommand || last.Actor != op.Actor || last.Details["reason"] != op.Reason {
		t.Fatalf("last event %+v, want operator.command by alice with the reason", last)
	}
	// Without an operator (the rotation loop) no operator event is written.
	n := len(st.audit)
	if _, err := s.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	for _, e := range st.audit[n:] {
		if e.Action == ActionOperatorCommand || e.Action == ActionOperatorRefused {
			t.Fatalf("automatic rotation wrote %s", e.Action)
		}
	}
}

func TestRotationRecordsKeyTransitions(t *testing.T) {
	clock := &fakeClock{time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s, st, _ := newService(t, clock)
	ctx := context.Background()
	if _, err := s.Rotate(ctx); err != nil { // creates key 1, active from now
		t.Fatal(err)
	}
	if _, err := s.Rotate(ctx); err != nil { // sees it active
		t.Fatal(err)
	}
	count := func(action string) int {
		n := 0
		for _, e := range st.audit {
			if e.Action == action {
				n++
			}
		}
		return n
	}
	if count("key.activate") != 1 {
		t.Fatalf("%d key.activate events, want 1", count("key.activate"))
	}
	// Two years on, every key that was created has expired once.
	for range 2 * 365 {
		clock.t = clock.t.Add(24 * time.Hour)
		if _, err := s.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	st.mu.Lock()
	keys := len(st.epochs)
	st.mu.Unlock()
	if count("key.activate") != keys || count("key.expire") < keys-2 {
		t.Fatalf("%d keys, %d activations, %d expiries", keys, count("key.activate"), count("key.expire"))
	}
}

// BenchmarkCountIssue is what counting adds to an issuance request: a map
// bump under a mutex, from every core at once.
func BenchmarkCountIssue(b *testing.B) {
	c := newCounter()
	now := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.issue(7, 10, now)
		}
	})
}
