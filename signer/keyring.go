package signer

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pstd/pstd/signer/voprf"
)

// LoadedKey is an unsealed VOPRF key with its epoch times.
type LoadedKey struct {
	Key   *voprf.PrivateKey
	Times KeyTimes
	row   string // the stored row it was verified against (sealed blob, public key, times)
}

// keySet is an immutable snapshot of the loaded keys. Requests read the
// current snapshot without locks; a reload swaps in a new one.
type keySet struct {
	version    uint64 // commitment id the set was loaded for
	rows       string // KeyEpochsDigest when loaded
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

// keyring holds the current snapshot and the keys waiting to be wiped.
type keyring struct {
	cur     atomic.Pointer[keySet]
	mu      sync.Mutex
	leaving []*voprf.PrivateKey
}

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
	if len(gone) == 0 {
		return
	}
	r.mu.Lock()
	r.leaving = append(r.leaving, gone...)
	r.mu.Unlock()
	time.AfterFunc(wipeDelay, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, k := range gone {
			k.Wipe()
		}
		r.leaving = slices.DeleteFunc(r.leaving, func(k *voprf.PrivateKey) bool { return slices.Contains(gone, k) })
	})
}

// wipe clears every loaded key, and every key still waiting for its delayed
// wipe, at once (shutdown, after requests drained).
func (r *keyring) wipe() {
	if old := r.cur.Swap(nil); old != nil {
		for _, k := range old.keys {
			k.Key.Wipe()
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range r.leaving {
		k.Wipe()
	}
	r.leaving = nil
}
