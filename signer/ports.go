package signer

import (
	"context"
	"crypto"
	"time"

	"github.com/pstd/pstd/auditlog"
	"github.com/pstd/pstd/db"
)

// Custody is what the service needs from the HSM. signer/hsm implements it
// over PKCS#11; the interface keeps the service testable with a double and
// the PKCS#11 surface in one package.
type Custody interface {
	Seal(plaintext, aad []byte) ([]byte, error)
	Unseal(sealed, aad []byte) ([]byte, error)
	Random(n int) ([]byte, error)
	GenerateRRKey(ctx context.Context, id string) (crypto.Signer, error)
	FindRRKey(ctx context.Context, id string) (crypto.Signer, error)
	// FindKEK reports whether the key-encryption key is on the token;
	// EnsureKEK creates it if it is not. CurrentKEKLabel names the one
	// Seal uses, for the key epoch's row.
	FindKEK(ctx context.Context) (bool, error)
	EnsureKEK(ctx context.Context) error
	CurrentKEKLabel() string
	// The audit signing keys (ECDSA P-256, on the token) and the anchor:
	// the newest signed audit checkpoint, kept on the token where a
	// database restore cannot reach it.
	GenerateAuditKey(ctx context.Context, id string) (crypto.Signer, error)
	FindAuditKey(ctx context.Context, id string) (crypto.Signer, error)
	ReadAnchor(ctx context.Context) ([][]byte, error)
	WriteAnchor(ctx context.Context, b []byte) error
	Ping(ctx context.Context) error
}

// Store is what the service needs from the database. *db.Store implements
// it; the service works with db's row types directly.
type Store interface {
	Ping(ctx context.Context) error
	KeyEpochs(ctx context.Context) ([]db.KeyEpoch, error) // not retired
	NextKeyID(ctx context.Context) (uint32, error)
	CreateKeyEpoch(ctx context.Context, e db.KeyEpoch, actor string) error
	RetireKeyEpoch(ctx context.Context, keyID uint32, actor string) error
	LatestCommitment(ctx context.Context) (id uint64, keyIDs []uint32, body []byte, err error)
	KeySetVersion(ctx context.Context) (uint64, error)   // latest commitment id, cheap to poll
	KeyEpochsDigest(ctx context.Context) (string, error) // changes with any key epoch row
	PublishCommitment(ctx context.Context, keyIDs []uint32, build func(id uint64) ([]byte, error), actor string) (id uint64, changed bool, err error)
	RRKeys(ctx context.Context) ([]db.RRKey, error)
	RRKeysVersion(ctx context.Context) (int64, error) // changes whenever a record key is made or retired
	CreateRRKey(ctx context.Context, k db.RRKey, actor string) error
	RetireRRKey(ctx context.Context, id string, notAfter time.Time, actor string) error
	// RecordRedemption commits r durably; beforeCommit runs after the
	// insert and before the commit, and its error rolls the insert back.
	RecordRedemption(ctx context.Context, r db.Redemption, beforeCommit func() error) error
	// DropExpiredRedemptionPartitions drops the double-spend rows of
	// retired, expired keys, which can never redeem again.
	DropExpiredRedemptionPartitions(ctx context.Context, actor string) ([]uint32, error)
	WithRotationLock(ctx context.Context, fn func(ctx context.Context) error) (bool, error)
	WithProvisionLock(ctx context.Context, fn func(ctx context.Context) error) error
	AppendAudit(ctx context.Context, e db.Event) (int64, error)

	// The signed audit log (see package auditlog and db/checkpoints.go).
	SetAuditSigner(a *db.AuditSigner)
	EnsureAuditKeyIntroduced(ctx context.Context) error
	AuditSignerID() string
	AuditKeys(ctx context.Context) ([]auditlog.KeyInfo, error)
	SignedKeyEvent(ctx context.Context, action string, keyID uint32, afterSeq int64) (bool, error)
	InsertSignedBy(ctx context.Context, a *db.AuditSigner, e db.Event) (int64, error)
	AuditState(ctx context.Context) (db.AuditState, error)
	AuditHashAt(ctx context.Context, seq int64) ([]byte, bool, error)
	LatestCheckpoint(ctx context.Context) (auditlog.Signed, bool, error)
	CheckpointN(ctx context.Context, n int64) (auditlog.Signed, bool, error)
	InsertCheckpoint(ctx context.Context, c auditlog.Signed) error
	WithCheckpointLock(ctx context.Context, fn func(ctx context.Context) error) (bool, error)
	WithCheckpointLockWait(ctx context.Context, fn func(ctx context.Context) error) error
	CountStore
}

// CountStore is what counting and key lifecycle events need (counts.go).
type CountStore interface {
	// RecordCounts appends closed count buckets as audit events with their
	// counts rows, in one transaction.
	RecordCounts(ctx context.Context, actor, replica string, issued []db.IssuanceCount, refused []db.RefusalCount) error
	// RecordKeyTransitions records the key activations and expiries that
	// happened by now and are not yet recorded.
	RecordKeyTransitions(ctx context.Context, now time.Time, actor string) ([]db.KeyTransition, error)
}

// epochTimes is a stored epoch's policy view.
func epochTimes(e db.KeyEpoch) KeyTimes {
	return KeyTimes{KeyID: e.KeyID, NotBefore: e.NotBefore, Expiry: e.Expiry}
}
