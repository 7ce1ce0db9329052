package signer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/pstd/pstd/auditlog"
	"github.com/pstd/pstd/db"
	"github.com/pstd/pstd/internal/pstderr"
)

// The audit log's custody: the HSM-held audit key that signs every event and
// checkpoint, the checkpointer, the anchor kept on the token, and the
// restore fence that refuses to issue or redeem on a database that is behind
// that anchor. See docs/AUDIT.md.

// EnsureAuditKey finds the audit key this service signs with and makes sure
// the log introduces it: the newest key the log introduced that the token
// holds, or, on a log without any, key audit-1, made on the token under the
// provisioning lock if it is not there yet.
func (s *Service) EnsureAuditKey(ctx context.Context) error {
	keys, err := s.store.AuditKeys(ctx)
	if err != nil {
		return s.dbErr(err, "reading the audit keys failed")
	}
	var a *db.AuditSigner
	if len(keys) > 0 {
		for i := len(keys) - 1; i >= 0 && a == nil; i-- {
			sg, err := s.custody.FindAuditKey(ctx, keys[i].ID)
			if err != nil {
				continue
			}
			a = &db.AuditSigner{ID: keys[i].ID, PublicDER: keys[i].PublicKey, Signer: sg}
		}
		if a == nil {
			return fmt.Errorf("the token holds none of the %d audit keys this database's log introduced: is this the database of another token?", len(keys))
		}
		if err := samePublic(a); err != nil {
			return err
		}
	} else {
		err := s.store.WithProvisionLock(ctx, func(ctx context.Context) error {
			id := "audit-1"
			sg, err := s.custody.FindAuditKey(ctx, id)
			if err != nil {
				if sg, err = s.custody.GenerateAuditKey(ctx, id); err != nil {
					return s.hsmErr(err, "generating the audit key failed")
				}
				s.cfg.Logger.Info("created the audit signing key", "id", id)
			}
			der, err := x509.MarshalPKIXPublicKey(sg.Public())
			if err != nil {
				return err
			}
			a = &db.AuditSigner{ID: id, PublicDER: der, Signer: sg}
			return nil
		})
		if err != nil {
			return err
		}
	}
	s.store.SetAuditSigner(a)
	s.audit.Store(a)
	if err := s.store.EnsureAuditKeyIntroduced(ctx); err != nil {
		return s.dbErr(err, "introducing the audit key failed")
	}
	return nil
}

// samePublic checks that the token's key is the one the log introduced.
func samePublic(a *db.AuditSigner) error {
	der, err := x509.MarshalPKIXPublicKey(a.Signer.Public())
	if err != nil {
		return err
	}
	if string(der) != string(a.PublicDER) {
		return fmt.Errorf("audit key %s on the token is not the key the log introduced", a.ID)
	}
	return nil
}

// AuditKeyID is the id of the key this service signs audit events with.
func (s *Service) AuditKeyID() string {
	if a := s.audit.Load(); a != nil {
		return a.ID
	}
	return ""
}

// RotateAuditKey makes a new audit key on the token, introduces it on the
// log with an event signed by the current key, and signs with it from then
// on. Replicas pick it up at their next key-set refresh; events the old key
// signs meanwhile stay valid.
func (s *Service) RotateAuditKey(ctx context.Context, actor, reason string) (string, error) {
	old := s.audit.Load()
	if old == nil {
		return "", errors.New("no audit key loaded")
	}
	keys, err := s.store.AuditKeys(ctx)
	if err != nil {
		return "", s.dbErr(err, "reading the audit keys failed")
	}
	next := 1
	for _, k := range keys {
		if n, err := strconv.Atoi(strings.TrimPrefix(k.ID, "audit-")); err == nil && n >= next {
			next = n + 1
		}
	}
	id := fmt.Sprintf("audit-%d", next)
	sg, err := s.custody.GenerateAuditKey(ctx, id)
	if err != nil {
		return "", s.hsmErr(err, "generating the audit key failed")
	}
	der, err := x509.MarshalPKIXPublicKey(sg.Public())
	if err != nil {
		return "", err
	}
	e := db.KeyIntroEvent(actor, id, der)
	e.Details["reason"] = reason
	e.Details["previous_key"] = old.ID
	if _, err := s.store.InsertSignedBy(ctx, old, e); err != nil {
		return "", s.dbErr(err, "introducing the audit key failed")
	}
	a := &db.AuditSigner{ID: id, PublicDER: der, Signer: sg}
	s.store.SetAuditSigner(a)
	s.audit.Store(a)
	_, err = s.Checkpoint(ctx, true)
	return id, err
}

