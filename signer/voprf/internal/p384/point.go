package p384

import (
	"errors"
	"sync"
)

// ElementSize is the length of a SEC 1 uncompressed point encoding.
const ElementSize = 1 + 2*48

// ScalarSize is the length of a big-endian scalar.
const ScalarSize = 48

// Point is a point on P-384 in homogeneous projective coordinates
// (X : Y : Z), representing (X/Z, Y/Z), or the identity (0 : 1 : 0). The zero
// value is not a valid point: use NewPoint.
type Point struct {
	x, y, z fe
}

// NewPoint returns the identity.
func NewPoint() *Point { return &Point{y: feOne} }

// SetIdentity sets p to the identity and returns p.
func (p *Point) SetIdentity() *Point {
	*p = Point{y: feOne}
	return p
}

var generator = func() Point {
	var g Point
	var b [ElementSize]byte
	b[0] = 4
	mustHex(hexGx).FillBytes(b[1:49])
	mustHex(hexGy).FillBytes(b[49:])
	if _, err := g.SetBytes(b[:]); err != nil {
		panic("p384: generator is not on the curve")
	}
	return g
}()

// SetGenerator sets p to the base point G and returns p.
func (p *Point) SetGenerator() *Point {
	*p = generator
	return p
}

// Set sets p = q and returns p.
func (p *Point) Set(q *Point) *Point {
	*p = *q
	return p
}

var errBadEncoding = errors.New("p384: not an uncompressed encoding of a point on the curve")

// SetBytes decodes a 97-byte SEC 1 uncompressed point and checks that it is
// on the curve. It returns an error (leaving p alone) for any other length or
// form, for coordinates not below p and for points off the curve. The
// uncompressed form cannot encode the identity. The input is public.
func (p *Point) SetBytes(b []byte) (*Point, error) {
	if len(b) != ElementSize || b[0] != 4 {
		return nil, errBadEncoding
	}
	var x, y fe
	if !feSetBytes(&x, b[1:49]) || !feSetBytes(&y, b[49:]) {
		return nil, errBadEncoding
	}
	// y² = x³ − 3x + b
	var lhs, rhs, t fe
	feSquare(&lhs, &y)
	feSquare(&rhs, &x)
	feMul(&rhs, &rhs, &x)
	feAdd(&t, &x, &x)
	feAdd(&t, &t, &x)
	feSub(&rhs, &rhs, &t)
	feAdd(&rhs, &rhs, &feB)
	if feEqual(&lhs, &rhs) != 1 {
		return nil, errBadEncoding
	}
	p.x, p.y, p.z = x, y, feOne
	return p, nil
}

// IsIdentity reports whether p is the identity (Z = 0), in constant time:
// 1 if so, 0 otherwise.
func (p *Point) IsIdentity() int { return int(feIsZero(&p.z)) }

// Equal returns 1 if p and q are the same point and 0 otherwise, in constant
// time: X1·Z2 = X2·Z1 and Y1·Z2 = Y2·Z1.
func (p *Point) Equal(q *Point) int {
	var a, b, c, d fe
	feMul(&a, &p.x, &q.z)
	feMul(&b, &q.x, &p.z)
	feMul(&c, &p.y, &q.z)
	feMul(&d, &q.y, &p.z)
	return int(feEqual(&a, &b) & feEqual(&c, &d))
}

// Bytes returns p's uncompressed encoding, or the single byte 0 for the
// identity (as filippo.io/nistec does).
func (p *Point) Bytes() []byte {
	out, ok := p.AppendBytes(make([]byte, 0, ElementSize))
	if !ok {
		return []byte{0}
	}
	return out
}

// AppendBytes appends p's 97-byte uncompressed encoding to dst. It returns
// ok = false, and dst unchanged, if p is the identity (which has no such
// encoding). Whether p is the identity is treated as public.
func (p *Point) AppendBytes(dst []byte) (out []byte, ok bool) {
	if p.IsIdentity() == 1 {
		return dst, false
	}
	var zi fe
	feInvert(&zi, &p.z)
	return appendAffine(dst, p, &zi), true
}

func appendAffine(dst []byte, p *Point, zInv *fe) []byte {
	var x, y fe
	feMul(&x, &p.x, zInv)
	feMul(&y, &p.y, zInv)
	var b [ElementSize]byte
	b[0] = 4
	feBytes(b[1:49], &x)
	feBytes(b[49:], &y)
	return append(dst, b[:]...)
}

