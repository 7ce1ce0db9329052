package signer

import (
	"errors"
	"fmt"
	"sort"
	"time"
)

// Clock gives the time; tests inject a fake one to run years of rotation in a
// second.
type Clock interface{ Now() time.Time }

// SystemClock is the wall clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// MinSigningPeriod is Chrome's floor: browsers ignore key rotation faster
// than every 60 days.
const MinSigningPeriod = 60 * 24 * time.Hour

// MaxPublishedKeys is Chrome's limit of live PST v1 VOPRF keys per issuer.
const MaxPublishedKeys = 6

// RotationPolicy says when keys are introduced, start signing and expire.
//
// A key's life: it is published (in the commitment) PublishLead before its
// not_before, so browsers and Chrome's commitment collector know it before any
// token signed with it reaches them; from not_before it is the signing key for
// SigningPeriod; then its successor signs and it stays published (tokens
// issued under it still redeem) for RedeemGrace more; at expiry it leaves the
// commitment and its tokens can never be redeemed again.
type RotationPolicy struct {
	SigningPeriod time.Duration // ≥ 60 days
	PublishLead   time.Duration // new key published this long before it signs
	RedeemGrace   time.Duration // tokens redeemable this long after the key stops signing
}

// DefaultRotationPolicy: a new key every 60 days, announced 7 days ahead,
// tokens redeemable for 60 days after their key stops signing. At most three
// keys are published at once.
func DefaultRotationPolicy() RotationPolicy {
	return RotationPolicy{
		SigningPeriod: MinSigningPeriod,
		PublishLead:   7 * 24 * time.Hour,
		RedeemGrace:   60 * 24 * time.Hour,
	}
}

// Validate checks the policy against Chrome's limits.
func (p RotationPolicy) Validate() error {
	switch {
	case p.SigningPeriod < MinSigningPeriod:
		return fmt.Errorf("signing period %v is below Chrome's 60-day floor", p.SigningPeriod)
	case p.PublishLead < 0 || p.PublishLead >= p.SigningPeriod:
		return errors.New("publish lead must be in [0, signing period)")
	case p.RedeemGrace < 0:
		return errors.New("redeem grace must not be negative")
	}
	// Keys overlap for lead + period + grace; make sure that never needs more
	// than Chrome's six keys.
	if n := p.maxOverlap(); n > MaxPublishedKeys {
		return fmt.Errorf("policy would publish %d keys at once, Chrome allows %d", n, MaxPublishedKeys)
	}
	return nil
}

func (p RotationPolicy) maxOverlap() int {
	life := p.PublishLead + p.SigningPeriod + p.RedeemGrace
	return int((life + p.SigningPeriod - 1) / p.SigningPeriod)
}

// Lifetime is how long a key stays published after it starts signing.
func (p RotationPolicy) Lifetime() time.Duration { return p.SigningPeriod + p.RedeemGrace }

// KeyTimes is what the policy needs to know of a key epoch.
type KeyTimes struct {
	KeyID     uint32
	NotBefore time.Time // starts signing
	Expiry    time.Time // leaves the commitment; tokens stop redeeming
}

// Live reports whether the key is published at now.
func (k KeyTimes) Live(now time.Time) bool { return now.Before(k.Expiry) }

// Plan is what a rotation tick must do.
type Plan struct {
	Retire []uint32  // expired keys to retire (and drop their redemption partitions)
	Create *KeyTimes // a key to create (KeyID left 0: the store allocates it)
}

// Empty reports whether the plan changes nothing.
func (pl Plan) Empty() bool { return len(pl.Retire) == 0 && pl.Create == nil }

// Plan decides the rotation step at now for the keys that are not yet retired.
func (p RotationPolicy) Plan(now time.Time, keys []KeyTimes) Plan {
	var plan Plan
	var live []KeyTimes
	for _, k := range keys {
		if k.Live(now) {
			live = append(live, k)
		} else {
			plan.Retire = append(plan.Retire, k.KeyID)
		}
	}
	sort.Slice(live, func(i, j int) bool { return live[i].NotBefore.Before(live[j].NotBefore) })

	if len(live) == 0 {
		plan.Create = &KeyTimes{NotBefore: now, Expiry: now.Add(p.Lifetime())}
		return plan
	}
	newest := live[len(live)-1]
	if newest.NotBefore.After(now) {
		return plan // a successor is already announced
	}
	// newest signs now; announce its successor PublishLead before its turn.
	next := newest.NotBefore.Add(p.SigningPeriod)
	if now.Before(next.Add(-p.PublishLead)) {
		return plan
	}
	if next.Before(now) {
		// The service was down past the successor's start: start it now
		// (its predecessor has signed longer than the floor anyway).
		next = now
	}
	if len(live) >= MaxPublishedKeys {
		return plan // never exceed Chrome's limit; the oldest expires first
	}
	plan.Create = &KeyTimes{NotBefore: next, Expiry: next.Add(p.Lifetime())}
	return plan
}

// ForcedRotation is the plan for an operator's on-demand rotation: a new key
// that signs from now. Unless force is set, it refuses while the current
// signing key has signed for less than the 60-day floor, because Chrome
// ignores faster rotation.
func (p RotationPolicy) ForcedRotation(now time.Time, keys []KeyTimes, force bool) (KeyTimes, error) {
	var live int
	var current *KeyTimes
	for i := range keys {
		k := keys[i]
		if !k.Live(now) {
			continue
		}
		live++
		if !k.NotBefore.After(now) && (current == nil || k.NotBefore.After(current.NotBefore)) {
			current = &keys[i]
		}
	}
	if live >= MaxPublishedKeys {
		return KeyTimes{}, fmt.Errorf("%d keys are already published, Chrome's limit", live)
	}
	if current != nil && !force && now.Sub(current.NotBefore) < MinSigningPeriod {
		return KeyTimes{}, fmt.Errorf("key %d has signed for %s, less than the 60-day floor Chrome enforces (use --force to rotate anyway)",
			current.KeyID, now.Sub(current.NotBefore).Round(time.Hour))
	}
	return KeyTimes{NotBefore: now, Expiry: now.Add(p.Lifetime())}, nil
}

// SigningKey picks the key that signs at now: the newest live key whose
// not_before has passed.
func SigningKey(now time.Time, keys []KeyTimes) (KeyTimes, bool) {
	var best KeyTimes
	found := false
	for _, k := range keys {
		if !k.Live(now) || k.NotBefore.After(now) {
			continue
		}
		if !found || k.NotBefore.After(best.NotBefore) || (k.NotBefore.Equal(best.NotBefore) && k.KeyID > best.KeyID) {
			best, found = k, true
		}
	}
	return best, found
}
