package voprf

import (
	"encoding/binary"
	"fmt"
	"io"

	"filippo.io/bigmod"

	"github.com/pstd/pstd/signer/voprf/internal/p384"
)

// PublicKey is an issuer's public key pkS = k·G with its key id.
type PublicKey struct {
	KeyID uint32
	point *p384.Point
	unc   [ElementSize]byte
	comp  [CompressedSize]byte
}

// PrivateKey is an issuer's secret scalar k with its public key. Its memory
// holds k in the clear: call Wipe when the key is retired or the process
// shuts down.
type PrivateKey struct {
	pub   PublicKey
	k     [ScalarSize]byte // big-endian, in [1, n-1]
	kNat  *bigmod.Nat
	seed  [48]byte // SHA-384 seed of the composite weights; depends on pkS only
	wiped bool
}

func newPublicKey(keyID uint32, p *p384.Point) (*PublicKey, error) {
	if isIdentity(p) {
		return nil, newError(BadPoint, "public key is the identity")
	}
	pk := &PublicKey{KeyID: keyID, point: p}
	encodePoint(p, pk.unc[:], &pk.comp)
	return pk, nil
}

// NewPrivateKey makes a private key from a 48-byte big-endian scalar in
// [1, n-1]. It copies k; the caller should wipe its own copy.
func NewPrivateKey(keyID uint32, k []byte) (*PrivateKey, error) {
	if len(k) != ScalarSize {
		return nil, newError(Malformed, "private scalar is not 48 bytes")
	}
	kn, err := bigmod.NewNat().SetBytes(k, orderN)
	if err != nil || kn.IsZero() == 1 {
		return nil, newError(Malformed, "private scalar is not in [1, n-1]")
	}
	sk := &PrivateKey{kNat: kn}
	copy(sk.k[:], k)
	p, err := p384.NewPoint().ScalarBaseMult(sk.k[:])
	if err != nil {
		return nil, fmt.Errorf("scalar base multiplication failed: %w", err)
	}
	pub, err := newPublicKey(keyID, p)
	if err != nil {
		return nil, err
	}
	sk.pub = *pub
	sk.seed = seedHash(sk.pub.comp[:])
	return sk, nil
}

// GenerateKey makes a new private key with a scalar uniform in [1, n-1] drawn
// from rand (the HSM's RNG in production).
func GenerateKey(keyID uint32, rand io.Reader) (*PrivateKey, error) {
	k, err := randomScalar(rand)
	if err != nil {
		return nil, err
	}
	defer wipe(k[:])
	return NewPrivateKey(keyID, k[:])
}

// Public returns the key's public half.
func (sk *PrivateKey) Public() *PublicKey { return &sk.pub }

// KeyID returns the key id.
func (sk *PrivateKey) KeyID() uint32 { return sk.pub.KeyID }

// Scalar returns a copy of k, for sealing under the HSM's key-encryption key.
// The caller must wipe it after use.
func (sk *PrivateKey) Scalar() []byte {
	out := make([]byte, ScalarSize)
	copy(out, sk.k[:])
	return out
}

// Wipe overwrites k in memory. The key is unusable afterwards.
func (sk *PrivateKey) Wipe() {
	wipe(sk.k[:])
	if sk.kNat != nil {
		sk.kNat.SetUint(0)
	}
	sk.wiped = true
}

func wipe(b []byte) {
	for i := range b {
		b[i] = 0
	}
}

// MarshalPrivateKeyBlob returns BoringSSL's private key blob u32(key_id) || k.
// pstd never stores it; it exists for interoperability tests and import.
func (sk *PrivateKey) MarshalPrivateKeyBlob() []byte {
	out := binary.BigEndian.AppendUint32(make([]byte, 0, PrivateKeyBlobSize), sk.pub.KeyID)
	return append(out, sk.k[:]...)
}

// ParsePrivateKeyBlob parses BoringSSL's private key blob u32(key_id) || k[48].
func ParsePrivateKeyBlob(b []byte) (*PrivateKey, error) {
	if len(b) != PrivateKeyBlobSize {
		return nil, newError(Malformed, "private key blob is not 52 bytes")
	}
	return NewPrivateKey(binary.BigEndian.Uint32(b), b[4:])
}

// MarshalBlob returns the public key blob u32(key_id) || 0x04 || X || Y, the
// commitment's "Y" value before base64.
func (pk *PublicKey) MarshalBlob() []byte {
	out := binary.BigEndian.AppendUint32(make([]byte, 0, PublicKeyBlobSize), pk.KeyID)
	return append(out, pk.unc[:]...)
}

// Element returns the uncompressed encoding of pkS.
func (pk *PublicKey) Element() []byte { return append([]byte(nil), pk.unc[:]...) }

// ParsePublicKeyBlob parses u32(key_id) || 0x04 || X || Y.
func ParsePublicKeyBlob(b []byte) (*PublicKey, error) {
	if len(b) != PublicKeyBlobSize {
		return nil, newError(Malformed, "public key blob is not 101 bytes")
	}
	p, err := parseElement(b[4:])
	if err != nil {
		return nil, err
	}
	return newPublicKey(binary.BigEndian.Uint32(b), p)
}
