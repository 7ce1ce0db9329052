package signer

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pstd/pstd/internal/pstderr"
	"github.com/pstd/pstd/signer/voprf"
)

// Custody is what the service needs from the HSM. signer/hsm implements it
// over PKCS#11; the interface keeps the service testable and the PKCS#11
// surface in one package.
type Custody interface {
	Seal(plaintext, aad []byte) ([]byte, error)
	Unseal(sealed, aad []byte) ([]byte, error)
	Random(n int) ([]byte, error)
	GenerateRRKey(ctx context.Context, id string) (crypto.Signer, error)
	FindRRKey(ctx context.Context, id string) (crypto.Signer, error)
	Ping(ctx context.Context) error
}

// KeyEpoch is a stored VOPRF key: never the plaintext scalar, only its sealed
// form.
type KeyEpoch struct {
	KeyID     uint32
	Sealed    []byte
	KEKLabel  string
	PublicKey []byte // the 101-byte public key blob
	CreatedAt time.Time
	NotBefore time.Time
	Expiry    time.Time
	Imported  bool
}

// Times returns the epoch's policy view.
func (e KeyEpoch) Times() KeyTimes {
	return KeyTimes{KeyID: e.KeyID, NotBefore: e.NotBefore, Expiry: e.Expiry}
}

// RRKeyInfo is a stored redemption-record key (public half only).
type RRKeyInfo struct {
	ID        string
	PublicDER []byte // SubjectPublicKeyInfo
	CreatedAt time.Time
	NotAfter  time.Time // leaves the JWKS after this
	Retired   bool      // no longer signs
}

// Redemption is the double-spend row of one redeemed token. It holds a hash of
// the nonce, never the nonce, and nothing from issuance.
type Redemption struct {
	KeyID           uint32
	NonceHash       [32]byte
	RecordID        string
	RedeemingOrigin string
	RedeemedAt      time.Time
}

// Store is what the service needs from the database (package db).
type Store interface {
	Ping(ctx context.Context) error
	KeyEpochs(ctx context.Context) ([]KeyEpoch, error) // not retired
	NextKeyID(ctx context.Context) (uint32, error)
	CreateKeyEpoch(ctx context.Context, e KeyEpoch, actor string) error
	RetireKeyEpoch(ctx context.Context, keyID uint32, actor string) error
	LatestCommitment(ctx context.Context) (id uint64, keyIDs []uint32, body []byte, err error)
	KeySetVersion(ctx context.Context) (uint64, error) // latest commitment id, cheap to poll
	PublishCommitment(ctx context.Context, keyIDs []uint32, build func(id uint64) ([]byte, error), actor string) (id uint64, changed bool, err error)
	RRKeys(ctx context.Context) ([]RRKeyInfo, error)
	CreateRRKey(ctx context.Context, k RRKeyInfo, actor string) error
	RetireRRKey(ctx context.Context, id string, notAfter time.Time, actor string) error
	// RecordRedemption commits r durably; sign runs after the insert and
	// before the commit, and its error rolls the insert back.
	RecordRedemption(ctx context.Context, r Redemption, sign func() error) error
	WithRotationLock(ctx context.Context, fn func(ctx context.Context) error) (bool, error)
}

// Config configures the issuer service.
type Config struct {
	IssuerOrigin   string
	BatchSize      int
	RecordLifetime time.Duration
	Policy         RotationPolicy
	Clock          Clock
	// OnSigningKey, if set, is told the signing key's id and expiry after
	// every successful load; OnRotation after every run of the rotation
	// policy and reload in Run (err nil: success).
	OnSigningKey     func(keyID uint32, expiry time.Time)
	OnRotation       func(at time.Time, err error)
	RefreshInterval  time.Duration // how often replicas look for a new key set
	RotationInterval time.Duration // how often the rotation policy runs
	Logger           *slog.Logger
	Actor            string // who the audit log names for automatic changes
	// Hooks for metrics; optional.
	OnHSMError func()
	OnDBError  func()
}

