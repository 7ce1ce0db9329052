package db

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Audit actions of counts and key lifecycle transitions.
const (
	ActionCountIssuance   = "count.issuance"
	ActionCountRefusal    = "count.refusal"
	ActionCountRedemption = "count.redemption"
	ActionKeyActivate     = "key.activate"
	ActionKeyExpire       = "key.expire"
)

// Refusal reasons counted durably (refusal_counts.reason).
const (
	RefusalReplay       = "replay"
	RefusalUnknownKey   = "unknown_key"
	RefusalMalformed    = "malformed"
	RefusalInvalidToken = "invalid_token"
)

// IssuanceCount is what one replica issued under one key in one time bucket
// [Start, End).
type IssuanceCount struct {
	KeyID      uint32
	Start, End time.Time
	Tokens     int64 // tokens signed
	Requests   int64 // issuance requests answered
}

// RefusalCount is how many requests one replica refused for one reason in
// one time bucket. KeyID is 0 unless the request named a key the issuer holds.
type RefusalCount struct {
	Reason     string
	KeyID      uint32
	Start, End time.Time
	Refusals   int64
}

func (c IssuanceCount) event(actor, replica string) Event {
	return Event{Actor: actor, Action: ActionCountIssuance, Subject: keySubject(c.KeyID), Details: map[string]any{
		"key_id": c.KeyID, "bucket_start": c.Start.UTC().Format(time.RFC3339), "bucket_end": c.End.UTC().Format(time.RFC3339),
		"tokens": c.Tokens, "requests": c.Requests, "replica": replica,
	}}
}

func (c RefusalCount) event(actor, replica string) Event {
	subject := "refusals"
	d := map[string]any{
		"reason": c.Reason, "bucket_start": c.Start.UTC().Format(time.RFC3339), "bucket_end": c.End.UTC().Format(time.RFC3339),
		"refusals": c.Refusals, "replica": replica,
	}
	if c.KeyID != 0 {
		subject = keySubject(c.KeyID)
		d["key_id"] = c.KeyID
	}
	return Event{Actor: actor, Action: ActionCountRefusal, Subject: subject, Details: d}
}

// RecordCounts appends closed count buckets in one transaction: for each, a
// count.issuance or count.refusal audit event and a row in issuance_counts
// or refusal_counts naming that event, so the chain covers every count the
// summary reports. replica names the writing replica (rows of several
// replicas for the same bucket add up). Nothing is written when both are
// empty.
func (s *Store) RecordCounts(ctx context.Context, actor, replica string, issued []IssuanceCount, refused []RefusalCount) error {
	if len(issued) == 0 && len(refused) == 0 {
		return nil
	}
	if replica == "" || len(replica) > 256 {
		return errors.New("db: count replica name must be 1 to 256 bytes")
	}
	for _, c := range refused {
		switch c.Reason {
		case RefusalReplay, RefusalUnknownKey, RefusalMalformed, RefusalInvalidToken:
		default:
			return fmt.Errorf("db: unknown refusal reason %q", c.Reason)
		}
	}
	const op = "recording counts"
	return s.inTx(ctx, op, func(ctx context.Context, tx pgx.Tx) error {
		if err := lockAuditChain(ctx, tx); err != nil {
			return err
		}
		for _, c := range issued {
			if c.KeyID == 0 || !c.End.After(c.Start) {
				return fmt.Errorf("db: bad issuance bucket %+v", c)
			}
			seq, err := s.AppendAudit(ctx, c.event(actor, replica))
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO issuance_counts (audit_seq, key_id, bucket_start, bucket_end, tokens, requests, replica)
				VALUES ($1, $2, $3, $4, $5, $6, $7)`, seq, int64(c.KeyID), c.Start, c.End, c.Tokens, c.Requests, replica); err != nil {
				return wrap(op, err)
			}
		}
		for _, c := range refused {
			if !c.End.After(c.Start) {
				return fmt.Errorf("db: bad refusal bucket %+v", c)
			}
			seq, err := s.AppendAudit(ctx, c.event(actor, replica))
			if err != nil {
				return err
			}
			var key any
			if c.KeyID != 0 {
				key = int64(c.KeyID)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO refusal_counts (audit_seq, reason, key_id, bucket_start, bucket_end, refusals, replica)
				VALUES ($1, $2, $3, $4, $5, $6, $7)`, seq, c.Reason, key, c.Start, c.End, c.Refusals, replica); err != nil {
				return wrap(op, err)
			}
		}
		return nil
	})
}

