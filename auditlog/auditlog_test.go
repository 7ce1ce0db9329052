package auditlog

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

type signer struct {
	id  string
	key *ecdsa.PrivateKey
	der []byte
}

func newSigner(t testing.TB, id string) *signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	return &signer{id, k, der}
}

// log builds a chain as the database would: it assigns seq and prev_hash.
type log struct {
	events []Event
	cps    []Signed
}

func (l *log) add(t testing.TB, s *signer, action string, details any) {
	d, _ := json.Marshal(details)
	var id [16]byte
	rand.Read(id[:])
	e := Event{Seq: int64(len(l.events) + 1), Version: V2, ID: hex.EncodeToString(id[:]), At: time.Now().UTC().Truncate(time.Microsecond),
		Actor: "op", Action: action, Subject: "s", Details: d, Key: s.id, PrevHash: make([]byte, 32)}
	if n := len(l.events); n > 0 {
		e.PrevHash = l.events[n-1].Hash
	}
	c, err := e.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	e.Sig, err = s.key.Sign(rand.Reader, Digest(c), crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	e.Hash = ChainHash(e.PrevHash, e.Seq, c, e.Sig)
	l.events = append(l.events, e)
}

func (l *log) intro(t testing.TB, by, k *signer) {
	l.add(t, by, ActionKeyCreate, KeyIntro{Key: k.id, PublicKey: k.der})
}

func (l *log) checkpoint(t testing.TB, s *signer) Signed {
	last := l.events[len(l.events)-1]
	c := Checkpoint{V: 1, N: int64(len(l.cps) + 1), At: time.Now().UTC().Format(TimeFormat), AuditSeq: last.Seq, Head: hex.EncodeToString(last.Hash), Key: s.id}
	if n := len(l.cps); n > 0 {
		c.Prev, _ = l.cps[n-1].Digest()
	}
	body, _ := c.Canonical()
	sig, _ := s.key.Sign(rand.Reader, Digest(body), crypto.SHA256)
	sc := Signed{Body: body, Sig: sig}
	l.cps = append(l.cps, sc)
	return sc
}

func (l *log) bundle() *Bundle {
	return &Bundle{Format: BundleFormat, Events: l.events, Checkpoints: l.cps}
}

func verify(l *log, root string, anchor *Signed) (Result, error) {
	v := NewVerifier()
	v.TrustRoot = root
	for _, e := range l.events {
		if err := v.Add(e); err != nil {
			r, _ := v.Result()
			return r, err
		}
	}
	if err := v.Checkpoints(l.cps); err != nil {
		r, _ := v.Result()
		return r, err
	}
	if anchor != nil {
		if err := v.Anchor(*anchor, "anchor"); err != nil {
			r, _ := v.Result()
			return r, err
		}
	}
	return v.Result()
}

func sample(t *testing.T) (*log, *signer, Signed) {
	a := newSigner(t, "audit-1")
	l := &log{}
	l.intro(t, a, a)
	for i := range 5 {
		l.add(t, a, "test.event", map[string]any{"i": i, "s": "ünï <&> \u2028"})
	}
	anchor := l.checkpoint(t, a)
	l.add(t, a, "test.event", map[string]any{"after": true})
	return l, a, anchor
}

func TestVerifyGoodLog(t *testing.T) {
	l, a, anchor := sample(t)
	r, err := verify(l, Fingerprint(a.der), &anchor)
	if err != nil {
		t.Fatal(err)
	}
	if r.Events != 7 || r.Signed != 7 || r.Checkpoints != 1 || r.Root != Fingerprint(a.der) || len(r.Keys) != 1 {
		t.Fatalf("%+v", r)
	}
}

func TestVerifyFindsTampering(t *testing.T) {
	for _, c := range []struct {
		name   string
		edit   func(l *log, a *signer)
		seq    int64
		cp     int64
		anchor bool
	}{
		{"edited actor", func(l *log, _ *signer) { l.events[2].Actor = "mallory" }, 3, 0, false},
		{"edited details", func(l *log, _ *signer) { l.events[3].Details = json.RawMessage(`{"i":40}`) }, 4, 0, false},
		{"edited time", func(l *log, _ *signer) { l.events[1].At = l.events[1].At.Add(time.Second) }, 2, 0, false},
		{"deleted event", func(l *log, _ *signer) { l.events = append(l.events[:2], l.events[3:]...) }, 3, 0, false},
		{"truncated behind the anchor", func(l *log, _ *signer) { l.events, l.cps = l.events[:4], nil }, 0, 1, true},
		{"forged row, own key", func(l *log, _ *signer) {
			l.add(t, newSigner(t, "audit-1"), "key.retire", map[string]any{})
		}, 8, 0, false},
		{"forged key introduction", func(l *log, _ *signer) {
			m := newSigner(t, "audit-9")
			l.intro(t, m, m)
		}, 8, 0, false},
		{"rehashed after an edit", func(l *log, a *signer) {
			l.events[2].Actor = "mallory"
			for i := 2; i < len(l.events); i++ {
				if i > 0 {
					l.events[i].PrevHash = l.events[i-1].Hash
				}
				c, _ := l.events[i].Canonical()
				l.events[i].Hash = ChainHash(l.events[i].PrevHash, l.events[i].Seq, c, l.events[i].Sig)
			}
		}, 3, 0, false},
		{"swapped", func(l *log, _ *signer) { l.events[2], l.events[3] = l.events[3], l.events[2] }, 3, 0, false},
		{"replayed event", func(l *log, a *signer) {
			e := l.events[2]
			e.Seq, e.PrevHash = 8, l.events[6].Hash
			c, _ := e.Canonical()
			e.Hash = ChainHash(e.PrevHash, e.Seq, c, e.Sig)
			l.events = append(l.events, e)
		}, 8, 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, a, anchor := sample(t)
			c.edit(l, a)
			var ap *Signed
			if c.anchor {
				ap = &anchor
			}
			_, err := verify(l, Fingerprint(a.der), ap)
			var ae *Error
			if !errors.As(err, &ae) || ae.Seq != c.seq || ae.Checkpoint != c.cp {
				t.Fatalf("got %v, want a break at event %d / checkpoint %d", err, c.seq, c.cp)
			}
		})
	}
}