func (c *Config) setDefaults() error {
	if c.IssuerOrigin == "" {
		return errors.New("issuer origin is required")
	}
	if c.BatchSize == 0 {
		c.BatchSize = 10
	}
	if c.BatchSize < 1 || c.BatchSize > voprf.MaxBatchSize {
		return fmt.Errorf("batch size %d outside [1, %d]", c.BatchSize, voprf.MaxBatchSize)
	}
	if c.RecordLifetime == 0 {
		c.RecordLifetime = 7 * 24 * time.Hour
	}
	if c.Policy == (RotationPolicy{}) {
		c.Policy = DefaultRotationPolicy()
	}
	if err := c.Policy.Validate(); err != nil {
		return err
	}
	if c.Clock == nil {
		c.Clock = SystemClock{}
	}
	if c.RefreshInterval == 0 {
		c.RefreshInterval = 5 * time.Second
	}
	if c.RotationInterval == 0 {
		c.RotationInterval = time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Actor == "" {
		c.Actor = "pstd"
	}
	if c.OnHSMError == nil {
		c.OnHSMError = func() {}
	}
	if c.OnDBError == nil {
		c.OnDBError = func() {}
	}
	return nil
}

// Service is the PST issuer: it holds the unsealed keys of the current key
// set, issues with the signing key, redeems against every published key with
// the database as double-spend guard, and signs redemption records with the
// HSM-held record key. It implements httpapi.Issuer.
type Service struct {
	cfg     Config
	store   Store
	custody Custody
	ring    keyring

	mu sync.Mutex // serialises reloads
	rr atomic.Pointer[rrState]
	// loadErr is the last load's failure (nil: none). Atomic, so that
	// readiness never waits behind a slow reload holding mu.
	loadErr atomic.Pointer[loadFailure]
}

type loadFailure struct{ err error }

func (s *Service) setLoadErr(err error) {
	if err == nil {
		s.loadErr.Store(nil)
		return
	}
	s.loadErr.Store(&loadFailure{err})
}

func (s *Service) lastLoadErr() error {
	if f := s.loadErr.Load(); f != nil {
		return f.err
	}
	return nil
}

// New returns a service; call Reload (or Run) before serving.
func New(cfg Config, store Store, custody Custody) (*Service, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	return &Service{cfg: cfg, store: store, custody: custody}, nil
}

// keyAAD binds a sealed key to its id, protocol and epoch, so a sealed blob
// cannot be swapped onto another key row.
func keyAAD(keyID uint32, notBefore time.Time) []byte {
	return []byte("pstd/voprf-key/v1|" + voprf.ProtocolVersion + "|" + strconv.FormatUint(uint64(keyID), 10) +
		"|" + strconv.FormatInt(notBefore.UTC().Unix(), 10))
}

// hsmReader reads the HSM's random number generator.
type hsmReader struct{ c Custody }

func (r hsmReader) Read(p []byte) (int, error) {
	b, err := r.c.Random(len(p))
	if err != nil {
		return 0, err
	}
	copy(p, b)
	return len(p), nil
}

func (s *Service) hsmErr(err error, detail string) error {
	s.cfg.OnHSMError()
	return pstderr.Wrap(pstderr.Unavailable, err, detail)
}

func (s *Service) dbErr(err error, detail string) error {
	if pstderr.KindOf(err) != pstderr.Internal {
		if pstderr.KindOf(err) == pstderr.Unavailable {
			s.cfg.OnDBError()
		}
		return err
	}
	s.cfg.OnDBError()
	return pstderr.Wrap(pstderr.Unavailable, err, detail)
}

// CreateKey generates a VOPRF key from the HSM's RNG, seals it under the KEK
// and stores the epoch. The plaintext scalar is wiped before return.
func (s *Service) CreateKey(ctx context.Context, t KeyTimes, actor string) (uint32, error) {
	id, err := s.store.NextKeyID(ctx)
	if err != nil {
		return 0, s.dbErr(err, "allocating a key id failed")
	}
	sk, err := voprf.GenerateKey(id, hsmReader{s.custody})
	if err != nil {
		return 0, s.hsmErr(err, "generating a key failed")
	}
	defer sk.Wipe()
	return id, s.storeKey(ctx, sk, t, false, actor)
}

// ImportKey stores an existing BoringSSL private key blob (for operators
// migrating an issuer without invalidating tokens in the field).
func (s *Service) ImportKey(ctx context.Context, blob []byte, t KeyTimes, actor string) (uint32, error) {
	sk, err := voprf.ParsePrivateKeyBlob(blob)
	if err != nil {
		return 0, err
	}
	defer sk.Wipe()
	err = s.operatorLocked(ctx, func(ctx context.Context) error {
		epochs, err := s.store.KeyEpochs(ctx)
		if err != nil {
			return s.dbErr(err, "reading key epochs failed")
		}
		point := sk.Public().MarshalBlob()[4:]
		for _, e := range epochs {
			if e.KeyID == sk.KeyID() {
				return fmt.Errorf("key id %d is already in use", sk.KeyID())
			}
			// The double-spend guard is keyed on (key id, nonce), and a
			// token's key id is not bound into its signature: one scalar
			// under two ids would let every token redeem once per id.
			if len(e.PublicKey) > 4 && bytes.Equal(e.PublicKey[4:], point) {
				return fmt.Errorf("this key is already loaded as key %d", e.KeyID)
			}
		}
		if len(epochs) >= MaxPublishedKeys {
			return fmt.Errorf("%d keys are live, Chrome's limit; import after one retires", len(epochs))
		}
		return s.storeKey(ctx, sk, t, true, actor)
	})
	return sk.KeyID(), err
}

func (s *Service) storeKey(ctx context.Context, sk *voprf.PrivateKey, t KeyTimes, imported bool, actor string) error {
	scalar := sk.Scalar()
	defer wipe(scalar)
	sealed, err := s.custody.Seal(scalar, keyAAD(sk.KeyID(), t.NotBefore))
	if err != nil {
		return s.hsmErr(err, "sealing the key failed")
	}
	e := KeyEpoch{
		KeyID:     sk.KeyID(),
		Sealed:    sealed,
		PublicKey: sk.Public().MarshalBlob(),
		CreatedAt: s.cfg.Clock.Now(),
		NotBefore: t.NotBefore,
		Expiry:    t.Expiry,
		Imported:  imported,
	}
	if err := s.store.CreateKeyEpoch(ctx, e, actor); err != nil {
		return s.dbErr(err, "storing the key epoch failed")
	}
	return nil
}

func wipe(b []byte) {
	for i := range b {
		b[i] = 0
	}
}

// Rotate runs one rotation step under the database's rotation lock: retire
// expired keys, create the next key when the policy says so, make sure a
// redemption-record key exists, and publish a new commitment if the key set
// changed. It returns false if another replica holds the lock.
func (s *Service) Rotate(ctx context.Context) (bool, error) {
	return s.store.WithRotationLock(ctx, func(ctx context.Context) error {
		now := s.cfg.Clock.Now()
		epochs, err := s.store.KeyEpochs(ctx)
		if err != nil {
			return s.dbErr(err, "reading key epochs failed")
		}
		times := make([]KeyTimes, len(epochs))
		for i, e := range epochs {
			times[i] = e.Times()
		}
		plan := s.cfg.Policy.Plan(now, times)
		for _, id := range plan.Retire {
			if err := s.store.RetireKeyEpoch(ctx, id, s.cfg.Actor); err != nil {
				return s.dbErr(err, "retiring a key failed")
			}
			s.cfg.Logger.Info("retired expired key", "key_id", id)
		}
		if plan.Create != nil {
			id, err := s.CreateKey(ctx, *plan.Create, s.cfg.Actor)
			if err != nil {
				return err
			}
			s.cfg.Logger.Info("created key", "key_id", id, "not_before", plan.Create.NotBefore, "expiry", plan.Create.Expiry)
		}
		if err := s.ensureRRKey(ctx); err != nil {
			return err
		}
		return s.publish(ctx)
	})
}

// errRotating answers an operator's command when another replica holds
// the rotation lock.
var errRotating = errors.New("another replica is rotating; try again")

// operatorLocked runs an operator's key change under the rotation lock, or
// fails with errRotating if another replica holds it.
func (s *Service) operatorLocked(ctx context.Context, fn func(context.Context) error) error {
	ok, err := s.store.WithRotationLock(ctx, fn)
	if err == nil && !ok {
		return errRotating
	}
	return err
}

// RetireKey takes a VOPRF key out of service now, before its expiry (pstctl
// keys retire, say after a suspected compromise): it leaves the commitment,
// and its tokens stop redeeming on every replica at its next key-set
// refresh. It refuses to retire the only key that can sign; create a
// successor first (ForceRotate).
func (s *Service) RetireKey(ctx context.Context, keyID uint32, actor string) error {
	err := s.operatorLocked(ctx, func(ctx context.Context) error {
		epochs, err := s.store.KeyEpochs(ctx)
		if err != nil {
			return s.dbErr(err, "reading key epochs failed")
		}
		now := s.cfg.Clock.Now()
		var rest []KeyTimes
		found := false
		for _, e := range epochs {
			if e.KeyID == keyID {
				found = true
				continue
			}
			rest = append(rest, e.Times())
		}
		if !found {
			return pstderr.New(pstderr.UnknownKey, "no live key %d", keyID)
		}
		if _, ok := SigningKey(now, rest); !ok {
			return fmt.Errorf("key %d is the only key that can sign now; create a successor first (pstctl keys rotate --force)", keyID)
		}
		if err := s.store.RetireKeyEpoch(ctx, keyID, actor); err != nil {
			return s.dbErr(err, "retiring the key failed")
		}
		s.cfg.Logger.Warn("retired key before its expiry", "key_id", keyID, "actor", actor)
		return s.publish(ctx)
	})
	return err
}

// ForceRotate creates a key that signs from now (pstctl keys rotate).
func (s *Service) ForceRotate(ctx context.Context, force bool, actor string) (uint32, error) {
	var id uint32
	err := s.operatorLocked(ctx, func(ctx context.Context) error {
		epochs, err := s.store.KeyEpochs(ctx)
		if err != nil {
			return s.dbErr(err, "reading key epochs failed")
		}
		times := make([]KeyTimes, len(epochs))
		for i, e := range epochs {
			times[i] = e.Times()
		}
		t, err := s.cfg.Policy.ForcedRotation(s.cfg.Clock.Now(), times, force)
		if err != nil {
			return err
		}
		if id, err = s.CreateKey(ctx, t, actor); err != nil {
			return err
		}
		return s.publish(ctx)
	})
	return id, err
}

// publish writes a new commitment if the set of live keys differs from the
// latest one.
func (s *Service) publish(ctx context.Context) error {
	now := s.cfg.Clock.Now()
	epochs, err := s.store.KeyEpochs(ctx)
	if err != nil {
		return s.dbErr(err, "reading key epochs failed")
	}
	var keys []voprf.PublishedKey
	var ids []uint32
	for _, e := range epochs {
		if !e.Times().Live(now) {
			continue
		}
		pk, err := voprf.ParsePublicKeyBlob(e.PublicKey)
		if err != nil {
			return fmt.Errorf("stored public key %d: %w", e.KeyID, err)
		}
		keys = append(keys, voprf.PublishedKey{Public: pk, Expiry: e.Expiry})
		ids = append(ids, e.KeyID)
	}
	if len(keys) == 0 {
		return nil
	}
	slices.Sort(ids)
	_, _, err = s.store.PublishCommitment(ctx, ids, func(id uint64) ([]byte, error) {
		if id > 0xffffffff {
			return nil, errors.New("commitment id overflows uint32")
		}
		return voprf.BuildCommitment(uint32(id), s.cfg.BatchSize, keys)
	}, s.cfg.Actor)
	if err != nil {
		return s.dbErr(err, "publishing the commitment failed")
	}
	return nil
}

// ensureRRKey creates the first redemption-record key if none signs.
func (s *Service) ensureRRKey(ctx context.Context) error {
	keys, err := s.store.RRKeys(ctx)
	if err != nil {
		return s.dbErr(err, "reading record keys failed")
	}
	for _, k := range keys {
		if !k.Retired {
			return nil
		}
	}
	_, err = s.rotateRRKey(ctx, s.cfg.Actor)
	return err
}

// RotateRRKey creates a new redemption-record key in the HSM and retires the
// current one, which stays in the JWKS until every record it signed expired.
// It runs under the rotation lock, so replicas never race for the next id,
// and in its transaction, so the new key and the retirements land together.
func (s *Service) RotateRRKey(ctx context.Context, actor string) (string, error) {
	var id string
	err := s.operatorLocked(ctx, func(ctx context.Context) error {
		var err error
		id, err = s.rotateRRKey(ctx, actor)
		return err
	})
	return id, err
}

// rotateRRKey is RotateRRKey for a caller that holds the rotation lock.
func (s *Service) rotateRRKey(ctx context.Context, actor string) (string, error) {
	keys, err := s.store.RRKeys(ctx)
	if err != nil {
		return "", s.dbErr(err, "reading record keys failed")
	}
	id := fmt.Sprintf("rr-%d", len(keys)+1)
	signer, err := s.custody.GenerateRRKey(ctx, id)
	if err != nil {
		// An earlier attempt may have made the key and then failed to
		// store it (the database went away between the two). Such a key
		// never signed anything, since only stored keys sign; take it
		// rather than be stuck on this id for ever.
		orphan, ferr := s.custody.FindRRKey(ctx, id)
		if ferr != nil {
			return "", s.hsmErr(err, "generating the record key failed")
		}
		s.cfg.Logger.Warn("using a record key an earlier, failed rotation left on the token", "kid", id)
		signer = orphan
	}
	der, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return "", err
	}
	now := s.cfg.Clock.Now()
	// The new key first: if a retirement then fails, the newest key
	// signs and the old one merely stays published a little longer.
	if err := s.store.CreateRRKey(ctx, RRKeyInfo{ID: id, PublicDER: der, CreatedAt: now}, actor); err != nil {
		return "", s.dbErr(err, "storing the record key failed")
	}
	for _, k := range keys {
		if !k.Retired {
			if err := s.store.RetireRRKey(ctx, k.ID, now.Add(s.cfg.RecordLifetime+time.Hour), actor); err != nil {
				return "", s.dbErr(err, "retiring the record key failed")
			}
		}
	}
	return id, nil
}

