package db

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pstd/pstd/internal/pstderr"
)

// ProtocolV1VOPRF is the only key protocol the schema accepts.
const ProtocolV1VOPRF = "PrivateStateTokenV1VOPRF"

// MinSealedLen is the shortest sealed secret accepted. A P-384 scalar is 48
// bytes and AES-GCM adds at least a 12-byte IV and a 16-byte tag, so anything
// shorter is not a sealed key (most likely a plaintext one).
const MinSealedLen = 60

// PublicKeyLen is the length of a PST v1 VOPRF public key blob:
// u32 key id || 0x04 || X || Y (P-384).
const PublicKeyLen = 101

// KeyState is a key epoch's state, derived from its times and retirement.
type KeyState string

const (
	KeyPending KeyState = "pending" // before not_before: published ahead, does not sign
	KeyActive  KeyState = "active"  // not_before ≤ now < expiry: may sign, redeems
	KeyExpired KeyState = "expired" // past expiry, not yet retired: redeems nothing
	KeyRetired KeyState = "retired" // removed from the key set
)

// KeyEpoch is a stored VOPRF key. Sealed is the scalar sealed by the HSM's
// key-encryption key; the plaintext scalar is never stored.
type KeyEpoch struct {
	KeyID     uint32
	Protocol  string // ProtocolV1VOPRF; empty means that on create
	Sealed    []byte
	KEKLabel  string // which key-encryption key sealed it
	PublicKey []byte // PublicKeyLen bytes
	Imported  bool   // imported from another issuer rather than generated here
	CreatedAt time.Time
	NotBefore time.Time // starts signing
	Expiry    time.Time // published expiry; no token of this key redeems after it
	RetiredAt time.Time // zero until retired
}

// State returns the epoch's state at now. Only retirement is stored; the
// other states follow from the times, so they cannot go stale.
func (e KeyEpoch) State(now time.Time) KeyState {
	switch {
	case !e.RetiredAt.IsZero():
		return KeyRetired
	case now.Before(e.NotBefore):
		return KeyPending
	case now.Before(e.Expiry):
		return KeyActive
	default:
		return KeyExpired
	}
}

func (e KeyEpoch) validate() error {
	if e.KeyID == 0 {
		return errors.New("db: key id 0 is not allowed")
	}
	if e.Protocol != "" && e.Protocol != ProtocolV1VOPRF {
		return fmt.Errorf("db: unknown key protocol %q", e.Protocol)
	}
	// Checked here as well as by the schema so that a plaintext key never
	// reaches the server (whose error DETAIL would quote it).
	if len(e.Sealed) < MinSealedLen {
		return fmt.Errorf("db: sealed secret of %d bytes refused: shorter than %d bytes, so not a sealed key", len(e.Sealed), MinSealedLen)
	}
	if len(e.PublicKey) != PublicKeyLen || binary.BigEndian.Uint32(e.PublicKey) != e.KeyID || e.PublicKey[4] != 4 {
		return fmt.Errorf("db: public key of key %d is not a %d-byte blob for that key id", e.KeyID, PublicKeyLen)
	}
	if e.NotBefore.IsZero() || !e.Expiry.After(e.NotBefore) {
		return fmt.Errorf("db: key %d: expiry must be after not_before", e.KeyID)
	}
	return nil
}

func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

const keyEpochColumns = `key_id, protocol, sealed_secret, kek_label, public_key, imported, created_at, not_before, expiry, retired_at`

func scanKeyEpoch(row pgx.Row) (KeyEpoch, error) {
	var e KeyEpoch
	var id int64
	var retired *time.Time
	if err := row.Scan(&id, &e.Protocol, &e.Sealed, &e.KEKLabel, &e.PublicKey, &e.Imported,
		&e.CreatedAt, &e.NotBefore, &e.Expiry, &retired); err != nil {
		return KeyEpoch{}, err
	}
	e.KeyID = uint32(id)
	if retired != nil {
		e.RetiredAt = *retired
	}
	return e, nil
}

func (s *Store) listKeyEpochs(ctx context.Context, where string) ([]KeyEpoch, error) {
	rows, err := s.q(ctx).Query(ctx, `SELECT `+keyEpochColumns+` FROM key_epochs `+where+` ORDER BY key_id`)
	if err != nil {
		return nil, wrap("listing key epochs", err)
	}
	defer rows.Close()
	var out []KeyEpoch
	for rows.Next() {
		e, err := scanKeyEpoch(rows)
		if err != nil {
			return nil, wrap("listing key epochs", err)
		}
		out = append(out, e)
	}
	return out, wrap("listing key epochs", rows.Err())
}

// KeyEpochs returns the key epochs that are not retired (pending, active or
// expired), by key id.
func (s *Store) KeyEpochs(ctx context.Context) ([]KeyEpoch, error) {
	return s.listKeyEpochs(ctx, `WHERE retired_at IS NULL`)
}

// ListKeyEpochs returns every key epoch ever created, retired ones included,
// by key id.
func (s *Store) ListKeyEpochs(ctx context.Context) ([]KeyEpoch, error) {
	return s.listKeyEpochs(ctx, ``)
}

// GetKeyEpoch returns one key epoch, or a pstderr UnknownKey error.
func (s *Store) GetKeyEpoch(ctx context.Context, keyID uint32) (KeyEpoch, error) {
	e, err := scanKeyEpoch(s.q(ctx).QueryRow(ctx, `SELECT `+keyEpochColumns+` FROM key_epochs WHERE key_id = $1`, int64(keyID)))
	if errors.Is(err, pgx.ErrNoRows) {
		return KeyEpoch{}, pstderr.New(pstderr.UnknownKey, "unknown key id")
	}
	if err != nil {
		return KeyEpoch{}, wrap("reading a key epoch", err)
	}
	return e, nil
}

