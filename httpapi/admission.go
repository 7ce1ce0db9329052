package httpapi

import (
	"net/http"
	"runtime"
	"sync"
	"time"
)

// Admission control. Issuance is CPU work (the VOPRF evaluations and
// proofs), redemption CPU, a database write and an HSM signature; beyond a
// few requests per CPU more concurrency only lengthens every request until
// all of them time out. So each of the two routes runs at most a fixed
// number of requests at once, one client (address, or the forwarded client
// behind a trusted proxy) at most its share of them, and a request that
// finds no free slot is refused at once with 503 "overloaded" and a
// Retry-After, rather than queued. Overload is a local condition: it never
// touches readiness, which is about the dependencies.

// reasonOverloaded is the problem reason of an admission refusal.
const reasonOverloaded = "overloaded"

// overloadRetryAfter is the Retry-After of an admission refusal.
const overloadRetryAfter = time.Second

// DefaultMaxIssuance and DefaultMaxRedemption size admission to the CPUs.
func DefaultMaxIssuance() int   { return 2 * runtime.GOMAXPROCS(0) }
func DefaultMaxRedemption() int { return 4 * runtime.GOMAXPROCS(0) }

// admission is one route's bounded concurrency.
type admission struct {
	route     string
	max       int
	perClient int
	m         *metrics

	mu       sync.Mutex
	inflight int
	byClient map[string]int
}

func newAdmission(route string, maxInflight, perClient int, m *metrics) *admission {
	return &admission{route: route, max: maxInflight, perClient: perClient, m: m, byClient: map[string]int{}}
}

// acquire takes a slot for client, or refuses with the overloaded problem.
// The returned func gives the slot back.
func (a *admission) acquire(client string) (func(), error) {
	a.mu.Lock()
	if a.inflight >= a.max || (a.perClient > 0 && a.byClient[client] >= a.perClient) {
		a.mu.Unlock()
		a.m.admissionRejected.WithLabelValues(a.route).Inc()
		p := newProblem(http.StatusServiceUnavailable, reasonOverloaded, "the issuer is busy; try again shortly", nil)
		p.retryAfter = overloadRetryAfter
		return nil, p
	}
	a.inflight++
	a.byClient[client]++
	n := a.inflight
	a.mu.Unlock()
	a.m.inflight.WithLabelValues(a.route).Set(float64(n))
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			a.inflight--
			if c := a.byClient[client] - 1; c > 0 {
				a.byClient[client] = c
			} else {
				delete(a.byClient, client)
			}
			n := a.inflight
			a.mu.Unlock()
			a.m.inflight.WithLabelValues(a.route).Set(float64(n))
		})
	}, nil
}

// admit runs the admission of route for r; a refusal is an *Problem.
func (s *Server) admit(adm *admission, r *http.Request) (func(), error) {
	return adm.acquire(s.cfg.ClientKey(r))
}
