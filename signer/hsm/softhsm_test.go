package hsm

// Integration tests against a real SoftHSM2 token (testenv.NewToken). They
// skip without SoftHSM unless PSTD_TEST_REQUIRE=1 (make test, CI).

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/pstd/pstd/internal/testenv"
)

// tokenConfig is tok's Config with a logger that fails the test if the PIN
// is ever logged.
func tokenConfig(t testing.TB, tok testenv.Token) Config {
	var mu sync.Mutex
	var buf bytes.Buffer
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		if strings.Contains(buf.String(), tok.PIN) {
			t.Errorf("the PIN was logged: %s", buf.String())
		}
	})
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return Config{ModulePath: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN, Logger: log}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// openToken makes a fresh token and opens it; the HSM closes before the
// token is deleted.
func openToken(t *testing.T) (testenv.Token, *HSM) {
	t.Helper()
	tok := testenv.NewToken(t)
	h, err := Open(tokenConfig(t, tok))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return tok, h
}

func openWithKEK(t *testing.T) (testenv.Token, *HSM) {
	t.Helper()
	tok, h := openToken(t)
	if err := h.EnsureKEK(context.Background()); err != nil {
		t.Fatalf("EnsureKEK: %v", err)
	}
	return tok, h
}

// rawToken is an independent miekg/pkcs11 view of a token for checking what
// is really stored there. It relies on an open HSM for the module's
// initialisation and the login (both are per process).
type rawToken struct {
	p    *pkcs11.Ctx
	sess pkcs11.SessionHandle
	slot uint
}

func openRaw(t *testing.T, tok testenv.Token) *rawToken {
	t.Helper()
	p := pkcs11.New(tok.Module)
	if p == nil {
		t.Fatal("pkcs11.New")
	}
	slot, _, err := findSlot(p, tok.Label)
	if err != nil {
		p.Destroy()
		t.Fatal(err)
	}
	sess, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		p.Destroy()
		t.Fatal(err)
	}
	r := &rawToken{p: p, sess: sess, slot: slot}
	t.Cleanup(func() {
		_ = p.CloseSession(sess)
		p.Destroy()
	})
	return r
}

func (r *rawToken) find(t *testing.T, class uint, label string) []pkcs11.ObjectHandle {
	t.Helper()
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}
	if err := r.p.FindObjectsInit(r.sess, tmpl); err != nil {
		t.Fatal(err)
	}
	hs, _, err := r.p.FindObjects(r.sess, 100)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.p.FindObjectsFinal(r.sess); err != nil {
		t.Fatal(err)
	}
	return hs
}

func (r *rawToken) one(t *testing.T, class uint, label string) pkcs11.ObjectHandle {
	t.Helper()
	hs := r.find(t, class, label)
	if len(hs) != 1 {
		t.Fatalf("found %d objects of class %d labelled %q, want 1", len(hs), class, label)
	}
	return hs[0]
}

func (r *rawToken) bools(t *testing.T, h pkcs11.ObjectHandle, types ...uint) map[uint]bool {
	t.Helper()
	tmpl := make([]*pkcs11.Attribute, len(types))
	for i, ty := range types {
		tmpl[i] = pkcs11.NewAttribute(ty, nil)
	}
	got, err := r.p.GetAttributeValue(r.sess, h, tmpl)
	if err != nil {
		t.Fatal(err)
	}
	m := map[uint]bool{}
	for _, a := range got {
		m[a.Type] = len(a.Value) == 1 && a.Value[0] != 0
	}
	return m
}

