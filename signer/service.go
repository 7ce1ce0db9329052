package signer

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pstd/pstd/db"
	"github.com/pstd/pstd/internal/pstderr"
	"github.com/pstd/pstd/rp"
	"github.com/pstd/pstd/signer/voprf"
)

// Service is the PST issuer: it holds the unsealed keys of the current key
// set, issues with the signing key, redeems against every published key with
// the database as double-spend guard, and signs redemption records with the
// HSM-held record key. It implements httpapi.Issuer. See doc.go for what it
// owns and the order of its fail-closed steps.
type Service struct {
	cfg     Config
	store   Store
	custody Custody
	metrics *metrics
	ring    keyring
	counts  *counter    // issuance and refusals, flushed as audit events (counts.go)
	info    ReplicaInfo // set by Started, for the replica's stop event

	mu sync.Mutex // serialises reloads
	rr atomic.Pointer[rrState]
	// loadErr is the last load's failure (nil: none). Atomic, so that
	// readiness never waits behind a slow reload holding mu.
	loadErr atomic.Pointer[loadFailure]
	// fenced is set while the database is behind the HSM's audit anchor.
	fenced atomic.Pointer[loadFailure]
	audit  atomic.Pointer[db.AuditSigner] // the key that signs audit events
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
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	if !cfg.RegistrationExpiry.IsZero() {
		m.registrationExpiry.Set(float64(cfg.RegistrationExpiry.Unix()))
	}
	return &Service{cfg: cfg, store: store, custody: custody, metrics: m, counts: newCounter()}, nil
}

// keyAAD binds a sealed key to its id, protocol and both of its times, so
// a sealed blob cannot be swapped onto another key row, and a row whose
// not-before or expiry was changed in the database no longer unseals.
func keyAAD(keyID uint32, notBefore, expiry time.Time) []byte {
	return []byte("pstd/voprf-key/v2|" + voprf.ProtocolVersion + "|" + strconv.FormatUint(uint64(keyID), 10) +
		"|" + strconv.FormatInt(notBefore.UTC().Unix(), 10) + "|" + strconv.FormatInt(expiry.UTC().Unix(), 10))
}

// keyAADv1 is the AAD of keys sealed before expiry was bound (id and
// not-before only). Such keys still unseal; their expiry is protected by the
// signed audit log and checkpoints alone.
func keyAADv1(keyID uint32, notBefore time.Time) []byte {
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
	clear(b) // key scalars are drawn from it: no copy left on the heap
	return len(p), nil
}

// maxClockSkew bounds how far a browser's redemption timestamp may be from
// the issuer's clock.
const maxClockSkew = 24 * time.Hour

// The request path: what httpapi.Issuer asks of the service.

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
	if err := s.fenceErr(); err != nil {
		return nil, 0, err
	}
	req, err := voprf.ParseIssueRequest(request)
	if err != nil {
		err = fromVOPRF(err)
		s.countRefusal(err, 0)
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
	resp, n, err := lk.Key.Issue(req, min(max, s.cfg.BatchSize), rand.Reader)
	if err != nil {
		err = fromVOPRF(err)
		s.countRefusal(err, 0)
		return nil, 0, err
	}
	s.counts.issue(lk.Key.KeyID(), n, s.cfg.Clock.Now())
	s.metrics.issuedByKey.WithLabelValues(keyLabel(ks, lk.Key.KeyID())).Add(float64(n))
	return resp, n, nil
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
	record, err := s.redeem(ctx, request)
	s.countRedemption(request, err)
	return record, err
}

// countRedemption counts a redemption attempt by its token's key and outcome.
func (s *Service) countRedemption(request []byte, err error) {
	ks := s.ring.load()
	label := "other"
	outcome := "redeemed"
	id := uint32(0)
	if req, perr := voprf.ParseRedeemRequest(request); perr == nil {
		id = req.Token.KeyID
		label = keyLabel(ks, id)
	}
	switch {
	case err == nil:
	case errors.Is(err, pstderr.AlreadyRedeemed):
		outcome = "replayed"
	case errors.Is(err, pstderr.UnknownKey):
		outcome = "unknown-key"
		if ks != nil && ks.keys[id] != nil && !ks.keys[id].Times.Live(s.cfg.Clock.Now()) {
			outcome = "expired-key"
		}
	case errors.Is(err, pstderr.InvalidToken), errors.Is(err, pstderr.Malformed), errors.Is(err, pstderr.BadPoint):
		outcome = "invalid"
	default:
		outcome = "refused"
	}
	s.metrics.redeemedByKey.WithLabelValues(label, outcome).Inc()
}

func (s *Service) redeem(ctx context.Context, request []byte) (string, error) {
	if err := s.fenceErr(); err != nil {
		return "", err
	}
	ks := s.ring.load()
	rr := s.rr.Load()
	if ks == nil || rr == nil {
		return "", pstderr.New(pstderr.Unavailable, "keys not loaded")
	}
	now := s.cfg.Clock.Now()
	// The checks that cost nothing come first: the request's framing, the
	// client data, the redeeming origin (canonical, and on the allow-list)
	// and the redemption time; only then the token's verification (a
	// scalar multiplication), the database row and the HSM signature.
	refuse := func(err error) (string, error) {
		s.countRefusal(err, 0)
		return "", err
	}
	parsed, err := voprf.ParseRedeemRequest(request)
	if err != nil {
		return refuse(fromVOPRF(err))
	}
	cd, err := voprf.ParseClientData(parsed.ClientData)
	if err != nil {
		return refuse(fromVOPRF(err))
	}
	origin, err := rp.CanonicalOrigin(cd.RedeemingOrigin)
	if err != nil {
		return refuse(pstderr.New(pstderr.Malformed, "redeeming-origin is not an origin: %v", err))
	}
	if !s.cfg.Redeemers.Allows(origin) {
		return refuse(pstderr.New(pstderr.Denied, "redeeming origin %s is not allowed to redeem", origin))
	}
	if d := cd.Time().Sub(now); d > maxClockSkew || d < -maxClockSkew {
		return refuse(pstderr.New(pstderr.Malformed, "redemption-timestamp is more than a day from now"))
	}
	req, err := voprf.Redeem(liveKeys{ks, now}, request)
	if err != nil {
		err = fromVOPRF(err)
		s.countRefusal(err, 0)
		return "", err
	}
	claims, err := NewRecordClaims(s.cfg.IssuerOrigin, origin, req.Token.KeyID, cd.Time(), now, s.cfg.RecordLifetime)
	if err != nil {
		return "", err
	}
	r := db.Redemption{
		KeyID:           req.Token.KeyID,
		NonceHash:       sha256.Sum256(req.Token.Nonce[:]),
		RecordID:        claims.ID,
		RedeemingOrigin: origin,
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
		err = s.dbErr(err, "recording the redemption failed")
		s.countRefusal(err, req.Token.KeyID) // a replay names a key the issuer holds
		return "", err
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
	if err := s.fenceErr(); err != nil {
		return err
	}
	if s.audit.Load() == nil {
		return pstderr.New(pstderr.Unavailable, "audit key not loaded")
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
