package hsm

// Unit tests over the fakeToken test double. softhsm_test.go runs the same
// behaviour against a real SoftHSM2 token.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	pkgerrors "github.com/pkg/errors"

	"github.com/miekg/pkcs11"
)

func mustOpenFake(t *testing.T, tok *fakeToken) *HSM {
	t.Helper()
	h, err := openFake(tok)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func TestOpenValidatesConfig(t *testing.T) {
	tok := newFakeToken("1234")
	for _, tc := range []struct {
		cfg  Config
		want error
	}{
		{Config{TokenLabel: "t", PIN: "1"}, ErrNoModule},
		{Config{ModulePath: "/m.so", PIN: "1"}, ErrNoToken},
		{Config{ModulePath: "/m.so", TokenLabel: "t"}, ErrNoPIN},
	} {
		if _, err := open(tc.cfg, tok.dial); !errors.Is(err, tc.want) {
			t.Errorf("open(%v) = %v, want %v", tc.cfg, err, tc.want)
		}
	}
	if tok.dials != 0 {
		t.Fatalf("dialled %d times for invalid configs", tok.dials)
	}
	cfg := Config{ModulePath: "/m.so", TokenLabel: "t", PIN: "wrong-pin-9876"}
	_, err := open(cfg, tok.dial)
	if !errors.Is(err, ErrBadPIN) {
		t.Fatalf("wrong PIN: %v", err)
	}
	if bytes.Contains([]byte(err.Error()), []byte("wrong-pin-9876")) {
		t.Fatal("PIN in error")
	}
}

func TestSealFormat(t *testing.T) {
	tok := newFakeToken("1234")
	h := mustOpenFake(t, tok)
	if err := h.EnsureKEK(context.Background()); err != nil {
		t.Fatal(err)
	}
	pt, aad := []byte("scalar"), []byte("aad")
	s, err := h.Seal(pt, aad)
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 1+4+12+len(pt)+16 {
		t.Fatalf("sealed length %d", len(s))
	}
	if s[0] != 1 || binary.BigEndian.Uint32(s[1:5]) != KEKGeneration {
		t.Fatalf("header %x", s[:5])
	}
	// The GCM additional data is header || aad: the caller's aad alone
	// does not open it.
	k := tok.aesKeys[tok.aes[KEKLabel(KEKGeneration)]]
	if _, err := k.aead.Open(nil, s[5:17], s[17:], aad); err == nil {
		t.Fatal("opened without the header in the aad")
	}
	got, err := k.aead.Open(nil, s[5:17], s[17:], append(bytes.Clone(s[:5]), aad...))
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("layout: %v", err)
	}
}

func TestSealRefusesTokenChosenIV(t *testing.T) {
	tok := newFakeToken("1234")
	h := mustOpenFake(t, tok)
	if err := h.EnsureKEK(context.Background()); err != nil {
		t.Fatal(err)
	}
	tok.fixedIV = make([]byte, 12) // a token that ignores our IV
	if _, err := h.Seal([]byte("k"), nil); err == nil {
		t.Fatal("Seal accepted ciphertext made with the token's own IV")
	}
}

func TestSealNeedsKEKAndSafeKEK(t *testing.T) {
	tok := newFakeToken("1234")
	h := mustOpenFake(t, tok)
	if _, err := h.Seal([]byte("k"), nil); !errors.Is(err, ErrNoKEK) {
		t.Fatalf("Seal without KEK: %v", err)
	}
	tok.mu.Lock()
	tok.addAES(KEKLabel(KEKGeneration), keyPolicy{Token: true, Private: true, Sensitive: true, Extractable: true})
	tok.mu.Unlock()
	if err := h.EnsureKEK(context.Background()); !errors.Is(err, ErrUnsafeKey) {
		t.Fatalf("EnsureKEK with an extractable KEK: %v, want ErrUnsafeKey", err)
	}
	if _, err := h.Seal([]byte("k"), nil); !errors.Is(err, ErrUnsafeKey) {
		t.Fatalf("Seal with an extractable KEK: %v, want ErrUnsafeKey", err)
	}
}

