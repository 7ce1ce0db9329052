package p384

import (
	"encoding/binary"
	"math/big"
	"math/bits"
)

// fe is an element of GF(p), p = 2^384 − 2^128 − 2^96 + 2^32 − 1, in
// Montgomery form a·R mod p with R = 2^384, as six little-endian 64-bit limbs,
// always fully reduced to [0, p).
type fe [6]uint64

// feP holds p's limbs, least significant first.
var feP = fe{
	0x00000000ffffffff, 0xffffffff00000000, 0xfffffffffffffffe,
	0xffffffffffffffff, 0xffffffffffffffff, 0xffffffffffffffff,
}

// Montgomery reduction uses m = t0·(−p^−1 mod 2^64) = t0·(2^32 + 1): p ≡
// 2^32 − 1 (mod 2^64), whose inverse is −(2^32 + 1).

// Constants derived once from their definitions (public values). Package
// variable initialisation runs them before anything that uses them.
var (
	feRR, feOne = montgomeryConstants()        // R^2 mod p and R mod p (1 in Montgomery form)
	feB         = feFromBigMont(mustHex(hexB)) // the curve coefficient b, Montgomery form
)

// Curve parameters from SEC 2 / FIPS 186-4 D.1.2.4.
const (
	hexP  = "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff"
	hexN  = "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973"
	hexB  = "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef"
	hexGx = "aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7"
	hexGy = "3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f"
)

func mustHex(s string) *big.Int {
	v, ok := new(big.Int).SetString(s, 16)
	if !ok {
		panic("p384: bad constant " + s)
	}
	return v
}

// feFromBig sets z to the limbs of v < 2^384 (no Montgomery conversion).
func feFromBig(v *big.Int) fe {
	var b [48]byte
	v.FillBytes(b[:])
	return feFromBE(&b)
}

func feFromBE(b *[48]byte) fe {
	var z fe
	for i := range z {
		z[i] = binary.BigEndian.Uint64(b[48-8*(i+1):])
	}
	return z
}

func montgomeryConstants() (rr, one fe) {
	p := mustHex(hexP)
	if feFromBig(p) != feP {
		panic("p384: limb constant of p disagrees with p")
	}
	r := new(big.Int).Lsh(big.NewInt(1), 384)
	return feFromBig(new(big.Int).Mod(new(big.Int).Mul(r, r), p)), feFromBig(new(big.Int).Mod(r, p))
}

// feFromBigMont returns the Montgomery form of v < p.
func feFromBigMont(v *big.Int) fe {
	t := feFromBig(v)
	var z fe
	feMul(&z, &t, &feRR)
	return z
}

