//go:build amd64 && !purego

package p384

import "testing"

func TestFieldMulADX(t *testing.T) {
	if !useADX {
		t.Skip("this CPU has no BMI2/ADX; the portable code is the only path")
	}
	checkMul(t, "feMulADX", feMulADX, randomFieldValues(t, 60))
}

func TestFieldSqrADX(t *testing.T) {
	if !useADX {
		t.Skip("this CPU has no BMI2/ADX; the portable code is the only path")
	}
	sq := func(z, x, y *fe) { feSqrADX(z, x) }
	vals := randomFieldValues(t, 300)
	// x = y for every pair: compare the squaring with the multiplication.
	for _, a := range vals {
		x := feFromBig(a)
		var got, want fe
		sq(&got, &x, &x)
		feMulGeneric(&want, &x, &x)
		if got != want {
			t.Fatalf("feSqrADX(%x) = %x, want %x", a, got, want)
		}
		sq(&x, &x, &x) // aliasing
		if x != want {
			t.Fatalf("feSqrADX aliased (%x) = %x, want %x", a, x, want)
		}
	}
	// All-ones limbs and values near p maximise every carry.
	for _, pair := range mulReductionEdgeInputs(t, 2000) {
		for _, a := range pair {
			x := feFromBig(a)
			var got, want fe
			sq(&got, &x, &x)
			feMulGeneric(&want, &x, &x)
			if got != want {
				t.Fatalf("feSqrADX(%x) = %x, want %x", a, got, want)
			}
		}
	}
}

// withEachBackend runs f once with the assembly (where the CPU has it) and
// once with the portable field multiplication.
func withEachBackend(t *testing.T, f func(t *testing.T)) {
	saved := useADX
	t.Cleanup(func() { useADX = saved })
	if saved {
		t.Run("adx", f)
	}
	useADX = false
	t.Run("generic", f)
	useADX = saved
}

// forEachBackend calls f with the assembly (where the CPU has it) and with
// the portable field multiplication, for fuzz targets (which cannot t.Run).
func forEachBackend(f func()) {
	saved := useADX
	defer func() { useADX = saved }()
	if saved {
		f()
	}
	useADX = false
	f()
}
