package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pstd/pstd/auditlog"
)

// Checkpoints returns every stored audit checkpoint, oldest first.
func (s *Store) Checkpoints(ctx context.Context) ([]auditlog.Signed, error) {
	rows, err := s.q(ctx).Query(ctx, `SELECT body, sig FROM audit_checkpoints ORDER BY n`)
	if err != nil {
		return nil, wrap("reading audit checkpoints", err)
	}
	defer rows.Close()
	var out []auditlog.Signed
	for rows.Next() {
		var body string
		var c auditlog.Signed
		if err := rows.Scan(&body, &c.Sig); err != nil {
			return nil, wrap("reading audit checkpoints", err)
		}
		c.Body = []byte(body)
		out = append(out, c)
	}
	return out, wrap("reading audit checkpoints", rows.Err())
}

// LatestCheckpoint returns the newest stored checkpoint; ok is false if
// there is none.
func (s *Store) LatestCheckpoint(ctx context.Context) (c auditlog.Signed, ok bool, err error) {
	return s.checkpointWhere(ctx, `ORDER BY n DESC LIMIT 1`)
}

// CheckpointN returns checkpoint n; ok is false if the database lacks it.
func (s *Store) CheckpointN(ctx context.Context, n int64) (c auditlog.Signed, ok bool, err error) {
	return s.checkpointWhere(ctx, `WHERE n = $1`, n)
}

func (s *Store) checkpointWhere(ctx context.Context, where string, args ...any) (auditlog.Signed, bool, error) {
	var body string
	var c auditlog.Signed
	err := s.q(ctx).QueryRow(ctx, `SELECT body, sig FROM audit_checkpoints `+where, args...).Scan(&body, &c.Sig)
	if errors.Is(err, pgx.ErrNoRows) {
		return c, false, nil
	}
	if err != nil {
		return c, false, wrap("reading an audit checkpoint", err)
	}
	c.Body = []byte(body)
	return c, true, nil
}

// InsertCheckpoint stores a signed checkpoint (its body must be canonical).
func (s *Store) InsertCheckpoint(ctx context.Context, c auditlog.Signed) error {
	cp, canonical, err := c.Open()
	if err != nil {
		return err
	}
	_, err = s.q(ctx).Exec(ctx, `INSERT INTO audit_checkpoints (n, body, key_id, sig, audit_seq) VALUES ($1, $2, $3, $4, $5)`,
		cp.N, string(canonical), cp.Key, c.Sig, cp.AuditSeq)
	return wrap("storing an audit checkpoint", err)
}

// AuditState is what a checkpoint commits to, read in one snapshot.
type AuditState struct {
	Seq           int64  // newest event, 0 for an empty log
	Hash          []byte // its hash
	RedemptionHWM int64  // the redemption sequence's value, 0 before the first redemption
}

// AuditState reads the audit head and the redemption high-water mark.
func (s *Store) AuditState(ctx context.Context) (AuditState, error) {
	var st AuditState
	err := s.q(ctx).QueryRow(ctx, `
		SELECT coalesce((SELECT seq FROM audit_log ORDER BY seq DESC LIMIT 1), 0),
		       coalesce((SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1), ''::bytea),
		       (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM redemption_hwm)`).Scan(&st.Seq, &st.Hash, &st.RedemptionHWM)
	return st, wrap("reading the audit state", err)
}

// AuditHashAt returns event seq's hash; ok is false if there is no such event.
func (s *Store) AuditHashAt(ctx context.Context, seq int64) ([]byte, bool, error) {
	var h []byte
	err := s.q(ctx).QueryRow(ctx, `SELECT hash FROM audit_log WHERE seq = $1`, seq).Scan(&h)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	return h, err == nil, wrap("reading the audit log", err)
}