func TestKeyRotationAndTrustRoot(t *testing.T) {
	a, b := newSigner(t, "audit-1"), newSigner(t, "audit-2")
	l := &log{}
	l.intro(t, a, a)
	l.add(t, a, "test.event", map[string]any{})
	l.intro(t, a, b) // introduced by the trusted key
	l.add(t, b, "test.event", map[string]any{})
	l.checkpoint(t, b)
	r, err := verify(l, "", nil)
	if err != nil || len(r.Keys) != 2 || r.Root != Fingerprint(a.der) {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := verify(l, Fingerprint(b.der), nil); err == nil {
		t.Fatal("a log with another trust root verified against a pinned root")
	}
}

// The bundle round-trips through JSON, verifies with no other input, and
// fails when an action name is edited in the file.
func TestBundle(t *testing.T) {
	l, a, anchor := sample(t)
	b := l.bundle()
	b.Anchor = &anchor
	b.Keys = []KeyInfo{{ID: a.id, PublicKey: a.der}}
	raw, err := json.MarshalIndent(b, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	back, err := ReadBundle(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := back.Verify(""); err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(raw), `"test.event"`, `"test.evend"`, 1)
	back, err = ReadBundle(strings.NewReader(edited))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := back.Verify(""); err == nil {
		t.Fatal("an edited action verified")
	}
	if _, err := ReadBundle(strings.NewReader(`{"format":"pstd-audit-bundle-v1","extra":1}`)); err == nil {
		t.Fatal("unknown field accepted")
	}
}

// The canonical bytes are JCS: independent of key order and spacing in the
// stored details, and byte-exact for the documented example.
func TestCanonicalForm(t *testing.T) {
	e := Event{Version: V2, ID: "000102030405060708090a0b0c0d0e0f", At: time.Date(2026, 11, 30, 12, 0, 0, 123456000, time.UTC),
		Actor: "alice@ops", Action: "key.retire", Subject: "key:7", Details: json.RawMessage(`{ "reason" : "suspected leak", "key_id": 7 }`), Key: "audit-1"}
	c, err := e.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"action":"key.retire","actor":"alice@ops","at":"2026-11-30T12:00:00.123456Z","details":{"key_id":7,"reason":"suspected leak"},"id":"000102030405060708090a0b0c0d0e0f","key":"audit-1","subject":"key:7","v":2}`
	if string(c) != want {
		t.Fatalf("canonical:\n%s\nwant\n%s", c, want)
	}
	// The worked example of docs/AUDIT.md.
	if d := sha256.Sum256(c); hex.EncodeToString(d[:]) != "d9359d30216e180b386e6d2295a26c8ecabfb5071d604334c52582eecd176441" {
		t.Fatalf("SHA-256 of the example: %x", d)
	}
	if h := ChainHash(make([]byte, 32), 1, c, []byte{1}); hex.EncodeToString(h) != "78649d4d4903e48fb1cea486c6ad19a6d844f90b6e2a06a2316ae47f1347be22" {
		t.Fatalf("chain hash of the example: %x", h)
	}
}

func FuzzReadBundle(f *testing.F) {
	l, _, _ := sample(&testing.T{})
	raw, _ := json.Marshal(l.bundle())
	f.Add(raw)
	f.Add([]byte(`{"format":"pstd-audit-bundle-v1"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		bd, err := ReadBundle(bytes.NewReader(b))
		if err != nil {
			return
		}
		_, _ = bd.Verify("")
	})
}

// BenchmarkVerify100k measures verifying a log of 100,000 signed events
// (chain, signature and id checks) and a checkpoint every 1,000.
func BenchmarkVerify100k(b *testing.B) {
	a := newSigner(b, "audit-1")
	l := &log{}
	l.intro(b, a, a)
	for i := range 100_000 - 1 {
		l.add(b, a, "count.issuance", map[string]any{"key_id": 1, "tokens": i})
		if i%1000 == 0 {
			l.checkpoint(b, a)
		}
	}
	b.ResetTimer()
	for range b.N {
		if _, err := verify(l, "", nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Seconds())/float64(b.N), "s/100k-events")
}
