package p384

import (
	"crypto/rand"
	"math/big"
	"testing"
)

var bigP = mustHex(hexP)

// bigR^-1 mod p, to read Montgomery limbs back as integers.
var bigRInv = new(big.Int).ModInverse(new(big.Int).Lsh(big.NewInt(1), 384), bigP)

func limbsToBig(x *fe) *big.Int {
	v := new(big.Int)
	for i := 5; i >= 0; i-- {
		v.Lsh(v, 64)
		v.Or(v, new(big.Int).SetUint64(x[i]))
	}
	return v
}

// fieldEdgeValues are raw limb values (not Montgomery) below p that stress
// carries: 0, 1, 2, p−1, p−2, 2^383, all-ones limbs below p, and limbs at p's
// word boundaries.
func fieldEdgeValues() []*big.Int {
	one := big.NewInt(1)
	vals := []*big.Int{
		big.NewInt(0), one, big.NewInt(2),
		new(big.Int).Sub(bigP, one), new(big.Int).Sub(bigP, big.NewInt(2)),
		new(big.Int).Lsh(one, 383), new(big.Int).Sub(new(big.Int).Lsh(one, 383), one),
		new(big.Int).Lsh(one, 128), new(big.Int).Lsh(one, 96), new(big.Int).Sub(new(big.Int).Lsh(one, 64), one),
		new(big.Int).Rsh(bigP, 1),
	}
	return vals
}

func randomFieldValues(t testing.TB, n int) []*big.Int {
	out := fieldEdgeValues()
	for range n {
		v, err := rand.Int(rand.Reader, bigP)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

// checkMul checks mul(x, y) = x·y·R^−1 mod p against math/big.
func checkMul(t *testing.T, name string, mul func(z, x, y *fe), vals []*big.Int) {
	t.Helper()
	for _, a := range vals {
		for _, b := range vals {
			x, y := feFromBig(a), feFromBig(b)
			var z fe
			mul(&z, &x, &y)
			want := new(big.Int).Mul(a, b)
			want.Mul(want, bigRInv).Mod(want, bigP)
			if got := limbsToBig(&z); got.Cmp(want) != 0 {
				t.Fatalf("%s(%x, %x) = %x, want %x", name, a, b, got, want)
			}
			// Aliasing: z = x.
			z = x
			mul(&z, &z, &y)
			if got := limbsToBig(&z); got.Cmp(want) != 0 {
				t.Fatalf("%s aliased (%x, %x) = %x, want %x", name, a, b, got, want)
			}
		}
	}
}

func TestFieldMulGeneric(t *testing.T) {
	checkMul(t, "feMulGeneric", feMulGeneric, randomFieldValues(t, 60))
}

func TestFieldMulDispatch(t *testing.T) {
	checkMul(t, "feMul", feMul, randomFieldValues(t, 60))
}

func TestFieldAddSubNeg(t *testing.T) {
	vals := randomFieldValues(t, 40)
	for _, a := range vals {
		for _, b := range vals {
			x, y := feFromBig(a), feFromBig(b)
			var s, d, n fe
			feAdd(&s, &x, &y)
			feSub(&d, &x, &y)
			feNeg(&n, &x)
			if want := new(big.Int).Mod(new(big.Int).Add(a, b), bigP); limbsToBig(&s).Cmp(want) != 0 {
				t.Fatalf("add(%x, %x) = %x, want %x", a, b, limbsToBig(&s), want)
			}
			if want := new(big.Int).Mod(new(big.Int).Sub(a, b), bigP); limbsToBig(&d).Cmp(want) != 0 {
				t.Fatalf("sub(%x, %x) = %x, want %x", a, b, limbsToBig(&d), want)
			}
			if want := new(big.Int).Mod(new(big.Int).Neg(a), bigP); limbsToBig(&n).Cmp(want) != 0 {
				t.Fatalf("neg(%x) = %x, want %x", a, limbsToBig(&n), want)
			}
			if got, want := feEqual(&x, &y), a.Cmp(b) == 0; (got == 1) != want {
				t.Fatalf("equal(%x, %x) = %d", a, b, got)
			}
		}
		x := feFromBig(a)
		if got := feIsZero(&x); (got == 1) != (a.Sign() == 0) {
			t.Fatalf("isZero(%x) = %d", a, got)
		}
	}
}

func TestFieldInvertAndBytes(t *testing.T) {
	for _, a := range randomFieldValues(t, 20) {
		var b [48]byte
		a.FillBytes(b[:])
		var x fe
		if !feSetBytes(&x, b[:]) {
			t.Fatalf("feSetBytes rejected %x < p", a)
		}
		var back [48]byte
		feBytes(back[:], &x)
		if back != b {
			t.Fatalf("bytes round trip of %x gave %x", a, back)
		}
		var inv fe
		feInvert(&inv, &x)
		feBytes(back[:], &inv)
		want := new(big.Int)
		if a.Sign() != 0 {
			want.ModInverse(a, bigP)
		}
		if got := new(big.Int).SetBytes(back[:]); got.Cmp(want) != 0 {
			t.Fatalf("invert(%x) = %x, want %x", a, got, want)
		}
	}
	// Values ≥ p are not field elements.
	for _, v := range []*big.Int{bigP, new(big.Int).Add(bigP, big.NewInt(1)), new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 384), big.NewInt(1))} {
		var b [48]byte
		v.FillBytes(b[:])
		var x fe
		if feSetBytes(&x, b[:]) {
			t.Fatalf("feSetBytes accepted %x ≥ p", v)
		}
	}
}