// feMulGeneric sets z = x·y·R^−1 mod p: CIOS Montgomery multiplication,
// unrolled (the Go compiler keeps straight-line carry chains in registers and
// flags; loops it does not unroll), with the same reduction from p's shape as
// the assembly (see RED in field_amd64.s). It is constant time: no branches,
// and the final subtraction is a masked select.
func feMulGeneric(z, x, y *fe) {
	var t0, t1, t2, t3, t4, t5, t6, t7 uint64
	var hi, lo, c, b, m, mlo, mhi, v1, v2, v3 uint64
	x0, x1, x2, x3, x4, x5 := x[0], x[1], x[2], x[3], x[4], x[5]
	// Row 0: t += x·y[0].
	yi := y[0]
	c = 0
	hi, lo = bits.Mul64(x0, yi)
	lo, b = bits.Add64(lo, t0, 0)
	hi += b
	t0, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x1, yi)
	lo, b = bits.Add64(lo, t1, 0)
	hi += b
	t1, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x2, yi)
	lo, b = bits.Add64(lo, t2, 0)
	hi += b
	t2, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x3, yi)
	lo, b = bits.Add64(lo, t3, 0)
	hi += b
	t3, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x4, yi)
	lo, b = bits.Add64(lo, t4, 0)
	hi += b
	t4, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x5, yi)
	lo, b = bits.Add64(lo, t5, 0)
	hi += b
	t5, b = bits.Add64(lo, c, 0)
	c = hi + b
	t6, b = bits.Add64(t6, c, 0)
	t7 = b
	// t += m·p = m·2^384 − m·(2^128 + 2^96 − 2^32 + 1), which clears t0.
	m = t0 + t0<<32
	mlo, mhi = m<<32, m>>32
	_, b = bits.Sub64(m, mlo, 0)
	v1, b = bits.Sub64(mlo, mhi, b)
	v2, v3 = bits.Add64(m-b, mhi, 0)
	t6, b = bits.Add64(t6, m, 0)
	t7 += b
	t1, b = bits.Sub64(t1, v1, 0)
	t2, b = bits.Sub64(t2, v2, b)
	t3, b = bits.Sub64(t3, v3, b)
	t4, b = bits.Sub64(t4, 0, b)
	t5, b = bits.Sub64(t5, 0, b)
	t6, b = bits.Sub64(t6, 0, b)
	t7 -= b
	t0, t1, t2, t3, t4, t5, t6 = t1, t2, t3, t4, t5, t6, t7
	// Row 1: t += x·y[1].
	yi = y[1]
	c = 0
	hi, lo = bits.Mul64(x0, yi)
	lo, b = bits.Add64(lo, t0, 0)
	hi += b
	t0, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x1, yi)
	lo, b = bits.Add64(lo, t1, 0)
	hi += b
	t1, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x2, yi)
	lo, b = bits.Add64(lo, t2, 0)
	hi += b
	t2, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x3, yi)
	lo, b = bits.Add64(lo, t3, 0)
	hi += b
	t3, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x4, yi)
	lo, b = bits.Add64(lo, t4, 0)
	hi += b
	t4, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x5, yi)
	lo, b = bits.Add64(lo, t5, 0)
	hi += b
	t5, b = bits.Add64(lo, c, 0)
	c = hi + b
	t6, b = bits.Add64(t6, c, 0)
	t7 = b
	// t += m·p = m·2^384 − m·(2^128 + 2^96 − 2^32 + 1), which clears t0.
	m = t0 + t0<<32
	mlo, mhi = m<<32, m>>32
	_, b = bits.Sub64(m, mlo, 0)
	v1, b = bits.Sub64(mlo, mhi, b)
	v2, v3 = bits.Add64(m-b, mhi, 0)
	t6, b = bits.Add64(t6, m, 0)
	t7 += b
	t1, b = bits.Sub64(t1, v1, 0)
	t2, b = bits.Sub64(t2, v2, b)
	t3, b = bits.Sub64(t3, v3, b)
	t4, b = bits.Sub64(t4, 0, b)
	t5, b = bits.Sub64(t5, 0, b)
	t6, b = bits.Sub64(t6, 0, b)
	t7 -= b
	t0, t1, t2, t3, t4, t5, t6 = t1, t2, t3, t4, t5, t6, t7
	// Row 2: t += x·y[2].
	yi = y[2]
	c = 0
	hi, lo = bits.Mul64(x0, yi)
	lo, b = bits.Add64(lo, t0, 0)
	hi += b
	t0, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x1, yi)
	lo, b = bits.Add64(lo, t1, 0)
	hi += b
	t1, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x2, yi)
	lo, b = bits.Add64(lo, t2, 0)
	hi += b
	t2, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x3, yi)
	lo, b = bits.Add64(lo, t3, 0)
	hi += b
	t3, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x4, yi)
	lo, b = bits.Add64(lo, t4, 0)
	hi += b
	t4, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x5, yi)
	lo, b = bits.Add64(lo, t5, 0)
	hi += b
	t5, b = bits.Add64(lo, c, 0)
	c = hi + b
	t6, b = bits.Add64(t6, c, 0)
	t7 = b
	// t += m·p = m·2^384 − m·(2^128 + 2^96 − 2^32 + 1), which clears t0.
	m = t0 + t0<<32
	mlo, mhi = m<<32, m>>32
	_, b = bits.Sub64(m, mlo, 0)
	v1, b = bits.Sub64(mlo, mhi, b)
	v2, v3 = bits.Add64(m-b, mhi, 0)
	t6, b = bits.Add64(t6, m, 0)
	t7 += b
	t1, b = bits.Sub64(t1, v1, 0)
	t2, b = bits.Sub64(t2, v2, b)
	t3, b = bits.Sub64(t3, v3, b)
	t4, b = bits.Sub64(t4, 0, b)
	t5, b = bits.Sub64(t5, 0, b)
	t6, b = bits.Sub64(t6, 0, b)
	t7 -= b
	t0, t1, t2, t3, t4, t5, t6 = t1, t2, t3, t4, t5, t6, t7
	// Row 3: t += x·y[3].
	yi = y[3]
	c = 0
	hi, lo = bits.Mul64(x0, yi)
	lo, b = bits.Add64(lo, t0, 0)
	hi += b
	t0, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x1, yi)
	lo, b = bits.Add64(lo, t1, 0)
	hi += b
	t1, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x2, yi)
	lo, b = bits.Add64(lo, t2, 0)
	hi += b
	t2, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x3, yi)
	lo, b = bits.Add64(lo, t3, 0)
	hi += b
	t3, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x4, yi)
	lo, b = bits.Add64(lo, t4, 0)
	hi += b
	t4, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x5, yi)
	lo, b = bits.Add64(lo, t5, 0)
	hi += b
	t5, b = bits.Add64(lo, c, 0)
	c = hi + b
	t6, b = bits.Add64(t6, c, 0)
	t7 = b
	// t += m·p = m·2^384 − m·(2^128 + 2^96 − 2^32 + 1), which clears t0.
	m = t0 + t0<<32
	mlo, mhi = m<<32, m>>32
	_, b = bits.Sub64(m, mlo, 0)
	v1, b = bits.Sub64(mlo, mhi, b)
	v2, v3 = bits.Add64(m-b, mhi, 0)
	t6, b = bits.Add64(t6, m, 0)
	t7 += b
	t1, b = bits.Sub64(t1, v1, 0)
	t2, b = bits.Sub64(t2, v2, b)
	t3, b = bits.Sub64(t3, v3, b)
	t4, b = bits.Sub64(t4, 0, b)
	t5, b = bits.Sub64(t5, 0, b)
	t6, b = bits.Sub64(t6, 0, b)
	t7 -= b
	t0, t1, t2, t3, t4, t5, t6 = t1, t2, t3, t4, t5, t6, t7
	// Row 4: t += x·y[4].
	yi = y[4]
	c = 0
	hi, lo = bits.Mul64(x0, yi)
	lo, b = bits.Add64(lo, t0, 0)
	hi += b
	t0, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x1, yi)
	lo, b = bits.Add64(lo, t1, 0)
	hi += b
	t1, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x2, yi)
	lo, b = bits.Add64(lo, t2, 0)
	hi += b
	t2, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x3, yi)
	lo, b = bits.Add64(lo, t3, 0)
	hi += b
	t3, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x4, yi)
	lo, b = bits.Add64(lo, t4, 0)
	hi += b
	t4, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x5, yi)
	lo, b = bits.Add64(lo, t5, 0)
	hi += b
	t5, b = bits.Add64(lo, c, 0)
	c = hi + b
	t6, b = bits.Add64(t6, c, 0)
	t7 = b
	// t += m·p = m·2^384 − m·(2^128 + 2^96 − 2^32 + 1), which clears t0.
	m = t0 + t0<<32
	mlo, mhi = m<<32, m>>32
	_, b = bits.Sub64(m, mlo, 0)
	v1, b = bits.Sub64(mlo, mhi, b)
	v2, v3 = bits.Add64(m-b, mhi, 0)
	t6, b = bits.Add64(t6, m, 0)
	t7 += b
	t1, b = bits.Sub64(t1, v1, 0)
	t2, b = bits.Sub64(t2, v2, b)
	t3, b = bits.Sub64(t3, v3, b)
	t4, b = bits.Sub64(t4, 0, b)
	t5, b = bits.Sub64(t5, 0, b)
	t6, b = bits.Sub64(t6, 0, b)
	t7 -= b
	t0, t1, t2, t3, t4, t5, t6 = t1, t2, t3, t4, t5, t6, t7
	// Row 5: t += x·y[5].
	yi = y[5]
	c = 0
	hi, lo = bits.Mul64(x0, yi)
	lo, b = bits.Add64(lo, t0, 0)
	hi += b
	t0, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x1, yi)
	lo, b = bits.Add64(lo, t1, 0)
	hi += b
	t1, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x2, yi)
	lo, b = bits.Add64(lo, t2, 0)
	hi += b
	t2, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x3, yi)
	lo, b = bits.Add64(lo, t3, 0)
	hi += b
	t3, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x4, yi)
	lo, b = bits.Add64(lo, t4, 0)
	hi += b
	t4, b = bits.Add64(lo, c, 0)
	c = hi + b
	hi, lo = bits.Mul64(x5, yi)
	lo, b = bits.Add64(lo, t5, 0)
	hi += b
	t5, b = bits.Add64(lo, c, 0)
	c = hi + b
	t6, b = bits.Add64(t6, c, 0)
	t7 = b
	// t += m·p = m·2^384 − m·(2^128 + 2^96 − 2^32 + 1), which clears t0.
	m = t0 + t0<<32
	mlo, mhi = m<<32, m>>32
	_, b = bits.Sub64(m, mlo, 0)
	v1, b = bits.Sub64(mlo, mhi, b)
	v2, v3 = bits.Add64(m-b, mhi, 0)
	t6, b = bits.Add64(t6, m, 0)
	t7 += b
	t1, b = bits.Sub64(t1, v1, 0)
	t2, b = bits.Sub64(t2, v2, b)
	t3, b = bits.Sub64(t3, v3, b)
	t4, b = bits.Sub64(t4, 0, b)
	t5, b = bits.Sub64(t5, 0, b)
	t6, b = bits.Sub64(t6, 0, b)
	t7 -= b
	t0, t1, t2, t3, t4, t5, t6 = t1, t2, t3, t4, t5, t6, t7
	// t < 2p: subtract p once unless that borrows.
	d0, b := bits.Sub64(t0, feP[0], 0)
	d1, b := bits.Sub64(t1, feP[1], b)
	d2, b := bits.Sub64(t2, feP[2], b)
	d3, b := bits.Sub64(t3, feP[3], b)
	d4, b := bits.Sub64(t4, feP[4], b)
	d5, b := bits.Sub64(t5, feP[5], b)
	_, b = bits.Sub64(t6, 0, b)
	keep := -b // b = 1: t < p, keep t; b = 0: take t − p
	z[0] = (t0 & keep) | (d0 &^ keep)
	z[1] = (t1 & keep) | (d1 &^ keep)
	z[2] = (t2 & keep) | (d2 &^ keep)
	z[3] = (t3 & keep) | (d3 &^ keep)
	z[4] = (t4 & keep) | (d4 &^ keep)
	z[5] = (t5 & keep) | (d5 &^ keep)
}

