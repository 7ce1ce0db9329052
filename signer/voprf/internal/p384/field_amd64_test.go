//go:build amd64 && !purego

package p384

import "testing"

func TestFieldMulADX(t *testing.T) {
	if !useADX {
		t.Skip("this CPU has no BMI2/ADX; the portable code is the only path")
	}
	checkMul(t, "feMulADX", feMulADX, randomFieldValues(t, 60))
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
