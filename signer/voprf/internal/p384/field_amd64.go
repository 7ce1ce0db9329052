//go:build amd64 && !purego

package p384

import "golang.org/x/sys/cpu"

// useADX selects the MULX/ADCX/ADOX Montgomery multiplication. CPUs without
// BMI2 and ADX, and the purego build, use the portable Go code. Tests flip it
// to run every higher-level test on both paths.
var useADX = cpu.X86.HasBMI2 && cpu.X86.HasADX

// feMulADX is feMulGeneric in assembly (field_amd64.s).
//
//go:noescape
func feMulADX(z, x, y *fe)

// feSqrADX is feMulADX(z, x, x) with the squaring's shortcut.
//
//go:noescape
func feSqrADX(z, x *fe)

func feSquare(z, x *fe) {
	if useADX {
		feSqrADX(z, x)
		return
	}
	feMulGeneric(z, x, x)
}

func feMul(z, x, y *fe) {
	if useADX {
		feMulADX(z, x, y)
		return
	}
	feMulGeneric(z, x, y)
}