// Checkpoint signs and stores a checkpoint of the audit head, unless another
// replica is writing one or (without force) nothing changed since the newest,
// and then keeps a copy on the token as the anchor. It reports whether it
// wrote one.
func (s *Service) Checkpoint(ctx context.Context, force bool) (bool, error) {
	return s.checkpoint(ctx, force, nil)
}

func (s *Service) checkpoint(ctx context.Context, force bool, fence *auditlog.Fence) (bool, error) {
	a := s.audit.Load()
	if a == nil {
		return false, errors.New("no audit key loaded")
	}
	if fence == nil {
		// Never checkpoint (and so re-anchor) a database behind the anchor.
		if err := s.refreshFence(ctx); err != nil {
			return false, err
		}
	}
	var out auditlog.Signed
	held, err := s.store.WithCheckpointLock(ctx, func(ctx context.Context) error {
		st, err := s.store.AuditState(ctx)
		if err != nil {
			return s.dbErr(err, "reading the audit state failed")
		}
		last, have, err := s.store.LatestCheckpoint(ctx)
		if err != nil {
			return s.dbErr(err, "reading the newest audit checkpoint failed")
		}
		c := auditlog.Checkpoint{V: 1, N: 1, At: s.cfg.Clock.Now().UTC().Format(auditlog.TimeFormat), AuditSeq: st.Seq,
			Head: hex.EncodeToString(st.Hash), RedemptionHWM: st.RedemptionHWM, Key: a.ID, Fence: fence}
		if have {
			lc, _, err := last.Open()
			if err != nil {
				return fmt.Errorf("the newest stored audit checkpoint: %w", err)
			}
			if !force && fence == nil && lc.AuditSeq == st.Seq && lc.RedemptionHWM == st.RedemptionHWM {
				return nil
			}
			c.N = lc.N + 1
			if c.Prev, err = last.Digest(); err != nil {
				return err
			}
		}
		if fence != nil && c.N <= fence.N {
			c.N = fence.N + 1 // numbered after the anchor it replaces
		}
		epochs, err := s.store.KeyEpochs(ctx)
		if err != nil {
			return s.dbErr(err, "reading key epochs failed")
		}
		// The head's live keys are signed into the HSM's anchor, which later
		// reloads trust: a key the database says is live goes in only if it
		// passes the same check a reload makes (outside a fence, which
		// retires every anchored key by a signed event of its own).
		var anc keysAtAnchor
		if fence == nil {
			if anc, err = s.anchoredKeys(ctx); err != nil {
				return err
			}
		}
		now := s.cfg.Clock.Now()
		for _, e := range epochs {
			if epochTimes(e).Live(now) {
				if fence == nil {
					if err := s.trustLive(ctx, e.KeyID, anc); err != nil {
						return err
					}
				}
				c.LiveKeys = append(c.LiveKeys, e.KeyID)
			}
		}
		slices.Sort(c.LiveKeys)
		body, err := c.Canonical()
		if err != nil {
			return err
		}
		sig, err := a.Signer.Sign(rand.Reader, auditlog.Digest(body), crypto.SHA256)
		if err != nil {
			return s.hsmErr(err, "signing the audit checkpoint failed")
		}
		out = auditlog.Signed{Body: body, Sig: sig}
		if err := s.store.InsertCheckpoint(ctx, out); err != nil {
			return s.dbErr(err, "storing the audit checkpoint failed")
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	wrote := held && out.Body != nil
	return wrote, s.syncAnchor(ctx)
}

// syncAnchor copies the database's newest checkpoint to the token if the
// token's anchor is older (or missing): after every checkpoint, and on every
// later run, so an anchor write that failed is retried. It runs only after
// the checkpoint committed (an anchor newer than the database would fence
// every replica), under the checkpoint lock so replicas write the token one
// at a time, and never replaces a newer anchor.
func (s *Service) syncAnchor(ctx context.Context) error {
	return s.store.WithCheckpointLockWait(ctx, func(ctx context.Context) error {
		latest, have, err := s.store.LatestCheckpoint(ctx)
		if err != nil || !have {
			return err
		}
		lc, _, err := latest.Open()
		if err != nil {
			return err
		}
		if cur, ok, err := s.readAnchor(ctx); err != nil {
			return err
		} else if ok {
			if cc, _, _ := cur.Open(); cc.N >= lc.N {
				return nil
			}
		}
		b, err := latest.Marshal()
		if err != nil {
			return err
		}
		if err := s.custody.WriteAnchor(ctx, b); err != nil {
			return s.hsmErr(err, "writing the audit anchor to the token failed")
		}
		return nil
	})
}

// readAnchor returns the newest checkpoint the token holds.
func (s *Service) readAnchor(ctx context.Context) (auditlog.Signed, bool, error) {
	vs, err := s.custody.ReadAnchor(ctx)
	if err != nil {
		return auditlog.Signed{}, false, s.hsmErr(err, "reading the audit anchor failed")
	}
	var best auditlog.Signed
	var bestN int64
	for _, b := range vs {
		a, err := auditlog.ParseSigned(b)
		if err != nil {
			return a, false, fmt.Errorf("the token's audit anchor: %w", err)
		}
		if c, _, _ := a.Open(); c.N > bestN {
			best, bestN = a, c.N
		}
	}
	return best, bestN > 0, nil
}

// checkFence compares the database with the anchor on the token. A database
// that lacks the anchored checkpoint, holds another one under its number,
// lacks the event it covers or has a lower redemption high-water mark is
// behind: restored, rolled back or truncated. Tokens spent in the lost
// window could redeem again, so the service refuses to issue or redeem
// (DatabaseBehind) until an operator fences.
func (s *Service) checkFence(ctx context.Context) error {
	anchor, ok, err := s.readAnchor(ctx)
	if err != nil || !ok {
		return err
	}
	c, canonical, err := anchor.Open()
	if err != nil {
		return err
	}
	behind := func(format string, args ...any) error {
		return pstderr.New(pstderr.DatabaseBehind, "database behind the HSM's audit head (checkpoint %d): %s", c.N, fmt.Sprintf(format, args...))
	}
	keys, err := s.store.AuditKeys(ctx)
	if err != nil {
		return s.dbErr(err, "reading the audit keys failed")
	}
	verified := false
	for _, k := range keys {
		if k.ID != c.Key {
			continue
		}
		pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
		if ec, ok := pub.(*ecdsa.PublicKey); err == nil && ok && ecdsa.VerifyASN1(ec, auditlog.Digest(canonical), anchor.Sig) {
			verified = true
		}
	}
	if !verified {
		return behind("the database does not know audit key %s that signed it", c.Key)
	}
	have, ok, err := s.store.CheckpointN(ctx, c.N)
	if err != nil {
		return s.dbErr(err, "reading an audit checkpoint failed")
	}
	if !ok {
		return behind("the database lacks it")
	}
	if hd, _ := have.Digest(); func() string { d, _ := anchor.Digest(); return d }() != hd {
		return behind("the database holds another checkpoint with its number")
	}
	if c.AuditSeq > 0 {
		h, ok, err := s.store.AuditHashAt(ctx, c.AuditSeq)
		if err != nil {
			return s.dbErr(err, "reading the audit log failed")
		}
		if !ok || hex.EncodeToString(h) != c.Head {
			return behind("audit event %d is missing or changed", c.AuditSeq)
		}
	}
	st, err := s.store.AuditState(ctx)
	if err != nil {
		return s.dbErr(err, "reading the audit state failed")
	}
	if st.RedemptionHWM < c.RedemptionHWM {
		return behind("the redemption sequence is at %d, the anchor at %d", st.RedemptionHWM, c.RedemptionHWM)
	}
	return nil
}

// refreshFence rechecks the fence and remembers the outcome for the
// request path and readiness.
func (s *Service) refreshFence(ctx context.Context) error {
	err := s.checkFence(ctx)
	switch {
	case err == nil:
		if s.fenced.Swap(nil) != nil {
			s.cfg.Logger.Info("the database again reaches the HSM's audit head")
		}
	case errors.Is(err, pstderr.DatabaseBehind):
		if s.fenced.Swap(&loadFailure{err}) == nil {
			s.cfg.Logger.Error("refusing to issue or redeem", "err", err)
		}
	}
	return err
}

func (s *Service) fenceErr() error {
	if f := s.fenced.Load(); f != nil {
		return f.err
	}
	return nil
}

// Fence answers a database that is behind the HSM's anchor (see checkFence):
// under the rotation lock it makes a key that signs from now, retires every
// key that was live at the anchor — no token that might have been spent in
// the lost window can redeem again — publishes the new commitment, records
// all of it on the audit log, and writes a checkpoint that names the anchor
// it replaces, on the database and the token.
func (s *Service) Fence(ctx context.Context, actor, reason string) (uint32, []uint32, error) {
	if err := s.checkFence(ctx); err == nil {
		return 0, nil, errors.New("the database reaches the HSM's audit head; there is nothing to fence")
	} else if !errors.Is(err, pstderr.DatabaseBehind) {
		return 0, nil, err
	}
	anchor, _, err := s.readAnchor(ctx)
	if err != nil {
		return 0, nil, err
	}
	ac, _, err := anchor.Open()
	if err != nil {
		return 0, nil, err
	}
	digest, _ := anchor.Digest()
	var newKey uint32
	var retired []uint32
	err = s.operatorLocked(ctx, fmt.Sprintf("checkpoint:%d", ac.N), func(ctx context.Context) error {
		var epochs []db.KeyEpoch
		var err error
		if newKey, epochs, err = s.forcedSuccessor(ctx, true, actor); err != nil {
			return err
		}
		for _, e := range epochs {
			if slices.Contains(ac.LiveKeys, e.KeyID) {
				if err := s.store.RetireKeyEpoch(ctx, e.KeyID, actor); err != nil {
					return s.dbErr(err, "retiring a key failed")
				}
				retired = append(retired, e.KeyID)
			}
		}
		if _, err := s.store.AppendAudit(ctx, db.Event{Actor: actor, Action: "audit.fence", Subject: fmt.Sprintf("checkpoint:%d", ac.N),
			Details: map[string]any{"reason": reason, "anchor_n": ac.N, "anchor_digest": digest, "anchor_audit_seq": ac.AuditSeq,
				"anchor_redemption_hwm": ac.RedemptionHWM, "retired_keys": retired, "new_key": newKey}}); err != nil {
			return s.dbErr(err, "recording the fence failed")
		}
		return s.publish(ctx)
	})
	if err != nil {
		return 0, nil, err
	}
	if _, err := s.checkpoint(ctx, true, &auditlog.Fence{N: ac.N, Digest: digest, AuditSeq: ac.AuditSeq, RedemptionHWM: ac.RedemptionHWM, Reason: reason}); err != nil {
		return newKey, retired, err
	}
	s.cfg.Logger.Warn("fenced: keys live at the HSM's audit head retired, a new key signs", "retired", retired, "new_key", newKey, "actor", actor)
	return newKey, retired, s.refreshFence(ctx)
}
