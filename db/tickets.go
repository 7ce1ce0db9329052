package db

import (
	"context"
	"math/rand/v2"
	"time"
)

// Spend records an issuance ticket (by its hash) as used until it expires;
// fresh is false if it was used before. Expired entries are swept now and
// then, so the table holds only tickets that could still be presented.
func (s *Store) Spend(ctx context.Context, hash [32]byte, expires time.Time) (bool, error) {
	tag, err := s.q(ctx).Exec(ctx, `INSERT INTO spent_tickets (hash, expires_at) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING`, hash[:], expires)
	if err != nil {
		return false, wrap("spending an issuance ticket", err)
	}
	if rand.IntN(256) == 0 {
		_, _ = s.q(ctx).Exec(ctx, `DELETE FROM spent_tickets WHERE expires_at < now() - interval '1 minute'`)
	}
	return tag.RowsAffected() == 1, nil
}
