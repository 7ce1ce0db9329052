package db

import (
	"context"
	"crypto"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pstd/pstd/auditlog"
	"github.com/pstd/pstd/internal/pstderr"
)

// Audit actions written by this package.
const (
	ActionKeyCreate         = "key.create"
	ActionKeyRetire         = "key.retire"
	ActionCommitmentPublish = "commitment.publish"
	ActionRRKeyCreate       = "rr_key.create"
	ActionRRKeyRetire       = "rr_key.retire"
	ActionRedemptionsDrop   = "redemptions.drop"
	ActionSchemaMigrate     = "schema.migrate"
	ActionKEKCreate         = "kek.create"
)

// Event is one audit record to append. The database assigns its sequence
// number, time and hashes.
type Event struct {
	Actor   string         // who: an operator name or the service's actor
	Action  string         // what, dotted lower case: "key.create"
	Subject string         // on what: "key:7", "rr:rr-2", "commitment:3"
	Details map[string]any // public facts only: never secrets, nonces or client data
}

// AuditEntry is a stored audit record.
type AuditEntry struct {
	Seq      int64
	At       time.Time
	Actor    string
	Action   string
	Subject  string
	Details  json.RawMessage // PostgreSQL's normalised jsonb text
	PrevHash []byte
	Hash     []byte
}