// assertNotExtractable checks a secret or private key's custody attributes
// and that its value cannot be read.
func assertNotExtractable(t *testing.T, r *rawToken, h pkcs11.ObjectHandle) {
	t.Helper()
	m := r.bools(t, h, pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE,
		pkcs11.CKA_ALWAYS_SENSITIVE, pkcs11.CKA_NEVER_EXTRACTABLE)
	want := map[uint]bool{
		pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: true, pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: false,
		pkcs11.CKA_ALWAYS_SENSITIVE: true, pkcs11.CKA_NEVER_EXTRACTABLE: true,
	}
	for ty, w := range want {
		if m[ty] != w {
			t.Errorf("attribute 0x%x = %v, want %v", ty, m[ty], w)
		}
	}
	_, err := r.p.GetAttributeValue(r.sess, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if code, ok := p11Code(err); !ok || code != pkcs11.CKR_ATTRIBUTE_SENSITIVE {
		t.Errorf("reading CKA_VALUE: %v, want CKR_ATTRIBUTE_SENSITIVE", err)
	}
}

func TestSoftHSMSealUnsealRoundTrip(t *testing.T) {
	_, h := openWithKEK(t)
	for _, n := range []int{0, 1, 48, 1000} {
		pt := bytes.Repeat([]byte{0xa5}, n)
		aad := []byte(fmt.Sprintf("pstd/voprf-key/v1|%d", n))
		sealed, err := h.Seal(pt, aad)
		if err != nil {
			t.Fatalf("Seal(%d bytes): %v", n, err)
		}
		if len(sealed) != n+sealOverhead || sealed[0] != SealVersion {
			t.Fatalf("sealed blob: %d bytes, version %d", len(sealed), sealed[0])
		}
		if gen, err := SealedKEKGeneration(sealed); err != nil || gen != KEKGeneration {
			t.Fatalf("SealedKEKGeneration = %d, %v", gen, err)
		}
		if n >= 16 && bytes.Contains(sealed, pt) {
			t.Fatal("plaintext visible in the sealed blob")
		}
		got, err := h.Unseal(sealed, aad)
		if err != nil {
			t.Fatalf("Unseal: %v", err)
		}
		if !bytes.Equal(got, pt) {
			t.Fatalf("round trip: got %x", got)
		}
	}
}

func TestSoftHSMSealFreshIVs(t *testing.T) {
	_, h := openWithKEK(t)
	pt, aad := []byte("the same key scalar"), []byte("the same aad")
	seen := map[string]bool{}
	for i := 0; i < 20; i++ {
		s, err := h.Seal(pt, aad)
		if err != nil {
			t.Fatal(err)
		}
		iv := string(s[sealHeaderLen : sealHeaderLen+gcmIVLen])
		if seen[iv] {
			t.Fatalf("IV %x repeated", iv)
		}
		seen[iv] = true
	}
}

func TestSoftHSMUnsealRefusesTampering(t *testing.T) {
	_, h := openWithKEK(t)
	pt, aad := []byte("k = 0x1234"), []byte("key 7")
	sealed, err := h.Seal(pt, aad)
	if err != nil {
		t.Fatal(err)
	}
	for i := range sealed {
		bad := bytes.Clone(sealed)
		bad[i] ^= 0x01
		if _, err := h.Unseal(bad, aad); !errors.Is(err, ErrUnsealFailed) {
			t.Fatalf("flipped byte %d: err = %v, want ErrUnsealFailed", i, err)
		}
	}
	for _, n := range []int{0, 1, sealOverhead - 1, len(sealed) - 1} {
		if _, err := h.Unseal(sealed[:n], aad); !errors.Is(err, ErrUnsealFailed) {
			t.Fatalf("truncated to %d: err = %v", n, err)
		}
	}
	if _, err := h.Unseal(append(bytes.Clone(sealed), 0), aad); !errors.Is(err, ErrUnsealFailed) {
		t.Fatalf("extended: err = %v", err)
	}
	// The session is still fine after all those failures.
	if got, err := h.Unseal(sealed, aad); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Unseal after failures: %v", err)
	}
}

func TestSoftHSMUnsealRefusesWrongAAD(t *testing.T) {
	_, h := openWithKEK(t)
	sealed, err := h.Seal([]byte("secret"), []byte("key 1|epoch 100"))
	if err != nil {
		t.Fatal(err)
	}
	for _, aad := range [][]byte{nil, []byte("key 2|epoch 100"), []byte("key 1|epoch 101"), []byte("key 1|epoch 100 ")} {
		if _, err := h.Unseal(sealed, aad); !errors.Is(err, ErrUnsealFailed) {
			t.Fatalf("aad %q: err = %v, want ErrUnsealFailed", aad, err)
		}
	}
}

func TestSoftHSMSealNeedsKEK(t *testing.T) {
	_, h := openToken(t)
	if _, err := h.Seal([]byte("x"), nil); !errors.Is(err, ErrNoKEK) {
		t.Fatalf("Seal without EnsureKEK: %v, want ErrNoKEK", err)
	}
}

