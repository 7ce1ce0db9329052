package hsm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
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
	h := &HSM{pin: []byte(cfg.PIN), dial: dial, log: cfg.Logger}
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
		Wipe(h.pin)
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
	Wipe(h.pin)
	if h.cur == nil {
		return nil
	}
	err := h.cur.b.close()
	h.cur = nil
	return err
}

// Reopen drops the current connection and logs in again, whatever the
// reconnect backoff says. It refuses (with the original error) after a
// reconnect found the PIN refused: only a restart with a new PIN helps then.
func (h *HSM) Reopen() error {
	h.mu.RLock()
	var seen uint64
	if h.cur != nil {
		seen = h.cur.gen
	}
	h.mu.RUnlock()
	return h.reconnect(seen, true)
}

// Reconnects returns how many times the HSM restored a lost connection.
func (h *HSM) Reconnects() uint64 { return h.reconnects.Load() }

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
	case isSessionLost(err):
		return l.gen, true, err
	case isStaleHandle(err):
		// A deleted key, or a lost login? Ask the connection.
		if perr := safeCall(l.b.ping); perr != nil {
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

// --- key-encryption key and sealing ---

// KEKGeneration is the generation of the key-encryption key Seal uses.
// Rotating the KEK means a new generation (label pstd-kek-<n>), resealing
// every blob, then deleting the old key; Unseal finds the right KEK by the
// generation each blob names.
const KEKGeneration uint32 = 1

// KEKLabel is the CKA_LABEL and CKA_ID of KEK generation gen.
func KEKLabel(gen uint32) string { return fmt.Sprintf("pstd-kek-%d", gen) }

// Sealed blob layout, version 1:
//
//	version (1 byte, 0x01) | KEK generation (4 bytes, big endian) |
//	IV (12 bytes) | AES-256-GCM ciphertext | tag (16 bytes)
//
// The GCM additional data is the 5-byte header followed by the caller's
// aad, so neither the version nor the generation can be changed either.
const (
	SealVersion   byte = 1
	sealHeaderLen      = 1 + 4
	sealOverhead       = sealHeaderLen + gcmIVLen + gcmTagLen
	// maxSealLen bounds what Seal accepts: it seals keys, not files.
	maxSealLen = 1 << 16
)

// SealedKEKGeneration returns the KEK generation a sealed blob names.
func SealedKEKGeneration(sealed []byte) (uint32, error) {
	if len(sealed) < sealOverhead {
		return 0, fmt.Errorf("%w: sealed blob is %d bytes, shorter than the minimum %d", ErrUnsealFailed, len(sealed), sealOverhead)
	}
	if sealed[0] != SealVersion {
		return 0, fmt.Errorf("%w: unknown sealed format version %d", ErrUnsealFailed, sealed[0])
	}
	return binary.BigEndian.Uint32(sealed[1:5]), nil
}

func sealAAD(header, aad []byte) []byte {
	full := make([]byte, 0, len(header)+len(aad))
	return append(append(full, header...), aad...)
}

// kek returns the handle of KEK generation gen, finding it on first use.
func (l *live) kek(gen uint32) (objHandle, error) {
	l.mu.Lock()
	k, ok := l.keks[gen]
	l.mu.Unlock()
	if ok {
		return k, nil
	}
	label := KEKLabel(gen)
	k, ok, err := l.b.findAESKey(label)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("%w: %s (run EnsureKEK, or check the token label)", ErrNoKEK, label)
	}
	if err := l.checkSecret(k, label); err != nil {
		return 0, err
	}
	l.mu.Lock()
	l.keks[gen] = k
	l.mu.Unlock()
	return k, nil
}

func (l *live) checkSecret(k objHandle, label string) error {
	pol, err := l.b.secretKeyPolicy(k)
	if err != nil {
		return err
	}
	if err := pol.check(); err != nil {
		return fmt.Errorf("KEK %s: %w", label, err)
	}
	return nil
}

// FindKEK reports whether the token holds the key-encryption key, checking
// its attributes if it does. It never creates one.
func (h *HSM) FindKEK(ctx context.Context) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	label := KEKLabel(KEKGeneration)
	var found bool
	err := h.do(func(l *live) error {
		k, ok, err := l.b.findAESKey(label)
		if err != nil || !ok {
			return err
		}
		if err := l.checkSecret(k, label); err != nil {
			return err
		}
		l.mu.Lock()
		l.keks[KEKGeneration] = k
		l.mu.Unlock()
		found = true
		return nil
	})
	if found {
		h.kekKnown.Store(true)
	}
	return found, err
}

