package httpapi

import (
	"context"
	"net/http"
	"runtime"
	"sync"
	"time"
)

// Admission control. Issuance is CPU work (the VOPRF evaluations and
// proofs), redemption CPU, a database write and an HSM signature; beyond a
// few requests per CPU more concurrency only lengthens every request until
// all of them time out. So each of the two routes runs at most a fixed
// number of requests at once; a short burst beyond that waits in a bounded
// queue (at most MaxQueueWait) for a slot. When the slots and the queue
// are full, or a client already holds its share of them, the request is
// refused at once with 503 "overloaded" and Retry-After: 1, never left to
// time out. Overload is a local condition: it never touches readiness,
// which is about the dependencies.
//
// The per-client share applies to issuance (default half the slots: one
// client never holds them all, so another's request runs at once), which
// costs the server CPU for anything well-framed.
// Redemption has none by default: a relying party or a proxy legitimately
// sends bursts of redemptions from one address, and each needs a token.

// reasonOverloaded is the problem reason of an admission refusal.
const reasonOverloaded = "overloaded"

// overloadRetryAfter is the Retry-After of an admission refusal.
const overloadRetryAfter = time.Second

// DefaultMaxQueueWait bounds how long an admitted request waits for a slot.
const DefaultMaxQueueWait = time.Second

// DefaultMaxIssuance and DefaultMaxRedemption size admission to the CPUs.
func DefaultMaxIssuance() int { return 2 * runtime.GOMAXPROCS(0) }

// DefaultMaxRedemption: see DefaultMaxIssuance.
func DefaultMaxRedemption() int { return 4 * runtime.GOMAXPROCS(0) }

// admission is one route's bounded concurrency with a bounded queue.
type admission struct {
	route     string
	slots     chan struct{} // running requests
	capacity  int           // running plus waiting
	perClient int           // running plus waiting of one client; 0: no cap
	maxWait   time.Duration
	m         *metrics

	mu       sync.Mutex
	admitted int // running plus waiting
	byClient map[string]int
}

func newAdmission(route string, running, queued, perClient int, maxWait time.Duration, m *metrics) *admission {
	return &admission{route: route, slots: make(chan struct{}, running), capacity: running + max(queued, 0),
		perClient: perClient, maxWait: maxWait, m: m, byClient: map[string]int{}}
}

func (a *admission) refuse() error {
	a.m.admissionRejected.WithLabelValues(a.route).Inc()
	p := newProblem(http.StatusServiceUnavailable, reasonOverloaded, "the issuer is busy; try again shortly", nil)
	p.retryAfter = overloadRetryAfter
	return p
}

// acquire takes a slot for client, waiting in the queue at most maxWait
// (and no longer than ctx), or refuses with the overloaded problem. The
// returned func gives the slot back; call it exactly once.
func (a *admission) acquire(ctx context.Context, client string) (func(), error) {
	a.mu.Lock()
	if a.admitted >= a.capacity || (a.perClient > 0 && a.byClient[client] >= a.perClient) {
		a.mu.Unlock()
		return nil, a.refuse()
	}
	a.admitted++
	a.byClient[client]++
	a.mu.Unlock()
	leave := func() {
		a.mu.Lock()
		a.admitted--
		if c := a.byClient[client] - 1; c > 0 {
			a.byClient[client] = c
		} else {
			delete(a.byClient, client)
		}
		a.mu.Unlock()
	}

	select {
	case a.slots <- struct{}{}:
	default:
		t := time.NewTimer(a.maxWait)
		defer t.Stop()
		select {
		case a.slots <- struct{}{}:
		case <-t.C:
			leave()
			return nil, a.refuse()
		case <-ctx.Done():
			leave()
			return nil, a.refuse()
		}
	}
	a.m.inflight.WithLabelValues(a.route).Set(float64(len(a.slots)))
	var once sync.Once
	return func() {
		once.Do(func() {
			<-a.slots
			leave()
			a.m.inflight.WithLabelValues(a.route).Set(float64(len(a.slots)))
		})
	}, nil
}

// admit runs the admission of adm for r; a refusal is an *Problem.
func (s *Server) admit(adm *admission, r *http.Request) (func(), error) {
	return adm.acquire(r.Context(), s.cfg.ClientKey(r))
}
