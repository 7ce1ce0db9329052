package hsm

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/miekg/pkcs11"
)

// fakeToken is a test double for a PKCS#11 token behind the backend
// interface: Go crypto in memory, with knobs for the failures the real
// token is hard to provoke.
type fakeToken struct {
	mu      sync.Mutex
	pin     string
	next    objHandle
	aes     map[string]objHandle
	aesKeys map[objHandle]*fakeSecret
	ec      map[string]*ecdsa.PrivateKey
	data    map[string][]byte
	conns   []*fakeConn

	dials    int
	pings    int
	dialErr  error         // dial fails with this
	fixedIV  []byte        // gcmEncrypt ignores the caller's IV and uses this
	decErr   error         // gcmDecrypt fails with this
	panicEnc bool          // gcmEncrypt panics
	pingWait chan struct{} // ping blocks until closed
	// staleOnLoss: a signer of a dead connection fails as SoftHSM2's does
	// after the login is lost, with CKR_OBJECT_HANDLE_INVALID.
	staleOnLoss bool
}

type fakeSecret struct {
	aead   cipher.AEAD
	policy keyPolicy
}

type fakeConn struct {
	t    *fakeToken
	dead bool
}

// fakeSigner is an ecdsa key as the token would hand it out: it works only
// while its connection lives and the key is still on the token.
type fakeSigner struct {
	*ecdsa.PrivateKey
	c     *fakeConn
	label string
}

func (s fakeSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if err := s.c.enter(); err != nil {
		if s.c.t.staleOnLoss {
			return nil, pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID)
		}
		return nil, err
	}
	defer s.c.t.mu.Unlock()
	if s.c.t.ec[s.label] != s.PrivateKey {
		return nil, pkcs11.Error(pkcs11.CKR_KEY_HANDLE_INVALID)
	}
	return s.PrivateKey.Sign(rand.Reader, digest, opts)
}

var safePolicy = keyPolicy{Token: true, Private: true, Sensitive: true, AlwaysSensitive: true, NeverExtractable: true, Local: true}

func newFakeToken(pin string) *fakeToken {
	return &fakeToken{pin: pin, next: 1, aes: map[string]objHandle{}, aesKeys: map[objHandle]*fakeSecret{}, ec: map[string]*ecdsa.PrivateKey{}}
}

func (t *fakeToken) dial(cfg Config, pin []byte) (backend, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dials++
	if t.dialErr != nil {
		return nil, t.dialErr
	}
	if string(pin) != t.pin {
		return nil, fmt.Errorf("%w: token %q", ErrBadPIN, cfg.TokenLabel)
	}
	c := &fakeConn{t: t}
	t.conns = append(t.conns, c)
	return c, nil
}

// loseSessions is an HSM restart: every open connection dies.
func (t *fakeToken) loseSessions() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.conns {
		c.dead = true
	}
	t.conns = nil
}

func (t *fakeToken) addAES(label string, p keyPolicy) objHandle {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		panic(err)
	}
	b, _ := aes.NewCipher(key)
	g, _ := cipher.NewGCM(b)
	h := t.next
	t.next++
	t.aes[label] = h
	t.aesKeys[h] = &fakeSecret{aead: g, policy: p}
	return h
}

func openFake(t *fakeToken) (*HSM, error) {
	return open(Config{ModulePath: "/fake.so", TokenLabel: "fake", PIN: t.pin, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, t.dial)
}

var errLost = pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID)

// enter locks the token and fails if this connection is dead.
func (c *fakeConn) enter() error {
	c.t.mu.Lock()
	if c.dead {
		c.t.mu.Unlock()
		return errLost
	}
	return nil
}

func (c *fakeConn) findAESKey(label string) (objHandle, bool, error) {
	if err := c.enter(); err != nil {
		return 0, false, err
	}
	defer c.t.mu.Unlock()
	h, ok := c.t.aes[label]
	return h, ok, nil
}

