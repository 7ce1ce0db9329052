// Package signer is the PST issuer service: key custody policy, issuance,
// redemption and redemption records, between the HTTP layer (httpapi) and
// the two dependencies it must never trust blindly, the database (db) and
// the HSM (signer/hsm, behind the Custody interface).
//
// # What it owns
//
//   - The key life cycle. A VOPRF key is generated from the HSM's random
//     number generator, sealed under the token's key-encryption key (the
//     AAD binds key id, protocol and epoch) and stored only in sealed form
//     (keyadmin.go). It is published PublishLead before it signs, signs for
//     SigningPeriod, redeems until RedeemGrace after that, and is then
//     retired; RotationPolicy (policy.go) plans each step, Rotate runs it
//     under the database's rotation lock so one replica acts at a time, and
//     an operator can force a successor or retire a key early. The
//     redemption-record key is an ECDSA P-256 key that never leaves the HSM.
//   - The key set in memory (keyset.go): Reload unseals the keys of the
//     latest commitment, checks each against its stored public key, and
//     swaps them in atomically; Run polls for a new key set and runs the
//     rotation policy. Keys that leave the set, and every key at Close, are
//     wiped.
//   - The request path (service.go): Issue with the signing key, Redeem
//     against every live key, the commitment and JWKS as loaded, Ready.
//
// # What it must not do
//
// Speak HTTP or SQL, or reach PKCS#11 except through Custody. Hold a
// plaintext key anywhere but the in-memory key set. Store or log anything
// from an issuance next to anything from a redemption: a redemption row
// holds a hash of the token's nonce, the record id, the redeeming origin and
// the time, nothing an issuance saw.
//
// # Redeem fails closed, in this order
//
//  1. The key set and the record key must be loaded, or Unavailable.
//  2. The token is parsed and verified against a live key (voprf.Redeem):
//     a refusal here costs no database write and no HSM signature.
//  3. The client data is parsed and the record's claims are built.
//  4. The redemption row is inserted in its own transaction with
//     synchronous_commit on; a spent token is refused at this insert
//     (AlreadyRedeemed), and a concurrent redemption of the same token
//     waits on the row.
//  5. The record is signed in the HSM inside that transaction; a failed
//     signature rolls the insert back and leaves the token unspent.
//  6. The transaction commits durably; only then is the record returned.
//
// Any failure returns no record. A commit whose outcome is unknown returns
// Unavailable with the token possibly spent, which loses a token but never
// lets one redeem twice.
//
// # Errors
//
// Refusals carry a pstderr Kind (what the client did wrong, or Unavailable
// when a dependency is down); anything else is a plain error and means a bug.
// The service registers its own metrics on Config.Registerer.
package signer
