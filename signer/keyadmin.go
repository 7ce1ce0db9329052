package signer

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pstd/pstd/db"
	"github.com/pstd/pstd/internal/pstderr"
	"github.com/pstd/pstd/signer/voprf"
)

// CreateKey generates a VOPRF key from the HSM's RNG, seals it under the KEK
// and stores the epoch. The plaintext scalar is wiped before return.
func (s *Service) CreateKey(ctx context.Context, t KeyTimes, actor string) (uint32, error) {
	id, err := s.store.NextKeyID(ctx)
	if err != nil {
		return 0, s.dbErr(err, "allocating a key id failed")
	}
	sk, err := voprf.GenerateKey(id, hsmReader{s.custody})
	if err != nil {
		return 0, s.hsmErr(err, "generating a key failed")
	}
	defer sk.Wipe()
	return id, s.storeKey(ctx, sk, t, false, actor)
}

// ImportKey stores an existing BoringSSL private key blob (for operators
// migrating an issuer without invalidating tokens in the field).
func (s *Service) ImportKey(ctx context.Context, blob []byte, t KeyTimes, actor string) (uint32, error) {
	sk, err := voprf.ParsePrivateKeyBlob(blob)
	if err != nil {
		return 0, fromVOPRF(err)
	}
	defer sk.Wipe()
	err = s.operatorLocked(ctx, keySubject(sk.KeyID()), func(ctx context.Context) error {
		epochs, err := s.store.KeyEpochs(ctx)
		if err != nil {
			return s.dbErr(err, "reading key epochs failed")
		}
		point := sk.Public().MarshalBlob()[4:]
		for _, e := range epochs {
			if e.KeyID == sk.KeyID() {
				return fmt.Errorf("key id %d is already in use", sk.KeyID())
			}
			// The double-spend guard is keyed on (key id, nonce), and a
			// token's key id is not bound into its signature: one scalar
			// under two ids would let every token redeem once per id.
			if len(e.PublicKey) > 4 && bytes.Equal(e.PublicKey[4:], point) {
				return fmt.Errorf("this key is already loaded as key %d", e.KeyID)
			}
		}
		if len(epochs) >= MaxPublishedKeys {
			return fmt.Errorf("%d keys are live, Chrome's limit; import after one retires", len(epochs))
		}
		return s.storeKey(ctx, sk, t, true, actor)
	})
	return sk.KeyID(), err
}

func (s *Service) storeKey(ctx context.Context, sk *voprf.PrivateKey, t KeyTimes, imported bool, actor string) error {
	scalar := sk.Scalar()
	defer wipe(scalar)
	sealed, err := s.custody.Seal(scalar, keyAAD(sk.KeyID(), t.NotBefore, t.Expiry))
	if err != nil {
		return s.hsmErr(err, "sealing the key failed")
	}
	e := db.KeyEpoch{
		KeyID:     sk.KeyID(),
		Sealed:    sealed,
		KEKLabel:  s.custody.CurrentKEKLabel(),
		PublicKey: sk.Public().MarshalBlob(),
		CreatedAt: s.cfg.Clock.Now(),
		NotBefore: t.NotBefore,
		Expiry:    t.Expiry,
		Imported:  imported,
	}
	if err := s.store.CreateKeyEpoch(ctx, e, actor); err != nil {
		return s.dbErr(err, "storing the key epoch failed")
	}
	return nil
}

func wipe(b []byte) {
	for i := range b {
		b[i] = 0
	}
}

// Rotate runs one rotation step under the database's rotation lock: retire
// expired keys, create the next key when the policy says so, make sure a
// redemption-record key exists, and publish a new commitment if the key set
// changed. It returns false if another replica holds the lock.
//
// Once a step has committed, the redemption partitions of retired, expired
// keys are dropped: a token of an expired key can never redeem again, so its
// rows are dead weight. The drop runs outside the rotation transaction, each
// in its own short transaction, so its table lock never waits behind HSM
// work; it is best effort and the next step tries again.
func (s *Service) Rotate(ctx context.Context) (bool, error) {
	if s.audit.Load() != nil {
		// A database behind the HSM's audit head gets no new keys or
		// retirements until an operator fences.
		if err := s.refreshFence(ctx); err != nil {
			return false, err
		}
	}
	ok, err := s.store.WithRotationLock(ctx, func(ctx context.Context) error {
		now := s.cfg.Clock.Now()
		// Activations and expiries first: an expired key is recorded as
		// expired before the plan below retires it.
		ts, err := s.store.RecordKeyTransitions(ctx, now, s.cfg.Actor)
		if err != nil {
			return s.dbErr(err, "recording key transitions failed")
		}
		for _, t := range ts {
			s.cfg.Logger.Info("key transition", "key_id", t.KeyID, "transition", t.Transition, "at", t.At)
		}
		epochs, err := s.store.KeyEpochs(ctx)
		if err != nil {
			return s.dbErr(err, "reading key epochs failed")
		}
		times := make([]KeyTimes, len(epochs))
		for i, e := range epochs {
			times[i] = epochTimes(e)
		}
		plan := s.cfg.Policy.Plan(now, times)
		for _, id := range plan.Retire {
			if err := s.store.RetireKeyEpoch(ctx, id, s.cfg.Actor); err != nil {
				return s.dbErr(err, "retiring a key failed")
			}
			s.cfg.Logger.Info("retired expired key", "key_id", id)
		}
		if plan.Create != nil {
			id, err := s.CreateKey(ctx, *plan.Create, s.cfg.Actor)
			if err != nil {
				return err
			}
			s.cfg.Logger.Info("created key", "key_id", id, "not_before", plan.Create.NotBefore, "expiry", plan.Create.Expiry)
		}
		if err := s.ensureRRKey(ctx); err != nil {
			return err
		}
		if err := s.publish(ctx); err != nil {
			return err
		}
		return s.auditOperator(ctx, "keys")
	})
	err = s.auditRefusal(ctx, "keys", err)
	if ok && err == nil {
		if _, derr := s.store.DropExpiredRedemptionPartitions(ctx, s.cfg.Actor); derr != nil {
			s.cfg.Logger.Warn("dropping expired redemption partitions failed", "err", derr)
		}
	}
	return ok, err
}