func (c *fakeConn) generateAESKey(label string) (objHandle, error) {
	if err := c.enter(); err != nil {
		return 0, err
	}
	defer c.t.mu.Unlock()
	return c.t.addAES(label, safePolicy), nil
}

func (c *fakeConn) secretKeyPolicy(h objHandle) (keyPolicy, error) {
	if err := c.enter(); err != nil {
		return keyPolicy{}, err
	}
	defer c.t.mu.Unlock()
	k, ok := c.t.aesKeys[h]
	if !ok {
		return keyPolicy{}, pkcs11.Error(pkcs11.CKR_OBJECT_HANDLE_INVALID)
	}
	return k.policy, nil
}

func (c *fakeConn) gcmEncrypt(h objHandle, iv, aad, plaintext []byte) ([]byte, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.t.mu.Unlock()
	if c.t.panicEnc {
		panic("crypto11-style panic")
	}
	k, ok := c.t.aesKeys[h]
	if !ok {
		return nil, pkcs11.Error(pkcs11.CKR_KEY_HANDLE_INVALID)
	}
	if c.t.fixedIV != nil {
		iv = c.t.fixedIV
	}
	return k.aead.Seal(nil, iv, plaintext, aad), nil
}

func (c *fakeConn) gcmDecrypt(h objHandle, iv, aad, sealed []byte) ([]byte, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.t.mu.Unlock()
	if c.t.decErr != nil {
		return nil, c.t.decErr
	}
	k, ok := c.t.aesKeys[h]
	if !ok {
		return nil, pkcs11.Error(pkcs11.CKR_KEY_HANDLE_INVALID)
	}
	pt, err := k.aead.Open(nil, iv, sealed, aad)
	if err != nil {
		return nil, pkcs11.Error(pkcs11.CKR_GENERAL_ERROR) // as SoftHSM2 does
	}
	return pt, nil
}

func (c *fakeConn) generateECKey(label string) (crypto.Signer, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.t.mu.Unlock()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	c.t.ec[label] = k
	return fakeSigner{k, c, label}, nil
}

func (c *fakeConn) findECKey(label string) (crypto.Signer, bool, error) {
	if err := c.enter(); err != nil {
		return nil, false, err
	}
	defer c.t.mu.Unlock()
	k, ok := c.t.ec[label]
	if !ok {
		return nil, false, nil
	}
	return fakeSigner{k, c, label}, true, nil
}

func (c *fakeConn) privateKeyPolicy(s crypto.Signer) (keyPolicy, error) {
	if _, ok := s.(fakeSigner); !ok {
		return keyPolicy{}, errNotOurSigner
	}
	return safePolicy, nil
}

func (c *fakeConn) deleteECKey(label string) (bool, error) {
	if err := c.enter(); err != nil {
		return false, err
	}
	defer c.t.mu.Unlock()
	_, ok := c.t.ec[label]
	delete(c.t.ec, label)
	return ok, nil
}

func (c *fakeConn) readData(label string) ([][]byte, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.t.mu.Unlock()
	v, ok := c.t.data[label]
	if !ok {
		return nil, nil
	}
	return [][]byte{append([]byte(nil), v...)}, nil
}

func (c *fakeConn) writeData(label string, value []byte) error {
	if err := c.enter(); err != nil {
		return err
	}
	defer c.t.mu.Unlock()
	if c.t.data == nil {
		c.t.data = map[string][]byte{}
	}
	c.t.data[label] = append([]byte(nil), value...)
	return nil
}

func (c *fakeConn) random(n int) ([]byte, error) {
	if err := c.enter(); err != nil {
		return nil, err
	}
	defer c.t.mu.Unlock()
	b := make([]byte, n)
	_, err := rand.Read(b)
	return b, err
}

func (c *fakeConn) ping() error {
	if err := c.enter(); err != nil {
		return err
	}
	c.t.pings++
	wait := c.t.pingWait
	c.t.mu.Unlock()
	if wait != nil {
		<-wait
	}
	return nil
}

func (c *fakeConn) close() error {
	c.t.mu.Lock()
	defer c.t.mu.Unlock()
	c.dead = true
	return nil
}
