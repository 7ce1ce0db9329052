package db

import (
	"context"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
)

// OriginCount is a number of redemptions from one redeeming origin ("" when
// the client named none).
type OriginCount struct {
	RedeemingOrigin string `json:"redeeming_origin"`
	Redemptions     int64  `json:"redemptions"`
}

// KeySummary is one key's lifecycle and counts over a period.
type KeySummary struct {
	KeyID       uint32     `json:"key_id"`
	State       string     `json:"state"`
	Imported    bool       `json:"imported"`
	CreatedAt   time.Time  `json:"created_at"`
	NotBefore   time.Time  `json:"not_before"`
	Expiry      time.Time  `json:"expiry"`
	RetiredAt   *time.Time `json:"retired_at"`
	ActivatedAt *time.Time `json:"activated_at"` // when the rotation loop recorded its activation
	ExpiredAt   *time.Time `json:"expired_at"`   // when the rotation loop recorded its expiry

	TokensIssued        int64            `json:"tokens_issued"`
	IssuanceRequests    int64            `json:"issuance_requests"`
	Redemptions         int64            `json:"redemptions"`
	Refusals            map[string]int64 `json:"refusals"`
	RedemptionsByOrigin []OriginCount    `json:"redemptions_by_origin"`
}

// Summary is what pstctl audit summary reports: per key, and in total.
type Summary struct {
	From        *time.Time   `json:"from"`
	To          *time.Time   `json:"to"`
	GeneratedAt time.Time    `json:"generated_at"`
	Keys        []KeySummary `json:"keys"`
	// Refusals are every refusal by reason, including those that named no
	// key the issuer holds (and so appear under no key).
	Refusals            map[string]int64 `json:"refusals"`
	RedemptionsByOrigin []OriginCount    `json:"redemptions_by_origin"`
}

// refusalReasons are reported even when zero, so a reader sees every reason.
var refusalReasons = []string{RefusalReplay, RefusalUnknownKey, RefusalMalformed, RefusalInvalidToken}

func zeroRefusals() map[string]int64 {
	m := make(map[string]int64, len(refusalReasons))
	for _, r := range refusalReasons {
		m[r] = 0
	}
	return m
}

