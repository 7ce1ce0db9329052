package p384

// MultiScalarMult sets p = Σ scalars[i]·points[i] and returns p. It is
// VARIABLE TIME: it skips zero windows and indexes tables by scalar digits.
// Use it for public scalars only (VOPRF composite weights, challenges, proof
// verification) and never with a secret.
//
// It is Straus's interleaved method with an unsigned sliding window of width
// msmWindow: all points share one chain of 384 doublings, and each point adds
// about 384/(w+1) table entries of its odd multiples.
func (p *Point) MultiScalarMult(scalars [][ScalarSize]byte, points []*Point) *Point {
	if len(scalars) != len(points) {
		panic("p384: MultiScalarMult needs one scalar per point")
	}
	terms := make([]msmTerm, len(points))
	top := -1
	for i := range terms {
		t := terms[i].recode(&scalars[i])
		if t < 0 {
			continue
		}
		top = max(top, t)
		terms[i].precompute(points[i])
	}
	var acc Point
	acc.SetIdentity()
	for j := top; j >= 0; j-- {
		acc.Double(&acc)
		for i := range terms {
			if d := terms[i].digits[j]; d != 0 {
				acc.Add(&acc, &terms[i].table[d>>1])
			}
		}
	}
	*p = acc
	return p
}

const (
	msmWindow    = 5
	msmTableSize = 1 << (msmWindow - 1) // odd multiples 1P, 3P, …, 31P
	scalarBits   = 8 * ScalarSize
)

// msmTerm holds one point's table of odd multiples and its recoded digits.
type msmTerm struct {
	table  [msmTableSize]Point
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
