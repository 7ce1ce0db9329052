package p384

import (
	"crypto/rand"
	"math"
	"testing"
	"time"
)

// BenchmarkDudect is a manual, dudect-style leakage check (Reparaz, Balasch,
// Verbauwhede, "Dude, is my code constant time?"), not a pass/fail test: it
// times ScalarMult and ScalarBaseMult for two classes of secret scalars —
// a fixed, very unusual one (k = 1: every Booth digit but the last is zero,
// so every table read picks the identity) and fresh random ones — in random
// order, and reports Welch's t statistic between the classes as |t|. A
// constant-time implementation stays well below dudect's threshold of 4.5
// as the sample grows; a secret-dependent branch or table index drives |t|
// up quickly, as the variable-time control shows. Timing noise from other processes only lowers |t|, so run it
// on a quiet machine, for example:
//
//	go test -run '^$' -bench Dudect -benchtime 20000x ./signer/voprf/internal/p384/
func BenchmarkDudect(b *testing.B) {
	var fixed [ScalarSize]byte
	fixed[ScalarSize-1] = 1
	q := NewPoint().SetGenerator()
	q.Double(q)
	b.Run("ScalarMult", func(b *testing.B) {
		dudect(b, &fixed, func(k *[ScalarSize]byte) { NewPoint().scalarMult(q, k) })
	})
	b.Run("ScalarBaseMult", func(b *testing.B) {
		dudect(b, &fixed, func(k *[ScalarSize]byte) { NewPoint().scalarBaseMult(k) })
	})
	// The control: MultiScalarMult is variable time by design (public
	// scalars only), and the check must see it at once.
	b.Run("control=MultiScalarMult", func(b *testing.B) {
		points := []*Point{q}
		dudect(b, &fixed, func(k *[ScalarSize]byte) { NewPoint().MultiScalarMult([][ScalarSize]byte{*k}, points) })
	})
}

func dudect(b *testing.B, fixed *[ScalarSize]byte, f func(k *[ScalarSize]byte)) {
	var n [2]float64
	var mean, m2 [2]float64 // Welford's running mean and sum of squares
	var k [ScalarSize]byte
	var coin [1]byte
	for b.Loop() {
		if _, err := rand.Read(coin[:]); err != nil {
			b.Fatal(err)
		}
		class := int(coin[0] & 1)
		if class == 0 {
			k = *fixed
		} else if _, err := rand.Read(k[:]); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		f(&k)
		d := float64(time.Since(start).Nanoseconds())
		n[class]++
		delta := d - mean[class]
		mean[class] += delta / n[class]
		m2[class] += delta * (d - mean[class])
	}
	if n[0] < 2 || n[1] < 2 {
		return
	}
	v0, v1 := m2[0]/(n[0]-1), m2[1]/(n[1]-1)
	t := (mean[0] - mean[1]) / math.Sqrt(v0/n[0]+v1/n[1])
	b.ReportMetric(math.Abs(t), "|t|")
	b.ReportMetric(mean[0], "fixed-ns")
	b.ReportMetric(mean[1], "random-ns")
}