// errRotating answers an operator's command when another replica holds
// the rotation lock.
var errRotating = errors.New("another replica is rotating; try again")

// operatorLocked runs an operator's key change under the rotation lock, or
// fails with errRotating if another replica holds it. If ctx carries an
// Operator (WithOperator), the change's transaction also records an
// operator.command event, and a refusal an operator.refused event.
func (s *Service) operatorLocked(ctx context.Context, subject string, fn func(context.Context) error) error {
	ok, err := s.store.WithRotationLock(ctx, func(ctx context.Context) error {
		if err := fn(ctx); err != nil {
			return err
		}
		return s.auditOperator(ctx, subject)
	})
	if err == nil && !ok {
		return errRotating
	}
	return s.auditRefusal(ctx, subject, err)
}

// RetireKey takes a VOPRF key out of service now, before its expiry (pstctl
// keys retire, say after a suspected compromise): it leaves the commitment,
// and its tokens stop redeeming on every replica at its next key-set
// refresh. It refuses to retire the only key that can sign; create a
// successor first (ForceRotate).
func (s *Service) RetireKey(ctx context.Context, keyID uint32, actor string) error {
	err := s.operatorLocked(ctx, keySubject(keyID), func(ctx context.Context) error {
		epochs, err := s.store.KeyEpochs(ctx)
		if err != nil {
			return s.dbErr(err, "reading key epochs failed")
		}
		now := s.cfg.Clock.Now()
		var rest []KeyTimes
		found := false
		for _, e := range epochs {
			if e.KeyID == keyID {
				found = true
				continue
			}
			rest = append(rest, epochTimes(e))
		}
		if !found {
			return pstderr.New(pstderr.UnknownKey, "no live key %d", keyID)
		}
		if _, ok := SigningKey(now, rest); !ok {
			return fmt.Errorf("key %d is the only key that can sign now; create a successor first (pstctl keys rotate --force)", keyID)
		}
		if err := s.store.RetireKeyEpoch(ctx, keyID, actor); err != nil {
			return s.dbErr(err, "retiring the key failed")
		}
		s.cfg.Logger.Warn("retired key before its expiry", "key_id", keyID, "actor", actor)
		return s.publish(ctx)
	})
	return err
}

// ForceRotate creates a key that signs from now (pstctl keys rotate).
func (s *Service) ForceRotate(ctx context.Context, force bool, actor string) (uint32, error) {
	var id uint32
	err := s.operatorLocked(ctx, "keys", func(ctx context.Context) error {
		var err error
		if id, _, err = s.forcedSuccessor(ctx, force, actor); err != nil {
			return err
		}
		return s.publish(ctx)
	})
	return id, err
}

// forcedSuccessor creates a key that signs from now, for a caller that holds
// the rotation lock, and returns it with the epochs that were live before.
func (s *Service) forcedSuccessor(ctx context.Context, force bool, actor string) (uint32, []db.KeyEpoch, error) {
	epochs, err := s.store.KeyEpochs(ctx)
	if err != nil {
		return 0, nil, s.dbErr(err, "reading key epochs failed")
	}
	times := make([]KeyTimes, len(epochs))
	for i, e := range epochs {
		times[i] = epochTimes(e)
	}
	t, err := s.cfg.Policy.ForcedRotation(s.cfg.Clock.Now(), times, force)
	if err != nil {
		return 0, nil, err
	}
	id, err := s.CreateKey(ctx, t, actor)
	return id, epochs, err
}

