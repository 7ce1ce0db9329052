package voprf

import (
	"crypto/sha512"
	"encoding/binary"
	"io"
	"math/big"

	"filippo.io/bigmod"
	"github.com/cloudflare/circl/group"

	"github.com/pstd/pstd/internal/pstderr"
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
		return nil, pstderr.New(pstderr.BadPoint, "element is not a 97-byte uncompressed point")
	}
	p, err := p384.NewPoint().SetBytes(b)
	if err != nil {
		return nil, pstderr.New(pstderr.BadPoint, "element is not on P-384")
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

var circlP384 = group.P384

// hashToScalar is RFC 9497 HashToScalar for P384-SHA384: expand_message_xmd
// with SHA-384 to 72 bytes, reduced mod n. Its input is always public.
func hashToScalar(msg []byte) [ScalarSize]byte {
	s := circlP384.HashToScalar(msg, dstHashToScalar)
	b, err := s.MarshalBinary()
	if err != nil || len(b) != ScalarSize {
		panic("voprf: HashToScalar produced a malformed scalar")
	}
	var out [ScalarSize]byte
	copy(out[:], b)
	return out
}

// HashToGroup is RFC 9497 HashToGroup for P384-SHA384 (RFC 9380
// P384_XMD:SHA-384_SSWU_RO_), applied to a public token nonce.
func hashToGroup(msg []byte) *p384.Point {
	e := circlP384.HashToElement(msg, dstHashToGroup)
	b, err := e.MarshalBinary()
	if err != nil {
		panic("voprf: HashToGroup produced a malformed element")
	}
	p, err := p384.NewPoint().SetBytes(b)
	if err != nil {
		panic("voprf: HashToGroup produced an element off the curve")
	}
	return p
}

// randomScalar returns a uniform scalar in [1, n-1] by rejection sampling.
func randomScalar(rand io.Reader) ([ScalarSize]byte, error) {
	var b [ScalarSize]byte
	for range 128 {
		if _, err := io.ReadFull(rand, b[:]); err != nil {
			return b, err
		}
		n, err := bigmod.NewNat().SetBytes(b[:], orderN)
		if err != nil {
			continue // ≥ n; probability about 2^-190
		}
		if n.IsZero() == 1 {
			continue
		}
		return b, nil
	}
	return b, errBadRandom
}

var errBadRandom = pstderr.New(pstderr.Internal, "random source produced no usable scalar")

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