var actionRE = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$`)

// forbiddenDetail are words of detail keys ("user_pin", "sealed-secret",
// "Nonce") that suggest a secret or a token nonce is about to be written into
// the audit log.
var forbiddenDetail = map[string]bool{
	"secret": true, "sealed": true, "private": true, "nonce": true, "pin": true,
	"password": true, "plaintext": true, "scalar": true, "token": true,
}

func (e Event) validate() error {
	if e.Actor == "" {
		return errors.New("db: audit event without actor")
	}
	if !actionRE.MatchString(e.Action) {
		return fmt.Errorf("db: audit action %q is not dotted lower case", e.Action)
	}
	for k := range e.Details {
		words := strings.FieldsFunc(strings.ToLower(k), func(r rune) bool { return r == '_' || r == '-' || r == '.' || r == ' ' })
		for _, w := range words {
			if forbiddenDetail[w] {
				return fmt.Errorf("db: audit detail %q looks like a secret; audit details hold public facts only", k)
			}
		}
	}
	return nil
}

// AuditSigner signs audit events and checkpoints: an ECDSA P-256 key in the
// HSM (signer/hsm), named by ID, whose public key (PKIX DER) is introduced on
// the chain before the first event it signs.
type AuditSigner struct {
	ID        string
	PublicDER []byte
	Signer    crypto.Signer
}

// ErrNoAuditSigner is returned by writes that would append an audit event
// through a Store without an audit signing key: the log takes only signed
// events.
var ErrNoAuditSigner = errors.New("db: no audit signing key; this command needs the HSM")

// SetAuditSigner makes the store sign every audit event it writes with a.
func (s *Store) SetAuditSigner(a *AuditSigner) { s.auditSigner.Store(a) }

// AuditSignerID is the id of the store's audit signing key, or "".
func (s *Store) AuditSignerID() string {
	if a := s.auditSigner.Load(); a != nil {
		return a.ID
	}
	return ""
}

// AppendAudit appends e to the audit log and returns its sequence number. In
// a context from runInTx or WithRotationLock it joins that transaction, so the
// record commits (or not) with the change it describes.
func (s *Store) AppendAudit(ctx context.Context, e Event) (int64, error) {
	if err := e.validate(); err != nil {
		return 0, err
	}
	var seq int64
	err := s.inTx(ctx, "appending to the audit log", func(ctx context.Context, tx pgx.Tx) error {
		var err error
		seq, err = s.appendAudit(ctx, tx, e)
		return err
	})
	return seq, err
}

// appendAudit signs e with the store's audit key and inserts it in tx. If
// the chain has not yet introduced that key, the introduction goes first:
// on an empty chain signed by the key itself (the trust root); otherwise the
// key must have been introduced by an operator's key rotation.
func (s *Store) appendAudit(ctx context.Context, tx pgx.Tx, e Event) (int64, error) {
	if err := e.validate(); err != nil {
		return 0, err
	}
	a := s.auditSigner.Load()
	if a == nil {
		return 0, ErrNoAuditSigner
	}
	if err := lockAuditChain(ctx, tx); err != nil {
		return 0, wrap("appending to the audit log", err)
	}
	var introduced, anyKey bool
	err := tx.QueryRow(ctx, `
		SELECT coalesce(bool_or(subject = $1), false), count(*) > 0
		  FROM audit_log WHERE action = $2`, "audit_key:"+a.ID, auditlog.ActionKeyCreate).Scan(&introduced, &anyKey)
	if err != nil {
		return 0, wrap("appending to the audit log", err)
	}
	if !introduced {
		if anyKey {
			return 0, fmt.Errorf("db: audit key %s was never introduced on this audit log; rotate to it with pstctl audit rotate-key", a.ID)
		}
		if _, err := s.insertSigned(ctx, tx, a, KeyIntroEvent(e.Actor, a.ID, a.PublicDER)); err != nil {
			return 0, err
		}
	}
	return s.insertSigned(ctx, tx, a, e)
}

// KeyIntroEvent is the event that introduces audit key id.
func KeyIntroEvent(actor, id string, publicDER []byte) Event {
	return Event{Actor: actor, Action: auditlog.ActionKeyCreate, Subject: "audit_key:" + id,
		Details: map[string]any{"key": id, "public_key": publicDER, "fingerprint": auditlog.Fingerprint(publicDER)}}
}

// InsertSignedBy appends e signed by a rather than the store's own key (an
// audit key rotation: the new key's introduction is signed by the old one).
func (s *Store) InsertSignedBy(ctx context.Context, a *AuditSigner, e Event) (int64, error) {
	if err := e.validate(); err != nil {
		return 0, err
	}
	var seq int64
	err := s.inTx(ctx, "appending to the audit log", func(ctx context.Context, tx pgx.Tx) error {
		if err := lockAuditChain(ctx, tx); err != nil {
			return err
		}
		var err error
		seq, err = s.insertSigned(ctx, tx, a, e)
		return err
	})
	return seq, err
}

func (s *Store) insertSigned(ctx context.Context, tx pgx.Tx, a *AuditSigner, e Event) (int64, error) {
	details := e.Details
	if details == nil {
		details = map[string]any{}
	}
	d, err := json.Marshal(details)
	if err != nil {
		return 0, fmt.Errorf("db: audit details: %w", err)
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return 0, err
	}
	ev := auditlog.Event{Version: auditlog.V2, ID: hex.EncodeToString(id[:]), At: time.Now().UTC().Truncate(time.Microsecond),
		Actor: e.Actor, Action: e.Action, Subject: e.Subject, Details: d, Key: a.ID}
	canonical, err := ev.Canonical()
	if err != nil {
		return 0, fmt.Errorf("db: audit event: %w", err)
	}
	sig, err := a.Signer.Sign(rand.Reader, auditlog.Digest(canonical), crypto.SHA256)
	if err != nil {
		return 0, pstderr.Wrap(pstderr.Unavailable, err, "signing the audit event failed")
	}
	var seq int64
	err = tx.QueryRow(ctx,
		`INSERT INTO audit_log (version, event_id, canonical, key_id, sig) VALUES (2, $1, $2, $3, $4) RETURNING seq`,
		ev.ID, string(canonical), a.ID, sig).Scan(&seq)
	if err != nil {
		return 0, wrap("appending to the audit log", err)
	}
	return seq, nil
}

// AuditEvents streams the audit log from event fromSeq on, oldest first, as
// the readable fields package auditlog verifies.
func (s *Store) AuditEvents(ctx context.Context, fromSeq int64, fn func(auditlog.Event) error) error {
	rows, err := s.q(ctx).Query(ctx, `SELECT `+auditEventColumns+` FROM audit_log WHERE seq >= $1 ORDER BY seq`, fromSeq)
	if err != nil {
		return wrap("reading the audit log", err)
	}
	return scanAuditEvents(rows, fn)
}

// auditEventColumns are what scanAuditEvents reads, in its order.
const auditEventColumns = `seq, version, coalesce(event_id, ''), at, actor, action, subject, details::text,
		       coalesce(key_id, ''), coalesce(sig, ''::bytea), prev_hash, hash`

// scanAuditEvents hands each row of a query over auditEventColumns to fn as
// the readable fields package auditlog verifies, and closes rows.
func scanAuditEvents(rows pgx.Rows, fn func(auditlog.Event) error) error {
	defer rows.Close()
	for rows.Next() {
		var e auditlog.Event
		var details string
		var version int16
		if err := rows.Scan(&e.Seq, &version, &e.ID, &e.At, &e.Actor, &e.Action, &e.Subject, &details, &e.Key, &e.Sig, &e.PrevHash, &e.Hash); err != nil {
			return wrap("reading the audit log", err)
		}
		e.Version = int(version)
		e.Details = json.RawMessage(details)
		if e.Version == auditlog.V1 {
			e.LegacyDetails = details
		}
		if len(e.Sig) == 0 {
			e.Sig = nil
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return wrap("reading the audit log", rows.Err())
}

// AuditChainError reports the first audit record that does not verify.
type AuditChainError = auditlog.Error

// VerifyAuditChain checks every event (chain, signatures, key
// introductions) and every checkpoint stored in the database, recomputing
// everything in Go. It does not check the HSM's anchor (see
// auditlog.Verifier.Anchor). It returns the verifier for more checks.
func (s *Store) VerifyAuditChain(ctx context.Context) (*auditlog.Verifier, error) {
	v := auditlog.NewVerifier()
	if err := s.AuditEvents(ctx, 1, v.Add); err != nil {
		return v, err
	}
	cps, err := s.Checkpoints(ctx)
	if err != nil {
		return v, err
	}
	return v, v.Checkpoints(cps)
}

// AuditHead returns the newest record's seq and hash (0 and nil for an empty
// log). Copying it regularly to a system outside the database lets an
// auditor detect even a chain rewritten by a database superuser.
func (s *Store) AuditHead(ctx context.Context) (int64, []byte, error) {
	var seq int64
	var hash []byte
	err := s.q(ctx).QueryRow(ctx, `SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1`).Scan(&seq, &hash)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, wrap("reading the audit head", err)
	}
	return seq, hash, nil
}

// ListAudit returns up to limit records with seq > afterSeq, oldest first.
func (s *Store) ListAudit(ctx context.Context, afterSeq int64, limit int) ([]AuditEntry, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := s.q(ctx).Query(ctx,
		`SELECT seq, at, actor, action, subject, details::text, prev_hash, hash
		   FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2`, afterSeq, limit)
	if err != nil {
		return nil, wrap("listing the audit log", err)
	}
	defer rows.Close()
	var out []AuditEntry
	for rows.Next() {
		var e AuditEntry
		var details string
		if err := rows.Scan(&e.Seq, &e.At, &e.Actor, &e.Action, &e.Subject, &details, &e.PrevHash, &e.Hash); err != nil {
			return nil, wrap("listing the audit log", err)
		}
		e.Details = json.RawMessage(details)
		out = append(out, e)
	}
	return out, wrap("listing the audit log", rows.Err())
}
