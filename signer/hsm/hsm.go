package hsm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/pstd/pstd/internal/secmem"
)

// HSM is a logged-in connection to one PKCS#11 token. It is safe for
// concurrent use. Open one per process and token: crypto11's session pool
// lives inside it.
type HSM struct {
	cfg  Config // PIN field empty; the PIN lives in pin
	pin  []byte
	dial dialFunc
	log  *slog.Logger

	mu      sync.RWMutex // read: an operation is using cur; write: (re)connect, close
	cur     *live        // nil while disconnected
	lastGen uint64
	closed  bool
	// fatal is set when a reconnect found the PIN refused or locked: pstd
	// then never logs in again, so it cannot lock the token by retrying.
	fatal   error
	backoff time.Duration
	nextTry time.Time

	reconnects atomic.Uint64
	kekMu      sync.Mutex // serialises EnsureKEK's find-or-generate
	// kekKnown is set once EnsureKEK found or made the KEK: from then on
	// Ping also proves the token still holds it.
	kekKnown atomic.Bool

	pingMu sync.Mutex
	ping   *flight
}

// live is one connection generation. Handles cached here die with it.
type live struct {
	b   backend
	gen uint64

	mu   sync.Mutex
	keks map[uint32]objHandle
}

type flight struct {
	done chan struct{}
	err  error
}

const (
	minBackoff = 250 * time.Millisecond
	maxBackoff = 30 * time.Second

	noTokenAttempts = 4
	noTokenRetryGap = 150 * time.Millisecond
)

var errDisconnected = fmt.Errorf("%w: no session", ErrUnavailable)

// Open loads the module, finds the token by label and logs in with the PIN,
// once. Failures are ErrNoModule, ErrNoToken, ErrNoPIN, ErrBadPIN or
// ErrPINLocked (test with errors.Is); no error contains the PIN.
func Open(cfg Config) (*HSM, error) { return open(cfg, dialP11) }

func open(cfg Config, dial dialFunc) (*HSM, error) {
	switch {
	case cfg.ModulePath == "":
		return nil, fmt.Errorf("%w: no module path configured", ErrNoModule)
	case cfg.TokenLabel == "":
		return nil, fmt.Errorf("%w: no token label configured", ErrNoToken)
	case cfg.PIN == "":
		return nil, ErrNoPIN
	}
	// The PIN lives in protected memory (out of core dumps, locked against
	// swap), copied there without a stop on the Go heap.
	pin, err := secmem.Clone(unsafe.Slice(unsafe.StringData(cfg.PIN), len(cfg.PIN)))
	if err != nil {
		return nil, fmt.Errorf("hsm: %w", err)
	}
	h := &HSM{pin: pin, dial: dial, log: cfg.Logger}
	cfg.PIN = ""
	h.cfg = cfg
	if h.log == nil {
		h.log = slog.Default()
	}
	b, err := dial(h.cfg, h.pin)
	// A token that is not listed, or a module that fails to initialise, is
	// tried again, briefly: SoftHSM2's file store hides a token from
	// C_GetSlotList, or fails C_Initialize with CKR_GENERAL_ERROR, for a
	// moment while another process writes one of its objects (seen with
	// replicas starting together). No login has happened, so this costs
	// the PIN nothing; a token that is really absent is reported 0.45 s
	// later. A refused PIN is never retried.
	for attempt := 1; attempt < noTokenAttempts && retryableDial(err); attempt++ {
		time.Sleep(noTokenRetryGap)
		b, err = dial(h.cfg, h.pin)
	}
	if err != nil {
		secmem.Free(h.pin)
		return nil, err
	}
	h.lastGen = 1
	h.cur = &live{b: b, gen: 1, keks: map[uint32]objHandle{}}
	return h, nil
}

// Close logs out and releases the token. The HSM is unusable afterwards;
// signers it returned fail with ErrClosed.
func (h *HSM) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	h.closed = true
	secmem.Free(h.pin)
	h.pin = nil
	if h.cur == nil {
		return nil
	}
	err := h.cur.b.close()
	h.cur = nil
	return err
}

// reopen drops the current connection and logs in again, whatever the
// reconnect backoff says. It refuses (with the original error) after a
// reconnect found the PIN refused: only a restart with a new PIN helps then.
func (h *HSM) reopen() error {
	h.mu.RLock()
	var seen uint64
	if h.cur != nil {
		seen = h.cur.gen
	}
	h.mu.RUnlock()
	return h.reconnect(seen, true)
}

// reconnectCount returns how many times the HSM restored a lost connection.
func (h *HSM) reconnectCount() uint64 { return h.reconnects.Load() }

