package p384

import (
	"bytes"
	"crypto/rand"
	"math/big"
	"testing"
)

// feFromUniform must reduce any 72-byte value mod p, including ones whose low
// 48 bytes are ≥ p (which random inputs almost never give).
func TestFeFromUniform(t *testing.T) {
	inputs := [][]byte{bytes.Repeat([]byte{0xff}, 72), make([]byte, 72)}
	edge := make([]byte, 72)
	bigP.FillBytes(edge[24:]) // lo = p exactly
	inputs = append(inputs, edge)
	for range 50 {
		b := make([]byte, 72)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, b)
	}
	withEachBackend(t, func(t *testing.T) {
		for _, b := range inputs {
			var z fe
			feFromUniform(&z, b)
			var out [48]byte
			feBytes(out[:], &z)
			want := new(big.Int).Mod(new(big.Int).SetBytes(b), bigP)
			if got := new(big.Int).SetBytes(out[:]); got.Cmp(want) != 0 {
				t.Fatalf("feFromUniform(%x) = %x, want %x", b, got, want)
			}
		}
	})
}

func TestSetUniformBytesLength(t *testing.T) {
	for _, n := range []int{0, HashToFieldLen - 1, HashToFieldLen + 1} {
		if _, err := NewPoint().SetUniformBytes(make([]byte, n)); err == nil {
			t.Errorf("SetUniformBytes accepted %d bytes", n)
		}
	}
	p, err := NewPoint().SetUniformBytes(make([]byte, HashToFieldLen))
	if err != nil || p.IsIdentity() == 1 {
		t.Fatal("SetUniformBytes of zeros failed")
	}
	// The result is on the curve: its encoding decodes.
	if _, err := NewPoint().SetBytes(p.Bytes()); err != nil {
		t.Fatal("SetUniformBytes gave a point off the curve")
	}
}
