package signer

import (
	"fmt"
	"sort"
	"time"
)

// KeyWindow is one key's life as the rotation policy lays it out: when it
// is (or will be) published, when it signs, and until when its tokens
// redeem. KeyID 0 is a key the policy will create.
type KeyWindow struct {
	KeyID        uint32    `json:"key_id"`
	Planned      bool      `json:"planned"`
	Published    time.Time `json:"published"`
	SignsFrom    time.Time `json:"signs_from"`
	SignsUntil   time.Time `json:"signs_until"`
	RedeemsUntil time.Time `json:"redeems_until"`
}

// Timeline is the key schedule from now over a horizon.
type Timeline struct {
	Now  time.Time   `json:"now"`
	Keys []KeyWindow `json:"keys"`
	// NextRotation is when the next key must start signing; Successor says
	// whether that key is already published (it must be, PublishLead
	// before, or browsers will not know it).
	NextRotation time.Time `json:"next_rotation"`
	Successor    bool      `json:"successor_published"`
	Warnings     []string  `json:"warnings,omitempty"`
}

// Timeline plans the key schedule from now over horizon with the policy,
// starting from the keys that exist.
func (p RotationPolicy) Timeline(now time.Time, keys []KeyTimes, horizon time.Duration) Timeline {
	tl := Timeline{Now: now}
	var live []KeyTimes
	for _, k := range keys {
		if k.Live(now) {
			live = append(live, k)
		}
	}
	planned := map[int]bool{}
	// Step the policy forward a day at a time (and at every key boundary),
	// as the rotation loop would, recording the keys it would create.
	for t := now; !t.After(now.Add(horizon)); t = t.Add(24 * time.Hour) {
		pl := p.Plan(t, live)
		if pl.Create != nil {
			live = append(live, *pl.Create)
			planned[len(live)-1] = true
		}
		n := 0
		for _, k := range live {
			if k.Live(t) {
				n++
			}
		}
		if n > MaxPublishedKeys {
			tl.Warnings = append(tl.Warnings, fmt.Sprintf("%s: %d keys would be published; Chrome takes at most %d", t.Format(time.DateOnly), n, MaxPublishedKeys))
		}
	}
	idx := make([]int, len(live))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return live[idx[a]].NotBefore.Before(live[idx[b]].NotBefore) })
	for j, i := range idx {
		k := live[i]
		w := KeyWindow{KeyID: k.KeyID, Planned: planned[i], Published: k.NotBefore.Add(-p.PublishLead), SignsFrom: k.NotBefore,
			SignsUntil: k.NotBefore.Add(p.SigningPeriod), RedeemsUntil: k.Expiry}
		if planned[i] {
			w.KeyID = 0
		}
		if j+1 < len(idx) && live[idx[j+1]].NotBefore.Before(w.SignsUntil) {
			w.SignsUntil = live[idx[j+1]].NotBefore
		}
		if w.SignsUntil.After(w.RedeemsUntil) {
			w.SignsUntil = w.RedeemsUntil
		}
		tl.Keys = append(tl.Keys, w)
	}
	if cur, ok := SigningKey(now, keys); ok {
		tl.NextRotation = cur.NotBefore.Add(p.SigningPeriod)
		for _, k := range keys {
			if k.Live(now) && k.NotBefore.After(now) {
				tl.Successor = true
				if k.NotBefore.Before(tl.NextRotation) {
					tl.NextRotation = k.NotBefore
				}
			}
		}
	}
	if p.SigningPeriod < MinSigningPeriod {
		tl.Warnings = append(tl.Warnings, fmt.Sprintf("signing period %v is shorter than Chrome's 60 days: Chrome ignores faster rotation", p.SigningPeriod))
	}
	return tl
}