// Reload loads the latest commitment's key set and record keys into memory,
// unsealing any key not already loaded.
func (s *Service) Reload(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.reload(ctx)
	s.setLoadErr(err)
	return err
}

func (s *Service) reload(ctx context.Context) (err error) {
	version, _, body, err := s.store.LatestCommitment(ctx)
	if err != nil {
		return s.dbErr(err, "reading the commitment failed")
	}
	cur := s.ring.load()
	epochs, err := s.store.KeyEpochs(ctx)
	if err != nil {
		return s.dbErr(err, "reading key epochs failed")
	}
	next := &keySet{version: version, keys: map[uint32]*LoadedKey{}, commitment: body}
	// On failure, wipe what this attempt unsealed (keys carried over from
	// cur stay with cur): a retry every few seconds must not leave a fresh
	// plaintext copy behind each time.
	defer func() {
		if err == nil {
			return
		}
		for id, lk := range next.keys {
			if cur == nil || cur.keys[id] == nil || cur.keys[id].Key != lk.Key {
				lk.Key.Wipe()
			}
		}
	}()
	for _, e := range epochs {
		if cur != nil {
			if lk, ok := cur.keys[e.KeyID]; ok {
				next.keys[e.KeyID] = &LoadedKey{Key: lk.Key, Times: e.Times()}
				continue
			}
		}
		scalar, err := s.custody.Unseal(e.Sealed, keyAAD(e.KeyID, e.NotBefore))
		if err != nil {
			return s.hsmErr(err, fmt.Sprintf("unsealing key %d failed", e.KeyID))
		}
		sk, err := newPrivateKey(e.KeyID, scalar)
		wipe(scalar)
		if err != nil {
			return fmt.Errorf("key %d: %w", e.KeyID, err)
		}
		if string(sk.Public().MarshalBlob()) != string(e.PublicKey) {
			sk.Wipe()
			return fmt.Errorf("key %d: unsealed scalar does not match the stored public key", e.KeyID)
		}
		next.keys[e.KeyID] = &LoadedKey{Key: sk, Times: e.Times()}
	}
	rr, err := s.loadRR(ctx)
	if err != nil {
		return err
	}
	s.ring.swap(next)
	s.rr.Store(rr)
	if cur == nil || cur.version != version {
		s.cfg.Logger.Info("loaded key set", "commitment_id", version, "keys", len(next.keys))
	}
	if lk, ok := next.signing(s.cfg.Clock.Now()); ok && s.cfg.OnSigningKey != nil {
		s.cfg.OnSigningKey(lk.Key.KeyID(), lk.Times.Expiry)
	}
	return nil
}

