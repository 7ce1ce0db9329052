// Package db is pstd's storage layer and the only package that writes SQL.
//
// It owns the pgx connection pool, the schema (applied from the embedded goose
// migrations in package migrations), and every read and write of:
//
//   - key_epochs: VOPRF keys, stored only sealed by the HSM's key-encryption
//     key, with their public key blob and their times. State is derived from
//     time (pending, active, expired) plus one stored transition, retirement;
//     see KeyEpoch.State. Ids come from a sequence and are never reused.
//   - rr_keys: the public halves of the redemption-record signing keys.
//   - commitments: the published key commitments; the id grows by one exactly
//     when the published key set changes (PublishCommitment).
//   - redemptions: the double-spend guard, one row per redeemed token (key id
//     and SHA-256 of the nonce), partitioned by key so an expired key's rows
//     are dropped with their partition (DropExpiredRedemptions, or the
//     DropExpiredRedemptionPartitions sweep after a rotation has committed).
//   - audit_log: an append-only, SHA-256 hash-chained log of every key,
//     record-key, commitment and schema change, written in the same
//     transaction as the change (VerifyAuditChain recomputes it).
//
// It must not know PKCS#11 (sealing happens in signer/hsm; db sees opaque
// bytes), speak HTTP, or make policy decisions (when to rotate is package
// signer's business). It must never store or log a plaintext key, a token
// nonce, or anything from issuance: the schema refuses short "sealed" secrets,
// redemptions hold only a nonce hash, and database errors are reduced to
// SQLSTATE, constraint and message (*SQLError) so a server DETAIL line
// ("Failing row contains …") never travels into a log.
//
// # Errors
//
// Connection failures, timeouts, server shutdown, lock timeouts and failover
// (read-only) errors are returned as pstderr Unavailable, so the service
// fails closed with 503. A duplicate redemption is pstderr AlreadyRedeemed; a
// redemption for a key without a redemptions partition is pstderr UnknownKey.
//
// # Transactions
//
// Every write that changes keys, record keys or commitments runs in one
// transaction together with its audit row. InTx and WithRotationLock put a
// transaction in the context they hand to their callback; every Store method
// called with that context joins it (a nested write uses a savepoint). Only
// RecordRedemption always commits on its own connection, because a
// redemption must be durable before the record leaves pstd; and
// DropExpiredRedemptions and DropExpiredRedemptionPartitions refuse to run
// inside a transaction (a WithRotationLock callback included), because they
// take an ACCESS EXCLUSIVE lock on redemptions that must not be held for the
// rest of a longer transaction.
//
// Lock order, to stay free of deadlocks: rotation lock, then the audit chain
// lock (taken first by every audited write), then the commitment lock, then
// table locks on redemptions. The provisioning lock (WithProvisionLock) comes
// first of all and is never held with the rotation lock. Advisory locks use
// the two-key form with class 1886614628 ('pstd') and distinct numbers.
//
// # Replicas
//
// Any number of pstd replicas share one database. Exactly one rotates at a
// time (WithRotationLock uses pg_try_advisory_xact_lock, so the others skip
// instead of queueing). The others find a new key set by polling
// KeySetVersion (an index-only max over commitments) every few seconds; that
// is simpler and more robust than LISTEN/NOTIFY, which needs a dedicated
// connection and still needs a poll to recover missed notifications.
//
// # Why goose
//
// Migrations are plain SQL files that a DBA can read and review, embedded
// into the binary (no files to ship next to it), applied by
// github.com/pressly/goose/v3 through its Provider API with the pgx stdlib
// driver and a PostgreSQL session lock (so replicas started together with
// PSTD_MIGRATE do not race). goose is maintained, has no code generation and
// records applied versions in the goose_db_version table.
//
// # Durability
//
// RecordRedemption sets synchronous_commit = on for its own transaction and
// checks it took effect, so a server default of off cannot weaken the
// double-spend guard. The server must also run with fsync = on (the
// default) for a commit to survive a crash.
//
// # Operating roles
//
// The guard triggers stop accidental and application-level changes to the
// audit log, commitments, key epochs and redemptions. A table owner or
// superuser can disable triggers, so production should run pstd as a role
// that does not own the tables (grant it SELECT and INSERT on the tables,
// UPDATE on key_epochs and rr_keys, USAGE on key_id_seq; partition DDL runs
// through SECURITY DEFINER functions that check their own preconditions), run
// migrations as the owner, and copy AuditHead to a system outside the
// database so that even a rewritten chain is detected.
package db