func BenchmarkFieldMul(b *testing.B) {
	x, y := feFromBig(mustHex(hexGx)), feFromBig(mustHex(hexGy))
	b.Run("dispatch", func(b *testing.B) {
		cpuLoop(b, func() { feMul(&x, &x, &y) })
	})
	b.Run("generic", func(b *testing.B) {
		cpuLoop(b, func() { feMulGeneric(&x, &x, &y) })
	})
	b.Run("square", func(b *testing.B) {
		cpuLoop(b, func() { feSquare(&x, &x) })
	})
	b.Run("invert", func(b *testing.B) {
		cpuLoop(b, func() { feInvert(&x, &x) })
	})
}

func BenchmarkFieldAdd(b *testing.B) {
	x, y := feFromBig(mustHex(hexGx)), feFromBig(mustHex(hexGy))
	b.Run("add", func(b *testing.B) {
		cpuLoop(b, func() { feAdd(&x, &x, &y) })
	})
	b.Run("sub", func(b *testing.B) {
		cpuLoop(b, func() { feSub(&x, &x, &y) })
	})
}

// mulReductionEdgeInputs returns pairs (x, y) for which the first Montgomery
// round's m = t0·(2^32 + 1) mod 2^64 lies in [2^64 − 2^33, 2^64), where the
// assembly's reduction carries out of m + (m >> 32) — a case random inputs hit
// with probability about 2^−31 — and pairs with m < 2^33, where its borrows
// behave differently. y0 = 1 makes t0 = x0 in the first round.
func mulReductionEdgeInputs(t *testing.T, n int) [][2]*big.Int {
	var out [][2]*big.Int
	var rnd [8]byte
	for len(out) < n {
		if _, err := rand.Read(rnd[:]); err != nil {
			t.Fatal(err)
		}
		r := uint64(rnd[0]) | uint64(rnd[1])<<8 | uint64(rnd[2])<<16 | uint64(rnd[3])<<24 | uint64(rnd[4]&1)<<32
		m := ^r // top of the range
		if len(out)%2 == 1 {
			m = r // bottom of the range
		}
		x0 := m * 0xffffffff00000001 // m·(2^32 + 1)^−1 = m·(1 − 2^32) mod 2^64
		x, err := rand.Int(rand.Reader, bigP)
		if err != nil {
			t.Fatal(err)
		}
		y, err := rand.Int(rand.Reader, bigP)
		if err != nil {
			t.Fatal(err)
		}
		mask := new(big.Int).Lsh(big.NewInt(1), 64)
		mask.Sub(mask, big.NewInt(1))
		x.AndNot(x, mask).Or(x, new(big.Int).SetUint64(x0))
		y.AndNot(y, mask).Or(y, big.NewInt(1))
		if x.Cmp(bigP) >= 0 || y.Cmp(bigP) >= 0 {
			continue
		}
		out = append(out, [2]*big.Int{x, y})
	}
	return out
}

func TestFieldMulReductionEdges(t *testing.T) {
	pairs := mulReductionEdgeInputs(t, 4000)
	for _, mul := range []struct {
		name string
		f    func(z, x, y *fe)
	}{{"feMul", feMul}, {"feMulGeneric", feMulGeneric}} {
		for _, p := range pairs {
			x, y := feFromBig(p[0]), feFromBig(p[1])
			var z fe
			mul.f(&z, &x, &y)
			want := new(big.Int).Mul(p[0], p[1])
			want.Mul(want, bigRInv).Mod(want, bigP)
			if got := limbsToBig(&z); got.Cmp(want) != 0 {
				t.Fatalf("%s(%x, %x) = %x, want %x", mul.name, p[0], p[1], got, want)
			}
		}
	}
}

func TestFieldSqrtCandidate(t *testing.T) {
	exp := new(big.Int).Rsh(new(big.Int).Add(bigP, big.NewInt(1)), 2)
	for _, a := range randomFieldValues(t, 20) {
		var b [48]byte
		a.FillBytes(b[:])
		var x, z fe
		if !feSetBytes(&x, b[:]) {
			t.Fatal("feSetBytes rejected a value below p")
		}
		feSqrtCandidate(&z, &x)
		feBytes(b[:], &z)
		if got, want := new(big.Int).SetBytes(b[:]), new(big.Int).Exp(a, exp, bigP); got.Cmp(want) != 0 {
			t.Fatalf("x^((p+1)/4) for %x = %x, want %x", a, got, want)
		}
	}
}
