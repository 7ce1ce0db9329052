//go:build !amd64 || purego

package p384

func feMul(z, x, y *fe) { feMulGeneric(z, x, y) }

func feSquare(z, x *fe) { feMulGeneric(z, x, x) }