// feAdd sets z = x + y mod p. (Unrolled: the Go compiler turns the
// straight-line carry chains into ADC/SBB sequences, loops it does not.)
func feAdd(z, x, y *fe) {
	t0, c := bits.Add64(x[0], y[0], 0)
	t1, c := bits.Add64(x[1], y[1], c)
	t2, c := bits.Add64(x[2], y[2], c)
	t3, c := bits.Add64(x[3], y[3], c)
	t4, c := bits.Add64(x[4], y[4], c)
	t5, c := bits.Add64(x[5], y[5], c)
	d0, b := bits.Sub64(t0, feP[0], 0)
	d1, b := bits.Sub64(t1, feP[1], b)
	d2, b := bits.Sub64(t2, feP[2], b)
	d3, b := bits.Sub64(t3, feP[3], b)
	d4, b := bits.Sub64(t4, feP[4], b)
	d5, b := bits.Sub64(t5, feP[5], b)
	_, b = bits.Sub64(c, 0, b)
	// b = 1: x + y < p, keep it; b = 0: take x + y − p.
	keep := -b
	z[0] = (t0 & keep) | (d0 &^ keep)
	z[1] = (t1 & keep) | (d1 &^ keep)
	z[2] = (t2 & keep) | (d2 &^ keep)
	z[3] = (t3 & keep) | (d3 &^ keep)
	z[4] = (t4 & keep) | (d4 &^ keep)
	z[5] = (t5 & keep) | (d5 &^ keep)
}

