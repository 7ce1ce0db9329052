package signer

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/pstd/pstd/db"
	"github.com/pstd/pstd/internal/pstderr"
	"github.com/pstd/pstd/signer/voprf"
)

// unsealing any key not already loaded.
func (s *Service) Reload(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.reload(ctx)
	s.setLoadErr(err)
	if err == nil && s.audit.Load() != nil {
		// Serve nothing from a database behind the HSM's audit head.
		err = s.refreshFence(ctx)
	}
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
	version int64 // RRKeysVersion when loaded
}

func (s *Service) loadRR(ctx context.Context) (*rrState, error) {
	version, err := s.store.RRKeysVersion(ctx)
	if err != nil {
		return nil, s.dbErr(err, "reading record keys failed")
	}
	infos, err := s.store.RRKeys(ctx)
	if err != nil {
		return nil, s.dbErr(err, "reading record keys failed")
	}
	now := s.cfg.Clock.Now()
	st := &rrState{version: version}
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
// every RefreshInterval and runs the rotation policy every RotationInterval.
// Errors are logged; readiness reflects them.
func (s *Service) Run(ctx context.Context) {
	refresh := time.NewTicker(s.cfg.RefreshInterval)
	defer refresh.Stop()
	rotate := time.NewTicker(s.cfg.RotationInterval)
	defer rotate.Stop()
	checkpoint := time.NewTicker(s.cfg.CheckpointInterval)
	defer checkpoint.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-checkpoint.C:
			if s.fenceErr() != nil || s.audit.Load() == nil {
				continue // never checkpoint a database behind the anchor
			}
			if _, err := s.Checkpoint(ctx, false); err != nil && ctx.Err() == nil {
				s.cfg.Logger.Error("writing the audit checkpoint failed", "err", err)
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
			if s.audit.Load() == nil {
				if err := s.EnsureAuditKey(ctx); err != nil && ctx.Err() == nil {
					s.cfg.Logger.Error("loading the audit key failed", "err", err)
				}
			}
			if s.audit.Load() != nil {
				if err := s.refreshFence(ctx); err != nil && !errors.Is(err, pstderr.DatabaseBehind) && ctx.Err() == nil {
					s.cfg.Logger.Error("checking the database against the HSM's audit head failed", "err", err)
				}
				s.followAuditKey(ctx)
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
	rrVersion, err := s.store.RRKeysVersion(ctx)
	if err != nil {
		s.setLoadErr(s.dbErr(err, "reading the record keys failed"))
		return err
	}
	failed := s.lastLoadErr() != nil
	rr := s.rr.Load()
	if cur != nil && cur.version == version && rr != nil && rr.version == rrVersion && !failed {
		return nil
	}
	return s.Reload(ctx)
}

// Close wipes every loaded key. Call it after the HTTP server has drained.
func (s *Service) Close() { s.ring.wipe() }

// followAuditKey switches to a newer audit key an operator introduced
// (pstctl audit rotate-key), once the token holds it.
func (s *Service) followAuditKey(ctx context.Context) {
	cur := s.audit.Load()
	keys, err := s.store.AuditKeys(ctx)
	if err != nil || len(keys) == 0 || cur == nil || keys[len(keys)-1].ID == cur.ID {
		return
	}
	newest := keys[len(keys)-1]
	sg, err := s.custody.FindAuditKey(ctx, newest.ID)
	if err != nil {
		return
	}
	a := &db.AuditSigner{ID: newest.ID, PublicDER: newest.PublicKey, Signer: sg}
	if samePublic(a) != nil {
		return
	}
	s.store.SetAuditSigner(a)
	s.audit.Store(a)
	s.cfg.Logger.Info("signing the audit log with the newer audit key", "id", a.ID)
}
