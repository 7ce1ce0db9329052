package voprf

import (
	"errors"
	"fmt"
)

// Kind says what was wrong with bytes handed to this package. A Kind is an
// error, so callers test with errors.Is(err, voprf.Malformed). The package
// depends on nothing else in pstd: the issuer service maps these kinds to
// its own error catalogue. Failures that are not the input's fault (a
// random source that fails, an impossible arithmetic result) are plain
// errors.
type Kind int

const (
	// Malformed: the bytes do not parse (length, framing, CBOR, JSON).
	Malformed Kind = iota + 1
	// BadPoint: a group element is off the curve, the identity, or not in
	// the uncompressed form.
	BadPoint
	// BadCount: an issuance count of 0 or above the allowed batch size.
	BadCount
	// UnknownKey: a key id that is not one of the given keys.
	UnknownKey
	// InvalidToken: a well-formed token that does not verify.
	InvalidToken
	// BadProof: a DLEQ proof that does not verify (client side).
	BadProof
	// Unsupported: a commitment without the protocol version this package speaks.
	Unsupported
	// KeyWiped: the private key was wiped (rotated out or shut down).
	KeyWiped
)

var kindNames = [...]string{
	Malformed:    "malformed",
	BadPoint:     "bad point",
	BadCount:     "bad count",
	UnknownKey:   "unknown key",
	InvalidToken: "invalid token",
	BadProof:     "bad proof",
	Unsupported:  "unsupported",
	KeyWiped:     "key wiped",
}

func (k Kind) Error() string {
	if k <= 0 || int(k) >= len(kindNames) {
		return "voprf error"
	}
	return kindNames[k]
}

// Error is a refusal of some input: its Kind and a short detail that names
// no secret and quotes no input bytes, so it is safe to show a client.
type Error struct {
	Kind   Kind
	Detail string
}

func (e *Error) Error() string { return e.Detail }

// Is makes errors.Is(err, k) true for any *Error of Kind k.
func (e *Error) Is(target error) bool {
	k, ok := target.(Kind)
	return ok && k == e.Kind
}

func newError(k Kind, format string, args ...any) *Error {
	return &Error{Kind: k, Detail: fmt.Sprintf(format, args...)}
}

// KindOf returns the Kind of the first *Error in err's chain; ok is false
// for any other error.
func KindOf(err error) (k Kind, ok bool) {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind, true
	}
	return 0, false
}