// feSub sets z = x − y mod p.
func feSub(z, x, y *fe) {
	t0, b := bits.Sub64(x[0], y[0], 0)
	t1, b := bits.Sub64(x[1], y[1], b)
	t2, b := bits.Sub64(x[2], y[2], b)
	t3, b := bits.Sub64(x[3], y[3], b)
	t4, b := bits.Sub64(x[4], y[4], b)
	t5, b := bits.Sub64(x[5], y[5], b)
	// On borrow add p back.
	mask := -b
	var c uint64
	z[0], c = bits.Add64(t0, feP[0]&mask, 0)
	z[1], c = bits.Add64(t1, feP[1]&mask, c)
	z[2], c = bits.Add64(t2, feP[2]&mask, c)
	z[3], c = bits.Add64(t3, feP[3]&mask, c)
	z[4], c = bits.Add64(t4, feP[4]&mask, c)
	z[5], _ = bits.Add64(t5, feP[5]&mask, c)
}

// feNeg sets z = −x mod p.
func feNeg(z, x *fe) {
	var zero fe
	feSub(z, &zero, x)
}

// feSelect sets z = x if cond == 1 and leaves z alone if cond == 0.
func feSelect(z, x *fe, cond uint64) {
	mask := -cond
	for j := range 6 {
		z[j] ^= (z[j] ^ x[j]) & mask
	}
}

