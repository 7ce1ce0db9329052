package voprf

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync/atomic"

	"filippo.io/bigmod"

	"github.com/pstd/pstd/internal/secmem"
	"github.com/pstd/pstd/signer/voprf/internal/p384"
)

// PublicKey is an issuer's public key pkS = k·G with its key id.
type PublicKey struct {
	KeyID uint32
	point *p384.Point
	unc   [ElementSize]byte
	comp  [CompressedSize]byte
}

// PrivateKey is an issuer's secret scalar k with its public key. k is the
// one copy of the scalar the key keeps, in memory from package secmem:
// outside the Go heap, left out of core dumps and locked against swapping.
// Nothing else the key holds (no big-number form, no table) is derived from
// k; arithmetic that needs one builds it for the call and zeroes it. Call
// Wipe when the key is retired or the process shuts down: it zeroes k and
// gives its memory back.
type PrivateKey struct {
	pub   PublicKey
	k     *[ScalarSize]byte // big-endian, in [1, n-1]; secmem memory
	mem   []byte            // what secmem.New returned, for Free
	seed  [48]byte          // SHA-384 seed of the composite weights; depends on pkS only
	wiped atomic.Bool
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
	if !scalarInRange(k) {
		return nil, newError(Malformed, "private scalar is not in [1, n-1]")
	}
	mem, err := secmem.Clone(k)
	if err != nil {
		return nil, err
	}
	return newPrivateKey(keyID, mem)
}

// newPrivateKey takes ownership of mem, 48 bytes from secmem holding a
// scalar in [1, n-1], and frees it on failure.
func newPrivateKey(keyID uint32, mem []byte) (*PrivateKey, error) {
	sk := &PrivateKey{k: (*[ScalarSize]byte)(mem), mem: mem}
	p, err := p384.NewPoint().ScalarBaseMult(sk.k[:])
	if err != nil {
		sk.Wipe()
		return nil, fmt.Errorf("scalar base multiplication failed: %w", err)
	}
	pub, err := newPublicKey(keyID, p)
	if err != nil {
		sk.Wipe()
		return nil, err
	}
	sk.pub = *pub
	sk.seed = seedHash(sk.pub.comp[:])
	return sk, nil
}

// scalarInRange reports whether the 48 big-endian bytes k are in [1, n-1],
// leaving no copy of k behind.
func scalarInRange(k []byte) bool {
	kn, err := bigmod.NewNat().SetBytes(k, orderN)
	if err != nil {
		return false
	}
	ok := kn.IsZero() == 0
	kn.SetUint(0)
	return ok
}

// GenerateKey makes a new private key with a scalar uniform in [1, n-1] drawn
// from rand (the HSM's RNG in production) straight into protected memory.
func GenerateKey(keyID uint32, rand io.Reader) (*PrivateKey, error) {
	mem, err := secmem.New(ScalarSize)
	if err != nil {
		return nil, err
	}
	if err := randomScalarInto(rand, mem); err != nil {
		secmem.Free(mem)
		return nil, err
	}
	return newPrivateKey(keyID, mem)
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

// Wipe zeroes k and gives its memory back. The key is unusable afterwards
// (KeyWiped); Wipe it only when no request can still be using it.
func (sk *PrivateKey) Wipe() {
	if sk.wiped.Swap(true) {
		return
	}
	secmem.Free(sk.mem)
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
