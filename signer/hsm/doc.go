// Package hsm is pstd's key custody over PKCS#11 (SoftHSM2 in development,
// a hardware token in production), built on github.com/ThalesIgnite/crypto11
// and, where crypto11 has no call for it, github.com/miekg/pkcs11.
//
// It keeps two kinds of key on the token, both token objects that are
// private, sensitive and not extractable, and uses the token's RNG (Random):
//
//   - the key-encryption key (KEK): AES-256, label "pstd-kek-1". Seal and
//     Unseal run AES-256-GCM with it inside the token. pstd draws every
//     12-byte IV itself (crypto/rand) and stores it in front of the
//     ciphertext; the token never chooses one (SoftHSM2 would reuse a fixed
//     IV). Sealed blobs carry a format version and the KEK generation so the
//     KEK can be rotated.
//   - the redemption-record (RR) keys: ECDSA P-256 key pairs, label
//     "pstd-<id>", that sign records inside the token.
//
// # Threat model
//
// The VOPRF private key k cannot live inside PKCS#11. Issuing a token needs
// a DLEQ proof whose response is s = r − c·k mod n, and no PKCS#11 mechanism
// computes that (nor the P-384 scalar multiplications by k in the form the
// protocol needs). So k lives in pstd's memory while pstd runs, and at rest
// only in sealed form: the database holds Seal(k) under the KEK, bound by
// the associated data to its key id, protocol version and epoch, so a
// sealed key cannot be moved to another key row. Unseal happens only at key
// load, into process memory, and the caller wipes k when the key leaves
// service or the process stops.
//
// What an attacker can do:
//
//   - With the database alone (a dump, a backup, a replica): nothing with
//     the keys. They get sealed blobs, public keys, redemption hashes and
//     the audit log. Opening a sealed blob needs the KEK, which never leaves
//     the token. They cannot mint tokens or sign records.
//   - With the database and the host's memory (root reading a running
//     pstd's memory): the VOPRF keys currently loaded, in the clear. (A core
//     dump does not hold them: they live in memory left out of dumps; nor
//     does swap, when the kernel let pstd lock that memory.) They
//     can mint tokens for those keys until the keys rotate out; rotate at
//     once after such a compromise. They still do not get the KEK or the
//     RR key, so they cannot sign records once they lose the host, and they
//     cannot open sealed keys that were not loaded.
//   - With use of the HSM (the PIN and a way to reach the token, e.g. the
//     pstd host): everything pstd itself can do, for as long as that access
//     lasts: unseal any sealed key they also hold, sign redemption records.
//     They cannot copy the KEK or the RR key out, so the access ends when it
//     is revoked (PIN changed, host cleaned); sealed keys they unsealed
//     meanwhile must be treated as lost and rotated.
//
// Secrets never appear in errors or logs: the PIN is never formatted (Config
// and URI redact it), the plaintext of Seal/Unseal is never logged, and Wipe
// clears buffers. The PIN is kept in protected memory (internal/secmem: out
// of core dumps, locked against swap), and the three calls whose bytes are
// secret, C_Login, C_Decrypt and C_GenerateRandom, go to the module with
// pstd's own buffers (p11raw.go) rather than through miekg/pkcs11, which
// would copy them into C memory it frees uncleared. What the module keeps in
// its own memory (SoftHSM2 holds the token) is out of pstd's reach.
//
// # Start-up and failures
//
// Open chooses the token by label (never by slot number) and calls C_Login
// exactly once. A wrong PIN is ErrBadPIN, a locked one ErrPINLocked, a
// missing module ErrNoModule and a missing token ErrNoToken; pstd should exit
// on any of them. After a session is lost at run time (token removed, HSM
// restarted) the next operation reconnects, with a growing backoff between
// attempts; if that login is refused, the HSM stops logging in for good so
// that it can never lock the token by retrying a bad PIN.
//
// Open one HSM per process and token and share it: crypto11's session pool
// lives inside it. Nothing else in the process may use crypto11 with the
// same PKCS#11 module.
package hsm
