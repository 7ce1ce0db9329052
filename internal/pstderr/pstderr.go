// Package pstderr is the small catalogue of error kinds that cross package
// boundaries in pstd. Protocol and service code wrap what a client did wrong
// (or a dependency that is down) in an *Error with a Kind; httpapi maps each
// Kind to an HTTP status and a stable machine-readable reason in one place.
// A plain error without a Kind means "internal".
//
// Reasons and messages must never contain secrets, tokens or nonces.
package pstderr

import (
	"errors"
	"fmt"
)

// Kind classifies an error for the HTTP layer.
type Kind int

const (
	// Internal is the zero Kind: a bug or an unexpected failure.
	Internal Kind = iota
	// Malformed: the bytes do not parse (length, framing, base64, CBOR).
	Malformed
	// BadPoint: a group element is off the curve, the identity, or badly encoded.
	BadPoint
	// BadCount: an issuance count of 0 or above the allowed batch size.
	BadCount
	// UnknownKey: a key id the issuer does not hold (or no longer publishes).
	UnknownKey
	// InvalidToken: a well-formed token that does not verify.
	InvalidToken
	// BadProof: a DLEQ proof that does not verify (client side).
	BadProof
	// AlreadyRedeemed: the token was redeemed before (double spend).
	AlreadyRedeemed
	// Unsupported: an unknown or missing protocol version.
	Unsupported
	// Denied: the issuance policy refused the request.
	Denied
	// RateLimited: the issuance policy refused the request for now.
	RateLimited
	// Unavailable: a dependency (database, HSM, keys) is not usable; fail closed.
	Unavailable
)

var kindNames = [...]string{
	Internal:        "internal",
	Malformed:       "malformed",
	BadPoint:        "bad-point",
	BadCount:        "bad-count",
	UnknownKey:      "unknown-key",
	InvalidToken:    "invalid-token",
	BadProof:        "bad-proof",
	AlreadyRedeemed: "already-redeemed",
	Unsupported:     "unsupported-version",
	Denied:          "denied",
	RateLimited:     "rate-limited",
	Unavailable:     "unavailable",
}

// String returns the stable machine-readable name of the kind.
func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return "internal"
	}
	return kindNames[k]
}

// Error is an error with a Kind and a short, client-safe detail.
type Error struct {
	Kind   Kind
	Detail string // short, safe to show to a client
	Err    error  // optional cause, for logs only
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Kind, e.Detail, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Kind, e.Detail)
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, &Error{Kind: k}) match any *Error of kind k.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Detail == "" && t.Err == nil && t.Kind == e.Kind
}

// New returns an *Error of kind k with a formatted detail.
func New(k Kind, format string, args ...any) *Error {
	return &Error{Kind: k, Detail: fmt.Sprintf(format, args...)}
}

// Wrap returns an *Error of kind k with detail and cause err.
func Wrap(k Kind, err error, detail string) *Error {
	return &Error{Kind: k, Detail: detail, Err: err}
}

// KindOf returns the Kind of the first *Error in err's chain, or Internal.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return Internal
}

// DetailOf returns the client-safe detail of err, or "internal error".
func DetailOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Detail
	}
	return "internal error"
}

// Sentinel values for errors.Is.
var (
	ErrMalformed       = &Error{Kind: Malformed}
	ErrBadPoint        = &Error{Kind: BadPoint}
	ErrBadCount        = &Error{Kind: BadCount}
	ErrUnknownKey      = &Error{Kind: UnknownKey}
	ErrInvalidToken    = &Error{Kind: InvalidToken}
	ErrBadProof        = &Error{Kind: BadProof}
	ErrAlreadyRedeemed = &Error{Kind: AlreadyRedeemed}
	ErrUnsupported     = &Error{Kind: Unsupported}
	ErrDenied          = &Error{Kind: Denied}
	ErrRateLimited     = &Error{Kind: RateLimited}
	ErrUnavailable     = &Error{Kind: Unavailable}
)