// newPrivateKey is voprf.NewPrivateKey; tests wrap it to see which keys a
// reload unsealed.
var newPrivateKey = voprf.NewPrivateKey

type rrState struct {
	signing RRKey
	jwks    []byte
}

func (s *Service) loadRR(ctx context.Context) (*rrState, error) {
	infos, err := s.store.RRKeys(ctx)
	if err != nil {
		return nil, s.dbErr(err, "reading record keys failed")
	}
	now := s.cfg.Clock.Now()
	st := &rrState{}
	var published []RRKey
	for _, info := range infos {
		if info.Retired && !info.NotAfter.IsZero() && now.After(info.NotAfter) {
			continue
		}
		pub, err := x509.ParsePKIXPublicKey(info.PublicDER)
		if err != nil {
			return nil, fmt.Errorf("record key %s: %w", info.ID, err)
		}
		published = append(published, RRKey{KID: info.ID, Signer: publicOnly{pub}})
		if !info.Retired {
			signer, err := s.custody.FindRRKey(ctx, info.ID)
			if err != nil {
				return nil, s.hsmErr(err, "finding the record key failed")
			}
			st.signing = RRKey{KID: info.ID, Signer: signer}
		}
	}
	if st.signing.Signer == nil {
		return nil, pstderr.New(pstderr.Unavailable, "no redemption-record key")
	}
	if st.jwks, err = JWKS(published); err != nil {
		return nil, err
	}
	return st, nil
}