// EnsureKEK finds the key-encryption key on the token or, if there is none,
// generates it: an AES-256 token object that is sensitive and not
// extractable. It refuses an existing key with weaker attributes.
func (h *HSM) EnsureKEK(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h.kekMu.Lock()
	defer h.kekMu.Unlock()
	label := KEKLabel(KEKGeneration)
	return h.do(func(l *live) error {
		k, ok, err := l.b.findAESKey(label)
		if err != nil {
			return err
		}
		if !ok {
			if k, err = l.b.generateAESKey(label); err != nil {
				return err
			}
			h.log.Info("hsm: generated key-encryption key", "token_label", h.cfg.TokenLabel, "label", label)
		}
		if err := l.checkSecret(k, label); err != nil {
			return err
		}
		l.mu.Lock()
		l.keks[KEKGeneration] = k
		l.mu.Unlock()
		h.kekKnown.Store(true)
		return nil
	})
}

// checkKEKPresent looks the KEK up afresh (one FindObjects round trip). A
// session can stay logged in while the token behind it has gone: an HSM
// partition taken offline, a token removed, SoftHSM's token directory gone.
// Every key operation would then fail, so readiness must fail too; the
// connection is treated as lost so that Ping reconnects (with backoff) and
// notices when the token is back.
func (h *HSM) checkKEKPresent(l *live) error {
	if !h.kekKnown.Load() {
		return nil
	}
	label := KEKLabel(KEKGeneration)
	_, ok, err := l.b.findAESKey(label)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%w: the token no longer shows key-encryption key %s", errSessionLost, label)
	}
	return nil
}