// AppendBatch appends the uncompressed encodings of points to dst, sharing
// one field inversion among all of them (Montgomery's trick). It returns ok =
// false, and dst unchanged, if any point is the identity.
func AppendBatch(dst []byte, points []*Point) (out []byte, ok bool) {
	n := len(points)
	if n == 0 {
		return dst, true
	}
	for _, p := range points {
		if p.IsIdentity() == 1 {
			return dst, false
		}
	}
	// prefix[i] = z_0 · … · z_i
	prefix := make([]fe, n)
	prefix[0] = points[0].z
	for i := 1; i < n; i++ {
		feMul(&prefix[i], &prefix[i-1], &points[i].z)
	}
	var inv fe
	feInvert(&inv, &prefix[n-1]) // (z_0 · … · z_{n−1})^−1
	zInv := make([]fe, n)
	for i := n - 1; i > 0; i-- {
		feMul(&zInv[i], &inv, &prefix[i-1]) // z_i^−1
		feMul(&inv, &inv, &points[i].z)     // (z_0 · … · z_{i−1})^−1
	}
	zInv[0] = inv
	for i, p := range points {
		dst = appendAffine(dst, p, &zInv[i])
	}
	return dst, true
}

// Negate sets p = −q and returns p.
func (p *Point) Negate(q *Point) *Point {
	p.x, p.z = q.x, q.z
	feNeg(&p.y, &q.y)
	return p
}

// condNegate negates p if cond == 1, in constant time.
func (p *Point) condNegate(cond uint64) {
	var ny fe
	feNeg(&ny, &p.y)
	feSelect(&p.y, &ny, cond)
}

// selectPoint sets p = q if cond == 1, in constant time.
func (p *Point) selectPoint(q *Point, cond uint64) {
	feSelect(&p.x, &q.x, cond)
	feSelect(&p.y, &q.y, cond)
	feSelect(&p.z, &q.z, cond)
}

// Add sets p = a + b and returns p. The formula is complete: it is correct
// for every pair of inputs, including the identity and a = ±b, and it runs
// the same operations on all of them. (Renes–Costello–Batina, algorithm 4.)
func (p *Point) Add(a, b *Point) *Point {
	var t0, t1, t2, t3, t4, x3, y3, z3 fe
	feMul(&t0, &a.x, &b.x)
	feMul(&t1, &a.y, &b.y)
	feMul(&t2, &a.z, &b.z)
	feAdd(&t3, &a.x, &a.y)
	feAdd(&t4, &b.x, &b.y)
	feMul(&t3, &t3, &t4)
	feAdd(&t4, &t0, &t1)
	feSub(&t3, &t3, &t4)
	feAdd(&t4, &a.y, &a.z)
	feAdd(&x3, &b.y, &b.z)
	feMul(&t4, &t4, &x3)
	feAdd(&x3, &t1, &t2)
	feSub(&t4, &t4, &x3)
	feAdd(&x3, &a.x, &a.z)
	feAdd(&y3, &b.x, &b.z)
	feMul(&x3, &x3, &y3)
	feAdd(&y3, &t0, &t2)
	feSub(&y3, &x3, &y3)
	feMul(&z3, &feB, &t2)
	feSub(&x3, &y3, &z3)
	feAdd(&z3, &x3, &x3)
	feAdd(&x3, &x3, &z3)
	feSub(&z3, &t1, &x3)
	feAdd(&x3, &t1, &x3)
	feMul(&y3, &feB, &y3)
	feAdd(&t1, &t2, &t2)
	feAdd(&t2, &t1, &t2)
	feSub(&y3, &y3, &t2)
	feSub(&y3, &y3, &t0)
	feAdd(&t1, &y3, &y3)
	feAdd(&y3, &t1, &y3)
	feAdd(&t1, &t0, &t0)
	feAdd(&t0, &t1, &t0)
	feSub(&t0, &t0, &t2)
	feMul(&t1, &t4, &y3)
	feMul(&t2, &t0, &y3)
	feMul(&y3, &x3, &z3)
	feAdd(&y3, &y3, &t2)
	feMul(&x3, &t3, &x3)
	feSub(&x3, &x3, &t1)
	feMul(&z3, &t4, &z3)
	feMul(&t1, &t3, &t0)
	feAdd(&z3, &z3, &t1)
	p.x, p.y, p.z = x3, y3, z3
	return p
}