// publicOnly lets a public key stand where JWKS wants an RRKey.
type publicOnly struct{ pub crypto.PublicKey }

func (p publicOnly) Public() crypto.PublicKey { return p.pub }
func (p publicOnly) Sign(io.Reader, []byte, crypto.SignerOpts) ([]byte, error) {
	return nil, errors.New("public key only")
}

// Run keeps the service current until ctx ends: it polls for a new key set
// every RefreshInterval and runs the rotation policy every RotationInterval.
// Errors are logged; readiness reflects them.
func (s *Service) Run(ctx context.Context) {
	refresh := time.NewTicker(s.cfg.RefreshInterval)
	defer refresh.Stop()
	rotate := time.NewTicker(s.cfg.RotationInterval)
	defer rotate.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-rotate.C:
			_, rerr := s.Rotate(ctx)
			if rerr != nil {
				s.cfg.Logger.Error("rotation failed", "err", rerr)
			}
			lerr := s.Reload(ctx)
			if lerr != nil {
				s.cfg.Logger.Error("reloading keys failed", "err", lerr)
			}
			if s.cfg.OnRotation != nil && ctx.Err() == nil {
				s.cfg.OnRotation(s.cfg.Clock.Now(), errors.Join(rerr, lerr))
			}
		case <-refresh.C:
			if err := s.refreshIfChanged(ctx); err != nil {
				s.cfg.Logger.Error("reloading keys failed", "err", err)
			}
		}
	}
}

