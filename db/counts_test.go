package db

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestRecordCountsAppendsEventsAndRows(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	id := mustCreateKey(t, s)
	start := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	err := s.RecordCounts(ctx, "pstd", "replica-a",
		[]IssuanceCount{{KeyID: id, Start: start, End: start.Add(time.Minute), Tokens: 20, Requests: 2}},
		[]RefusalCount{{Reason: RefusalMalformed, Start: start, End: start.Add(time.Minute), Refusals: 3}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RecordCounts(ctx, "pstd", "replica-b",
		[]IssuanceCount{{KeyID: id, Start: start, End: start.Add(time.Minute), Tokens: 7, Requests: 1}}, nil); err != nil {
		t.Fatal(err)
	}
	var events []AuditRecord
	if err := s.QueryAudit(ctx, AuditFilter{Action: ActionCountIssuance}, func(r AuditRecord) error { events = append(events, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(events) != 2 {
		t.Fatalf("%d count.issuance events, want 2", len(events))
	}
	var d struct {
		KeyID  uint32 `json:"key_id"`
		Tokens int64  `json:"tokens"`
		Start  string `json:"bucket_start"`
	}
	if err := json.Unmarshal(events[0].Details, &d); err != nil || d.KeyID != id || d.Tokens != 20 || d.Start != "2026-11-30T12:00:00Z" {
		t.Fatalf("event details %s (%v)", events[0].Details, err)
	}
	sum, err := s.Summarize(ctx, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Keys) != 1 || sum.Keys[0].TokensIssued != 27 || sum.Keys[0].IssuanceRequests != 3 {
		t.Fatalf("summary keys %+v, want 27 tokens in 3 requests", sum.Keys)
	}
	if sum.Refusals[RefusalMalformed] != 3 || sum.Keys[0].Refusals[RefusalMalformed] != 0 {
		t.Fatalf("refusals %v / key %v: a keyless refusal belongs to the total only", sum.Refusals, sum.Keys[0].Refusals)
	}
	// The range selects by bucket start.
	sum, err = s.Summarize(ctx, start.Add(time.Minute), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Keys[0].TokensIssued != 0 {
		t.Fatalf("from after the bucket: %d tokens, want 0", sum.Keys[0].TokensIssued)
	}
	// Count rows are immutable, as the audit rows they mirror.
	wantSQLState(t, superExec(t, s, `UPDATE issuance_counts SET tokens = 1`), "23001")
	if _, err := s.VerifyAuditChain(ctx); err != nil {
		t.Fatal(err)
	}
	// An unknown reason is refused before anything is written.
	if err := s.RecordCounts(ctx, "pstd", "r", nil, []RefusalCount{{Reason: "bored", Start: start, End: start.Add(time.Minute), Refusals: 1}}); err == nil {
		t.Fatal("unknown refusal reason accepted")
	}
}

// A partition drop rolls its redemptions up per day and origin first, in
// the same transaction, so the summary's redemption counts do not change
// when the double-spend rows go.
func TestPartitionDropRollsUpCounts(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	id := mustCreateKey(t, s)
	for i, origin := range []string{"https://a.example", "https://a.example", "https://b.example", ""} {
		r := redemption(t, id)
		r.RedeemingOrigin = origin
		r.RedeemedAt = time.Now().Add(-time.Duration(i) * time.Minute)
		if err := s.RecordRedemption(ctx, r, nil); err != nil {
			t.Fatal(err)
		}
	}
	before, err := s.Summarize(ctx, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if before.Keys[0].Redemptions != 4 {
		t.Fatalf("live redemptions %d, want 4", before.Keys[0].Redemptions)
	}
	// Retire the key and move its expiry into the past (as the superuser:
	// no role can do that, the guard trigger is disabled only here).
	if err := superExec(t, s, `ALTER TABLE key_epochs DISABLE TRIGGER key_epochs_guard`); err != nil {
		t.Fatal(err)
	}
	if err := superExec(t, s, `UPDATE key_epochs SET retired_at = now(), expiry = now() - interval '1 second', not_before = now() - interval '2 days' WHERE key_id = $1`, int64(id)); err != nil {
		t.Fatal(err)
	}
	if err := superExec(t, s, `ALTER TABLE key_epochs ENABLE TRIGGER key_epochs_guard`); err != nil {
		t.Fatal(err)
	}
	n, ok, err := s.DropExpiredRedemptions(ctx, id, "test")
	if err != nil || !ok || n != 4 {
		t.Fatalf("DropExpiredRedemptions: %d %v %v", n, ok, err)
	}
	after, err := s.Summarize(ctx, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	k := after.Keys[0]
	if k.Redemptions != 4 {
		t.Fatalf("redemptions after the drop %d, want 4", k.Redemptions)
	}
	byOrigin := map[string]int64{}
	for _, o := range k.RedemptionsByOrigin {
		byOrigin[o.RedeemingOrigin] = o.Redemptions
	}
	if byOrigin["https://a.example"] != 2 || byOrigin["https://b.example"] != 1 || byOrigin[""] != 1 {
		t.Fatalf("per origin after the drop: %v", byOrigin)
	}
	var got []string
	if err := s.QueryAudit(ctx, AuditFilter{Subject: keySubject(id)}, func(r AuditRecord) error { got = append(got, r.Action); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) < 2 || got[len(got)-2] != ActionCountRedemption || got[len(got)-1] != ActionRedemptionsDrop {
		t.Fatalf("audit actions for the key: %v, want count.redemption then redemptions.drop", got)
	}
	if _, err := s.VerifyAuditChain(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestRecordKeyTransitionsOnce(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	now := time.Now()
	active := mustCreateKey(t, s)
	pendingID, err := s.NextKeyID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateKeyEpoch(ctx, epoch(t, pendingID, now.Add(time.Hour), now.Add(48*time.Hour)), "test"); err != nil {
		t.Fatal(err)
	}
	got, err := s.RecordKeyTransitions(ctx, now, "pstd")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].KeyID != active || got[0].Transition != "activate" {
		t.Fatalf("transitions %+v, want the active key's activation only", got)
	}
	if again, err := s.RecordKeyTransitions(ctx, now, "pstd"); err != nil || len(again) != 0 {
		t.Fatalf("second run: %+v %v, want nothing", again, err)
	}
	// Later, the pending key activates.
	later, err := s.RecordKeyTransitions(ctx, now.Add(2*time.Hour), "pstd")
	if err != nil || len(later) != 1 || later[0].KeyID != pendingID {
		t.Fatalf("later: %+v %v", later, err)
	}
	sum, err := s.Summarize(ctx, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Keys[0].ActivatedAt == nil || sum.Keys[0].ExpiredAt != nil {
		t.Fatalf("summary lifecycle %+v", sum.Keys[0])
	}
}

// QueryAudit has no cap: more rows than the old list limit all arrive.
func TestQueryAuditStreamsEverything(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	const n = 1100
	err := s.runInTx(ctx, func(ctx context.Context) error {
		for i := 0; i < n; i++ {
			if _, err := s.AppendAudit(ctx, Event{Actor: "bulk", Action: "test.bulk"}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	count := 0
	if err := s.QueryAudit(ctx, AuditFilter{Actor: "bulk"}, func(AuditRecord) error { count++; return nil }); err != nil {
		t.Fatal(err)
	}
	if count != n {
		t.Fatalf("streamed %d rows, want %d", count, n)
	}
	count = 0
	if err := s.QueryAudit(ctx, AuditFilter{Actor: "bulk", Limit: 7}, func(AuditRecord) error { count++; return nil }); err != nil || count != 7 {
		t.Fatalf("with --limit 7: %d rows (%v)", count, err)
	}
}

// --action key.* matches every key.… action and nothing else.
func TestQueryAuditActionPrefix(t *testing.T) {
	s, _ := newStore(t)
	ctx := context.Background()
	for _, a := range []string{"key.create", "key.retire", "keys.other", "rr_key.create"} {
		if _, err := s.AppendAudit(ctx, Event{Actor: "op", Action: a}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	if err := s.QueryAudit(ctx, AuditFilter{Action: "key.*"}, func(r AuditRecord) error { got = append(got, r.Action); return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "key.create,key.retire" {
		t.Fatalf("key.* matched %v", got)
	}
}