func TestSoftHSMKEKNotExtractable(t *testing.T) {
	tok, h := openWithKEK(t)
	r := openRaw(t, tok)
	k := r.one(t, pkcs11.CKO_SECRET_KEY, KEKLabel(KEKGeneration))
	assertNotExtractable(t, r, k)
	m := r.bools(t, k, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_WRAP, pkcs11.CKA_UNWRAP, pkcs11.CKA_MODIFIABLE)
	if !m[pkcs11.CKA_ENCRYPT] || !m[pkcs11.CKA_DECRYPT] || m[pkcs11.CKA_WRAP] || m[pkcs11.CKA_UNWRAP] || m[pkcs11.CKA_MODIFIABLE] {
		t.Errorf("KEK usage attributes: %v", m)
	}
	// Nor can its attributes be relaxed.
	err := r.p.SetAttributeValue(r.sess, k, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true)})
	if err == nil {
		t.Error("CKA_EXTRACTABLE could be set to true")
	}
	// EnsureKEK again finds the key instead of making a second one.
	if err := h.EnsureKEK(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.one(t, pkcs11.CKO_SECRET_KEY, KEKLabel(KEKGeneration))
}

func TestSoftHSMRRKeySignsAndVerifies(t *testing.T) {
	tok, h := openToken(t)
	ctx := context.Background()
	s, err := h.GenerateRRKey(ctx, "rr-1")
	if err != nil {
		t.Fatalf("GenerateRRKey: %v", err)
	}
	pub, ok := s.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("public key %T", s.Public())
	}
	digest := sha256.Sum256([]byte("header.claims"))
	sig, err := s.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		t.Fatal("signature does not verify (ASN.1 DER)")
	}
	if _, err := s.Sign(nil, digest[:20], crypto.SHA256); err == nil {
		t.Fatal("a 20-byte digest signed as SHA-256")
	}

	found, err := h.FindRRKey(ctx, "rr-1")
	if err != nil {
		t.Fatalf("FindRRKey: %v", err)
	}
	if !pub.Equal(found.Public()) {
		t.Fatal("FindRRKey returned another public key")
	}
	sig2, err := found.Sign(nil, digest[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(pub, digest[:], sig2) {
		t.Fatalf("found key: %v", err)
	}

	r := openRaw(t, tok)
	assertNotExtractable(t, r, r.one(t, pkcs11.CKO_PRIVATE_KEY, RRKeyLabel("rr-1")))
	r.one(t, pkcs11.CKO_PUBLIC_KEY, RRKeyLabel("rr-1"))

	if _, err := h.GenerateRRKey(ctx, "rr-1"); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("second GenerateRRKey: %v, want ErrKeyExists", err)
	}
	if _, err := h.FindRRKey(ctx, "rr-2"); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("FindRRKey(rr-2): %v, want ErrKeyNotFound", err)
	}
	if err := h.deleteRRKey(ctx, "rr-1"); err != nil {
		t.Fatalf("DeleteRRKey: %v", err)
	}
	if n := len(r.find(t, pkcs11.CKO_PRIVATE_KEY, RRKeyLabel("rr-1"))) + len(r.find(t, pkcs11.CKO_PUBLIC_KEY, RRKeyLabel("rr-1"))); n != 0 {
		t.Fatalf("%d objects left after DeleteRRKey", n)
	}
	if _, err := h.FindRRKey(ctx, "rr-1"); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("FindRRKey after delete: %v", err)
	}
	if err := h.deleteRRKey(ctx, "rr-1"); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("second DeleteRRKey: %v", err)
	}
	if _, err := s.Sign(nil, digest[:], crypto.SHA256); err == nil {
		t.Fatal("a deleted key still signs")
	}
	if n := h.reconnectCount(); n != 0 {
		t.Fatalf("%d reconnects; a deleted key is not a lost session", n)
	}
}

func TestSoftHSMRandom(t *testing.T) {
	_, h := openToken(t)
	a, err := h.Random(32)
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.Random(32)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 32 || bytes.Equal(a, b) || bytes.Equal(a, make([]byte, 32)) {
		t.Fatalf("Random: %x %x", a, b)
	}
	if _, err := h.Random(-1); err == nil {
		t.Fatal("Random(-1)")
	}
}

