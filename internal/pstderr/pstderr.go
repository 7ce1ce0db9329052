// Package pstderr is the small catalogue of error kinds that cross package
// boundaries in pstd, in the shape letsencrypt/boulder uses: a Kind is itself
// an error, so callers test with errors.Is(err, pstderr.Malformed), and an
// *Error carries a Kind plus a short detail that is safe to show a client.
//
// What a client did wrong, or a dependency that is down (Unavailable), gets a
// Kind; httpapi maps each Kind to an HTTP status and a stable reason in one
// place. Anything else is a plain Go error and means "internal": a bug, a 500,
// with the cause in the log and never in the answer.
//
// Details and messages must never contain secrets, tokens or nonces.
package pstderr

import (
	"errors"
	"fmt"
)

// Kind classifies an error for the HTTP layer. A Kind is an error, so that
// errors.Is(err, Malformed) matches any *Error of that kind.
type Kind int

const (
	// Malformed: the bytes do not parse (length, framing, base64, CBOR).
	Malformed Kind = iota + 1
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
	// DatabaseBehind: the database is behind the audit head the HSM holds
	// (restored from a backup, rolled back or truncated): spent tokens may
	// be missing from it, so nothing is issued or redeemed until an
	// operator fences (pstctl keys fence).
	DatabaseBehind
)

var kindNames = [...]string{
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
	DatabaseBehind:  "database-behind-hsm",
}

// InternalReason is the stable reason of an error without a Kind.
const InternalReason = "internal"

// String returns the stable machine-readable name of the kind.
func (k Kind) String() string {
	if k <= 0 || int(k) >= len(kindNames) {
		return InternalReason
	}
	return kindNames[k]
}

// Error makes a Kind usable as an errors.Is target.
func (k Kind) Error() string { return k.String() }

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

// Is makes errors.Is(err, k) true for any *Error of Kind k.
func (e *Error) Is(target error) bool {
	k, ok := target.(Kind)
	return ok && k == e.Kind
}

// New returns an *Error of kind k with a formatted detail.
func New(k Kind, format string, args ...any) *Error {
	return &Error{Kind: k, Detail: fmt.Sprintf(format, args...)}
}

// Wrap returns an *Error of kind k with detail and cause err.
func Wrap(k Kind, err error, detail string) *Error {
	return &Error{Kind: k, Detail: detail, Err: err}
}

// KindOf returns the Kind of the first *Error in err's chain; ok is false
// for a plain (internal) error.
func KindOf(err error) (k Kind, ok bool) {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind, true
	}
	return 0, false
}

// DetailOf returns the client-safe detail of err, or "internal error".
func DetailOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Detail
	}
	return "internal error"
}
