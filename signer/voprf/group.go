package voprf

import (
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"io"
	"math/big"

	"filippo.io/bigmod"

	"github.com/pstd/pstd/signer/voprf/internal/p384"
)

// Sizes of P-384 encodings.
const (
	ScalarSize           = 48
	ElementSize          = 97 // SEC1 uncompressed: 0x04 || X || Y
	CompressedSize       = 49 // SEC1 compressed: 0x02/0x03 || X
	NonceSize            = 64
	ProofSize            = 2 * ScalarSize
	PublicKeyBlobSize    = 4 + ElementSize
	PrivateKeyBlobSize   = 4 + ScalarSize
	TokenSize            = 4 + NonceSize + ElementSize
	MaxBatchSize         = 100 // Chrome caps a commitment's batchsize at 100
	MaxClientDataSize    = 1024
	MaxRedeemRequestSize = 2 + TokenSize + 2 + MaxClientDataSize
	MaxIssueRequestSize  = 2 + MaxBatchSize*ElementSize
)

// contextString is "OPRFV1-" || I2OSP(mode=1, 1) || "-P384-SHA384".
const contextString = "OPRFV1-\x01-P384-SHA384"

var (
	dstHashToGroup  = []byte("HashToGroup-" + contextString)
	dstHashToScalar = []byte("HashToScalar-" + contextString)
	seedDST         = []byte("Seed-" + contextString)
)

// orderBytes is n, the order of the P-384 group, big-endian.
var orderBytes = []byte{
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37, 0x2d, 0xdf, 0x58, 0x1a, 0x0d, 0xb2,
	0x48, 0xb0, 0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc, 0xc5, 0x29, 0x73,
}

var orderN = func() *bigmod.Modulus {
	m, err := bigmod.NewModulus(orderBytes)
	if err != nil {
		panic(err)
	}
	return m
}()

var orderBig = new(big.Int).SetBytes(orderBytes)

// parseElement decodes a wire (uncompressed) element. It rejects any other
// length or form, points off the curve and — because the uncompressed form
// cannot encode it — the identity.
func parseElement(b []byte) (*p384.Point, error) {
	if len(b) != ElementSize || b[0] != 4 {
		return nil, newError(BadPoint, "element is not a 97-byte uncompressed point")
	}
	p, err := p384.NewPoint().SetBytes(b)
	if err != nil {
		return nil, newError(BadPoint, "element is not on P-384")
	}
	return p, nil
}

// compressFromUncompressed derives the SEC1 compressed form of an element from
// its uncompressed encoding, avoiding a field inversion.
func compressFromUncompressed(dst *[CompressedSize]byte, u []byte) {
	dst[0] = 2 | (u[ElementSize-1] & 1)
	copy(dst[1:], u[1:1+ScalarSize])
}

// encodePoint writes p's uncompressed and compressed encodings. p must not be
// the identity (callers check with isIdentity first where that can happen).
func encodePoint(p *p384.Point, unc []byte, comp *[CompressedSize]byte) {
	b, _ := p.AppendBytes(unc[:0])
	compressFromUncompressed(comp, b)
}

func isIdentity(p *p384.Point) bool { return p.IsIdentity() == 1 }

// transcript appends I2OSP(len(b), 2) || b.
func appendLenPrefixed(dst, b []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(b)))
	return append(dst, b...)
}

// hashToScalar is RFC 9497 HashToScalar for P384-SHA384: expand_message_xmd
// with SHA-384 to 72 bytes, reduced mod n. Its input is always public. It
// works on the stack and with filippo.io/bigmod, not math/big.
func hashToScalar(msg []byte) [ScalarSize]byte {
	var u [hashToScalarLen]byte
	expandMessageXMD(u[:], msg, dstHashToScalar)
	// u = hi·2^384 + lo with hi < 2^192 < n, so u ≡ hi·(2^384 mod n) + lo.
	// lo < 2^384 < 2n needs at most one subtraction (SetOverflowingBytes).
	lo, err := bigmod.NewNat().SetOverflowingBytes(u[hashToScalarLen-ScalarSize:], orderN)
	if err != nil {
		panic("voprf: HashToScalar: 48 bytes do not fit n's width")
	}
	hi, err := bigmod.NewNat().SetBytes(u[:hashToScalarLen-ScalarSize], orderN)
	if err != nil {
		panic("voprf: HashToScalar: 24 bytes are not below n")
	}
	hi.Mul(twoTo384ModN, orderN)
	lo.Add(hi, orderN)
	var out [ScalarSize]byte
	copy(out[:], lo.Bytes(orderN))
	return out
}

// hashToScalarLen is L = ceil((ceil(log2(n)) + k) / 8) = (384 + 192) / 8
// (RFC 9380 §5, security level k = 192).
const hashToScalarLen = 72

// twoTo384ModN is 2^384 mod n = 2^384 − n, as n < 2^384 < 2n.
var twoTo384ModN = func() *bigmod.Nat {
	v := new(big.Int).Lsh(big.NewInt(1), 8*ScalarSize)
	v.Sub(v, orderBig)
	nat, err := bigmod.NewNat().SetBytes(v.Bytes(), orderN)
	if err != nil {
		panic(err)
	}
	return nat
}()