func TestSoftHSMWrongPIN(t *testing.T) {
	tok := testenv.NewToken(t)
	bad := "wrong-" + tok.PIN
	cfg := tokenConfig(t, tok)
	cfg.PIN = bad
	h, err := Open(cfg)
	if !errors.Is(err, ErrBadPIN) {
		t.Fatalf("Open with a wrong PIN: %v, want ErrBadPIN", err)
	}
	if h != nil {
		t.Fatal("Open returned an HSM with an error")
	}
	for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
		if strings.Contains(s, bad) || strings.Contains(s, tok.PIN) {
			t.Fatalf("error text contains the PIN: %s", s)
		}
	}
	// One failure did not lock the token: the right PIN still works.
	h, err = Open(tokenConfig(t, tok))
	if err != nil {
		t.Fatalf("Open with the right PIN after a wrong one: %v", err)
	}
	defer h.Close()
	if err := h.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	// While this process is logged in, PKCS#11 would accept any PIN
	// (CKR_USER_ALREADY_LOGGED_IN); a second Open must still check it.
	if _, err := Open(cfg); !errors.Is(err, ErrBadPIN) {
		t.Fatalf("second Open with a wrong PIN while logged in: %v, want ErrBadPIN", err)
	}
	h2, err := Open(tokenConfig(t, tok))
	if err != nil {
		t.Fatalf("second Open with the right PIN: %v", err)
	}
	if err := h2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Ping(context.Background()); err != nil {
		t.Fatalf("first HSM after the second closed: %v", err)
	}
}

func TestSoftHSMMissingToken(t *testing.T) {
	tok := testenv.NewToken(t)
	cfg := tokenConfig(t, tok)
	cfg.TokenLabel = testenv.RandomName("no-such-token-")
	if _, err := Open(cfg); !errors.Is(err, ErrNoToken) {
		t.Fatalf("Open(unknown label): %v, want ErrNoToken", err)
	}
	// The same while another HSM holds the module open: crypto11 would
	// finalise the module under it if we let it look for the token.
	_, h := openWithKEK(t)
	if _, err := Open(cfg); !errors.Is(err, ErrNoToken) {
		t.Fatalf("Open(unknown label) with the module in use: %v, want ErrNoToken", err)
	}
	if _, err := h.Seal([]byte("still alive"), nil); err != nil {
		t.Fatalf("the open HSM broke: %v", err)
	}
	if err := h.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := h.reconnectCount(); n != 0 {
		t.Fatalf("the open HSM lost its session (%d reconnects)", n)
	}
}

