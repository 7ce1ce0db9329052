package signer

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"slices"
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
	rows, err := s.store.KeyEpochsDigest(ctx)
	if err != nil {
		return s.dbErr(err, "reading the key epochs failed")
	}
	cur := s.ring.load()
	epochs, err := s.store.KeyEpochs(ctx)
	if err != nil {
		return s.dbErr(err, "reading key epochs failed")
	}
	next := &keySet{version: version, rows: rows, keys: map[uint32]*LoadedKey{}}
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
	anc, err := s.anchoredKeys(ctx)
	if err != nil {
		return err
	}
	now := s.cfg.Clock.Now()
	var published []voprf.PublishedKey
	for _, e := range epochs {
		// A key live now that was not live at the HSM's audit head must
		// have been created since, by a signed event, and never retired by
		// one: otherwise its row was resurrected (retired_at cleared) or
		// planted in the database.
		if epochTimes(e).Live(now) {
			if err := s.trustLive(ctx, e.KeyID, anc); err != nil {
				return err
			}
		}
		row := rowDigest(e)
		if cur != nil {
			// Carried over only while its row is unchanged: a swapped
			// sealed blob, public key or time is checked again at once.
			if lk, ok := cur.keys[e.KeyID]; ok && lk.row == row {
				next.keys[e.KeyID] = &LoadedKey{Key: lk.Key, Times: epochTimes(e), row: row}
				if epochTimes(e).Live(now) {
					published = append(published, voprf.PublishedKey{Public: lk.Key.Public(), Expiry: e.Expiry})
				}
				continue
			}
		}
		scalar, err := s.custody.Unseal(e.Sealed, keyAAD(e.KeyID, e.NotBefore, e.Expiry))
		if err != nil {
			var v1err error
			if scalar, v1err = s.custody.Unseal(e.Sealed, keyAADv1(e.KeyID, e.NotBefore)); v1err != nil {
				return s.integrityOrHSM(ctx, e.KeyID, err)
			}
		}
		sk, err := newPrivateKey(e.KeyID, scalar)
		wipe(scalar)
		if err != nil {
			return fmt.Errorf("key %d: %w", e.KeyID, err)
		}
		if string(sk.Public().MarshalBlob()) != string(e.PublicKey) {
			sk.Wipe()
			return s.integrityViolation(ctx, fmt.Sprintf("key %d: the unsealed scalar does not match the stored public key", e.KeyID))
		}
		next.keys[e.KeyID] = &LoadedKey{Key: sk, Times: epochTimes(e), row: row}
		if epochTimes(e).Live(now) {
			published = append(published, voprf.PublishedKey{Public: sk.Public(), Expiry: e.Expiry})
		}
	}
	// The commitment served is built from the keys just verified, never
	// the stored body: a row inserted into commitments changes nothing but
	// the id it carries.
	if len(published) > 0 && version > 0 && version <= 0xffffffff {
		slices.SortFunc(published, func(a, b voprf.PublishedKey) int { return int(a.Public.KeyID) - int(b.Public.KeyID) })
		if len(published) > MaxPublishedKeys {
			published = published[len(published)-MaxPublishedKeys:]
		}
		if next.commitment, err = voprf.BuildCommitment(uint32(version), s.cfg.BatchSize, published); err != nil {
			return err
		}
		// The stored commitment must name exactly these keys: a row
		// inserted with other keys is tampering (its body is never served).
		if err := sameKeys(body, published); err != nil {
			return s.integrityViolation(ctx, fmt.Sprintf("commitment %d: %v", version, err))
		}
	} else {
		next.commitment = nil
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
	times := make([]KeyTimes, 0, len(next.keys))
	for _, lk := range next.keys {
		times = append(times, lk.Times)
	}
	tl := s.cfg.Policy.Timeline(s.cfg.Clock.Now(), times, 0)
	if !tl.NextRotation.IsZero() {
		s.metrics.nextRotation.Set(float64(tl.NextRotation.Unix()))
	}
	if tl.Successor {
		s.metrics.successor.Set(1)
	} else {
		s.metrics.successor.Set(0)
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
		// Every key the JWKS publishes must be the token's key of that id:
		// a row inserted into rr_keys with a key of someone else's would
		// let them sign records that verify.
		signer, err := s.custody.FindRRKey(ctx, info.ID)
		if err != nil {
			if perr := s.custody.Ping(ctx); perr != nil {
				return nil, s.hsmErr(err, "finding the record key failed")
			}
			return nil, s.integrityViolation(ctx, fmt.Sprintf("record key %s is in the database but not on the token", info.ID))
		}
		if der, err := x509.MarshalPKIXPublicKey(signer.Public()); err != nil || string(der) != string(info.PublicDER) {
			return nil, s.integrityViolation(ctx, fmt.Sprintf("record key %s in the database is not the token's key of that id", info.ID))
		}
		published = append(published, RRKey{KID: info.ID, Signer: publicOnly{pub}})
		if !info.Retired {
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
	checkpoint := time.NewTicker(s.cfg.CheckpointInterval)
	defer checkpoint.Stop()
	flush := time.NewTicker(s.cfg.CountFlushInterval)
	defer flush.Stop()
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
	rows, err := s.store.KeyEpochsDigest(ctx)
	if err != nil {
		s.setLoadErr(s.dbErr(err, "reading the key epochs failed"))
		return err
	}
	failed := s.lastLoadErr() != nil
	rr := s.rr.Load()
	if cur != nil && cur.version == version && cur.rows == rows && rr != nil && rr.version == rrVersion && !failed {
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

// rowDigest identifies what a loaded key was verified against.
func rowDigest(e db.KeyEpoch) string {
	h := sha256.New()
	h.Write(e.Sealed)
	h.Write(e.PublicKey)
	fmt.Fprintf(h, "|%d|%d|%d", e.KeyID, e.NotBefore.UnixMicro(), e.Expiry.UnixMicro())
	return string(h.Sum(nil))
}

// anchoredKeys returns what the HSM's audit head says of the keys.
func (s *Service) anchoredKeys(ctx context.Context) (keysAtAnchor, error) {
	if s.audit.Load() == nil {
		return keysAtAnchor{}, nil
	}
	a, ok, err := s.readAnchor(ctx)
	if err != nil || !ok {
		return keysAtAnchor{}, err
	}
	c, _, err := a.Open()
	if err != nil {
		return keysAtAnchor{}, err
	}
	return keysAtAnchor{live: c.LiveKeys, seq: c.AuditSeq, ok: true}, nil
}

// keysAtAnchor is what the HSM's audit head says of the keys: those live at it,
// and the event it covers. ok is false before the first checkpoint.
type keysAtAnchor struct {
	live []uint32
	seq  int64
	ok   bool
}

// trustLive checks a key the database says is live against what the
// database alone cannot forge: it was live at the HSM's audit head or a
// signed key.create follows the head, and no signed key.retire ever retired
// it. Both reload (before serving the key) and checkpoint (before signing
// it into a new head) ask, so a retirement undone in the database can
// neither be served nor be made legitimate by the next checkpoint.
func (s *Service) trustLive(ctx context.Context, keyID uint32, a keysAtAnchor) error {
	if a.ok && !slices.Contains(a.live, keyID) {
		ok, err := s.store.SignedKeyEvent(ctx, db.ActionKeyCreate, keyID, a.seq)
		if err != nil {
			return s.dbErr(err, "reading the audit log failed")
		}
		if !ok {
			return s.integrityViolation(ctx, fmt.Sprintf("key %d is live in the database but was not at the HSM's audit head, and no signed key.create follows it (a retirement undone, or a planted row)", keyID))
		}
	}
	retired, err := s.store.SignedKeyEvent(ctx, db.ActionKeyRetire, keyID, 0)
	if err != nil {
		return s.dbErr(err, "reading the audit log failed")
	}
	if retired {
		return s.integrityViolation(ctx, fmt.Sprintf("key %d is live in the database but a signed key.retire retired it (a retirement undone)", keyID))
	}
	return nil
}

// integrityOrHSM tells a key whose row no longer unseals (tampered with:
// AAD mismatch) from a token that is unusable.
func (s *Service) integrityOrHSM(ctx context.Context, keyID uint32, err error) error {
	if perr := s.custody.Ping(ctx); perr != nil {
		return s.hsmErr(err, fmt.Sprintf("unsealing key %d failed", keyID))
	}
	return s.integrityViolation(ctx, fmt.Sprintf("key %d: its sealed blob does not open with its id and times (the row was changed or swapped)", keyID))
}

// integrityViolation makes the replica not ready with a clear reason and
// records it on the audit log (best effort: the log may be what was
// tampered with).
func (s *Service) integrityViolation(ctx context.Context, what string) error {
	s.metrics.integrityViolations.Inc()
	s.cfg.Logger.Error("integrity violation: refusing to serve", "what", what)
	if s.audit.Load() != nil {
		_, _ = s.store.AppendAudit(ctx, db.Event{Actor: s.cfg.Actor, Action: "integrity.violation", Subject: "keys",
			Details: map[string]any{"what": what}})
	}
	return pstderr.New(pstderr.Unavailable, "integrity check failed: %s", what)
}

// sameKeys checks that a stored commitment publishes exactly these keys
// (ids and public keys; its batch size may differ after a settings change).
func sameKeys(body []byte, keys []voprf.PublishedKey) error {
	_, stored, err := voprf.ParseCommitment(body)
	if err != nil {
		return fmt.Errorf("the stored body does not parse: %w", err)
	}
	if len(stored) != len(keys) {
		return fmt.Errorf("it names %d keys, the verified key set has %d", len(stored), len(keys))
	}
	for _, k := range keys {
		pk, ok := stored[k.Public.KeyID]
		if !ok || string(pk.MarshalBlob()) != string(k.Public.MarshalBlob()) {
			return fmt.Errorf("key %d differs from the verified key", k.Public.KeyID)
		}
	}
	return nil
}