// Seal encrypts plaintext under the KEK inside the token with AES-256-GCM.
// The 12-byte IV comes from crypto/rand, never from the token, and the
// result is decrypted once more before it is returned, so a token that
// ignored our IV or returned garbage is caught here and not at the next
// start. aad is authenticated but not stored: Unseal needs the same aad.
func (h *HSM) Seal(plaintext, aad []byte) ([]byte, error) {
	if len(plaintext) > maxSealLen {
		return nil, fmt.Errorf("hsm: Seal: %d bytes is more than %d", len(plaintext), maxSealLen)
	}
	var out []byte
	err := h.do(func(l *live) error {
		k, err := l.kek(KEKGeneration)
		if err != nil {
			return err
		}
		blob := make([]byte, sealHeaderLen+gcmIVLen, sealOverhead+len(plaintext))
		blob[0] = SealVersion
		binary.BigEndian.PutUint32(blob[1:5], KEKGeneration)
		iv := blob[sealHeaderLen:]
		if _, err := io.ReadFull(rand.Reader, iv); err != nil {
			return err
		}
		full := sealAAD(blob[:sealHeaderLen], aad)
		ct, err := l.b.gcmEncrypt(k, iv, full, plaintext)
		if err != nil {
			return fmt.Errorf("hsm: Seal: %w", err)
		}
		if len(ct) != len(plaintext)+gcmTagLen {
			return fmt.Errorf("hsm: Seal: token returned %d bytes for %d bytes of plaintext", len(ct), len(plaintext))
		}
		check, err := l.b.gcmDecrypt(k, iv, full, ct)
		ok := err == nil && bytes.Equal(check, plaintext)
		Wipe(check)
		if !ok {
			if err != nil && isSessionLost(err) {
				return err
			}
			return errors.New("hsm: Seal: the token's ciphertext does not decrypt with our IV; refusing it")
		}
		out = append(blob, ct...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Unseal reverses Seal. A blob that is malformed, tampered with or bound to
// other aad fails with ErrUnsealFailed; one naming a KEK the token does not
// hold fails with ErrNoKEK. The caller owns the plaintext and should Wipe it.
func (h *HSM) Unseal(sealed, aad []byte) ([]byte, error) {
	gen, err := SealedKEKGeneration(sealed)
	if err != nil {
		return nil, err
	}
	header := sealed[:sealHeaderLen]
	iv := sealed[sealHeaderLen : sealHeaderLen+gcmIVLen]
	ct := sealed[sealHeaderLen+gcmIVLen:]
	var out []byte
	err = h.do(func(l *live) error {
		k, err := l.kek(gen)
		if err != nil {
			if errors.Is(err, ErrNoKEK) {
				return fmt.Errorf("%w: %w", ErrUnsealFailed, err)
			}
			return err
		}
		pt, err := l.b.gcmDecrypt(k, iv, sealAAD(header, aad), ct)
		if err != nil {
			if isAuthFailure(err) {
				return fmt.Errorf("%w: authentication failed (tampered, or other associated data)", ErrUnsealFailed)
			}
			return fmt.Errorf("hsm: Unseal: %w", err)
		}
		if len(pt) != len(ct)-gcmTagLen {
			Wipe(pt)
			return fmt.Errorf("hsm: Unseal: token returned %d bytes for %d bytes of ciphertext", len(pt), len(ct))
		}
		out = pt
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// --- redemption-record keys ---

// maxIDLen bounds a key id; CKA_LABEL and CKA_ID carry "pstd-" + id.
const maxIDLen = 64

// RRKeyLabel is the CKA_LABEL and CKA_ID of redemption-record key id.
func RRKeyLabel(id string) string { return "pstd-" + id }

func checkID(id string) error {
	if id == "" || len(id) > maxIDLen {
		return fmt.Errorf("hsm: key id must be 1 to %d characters", maxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("hsm: key id %q: only letters, digits, '-', '_' and '.' are allowed", id)
		}
	}
	return nil
}

// GenerateRRKey creates a redemption-record key pair on the token: ECDSA
// P-256, the private half sensitive and not extractable, both halves token
// objects labelled RRKeyLabel(id). An existing key with that id is an
// error (ErrKeyExists), never replaced.
func (h *HSM) GenerateRRKey(ctx context.Context, id string) (crypto.Signer, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	label := RRKeyLabel(id)
	var rs *rrSigner
	err := h.do(func(l *live) error {
		if _, ok, err := l.b.findECKey(label); err != nil {
			return err
		} else if ok {
			return fmt.Errorf("%w: %s", ErrKeyExists, label)
		}
		s, err := l.b.generateECKey(label)
		if err != nil {
			return err
		}
		rs, err = h.newRRSigner(l, id, s)
		return err
	})
	if err != nil {
		return nil, err
	}
	h.log.Info("hsm: generated redemption-record key", "token_label", h.cfg.TokenLabel, "label", label)
	return rs, nil
}

// FindRRKey returns the redemption-record key id, or ErrKeyNotFound.
func (h *HSM) FindRRKey(ctx context.Context, id string) (crypto.Signer, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var rs *rrSigner
	err := h.do(func(l *live) error {
		s, ok, err := l.b.findECKey(RRKeyLabel(id))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: %s", ErrKeyNotFound, RRKeyLabel(id))
		}
		rs, err = h.newRRSigner(l, id, s)
		return err
	})
	if err != nil {
		return nil, err
	}
	return rs, nil
}

// DeleteRRKey destroys both halves of redemption-record key id, or returns
// ErrKeyNotFound. Signers already returned for it stop working.
func (h *HSM) DeleteRRKey(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return h.do(func(l *live) error {
		ok, err := l.b.deleteECKey(RRKeyLabel(id))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: %s", ErrKeyNotFound, RRKeyLabel(id))
		}
		return nil
	})
}

func (h *HSM) newRRSigner(l *live, id string, s crypto.Signer) (*rrSigner, error) {
	label := RRKeyLabel(id)
	pub, ok := s.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("hsm: key %s is not an ECDSA P-256 key", label)
	}
	pol, err := l.b.privateKeyPolicy(s)
	if err != nil {
		return nil, err
	}
	if err := pol.check(); err != nil {
		return nil, fmt.Errorf("key %s: %w", label, err)
	}
	if !pol.AlwaysSensitive || !pol.NeverExtractable {
		h.log.Warn("hsm: key was once extractable or not sensitive", "label", label)
	}
	return &rrSigner{h: h, id: id, pub: pub, gen: l.gen, inner: s}, nil
}

// rrSigner is a redemption-record key as a crypto.Signer. It survives a
// reconnect: it finds its key again on the new connection and checks that
// the public key is still the same.
type rrSigner struct {
	h   *HSM
	id  string
	pub *ecdsa.PublicKey

	mu    sync.Mutex
	gen   uint64
	inner crypto.Signer
}

// ID returns the key id the signer was generated or found with.
func (s *rrSigner) ID() string { return s.id }

// Public returns the *ecdsa.PublicKey.
func (s *rrSigner) Public() crypto.PublicKey { return s.pub }

// Sign signs digest inside the token and returns an ASN.1 DER ECDSA
// signature. rand is ignored: the token draws the nonce.
func (s *rrSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts != nil && opts.HashFunc() != 0 && len(digest) != opts.HashFunc().Size() {
		return nil, fmt.Errorf("hsm: digest is %d bytes, %v wants %d", len(digest), opts.HashFunc(), opts.HashFunc().Size())
	}
	var sig []byte
	err := s.h.do(func(l *live) error {
		inner, err := s.on(l)
		if err != nil {
			return err
		}
		sig, err = inner.Sign(nil, digest, opts)
		return err
	})
	if err != nil {
		return nil, err
	}
	return sig, nil
}

// on returns the token-side signer for connection l.
func (s *rrSigner) on(l *live) (crypto.Signer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen == l.gen {
		return s.inner, nil
	}
	label := RRKeyLabel(s.id)
	inner, ok, err := l.b.findECKey(label)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrKeyNotFound, label)
	}
	if !s.pub.Equal(inner.Public()) {
		return nil, fmt.Errorf("hsm: key %s on the token no longer matches its public key", label)
	}
	s.gen, s.inner = l.gen, inner
	return inner, nil
}