func TestUnsealErrors(t *testing.T) {
	tok := newFakeToken("1234")
	h := mustOpenFake(t, tok)
	if err := h.EnsureKEK(context.Background()); err != nil {
		t.Fatal(err)
	}
	s, err := h.Seal([]byte("k"), []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	v2 := bytes.Clone(s)
	v2[0] = 2
	if _, err := h.Unseal(v2, []byte("a")); !errors.Is(err, ErrUnsealFailed) {
		t.Fatalf("version 2: %v", err)
	}
	g7 := bytes.Clone(s)
	binary.BigEndian.PutUint32(g7[1:5], 7)
	if _, err := h.Unseal(g7, []byte("a")); !errors.Is(err, ErrNoKEK) || !errors.Is(err, ErrUnsealFailed) {
		t.Fatalf("unknown KEK generation: %v", err)
	}
	if _, err := h.Unseal(s, []byte("b")); !errors.Is(err, ErrUnsealFailed) {
		t.Fatalf("wrong aad: %v", err)
	}
	// Token errors that are not authentication failures stay what they are.
	tok.decErr = pkcs11.Error(pkcs11.CKR_DEVICE_MEMORY)
	if _, err := h.Unseal(s, []byte("a")); err == nil || errors.Is(err, ErrUnsealFailed) {
		t.Fatalf("device memory error: %v", err)
	}
	tok.decErr = ckrAEADDecryptFailed
	if _, err := h.Unseal(s, []byte("a")); !errors.Is(err, ErrUnsealFailed) {
		t.Fatalf("CKR_AEAD_DECRYPT_FAILED: %v", err)
	}
}

func TestPanicIsContained(t *testing.T) {
	tok := newFakeToken("1234")
	h := mustOpenFake(t, tok)
	if err := h.EnsureKEK(context.Background()); err != nil {
		t.Fatal(err)
	}
	tok.panicEnc = true
	_, err := h.Seal([]byte("k"), nil)
	var pe panicError
	if !errors.As(err, &pe) {
		t.Fatalf("Seal with a panicking token: %v", err)
	}
	tok.panicEnc = false
	// The lock was released: the HSM still works.
	if _, err := h.Seal([]byte("k"), nil); err != nil {
		t.Fatal(err)
	}
}

func TestReconnectAfterSessionLoss(t *testing.T) {
	tok := newFakeToken("1234")
	h := mustOpenFake(t, tok)
	ctx := context.Background()
	if err := h.EnsureKEK(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := h.GenerateRRKey(ctx, "rr-1")
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := h.Seal([]byte("k"), nil)
	if err != nil {
		t.Fatal(err)
	}
	tok.loseSessions()
	if _, err := h.Unseal(sealed, nil); err != nil {
		t.Fatalf("Unseal across a session loss: %v", err)
	}
	if tok.dials != 2 || h.reconnectCount() != 1 {
		t.Fatalf("dials %d, reconnects %d", tok.dials, h.reconnectCount())
	}
	tok.loseSessions()
	d := sha256.Sum256([]byte("m"))
	sig, err := s.Sign(nil, d[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatalf("Sign across a session loss: %v", err)
	}
	// A signer notices when the key behind its id changed.
	tok.mu.Lock()
	delete(tok.ec, RRKeyLabel("rr-1"))
	tok.mu.Unlock()
	if _, err := h.GenerateRRKey(ctx, "rr-1"); err != nil {
		t.Fatal(err)
	}
	tok.loseSessions()
	if _, err := s.Sign(nil, d[:], crypto.SHA256); err == nil {
		t.Fatal("old signer signed with a different key")
	}
}

func TestReconnectBackoff(t *testing.T) {
	tok := newFakeToken("1234")
	h := mustOpenFake(t, tok)
	tok.loseSessions()
	tok.dialErr = fmt.Errorf("%w: token removed", ErrNoToken)
	if _, err := h.Random(8); !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrNoToken) {
		t.Fatalf("first call: %v", err)
	}
	if tok.dials != 2 {
		t.Fatalf("dials = %d, want 2", tok.dials)
	}
	// Within the backoff no new attempt is made.
	for i := 0; i < 5; i++ {
		if _, err := h.Random(8); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("call in backoff: %v", err)
		}
	}
	if err := h.Ping(context.Background()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Ping in backoff: %v", err)
	}
	if tok.dials != 2 {
		t.Fatalf("dials = %d during backoff, want 2", tok.dials)
	}
	// The token is back; once the backoff expires the next call connects.
	tok.dialErr = nil
	h.mu.Lock()
	h.nextTry = time.Now().Add(-time.Millisecond)
	h.mu.Unlock()
	if _, err := h.Random(8); err != nil {
		t.Fatalf("after backoff: %v", err)
	}
	if tok.dials != 3 || h.reconnectCount() != 1 {
		t.Fatalf("dials %d, reconnects %d", tok.dials, h.reconnectCount())
	}
	h.mu.Lock()
	b := h.backoff
	h.mu.Unlock()
	if b != 0 {
		t.Fatalf("backoff not reset: %v", b)
	}
}

func TestReconnectStopsAfterBadPIN(t *testing.T) {
	tok := newFakeToken("1234")
	h := mustOpenFake(t, tok)
	tok.loseSessions()
	tok.pin = "changed" // the PIN was changed under the running process
	_, err := h.Random(8)
	if !errors.Is(err, ErrBadPIN) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("after PIN change: %v", err)
	}
	h.mu.Lock()
	h.nextTry = time.Time{}
	h.mu.Unlock()
	for i := 0; i < 3; i++ {
		if _, err := h.Random(8); !errors.Is(err, ErrBadPIN) {
			t.Fatal(err)
		}
		if err := h.reopen(); !errors.Is(err, ErrBadPIN) {
			t.Fatal(err)
		}
	}
	if tok.dials != 2 {
		t.Fatalf("dialled %d times; a refused PIN must be tried once", tok.dials)
	}
}