// Summarize reports every key with its lifecycle times and the counts whose
// bucket starts in [from, to) (zero times leave that end open): issuance
// per time bucket, redemptions per UTC day (the day's start must fall in the
// range), refusals by reason. It reads only what pstd_auditor may read, in
// one read-only REPEATABLE READ transaction, so the figures agree with each
// other even while replicas write.
func (s *Store) Summarize(ctx context.Context, from, to time.Time) (*Summary, error) {
	const op = "summarising the audit counts"
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, wrap(op, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	sum := &Summary{Refusals: zeroRefusals(), RedemptionsByOrigin: []OriginCount{}, Keys: []KeySummary{}}
	if !from.IsZero() {
		f := from.UTC()
		sum.From = &f
	}
	if !to.IsZero() {
		t := to.UTC()
		sum.To = &t
	}
	if err := tx.QueryRow(ctx, `SELECT now()`).Scan(&sum.GeneratedAt); err != nil {
		return nil, wrap(op, err)
	}
	byID := map[uint32]*KeySummary{}
	rows, err := tx.Query(ctx, `
		SELECT s.key_id, s.state, s.imported, s.created_at, s.not_before, s.expiry, s.retired_at,
		       (SELECT observed_at FROM key_transitions t WHERE t.key_id = s.key_id AND t.transition = 'activate'),
		       (SELECT observed_at FROM key_transitions t WHERE t.key_id = s.key_id AND t.transition = 'expire')
		FROM key_epoch_states s ORDER BY s.key_id`)
	if err != nil {
		return nil, wrap(op, err)
	}
	for rows.Next() {
		var k KeySummary
		var id int64
		if err := rows.Scan(&id, &k.State, &k.Imported, &k.CreatedAt, &k.NotBefore, &k.Expiry, &k.RetiredAt, &k.ActivatedAt, &k.ExpiredAt); err != nil {
			rows.Close()
			return nil, wrap(op, err)
		}
		k.KeyID = uint32(id)
		k.Refusals = zeroRefusals()
		k.RedemptionsByOrigin = []OriginCount{}
		sum.Keys = append(sum.Keys, k)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, wrap(op, err)
	}
	for i := range sum.Keys {
		byID[sum.Keys[i].KeyID] = &sum.Keys[i]
	}
	f, t := nullTime(from), nullTime(to)

	rows, err = tx.Query(ctx, `
		SELECT key_id, sum(tokens)::bigint, sum(requests)::bigint FROM issuance_counts
		WHERE ($1::timestamptz IS NULL OR bucket_start >= $1) AND ($2::timestamptz IS NULL OR bucket_start < $2)
		GROUP BY key_id`, f, t)
	if err != nil {
		return nil, wrap(op, err)
	}
	for rows.Next() {
		var id, tokens, requests int64
		if err := rows.Scan(&id, &tokens, &requests); err != nil {
			rows.Close()
			return nil, wrap(op, err)
		}
		if k := byID[uint32(id)]; k != nil {
			k.TokensIssued, k.IssuanceRequests = tokens, requests
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, wrap(op, err)
	}

	rows, err = tx.Query(ctx, `
		SELECT coalesce(key_id, 0), reason, sum(refusals)::bigint FROM refusal_counts
		WHERE ($1::timestamptz IS NULL OR bucket_start >= $1) AND ($2::timestamptz IS NULL OR bucket_start < $2)
		GROUP BY 1, 2`, f, t)
	if err != nil {
		return nil, wrap(op, err)
	}
	for rows.Next() {
		var id, n int64
		var reason string
		if err := rows.Scan(&id, &reason, &n); err != nil {
			rows.Close()
			return nil, wrap(op, err)
		}
		sum.Refusals[reason] += n
		if k := byID[uint32(id)]; k != nil && id != 0 {
			k.Refusals[reason] += n
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, wrap(op, err)
	}

	// Redemptions: rolled up (partition dropped) and live, never both for
	// one key, since the rollup and the drop are one transaction.
	rows, err = tx.Query(ctx, `
		SELECT key_id, redeeming_origin, sum(redemptions)::bigint
		FROM (SELECT key_id, day, redeeming_origin, redemptions FROM redemption_counts
		      UNION ALL
		      SELECT key_id, day, redeeming_origin, redemptions FROM redemption_counts_live) c
		WHERE ($1::timestamptz IS NULL OR (day::timestamp AT TIME ZONE 'UTC') >= $1)
		  AND ($2::timestamptz IS NULL OR (day::timestamp AT TIME ZONE 'UTC') < $2)
		GROUP BY 1, 2 ORDER BY 1, 2`, f, t)
	if err != nil {
		return nil, wrap(op, err)
	}
	total := map[string]int64{}
	for rows.Next() {
		var id, n int64
		var origin string
		if err := rows.Scan(&id, &origin, &n); err != nil {
			rows.Close()
			return nil, wrap(op, err)
		}
		total[origin] += n
		if k := byID[uint32(id)]; k != nil {
			k.Redemptions += n
			k.RedemptionsByOrigin = append(k.RedemptionsByOrigin, OriginCount{RedeemingOrigin: origin, Redemptions: n})
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, wrap(op, err)
	}
	for o, n := range total {
		sum.RedemptionsByOrigin = append(sum.RedemptionsByOrigin, OriginCount{RedeemingOrigin: o, Redemptions: n})
	}
	sort.Slice(sum.RedemptionsByOrigin, func(i, j int) bool {
		return sum.RedemptionsByOrigin[i].RedeemingOrigin < sum.RedemptionsByOrigin[j].RedeemingOrigin
	})
	return sum, nil
}
