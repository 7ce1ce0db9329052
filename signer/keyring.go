package signer

import (
	"sync/atomic"
	"time"

	"github.com/pstd/pstd/signer/voprf"
)

// LoadedKey is an unsealed VOPRF key with its epoch times.
type LoadedKey struct {
	Key   *voprf.PrivateKey
	Times KeyTimes
}

// keySet is an immutable snapshot of the loaded keys. Requests read the
// current snapshot without locks; a reload swaps in a new one.
type keySet struct {
	version    uint64 // commitment id the set was loaded for
	keys       map[uint32]*LoadedKey
	commitment []byte
}

// Key implements voprf.KeySet: any published key redeems.
func (s *keySet) Key(id uint32) (*voprf.PrivateKey, bool) {
	k, ok := s.keys[id]
	if !ok {
		return nil, false
	}
	return k.Key, true
}

// live returns the key if it is still published at now.
func (s *keySet) live(id uint32, now time.Time) (*voprf.PrivateKey, bool) {
	k, ok := s.keys[id]
	if !ok || !k.Times.Live(now) {
		return nil, false
	}
	return k.Key, true
}

// signing returns the key that signs at now.
func (s *keySet) signing(now time.Time) (*LoadedKey, bool) {
	times := make([]KeyTimes, 0, len(s.keys))
	for _, k := range s.keys {
		times = append(times, k.Times)
	}
	t, ok := SigningKey(now, times)
	if !ok {
		return nil, false
	}
	return s.keys[t.KeyID], true
}

// keyring holds the current snapshot.
type keyring struct{ cur atomic.Pointer[keySet] }

func (r *keyring) load() *keySet { return r.cur.Load() }

// wipeDelay is how long a key that left the set stays in memory before it is
// wiped: requests that took the old snapshot just before the swap may still
// be using it, and every request finishes well within this time.
const wipeDelay = 2 * time.Minute

// swap installs next and, after wipeDelay, wipes the secrets of keys that
// left the set. Keys carried over are shared by both snapshots.
func (r *keyring) swap(next *keySet) {
	old := r.cur.Swap(next)
	if old == nil {
		return
	}
	var gone []*voprf.PrivateKey
	for id, k := range old.keys {
		if nk, ok := next.keys[id]; ok && nk.Key == k.Key {
			continue
		}
		gone = append(gone, k.Key)
	}
	if len(gone) > 0 {
		time.AfterFunc(wipeDelay, func() {
			for _, k := range gone {
				k.Wipe()
			}
		})
	}
}

// wipe clears every loaded key at once (shutdown, after requests drained).
func (r *keyring) wipe() {
	old := r.cur.Swap(nil)
	if old == nil {
		return
	}
	for _, k := range old.keys {
		k.Key.Wipe()
	}
}
