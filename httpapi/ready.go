package httpapi

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pstd/pstd/internal/pstderr"
)

// readiness caches the result of the issuer's Ready so that issuance and
// redemption never wait for it: a background probe refreshes it every
// interval, a request that finds it not ready asks for an early probe
// (at most one at a time), and /readyz probes synchronously.
type readiness struct {
	iss      Issuer
	timeout  time.Duration
	interval time.Duration
	metrics  *metrics
	onChange func(ready bool, err error)
	timeouts int // probes in a row that must time out to turn not ready

	smu    sync.Mutex // serialises state updates
	streak int        // timed-out probes in a row

	state    atomic.Pointer[readyState]
	draining atomic.Bool
	kick     chan struct{}

	mu      sync.Mutex // one probe at a time
	running bool

	fmu    sync.Mutex // guards flight
	flight *readyFlight
}

// readyFlight is one probe that concurrent /readyz callers share.
type readyFlight struct {
	done chan struct{}
	err  error
}

type readyState struct {
	err error // nil: ready
	at  time.Time
}

var errNotProbed = pstderr.New(pstderr.Unavailable, "starting up")

func newReadiness(iss Issuer, interval, timeout time.Duration, timeouts int, m *metrics, onChange func(bool, error)) *readiness {
	r := &readiness{iss: iss, interval: interval, timeout: timeout, timeouts: max(1, timeouts), metrics: m, onChange: onChange,
		kick: make(chan struct{}, 1)}
	r.state.Store(&readyState{err: errNotProbed})
	m.setReady(false)
	return r
}

// current is the cached state: nil when ready.
func (r *readiness) current() error {
	if r.draining.Load() {
		return pstderr.New(pstderr.Unavailable, "shutting down")
	}
	return r.state.Load().err
}

// probeShared serves /readyz. Concurrent callers share one probe (so a
// flood of /readyz costs one database and one HSM ping at a time), which
// runs detached from all of them: a caller that hangs up abandons only its
// wait, never the probe, so an anonymous client cannot mark the replica not
// ready.
func (r *readiness) probeShared(ctx context.Context) error {
	r.fmu.Lock()
	f := r.flight
	if f == nil {
		f = &readyFlight{done: make(chan struct{})}
		r.flight = f
		go func() {
			f.err = r.probe(context.Background())
			r.fmu.Lock()
			r.flight = nil
			r.fmu.Unlock()
			close(f.done)
		}()
	}
	r.fmu.Unlock()
	// A probe that has not answered within half the probe timeout (the
	// dependencies are slow, or the CPU is busy) leaves the caller the
	// cached state: a load balancer's own short timeout must not turn a
	// slow answer into "not ready". The probe goes on and updates the cache.
	wait := time.NewTimer(r.timeout / 2)
	defer wait.Stop()
	select {
	case <-f.done:
		return f.err
	case <-wait.C:
		return r.state.Load().err
	case <-ctx.Done():
		return pstderr.Wrap(pstderr.Unavailable, ctx.Err(), "readiness check abandoned")
	}
}

// probe calls Ready with the probe timeout, waiting no longer than that
// even if Ready ignores its context, and stores the result, unless parent
// itself ended (shutdown): that says nothing about the dependencies.
//
// A probe that timed out got no answer: a dependency may hang, or this
// process may just not have been scheduled in time (a CPU busy with a
// flood delays the probe as much as the requests). So a ready replica
// turns not ready only after ReadyTimeouts such probes in a row; an
// answer that is an error (connection refused, token gone, keys missing)
// turns it not ready at once, and a not-ready replica turns ready only on
// a successful probe. It returns the state it leaves.
func (r *readiness) probe(parent context.Context) error {
	ctx, cancel := context.WithTimeout(parent, r.timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		defer func() {
			if v := recover(); v != nil {
				done <- &panicError{value: v}
			}
		}()
		done <- r.iss.Ready(ctx)
	}()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		err = pstderr.Wrap(pstderr.Unavailable, ctx.Err(), "readiness check timed out")
	}
	if parent.Err() != nil {
		return err
	}
	r.smu.Lock()
	defer r.smu.Unlock()
	old := r.state.Load()
	if err != nil && errors.Is(err, context.DeadlineExceeded) {
		r.metrics.probeInconclusive.Inc()
		r.streak++
		if old.err == nil && r.streak < r.timeouts {
			r.state.Store(&readyState{err: nil, at: time.Now()})
			return nil
		}
	} else {
		r.streak = 0
	}
	r.state.Store(&readyState{err: err, at: time.Now()})
	r.metrics.setReady(err == nil)
	if (old.err == nil) != (err == nil) && r.onChange != nil {
		r.onChange(err == nil, err)
	}
	return err
}

// request asks the background loop for an early probe, without waiting.
func (r *readiness) request() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// watch probes at once, then every interval and whenever request asks,
// until ctx ends. Only one watch runs at a time; a second returns at once.
func (r *readiness) watch(ctx context.Context) {
	r.mu.Lock()
	if r.running {
		r.mu.Unlock()
		return
	}
	r.running = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.running = false
		r.mu.Unlock()
	}()

	t := time.NewTicker(r.interval)
	defer t.Stop()
	const minGap = 200 * time.Millisecond // early probes no closer than this
	for {
		r.probe(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.kick:
			if wait := minGap - time.Since(r.state.Load().at); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
		}
	}
}