// KeyTransition is a key becoming active or expiring, as the rotation loop
// recorded it.
type KeyTransition struct {
	KeyID      uint32
	Transition string    // "activate" or "expire"
	At         time.Time // the key's not_before or expiry
}

// RecordKeyTransitions records every key activation and expiry that has
// happened by now and is not yet recorded: a key.activate or key.expire
// audit event and a key_transitions row each, in the context's transaction
// if it carries one (the rotation lock's). A key retired before it ever
// became active records no activation. It returns what it recorded.
func (s *Store) RecordKeyTransitions(ctx context.Context, now time.Time, actor string) ([]KeyTransition, error) {
	const op = "recording key transitions"
	var out []KeyTransition
	err := s.inTx(ctx, op, func(ctx context.Context, tx pgx.Tx) error {
		if err := lockAuditChain(ctx, tx); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `
			SELECT k.key_id, t.transition, t.at
			FROM key_epochs k
			CROSS JOIN LATERAL (VALUES ('activate', k.not_before), ('expire', k.expiry)) AS t (transition, at)
			WHERE t.at <= $1
			  AND NOT (t.transition = 'activate' AND k.retired_at IS NOT NULL AND k.retired_at <= k.not_before)
			  AND NOT EXISTS (SELECT 1 FROM key_transitions x WHERE x.key_id = k.key_id AND x.transition = t.transition)
			ORDER BY t.at, k.key_id`, now)
		if err != nil {
			return wrap(op, err)
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (KeyTransition, error) {
			var id int64
			var t KeyTransition
			err := r.Scan(&id, &t.Transition, &t.At)
			t.KeyID = uint32(id)
			return t, err
		})
		if err != nil {
			return wrap(op, err)
		}
		for _, t := range out {
			action := ActionKeyActivate
			if t.Transition == "expire" {
				action = ActionKeyExpire
			}
			seq, err := s.AppendAudit(ctx, Event{Actor: actor, Action: action, Subject: keySubject(t.KeyID),
				Details: map[string]any{"key_id": t.KeyID, "at": t.At.UTC().Format(time.RFC3339)}})
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO key_transitions (key_id, transition, at, observed_at, audit_seq) VALUES ($1, $2, $3, $4, $5)`,
				int64(t.KeyID), t.Transition, t.At, now, seq); err != nil {
				return wrap(op, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// AuditRecord is one audit row as the compliance queries print it.
type AuditRecord struct {
	Seq     int64           `json:"seq"`
	At      time.Time       `json:"at"`
	Actor   string          `json:"actor"`
	Action  string          `json:"action"`
	Subject string          `json:"subject"`
	Details json.RawMessage `json:"details"`
}

// AuditFilter selects audit rows. Zero fields do not filter. From is
// inclusive, To exclusive. Limit 0 means every matching row.
type AuditFilter struct {
	From, To time.Time
	Action   string
	Subject  string
	Actor    string
	Limit    int64
}

// QueryAudit streams the audit rows that match f to fn, oldest first,
// reading them from the server as fn consumes them (no cap, no buffering of
// the whole result). fn's error stops the query and is returned as is.
func (s *Store) QueryAudit(ctx context.Context, f AuditFilter, fn func(AuditRecord) error) error {
	var limit any
	if f.Limit > 0 {
		limit = f.Limit
	}
	rows, err := s.q(ctx).Query(ctx, `
		SELECT seq, at, actor, action, subject, details::text FROM audit_log
		WHERE ($1::timestamptz IS NULL OR at >= $1) AND ($2::timestamptz IS NULL OR at < $2)
		  AND ($3 = '' OR action = $3 OR (right($3, 2) = '.*' AND starts_with(action, left($3, -1))))
		  AND ($4 = '' OR subject = $4) AND ($5 = '' OR actor = $5)
		ORDER BY seq LIMIT $6`,
		nullTime(f.From), nullTime(f.To), f.Action, f.Subject, f.Actor, limit)
	if err != nil {
		return wrap("querying the audit log", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r AuditRecord
		var details string
		if err := rows.Scan(&r.Seq, &r.At, &r.Actor, &r.Action, &r.Subject, &details); err != nil {
			return wrap("querying the audit log", err)
		}
		r.Details = json.RawMessage(details)
		if err := fn(r); err != nil {
			return err
		}
	}
	return wrap("querying the audit log", rows.Err())
}