// expandMessageXMD is RFC 9380 §5.3.1 expand_message_xmd with SHA-384, for
// len(out) ≤ 255·48 and len(dst) ≤ 255 (callers pass constants). Messages
// of the sizes VOPRF hashes stay in a stack buffer.
func expandMessageXMD(out, msg, dst []byte) {
	const hLen, blockLen = sha512.Size384, 128
	if len(out) > 255*hLen || len(dst) > 255 {
		panic("voprf: expand_message_xmd parameters out of range")
	}
	var scratch [512]byte
	// b_0 = H(Z_pad || msg || I2OSP(len(out), 2) || I2OSP(0, 1) || DST_prime)
	buf := append(scratch[:0], make([]byte, blockLen)...)
	buf = append(buf, msg...)
	buf = append(buf, byte(len(out)>>8), byte(len(out)), 0)
	buf = append(buf, dst...)
	buf = append(buf, byte(len(dst)))
	b0 := sha512.Sum384(buf)
	// b_i = H(strxor(b_0, b_(i−1)) || I2OSP(i, 1) || DST_prime), b_1 = H(b_0 || 1 || DST_prime)
	var bi [hLen]byte
	for i, off := 1, 0; off < len(out); i, off = i+1, off+hLen {
		var x [hLen]byte
		for j := range x {
			x[j] = b0[j] ^ bi[j] // bi is zero for i = 1
		}
		buf = append(scratch[:0], x[:]...)
		buf = append(buf, byte(i))
		buf = append(buf, dst...)
		buf = append(buf, byte(len(dst)))
		bi = sha512.Sum384(buf)
		copy(out[off:], bi[:])
	}
}

// HashToGroup is RFC 9497 HashToGroup for P384-SHA384 (RFC 9380
// P384_XMD:SHA-384_SSWU_RO_), applied to a public token nonce: 144 bytes of
// expand_message_xmd, mapped by simplified SWU in package p384 (variable
// time, which is fine for public input).
func hashToGroup(msg []byte) *p384.Point {
	var u [p384.HashToFieldLen]byte
	expandMessageXMD(u[:], msg, dstHashToGroup)
	p, err := p384.NewPoint().SetUniformBytes(u[:])
	if err != nil {
		panic("voprf: HashToGroup: wrong number of uniform bytes")
	}
	return p
}

// randomScalar returns a uniform scalar in [1, n-1] by rejection sampling,
// for the client's blinds (the issuer draws its secrets with
// randomScalarInto, into protected memory).
func randomScalar(rand io.Reader) ([ScalarSize]byte, error) {
	var b [ScalarSize]byte
	err := randomScalarInto(rand, b[:])
	return b, err
}

// randomScalarInto fills b (48 bytes) with a uniform scalar in [1, n-1] by
// rejection sampling, leaving no copy of it elsewhere.
func randomScalarInto(rand io.Reader, b []byte) error {
	for range 128 {
		if _, err := io.ReadFull(rand, b); err != nil {
			return err
		}
		if scalarInRange(b) { // ≥ n or 0: probability about 2^-190
			return nil
		}
	}
	return errBadRandom
}

var errBadRandom = errors.New("random source produced no usable scalar")

// seedHash computes seed = SHA-384(I2OSP(49,2) || comp(pkS) || I2OSP(len(seedDST),2) || seedDST).
func seedHash(pkComp []byte) [sha512.Size384]byte {
	buf := make([]byte, 0, 2+CompressedSize+2+len(seedDST))
	buf = appendLenPrefixed(buf, pkComp)
	buf = appendLenPrefixed(buf, seedDST)
	return sha512.Sum384(buf)
}

// compositeWeight computes d_i = HashToScalar(I2OSP(48,2) || seed || I2OSP(i,2) ||
// I2OSP(49,2) || comp(B_i) || I2OSP(49,2) || comp(Z_i) || "Composite").
func compositeWeight(buf []byte, seed []byte, i int, bComp, zComp []byte) ([ScalarSize]byte, []byte) {
	buf = buf[:0]
	buf = appendLenPrefixed(buf, seed)
	buf = binary.BigEndian.AppendUint16(buf, uint16(i))
	buf = appendLenPrefixed(buf, bComp)
	buf = appendLenPrefixed(buf, zComp)
	buf = append(buf, "Composite"...)
	return hashToScalar(buf), buf
}

// challenge computes c = HashToScalar(comp(pkS) || comp(M) || comp(Z) ||
// comp(t2) || comp(t3) || "Challenge"), each element length-prefixed.
func challenge(pk, m, z, t2, t3 []byte) [ScalarSize]byte {
	buf := make([]byte, 0, 5*(2+CompressedSize)+len("Challenge"))
	for _, e := range [][]byte{pk, m, z, t2, t3} {
		buf = appendLenPrefixed(buf, e)
	}
	buf = append(buf, "Challenge"...)
	return hashToScalar(buf)
}
