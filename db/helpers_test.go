package db

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/pstd/pstd/auditlog"
	"github.com/pstd/pstd/internal/pstderr"
	"github.com/pstd/pstd/internal/testenv"
)

// newStore returns a migrated Store on a fresh database, and the database's
// URL (which connects as the cluster's superuser).
func newStore(t *testing.T) (*Store, string) {
	t.Helper()
	url := testenv.NewDatabase(t)
	s := openStore(t, url)
	s.SetAuditSigner(testAuditKey)
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return s, url
}

func openStore(t *testing.T, url string) *Store {
	t.Helper()
	s, err := Open(context.Background(), url)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	s.SetAuditSigner(testAuditKey)
	t.Cleanup(s.Close)
	return s
}

// testAuditKey stands in for the HSM's audit key in this package's tests
// (a crypto.Signer, the narrow interface the store uses); the tests of
// signer/hsm, cmd/internal/wiring and e2e sign with a real SoftHSM key.
var testAuditKey = func() *AuditSigner {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		panic(err)
	}
	return &AuditSigner{ID: "audit-1", PublicDER: der, Signer: k}
}()

// verifyAudit verifies the stored log and returns how many events verified.
func verifyAudit(t *testing.T, s *Store) (int, error) {
	t.Helper()
	v, err := s.VerifyAuditChain(context.Background())
	r, _ := v.Result()
	return int(r.Events), err
}

// superExec runs SQL as the superuser the test cluster's URL names.
func superExec(t *testing.T, s *Store, sql string, args ...any) error {
	t.Helper()
	_, err := s.pool.Exec(context.Background(), sql, args...)
	return err
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// publicBlob is a well-formed (for the schema) public key blob for id; the
// point itself is not checked by the database.
func publicBlob(t testing.TB, id uint32) []byte {
	b := make([]byte, PublicKeyLen)
	binary.BigEndian.PutUint32(b, id)
	b[4] = 4
	copy(b[5:], randomBytes(t, 96))
	return b
}

func epoch(t testing.TB, id uint32, notBefore, expiry time.Time) KeyEpoch {
	return KeyEpoch{
		KeyID:     id,
		Sealed:    randomBytes(t, 81), // the size signer/hsm produces for a P-384 scalar
		KEKLabel:  "pstd-kek-1",
		PublicKey: publicBlob(t, id),
		NotBefore: notBefore,
		Expiry:    expiry,
	}
}

// mustCreateKey allocates an id and stores a key that is active now.
func mustCreateKey(t *testing.T, s *Store) uint32 {
	t.Helper()
	ctx := context.Background()
	id, err := s.NextKeyID(ctx)
	if err != nil {
		t.Fatalf("NextKeyID: %v", err)
	}
	now := time.Now()
	if err := s.CreateKeyEpoch(ctx, epoch(t, id, now.Add(-time.Hour), now.Add(60*24*time.Hour)), "test"); err != nil {
		t.Fatalf("CreateKeyEpoch(%d): %v", id, err)
	}
	return id
}

func redemption(t testing.TB, keyID uint32) Redemption {
	return Redemption{
		KeyID:           keyID,
		NonceHash:       sha256.Sum256(randomBytes(t, 64)),
		RecordID:        "rec-" + testenv.RandomName(""),
		RedeemingOrigin: "https://rp.example",
		RedeemedAt:      time.Now(),
	}
}

func wantKind(t *testing.T, err error, k pstderr.Kind) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want %s", k)
	}
	if got, _ := pstderr.KindOf(err); got != k {
		t.Fatalf("got %v (kind %s), want kind %s", err, got, k)
	}
}

func wantSQLState(t *testing.T, err error, code string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want SQLSTATE %s", code)
	}
	if got := sqlState(err); got != code {
		t.Fatalf("got %v (SQLSTATE %q), want SQLSTATE %s", err, got, code)
	}
}

func auditActions(t *testing.T, s *Store) []string {
	t.Helper()
	entries, err := s.ListAudit(context.Background(), 0, 1000)
	if err != nil {
		t.Fatalf("ListAudit: %v", err)
	}
	var out []string
	for _, e := range entries {
		if e.Action == auditlog.ActionKeyCreate {
			continue // the audit key's own introduction, first on every log
		}
		out = append(out, e.Action+" "+e.Subject)
	}
	return out
}

var errTest = errors.New("test: roll back")