// reconnect replaces connection generation seen (0: none) with a new one.
// Without force it honours the backoff, so a dead token costs one login
// attempt per backoff period, not one per request.
func (h *HSM) reconnect(seen uint64, force bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return ErrClosed
	}
	if h.fatal != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, h.fatal)
	}
	if !force && h.cur != nil && h.cur.gen != seen {
		return nil // another caller already reconnected
	}
	now := time.Now()
	if !force && now.Before(h.nextTry) {
		return fmt.Errorf("%w: token %q: next reconnect attempt in %s", ErrUnavailable, h.cfg.TokenLabel, h.nextTry.Sub(now).Round(time.Millisecond))
	}
	if h.cur != nil {
		_ = h.cur.b.close()
		h.cur = nil
	}
	b, err := h.dial(h.cfg, h.pin)
	if err != nil {
		if errorsIsAny(err, ErrBadPIN, ErrPINLocked) {
			h.fatal = err
		}
		h.backoff = min(max(2*h.backoff, minBackoff), maxBackoff)
		h.nextTry = now.Add(h.backoff)
		h.log.Warn("hsm: reconnect failed", "token_label", h.cfg.TokenLabel, "err", err, "retry_in", h.backoff)
		return fmt.Errorf("%w: reconnecting to token %q: %w", ErrUnavailable, h.cfg.TokenLabel, err)
	}
	h.lastGen++
	h.cur = &live{b: b, gen: h.lastGen, keks: map[uint32]objHandle{}}
	h.backoff, h.nextTry = 0, time.Time{}
	h.reconnects.Add(1)
	h.log.Info("hsm: token session restored", "token_label", h.cfg.TokenLabel, "generation", h.lastGen)
	return nil
}

// do runs fn on the current connection. If fn fails because the session is
// gone, do reconnects (subject to the backoff) and runs fn once more.
func (h *HSM) do(fn func(l *live) error) error {
	for attempt := 0; ; attempt++ {
		seen, lost, err := h.run(fn)
		if !lost {
			return err
		}
		if attempt > 0 {
			if errors.Is(err, ErrUnavailable) {
				return err
			}
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		if seen != 0 {
			h.log.Warn("hsm: token session lost", "token_label", h.cfg.TokenLabel, "err", err)
		}
		if rerr := h.reconnect(seen, false); rerr != nil {
			return rerr
		}
	}
}

// run runs fn on the current connection under the read lock, so no
// reconnect or Close can pull the connection away meanwhile. lost reports
// whether a failure means the connection is gone; seen is its generation
// (0: there was none).
func (h *HSM) run(fn func(l *live) error) (seen uint64, lost bool, err error) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.closed {
		return 0, false, ErrClosed
	}
	l := h.cur
	if l == nil {
		return 0, true, errDisconnected
	}
	err = safeCall(func() error { return fn(l) })
	switch {
	case err == nil:
		return l.gen, false, nil
	case isResourceExhaustion(err):
		// Checked before isSessionLost: a module starved of descriptors
		// may say "device error", and reconnecting would make it worse.
		return l.gen, false, fmt.Errorf("%w: %w: %w", ErrUnavailable, ErrResources, err)
	case isSessionLost(err):
		return l.gen, true, err
	case isStaleHandle(err):
		// A deleted key, or a lost login? Ask the connection.
		if perr := safeCall(l.b.ping); perr != nil {
			if isResourceExhaustion(perr) {
				return l.gen, false, fmt.Errorf("%w: %w: %w (connection check: %w)", ErrUnavailable, ErrResources, err, perr)
			}
			return l.gen, true, fmt.Errorf("%w (connection check: %w)", err, perr)
		}
	}
	return l.gen, false, err
}

// Ping proves that the token answers, the session is logged in and (after
// EnsureKEK) the key-encryption key is still there; a lost
// session is reconnected (subject to the backoff). Concurrent pings share
// one probe, and a token that hangs costs the caller no more than ctx
// allows.
func (h *HSM) Ping(ctx context.Context) error {
	h.pingMu.Lock()
	f := h.ping
	if f == nil {
		f = &flight{done: make(chan struct{})}
		h.ping = f
		go func() {
			f.err = h.do(func(l *live) error {
				if err := l.b.ping(); err != nil {
					return err
				}
				return h.checkKEKPresent(l)
			})
			h.pingMu.Lock()
			h.ping = nil
			h.pingMu.Unlock()
			close(f.done)
		}()
	}
	h.pingMu.Unlock()
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return fmt.Errorf("%w: ping: %w", ErrUnavailable, ctx.Err())
	}
}

// maxRandom bounds one Random call.
const maxRandom = 1 << 16

// Random returns n bytes from the token's random number generator.
func (h *HSM) Random(n int) ([]byte, error) {
	if n < 0 || n > maxRandom {
		return nil, fmt.Errorf("hsm: Random(%d): n must be in [0, %d]", n, maxRandom)
	}
	if n == 0 {
		return []byte{}, nil
	}
	var out []byte
	err := h.do(func(l *live) (err error) {
		out, err = l.b.random(n)
		return err
	})
	if err == nil && len(out) != n {
		return nil, fmt.Errorf("hsm: token RNG returned %d bytes, want %d", len(out), n)
	}
	return out, err
}
