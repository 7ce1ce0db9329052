// Package voprf implements Private State Token v1 VOPRF (PST v1, BoringSSL's
// TRUST_TOKEN_pst_v1_voprf) exactly as Chrome speaks it: RFC 9497 VOPRF with
// suite P384-SHA384, one batched DLEQ proof per issuance, and PST's own byte
// framing for keys, issue requests and responses, tokens and redemption
// requests. docs/PROTOCOL.md is this package's specification: "The VOPRF",
// "The batched DLEQ proof", "Issuance", "Redemption" and "Client data".
//
// The package is pure: plain functions over bytes and scalars, no I/O, no
// long-lived state. Where the issuer key k comes from (an HSM-sealed envelope)
// is the business of package signer; here k is a value.
//
// Side channels: every multiplication by a secret scalar — the issuer key k,
// the proof nonce r, a client's blind — uses ScalarMult or ScalarBaseMult of
// the internal package p384, which are constant time (complete formulas,
// Booth windows read with masked table scans, MULX/ADX or portable Montgomery
// arithmetic with no secret-dependent branch; the argument is in that
// package's documentation), and every scalar operation mod n involving a
// secret uses filippo.io/bigmod, which is constant time. Only public values
// take variable-time code: the composite weights d_i, the challenge c and
// proof verification use p384's MultiScalarMult, and HashToGroup maps the
// public token nonce with p384's SetUniformBytes. filippo.io/nistec and circl
// remain as independent references in the tests.
//
// Refused input gives an *Error whose Kind (Malformed, BadPoint, BadCount,
// UnknownKey, InvalidToken, BadProof, Unsupported) is matched with errors.Is;
// its detail never contains secret or token bytes. The package depends on
// nothing else in pstd.
package voprf
