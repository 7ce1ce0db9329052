package p384

import (
	"bytes"
	"crypto/rand"
	"math/big"
	"testing"

	"filippo.io/nistec"
)

var bigN = mustHex(hexN)

func scalarFromBig(v *big.Int) [ScalarSize]byte {
	var k [ScalarSize]byte
	v.FillBytes(k[:])
	return k
}

// edgeScalars are the scalars most likely to expose a recoding or
// table-selection bug: 0, 1, 2, small values, n−1, n, n+1, 2^384−1, and
// patterns that make every Booth digit ±16, 0 or alternate.
func edgeScalars() [][ScalarSize]byte {
	one := big.NewInt(1)
	var out [][ScalarSize]byte
	for _, v := range []*big.Int{
		big.NewInt(0), one, big.NewInt(2), big.NewInt(15), big.NewInt(16), big.NewInt(17), big.NewInt(31), big.NewInt(32),
		new(big.Int).Sub(bigN, one), bigN, new(big.Int).Add(bigN, one), new(big.Int).Sub(bigN, big.NewInt(2)),
		new(big.Int).Rsh(bigN, 1),
		new(big.Int).Sub(new(big.Int).Lsh(one, 384), one),
		new(big.Int).Lsh(one, 383), new(big.Int).Lsh(one, 380), new(big.Int).Lsh(one, 379),
	} {
		out = append(out, scalarFromBig(v))
	}
	for _, pat := range []byte{0x55, 0xaa, 0x0f, 0xf0, 0x84, 0x21, 0x10, 0x80} {
		var k [ScalarSize]byte
		for i := range k {
			k[i] = pat
		}
		out = append(out, k)
	}
	return out
}

