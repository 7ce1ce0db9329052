package hsm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"fmt"
	"io"
	"sync"
)

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

// deleteRRKey destroys both halves of redemption-record key id, or returns
// ErrKeyNotFound. Signers already returned for it stop working.
func (h *HSM) deleteRRKey(ctx context.Context, id string) error {
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
