package wiring

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pstd/pstd/db"
	"github.com/pstd/pstd/internal/pstderr"
	"github.com/pstd/pstd/internal/testenv"
	"github.com/pstd/pstd/signer"
	"github.com/pstd/pstd/signer/hsm"
	"github.com/pstd/pstd/signer/voprf"
)

// These tests run the issuer service on real SoftHSM and real PostgreSQL.

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type env struct {
	url string
	tok testenv.Token
}

func newEnv(t *testing.T) env {
	return env{url: testenv.NewDatabase(t), tok: testenv.NewToken(t)}
}

// service opens its own pool and HSM session, as a replica would, and
// connects as the pstd_service role, as a deployment should: the
// migrations (run as the schema owner, if migrate is set) must give the
// service every privilege it uses.
func (e env) service(t *testing.T, c signer.Clock, migrate bool) (*signer.Service, *db.Store) {
	t.Helper()
	ctx := context.Background()
	if migrate {
		owner, err := db.Open(ctx, e.url)
		if err != nil {
			t.Fatal(err)
		}
		err = owner.Migrate(ctx)
		owner.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	store, err := db.Open(ctx, testenv.RoleURL(t, e.url, "pstd_service"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	h, err := hsm.Open(hsm.Config{ModulePath: e.tok.Module, TokenLabel: e.tok.Label, PIN: e.tok.PIN})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if err := h.EnsureKEK(ctx); err != nil {
		t.Fatal(err)
	}
	svc, err := signer.New(signer.Config{IssuerOrigin: "https://issuer.example", Clock: c}, store, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.EnsureAuditKey(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	return svc, store
}

func issueOne(t *testing.T, s *signer.Service) voprf.Token {
	t.Helper()
	body, _, err := s.Commitment(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	_, keys, err := voprf.ParseCommitment(body)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := voprf.NewClient(keys[voprf.SortedKeyIDs(keys)[0]]).Blind(1, rand.Reader)
	resp, _, err := s.Issue(context.Background(), p.Request(), 10)
	if err != nil {
		t.Fatal(err)
	}
	id := uint32(resp[2])<<24 | uint32(resp[3])<<16 | uint32(resp[4])<<8 | uint32(resp[5])
	toks, err := voprf.NewClient(keys[id]).Finish(p, resp)
	if err != nil {
		t.Fatal(err)
	}
	return toks[0]
}

func redeem(s *signer.Service, tok voprf.Token, now time.Time) error {
	cd, _ := voprf.MarshalClientData(&voprf.ClientData{RedeemingOrigin: "https://rp.example", RedemptionTimestamp: uint64(now.Unix())})
	raw, _ := voprf.MarshalRedeemRequest(&tok, cd)
	_, err := s.Redeem(context.Background(), raw)
	return err
}

// TestTwoYearsOfRotation steps a fake clock through two years a day at a
// time against the real database and token: never more than 6 published
// keys, no signing key replaced before 60 days, commitment ids strictly
// increasing, and every token of a still-published key redeems once.
func TestTwoYearsOfRotation(t *testing.T) {
	e := newEnv(t)
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s, store := e.service(t, c, true)
	ctx := context.Background()
	type held struct {
		tok    voprf.Token
		expiry time.Time
	}
	var wallet []held
	var lastID uint64
	var signer1 uint32
	var since time.Time
	for day := 0; day < 730; day++ {
		if _, err := s.Rotate(ctx); err != nil {
			t.Fatalf("day %d: %v", day, err)
		}
		if err := s.Reload(ctx); err != nil {
			t.Fatalf("day %d: %v", day, err)
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
		if len(keys) > signer.MaxPublishedKeys {
			t.Fatalf("day %d: %d published keys", day, len(keys))
		}
		if day%10 == 0 {
			tok := issueOne(t, s)
			if tok.KeyID != signer1 {
				if signer1 != 0 && c.Now().Sub(since) < signer.MinSigningPeriod {
					t.Fatalf("day %d: key %d replaced after %v", day, signer1, c.Now().Sub(since))
				}
				signer1, since = tok.KeyID, c.Now()
			}
			ep, err := store.GetKeyEpoch(ctx, tok.KeyID)
			if err != nil {
				t.Fatal(err)
			}
			wallet = append(wallet, held{tok, ep.Expiry})
		}
		if day%10 == 5 {
			for _, h := range wallet {
				if h.expiry.After(c.Now()) {
					if err := redeem(s, h.tok, c.Now()); err != nil && !errors.Is(err, pstderr.AlreadyRedeemed) {
						t.Fatalf("day %d: token of key %d does not redeem: %v", day, h.tok.KeyID, err)
					}
				}
			}
		}
		c.add(24 * time.Hour)
	}
	if lastID < 20 {
		t.Fatalf("only %d commitments in two years", lastID)
	}
	v, err := store.VerifyAuditChain(ctx)
	if r, _ := v.Result(); err != nil || r.Events == 0 {
		t.Fatalf("audit chain: %d %v", r.Events, err)
	}
}

// TestRacingRotation: two replicas (own pools, own HSM sessions) rotate at
// once on an empty database: exactly one key and one commitment result.
func TestRacingRotation(t *testing.T) {
	e := newEnv(t)
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	a, store := e.service(t, c, true)
	b, _ := e.service(t, c, false)
	var wg sync.WaitGroup
	var won atomic.Int32
	for _, s := range []*signer.Service{a, b, a, b} {
		wg.Go(func() {
			ok, err := s.Rotate(context.Background())
			if err != nil {
				t.Error(err)
			}
			if ok {
				won.Add(1)
			}
		})
	}
	wg.Wait()
	keys, err := store.ListKeyEpochs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 {
		t.Fatalf("%d keys after racing rotations, want 1", len(keys))
	}
	id, _, _, err := store.LatestCommitment(context.Background())
	if err != nil || id != 1 {
		t.Fatalf("commitment id %d (%v), want 1", id, err)
	}
}

// TestImportVectorKey imports a BoringSSL vector's private key blob; the
// vector's tokens then redeem through the service, and only once.
func TestImportVectorKey(t *testing.T) {
	f, err := os.Open(filepath.Join("..", "..", "..", "testdata", "pst-vectors", "voprf.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var v struct {
		PrivateKey string   `json:"private_key"`
		Tokens     []string `json:"tokens"`
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatal(err)
		}
		if len(v.Tokens) >= 5 {
			break
		}
	}
	blob, _ := base64.StdEncoding.DecodeString(v.PrivateKey)
	e := newEnv(t)
	c := &clock{t: time.Now()}
	s, store := e.service(t, c, true)
	ctx := context.Background()
	id, err := s.ImportKey(ctx, blob, signer.KeyTimes{NotBefore: c.Now(), Expiry: c.Now().AddDate(0, 4, 0)}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	ep, err := store.GetKeyEpoch(ctx, id)
	if err != nil || !ep.Imported || len(ep.Sealed) < 60 {
		t.Fatalf("stored epoch %+v: %v", ep, err)
	}
	for i, tb := range v.Tokens {
		raw, _ := base64.StdEncoding.DecodeString(tb)
		tok, err := voprf.ParseToken(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := redeem(s, *tok, c.Now()); err != nil {
			t.Fatalf("vector token %d: %v", i, err)
		}
		if err := redeem(s, *tok, c.Now()); !errors.Is(err, pstderr.AlreadyRedeemed) {
			t.Fatalf("vector token %d redeemed twice: %v", i, err)
		}
	}
}
