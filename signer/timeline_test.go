package signer

import (
	"testing"
	"time"
)

func TestTimeline(t *testing.T) {
	p := DefaultRotationPolicy()
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	cur := KeyTimes{KeyID: 4, NotBefore: now.Add(-10 * 24 * time.Hour), Expiry: now.Add(-10*24*time.Hour + p.Lifetime())}
	tl := p.Timeline(now, []KeyTimes{cur}, 180*24*time.Hour)
	if want := cur.NotBefore.Add(p.SigningPeriod); !tl.NextRotation.Equal(want) || tl.Successor {
		t.Fatalf("next rotation %v (successor %v), want %v without a successor", tl.NextRotation, tl.Successor, want)
	}
	if len(tl.Keys) != 4 || tl.Keys[0].KeyID != 4 || tl.Keys[0].Planned || !tl.Keys[1].Planned {
		t.Fatalf("keys: %+v", tl.Keys)
	}
	next := tl.Keys[1]
	if !next.SignsFrom.Equal(tl.NextRotation) || !next.Published.Equal(tl.NextRotation.Add(-p.PublishLead)) ||
		!tl.Keys[0].SignsUntil.Equal(next.SignsFrom) || !next.SignsUntil.Equal(next.SignsFrom.Add(p.SigningPeriod)) {
		t.Fatalf("windows: %+v", tl.Keys[:2])
	}
	// With the successor already published, the rotation is on time.
	succ := KeyTimes{KeyID: 5, NotBefore: tl.NextRotation, Expiry: tl.NextRotation.Add(p.Lifetime())}
	if tl := p.Timeline(now, []KeyTimes{cur, succ}, 0); !tl.Successor || !tl.NextRotation.Equal(succ.NotBefore) {
		t.Fatalf("with a successor: %+v", tl)
	}
	if len(tl.Warnings) != 0 {
		t.Fatalf("warnings: %v", tl.Warnings)
	}
}