func TestPingHonoursContextAndSharesProbe(t *testing.T) {
	tok := newFakeToken("1234")
	h := mustOpenFake(t, tok)
	if err := h.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	tok.mu.Lock()
	tok.pingWait = make(chan struct{})
	tok.mu.Unlock()
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			if err := h.Ping(ctx); !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("hung ping: %v", err)
			}
		}()
	}
	wg.Wait()
	tok.mu.Lock()
	close(tok.pingWait)
	tok.pingWait = nil
	pings := tok.pings
	tok.mu.Unlock()
	if pings != 2 {
		t.Fatalf("%d probes for 1+5 pings, want 2", pings)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		if err := h.Ping(context.Background()); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
}

func TestCloseWipesPINAndRefusesUse(t *testing.T) {
	tok := newFakeToken("1234")
	h, err := openFake(tok)
	if err != nil {
		t.Fatal(err)
	}
	pin := h.pin
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pin, make([]byte, len(pin))) {
		t.Fatal("PIN not wiped at Close")
	}
	if _, err := h.Random(1); !errors.Is(err, ErrClosed) {
		t.Fatal(err)
	}
	if err := h.reopen(); !errors.Is(err, ErrClosed) {
		t.Fatal(err)
	}
	if err := h.Ping(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatal(err)
	}
}

