package signer

import (
	"cmp"
	"context"
	"maps"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/pstd/pstd/db"
	"github.com/pstd/pstd/internal/pstderr"
)

// Counting. The service counts what it issues and refuses in memory, per
// (key, time bucket) and per (reason, key, time bucket), and appends closed
// buckets to the audit log with their rows in the counts tables
// (db.Store.RecordCounts): never a database write per request. Redemptions
// need no counter here: each is a row already, rolled up per key, day and
// redeeming origin when its partition is dropped. docs/AUDIT-COUNTS.md
// explains the buckets, what a crash can lose, and why they cannot link an
// issuance to a redemption.
const (
	// CountBucket is the width of an issuance or refusal bucket.
	CountBucket = time.Minute
	// DefaultCountFlushInterval is how often closed buckets are flushed.
	// A crash loses at most the open bucket plus one interval of a closed
	// one while the database accepts the flush.
	DefaultCountFlushInterval = 30 * time.Second
)

type issueBucket struct {
	key   uint32
	start int64 // Unix seconds, a multiple of CountBucket
}

type issueTally struct{ tokens, requests int64 }

type refusalBucket struct {
	reason string
	key    uint32
	start  int64
}

// counter is the in-memory tally. Its methods are safe for concurrent use;
// the request path only takes a mutex and bumps a map entry.
type counter struct {
	mu      sync.Mutex
	issued  map[issueBucket]issueTally
	refused map[refusalBucket]int64
}

func newCounter() *counter {
	return &counter{issued: map[issueBucket]issueTally{}, refused: map[refusalBucket]int64{}}
}

func bucketStart(t time.Time) int64 {
	return t.Truncate(CountBucket).Unix()
}

func (c *counter) issue(key uint32, tokens int, now time.Time) {
	b := issueBucket{key, bucketStart(now)}
	c.mu.Lock()
	t := c.issued[b]
	t.tokens += int64(tokens)
	t.requests++
	c.issued[b] = t
	c.mu.Unlock()
}

func (c *counter) refuse(reason string, key uint32, now time.Time) {
	b := refusalBucket{reason, key, bucketStart(now)}
	c.mu.Lock()
	c.refused[b]++
	c.mu.Unlock()
}

// take removes and returns the buckets that ended by now (every bucket if
// all is set), oldest first.
func (c *counter) take(now time.Time, all bool) ([]db.IssuanceCount, []db.RefusalCount) {
	closed := func(start int64) bool {
		return all || !time.Unix(start, 0).Add(CountBucket).After(now)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var iss []db.IssuanceCount
	for _, b := range slices.SortedFunc(maps.Keys(c.issued), func(a, b issueBucket) int {
		if a.start != b.start {
			return cmp.Compare(a.start, b.start)
		}
		return cmp.Compare(a.key, b.key)
	}) {
		if !closed(b.start) {
			continue
		}
		t := c.issued[b]
		delete(c.issued, b)
		start := time.Unix(b.start, 0).UTC()
		iss = append(iss, db.IssuanceCount{KeyID: b.key, Start: start, End: start.Add(CountBucket), Tokens: t.tokens, Requests: t.requests})
	}
	var ref []db.RefusalCount
	for _, b := range slices.SortedFunc(maps.Keys(c.refused), func(a, b refusalBucket) int {
		if a.start != b.start {
			return cmp.Compare(a.start, b.start)
		}
		if a.reason != b.reason {
			return cmp.Compare(a.reason, b.reason)
		}
		return cmp.Compare(a.key, b.key)
	}) {
		if !closed(b.start) {
			continue
		}
		n := c.refused[b]
		delete(c.refused, b)
		start := time.Unix(b.start, 0).UTC()
		ref = append(ref, db.RefusalCount{Reason: b.reason, KeyID: b.key, Start: start, End: start.Add(CountBucket), Refusals: n})
	}
	return iss, ref
}

// putBack returns buckets whose flush failed, adding to whatever was counted
// meanwhile, so the next flush carries them.
func (c *counter) putBack(iss []db.IssuanceCount, ref []db.RefusalCount) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, i := range iss {
		b := issueBucket{i.KeyID, i.Start.Unix()}
		t := c.issued[b]
		t.tokens += i.Tokens
		t.requests += i.Requests
		c.issued[b] = t
	}
	for _, r := range ref {
		c.refused[refusalBucket{r.Reason, r.KeyID, r.Start.Unix()}] += r.Refusals
	}
}

// pending reports how many buckets wait in memory.
func (c *counter) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.issued) + len(c.refused)
}

// refusalReason maps a refused request's error to the reason counted
// durably, or false for errors that are not the client's doing (the service
// being unavailable, a bug, the policy's rate limit, counted by httpapi).
func refusalReason(err error) (string, bool) {
	k, ok := pstderr.KindOf(err)
	if !ok {
		return "", false
	}
	switch k {
	case pstderr.AlreadyRedeemed:
		return db.RefusalReplay, true
	case pstderr.UnknownKey:
		return db.RefusalUnknownKey, true
	case pstderr.InvalidToken:
		return db.RefusalInvalidToken, true
	case pstderr.Malformed, pstderr.BadPoint, pstderr.BadCount, pstderr.Unsupported:
		return db.RefusalMalformed, true
	}
	return "", false
}

// countRefusal counts err if it is a client's refused request. key is the
// key the request named; it is kept only for a replay (a key the issuer
// held when the token was first redeemed), never for a key the issuer does
// not hold, so a client cannot fill the counts with made-up key ids.
func (s *Service) countRefusal(err error, key uint32) {
	if reason, ok := refusalReason(err); ok {
		if reason != db.RefusalReplay {
			key = 0
		}
		s.counts.refuse(reason, key, s.cfg.Clock.Now())
	}
}

// FlushCounts appends the closed count buckets (all of them, the open ones
// too, when final is set: at a clean shutdown) to the audit log and the
// counts tables. On failure the buckets stay in memory for the next flush.
func (s *Service) FlushCounts(ctx context.Context, final bool) error {
	iss, ref := s.counts.take(s.cfg.Clock.Now(), final)
	defer func() { s.metrics.countsPending.Set(float64(s.counts.pending())) }()
	if len(iss) == 0 && len(ref) == 0 {
		return nil
	}
	if err := s.store.RecordCounts(ctx, s.cfg.Actor, s.cfg.Replica, iss, ref); err != nil {
		s.counts.putBack(iss, ref)
		return s.dbErr(err, "recording counts failed")
	}
	return nil
}

// defaultReplica is "host/pid": distinct for every process of a deployment.
func defaultReplica() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "pstd"
	}
	return h + "/" + strconv.Itoa(os.Getpid())
}
