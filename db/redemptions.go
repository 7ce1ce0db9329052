package db

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pstd/pstd/internal/pstderr"
)

// Redemption is the double-spend row of one redeemed token: a SHA-256 of the
// token's nonce (never the nonce) and nothing from issuance. Its fields match
// signer.Redemption, so the two convert directly.
type Redemption struct {
	KeyID           uint32
	NonceHash       [32]byte
	RecordID        string // the redemption record's jti
	RedeemingOrigin string // "" is stored as NULL
	RedeemedAt      time.Time
}

// RecordRedemption inserts the redemption and commits it durably before it
// returns nil: it always runs in its own transaction on its own connection
// (even when ctx carries a transaction) with synchronous_commit = on, which
// it checks took effect. A second redemption of the same token (same key id
// and nonce hash), from any replica, is a pstderr AlreadyRedeemed error; a
// key without a redemptions partition (never created, or dropped after
// expiry) is pstderr UnknownKey; an unusable database is pstderr
// Unavailable. If the commit's outcome is unknown (the connection died
// during COMMIT) the error is Unavailable and the token may be spent: the
// caller must not hand out a record, which is the safe failure.
//
// beforeCommit, if not nil, is work done between the insert and the commit:
// it runs only once the row is in (so a second redemption of a token is
// refused before any of that work, and a concurrent one waits on the row
// until this transaction ends), and an error from it rolls the insert back
// and is returned as is, leaving the token unspent. pstd signs the
// redemption record there, so a replayed token never costs an HSM signature.
func (s *Store) RecordRedemption(ctx context.Context, r Redemption, beforeCommit func() error) error {
	if r.KeyID == 0 {
		return errors.New("db: redemption without key id")
	}
	if r.RecordID == "" || len(r.RecordID) > 128 {
		return errors.New("db: redemption record id must be 1 to 128 bytes")
	}
	if len(r.RedeemingOrigin) > 2048 {
		return errors.New("db: redeeming origin longer than 2048 bytes")
	}
	var origin any
	if r.RedeemingOrigin != "" {
		origin = r.RedeemingOrigin
	}
	const op = "recording a redemption"
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return wrap(op, err)
	}
	defer func() {
		// No-op after a successful commit.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = tx.Rollback(rctx)
		cancel()
	}()
	b := &pgx.Batch{}
	b.Queue(`SET LOCAL synchronous_commit = on`)
	var sync string
	// The key must be live in this very transaction: retirement and expiry
	// are enforced here too, not only in the replica's memory.
	b.Queue(`INSERT INTO redemptions (key_id, nonce_hash, redeemed_at, record_id, redeeming_origin)
		SELECT $1::bigint, $2::bytea, coalesce($3::timestamptz, now()), $4::text, $5::text
		 WHERE EXISTS (SELECT 1 FROM key_epochs k WHERE k.key_id = $1::bigint AND k.retired_at IS NULL AND k.expiry > coalesce($3::timestamptz, now()))
		RETURNING current_setting('synchronous_commit'), nextval('redemption_hwm')`,
		int64(r.KeyID), r.NonceHash[:], nullTime(r.RedeemedAt), r.RecordID, origin).QueryRow(func(row pgx.Row) error {
		var hwm int64
		return row.Scan(&sync, &hwm)
	})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return pstderr.New(pstderr.UnknownKey, "token key is retired or expired")
		}
		var se *SQLError
		if errors.As(sanitize(err), &se) {
			switch {
			case se.Code == "23505":
				return pstderr.Wrap(pstderr.AlreadyRedeemed, se, "token already redeemed")
			case se.Code == "23514" && se.Constraint == "":
				// "no partition of relation redemptions found for row"
				return pstderr.Wrap(pstderr.UnknownKey, se, "token key is not redeemable")
			}
		}
		return wrap(op, err)
	}
	if sync != "on" {
		return fmt.Errorf("db: %s: synchronous_commit is %q inside the redemption transaction, refusing", op, sync)
	}
	if beforeCommit != nil {
		if err := beforeCommit(); err != nil {
			return err
		}
	}
	return wrap(op+": commit", tx.Commit(ctx))
}

