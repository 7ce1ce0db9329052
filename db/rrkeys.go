package db

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
)

// RRKey is a stored redemption-record signing key: only its public half; the
// private key never leaves the HSM. Its fields match signer.RRKeyInfo, so
// the two convert directly.
type RRKey struct {
	ID        string // "rr-<n>"
	PublicDER []byte // SubjectPublicKeyInfo
	CreatedAt time.Time
	NotAfter  time.Time // retired keys leave the JWKS after this; zero while signing
	Retired   bool      // no longer signs
}

var rrIDRE = regexp.MustCompile(`^rr-[1-9][0-9]{0,9}$`)

// RRKeys returns every record key, retired ones included, oldest first.
func (s *Store) RRKeys(ctx context.Context) ([]RRKey, error) {
	rows, err := s.q(ctx).Query(ctx, `
		SELECT id, public_key, created_at, not_after, retired_at IS NOT NULL
		FROM rr_keys ORDER BY substring(id FROM 4)::bigint`)
	if err != nil {
		return nil, wrap("listing record keys", err)
	}
	defer rows.Close()
	var out []RRKey
	for rows.Next() {
		var k RRKey
		var notAfter *time.Time
		if err := rows.Scan(&k.ID, &k.PublicDER, &k.CreatedAt, &notAfter, &k.Retired); err != nil {
			return nil, wrap("listing record keys", err)
		}
		if notAfter != nil {
			k.NotAfter = *notAfter
		}
		out = append(out, k)
	}
	return out, wrap("listing record keys", rows.Err())
}

// CreateRRKey stores a new, signing record key and appends an rr_key.create
// audit record in the same transaction. At most one record key signs at a
// time: retire the current one first (in the same transaction, if the
// change must be atomic).
func (s *Store) CreateRRKey(ctx context.Context, k RRKey, actor string) error {
	if !rrIDRE.MatchString(k.ID) {
		return fmt.Errorf("db: record key id %q is not rr-<n>", k.ID)
	}
	if k.Retired || !k.NotAfter.IsZero() {
		return errors.New("db: a new record key cannot be retired")
	}
	if len(k.PublicDER) < 32 || len(k.PublicDER) > 2048 {
		return fmt.Errorf("db: record key %s: %d-byte public key is not a SubjectPublicKeyInfo", k.ID, len(k.PublicDER))
	}
	return s.inTx(ctx, "creating a record key", func(ctx context.Context, tx pgx.Tx) error {
		if err := lockAuditChain(ctx, tx); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO rr_keys (id, public_key, created_at) VALUES ($1, $2, coalesce($3, now()))`,
			k.ID, k.PublicDER, nullTime(k.CreatedAt))
		if err != nil {
			var se *SQLError
			if errors.As(sanitize(err), &se) && se.Code == "23505" {
				if se.Constraint == "rr_keys_one_signing" {
					return errors.New("db: another record key still signs; retire it first")
				}
				return fmt.Errorf("%w: record key %s", ErrExists, k.ID)
			}
			return wrap("creating a record key", err)
		}
		_, err = s.appendAudit(ctx, tx, Event{
			Actor:   actor,
			Action:  ActionRRKeyCreate,
			Subject: "rr:" + k.ID,
			Details: map[string]any{"public_key_sha256": fingerprint(k.PublicDER)},
		})
		return err
	})
}

// RetireRRKey stops a record key from signing; it stays published in the
// JWKS until notAfter. It appends an rr_key.retire audit record in the same
// transaction. Retiring a retired key does nothing.
func (s *Store) RetireRRKey(ctx context.Context, id string, notAfter time.Time, actor string) error {
	if notAfter.IsZero() {
		return errors.New("db: retiring a record key needs the time it leaves the JWKS")
	}
	return s.inTx(ctx, "retiring a record key", func(ctx context.Context, tx pgx.Tx) error {
		if err := lockAuditChain(ctx, tx); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE rr_keys SET retired_at = now(), not_after = $2 WHERE id = $1 AND retired_at IS NULL`, id, notAfter)
		if err != nil {
			return wrap("retiring a record key", err)
		}
		if tag.RowsAffected() == 0 {
			var exists bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM rr_keys WHERE id = $1)`, id).Scan(&exists); err != nil {
				return wrap("retiring a record key", err)
			}
			if !exists {
				return fmt.Errorf("db: no record key %q", id)
			}
			return nil
		}
		_, err = s.appendAudit(ctx, tx, Event{
			Actor:   actor,
			Action:  ActionRRKeyRetire,
			Subject: "rr:" + id,
			Details: map[string]any{"not_after": notAfter.UTC().Format(time.RFC3339)},
		})
		return err
	})
}

// RRKeysVersion changes whenever a record key is created or retired (rows
// are never deleted and retirement happens once), so replicas can poll it
// cheaply and reload their record keys only then.
func (s *Store) RRKeysVersion(ctx context.Context) (int64, error) {
	var v int64
	err := s.q(ctx).QueryRow(ctx, `SELECT count(*) + count(retired_at) FROM rr_keys`).Scan(&v)
	return v, wrap("reading the record keys' version", err)
}