// WithCheckpointLock runs fn in a transaction holding the checkpoint lock,
// or returns false at once if another replica holds it.
func (s *Store) WithCheckpointLock(ctx context.Context, fn func(ctx context.Context) error) (bool, error) {
	held := false
	err := s.inTx(ctx, "writing an audit checkpoint", func(ctx context.Context, tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1, $2)`, lockClass, lockCheckpoint).Scan(&held); err != nil {
			return err
		}
		if !held {
			return nil
		}
		return fn(ctx)
	})
	return held, err
}

// AuditKeys returns the audit keys the log introduced, oldest first, as its
// audit_key.create events state them (verification checks those events'
// signatures; this is the list the service uses to check the HSM's anchor).
func (s *Store) AuditKeys(ctx context.Context) ([]auditlog.KeyInfo, error) {
	rows, err := s.q(ctx).Query(ctx, `SELECT seq, details::text FROM audit_log WHERE action = $1 ORDER BY seq`, auditlog.ActionKeyCreate)
	if err != nil {
		return nil, wrap("reading audit keys", err)
	}
	defer rows.Close()
	var out []auditlog.KeyInfo
	for rows.Next() {
		var seq int64
		var details string
		if err := rows.Scan(&seq, &details); err != nil {
			return nil, wrap("reading audit keys", err)
		}
		var k auditlog.KeyIntro
		if err := json.Unmarshal([]byte(details), &k); err != nil {
			return nil, fmt.Errorf("db: audit key introduced at event %d: %w", seq, err)
		}
		out = append(out, auditlog.KeyInfo{ID: k.Key, PublicKey: k.PublicKey, Fingerprint: auditlog.Fingerprint(k.PublicKey), IntroducedAt: seq})
	}
	return out, wrap("reading audit keys", rows.Err())
}

// EnsureAuditKeyIntroduced appends the introduction of the store's audit key
// if the log has none yet (an empty log: the key becomes the trust root).
func (s *Store) EnsureAuditKeyIntroduced(ctx context.Context) error {
	a := s.auditSigner.Load()
	if a == nil {
		return ErrNoAuditSigner
	}
	return s.inTx(ctx, "introducing the audit key", func(ctx context.Context, tx pgx.Tx) error {
		if err := lockAuditChain(ctx, tx); err != nil {
			return err
		}
		var introduced, anyKey bool
		if err := tx.QueryRow(ctx, `
			SELECT coalesce(bool_or(subject = $1), false), count(*) > 0
			  FROM audit_log WHERE action = $2`, "audit_key:"+a.ID, auditlog.ActionKeyCreate).Scan(&introduced, &anyKey); err != nil {
			return err
		}
		switch {
		case introduced:
			return nil
		case anyKey:
			return fmt.Errorf("db: audit key %s was never introduced on this audit log; rotate to it with pstctl audit rotate-key", a.ID)
		}
		_, err := s.insertSigned(ctx, tx, a, KeyIntroEvent("pstd", a.ID, a.PublicDER))
		return err
	})
}

// WithCheckpointLockWait runs fn holding the checkpoint lock, waiting for it.
func (s *Store) WithCheckpointLockWait(ctx context.Context, fn func(ctx context.Context) error) error {
	return s.inTx(ctx, "writing the audit anchor", func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, lockClass, lockCheckpoint); err != nil {
			return err
		}
		return fn(ctx)
	})
}

// SignedKeyEvent reports whether the log holds, after event afterSeq, an
// event with this action (key.create, key.retire) for keyID that an audit
// key of the log signed.
func (s *Store) SignedKeyEvent(ctx context.Context, action string, keyID uint32, afterSeq int64) (bool, error) {
	keys, err := s.AuditKeys(ctx)
	if err != nil {
		return false, err
	}
	found := false
	err = s.AuditEventsWhere(ctx, afterSeq, action, keySubject(keyID), func(e auditlog.Event) error {
		for _, k := range keys {
			if k.ID == e.Key && auditlog.VerifySignature(&e, k.PublicKey) == nil {
				found = true
			}
		}
		return nil
	})
	return found, err
}

// AuditEventsWhere streams the events after afterSeq with this action and
// subject.
func (s *Store) AuditEventsWhere(ctx context.Context, afterSeq int64, action, subject string, fn func(auditlog.Event) error) error {
	rows, err := s.q(ctx).Query(ctx, `SELECT `+auditEventColumns+` FROM audit_log
		  WHERE seq > $1 AND action = $2 AND subject = $3 ORDER BY seq`, afterSeq, action, subject)
	if err != nil {
		return wrap("reading the audit log", err)
	}
	return scanAuditEvents(rows, fn)
}
