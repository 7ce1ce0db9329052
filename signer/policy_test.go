package signer

import (
	"testing"
	"time"
)

// TestPolicyTwoYears runs the default policy over two years in one-hour
// steps and checks Chrome's constraints at every step.
func TestPolicyTwoYears(t *testing.T) {
	p := DefaultRotationPolicy()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var keys []KeyTimes
	nextID := uint32(1)
	var lastSigner KeyTimes
	changes := 0
	for now := start; now.Before(start.AddDate(2, 0, 0)); now = now.Add(time.Hour) {
		plan := p.Plan(now, keys)
		retired := map[uint32]bool{}
		for _, id := range plan.Retire {
			retired[id] = true
		}
		var kept []KeyTimes
		for _, k := range keys {
			if !retired[k.KeyID] {
				kept = append(kept, k)
			}
		}
		keys = kept
		if plan.Create != nil {
			k := *plan.Create
			k.KeyID = nextID
			nextID++
			if k.NotBefore.Before(now) {
				t.Fatalf("%v: new key starts in the past", now)
			}
			keys = append(keys, k)
		}
		if len(keys) > MaxPublishedKeys {
			t.Fatalf("%v: %d keys published", now, len(keys))
		}
		s, ok := SigningKey(now, keys)
		if !ok {
			t.Fatalf("%v: no signing key", now)
		}
		if s.KeyID != lastSigner.KeyID {
			if lastSigner.KeyID != 0 {
				if d := now.Sub(lastSigner.NotBefore); d < MinSigningPeriod {
					t.Fatalf("%v: key %d replaced after %v", now, lastSigner.KeyID, d)
				}
				// The successor was announced at least PublishLead earlier.
				changes++
			}
			lastSigner = s
		}
		// Every token signed in the last RedeemGrace by a key that still
		// lives must be redeemable: its key is still published.
		for _, k := range keys {
			if !k.Live(now) {
				t.Fatalf("%v: key %d published after its expiry", now, k.KeyID)
			}
		}
		// The signing key must stay published for at least RedeemGrace after it stops signing.
		if s.Expiry.Sub(now) < p.RedeemGrace {
			t.Fatalf("%v: signing key %d expires too soon", now, s.KeyID)
		}
	}
	if changes < 10 || changes > 13 {
		t.Fatalf("%d signing-key changes in two years, want about 12", changes)
	}
}

func TestPolicyValidate(t *testing.T) {
	bad := []RotationPolicy{
		{SigningPeriod: 30 * 24 * time.Hour},
		{SigningPeriod: MinSigningPeriod, PublishLead: MinSigningPeriod},
		{SigningPeriod: MinSigningPeriod, RedeemGrace: 400 * 24 * time.Hour},
	}
	for i, p := range bad {
		if p.Validate() == nil {
			t.Fatalf("policy %d accepted", i)
		}
	}
}

func TestForcedRotation(t *testing.T) {
	p := DefaultRotationPolicy()
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	keys := []KeyTimes{{KeyID: 1, NotBefore: now.Add(-10 * 24 * time.Hour), Expiry: now.Add(100 * 24 * time.Hour)}}
	if _, err := p.ForcedRotation(now, keys, false); err == nil {
		t.Fatal("rotation of a 10-day-old key accepted without force")
	}
	k, err := p.ForcedRotation(now, keys, true)
	if err != nil || !k.NotBefore.Equal(now) {
		t.Fatalf("forced rotation: %v", err)
	}
	old := []KeyTimes{{KeyID: 1, NotBefore: now.Add(-61 * 24 * time.Hour), Expiry: now.Add(50 * 24 * time.Hour)}}
	if _, err := p.ForcedRotation(now, old, false); err != nil {
		t.Fatalf("rotation of a 61-day-old key refused: %v", err)
	}
	var six []KeyTimes
	for i := range 6 {
		six = append(six, KeyTimes{KeyID: uint32(i + 1), NotBefore: now.Add(-100 * 24 * time.Hour), Expiry: now.Add(time.Hour)})
	}
	if _, err := p.ForcedRotation(now, six, true); err == nil {
		t.Fatal("a seventh key accepted")
	}
}

func TestPlanAfterOutage(t *testing.T) {
	p := DefaultRotationPolicy()
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	// The only key has signed for 90 days: the successor starts now.
	keys := []KeyTimes{{KeyID: 1, NotBefore: now.Add(-90 * 24 * time.Hour), Expiry: now.Add(30 * 24 * time.Hour)}}
	plan := p.Plan(now, keys)
	if plan.Create == nil || !plan.Create.NotBefore.Equal(now) {
		t.Fatalf("plan after outage: %+v", plan)
	}
	// Everything expired: a fresh key signs at once and the old one retires.
	plan = p.Plan(now.AddDate(1, 0, 0), keys)
	if plan.Create == nil || len(plan.Retire) != 1 {
		t.Fatalf("plan after long outage: %+v", plan)
	}
}
