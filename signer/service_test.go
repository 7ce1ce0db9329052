package signer

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/pstd/pstd/auditlog"
	"github.com/pstd/pstd/db"
	"github.com/pstd/pstd/internal/pstderr"
	"github.com/pstd/pstd/signer/voprf"
)

// Unit-test doubles behind the service's narrow interfaces. The integration
// tests in cmd/internal/wiring use real SoftHSM and PostgreSQL.

type memCustody struct {
	failSign atomic.Bool // record keys refuse to sign
	aead     cipher.AEAD
	mu       sync.Mutex
	rr       map[string]*ecdsa.PrivateKey
	down     bool
	kek      bool
	anchor   []byte
}

func newMemCustody(t testing.TB) *memCustody {
	key := make([]byte, 32)
	rand.Read(key)
	b, _ := aes.NewCipher(key)
	g, _ := cipher.NewGCM(b)
	return &memCustody{aead: g, rr: map[string]*ecdsa.PrivateKey{}}
}

func (m *memCustody) Seal(p, aad []byte) ([]byte, error) {
	iv := make([]byte, 12)
	rand.Read(iv)
	return m.aead.Seal(iv, iv, p, aad), nil
}
func (m *memCustody) Unseal(s, aad []byte) ([]byte, error) {
	return m.aead.Open(nil, s[:12], s[12:], aad)
}
func (m *memCustody) Random(n int) ([]byte, error) {
	b := make([]byte, n)
	_, err := rand.Read(b)
	return b, err
}
func (m *memCustody) GenerateRRKey(_ context.Context, id string) (crypto.Signer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.rr[id]; ok {
		return nil, errors.New("key exists") // as the HSM refuses to replace a key
	}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	m.rr[id] = k
	return k, nil
}
func (m *memCustody) FindRRKey(_ context.Context, id string) (crypto.Signer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k, ok := m.rr[id]
	if !ok {
		return nil, errors.New("no such key")
	}
	return memSigner{k, m}, nil
}

// memSigner is a record key that signs until failSign is set.
type memSigner struct {
	*ecdsa.PrivateKey
	m *memCustody
}

func (s memSigner) Sign(r io.Reader, d []byte, o crypto.SignerOpts) ([]byte, error) {
	if s.m.failSign.Load() {
		return nil, errors.New("token gone")
	}
	return s.PrivateKey.Sign(r, d, o)
}
func (m *memCustody) FindKEK(context.Context) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.kek, nil
}
func (m *memCustody) EnsureKEK(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.kek = true
	return nil
}
func (m *memCustody) CurrentKEKLabel() string { return "mem-kek-1" }
func (m *memCustody) GenerateAuditKey(ctx context.Context, id string) (crypto.Signer, error) {
	return m.GenerateRRKey(ctx, "audit:"+id)
}
func (m *memCustody) FindAuditKey(ctx context.Context, id string) (crypto.Signer, error) {
	return m.FindRRKey(ctx, "audit:"+id)
}
func (m *memCustody) ReadAnchor(context.Context) ([][]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.anchor == nil {
		return nil, nil
	}
	return [][]byte{m.anchor}, nil
}
func (m *memCustody) WriteAnchor(_ context.Context, b []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.anchor = append([]byte(nil), b...)
	return nil
}
func (m *memCustody) Ping(context.Context) error {
	if m.down {
		return errors.New("token gone")
	}
	return nil
}

type memStore struct {
	failCreateRR bool
	redeemErr    error // RecordRedemption fails with this before inserting
	signs        int   // record signatures requested through RecordRedemption
	mu           sync.Mutex
	epochs       map[uint32]db.KeyEpoch
	retired      map[uint32]bool
	nextID       uint32
	commitments  []struct {
		id   uint64
		ids  []uint32
		body []byte
	}
	rr          []db.RRKey
	redemptions map[[36]byte]db.Redemption
	audit       []db.Event
	auditKey    *db.AuditSigner
	auditKeys   []auditlog.KeyInfo
	checkpoints []auditlog.Signed
	hwm         int64
	lock        sync.Mutex
	cpLock      sync.Mutex
	countsErr   error // RecordCounts fails with this
	issued      []db.IssuanceCount
	refused     []db.RefusalCount
	transitions map[struct {
		id uint32
		tr string
	}]bool
}