// Double sets p = 2a and returns p, with the complete doubling formula
// (Renes–Costello–Batina, algorithm 6).
func (p *Point) Double(a *Point) *Point {
	var t0, t1, t2, t3, x3, y3, z3 fe
	feSquare(&t0, &a.x)
	feSquare(&t1, &a.y)
	feSquare(&t2, &a.z)
	feMul(&t3, &a.x, &a.y)
	feAdd(&t3, &t3, &t3)
	feMul(&z3, &a.x, &a.z)
	feAdd(&z3, &z3, &z3)
	feMul(&y3, &feB, &t2)
	feSub(&y3, &y3, &z3)
	feAdd(&x3, &y3, &y3)
	feAdd(&y3, &x3, &y3)
	feSub(&x3, &t1, &y3)
	feAdd(&y3, &t1, &y3)
	feMul(&y3, &x3, &y3)
	feMul(&x3, &x3, &t3)
	feAdd(&t3, &t2, &t2)
	feAdd(&t2, &t2, &t3)
	feMul(&z3, &feB, &z3)
	feSub(&z3, &z3, &t2)
	feSub(&z3, &z3, &t0)
	feAdd(&t3, &z3, &z3)
	feAdd(&z3, &z3, &t3)
	feAdd(&t3, &t0, &t0)
	feAdd(&t0, &t3, &t0)
	feSub(&t0, &t0, &t2)
	feMul(&t0, &t0, &z3)
	feAdd(&y3, &y3, &t0)
	feMul(&t0, &a.y, &a.z)
	feAdd(&t0, &t0, &t0)
	feMul(&z3, &t0, &z3)
	feSub(&x3, &x3, &z3)
	feMul(&z3, &t0, &t1)
	feAdd(&z3, &z3, &z3)
	feAdd(&z3, &z3, &z3)
	p.x, p.y, p.z = x3, y3, z3
	return p
}

// jacobian is a point in Jacobian coordinates (X : Y : Z), representing
// (X/Z², Y/Z³), used only for runs of doublings. The identity is kept as
// (1 : 1 : 0), which doubling maps to itself.
type jacobian struct {
	x, y, z fe
}

// fromProjective sets j to the projective point p: (X·Z, Y·Z², Z). The
// identity (Z = 0) becomes (1 : 1 : 0) by a masked select.
func (j *jacobian) fromProjective(p *Point) {
	var zz fe
	feSquare(&zz, &p.z)
	feMul(&j.x, &p.x, &p.z)
	feMul(&j.y, &p.y, &zz)
	j.z = p.z
	inf := feIsZero(&p.z)
	feSelect(&j.x, &feOne, inf)
	feSelect(&j.y, &feOne, inf)
}

// toProjective sets p to j: (X·Z, Y, Z³). (1 : 1 : 0) becomes (0 : 1 : 0).
func (j *jacobian) toProjective(p *Point) {
	var zz fe
	feSquare(&zz, &j.z)
	feMul(&p.x, &j.x, &j.z)
	p.y = j.y
	feMul(&p.z, &zz, &j.z)
}

// double sets j = 2j (dbl-2001-b for a = −3: 3M + 5S). On a curve of prime
// order no point has Y = 0, and (t² : t³ : 0) maps to (t⁸ : t¹² : 0), so
// there is no exceptional input and nothing to branch on.
func (j *jacobian) double() {
	var delta, gamma, beta, alpha, t0, t1 fe
	feSquare(&delta, &j.z)
	feSquare(&gamma, &j.y)
	feMul(&beta, &j.x, &gamma)
	feSub(&t0, &j.x, &delta)
	feAdd(&t1, &j.x, &delta)
	feMul(&alpha, &t0, &t1)
	feAdd(&t0, &alpha, &alpha)
	feAdd(&alpha, &alpha, &t0) // alpha = 3(X − δ)(X + δ)
	// Z3 = (Y + Z)² − γ − δ
	feAdd(&t0, &j.y, &j.z)
	feSquare(&t0, &t0)
	feSub(&t0, &t0, &gamma)
	feSub(&j.z, &t0, &delta)
	// X3 = α² − 8β
	feAdd(&beta, &beta, &beta)
	feAdd(&beta, &beta, &beta) // 4β
	feSquare(&j.x, &alpha)
	feAdd(&t0, &beta, &beta)
	feSub(&j.x, &j.x, &t0)
	// Y3 = α(4β − X3) − 8γ²
	feSub(&t0, &beta, &j.x)
	feMul(&t0, &t0, &alpha)
	feSquare(&gamma, &gamma)
	feAdd(&gamma, &gamma, &gamma)
	feAdd(&gamma, &gamma, &gamma)
	feAdd(&gamma, &gamma, &gamma) // 8γ²
	feSub(&j.y, &t0, &gamma)
}

// Scalar multiplication by Booth-recoded signed 5-bit windows.
const (
	window     = 5
	numWindows = (8*ScalarSize)/window + 1 // 77 windows cover bits 0…384
	tableSize  = 1 << (window - 1)         // multiples 1P…16P
)