func TestRRKeyIDs(t *testing.T) {
	tok := newFakeToken("1234")
	h := mustOpenFake(t, tok)
	ctx := context.Background()
	for _, id := range []string{"", "rr 1", "rr/1", "ü", string(make([]byte, 65))} {
		if _, err := h.GenerateRRKey(ctx, id); err == nil {
			t.Errorf("GenerateRRKey(%q) accepted", id)
		}
	}
	s, err := h.GenerateRRKey(ctx, "rr-1")
	if err != nil {
		t.Fatal(err)
	}
	if s.(interface{ ID() string }).ID() != "rr-1" {
		t.Fatal("ID")
	}
	if _, ok := tok.ec["pstd-rr-1"]; !ok {
		t.Fatalf("label: %v", tok.ec)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := h.FindRRKey(cctx, "rr-1"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

func TestErrorClassification(t *testing.T) {
	lost := pkgerrors.WithMessage(pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID), "crypto11 style")
	if !isSessionLost(lost) || !isSessionLost(fmt.Errorf("wrapped: %w", lost)) {
		t.Fatal("session loss through pkg/errors not recognised")
	}
	for _, code := range []uint{pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_DEVICE_MEMORY} {
		if isSessionLost(pkcs11.Error(code)) {
			t.Fatalf("0x%x counted as session loss", code)
		}
	}
	if !isAuthFailure(fmt.Errorf("C_Decrypt: %w", pkcs11.Error(pkcs11.CKR_GENERAL_ERROR))) {
		t.Fatal("CKR_GENERAL_ERROR is SoftHSM's tag failure")
	}
	if isAuthFailure(errors.New("CKR_GENERAL_ERROR")) {
		t.Fatal("strings are not return values")
	}
}

func TestWipe(t *testing.T) {
	b := []byte("secret")
	Wipe(b)
	if !bytes.Equal(b, make([]byte, 6)) {
		t.Fatal(b)
	}
	Wipe(nil)
}

func TestStaleHandleReconnectsOnlyWhenSessionLost(t *testing.T) {
	tok := newFakeToken("1234")
	tok.staleOnLoss = true
	h := mustOpenFake(t, tok)
	ctx := context.Background()
	s, err := h.GenerateRRKey(ctx, "rr-1")
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("m"))
	// Logged out: the handle looks stale, the connection check fails, so
	// the HSM reconnects and the signature succeeds.
	tok.loseSessions()
	if _, err := s.Sign(nil, d[:], crypto.SHA256); err != nil {
		t.Fatalf("Sign after a lost login: %v", err)
	}
	if h.reconnectCount() != 1 {
		t.Fatalf("reconnects = %d, want 1", h.reconnectCount())
	}
	// Deleted key: the handle is stale but the connection is fine.
	if err := h.deleteRRKey(ctx, "rr-1"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := s.Sign(nil, d[:], crypto.SHA256); err == nil {
			t.Fatal("a deleted key signed")
		}
	}
	if h.reconnectCount() != 1 {
		t.Fatalf("reconnects = %d after signing with a deleted key, want 1", h.reconnectCount())
	}
}

// TestOpenLooksForAMissingTokenBriefly: a token that is not listed is
// looked for a few times (SoftHSM2 hides one for a moment while another
// process writes it), a refused PIN exactly once.
func TestOpenLooksForAMissingTokenBriefly(t *testing.T) {
	cfg := Config{ModulePath: "/m.so", TokenLabel: "t", PIN: "1234"}
	tok := newFakeToken("1234")
	tok.dialErr = fmt.Errorf("%w: not listed", ErrNoToken)
	if _, err := open(cfg, tok.dial); !errors.Is(err, ErrNoToken) || tok.dials != noTokenAttempts {
		t.Fatalf("absent token: %v after %d dials, want ErrNoToken after %d", err, tok.dials, noTokenAttempts)
	}

	// Listed again on the second look.
	tok = newFakeToken("1234")
	looks := 0
	h, err := open(cfg, func(c Config, pin []byte) (backend, error) {
		if looks++; looks == 1 {
			return nil, fmt.Errorf("%w: not listed", ErrNoToken)
		}
		return tok.dial(c, pin)
	})
	if err != nil || looks != 2 {
		t.Fatalf("token listed again: %v after %d looks", err, looks)
	}
	h.Close()

	tok = newFakeToken("1234")
	cfg.PIN = "4321"
	if _, err := open(cfg, tok.dial); !errors.Is(err, ErrBadPIN) || tok.dials != 1 {
		t.Fatalf("bad PIN: %v after %d dials, want ErrBadPIN after 1", err, tok.dials)
	}
}
