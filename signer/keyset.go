package signer

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/pstd/pstd/internal/pstderr"
	"github.com/pstd/pstd/signer/voprf"
)

// unsealing any key not already loaded.
func (s *Service) Reload(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.reload(ctx)
	s.setLoadErr(err)
	return err
}

func (s *Service) reload(ctx context.Context) (err error) {
	version, _, body, err := s.store.LatestCommitment(ctx)
	if err != nil {
		return s.dbErr(err, "reading the commitment failed")
	}
	cur := s.ring.load()
	epochs, err := s.store.KeyEpochs(ctx)
	if err != nil {
		return s.dbErr(err, "reading key epochs failed")
	}
	next := &keySet{version: version, keys: map[uint32]*LoadedKey{}, commitment: body}
	// On failure, wipe what this attempt unsealed (keys carried over from
	// cur stay with cur): a retry every few seconds must not leave a fresh
	// plaintext copy behind each time.
	defer func() {
		if err == nil {
			return
		}
		for id, lk := range next.keys {
			if cur == nil || cur.keys[id] == nil || cur.keys[id].Key != lk.Key {
				lk.Key.Wipe()
			}
		}
	}()
	for _, e := range epochs {
		if cur != nil {
			if lk, ok := cur.keys[e.KeyID]; ok {
				next.keys[e.KeyID] = &LoadedKey{Key: lk.Key, Times: epochTimes(e)}
				continue
			}
		}
		scalar, err := s.custody.Unseal(e.Sealed, keyAAD(e.KeyID, e.NotBefore))
		if err != nil {
			return s.hsmErr(err, fmt.Sprintf("unsealing key %d failed", e.KeyID))
		}
		sk, err := newPrivateKey(e.KeyID, scalar)
		wipe(scalar)
		if err != nil {
			return fmt.Errorf("key %d: %w", e.KeyID, err)
		}
		if string(sk.Public().MarshalBlob()) != string(e.PublicKey) {
			sk.Wipe()
			return fmt.Errorf("key %d: unsealed scalar does not match the stored public key", e.KeyID)
		}
		next.keys[e.KeyID] = &LoadedKey{Key: sk, Times: epochTimes(e)}
	}
	rr, err := s.loadRR(ctx)
	if err != nil {
		return err
	}
	s.ring.swap(next)
	s.rr.Store(rr)
	if cur == nil || cur.version != version {
		s.cfg.Logger.Info("loaded key set", "commitment_id", version, "keys", len(next.keys))
	}
	if lk, ok := next.signing(s.cfg.Clock.Now()); ok {
		s.metrics.signingKey(lk.Key.KeyID(), lk.Times.Expiry)
	}
	return nil
}

// newPrivateKey is voprf.NewPrivateKey; tests wrap it to see which keys a
// reload unsealed.
var newPrivateKey = voprf.NewPrivateKey

type rrState struct {
	signing RRKey
	jwks    []byte
}

func (s *Service) loadRR(ctx context.Context) (*rrState, error) {
	infos, err := s.store.RRKeys(ctx)
	if err != nil {
		return nil, s.dbErr(err, "reading record keys failed")
	}
	now := s.cfg.Clock.Now()
	st := &rrState{}
	var published []RRKey
	for _, info := range infos {
		if info.Retired && !info.NotAfter.IsZero() && now.After(info.NotAfter) {
			continue
		}
		pub, err := x509.ParsePKIXPublicKey(info.PublicDER)
		if err != nil {
			return nil, fmt.Errorf("record key %s: %w", info.ID, err)
		}
		published = append(published, RRKey{KID: info.ID, Signer: publicOnly{pub}})
		if !info.Retired {
			signer, err := s.custody.FindRRKey(ctx, info.ID)
			if err != nil {
				return nil, s.hsmErr(err, "finding the record key failed")
			}
			st.signing = RRKey{KID: info.ID, Signer: signer}
		}
	}
	if st.signing.Signer == nil {
		return nil, pstderr.New(pstderr.Unavailable, "no redemption-record key")
	}
	if st.jwks, err = JWKS(published); err != nil {
		return nil, err
	}
	return st, nil
}

// publicOnly lets a public key stand where JWKS wants an RRKey.
type publicOnly struct{ pub crypto.PublicKey }

func (p publicOnly) Public() crypto.PublicKey { return p.pub }
func (p publicOnly) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("public key only")
}

// Run keeps the service current until ctx ends: it polls for a new key set
// every RefreshInterval, runs the rotation policy every RotationInterval and
// flushes closed count buckets every CountFlushInterval.
// Errors are logged; readiness reflects them.
func (s *Service) Run(ctx context.Context) {
	refresh := time.NewTicker(s.cfg.RefreshInterval)
	defer refresh.Stop()
	rotate := time.NewTicker(s.cfg.RotationInterval)
	defer rotate.Stop()
	flush := time.NewTicker(s.cfg.CountFlushInterval)
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-flush.C:
			if err := s.FlushCounts(ctx, false); err != nil {
				s.cfg.Logger.Error("flushing counts failed; they stay in memory for the next flush", "err", err, "buckets", s.counts.pending())
			}
		case <-rotate.C:
			_, rerr := s.Rotate(ctx)
			if rerr != nil {
				s.cfg.Logger.Error("rotation failed", "err", rerr)
			}
			lerr := s.Reload(ctx)
			if lerr != nil {
				s.cfg.Logger.Error("reloading keys failed", "err", lerr)
			}
			if ctx.Err() == nil {
				s.metrics.rotationDone(s.cfg.Clock.Now(), errors.Join(rerr, lerr))
			}
		case <-refresh.C:
			if err := s.refreshIfChanged(ctx); err != nil {
				s.cfg.Logger.Error("reloading keys failed", "err", err)
			}
		}
	}
}

func (s *Service) refreshIfChanged(ctx context.Context) error {
	cur := s.ring.load()
	version, err := s.store.KeySetVersion(ctx)
	if err != nil {
		s.setLoadErr(s.dbErr(err, "reading the commitment failed"))
		return err
	}
	failed := s.lastLoadErr() != nil
	if cur != nil && cur.version == version && !failed {
		return nil
	}
	return s.Reload(ctx)
}

// Close wipes every loaded key. Call it after the HTTP server has drained.
func (s *Service) Close() { s.ring.wipe() }
