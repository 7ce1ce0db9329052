package db

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"slices"
	"strconv"

	"github.com/jackc/pgx/v5"
)

// KeySetVersion returns the id of the latest commitment (0 if none). It
// changes exactly when the published key set changes, so replicas poll it
// every few seconds and reload their keys when it moves. It is an
// index-only lookup.
func (s *Store) KeySetVersion(ctx context.Context) (uint64, error) {
	var id int64
	if err := s.q(ctx).QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM commitments`).Scan(&id); err != nil {
		return 0, wrap("reading the key set version", err)
	}
	return uint64(id), nil
}

// LatestCommitment returns the latest commitment's id, key ids (ascending)
// and exact published body; id 0 and nil if none was published yet.
func (s *Store) LatestCommitment(ctx context.Context) (id uint64, keyIDs []uint32, body []byte, err error) {
	var rid int64
	var ids []int64
	var b string
	err = s.q(ctx).QueryRow(ctx, `SELECT id, key_ids, body FROM commitments ORDER BY id DESC LIMIT 1`).Scan(&rid, &ids, &b)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil, nil, nil
	}
	if err != nil {
		return 0, nil, nil, wrap("reading the latest commitment", err)
	}
	return uint64(rid), toUint32s(ids), []byte(b), nil
}

func toUint32s(ids []int64) []uint32 {
	out := make([]uint32, len(ids))
	for i, v := range ids {
		out[i] = uint32(v)
	}
	return out
}

func toInt64s(ids []uint32) []int64 {
	out := make([]int64, len(ids))
	for i, v := range ids {
		out[i] = int64(v)
	}
	return out
}

// PublishCommitment publishes a new commitment if keyIDs (in any order)
// differ from the latest commitment's key set. build is called with the new
// commitment's id (latest + 1) and returns the exact JSON body to publish.
// It returns the current commitment id and whether a new one was written.
//
// Under the commitment lock (and in one transaction with its
// commitment.publish audit record) it re-reads the latest commitment, so
// replicas publishing the same change at once write it once, and ids grow by
// exactly one per key-set change with no gaps. Every key must exist and not
// be retired.
func (s *Store) PublishCommitment(ctx context.Context, keyIDs []uint32, build func(id uint64) ([]byte, error), actor string) (uint64, bool, error) {
	ids := slices.Clone(keyIDs)
	slices.Sort(ids)
	if len(ids) == 0 {
		return 0, false, errors.New("db: a commitment needs at least one key")
	}
	if len(slices.Compact(slices.Clone(ids))) != len(ids) {
		return 0, false, errors.New("db: duplicate key id in commitment")
	}
	// Fast path, no locks: nothing changed (the usual case for a periodic
	// rotation check).
	latest, latestIDs, _, err := s.LatestCommitment(ctx)
	if err != nil {
		return 0, false, err
	}
	if latest != 0 && slices.Equal(latestIDs, ids) {
		return latest, false, nil
	}
	var id uint64
	changed := false
	err = s.inTx(ctx, "publishing a commitment", func(ctx context.Context, tx pgx.Tx) error {
		if err := lockAuditChain(ctx, tx); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, lockClass, lockCommitment); err != nil {
			return wrap("commitment lock", err)
		}
		latest, latestIDs, _, err := s.LatestCommitment(ctx)
		if err != nil {
			return err
		}
		if latest != 0 && slices.Equal(latestIDs, ids) {
			id = latest
			return nil
		}
		var live int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM key_epochs WHERE key_id = ANY($1) AND retired_at IS NULL`, toInt64s(ids)).Scan(&live); err != nil {
			return wrap("publishing a commitment", err)
		}
		if live != len(ids) {
			return errors.New("db: a commitment may only name existing, unretired keys")
		}
		id = latest + 1
		body, err := build(id)
		if err != nil {
			return err
		}
		if !json.Valid(body) {
			return errors.New("db: commitment body is not JSON")
		}
		if _, err := tx.Exec(ctx, `INSERT INTO commitments (id, key_ids, body) VALUES ($1, $2, $3)`,
			int64(id), toInt64s(ids), string(body)); err != nil {
			return wrap("publishing a commitment", err)
		}
		h := sha256.Sum256(body)
		if _, err := s.appendAudit(ctx, tx, Event{
			Actor:   actor,
			Action:  ActionCommitmentPublish,
			Subject: "commitment:" + strconv.FormatUint(id, 10),
			Details: map[string]any{"key_ids": ids, "body_sha256": hex.EncodeToString(h[:])},
		}); err != nil {
			return err
		}
		changed = true
		return nil
	})
	if err != nil {
		return 0, false, err
	}
	return id, changed, nil
}