// RedemptionPartitions returns the key ids that still have a redemptions
// partition, ascending.
func (s *Store) RedemptionPartitions(ctx context.Context) ([]uint32, error) {
	rows, err := s.q(ctx).Query(ctx, `
		SELECT substring(c.relname FROM 14)::bigint
		FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'redemptions'::regclass AND c.relname ~ '^redemptions_k[0-9]+$'
		ORDER BY 1`)
	if err != nil {
		return nil, wrap("listing redemption partitions", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, wrap("listing redemption partitions", err)
	}
	return toUint32s(ids), nil
}

// RedemptionCount returns how many redemptions are recorded under keyID.
func (s *Store) RedemptionCount(ctx context.Context, keyID uint32) (int64, error) {
	var n int64
	err := s.q(ctx).QueryRow(ctx, `SELECT count(*) FROM redemptions WHERE key_id = $1`, int64(keyID)).Scan(&n)
	return n, wrap("counting redemptions", err)
}

// DropExpiredRedemptionPartitions drops the redemptions partition of every
// key that is retired and past its expiry (see DropExpiredRedemptions), each
// in its own short transaction, and returns the key ids whose partitions it
// dropped. It carries on past a key that fails and returns the joined
// errors. Like DropExpiredRedemptions it refuses a context that carries a
// transaction: call it after a rotation's transaction has committed (for
// example right after WithRotationLock returns), never inside it.
func (s *Store) DropExpiredRedemptionPartitions(ctx context.Context, actor string) ([]uint32, error) {
	if s.txFrom(ctx) != nil {
		return nil, errInTx
	}
	rows, err := s.pool.Query(ctx, `
		SELECT k.key_id FROM key_epochs k
		WHERE k.retired_at IS NOT NULL AND k.expiry <= now()
		  AND EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		              WHERE i.inhparent = 'redemptions'::regclass AND c.relname = 'redemptions_k' || k.key_id)
		ORDER BY k.key_id`)
	if err != nil {
		return nil, wrap("finding expired redemptions", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, wrap("finding expired redemptions", err)
	}
	var dropped []uint32
	var errs []error
	for _, id := range ids {
		_, ok, err := s.DropExpiredRedemptions(ctx, uint32(id), actor)
		if err != nil {
			errs = append(errs, fmt.Errorf("key %d: %w", id, err))
			continue
		}
		if ok {
			dropped = append(dropped, uint32(id))
		}
	}
	return dropped, errors.Join(errs...)
}

// DropExpiredRedemptions drops the redemptions partition of a key that is
// retired and past its published expiry (so none of its tokens can redeem
// any more), first rolling its rows up into redemption_counts (per UTC day
// and redeeming origin) in the same transaction, and appends a
// count.redemption audit record with those counts and a redemptions.drop
// record with the row count (counts only; redemptions are never audited one
// by one). It returns the
// number of rows dropped and whether there was a partition to drop. The
// database function refuses keys that are not retired or not yet expired.
//
// It runs in its own short transaction, refusing a context that carries one
// (such as a WithRotationLock callback's): the drop takes an ACCESS EXCLUSIVE
// lock on redemptions, which inside a longer transaction would stall every
// redemption until that transaction ends. On its own the lock is held for a
// moment and waited for at most a few seconds (then it fails Unavailable and
// can be retried), so redemptions never queue behind it for long.
func (s *Store) DropExpiredRedemptions(ctx context.Context, keyID uint32, actor string) (int64, bool, error) {
	if s.txFrom(ctx) != nil {
		return 0, false, errInTx
	}
	var rows *int64
	err := s.inTx(ctx, "dropping expired redemptions", func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('lock_timeout', $1, true)`, ddlLockTimeout); err != nil {
			return wrap("dropping expired redemptions", err)
		}
		if err := lockAuditChain(ctx, tx); err != nil {
			return err
		}
		// The rollup into redemption_counts and the drop are one database
		// function (migration 3): a partition never goes without its counts.
		var res *rollup
		err := tx.QueryRow(ctx, `SELECT redemptions_rollup_and_drop($1)`, int64(keyID)).Scan(&res)
		switch sqlState(err) {
		case "":
		case "P0002": // no_data_found
			return pstderr.New(pstderr.UnknownKey, "unknown key id")
		case "55000": // object_not_in_prerequisite_state
			return fmt.Errorf("db: key %d is not retired and past its expiry; its redemptions are still the double-spend guard", keyID)
		default:
			return wrap("dropping expired redemptions", err)
		}
		if res == nil {
			return nil // already dropped
		}
		rows = &res.Rows
		if _, err := s.appendAudit(ctx, tx, Event{
			Actor:   actor,
			Action:  ActionCountRedemption,
			Subject: keySubject(keyID),
			Details: map[string]any{"key_id": keyID, "counts": res.Counts},
		}); err != nil {
			return err
		}
		_, err = s.AppendAudit(ctx, Event{
			Actor:   actor,
			Action:  ActionRedemptionsDrop,
			Subject: keySubject(keyID),
			Details: map[string]any{"rows": res.Rows, "partition": "redemptions_k" + strconv.FormatUint(uint64(keyID), 10)},
		})
		return err
	})
	if err != nil || rows == nil {
		return 0, false, err
	}
	return *rows, true, nil
}

// rollup is what redemptions_rollup_and_drop returns.
type rollup struct {
	Rows   int64            `json:"rows"`
	Counts []map[string]any `json:"counts"`
}