func randomScalars(t testing.TB, n int) [][ScalarSize]byte {
	out := make([][ScalarSize]byte, n)
	for i := range out {
		if _, err := rand.Read(out[i][:]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// refPoint is nistec's P-384, the reference implementation.
func refEncode(p *nistec.P384Point) []byte { return p.Bytes() }

// encode returns p's encoding in nistec's convention: {0} for the identity.
func encode(t testing.TB, p *Point) []byte {
	b, ok := p.AppendBytes(nil)
	if !ok {
		if p.IsIdentity() != 1 {
			t.Fatal("AppendBytes refused a non-identity point")
		}
		return []byte{0}
	}
	return b
}

// testPoints returns pairs of (ours, reference) points: G, −G, small
// multiples, the identity and random multiples of G.
func testPoints(t testing.TB, random int) ([]*Point, []*nistec.P384Point) {
	var ours []*Point
	var refs []*nistec.P384Point
	add := func(k [ScalarSize]byte) {
		r, err := nistec.NewP384Point().ScalarBaseMult(k[:])
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, r)
		if len(r.Bytes()) == 1 {
			ours = append(ours, NewPoint())
			return
		}
		p, err := NewPoint().SetBytes(r.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		ours = append(ours, p)
	}
	for _, v := range []int64{0, 1, 2, 3, 16, 17} {
		add(scalarFromBig(big.NewInt(v)))
	}
	add(scalarFromBig(new(big.Int).Sub(bigN, big.NewInt(1)))) // −G
	for _, k := range randomScalars(t, random) {
		add(k)
	}
	return ours, refs
}

func TestScalarMultMatchesNistec(t *testing.T) {
	withEachBackend(t, func(t *testing.T) {
		ours, refs := testPoints(t, 4)
		scalars := append(edgeScalars(), randomScalars(t, 8)...)
		for i := range ours {
			for _, k := range scalars {
				want, err := nistec.NewP384Point().ScalarMult(refs[i], k[:])
				if err != nil {
					t.Fatal(err)
				}
				got := NewPoint().scalarMult(ours[i], &k)
				if !bytes.Equal(encode(t, got), refEncode(want)) {
					t.Fatalf("ScalarMult(point %d, %x) differs from nistec", i, k)
				}
			}
		}
	})
}

func TestScalarBaseMultMatchesNistec(t *testing.T) {
	withEachBackend(t, func(t *testing.T) {
		for _, k := range append(edgeScalars(), randomScalars(t, 16)...) {
			want, err := nistec.NewP384Point().ScalarBaseMult(k[:])
			if err != nil {
				t.Fatal(err)
			}
			got := NewPoint().scalarBaseMult(&k)
			if !bytes.Equal(encode(t, got), refEncode(want)) {
				t.Fatalf("ScalarBaseMult(%x) differs from nistec", k)
			}
		}
	})
}

func TestAddDoubleMatchNistec(t *testing.T) {
	withEachBackend(t, func(t *testing.T) {
		ours, refs := testPoints(t, 4)
		for i := range ours {
			for j := range ours {
				want := nistec.NewP384Point().Add(refs[i], refs[j])
				got := NewPoint().Add(ours[i], ours[j])
				if !bytes.Equal(encode(t, got), refEncode(want)) {
					t.Fatalf("Add(%d, %d) differs from nistec", i, j)
				}
			}
			want := nistec.NewP384Point().Double(refs[i])
			if got := NewPoint().Double(ours[i]); !bytes.Equal(encode(t, got), refEncode(want)) {
				t.Fatalf("Double(%d) differs from nistec", i)
			}
			neg := NewPoint().Negate(ours[i])
			if NewPoint().Add(neg, ours[i]).IsIdentity() != 1 {
				t.Fatalf("P + (−P) is not the identity for point %d", i)
			}
		}
	})
}

func TestEncodingAndBatch(t *testing.T) {
	ours, refs := testPoints(t, 6)
	var batch []*Point
	var want []byte
	for i := range ours {
		if ours[i].IsIdentity() == 1 {
			if _, ok := ours[i].AppendBytes(nil); ok {
				t.Fatal("the identity has an uncompressed encoding")
			}
			continue
		}
		// A non-normalised representative of the same point.
		p := NewPoint().Add(NewPoint().Double(ours[i]), NewPoint().Negate(ours[i]))
		if p.Equal(ours[i]) != 1 {
			t.Fatalf("2P − P ≠ P for point %d", i)
		}
		batch = append(batch, p)
		want = append(want, refs[i].Bytes()...)
	}
	got, ok := AppendBatch([]byte("prefix"), batch)
	if !ok || !bytes.Equal(got, append([]byte("prefix"), want...)) {
		t.Fatal("AppendBatch differs from one-by-one encodings")
	}
	if _, ok := AppendBatch(nil, append(batch, NewPoint())); ok {
		t.Fatal("AppendBatch encoded the identity")
	}
	if NewPoint().SetGenerator().Equal(NewPoint()) != 0 {
		t.Fatal("G equals the identity")
	}
}

func TestSetBytesRejects(t *testing.T) {
	g, ok := NewPoint().SetGenerator().AppendBytes(nil)
	if !ok {
		t.Fatal("G has no encoding")
	}
	cases := map[string][]byte{
		"empty":      nil,
		"identity":   {0},
		"compressed": append([]byte{2}, g[1:49]...),
		"short":      g[:96],
		"long":       append(append([]byte(nil), g...), 0),
		"bad prefix": append([]byte{6}, g[1:]...),
	}
	offCurve := append([]byte(nil), g...)
	offCurve[96] ^= 1
	cases["off curve"] = offCurve
	xIsP := append([]byte(nil), g...)
	bigP.FillBytes(xIsP[1:49])
	cases["x = p"] = xIsP
	for name, b := range cases {
		if _, err := NewPoint().SetBytes(b); err == nil {
			t.Errorf("%s: SetBytes accepted it", name)
		}
	}
}

// FuzzP384ScalarMult compares ScalarMult and ScalarBaseMult with nistec for
// arbitrary scalars (including ≥ n) on the point m·G for an arbitrary m.
func FuzzP384ScalarMult(f *testing.F) {
	for _, k := range edgeScalars() {
		f.Add(k[:], []byte{1})
		f.Add(k[:], []byte{0xff})
	}
	f.Fuzz(func(t *testing.T, k, m []byte) {
		if len(k) > ScalarSize || len(m) > ScalarSize {
			return
		}
		var ks, ms [ScalarSize]byte
		copy(ks[ScalarSize-len(k):], k)
		copy(ms[ScalarSize-len(m):], m)
		ref, err := nistec.NewP384Point().ScalarBaseMult(ms[:])
		if err != nil {
			t.Fatal(err)
		}
		want, err := nistec.NewP384Point().ScalarMult(ref, ks[:])
		if err != nil {
			t.Fatal(err)
		}
		forEachBackend(func() {
			q := NewPoint().scalarBaseMult(&ms)
			if !bytes.Equal(encode(t, q), ref.Bytes()) {
				t.Fatalf("ScalarBaseMult(%x) differs from nistec", ms)
			}
			if got := NewPoint().scalarMult(q, &ks); !bytes.Equal(encode(t, got), want.Bytes()) {
				t.Fatalf("ScalarMult(%x·G, %x) differs from nistec", ms, ks)
			}
		})
	})
}

func BenchmarkPoint(b *testing.B) {
	k := randomScalars(b, 1)[0]
	p := NewPoint().scalarBaseMult(&k)
	b.Run("Double", func(b *testing.B) {
		cpuLoop(b, func() { p.Double(p) })
	})
	b.Run("Add", func(b *testing.B) {
		q := NewPoint().SetGenerator()
		cpuLoop(b, func() { p.Add(p, q) })
	})
	b.Run("ScalarMult", func(b *testing.B) {
		b.ReportAllocs()
		cpuLoop(b, func() { p.scalarMult(p, &k) })
	})
	b.Run("ScalarBaseMult", func(b *testing.B) {
		b.ReportAllocs()
		cpuLoop(b, func() { p.scalarBaseMult(&k) })
	})
	b.Run("AppendBytes", func(b *testing.B) {
		var buf []byte
		cpuLoop(b, func() { buf, _ = p.AppendBytes(buf[:0]) })
	})
}

// BenchmarkNistec is the reference's cost on the same machine in the same
// run, for comparison with BenchmarkPoint.
func BenchmarkNistec(b *testing.B) {
	k := randomScalars(b, 1)[0]
	p, _ := nistec.NewP384Point().ScalarBaseMult(k[:])
	b.Run("Double", func(b *testing.B) {
		cpuLoop(b, func() { p.Double(p) })
	})
	b.Run("ScalarMult", func(b *testing.B) {
		cpuLoop(b, func() { _, _ = p.ScalarMult(p, k[:]) })
	})
	b.Run("ScalarBaseMult", func(b *testing.B) {
		cpuLoop(b, func() { _, _ = p.ScalarBaseMult(k[:]) })
	})
}

func TestMultiScalarMultMatchesNistec(t *testing.T) {
	withEachBackend(t, func(t *testing.T) {
		ours, refs := testPoints(t, 5)
		for _, n := range []int{1, 2, len(ours)} {
			scalars := append(edgeScalars(), randomScalars(t, n)...)[len(edgeScalars())-n+1:][:n]
			want := nistec.NewP384Point()
			for i := range n {
				term, err := nistec.NewP384Point().ScalarMult(refs[i], scalars[i][:])
				if err != nil {
					t.Fatal(err)
				}
				want.Add(want, term)
			}
			got := NewPoint().MultiScalarMult(scalars, ours[:n])
			if !bytes.Equal(encode(t, got), want.Bytes()) {
				t.Fatalf("MultiScalarMult over %d terms differs from nistec", n)
			}
		}
		// All-zero scalars give the identity.
		if NewPoint().MultiScalarMult(make([][ScalarSize]byte, 2), ours[:2]).IsIdentity() != 1 {
			t.Fatal("MultiScalarMult with zero scalars is not the identity")
		}
	})
}

func TestScalarLengthChecked(t *testing.T) {
	for _, n := range []int{0, 47, 49} {
		if _, err := NewPoint().ScalarMult(NewPoint().SetGenerator(), make([]byte, n)); err == nil {
			t.Errorf("ScalarMult accepted a %d-byte scalar", n)
		}
		if _, err := NewPoint().ScalarBaseMult(make([]byte, n)); err == nil {
			t.Errorf("ScalarBaseMult accepted a %d-byte scalar", n)
		}
	}
	if b := NewPoint().Bytes(); !bytes.Equal(b, []byte{0}) {
		t.Errorf("identity Bytes() = %x", b)
	}
}

// BenchmarkMultiScalarMult is the composite M = Σ d_i·B_i of a batch of 10.
func BenchmarkMultiScalarMult(b *testing.B) {
	scalars := randomScalars(b, 10)
	points := make([]*Point, 10)
	for i := range points {
		points[i] = NewPoint().scalarBaseMult(&randomScalars(b, 1)[0])
	}
	b.ReportAllocs()
	cpuLoop(b, func() { NewPoint().MultiScalarMult(scalars, points) })
}

// The mixed addition's special cases: the accumulator equal to the table
// entry (doubling), its negation (identity), additions after an identity,
// and identity inputs.
func TestMultiScalarMultExceptional(t *testing.T) {
	g := NewPoint().SetGenerator()
	p := NewPoint().scalarBaseMult(&randomScalars(t, 1)[0])
	small := func(v int64) [ScalarSize]byte { return scalarFromBig(big.NewInt(v)) }
	nMinus := func(v int64) [ScalarSize]byte { return scalarFromBig(new(big.Int).Sub(bigN, big.NewInt(v))) }
	cases := []struct {
		name    string
		scalars [][ScalarSize]byte
		points  []*Point
	}{
		{"P+P", [][ScalarSize]byte{small(1), small(1)}, []*Point{p, p}},
		{"3P+3P", [][ScalarSize]byte{small(3), small(3)}, []*Point{p, p}},
		{"P−P", [][ScalarSize]byte{small(1), nMinus(1)}, []*Point{p, p}},
		{"P−P+5G", [][ScalarSize]byte{small(1), nMinus(1), small(5)}, []*Point{p, p, g}},
		{"7P−7P", [][ScalarSize]byte{small(7), nMinus(7)}, []*Point{p, p}},
		{"identity input", [][ScalarSize]byte{small(9), small(4)}, []*Point{NewPoint(), g}},
		{"only identity", [][ScalarSize]byte{small(9)}, []*Point{NewPoint()}},
		{"n·G", [][ScalarSize]byte{nMinus(0)}, []*Point{g}},
	}
	withEachBackend(t, func(t *testing.T) {
		for _, c := range cases {
			want := NewPoint()
			for i := range c.points {
				want.Add(want, NewPoint().scalarMult(c.points[i], &c.scalars[i]))
			}
			got := NewPoint().MultiScalarMult(c.scalars, c.points)
			if got.Equal(want) != 1 || got.IsIdentity() != want.IsIdentity() {
				t.Errorf("%s: MultiScalarMult differs from the sum of ScalarMults", c.name)
			}
		}
	})
}

// FuzzP384MultiScalarMult compares the variable-time MultiScalarMult with
// nistec on two terms, steering the second point to equal the first or its
// negation so that the mixed addition's doubling and cancellation branches
// get exercised.
func FuzzP384MultiScalarMult(f *testing.F) {
	f.Add([]byte{1}, []byte{1}, []byte{7}, []byte{9}, byte(0))
	f.Add([]byte{1}, []byte{1}, []byte{7}, []byte{7}, byte(1))
	f.Add([]byte{1}, []byte{1}, []byte{7}, []byte{7}, byte(2))
	f.Add([]byte{3}, []byte{0xff, 0xff}, []byte{5}, []byte{1}, byte(1))
	f.Fuzz(func(t *testing.T, s1, s2, m1, m2 []byte, mode byte) {
		if len(s1) > ScalarSize || len(s2) > ScalarSize || len(m1) > ScalarSize || len(m2) > ScalarSize {
			return
		}
		var k [2][ScalarSize]byte
		var m [2][ScalarSize]byte
		copy(k[0][ScalarSize-len(s1):], s1)
		copy(k[1][ScalarSize-len(s2):], s2)
		copy(m[0][ScalarSize-len(m1):], m1)
		copy(m[1][ScalarSize-len(m2):], m2)
		switch mode % 3 {
		case 1: // second point = first point
			m[1] = m[0]
		case 2: // second point = −first point
			neg := new(big.Int).Sub(bigN, new(big.Int).Mod(new(big.Int).SetBytes(m[0][:]), bigN))
			m[1] = scalarFromBig(new(big.Int).Mod(neg, bigN))
		}
		want := nistec.NewP384Point()
		var points []*Point
		for i := range 2 {
			ref, err := nistec.NewP384Point().ScalarBaseMult(m[i][:])
			if err != nil {
				t.Fatal(err)
			}
			term, err := nistec.NewP384Point().ScalarMult(ref, k[i][:])
			if err != nil {
				t.Fatal(err)
			}
			want.Add(want, term)
			points = append(points, NewPoint().scalarBaseMult(&m[i]))
		}
		forEachBackend(func() {
			got := NewPoint().MultiScalarMult(k[:], points)
			if !bytes.Equal(encode(t, got), want.Bytes()) {
				t.Fatalf("MultiScalarMult(%x, %x·G) differs from nistec", k, m)
			}
		})
	})
}
