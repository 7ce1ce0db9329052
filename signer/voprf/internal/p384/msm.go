package p384

import "sync"

// MultiScalarMult sets p = Σ scalars[i]·points[i] and returns p. It is
// VARIABLE TIME: it skips zero windows and indexes tables by scalar digits.
// Use it for public scalars only (VOPRF composite weights, challenges, proof
// verification) and never with a secret.
//
// It is Straus's interleaved method with an unsigned sliding window of width
// msmWindow: all points share one chain of 384 doublings, and each point adds
// about 384/(w+1) table entries of its odd multiples, which are brought to
// affine coordinates with one shared inversion so that each addition is a
// cheap mixed one. Identity points and zero scalars contribute nothing.
func (p *Point) MultiScalarMult(scalars [][ScalarSize]byte, points []*Point) *Point {
	if len(scalars) != len(points) {
		panic("p384: MultiScalarMult needs one scalar per point")
	}
	scratch := msmScratchPool.Get().(*msmScratch)
	defer msmScratchPool.Put(scratch)
	terms := scratch.terms(len(points))
	top := -1
	live := terms[:0] // terms with a non-zero scalar and a non-identity point
	for i := range terms {
		if points[i].IsIdentity() == 1 {
			continue
		}
		t := terms[i].recode(&scalars[i])
		if t < 0 {
			continue
		}
		top = max(top, t)
		terms[i].precompute(points[i])
		live = append(live, terms[i])
	}
	normalizeTables(live, scratch)

	// A Jacobian accumulator with mixed (Jacobian + affine) additions: 3M+5S
	// per doubling and 8M+3S per addition, against 8M+3S and 12M+2S for the
	// complete projective formulas.
	var acc jacobian
	inf := true
	for j := top; j >= 0; j-- {
		if !inf {
			acc.double()
		}
		for i := range live {
			if d := live[i].digits[j]; d != 0 {
				inf = acc.addAffineVarTime(inf, &live[i].affine[d>>1])
			}
		}
	}
	if inf {
		return p.SetIdentity()
	}
	acc.toProjective(p)
	return p
}

// msmScratch is MultiScalarMult's working memory (about 4 KiB per term),
// reused through a pool instead of being allocated per call. It holds only
// public values: the points, their multiples and the public scalars' digits.
type msmScratch struct {
	buf    []msmTerm
	prefix []fe
}

var msmScratchPool = sync.Pool{New: func() any { return new(msmScratch) }}

// terms returns n terms with zeroed digits (recode sets only non-zero ones).
func (s *msmScratch) terms(n int) []msmTerm {
	if cap(s.buf) < n {
		s.buf = make([]msmTerm, n)
	}
	t := s.buf[:n]
	for i := range t {
		t[i].digits = [scalarBits]uint8{}
	}
	return t
}

// affinePoint is (x, y) in Montgomery form, never the identity.
type affinePoint struct {
	x, y fe
}

// normalizeTables converts every table entry to affine coordinates with one
// shared field inversion (Montgomery's trick). Table entries are odd
// multiples jP, j < 32, of a non-identity point of prime order: never the
// identity, so every Z is invertible.
func normalizeTables(terms []msmTerm, scratch *msmScratch) {
	n := len(terms) * msmTableSize
	if n == 0 {
		return
	}
	z := func(k int) *fe { return &terms[k/msmTableSize].table[k%msmTableSize].z }
	if cap(scratch.prefix) < n {
		scratch.prefix = make([]fe, n)
	}
	prefix := scratch.prefix[:n]
	prefix[0] = *z(0)
	for k := 1; k < n; k++ {
		feMul(&prefix[k], &prefix[k-1], z(k))
	}
	var inv, zInv fe
	feInvert(&inv, &prefix[n-1])
	for k := n - 1; k >= 0; k-- {
		if k > 0 {
			feMul(&zInv, &inv, &prefix[k-1])
			feMul(&inv, &inv, z(k))
		} else {
			zInv = inv
		}
		pt := &terms[k/msmTableSize].table[k%msmTableSize]
		a := &terms[k/msmTableSize].affine[k%msmTableSize]
		feMul(&a.x, &pt.x, &zInv)
		feMul(&a.y, &pt.y, &zInv)
	}
}

// addAffineVarTime sets j = j + q for the accumulator j (the identity if inf)
// and returns whether the result is the identity. VARIABLE TIME: it branches
// on the coordinates for the identity and the doubling cases, so it is only
// for public data.
func (j *jacobian) addAffineVarTime(inf bool, q *affinePoint) bool {
	if inf {
		j.x, j.y, j.z = q.x, q.y, feOne
		return false
	}
	var zz, zzz, u2, s2, h, r fe
	feSquare(&zz, &j.z)
	feMul(&zzz, &zz, &j.z)
	feMul(&u2, &q.x, &zz)
	feMul(&s2, &q.y, &zzz)
	feSub(&h, &u2, &j.x)
	feSub(&r, &s2, &j.y)
	if feIsZero(&h) == 1 {
		if feIsZero(&r) == 1 { // j = q
			j.double()
			return false
		}
		return true // j = −q
	}
	var hh, hhh, v, t fe
	feSquare(&hh, &h)
	feMul(&hhh, &hh, &h)
	feMul(&v, &j.x, &hh)
	// X3 = r² − h³ − 2v
	feSquare(&t, &r)
	feSub(&t, &t, &hhh)
	feSub(&t, &t, &v)
	feSub(&t, &t, &v)
	// Y3 = r(v − X3) − Y1·h³
	feSub(&v, &v, &t)
	feMul(&v, &v, &r)
	feMul(&hhh, &hhh, &j.y)
	feSub(&j.y, &v, &hhh)
	j.x = t
	feMul(&j.z, &j.z, &h)
	return false
}

const (
	msmWindow    = 5
	msmTableSize = 1 << (msmWindow - 1) // odd multiples 1P, 3P, …, 31P
	scalarBits   = 8 * ScalarSize
)

// msmTerm holds one point's table of odd multiples and its recoded digits.
type msmTerm struct {
	table  [msmTableSize]Point
	affine [msmTableSize]affinePoint
	digits [scalarBits]uint8 // digits[j] odd ≤ 2^w−1, or 0; value Σ digits[j]·2^j
}

// recode fills digits with a left-to-right sliding-window recoding of s.
// It returns the index of the highest non-zero digit, or -1 if s is zero.
func (t *msmTerm) recode(s *[ScalarSize]byte) int {
	bit := func(i int) uint8 { return (s[ScalarSize-1-i/8] >> (i % 8)) & 1 }
	top := -1
	for i := scalarBits - 1; i >= 0; {
		if bit(i) == 0 {
			i--
			continue
		}
		j := max(i-msmWindow+1, 0)
		for bit(j) == 0 {
			j++
		}
		var v uint8
		for k := i; k >= j; k-- {
			v = v<<1 | bit(k)
		}
		t.digits[j] = v
		if top < 0 {
			top = j
		}
		i = j - 1
	}
	return top
}

func (t *msmTerm) precompute(p *Point) {
	t.table[0] = *p
	var twoP Point
	twoP.Double(p)
	for i := 1; i < msmTableSize; i++ {
		t.table[i].Add(&t.table[i-1], &twoP)
	}
}