// feIsZero returns 1 if x = 0 and 0 otherwise.
func feIsZero(x *fe) uint64 {
	var acc uint64
	for j := range 6 {
		acc |= x[j]
	}
	// acc == 0 ⇔ (acc | −acc) has its top bit clear.
	return 1 ^ ((acc | -acc) >> 63)
}

// feEqual returns 1 if x = y and 0 otherwise.
func feEqual(x, y *fe) uint64 {
	var acc uint64
	for j := range 6 {
		acc |= x[j] ^ y[j]
	}
	return 1 ^ ((acc | -acc) >> 63)
}

// feSetBytes decodes a big-endian 48-byte field element into Montgomery form.
// It returns false if the value is not below p.
func feSetBytes(z *fe, b []byte) bool {
	if len(b) != 48 {
		return false
	}
	t := feFromBE((*[48]byte)(b))
	var bw uint64
	for j := range 6 {
		_, bw = bits.Sub64(t[j], feP[j], bw)
	}
	if bw == 0 { // t ≥ p; the encoding is public
		return false
	}
	feMul(z, &t, &feRR)
	return true
}

// feBytes writes x's canonical big-endian encoding to out.
func feBytes(out []byte, x *fe) {
	var one = fe{1}
	var t fe
	feMul(&t, x, &one) // leave Montgomery form
	for i := range 6 {
		binary.BigEndian.PutUint64(out[48-8*(i+1):], t[i])
	}
}

func feSquareN(z, x *fe, n int) {
	*z = *x
	for range n {
		feSquare(z, z)
	}
}

// feChain computes the powers x^(2^255 − 1), x^(2^32 − 1) and x^(2^30 − 1)
// that both fixed exponents below are built from.
func feChain(x *fe) (x255, x32, x30 fe) {
	var x2, x3, x6, x12, x15, x60, x120, x240 fe
	feSquare(&x2, x)
	feMul(&x2, &x2, x) // 2^2 − 1
	feSquare(&x3, &x2)
	feMul(&x3, &x3, x) // 2^3 − 1
	feSquareN(&x6, &x3, 3)
	feMul(&x6, &x6, &x3)
	feSquareN(&x12, &x6, 6)
	feMul(&x12, &x12, &x6)
	feSquareN(&x15, &x12, 3)
	feMul(&x15, &x15, &x3)
	feSquareN(&x30, &x15, 15)
	feMul(&x30, &x30, &x15)
	feSquareN(&x32, &x30, 2)
	feMul(&x32, &x32, &x2)
	feSquareN(&x60, &x30, 30)
	feMul(&x60, &x60, &x30)
	feSquareN(&x120, &x60, 60)
	feMul(&x120, &x120, &x60)
	feSquareN(&x240, &x120, 120)
	feMul(&x240, &x240, &x120)
	feSquareN(&x255, &x240, 15)
	feMul(&x255, &x255, &x15)
	return x255, x32, x30
}

// feInvert sets z = x^−1 = x^(p−2) mod p (0 for x = 0), in constant time: a
// fixed addition chain for p − 2, whose binary form is 255 ones, a zero, 32
// ones, 64 zeros, 30 ones, a zero and a one.
func feInvert(z, x *fe) {
	t, x32, x30 := feChain(x)
	feSquareN(&t, &t, 1+32)
	feMul(&t, &t, &x32) // a zero, 32 ones
	feSquareN(&t, &t, 64+30)
	feMul(&t, &t, &x30) // 64 zeros, 30 ones
	feSquareN(&t, &t, 2)
	feMul(z, &t, x) // a zero and a one
}

// feSqrtCandidate sets z = x^((p+1)/4), a square root of x whenever x is a
// square (p ≡ 3 mod 4). (p+1)/4 is 255 ones, a zero, 32 ones, 63 zeros, a one
// and 30 zeros.
func feSqrtCandidate(z, x *fe) {
	t, x32, _ := feChain(x)
	feSquareN(&t, &t, 1+32)
	feMul(&t, &t, &x32)
	feSquareN(&t, &t, 64)
	feMul(&t, &t, x)
	feSquareN(z, &t, 30)
}