// publish writes a new commitment if the set of live keys differs from the
// latest one.
func (s *Service) publish(ctx context.Context) error {
	now := s.cfg.Clock.Now()
	epochs, err := s.store.KeyEpochs(ctx)
	if err != nil {
		return s.dbErr(err, "reading key epochs failed")
	}
	var keys []voprf.PublishedKey
	var ids []uint32
	for _, e := range epochs {
		if !epochTimes(e).Live(now) {
			continue
		}
		pk, err := voprf.ParsePublicKeyBlob(e.PublicKey)
		if err != nil {
			return fmt.Errorf("stored public key %d: %w", e.KeyID, err)
		}
		keys = append(keys, voprf.PublishedKey{Public: pk, Expiry: e.Expiry})
		ids = append(ids, e.KeyID)
	}
	if len(keys) == 0 {
		return nil
	}
	slices.Sort(ids)
	_, _, err = s.store.PublishCommitment(ctx, ids, func(id uint64) ([]byte, error) {
		if id > 0xffffffff {
			return nil, errors.New("commitment id overflows uint32")
		}
		return voprf.BuildCommitment(uint32(id), s.cfg.BatchSize, keys)
	}, s.cfg.Actor)
	if err != nil {
		return s.dbErr(err, "publishing the commitment failed")
	}
	return nil
}

// ensureRRKey creates the first redemption-record key if none signs.
func (s *Service) ensureRRKey(ctx context.Context) error {
	keys, err := s.store.RRKeys(ctx)
	if err != nil {
		return s.dbErr(err, "reading record keys failed")
	}
	for _, k := range keys {
		if !k.Retired {
			return nil
		}
	}
	_, err = s.rotateRRKey(ctx, s.cfg.Actor)
	return err
}

// RotateRRKey creates a new redemption-record key in the HSM and retires the
// current one, which stays in the JWKS until every record it signed expired.
// It runs under the rotation lock, so replicas never race for the next id,
// and in its transaction, so the new key and the retirements land together.
func (s *Service) RotateRRKey(ctx context.Context, actor string) (string, error) {
	var id string
	err := s.operatorLocked(ctx, "rr_keys", func(ctx context.Context) error {
		var err error
		id, err = s.rotateRRKey(ctx, actor)
		return err
	})
	return id, err
}

// rotateRRKey is RotateRRKey for a caller that holds the rotation lock
// (and so runs in its transaction). The current key is retired first and the
// new one stored after, in that one transaction: the database allows one
// signing record key at a time, and a failure leaves the old key signing.
//
// The new key is generated on the token under the next free id. A key found
// on the token under an id the database does not know — left by an earlier
// attempt whose database write failed, or planted — is never adopted: only a
// key this call generated signs, and the id is skipped.
func (s *Service) rotateRRKey(ctx context.Context, actor string) (string, error) {
	keys, err := s.store.RRKeys(ctx)
	if err != nil {
		return "", s.dbErr(err, "reading record keys failed")
	}
	next := len(keys) + 1
	for _, k := range keys {
		if n, err := strconv.Atoi(strings.TrimPrefix(k.ID, "rr-")); err == nil && n >= next {
			next = n + 1
		}
	}
	var id string
	var signer crypto.Signer
	for tries := 0; ; tries++ {
		id = fmt.Sprintf("rr-%d", next)
		signer, err = s.custody.GenerateRRKey(ctx, id)
		if err == nil {
			break
		}
		if tries >= 8 {
			return "", s.hsmErr(err, "generating the record key failed")
		}
		s.cfg.Logger.Warn("the token already holds a key with the next record key's label; it is not adopted, and the id is skipped", "kid", id, "err", err)
		next++
	}
	der, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return "", err
	}
	now := s.cfg.Clock.Now()
	for _, k := range keys {
		if !k.Retired {
			if err := s.store.RetireRRKey(ctx, k.ID, now.Add(s.cfg.RecordLifetime+time.Hour), actor); err != nil {
				return "", s.dbErr(err, "retiring the record key failed")
			}
		}
	}
	if err := s.store.CreateRRKey(ctx, db.RRKey{ID: id, PublicDER: der, CreatedAt: now}, actor); err != nil {
		return "", s.dbErr(err, "storing the record key failed")
	}
	return id, nil
}

// Reload loads the latest commitment's key set and record keys into memory,

// EnsureKEK makes sure the token holds the key-encryption key. Finding it
// needs only the token, so a provisioned replica starts even while the
// database is down. Creating it happens under the database's provisioning
// lock, so replicas starting together on a fresh token make exactly one,
// and the creation is on the audit log.
func (s *Service) EnsureKEK(ctx context.Context, tokenLabel string) error {
	if ok, err := s.custody.FindKEK(ctx); err != nil || ok {
		return err
	}
	return s.store.WithProvisionLock(ctx, func(ctx context.Context) error {
		ok, err := s.custody.FindKEK(ctx) // another replica may have made it meanwhile
		if err != nil || ok {
			return err
		}
		// The audit entry first, in this transaction: if the token then
		// refuses to make the key, the entry is rolled back with it.
		label := s.custody.CurrentKEKLabel()
		if _, err := s.store.AppendAudit(ctx, db.Event{Actor: s.cfg.Actor, Action: db.ActionKEKCreate, Subject: "kek:" + label,
			Details: map[string]any{"hsm_label": tokenLabel, "generation": label}}); err != nil {
			return err
		}
		if err := s.custody.EnsureKEK(ctx); err != nil {
			return err
		}
		s.cfg.Logger.Info("created the key-encryption key", "label", label)
		return nil
	})
}

func keySubject(id uint32) string { return "key:" + strconv.FormatUint(uint64(id), 10) }
