// Package auditlog is the audit log's evidence format: the canonical bytes of
// an event and of a checkpoint, the hash chain, the signatures made by the
// HSM-held audit key, the export bundle, and the verifier. It does no I/O and
// depends on nothing else in pstd, so an auditor's copy of `pstctl audit
// verify --bundle` needs no database, no HSM and no settings, and a third
// party can check every rule here against docs/AUDIT.md.
//
// # The rules
//
//   - Events are numbered 1, 2, 3 … without gaps. Each carries prev_hash
//     (the previous event's hash; 32 zero bytes for the first) and its own
//     hash over prev_hash, its number and its canonical bytes and signature,
//     so no event can be removed, reordered or changed without breaking
//     every later hash.
//   - Every event is signed by an audit key, an ECDSA P-256 key that never
//     leaves the HSM. A writer with database rights and no HSM cannot add a
//     row that verifies. Keys are introduced on the chain itself: the first
//     signed event introduces the first key and is signed by it (the trust
//     root, whose fingerprint the auditor keeps); later keys are introduced
//     by events signed by an already trusted key.
//   - Checkpoints, signed by an audit key, commit to an event number and its
//     hash and to the previous checkpoint, so a chain rewritten and re-hashed
//     from some event on no longer matches them.
//   - The newest checkpoint is also kept in the HSM (the anchor). A database
//     that lacks the anchored checkpoint, or whose events stop short of it,
//     was truncated or restored from an older backup.
//
// Canonical bytes are the RFC 8785 (JCS) serialisation of a JSON object, so
// that any JSON library can rebuild them from the readable fields.
package auditlog
