package hsm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

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

// CurrentKEKLabel is the label of the key-encryption key Seal uses now.
func (h *HSM) CurrentKEKLabel() string { return KEKLabel(KEKGeneration) }
