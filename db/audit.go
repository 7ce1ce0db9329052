package db

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
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

// AppendAudit appends e to the audit log and returns its sequence number. In
// a context from InTx or WithRotationLock it joins that transaction, so the
// record commits (or not) with the change it describes.
func (s *Store) AppendAudit(ctx context.Context, e Event) (int64, error) {
	if err := e.validate(); err != nil {
		return 0, err
	}
	var seq int64
	err := s.inTx(ctx, "appending to the audit log", func(ctx context.Context, tx pgx.Tx) error {
		var err error
		seq, err = appendAudit(ctx, tx, e)
		return err
	})
	return seq, err
}

// appendAudit inserts e in tx (which must already hold the audit lock or
// take it now; the trigger takes it in any case).
func appendAudit(ctx context.Context, tx pgx.Tx, e Event) (int64, error) {
	if err := e.validate(); err != nil {
		return 0, err
	}
	details := e.Details
	if details == nil {
		details = map[string]any{}
	}
	b, err := json.Marshal(details)
	if err != nil {
		return 0, fmt.Errorf("db: audit details: %w", err)
	}
	var seq int64
	err = tx.QueryRow(ctx,
		`INSERT INTO audit_log (actor, action, subject, details) VALUES ($1, $2, $3, $4::jsonb) RETURNING seq`,
		e.Actor, e.Action, e.Subject, string(b)).Scan(&seq)
	if err != nil {
		return 0, wrap("appending to the audit log", err)
	}
	return seq, nil
}

// auditHash is the chain hash of one record; it must match the migration's
// audit_log_hash function:
//
//	SHA-256("pstd-audit-v1" || prev_hash || int64be(seq) || int64be(at in Unix µs)
//	        || for actor, action, subject, details: uint32be(len) || bytes)
func auditHash(prev []byte, seq int64, at time.Time, actor, action, subject, details string) []byte {
	h := sha256.New()
	h.Write([]byte("pstd-audit-v1"))
	h.Write(prev)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(seq))
	h.Write(n[:])
	binary.BigEndian.PutUint64(n[:], uint64(at.UnixMicro()))
	h.Write(n[:])
	for _, f := range []string{actor, action, subject, details} {
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(f)))
		h.Write(l[:])
		h.Write([]byte(f))
	}
	return h.Sum(nil)
}

// AuditChainError reports the first audit record that does not verify.
type AuditChainError struct {
	Seq    int64 // the first broken record (or the first missing one)
	Reason string
}

func (e *AuditChainError) Error() string {
	return fmt.Sprintf("db: audit log broken at seq %d: %s", e.Seq, e.Reason)
}

// VerifyAuditChain recomputes the whole chain in Go, independently of the
// database's own hash function: sequence numbers must run 1, 2, 3, … without
// gaps, each prev_hash must be the previous record's hash (32 zero bytes for
// the first), and each hash must match the record. It returns how many
// records verified; on the first failure, an *AuditChainError naming the
// broken seq. Truncation of the newest records is not detectable from inside
// the database: compare AuditHead with a copy kept elsewhere.
func (s *Store) VerifyAuditChain(ctx context.Context) (int, error) {
	rows, err := s.q(ctx).Query(ctx,
		`SELECT seq, at, actor, action, subject, details::text, prev_hash, hash FROM audit_log ORDER BY seq`)
	if err != nil {
		return 0, wrap("reading the audit log", err)
	}
	defer rows.Close()
	n := 0
	prev := make([]byte, sha256.Size)
	var want int64 = 1
	for rows.Next() {
		var (
			seq                             int64
			at                              time.Time
			actor, action, subject, details string
			prevHash, hash                  []byte
		)
		if err := rows.Scan(&seq, &at, &actor, &action, &subject, &details, &prevHash, &hash); err != nil {
			return n, wrap("reading the audit log", err)
		}
		switch {
		case seq != want:
			return n, &AuditChainError{Seq: want, Reason: fmt.Sprintf("record missing (next stored record is %d)", seq)}
		case !bytes.Equal(prevHash, prev):
			return n, &AuditChainError{Seq: seq, Reason: "prev_hash does not match the previous record's hash"}
		case !bytes.Equal(hash, auditHash(prevHash, seq, at, actor, action, subject, details)):
			return n, &AuditChainError{Seq: seq, Reason: "hash does not match the record's contents"}
		}
		prev = hash
		want++
		n++
	}
	if err := rows.Err(); err != nil {
		return n, wrap("reading the audit log", err)
	}
	return n, nil
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