func (s *Service) refreshIfChanged(ctx context.Context) error {
	cur := s.ring.load()
	version, err := s.store.KeySetVersion(ctx)
	if err != nil {
		s.setLoadErr(s.dbErr(err, "reading the commitment failed"))
		return err
	}
	failed := s.lastLoadErr() != nil
	if cur != nil && cur.version == version && !failed {
		return nil
	}
	return s.Reload(ctx)
}

// Close wipes every loaded key. Call it after the HTTP server has drained.
func (s *Service) Close() { s.ring.wipe() }

// --- httpapi.Issuer ---

// Commitment returns the current commitment body and id.
func (s *Service) Commitment(ctx context.Context) ([]byte, uint64, error) {
	ks := s.ring.load()
	if ks == nil || len(ks.commitment) == 0 {
		return nil, 0, pstderr.New(pstderr.Unavailable, "no key commitment loaded")
	}
	return ks.commitment, ks.version, nil
}

// BatchSize is the commitment's batchsize.
func (s *Service) BatchSize() int { return s.cfg.BatchSize }

// Issue signs up to max blinded elements with the current signing key.
func (s *Service) Issue(ctx context.Context, request []byte, max int) ([]byte, int, error) {
	req, err := voprf.ParseIssueRequest(request)
	if err != nil {
		return nil, 0, err
	}
	ks := s.ring.load()
	if ks == nil {
		return nil, 0, pstderr.New(pstderr.Unavailable, "keys not loaded")
	}
	lk, ok := ks.signing(s.cfg.Clock.Now())
	if !ok {
		return nil, 0, pstderr.New(pstderr.Unavailable, "no signing key")
	}
	return lk.Key.Issue(req, min(max, s.cfg.BatchSize), rand.Reader)
}