func newMemStore() *memStore {
	return &memStore{epochs: map[uint32]db.KeyEpoch{}, retired: map[uint32]bool{}, nextID: 1, redemptions: map[[36]byte]db.Redemption{}}
}

func (m *memStore) Ping(context.Context) error { return nil }
func (m *memStore) KeyEpochs(context.Context) ([]db.KeyEpoch, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []db.KeyEpoch
	for id, e := range m.epochs {
		if !m.retired[id] {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b db.KeyEpoch) int { return int(a.KeyID) - int(b.KeyID) })
	return out, nil
}
func (m *memStore) NextKeyID(context.Context) (uint32, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id := m.nextID
	m.nextID++
	return id, nil
}
func (m *memStore) CreateKeyEpoch(_ context.Context, e db.KeyEpoch, _ string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.epochs[e.KeyID]; ok {
		return errors.New("duplicate key id")
	}
	m.epochs[e.KeyID] = e
	if e.KeyID >= m.nextID {
		m.nextID = e.KeyID + 1
	}
	m.audit = append(m.audit, db.Event{Actor: "pstd", Action: "key.create", Subject: fmt.Sprintf("key:%d", e.KeyID)})
	return nil
}
func (m *memStore) KeyEpochsDigest(context.Context) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	h := sha256.New()
	ids := slices.Sorted(maps.Keys(m.epochs))
	for _, id := range ids {
		e := m.epochs[id]
		fmt.Fprintf(h, "%d|%x|%x|%v|%v|%v;", id, e.Sealed, e.PublicKey, e.NotBefore.Unix(), e.Expiry.Unix(), m.retired[id])
	}
	return string(h.Sum(nil)), nil
}
func (m *memStore) SignedKeyEvent(_ context.Context, action string, keyID uint32, afterSeq int64) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := int(afterSeq); i < len(m.audit); i++ {
		if m.audit[i].Action == action && m.audit[i].Subject == fmt.Sprintf("key:%d", keyID) {
			return true, nil
		}
	}
	return false, nil
}
func (m *memStore) RetireKeyEpoch(_ context.Context, id uint32, _ string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.retired[id] = true
	return nil
}
func (m *memStore) LatestCommitment(context.Context) (uint64, []uint32, []byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.commitments) == 0 {
		return 0, nil, nil, nil
	}
	c := m.commitments[len(m.commitments)-1]
	return c.id, c.ids, c.body, nil
}
func (m *memStore) KeySetVersion(ctx context.Context) (uint64, error) {
	id, _, _, err := m.LatestCommitment(ctx)
	return id, err
}
func (m *memStore) PublishCommitment(_ context.Context, ids []uint32, build func(uint64) ([]byte, error), _ string) (uint64, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var last uint64
	if n := len(m.commitments); n > 0 {
		c := m.commitments[n-1]
		if slices.Equal(c.ids, ids) {
			return c.id, false, nil
		}
		last = c.id
	}
	body, err := build(last + 1)
	if err != nil {
		return 0, false, err
	}
	m.commitments = append(m.commitments, struct {
		id   uint64
		ids  []uint32
		body []byte
	}{last + 1, ids, body})
	return last + 1, true, nil
}
func (m *memStore) RRKeys(context.Context) ([]db.RRKey, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.rr), nil
}
func (m *memStore) RRKeysVersion(context.Context) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v := int64(len(m.rr))
	for _, k := range m.rr {
		if k.Retired {
			v++
		}
	}
	return v, nil
}
func (m *memStore) CreateRRKey(_ context.Context, k db.RRKey, _ string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failCreateRR {
		return errors.New("database went away")
	}
	for _, o := range m.rr {
		if !o.Retired { // as the rr_keys_one_signing index refuses
			return errors.New(`duplicate key value violates unique constraint "rr_keys_one_signing"`)
		}
	}
	m.rr = append(m.rr, k)
	return nil
}
func (m *memStore) RetireRRKey(_ context.Context, id string, notAfter time.Time, _ string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range m.rr {
		if m.rr[i].ID == id {
			m.rr[i].Retired, m.rr[i].NotAfter = true, notAfter
		}
	}
	return nil
}
func (m *memStore) RecordRedemption(_ context.Context, r db.Redemption, sign func() error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.redeemErr != nil {
		return m.redeemErr
	}
	var k [36]byte
	k[0], k[1], k[2], k[3] = byte(r.KeyID>>24), byte(r.KeyID>>16), byte(r.KeyID>>8), byte(r.KeyID)
	copy(k[4:], r.NonceHash[:])
	if _, ok := m.redemptions[k]; ok {
		return pstderr.New(pstderr.AlreadyRedeemed, "token already redeemed")
	}
	m.signs++
	m.hwm++ // drawn before the outcome is known, like the sequence
	if err := sign(); err != nil {
		return err // rolled back: nothing stored
	}
	m.redemptions[k] = r
	return nil
}
func (m *memStore) DropExpiredRedemptionPartitions(context.Context, string) ([]uint32, error) {
	return nil, nil
}
func (m *memStore) WithProvisionLock(ctx context.Context, fn func(context.Context) error) error {
	m.lock.Lock()
	defer m.lock.Unlock()
	return fn(ctx)
}
func (m *memStore) AppendAudit(_ context.Context, e db.Event) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.audit = append(m.audit, e)
	return int64(len(m.audit)), nil
}
func (m *memStore) SetAuditSigner(a *db.AuditSigner) { m.mu.Lock(); m.auditKey = a; m.mu.Unlock() }
func (m *memStore) AuditSignerID() string            { m.mu.Lock(); defer m.mu.Unlock(); return m.auditKey.ID }
func (m *memStore) AuditKeys(context.Context) ([]auditlog.KeyInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.auditKeys), nil
}
func (m *memStore) EnsureAuditKeyIntroduced(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, k := range m.auditKeys {
		if k.ID == m.auditKey.ID {
			return nil
		}
	}
	m.auditKeys = append(m.auditKeys, auditlog.KeyInfo{ID: m.auditKey.ID, PublicKey: m.auditKey.PublicDER})
	m.audit = append(m.audit, db.KeyIntroEvent("pstd", m.auditKey.ID, m.auditKey.PublicDER))
	return nil
}
func (m *memStore) InsertSignedBy(_ context.Context, _ *db.AuditSigner, e db.Event) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.Action == auditlog.ActionKeyCreate {
		m.auditKeys = append(m.auditKeys, auditlog.KeyInfo{ID: e.Details["key"].(string), PublicKey: e.Details["public_key"].([]byte)})
	}
	m.audit = append(m.audit, e)
	return int64(len(m.audit)), nil
}
func (m *memStore) auditHash(seq int64) []byte {
	h := sha256.Sum256([]byte(fmt.Sprintf("%d %v", seq, m.audit[seq-1])))
	return h[:]
}
func (m *memStore) AuditState(context.Context) (db.AuditState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := db.AuditState{Seq: int64(len(m.audit)), RedemptionHWM: m.hwm}
	if st.Seq > 0 {
		st.Hash = m.auditHash(st.Seq)
	}
	return st, nil
}
func (m *memStore) AuditHashAt(_ context.Context, seq int64) ([]byte, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if seq < 1 || seq > int64(len(m.audit)) {
		return nil, false, nil
	}
	return m.auditHash(seq), true, nil
}
func (m *memStore) LatestCheckpoint(context.Context) (auditlog.Signed, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.checkpoints) == 0 {
		return auditlog.Signed{}, false, nil
	}
	return m.checkpoints[len(m.checkpoints)-1], true, nil
}
func (m *memStore) CheckpointN(_ context.Context, n int64) (auditlog.Signed, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.checkpoints {
		if cc, _, _ := c.Open(); cc.N == n {
			return c, true, nil
		}
	}
	return auditlog.Signed{}, false, nil
}
func (m *memStore) InsertCheckpoint(_ context.Context, c auditlog.Signed) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.checkpoints = append(m.checkpoints, c)
	return nil
}
func (m *memStore) WithCheckpointLock(ctx context.Context, fn func(context.Context) error) (bool, error) {
	if !m.cpLock.TryLock() {
		return false, nil
	}
	defer m.cpLock.Unlock()
	return true, fn(ctx)
}
func (m *memStore) WithCheckpointLockWait(ctx context.Context, fn func(context.Context) error) error {
	m.cpLock.Lock()
	defer m.cpLock.Unlock()
	return fn(ctx)
}
func (m *memStore) RecordCounts(_ context.Context, actor, _ string, iss []db.IssuanceCount, ref []db.RefusalCount) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.countsErr != nil {
		return m.countsErr
	}
	m.issued = append(m.issued, iss...)
	m.refused = append(m.refused, ref...)
	for range len(iss) + len(ref) {
		m.audit = append(m.audit, db.Event{Actor: actor, Action: "count.bucket"})
	}
	return nil
}
func (m *memStore) RecordKeyTransitions(_ context.Context, now time.Time, actor string) ([]db.KeyTransition, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.transitions == nil {
		m.transitions = map[struct {
			id uint32
			tr string
		}]bool{}
	}
	var out []db.KeyTransition
	for id, e := range m.epochs {
		for _, t := range []db.KeyTransition{{KeyID: id, Transition: "activate", At: e.NotBefore}, {KeyID: id, Transition: "expire", At: e.Expiry}} {
			k := struct {
				id uint32
				tr string
			}{id, t.Transition}
			if !t.At.After(now) && !m.transitions[k] {
				m.transitions[k] = true
				out = append(out, t)
				m.audit = append(m.audit, db.Event{Actor: actor, Action: "key." + t.Transition})
			}
		}
	}
	return out, nil
}
func (m *memStore) WithRotationLock(ctx context.Context, fn func(context.Context) error) (bool, error) {
	if !m.lock.TryLock() {
		return false, nil
	}
	defer m.lock.Unlock()
	// A transaction: on error the store is as it was (rr keys, epochs).
	m.mu.Lock()
	rr, retired, epochs := slices.Clone(m.rr), maps.Clone(m.retired), maps.Clone(m.epochs)
	m.mu.Unlock()
	err := fn(ctx)
	if err != nil {
		m.mu.Lock()
		m.rr, m.retired, m.epochs = rr, retired, epochs
		m.mu.Unlock()
	}
	return true, err
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time { return c.t }

func newService(t testing.TB, clock Clock) (*Service, *memStore, *memCustody) {
	st, cu := newMemStore(), newMemCustody(t)
	s, err := New(Config{IssuerOrigin: "https://issuer.example", Clock: clock}, st, cu)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.EnsureAuditKey(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s, st, cu
}

// issueAndRedeem gets one token through the service and redeems it.
func issueToken(t testing.TB, s *Service) voprf.Token {
	t.Helper()
	body, _, err := s.Commitment(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, keys, err := voprf.ParseCommitment(body)
	if err != nil {
		t.Fatal(err)
	}
	ids := voprf.SortedKeyIDs(keys)
	p, err := voprf.NewClient(keys[ids[0]]).Blind(1, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	resp, n, err := s.Issue(context.Background(), p.Request(), 10)
	if err != nil || n != 1 {
		t.Fatalf("issue: %v", err)
	}
	keyID := uint32(resp[2])<<24 | uint32(resp[3])<<16 | uint32(resp[4])<<8 | uint32(resp[5])
	pk, ok := keys[keyID]
	if !ok {
		t.Fatalf("issued under key %d, which the commitment does not publish", keyID)
	}
	toks, err := voprf.NewClient(pk).Finish(p, resp)
	if err != nil {
		t.Fatal(err)
	}
	return toks[0]
}

func redeemRequest(t testing.TB, tok voprf.Token, now time.Time) []byte {
	cd, _ := voprf.MarshalClientData(&voprf.ClientData{RedeemingOrigin: "https://rp.example", RedemptionTimestamp: uint64(now.Unix())})
	rr, err := voprf.MarshalRedeemRequest(&tok, cd)
	if err != nil {
		t.Fatal(err)
	}
	return rr
}

func TestServiceIssueRedeemDoubleSpend(t *testing.T) {
	clock := &fakeClock{time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s, st, cu := newService(t, clock)
	ctx := context.Background()
	if err := s.Ready(ctx); err == nil {
		t.Fatal("ready before keys are loaded")
	}
	if ok, err := s.Rotate(ctx); !ok || err != nil {
		t.Fatalf("rotate: %v", err)
	}
	if err := s.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(ctx); err != nil {
		t.Fatalf("not ready: %v", err)
	}
	tok := issueToken(t, s)
	rec, err := s.Redeem(ctx, redeemRequest(t, tok, clock.t))
	if err != nil || rec == "" {
		t.Fatalf("redeem: %v", err)
	}
	_, err = s.Redeem(ctx, redeemRequest(t, tok, clock.t))
	if !errors.Is(err, pstderr.AlreadyRedeemed) {
		t.Fatalf("second redemption: %v", err)
	}
	if st.signs != 1 {
		t.Fatalf("%d record signatures for one token redeemed twice; a replay must cost none", st.signs)
	}

	// A record the HSM cannot sign leaves the token unspent.
	tok2 := issueToken(t, s)
	cu.failSign.Store(true)
	if _, err := s.Redeem(ctx, redeemRequest(t, tok2, clock.t)); !errors.Is(err, pstderr.Unavailable) {
		t.Fatalf("redeem with signing failing: %v", err)
	}
	cu.failSign.Store(false)
	if rec, err := s.Redeem(ctx, redeemRequest(t, tok2, clock.t)); err != nil || rec == "" {
		t.Fatalf("redeem after signing recovered: %v", err)
	}
	cu.down = true
	if err := s.Ready(ctx); !errors.Is(err, pstderr.Unavailable) {
		t.Fatalf("ready with HSM down: %v", err)
	}
}

// TestServiceTwoYears runs two years of rotation with a fake clock, a day at
// a time: at most 6 published keys, commitment ids strictly increasing and
// changing only with the key set, and a token issued under any key still
// published redeems.
func TestServiceTwoYears(t *testing.T) {
	clock := &fakeClock{time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s, st, _ := newService(t, clock)
	ctx := context.Background()
	type held struct {
		tok    voprf.Token
		expiry time.Time
	}
	var wallet []held
	lastID := uint64(0)
	for day := 0; day < 730; day++ {
		if _, err := s.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		body, id, err := s.Commitment(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if id < lastID {
			t.Fatalf("day %d: commitment id went back", day)
		}
		lastID = id
		_, keys, err := voprf.ParseCommitment(body)
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) > MaxPublishedKeys {
			t.Fatalf("day %d: %d keys", day, len(keys))
		}
		if day%5 == 0 {
			tok := issueToken(t, s)
			e := st.epochs[tok.KeyID]
			wallet = append(wallet, held{tok, e.Expiry})
		}
		// Redeem a token issued long ago whose key is still published.
		for i, h := range wallet {
			if h.expiry.After(clock.t) && i%7 == day%7 {
				_, err := s.Redeem(ctx, redeemRequest(t, h.tok, clock.t))
				if err != nil && !errors.Is(err, pstderr.AlreadyRedeemed) {
					t.Fatalf("day %d: token of key %d (expiry %v) does not redeem: %v", day, h.tok.KeyID, h.expiry, err)
				}
			}
		}
		clock.t = clock.t.AddDate(0, 0, 1)
	}
	// Ids only grow with the key set: one commitment per distinct set.
	for i := 1; i < len(st.commitments); i++ {
		if st.commitments[i].id != st.commitments[i-1].id+1 || slices.Equal(st.commitments[i].ids, st.commitments[i-1].ids) {
			t.Fatal("commitment published without a key-set change")
		}
	}
	if len(st.commitments) < 20 {
		t.Fatalf("only %d commitments in two years", len(st.commitments))
	}
}

func TestServiceExpiredKeyRefused(t *testing.T) {
	clock := &fakeClock{time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s, _, _ := newService(t, clock)
	ctx := context.Background()
	s.Rotate(ctx)
	s.Reload(ctx)
	tok := issueToken(t, s)
	clock.t = clock.t.Add(s.cfg.Policy.Lifetime() + time.Hour)
	_, err := s.Redeem(ctx, redeemRequest(t, tok, clock.t))
	if !errors.Is(err, pstderr.UnknownKey) {
		t.Fatalf("redeeming under an expired key: %v", err)
	}
}

func TestServiceImportKey(t *testing.T) {
	clock := &fakeClock{time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s, _, _ := newService(t, clock)
	ctx := context.Background()
	sk, _ := voprf.GenerateKey(42, rand.Reader)
	id, err := s.ImportKey(ctx, sk.MarshalPrivateKeyBlob(), KeyTimes{NotBefore: clock.t, Expiry: clock.t.AddDate(0, 4, 0)}, "test")
	if err != nil || id != 42 {
		t.Fatalf("import: %v", err)
	}
	if _, err := s.ImportKey(ctx, sk.MarshalPrivateKeyBlob(), KeyTimes{NotBefore: clock.t, Expiry: clock.t.AddDate(0, 4, 0)}, "test"); err == nil {
		t.Fatal("importing the same key id twice succeeded")
	}
	// The same scalar under another id would let each token redeem twice.
	same, err := voprf.NewPrivateKey(43, sk.Scalar())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ImportKey(ctx, same.MarshalPrivateKeyBlob(), KeyTimes{NotBefore: clock.t, Expiry: clock.t.AddDate(0, 4, 0)}, "test"); err == nil {
		t.Fatal("importing key 42's scalar again as key 43 succeeded")
	}
	s.Rotate(ctx)
	if err := s.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	tok := issueToken(t, s)
	if tok.KeyID != 42 {
		t.Fatalf("issued under %d, want the imported 42", tok.KeyID)
	}
}

// TestRotateRRKeyAfterFailedStore: the HSM made rr-2 but storing it failed,
// and the retirement of rr-1 rolled back with it. The next rotation skips
// the orphaned rr-2 (never adopting a key it did not just make) and makes
// rr-3; rr-1 signs meanwhile.
func TestRotateRRKeyAfterFailedStore(t *testing.T) {
	s, st, cu := newService(t, &fakeClock{time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)})
	ctx := context.Background()
	if _, err := s.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	st.mu.Lock()
	st.failCreateRR = true
	st.mu.Unlock()
	if _, err := s.RotateRRKey(ctx, "test"); err == nil {
		t.Fatal("RotateRRKey succeeded with the database refusing the key")
	}
	keys, _ := st.RRKeys(ctx)
	if len(keys) != 1 || keys[0].Retired {
		t.Fatalf("after a failed rotation: %+v, want rr-1 still signing", keys)
	}
	st.mu.Lock()
	st.failCreateRR = false
	st.mu.Unlock()
	id, err := s.RotateRRKey(ctx, "test")
	if err != nil || id != "rr-3" {
		t.Fatalf("RotateRRKey after the failure: %q, %v", id, err)
	}
	keys, _ = st.RRKeys(ctx)
	want, _ := x509.MarshalPKIXPublicKey(cu.rr["rr-3"].Public())
	if len(keys) != 2 || !keys[0].Retired || keys[1].Retired || !bytes.Equal(keys[1].PublicDER, want) {
		t.Fatalf("after rotation: %+v", keys)
	}
}

// failingUnseal is a custody whose Unseal fails for one key.
type failingUnseal struct {
	*memCustody
	failAAD []byte
}

func (f failingUnseal) Unseal(s, aad []byte) ([]byte, error) {
	if bytes.Equal(aad, f.failAAD) {
		return nil, errors.New("token refused")
	}
	return f.memCustody.Unseal(s, aad)
}

// TestReloadFailureWipesWhatItUnsealed: a reload that fails on its second
// key must not leave the first one, freshly unsealed, in memory.
func TestReloadFailureWipesWhatItUnsealed(t *testing.T) {
	clock := &fakeClock{time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	st, cu := newMemStore(), newMemCustody(t)
	ctx := context.Background()
	// Two keys: the current one and one made by a forced rotation.
	s1, err := New(Config{IssuerOrigin: "https://issuer.example", Clock: clock}, st, cu)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s1.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s1.ForceRotate(ctx, true, "test"); err != nil {
		t.Fatal(err)
	}
	epochs, _ := st.KeyEpochs(ctx)
	if len(epochs) != 2 {
		t.Fatalf("%d epochs, want 2", len(epochs))
	}
	last := epochs[1]
	s2, err := New(Config{IssuerOrigin: "https://issuer.example", Clock: clock}, st,
		failingUnseal{cu, keyAAD(last.KeyID, last.NotBefore, last.Expiry)})
	if err != nil {
		t.Fatal(err)
	}
	var made []*voprf.PrivateKey
	orig := newPrivateKey
	newPrivateKey = func(id uint32, k []byte) (*voprf.PrivateKey, error) {
		sk, err := orig(id, k)
		if sk != nil {
			made = append(made, sk)
		}
		return sk, err
	}
	t.Cleanup(func() { newPrivateKey = orig })
	if err := s2.Reload(ctx); err == nil {
		t.Fatal("reload succeeded with a key the token refuses")
	}
	if len(made) != 1 {
		t.Fatalf("%d keys unsealed before the failure, want 1", len(made))
	}
	if !bytes.Equal(made[0].Scalar(), make([]byte, voprf.ScalarSize)) {
		t.Fatal("the key unsealed by the failed reload was not wiped")
	}
}

// The service registers its own metrics on the injected registry and counts
// where it measures: a lost token is an HSM error, the signing key's id and
// expiry are set by a load.
func TestServiceMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	st, cu := newMemStore(), newMemCustody(t)
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s, err := New(Config{IssuerOrigin: "https://issuer.example", Clock: clock, Registerer: reg}, st, cu)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	cu.down = true
	if err := s.Ready(ctx); !errors.Is(err, pstderr.Unavailable) {
		t.Fatalf("Ready with the token gone: %v", err)
	}
	want := map[string]float64{"pstd_hsm_errors_total": 1, "pstd_db_errors_total": 0, "pstd_key_epoch": 1}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		switch {
		case m.GetCounter() != nil:
			got[mf.GetName()] = m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			got[mf.GetName()] = m.GetGauge().GetValue()
		}
	}
	for name, v := range want {
		if got[name] != v {
			t.Errorf("%s = %v, want %v", name, got[name], v)
		}
	}
	if got["pstd_signing_key_expiry_timestamp_seconds"] <= float64(clock.t.Unix()) {
		t.Errorf("signing key expiry %v is not after now", got["pstd_signing_key_expiry_timestamp_seconds"])
	}
	// A second service on the same registry is a programming error.
	if _, err := New(Config{IssuerOrigin: "https://issuer.example", Registerer: reg}, st, cu); err == nil {
		t.Error("a second service registered the same metrics")
	}
}

// A database error that is a bug (a plain error from db) is internal: it
// stays a 500 and does not turn into a 503 that would flap readiness; an
// outage (pstderr Unavailable from db) is Unavailable. Neither spends the
// token or returns a record.
func TestDatabaseErrorClassification(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s, st, _ := newService(t, clock)
	ctx := context.Background()
	if _, err := s.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	tok := issueToken(t, s)
	st.redeemErr = errors.New("db: record redemption: column \"x\" does not exist (SQLSTATE 42703)")
	rec, err := s.Redeem(ctx, redeemRequest(t, tok, clock.t))
	if _, ok := pstderr.KindOf(err); ok || err == nil || rec != "" {
		t.Fatalf("a database bug: record %q, err %v; want a plain (internal) error", rec, err)
	}
	if err := s.Ready(ctx); err != nil {
		t.Fatalf("a database bug made the service not ready: %v", err)
	}
	st.redeemErr = pstderr.Wrap(pstderr.Unavailable, errors.New("conn closed"), "database unavailable")
	if rec, err := s.Redeem(ctx, redeemRequest(t, tok, clock.t)); !errors.Is(err, pstderr.Unavailable) || rec != "" {
		t.Fatalf("a database outage: record %q, err %v; want Unavailable", rec, err)
	}
	st.redeemErr = nil
	if _, err := s.Redeem(ctx, redeemRequest(t, tok, clock.t)); err != nil {
		t.Fatalf("the token was spent by a failed redemption: %v", err)
	}
}

// The restore fence on test doubles: a database that loses what the
// anchored checkpoint covers is refused (DatabaseBehind) until Fence retires
// the keys live at the anchor and a new key signs.
func TestRestoreFence(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s, st, cu := newService(t, clock)
	ctx := context.Background()
	if _, err := s.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	tok := issueToken(t, s)
	// The "backup": the store as it is now.
	st.mu.Lock()
	backup := struct {
		audit       []db.Event
		checkpoints []auditlog.Signed
		hwm         int64
	}{slices.Clone(st.audit), slices.Clone(st.checkpoints), st.hwm}
	st.mu.Unlock()
	if _, err := s.Redeem(ctx, redeemRequest(t, tok, clock.t)); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Checkpoint(ctx, false); !ok || err != nil {
		t.Fatalf("Checkpoint: %v %v", ok, err)
	}
	if cu.anchor == nil {
		t.Fatal("no anchor on the token")
	}
	if err := s.Ready(ctx); err != nil {
		t.Fatalf("ready before the restore: %v", err)
	}
	// Restore the backup.
	st.mu.Lock()
	st.audit, st.checkpoints, st.hwm = backup.audit, backup.checkpoints, backup.hwm
	st.redemptions = map[[36]byte]db.Redemption{}
	st.mu.Unlock()
	if err := s.Reload(ctx); !errors.Is(err, pstderr.DatabaseBehind) {
		t.Fatalf("Reload after the restore: %v", err)
	}
	if err := s.Ready(ctx); !errors.Is(err, pstderr.DatabaseBehind) {
		t.Fatalf("Ready after the restore: %v", err)
	}
	if _, err := s.Redeem(ctx, redeemRequest(t, tok, clock.t)); !errors.Is(err, pstderr.DatabaseBehind) {
		t.Fatalf("the token spent after the backup: %v", err)
	}
	if _, err := s.Checkpoint(ctx, false); !errors.Is(err, pstderr.DatabaseBehind) {
		t.Fatalf("a checkpoint of a database behind the anchor: %v", err)
	}
	newKey, retired, err := s.Fence(ctx, "op", "restored from the 02:00 backup")
	if err != nil {
		t.Fatal(err)
	}
	if len(retired) != 1 || retired[0] == newKey {
		t.Fatalf("Fence retired %v, new key %d", retired, newKey)
	}
	if err := s.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(ctx); err != nil {
		t.Fatalf("ready after the fence: %v", err)
	}
	// The token spent after the backup does not redeem again: its key is retired.
	if _, err := s.Redeem(ctx, redeemRequest(t, tok, clock.t)); !errors.Is(err, pstderr.UnknownKey) {
		t.Fatalf("the token of a fenced key: %v", err)
	}
	// Fresh tokens issue and redeem.
	if _, err := s.Redeem(ctx, redeemRequest(t, issueToken(t, s), clock.t)); err != nil {
		t.Fatalf("a fresh token after the fence: %v", err)
	}
	if _, _, err := s.Fence(ctx, "op", "again"); err == nil {
		t.Fatal("fenced a database that reaches the anchor")
	}
}
