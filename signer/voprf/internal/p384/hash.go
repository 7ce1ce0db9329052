package p384

import (
	"math/big"
)

// This file is the map from uniform bytes to a point for RFC 9380's suite
// P384_XMD:SHA-384_SSWU_RO_ (hash_to_field with L = 72, simplified SWU with
// Z = −12, cofactor 1). It is VARIABLE TIME: VOPRF hashes only public
// inputs (token nonces) to the curve.

// HashToFieldLen is the number of uniform bytes SetUniformBytes consumes:
// two field elements of L = 72 bytes (RFC 9380 §5 with k = 192).
const HashToFieldLen = 2 * 72

var (
	// feR3 is R^3 mod p: Montgomery-multiplying a raw h by it gives h·R^2,
	// the Montgomery form of h·2^384.
	feR3 = feFromBig(new(big.Int).Exp(big.NewInt(2), big.NewInt(3*384), mustHex(hexP)))
	// SSWU constants, Montgomery form.
	sswuZ       = feFromBigMont(new(big.Int).Sub(mustHex(hexP), big.NewInt(12))) // Z = −12
	sswuA       = feFromBigMont(new(big.Int).Sub(mustHex(hexP), big.NewInt(3)))  // A = −3
	sswuMinusBA = feFromBigMont(modDiv(mustHex(hexB), big.NewInt(3)))            // −B/A = B/3
	sswuBOverZA = feFromBigMont(modDiv(mustHex(hexB), big.NewInt(36)))           // B/(Z·A) = B/36
)

func modDiv(a, b *big.Int) *big.Int {
	p := mustHex(hexP)
	return new(big.Int).Mod(new(big.Int).Mul(a, new(big.Int).ModInverse(b, p)), p)
}

// feFromUniform sets z to OS2IP(b) mod p in Montgomery form for a 72-byte b:
// b = hi·2^384 + lo with hi < 2^192, and Montgomery multiplication accepts
// the unreduced lo < 2^384.
func feFromUniform(z *fe, b []byte) {
	var lo48, hi48 [48]byte
	copy(lo48[:], b[24:72])
	copy(hi48[24:], b[:24])
	lo, hi := feFromBE(&lo48), feFromBE(&hi48)
	var t fe
	feMul(z, &lo, &feRR)  // lo·R
	feMul(&t, &hi, &feR3) // hi·2^384·R
	feAdd(z, z, &t)
}

// gOf sets z = x^3 + A·x + B.
func gOf(z, x *fe) {
	var t fe
	feSquare(&t, x)
	feMul(&t, &t, x)
	var ax fe
	feMul(&ax, &sswuA, x)
	feAdd(&t, &t, &ax)
	feAdd(z, &t, &feB)
}

// sgn0 returns x mod 2 of the canonical value of x (RFC 9380 §4.1, m = 1).
func sgn0(x *fe) uint64 {
	var b [48]byte
	feBytes(b[:], x)
	return uint64(b[47] & 1)
}

// mapToCurveSSWU is RFC 9380 §6.6.2 simplified SWU for a = −3: it returns the
// affine point for u.
func mapToCurveSSWU(p *Point, u *fe) {
	var u2, tv1, t fe
	feSquare(&u2, u)
	feMul(&u2, &u2, &sswuZ) // Z·u²
	feSquare(&tv1, &u2)     // Z²·u⁴
	feAdd(&tv1, &tv1, &u2)  // Z²·u⁴ + Z·u²
	var x1 fe
	if feIsZero(&tv1) == 1 { // public input: branching is fine
		x1 = sswuBOverZA
	} else {
		feInvert(&tv1, &tv1)
		feAdd(&t, &tv1, &feOne)
		feMul(&x1, &sswuMinusBA, &t)
	}
	var gx, y, y2 fe
	gOf(&gx, &x1)
	feSqrtCandidate(&y, &gx)
	feSquare(&y2, &y)
	x := x1
	if feEqual(&y2, &gx) != 1 {
		feMul(&x, &u2, &x1) // Z·u²·x1
		gOf(&gx, &x)
		feSqrtCandidate(&y, &gx)
	}
	if sgn0(u) != sgn0(&y) {
		feNeg(&y, &y)
	}
	p.x, p.y, p.z = x, y, feOne
}

// SetUniformBytes sets p to hash_to_curve's map of uniform bytes b (the
// output of expand_message_xmd, HashToFieldLen bytes): the sum of the SWU
// maps of the two field elements. It is variable time; b must be public.
func (p *Point) SetUniformBytes(b []byte) (*Point, error) {
	if len(b) != HashToFieldLen {
		return nil, errUniformLength
	}
	var u0, u1 fe
	feFromUniform(&u0, b[:72])
	feFromUniform(&u1, b[72:])
	var q0, q1 Point
	mapToCurveSSWU(&q0, &u0)
	mapToCurveSSWU(&q1, &u1)
	return p.Add(&q0, &q1), nil
}