// NextKeyID allocates the next key id from the key_id_seq sequence,
// skipping ids already taken (by imported keys). An id is never handed out
// twice, even if the key it was meant for is never stored.
func (s *Store) NextKeyID(ctx context.Context) (uint32, error) {
	for range 1000 {
		var id int64
		err := s.q(ctx).QueryRow(ctx, `
			SELECT n FROM (SELECT nextval('key_id_seq') AS n) s
			WHERE NOT EXISTS (SELECT 1 FROM key_epochs WHERE key_id = s.n)`).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			continue // taken by an imported key
		}
		if sqlState(err) == "2200H" { // sequence_generator_limit_exceeded
			return 0, errors.New("db: the key id space (2^32-1) is exhausted")
		}
		if err != nil {
			return 0, wrap("allocating a key id", err)
		}
		return uint32(id), nil
	}
	return 0, errors.New("db: no free key id found")
}

func keySubject(id uint32) string { return "key:" + strconv.FormatUint(uint64(id), 10) }

func fingerprint(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// CreateKeyEpoch stores a key epoch, creates its redemptions partition and
// appends a key.create audit record, all in one transaction (the context's,
// if it carries one). A taken key id is an ErrExists error.
func (s *Store) CreateKeyEpoch(ctx context.Context, e KeyEpoch, actor string) error {
	if err := e.validate(); err != nil {
		return err
	}
	if e.Protocol == "" {
		e.Protocol = ProtocolV1VOPRF
	}
	return s.inTx(ctx, "creating a key epoch", func(ctx context.Context, tx pgx.Tx) error {
		if err := lockAuditChain(ctx, tx); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `
			INSERT INTO key_epochs (key_id, protocol, sealed_secret, kek_label, public_key, imported, created_at, not_before, expiry)
			VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now()), $8, $9)`,
			int64(e.KeyID), e.Protocol, e.Sealed, e.KEKLabel, e.PublicKey, e.Imported, nullTime(e.CreatedAt), e.NotBefore, e.Expiry)
		if sqlState(err) == "23505" {
			return fmt.Errorf("%w: key id %d", ErrExists, e.KeyID)
		}
		if err != nil {
			return wrap("creating a key epoch", err)
		}
		_, err = s.appendAudit(ctx, tx, Event{
			Actor:   actor,
			Action:  ActionKeyCreate,
			Subject: keySubject(e.KeyID),
			Details: map[string]any{
				"protocol":          e.Protocol,
				"kek_label":         e.KEKLabel,
				"imported":          e.Imported,
				"not_before":        e.NotBefore.UTC().Format(time.RFC3339),
				"expiry":            e.Expiry.UTC().Format(time.RFC3339),
				"public_key_sha256": fingerprint(e.PublicKey),
			},
		})
		return err
	})
}

// RetireKeyEpoch retires a key epoch (removes it from the key set for good)
// and appends a key.retire audit record in the same transaction. Retiring a
// retired key does nothing; an unknown key is pstderr UnknownKey. Retiring a
// key before its expiry is allowed (an emergency, e.g. a compromised key)
// and recorded as such.
func (s *Store) RetireKeyEpoch(ctx context.Context, keyID uint32, actor string) error {
	return s.inTx(ctx, "retiring a key epoch", func(ctx context.Context, tx pgx.Tx) error {
		if err := lockAuditChain(ctx, tx); err != nil {
			return err
		}
		var expiry, retired time.Time
		err := tx.QueryRow(ctx, `
			UPDATE key_epochs SET retired_at = now()
			WHERE key_id = $1 AND retired_at IS NULL
			RETURNING expiry, retired_at`, int64(keyID)).Scan(&expiry, &retired)
		if errors.Is(err, pgx.ErrNoRows) {
			var exists bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM key_epochs WHERE key_id = $1)`, int64(keyID)).Scan(&exists); err != nil {
				return wrap("retiring a key epoch", err)
			}
			if !exists {
				return pstderr.New(pstderr.UnknownKey, "unknown key id")
			}
			return nil
		}
		if err != nil {
			return wrap("retiring a key epoch", err)
		}
		_, err = s.appendAudit(ctx, tx, Event{
			Actor:   actor,
			Action:  ActionKeyRetire,
			Subject: keySubject(keyID),
			Details: map[string]any{
				"expiry":        expiry.UTC().Format(time.RFC3339),
				"before_expiry": retired.Before(expiry),
			},
		})
		return err
	})
}

// KeyEpochsDigest changes whenever any key epoch row changes in any column
// (a retirement, or a row tampered with), so replicas can poll it cheaply
// and re-verify their keys at once.
func (s *Store) KeyEpochsDigest(ctx context.Context) (string, error) {
	var d string
	err := s.q(ctx).QueryRow(ctx, `
		SELECT coalesce(md5(string_agg(concat_ws('|', key_id, protocol, encode(sealed_secret, 'hex'), kek_label, encode(public_key, 'hex'),
		       imported, extract(epoch FROM not_before), extract(epoch FROM expiry), extract(epoch FROM retired_at)), ',' ORDER BY key_id)), '')
		  FROM key_epochs`).Scan(&d)
	return d, wrap("reading the key epochs' digest", err)
}
