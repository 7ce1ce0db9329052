package rp

import (
	"errors"
	"fmt"
)

// Header-level errors: the whole Sec-Redemption-Record header is unusable.
var (
	// ErrMalformedHeader: the header is not an RFC 8941 list of sf-string
	// issuer origins each carrying an sf-string redemption-record parameter.
	ErrMalformedHeader = errors.New("rp: malformed Sec-Redemption-Record header")
	// ErrHeaderTooLarge: the header exceeds MaxHeaderBytes. It is also an
	// ErrMalformedHeader, so callers that only care about "unusable" need
	// check one error.
	ErrHeaderTooLarge = fmt.Errorf("%w: larger than %d bytes", ErrMalformedHeader, MaxHeaderBytes)
)

// Per-record errors: one entry of the header (or one VerifyRecord call) failed.
// Every error the verifier returns wraps exactly one of these kinds (plus,
// for ErrUnknownKID after a failed refetch, ErrJWKSUnavailable), so
// errors.Is selects the kind and the message carries the detail.
var (
	// ErrUntrustedIssuer: the issuer origin is not configured in the Verifier.
	// Not an attack in itself: a browser sends records of every issuer the
	// page asked for, and a site simply ignores issuers it does not know.
	ErrUntrustedIssuer = errors.New("rp: issuer not trusted")
	// ErrMalformed: the record is not a compact JWS of the pstd record format
	// (bad framing, base64, JSON, a missing or mistyped claim or header).
	ErrMalformed = errors.New("rp: malformed redemption record")
	// ErrBadAlgorithm: the JWS "alg" is not ES256 (HS256, "none", RS256 …).
	ErrBadAlgorithm = errors.New("rp: redemption record algorithm not ES256")
	// ErrWrongType: the JWS "typ" is not pst-rr+jwt, so the token is some
	// other JWT the issuer signed and must not be accepted as a record.
	ErrWrongType = errors.New("rp: JWS typ is not " + RecordType)
	// ErrUnknownKID: the "kid" is not in the issuer's JWKS, even after the
	// (rate-limited) refetch that picks up rotated keys.
	ErrUnknownKID = errors.New("rp: redemption record key id not in the issuer's JWKS")
	// ErrBadSignature: the signature does not verify under the kid's key.
	ErrBadSignature = errors.New("rp: redemption record signature invalid")
	// ErrWrongIssuer: the "iss" claim is not the origin the record came under.
	ErrWrongIssuer = errors.New("rp: redemption record iss does not match its issuer origin")
	// ErrExpired: "exp" has passed (beyond the allowed clock skew).
	ErrExpired = errors.New("rp: redemption record expired")
	// ErrNotYetValid: "iat" (or "nbf") lies in the future beyond the skew.
	ErrNotYetValid = errors.New("rp: redemption record not yet valid")
	// ErrAudienceMismatch: "aud" is none of the Verifier's audiences, i.e.
	// the record was redeemed for another site and replayed here.
	ErrAudienceMismatch = errors.New("rp: redemption record audience not accepted")
	// ErrJWKSUnavailable: the issuer's JWKS could not be fetched or parsed
	// and no usable cached copy exists.
	ErrJWKSUnavailable = errors.New("rp: issuer JWKS unavailable")
)

// EntryError is the failure of one entry of a Sec-Redemption-Record header.
// It unwraps to the per-record kind (ErrExpired, ErrUntrustedIssuer, …).
type EntryError struct {
	Index  int    // position of the entry in the header list
	Issuer string // issuer origin as sent by the browser
	Err    error
}

func (e *EntryError) Error() string {
	return fmt.Sprintf("rp: entry %d (issuer %q): %v", e.Index, e.Issuer, e.Err)
}

func (e *EntryError) Unwrap() error { return e.Err }