// liveKeys adapts a snapshot to voprf.KeySet with expiry checked.
type liveKeys struct {
	ks  *keySet
	now time.Time
}

func (l liveKeys) Key(id uint32) (*voprf.PrivateKey, bool) { return l.ks.live(id, l.now) }

// Redeem verifies a token, records the redemption (the double-spend guard),
// signs its redemption record inside that transaction, commits durably and
// only then returns the record. A failure at any step returns no record; a
// failure before the commit leaves the token unspent.
func (s *Service) Redeem(ctx context.Context, request []byte) (string, error) {
	ks := s.ring.load()
	rr := s.rr.Load()
	if ks == nil || rr == nil {
		return "", pstderr.New(pstderr.Unavailable, "keys not loaded")
	}
	now := s.cfg.Clock.Now()
	req, err := voprf.Redeem(liveKeys{ks, now}, request)
	if err != nil {
		return "", err
	}
	cd, err := voprf.ParseClientData(req.ClientData)
	if err != nil {
		return "", err
	}
	claims, err := NewRecordClaims(s.cfg.IssuerOrigin, cd.RedeemingOrigin, req.Token.KeyID, cd.Time(), now, s.cfg.RecordLifetime)
	if err != nil {
		return "", err
	}
	r := Redemption{
		KeyID:           req.Token.KeyID,
		NonceHash:       sha256.Sum256(req.Token.Nonce[:]),
		RecordID:        claims.ID,
		RedeemingOrigin: cd.RedeemingOrigin,
		RedeemedAt:      now,
	}
	// The record is signed inside the redemption's transaction, after the
	// row is in and before it commits: a spent token is refused before it
	// costs an HSM signature, and the record still leaves only once the row
	// is durable.
	var record string
	var signErr error
	err = s.store.RecordRedemption(ctx, r, func() error {
		record, signErr = SignRecord(rr.signing, claims)
		if signErr != nil {
			signErr = s.hsmErr(signErr, "signing the redemption record failed")
		}
		return signErr
	})
	if signErr != nil {
		return "", signErr
	}
	if err != nil {
		return "", s.dbErr(err, "recording the redemption failed")
	}
	return record, nil
}

// JWKS returns the redemption-record keys as a JSON Web Key Set.
func (s *Service) JWKS(ctx context.Context) ([]byte, error) {
	rr := s.rr.Load()
	if rr == nil {
		return nil, pstderr.New(pstderr.Unavailable, "record keys not loaded")
	}
	return rr.jwks, nil
}

// Ready reports whether the database and the HSM answer and keys are loaded.
func (s *Service) Ready(ctx context.Context) error {
	if err := s.store.Ping(ctx); err != nil {
		return s.dbErr(err, "database unreachable")
	}
	if err := s.custody.Ping(ctx); err != nil {
		return s.hsmErr(err, "HSM session unusable")
	}
	if err := s.lastLoadErr(); err != nil {
		return err
	}
	ks := s.ring.load()
	if ks == nil {
		return pstderr.New(pstderr.Unavailable, "keys not loaded")
	}
	if _, ok := ks.signing(s.cfg.Clock.Now()); !ok {
		return pstderr.New(pstderr.Unavailable, "no signing key")
	}
	return nil
}