func TestSoftHSMMissingModule(t *testing.T) {
	tok := testenv.NewToken(t)
	notModule := filepath.Join(t.TempDir(), "not-a-module.so")
	if err := os.WriteFile(notModule, []byte("not an ELF file"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/nonexistent/libpkcs11.so", notModule, t.TempDir(), ""} {
		cfg := tokenConfig(t, tok)
		cfg.ModulePath = path
		if _, err := Open(cfg); !errors.Is(err, ErrNoModule) {
			t.Fatalf("Open(module %q): %v, want ErrNoModule", path, err)
		}
	}
}

func TestSoftHSMKeysPersistAcrossReopen(t *testing.T) {
	tok := testenv.NewToken(t)
	ctx := context.Background()
	h, err := Open(tokenConfig(t, tok))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.EnsureKEK(ctx); err != nil {
		t.Fatal(err)
	}
	pt, aad := []byte("voprf scalar"), []byte("key 1")
	sealed, err := h.Seal(pt, aad)
	if err != nil {
		t.Fatal(err)
	}
	s, err := h.GenerateRRKey(ctx, "rr-1")
	if err != nil {
		t.Fatal(err)
	}
	pub := s.Public().(*ecdsa.PublicKey)
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := h.Seal(pt, aad); !errors.Is(err, ErrClosed) {
		t.Fatalf("Seal after Close: %v", err)
	}
	if _, err := s.Sign(nil, make([]byte, 32), crypto.SHA256); !errors.Is(err, ErrClosed) {
		t.Fatalf("Sign after Close: %v", err)
	}

	h, err = Open(tokenConfig(t, tok))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	// Unseal finds the KEK without EnsureKEK.
	got, err := h.Unseal(sealed, aad)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Unseal after reopen: %v", err)
	}
	if err := h.EnsureKEK(ctx); err != nil {
		t.Fatal(err)
	}
	r := openRaw(t, tok)
	r.one(t, pkcs11.CKO_SECRET_KEY, KEKLabel(KEKGeneration))
	found, err := h.FindRRKey(ctx, "rr-1")
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(found.Public()) {
		t.Fatal("RR key changed across Close/Open")
	}
	d := sha256.Sum256([]byte("x"))
	sig, err := found.Sign(nil, d[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(pub, d[:], sig) {
		t.Fatalf("sign after reopen: %v", err)
	}
}

func TestSoftHSMSessionLossAndReconnect(t *testing.T) {
	tok, h := openWithKEK(t)
	ctx := context.Background()
	s, err := h.GenerateRRKey(ctx, "rr-1")
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := h.Seal([]byte("k"), nil)
	if err != nil {
		t.Fatal(err)
	}
	// What an HSM restart looks like to the process: every session on the
	// slot is gone, and with them the login.
	r := openRaw(t, tok)
	if err := r.p.CloseAllSessions(r.slot); err != nil {
		t.Fatal(err)
	}
	// The raw view's own session died too; open a new one later.
	if err := h.Ping(ctx); err != nil {
		t.Fatalf("Ping after session loss: %v", err)
	}
	if h.reconnectCount() != 1 {
		t.Fatalf("Reconnects = %d, want 1", h.reconnectCount())
	}
	d := sha256.Sum256([]byte("after"))
	sig, err := s.Sign(nil, d[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatalf("old signer after reconnect: %v", err)
	}
	if _, err := h.Unseal(sealed, nil); err != nil {
		t.Fatalf("Unseal after reconnect: %v", err)
	}

	// Loss noticed by an operation rather than Ping.
	r2 := openRaw(t, tok)
	if err := r2.p.CloseAllSessions(r2.slot); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sign(nil, d[:], crypto.SHA256); err != nil {
		t.Fatalf("Sign across a session loss: %v", err)
	}
	if h.reconnectCount() != 2 {
		t.Fatalf("Reconnects = %d, want 2", h.reconnectCount())
	}
	if err := h.reopen(); err != nil {
		t.Fatalf("Reopen: %v", err)
	}
	if _, err := h.Unseal(sealed, nil); err != nil {
		t.Fatalf("Unseal after Reopen: %v", err)
	}
}

func TestSoftHSMConcurrentUse(t *testing.T) {
	_, h := openWithKEK(t)
	ctx := context.Background()
	s, err := h.GenerateRRKey(ctx, "rr-1")
	if err != nil {
		t.Fatal(err)
	}
	pub := s.Public().(*ecdsa.PublicKey)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				d := sha256.Sum256([]byte{byte(g), byte(i)})
				sig, err := s.Sign(nil, d[:], crypto.SHA256)
				if err != nil || !ecdsa.VerifyASN1(pub, d[:], sig) {
					errs <- fmt.Errorf("sign: %v", err)
					return
				}
				aad := []byte{byte(g)}
				sealed, err := h.Seal(d[:], aad)
				if err != nil {
					errs <- err
					return
				}
				got, err := h.Unseal(sealed, aad)
				if err != nil || !bytes.Equal(got, d[:]) {
					errs <- fmt.Errorf("unseal: %v", err)
					return
				}
				if err := h.Ping(ctx); err != nil {
					errs <- err
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestSoftHSMConfigFromURI(t *testing.T) {
	tok := testenv.NewToken(t)
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := ConfigFromURI("pkcs11:token=" + tok.Label + "?module-path=" + tok.Module + "&pin-source=file:" + pinFile)
	if err != nil {
		t.Fatal(err)
	}
	h, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestSoftHSMGCMMatchesGo checks the token's CKM_AES_GCM byte for byte
// against crypto/cipher with a throwaway, extractable session key: it proves
// the token uses our 12-byte IV, our AAD and a 16-byte tag.
func TestSoftHSMGCMMatchesGo(t *testing.T) {
	tok, h := openToken(t)
	c, ok := h.cur.b.(*p11conn)
	if !ok {
		t.Fatalf("backend %T", h.cur.b)
	}
	r := openRaw(t, tok)
	key := bytes.Repeat([]byte{0x42}, 32)
	kh, err := r.p.CreateObject(r.sess, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, key),
	})
	if err != nil {
		t.Fatal(err)
	}
	block, _ := aes.NewCipher(key)
	g, _ := cipher.NewGCM(block)
	iv := []byte("twelve bytes")
	aad := []byte("header|aad")
	pt := []byte("a P-384 scalar is 48 bytes long, this is not...")
	got, err := c.gcmEncrypt(objHandle(kh), iv, aad, pt)
	if err != nil {
		t.Fatal(err)
	}
	if want := g.Seal(nil, iv, pt, aad); !bytes.Equal(got, want) {
		t.Fatalf("token GCM differs from Go:\n got %x\nwant %x", got, want)
	}
	back, err := c.gcmDecrypt(objHandle(kh), iv, aad, got)
	if err != nil || !bytes.Equal(back, pt) {
		t.Fatalf("decrypt: %v", err)
	}
	got[0] ^= 1
	_, err = c.gcmDecrypt(objHandle(kh), iv, aad, got)
	if !isAuthFailure(err) {
		t.Fatalf("bad tag: %v (want a return value isAuthFailure accepts)", err)
	}
	if code, _ := p11Code(err); code != pkcs11.CKR_GENERAL_ERROR {
		t.Logf("note: SoftHSM2 now reports a bad GCM tag as %v", code)
	}
}

// TestSoftHSMTokenUnpluggedAndBack: the token goes away while sessions stay
// open (an HSM partition taken offline). Ping must fail, not just report a
// logged-in session, key operations must fail as unavailable, and once the
// token is back the HSM reconnects by itself and the old blob and signer
// work again.
func TestSoftHSMTokenUnpluggedAndBack(t *testing.T) {
	tok, h := openWithKEK(t)
	ctx := context.Background()
	s, err := h.GenerateRRKey(ctx, "rr-1")
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := h.Seal([]byte("k"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("record"))

	tok.Unplug(t)
	if err := h.Ping(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Ping with the token gone = %v, want ErrUnavailable", err)
	}
	if _, err := h.Unseal(sealed, []byte("aad")); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Unseal with the token gone = %v, want ErrUnavailable", err)
	}
	if _, err := s.Sign(nil, d[:], crypto.SHA256); err == nil {
		t.Fatal("Sign with the token gone succeeded")
	}

	tok.Replug(t)
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := h.Ping(ctx)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Ping still failing 15 s after the token came back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if pt, err := h.Unseal(sealed, []byte("aad")); err != nil || string(pt) != "k" {
		t.Fatalf("Unseal after the token came back: %q, %v", pt, err)
	}
	sig, err := s.Sign(nil, d[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatalf("Sign after the token came back: %v", err)
	}
}

// plantECKey puts an ECDSA P-256 pair on the token under label as an
// attacker with the PIN could: generated extractable, so CKA_ALWAYS_SENSITIVE
// and CKA_NEVER_EXTRACTABLE are false.
func (r *rawToken) plantECKey(t *testing.T, label string) {
	t.Helper()
	sess, err := r.p.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer r.p.CloseSession(sess)
	p256 := []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	_, _, err = r.p.GenerateKeyPair(sess, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		})
	if err != nil {
		t.Fatal(err)
	}
}

// A key planted on the token under the label pstd would use next is never
// adopted: it was once extractable, so someone may hold a copy.
func TestPlantedKeyRefused(t *testing.T) {
	tok, h := openWithKEK(t)
	r := openRaw(t, tok)
	r.plantECKey(t, RRKeyLabel("rr-2"))
	r.plantECKey(t, RRKeyLabel(AuditKeyID(1)))
	ctx := context.Background()
	if _, err := h.FindRRKey(ctx, "rr-2"); !errors.Is(err, ErrUnsafeKey) {
		t.Fatalf("FindRRKey of a planted key: %v, want ErrUnsafeKey", err)
	}
	if _, err := h.FindAuditKey(ctx, AuditKeyID(1)); !errors.Is(err, ErrUnsafeKey) {
		t.Fatalf("FindAuditKey of a planted key: %v, want ErrUnsafeKey", err)
	}
	if _, err := h.GenerateRRKey(ctx, "rr-2"); err == nil {
		t.Fatal("generated over a planted key")
	}
	// A key pstd made itself passes the same check.
	if _, err := h.GenerateRRKey(ctx, "rr-3"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.FindRRKey(ctx, "rr-3"); err != nil {
		t.Fatal(err)
	}
}