// scalarBit returns bit i of the big-endian scalar k, or 0 outside [0, 384).
// i is public; the bit is not, and no branch or address depends on it.
func scalarBit(k *[ScalarSize]byte, i int) uint64 {
	if i < 0 || i >= 8*ScalarSize {
		return 0
	}
	return uint64(k[ScalarSize-1-i/8]>>(i%8)) & 1
}

// boothDigit returns the magnitude and sign (1 for negative) of window w's
// signed digit d_w = −16·b(5w+4) + 8·b(5w+3) + 4·b(5w+2) + 2·b(5w+1) +
// b(5w) + b(5w−1), in [−16, 16]; Σ d_w·32^w = k. Branch-free.
func boothDigit(k *[ScalarSize]byte, w int) (abs, neg uint64) {
	var bitsW uint64 // b(5w−1) … b(5w+4) as bits 0…5
	for t := range window + 1 {
		bitsW |= scalarBit(k, window*w-1+t) << t
	}
	d := int64(bitsW>>1) + int64(bitsW&1) - int64(bitsW>>window)<<window
	neg = uint64(d) >> 63
	abs = uint64((d ^ -int64(neg)) + int64(neg))
	return abs, neg
}

// ctEq returns 1 if a == b and 0 otherwise, for a, b < 2^63, without
// branches.
func ctEq(a, b uint64) uint64 {
	x := a ^ b
	return 1 ^ ((x | -x) >> 63)
}

// lookup sets p to table[abs−1], or to the identity if abs = 0, reading every
// entry.
func (p *Point) lookup(table *[tableSize]Point, abs uint64) {
	p.SetIdentity()
	for j := range table {
		p.selectPoint(&table[j], ctEq(uint64(j+1), abs))
	}
}

var (
	errScalarLength  = errors.New("p384: scalar is not 48 bytes")
	errUniformLength = errors.New("p384: hash_to_field needs 144 uniform bytes")
)

// ScalarMult sets p = k·q, in constant time in k, and returns p. k is a
// 48-byte big-endian integer; values ≥ n are allowed (the result is then
// (k mod n)·q, as q has order n). Any other length is an error.
func (p *Point) ScalarMult(q *Point, k []byte) (*Point, error) {
	if len(k) != ScalarSize {
		return nil, errScalarLength
	}
	return p.scalarMult(q, (*[ScalarSize]byte)(k)), nil
}

func (p *Point) scalarMult(q *Point, k *[ScalarSize]byte) *Point {
	var table [tableSize]Point
	table[0] = *q
	table[1].Double(q)
	for j := 2; j < tableSize; j++ {
		table[j].Add(&table[j-1], q)
	}
	var acc, t Point
	var j jacobian
	abs, neg := boothDigit(k, numWindows-1)
	acc.lookup(&table, abs)
	acc.condNegate(neg)
	for w := numWindows - 2; w >= 0; w-- {
		// 32·acc: five doublings in Jacobian coordinates (3M+5S each instead
		// of the complete formula's 8M+3S), then back for the addition.
		j.fromProjective(&acc)
		for range window {
			j.double()
		}
		j.toProjective(&acc)
		abs, neg = boothDigit(k, w)
		t.lookup(&table, abs)
		t.condNegate(neg)
		acc.Add(&acc, &t)
	}
	*p = acc
	return p
}

// baseTable[w][j] = (j+1)·32^w·G, so that k·G = Σ_w d_w·32^w·G needs one table
// lookup and one addition per window and no doublings. 77·16 points, 216 KiB,
// built on first use.
var (
	baseTableOnce sync.Once
	baseTable     *[numWindows][tableSize]Point
)

func buildBaseTable() {
	t := new([numWindows][tableSize]Point)
	base := generator
	for w := range numWindows {
		t[w][0] = base
		for j := 1; j < tableSize; j++ {
			t[w][j].Add(&t[w][j-1], &base)
		}
		for range window {
			base.Double(&base)
		}
	}
	baseTable = t
}

// ScalarBaseMult sets p = k·G, in constant time in k, and returns p. k is as
// for ScalarMult.
func (p *Point) ScalarBaseMult(k []byte) (*Point, error) {
	if len(k) != ScalarSize {
		return nil, errScalarLength
	}
	return p.scalarBaseMult((*[ScalarSize]byte)(k)), nil
}

func (p *Point) scalarBaseMult(k *[ScalarSize]byte) *Point {
	baseTableOnce.Do(buildBaseTable)
	var acc, t Point
	acc.SetIdentity()
	for w := range numWindows {
		abs, neg := boothDigit(k, w)
		t.lookup(&baseTable[w], abs)
		t.condNegate(neg)
		acc.Add(&acc, &t)
	}
	*p = acc
	return p
}
