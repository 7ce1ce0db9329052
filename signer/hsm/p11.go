package hsm

import (
	"crypto"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/ThalesIgnite/crypto11"
	"github.com/miekg/pkcs11"
	"github.com/pstd/pstd/internal/secmem"
)

// libState tracks, per module path, the crypto11 contexts this package holds
// and which tokens it has logged in to. All of it is needed because:
//
//   - crypto11.Configure calls C_Finalize when it fails (say, on an unknown
//     token label) even if other contexts use the same module, which would
//     kill every open HSM in the process. So when the module is already in
//     use we look for the token ourselves first and call Configure only
//     when it will find it.
//   - PKCS#11 login state is per token and process: a second login to a
//     token this process is already logged in to returns
//     CKR_USER_ALREADY_LOGGED_IN without checking the PIN. We remember a
//     keyed hash of the PIN that succeeded so that a second Open with a
//     wrong PIN still fails with ErrBadPIN.
//
// Nothing else in the process may use crypto11 with the same module.
var libState = struct {
	sync.Mutex
	refs   map[string]int
	logins map[tokenKey]*loginEntry
}{refs: map[string]int{}, logins: map[tokenKey]*loginEntry{}}

type tokenKey struct{ module, label string }

type loginEntry struct {
	verifier [32]byte
	n        int
}

// pinMAC keys the in-memory PIN verifiers; it never leaves the process.
var pinMAC = func() []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic(err)
	}
	return k
}()

// pinVerifier is HMAC-SHA-256(pinMAC, module || 0 || label || 0 || pin ||
// zero padding). The message is built in protected memory and padded to
// whole SHA-256 blocks, so the hash consumes it in place and never copies
// PIN bytes into its buffer on the Go heap (its block function's stack
// frame may hold message words for a moment).
func pinVerifier(k tokenKey, pin []byte) ([32]byte, error) {
	const block = sha256.BlockSize
	n := (len(k.module) + len(k.label) + 2 + len(pin) + block) / block * block
	msg, err := secmem.New(n)
	if err != nil {
		return [32]byte{}, err
	}
	defer secmem.Free(msg)
	i := copy(msg, k.module) + 1
	i += copy(msg[i:], k.label) + 1
	i += copy(msg[i:], pin)
	msg[n-1] = byte(n - i) // the padding's length, so distinct PINs stay distinct
	m := hmac.New(sha256.New, pinMAC)
	m.Write(msg)
	var v [32]byte
	copy(v[:], m.Sum(nil))
	return v, nil
}

// p11conn is the real backend: crypto11 for the session pool, ECDSA and the
// RNG of Ping; raw calls (p11raw.go) for login, unsealing and key-scalar
// randomness; miekg/pkcs11 directly for the KEK and AES-GCM (crypto11 lets
// the token choose nothing here, but its AEAD panics on errors, flattens
// PKCS#11 return values into strings and defaults to 16-byte IVs).
type p11conn struct {
	key  tokenKey
	c11  *crypto11.Context
	p    *pkcs11.Ctx
	raw  rawFuncs // C_Login, C_Decrypt and C_GenerateRandom on our buffers
	slot uint
	rng  io.Reader

	// mu guards sess, the session that keeps the login alive and answers
	// Ping. Other calls open a short-lived session of their own, so they run
	// concurrently and a failed operation cannot leave state behind.
	mu   sync.Mutex
	sess pkcs11.SessionHandle
}

const (
	defaultMaxSessions = 32
	poolWaitTimeout    = 10 * time.Second
	gcmIVLen           = 12
	gcmTagLen          = 16
)

// dialP11 is the real dialFunc.
func dialP11(cfg Config, pin []byte) (_ backend, err error) {
	if st, serr := os.Stat(cfg.ModulePath); serr != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNoModule, cfg.ModulePath, errors.Unwrap(serr))
	} else if st.IsDir() {
		return nil, fmt.Errorf("%w: %s is a directory", ErrNoModule, cfg.ModulePath)
	}
	libState.Lock()
	defer libState.Unlock()

	p := pkcs11.New(cfg.ModulePath)
	if p == nil {
		return nil, fmt.Errorf("%w: %s cannot be loaded as a PKCS#11 module", ErrNoModule, cfg.ModulePath)
	}
	defer func() {
		if err != nil {
			p.Destroy()
		}
	}()

	path := cfg.ModulePath
	if libState.refs[path] > 0 {
		// The module is initialised: check the label before crypto11 gets
		// a chance to finalise it under the other contexts.
		if _, _, err := findSlot(p, cfg.TokenLabel); err != nil {
			return nil, err
		}
	}
	maxSessions := cfg.MaxSessions
	if maxSessions <= 1 {
		maxSessions = defaultMaxSessions
	}
	c11, err := crypto11.Configure(&crypto11.Config{
		Path:       path,
		TokenLabel: cfg.TokenLabel,
		// We log in ourselves (crypto11 would log in with a string PIN we
		// could not wipe, and maps every failure to one opaque error).
		LoginNotSupported: true,
		GCMIVLength:       gcmIVLen,
		MaxSessions:       maxSessions,
		PoolWaitTimeout:   poolWaitTimeout,
	})
	if err != nil {
		switch err.Error() {
		case "could not find PKCS#11 token":
			return nil, fmt.Errorf("%w: no token labelled %q in %s", ErrNoToken, cfg.TokenLabel, path)
		case "could not open PKCS#11":
			return nil, fmt.Errorf("%w: %s cannot be loaded as a PKCS#11 module", ErrNoModule, path)
		}
		return nil, beforeLogin{fmt.Errorf("hsm: initialising %s: %w", path, err)}
	}
	libState.refs[path]++
	defer func() {
		if err != nil {
			_ = c11.Close()
			libState.refs[path]--
		}
	}()

	slot, info, err := findSlot(p, cfg.TokenLabel)
	if err != nil {
		return nil, err
	}
	if info.Flags&pkcs11.CKF_USER_PIN_LOCKED != 0 {
		return nil, fmt.Errorf("%w: token %q", ErrPINLocked, cfg.TokenLabel)
	}
	if info.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 || info.Flags&pkcs11.CKF_USER_PIN_INITIALIZED == 0 {
		return nil, fmt.Errorf("%w: token %q is not initialised (no user PIN)", ErrNoToken, cfg.TokenLabel)
	}

	raw, err := loadRawFuncs(path)
	if err != nil {
		return nil, beforeLogin{err}
	}

	sess, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return nil, beforeLogin{fmt.Errorf("hsm: opening a session on token %q: %w", cfg.TokenLabel, err)}
	}
	defer func() {
		if err != nil {
			_ = p.CloseSession(sess)
		}
	}()

	key := tokenKey{path, cfg.TokenLabel}
	verifier, err := pinVerifier(key, pin)
	if err != nil {
		return nil, err
	}
	// Exactly one C_Login per dial, never retried: a wrong PIN must not
	// count down the token's retry counter more than once.
	lerr := raw.login(sess, pin)
	if code, ok := p11Code(lerr); ok && code == pkcs11.CKR_USER_ALREADY_LOGGED_IN {
		e := libState.logins[key]
		if e == nil {
			return nil, fmt.Errorf("hsm: token %q is already logged in by another PKCS#11 user in this process", cfg.TokenLabel)
		}
		if !hmac.Equal(e.verifier[:], verifier[:]) {
			return nil, fmt.Errorf("%w: token %q (differs from the PIN this process logged in with)", ErrBadPIN, cfg.TokenLabel)
		}
		lerr = nil
	}
	if lerr != nil {
		if code, ok := p11Code(lerr); ok {
			switch code {
			case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE:
				return nil, fmt.Errorf("%w: token %q: %v", ErrBadPIN, cfg.TokenLabel, code)
			case pkcs11.CKR_PIN_EXPIRED:
				return nil, fmt.Errorf("%w: token %q: the PIN has expired", ErrBadPIN, cfg.TokenLabel)
			case pkcs11.CKR_PIN_LOCKED:
				return nil, fmt.Errorf("%w: token %q", ErrPINLocked, cfg.TokenLabel)
			case pkcs11.CKR_USER_PIN_NOT_INITIALIZED:
				return nil, fmt.Errorf("%w: token %q has no user PIN", ErrNoToken, cfg.TokenLabel)
			}
		}
		err := fmt.Errorf("hsm: logging in to token %q: %v", cfg.TokenLabel, lerr)
		if code, ok := p11Code(lerr); ok && (code == pkcs11.CKR_GENERAL_ERROR || code == pkcs11.CKR_DEVICE_ERROR) {
			// The token could not get as far as checking the PIN (SoftHSM2
			// says GENERAL_ERROR while another process rewrites the token
			// file); a wrong PIN is PIN_INCORRECT, which is never retried.
			return nil, beforeLogin{err}
		}
		return nil, err
	}

	rng, err := c11.NewRandomReader()
	if err != nil {
		return nil, err
	}
	if e := libState.logins[key]; e != nil {
		e.n++
	} else {
		libState.logins[key] = &loginEntry{verifier: verifier, n: 1}
	}
	return &p11conn{key: key, c11: c11, p: p, raw: raw, slot: slot, rng: rng, sess: sess}, nil
}

// findSlot returns the one slot whose token carries label.
func findSlot(p *pkcs11.Ctx, label string) (uint, pkcs11.TokenInfo, error) {
	slots, err := p.GetSlotList(true)
	if err != nil {
		return 0, pkcs11.TokenInfo{}, fmt.Errorf("hsm: listing slots: %w", err)
	}
	var found []uint
	var info pkcs11.TokenInfo
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err != nil {
			continue // a slot emptied under us is not our token
		}
		if ti.Label == label {
			found = append(found, s)
			info = ti
		}
	}
	switch len(found) {
	case 0:
		return 0, info, fmt.Errorf("%w: no token labelled %q", ErrNoToken, label)
	case 1:
		return found[0], info, nil
	}
	return 0, info, fmt.Errorf("%w: %d tokens are labelled %q; labels must be unique", ErrNoToken, len(found), label)
}

func (c *p11conn) close() error {
	libState.Lock()
	defer libState.Unlock()
	c.mu.Lock()
	_ = c.p.CloseSession(c.sess)
	c.mu.Unlock()
	// Closes crypto11's sessions and, if it is the module's last context,
	// finalises the module (which logs out).
	err := c.c11.Close()
	libState.refs[c.key.module]--
	if e := libState.logins[c.key]; e != nil {
		if e.n--; e.n <= 0 {
			delete(libState.logins, c.key)
		}
	}
	c.p.Destroy()
	return err
}

// withSession runs fn on a fresh session.
func (c *p11conn) withSession(fn func(s pkcs11.SessionHandle) error) error {
	s, err := c.p.OpenSession(c.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return err
	}
	defer c.p.CloseSession(s)
	return fn(s)
}

func (c *p11conn) find(s pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := c.p.FindObjectsInit(s, tmpl); err != nil {
		return nil, err
	}
	var all []pkcs11.ObjectHandle
	for {
		hs, _, err := c.p.FindObjects(s, 16)
		if err != nil {
			_ = c.p.FindObjectsFinal(s)
			return nil, err
		}
		if len(hs) == 0 {
			break
		}
		all = append(all, hs...)
	}
	return all, c.p.FindObjectsFinal(s)
}

func (c *p11conn) findAESKey(label string) (objHandle, bool, error) {
	var hs []pkcs11.ObjectHandle
	err := c.withSession(func(s pkcs11.SessionHandle) (err error) {
		hs, err = c.find(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		})
		return err
	})
	if err != nil {
		return 0, false, err
	}
	switch len(hs) {
	case 0:
		return 0, false, nil
	case 1:
		return objHandle(hs[0]), true, nil
	}
	return 0, false, fmt.Errorf("hsm: %d secret keys are labelled %q", len(hs), label)
}

func (c *p11conn) generateAESKey(label string) (objHandle, error) {
	var h pkcs11.ObjectHandle
	err := c.withSession(func(s pkcs11.SessionHandle) (err error) {
		h, err = c.p.GenerateKey(s,
			[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
			[]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
				pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
				pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
				pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
				pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
				pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
				pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
				pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
				pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
				pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
				pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
				pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
			})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("hsm: generating AES-256 key %q: %w", label, err)
	}
	return objHandle(h), nil
}

var policyAttrs = []uint{
	pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_SENSITIVE,
	pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_ALWAYS_SENSITIVE, pkcs11.CKA_NEVER_EXTRACTABLE, pkcs11.CKA_LOCAL,
}

func (c *p11conn) policyOf(h pkcs11.ObjectHandle) (keyPolicy, error) {
	tmpl := make([]*pkcs11.Attribute, len(policyAttrs))
	for i, t := range policyAttrs {
		tmpl[i] = pkcs11.NewAttribute(t, nil)
	}
	var got []*pkcs11.Attribute
	err := c.withSession(func(s pkcs11.SessionHandle) (err error) {
		got, err = c.p.GetAttributeValue(s, h, tmpl)
		return err
	})
	if err != nil {
		return keyPolicy{}, fmt.Errorf("hsm: reading key attributes: %w", err)
	}
	return policyFromAttrs(got), nil
}

func policyFromAttrs(got []*pkcs11.Attribute) keyPolicy {
	var p keyPolicy
	for _, a := range got {
		v := len(a.Value) == 1 && a.Value[0] != 0
		switch a.Type {
		case pkcs11.CKA_TOKEN:
			p.Token = v
		case pkcs11.CKA_PRIVATE:
			p.Private = v
		case pkcs11.CKA_SENSITIVE:
			p.Sensitive = v
		case pkcs11.CKA_EXTRACTABLE:
			p.Extractable = v
		case pkcs11.CKA_ALWAYS_SENSITIVE:
			p.AlwaysSensitive = v
		case pkcs11.CKA_NEVER_EXTRACTABLE:
			p.NeverExtractable = v
		case pkcs11.CKA_LOCAL:
			p.Local = v
		}
	}
	return p
}

func (c *p11conn) secretKeyPolicy(h objHandle) (keyPolicy, error) {
	return c.policyOf(pkcs11.ObjectHandle(h))
}

func gcmMech(iv, aad []byte) (*pkcs11.GCMParams, []*pkcs11.Mechanism) {
	params := pkcs11.NewGCMParams(iv, aad, gcmTagLen*8)
	return params, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}
}

func (c *p11conn) gcmEncrypt(h objHandle, iv, aad, plaintext []byte) ([]byte, error) {
	if len(iv) != gcmIVLen {
		return nil, fmt.Errorf("hsm: GCM IV must be %d bytes", gcmIVLen)
	}
	var out []byte
	err := c.withSession(func(s pkcs11.SessionHandle) error {
		params, mech := gcmMech(iv, aad)
		defer params.Free()
		if err := c.p.EncryptInit(s, mech, pkcs11.ObjectHandle(h)); err != nil {
			return fmt.Errorf("C_EncryptInit: %w", err)
		}
		var err error
		if out, err = c.p.Encrypt(s, plaintext); err != nil {
			return fmt.Errorf("C_Encrypt: %w", err)
		}
		return nil
	})
	return out, err
}

func (c *p11conn) gcmDecrypt(h objHandle, iv, aad, sealed []byte) ([]byte, error) {
	if len(iv) != gcmIVLen {
		return nil, fmt.Errorf("hsm: GCM IV must be %d bytes", gcmIVLen)
	}
	var out []byte
	err := c.withSession(func(s pkcs11.SessionHandle) error {
		params, mech := gcmMech(iv, aad)
		defer params.Free()
		if err := c.p.DecryptInit(s, mech, pkcs11.ObjectHandle(h)); err != nil {
			return fmt.Errorf("C_DecryptInit: %w", err)
		}
		buf := make([]byte, len(sealed))
		pt, err := c.raw.decrypt(s, sealed, buf)
		if err != nil {
			Wipe(buf)
			return fmt.Errorf("C_Decrypt: %w", err)
		}
		out = pt
		return nil
	})
	return out, err
}

func (c *p11conn) generateECKey(label string) (crypto.Signer, error) {
	pub, err := crypto11.NewAttributeSetWithIDAndLabel([]byte(label), []byte(label))
	if err != nil {
		return nil, err
	}
	priv := pub.Copy()
	for t, v := range map[crypto11.AttributeType]bool{
		pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: false, pkcs11.CKA_VERIFY: true,
	} {
		if err := pub.Set(t, v); err != nil {
			return nil, err
		}
	}
	for t, v := range map[crypto11.AttributeType]bool{
		pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: true, pkcs11.CKA_SIGN: true,
		pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: false, pkcs11.CKA_DERIVE: false,
	} {
		if err := priv.Set(t, v); err != nil {
			return nil, err
		}
	}
	s, err := c.c11.GenerateECDSAKeyPairWithAttributes(pub, priv, elliptic.P256())
	if err != nil {
		return nil, fmt.Errorf("hsm: generating ECDSA P-256 key %q: %w", label, err)
	}
	return s, nil
}

func (c *p11conn) findECKey(label string) (crypto.Signer, bool, error) {
	s, err := c.c11.FindKeyPair([]byte(label), []byte(label))
	if err != nil {
		return nil, false, fmt.Errorf("hsm: finding key %q: %w", label, err)
	}
	if s == nil {
		return nil, false, nil
	}
	return s, true, nil
}

func (c *p11conn) privateKeyPolicy(s crypto.Signer) (keyPolicy, error) {
	set, err := c.c11.GetAttributes(s, policyAttrs)
	if err != nil {
		return keyPolicy{}, fmt.Errorf("hsm: reading key attributes: %w", err)
	}
	got := make([]*pkcs11.Attribute, 0, len(set))
	for _, a := range set {
		got = append(got, a)
	}
	return policyFromAttrs(got), nil
}

func (c *p11conn) deleteECKey(label string) (bool, error) {
	n := 0
	err := c.withSession(func(s pkcs11.SessionHandle) error {
		for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
			hs, err := c.find(s, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
				pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			})
			if err != nil {
				return err
			}
			for _, h := range hs {
				if err := c.p.DestroyObject(s, h); err != nil {
					return err
				}
				n++
			}
		}
		return nil
	})
	if err != nil {
		return n > 0, fmt.Errorf("hsm: deleting key %q: %w", label, err)
	}
	return n > 0, nil
}

// readData retries when another session replaced the object between the
// find and the read (the old one's handle is then invalid).
func (c *p11conn) readData(label string) ([][]byte, error) {
	for attempt := 0; ; attempt++ {
		vs, err := c.readDataOnce(label)
		if code, ok := p11Code(err); ok && (code == pkcs11.CKR_OBJECT_HANDLE_INVALID || code == pkcs11.CKR_GENERAL_ERROR) && attempt < 5 {
			time.Sleep(time.Duration(attempt+1) * 10 * time.Millisecond)
			continue
		}
		return vs, err
	}
}

func (c *p11conn) readDataOnce(label string) ([][]byte, error) {
	var values [][]byte
	err := c.withSession(func(s pkcs11.SessionHandle) error {
		hs, err := c.find(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		})
		if err != nil {
			return err
		}
		for _, h := range hs {
			attrs, err := c.p.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
			if err != nil {
				return err
			}
			values = append(values, attrs[0].Value)
		}
		return nil
	})
	return values, err
}

// writeData replaces the object rather than setting CKA_VALUE in place:
// tokens differ in whether a data object's value is modifiable, and a new
// object is created before the old one is destroyed, so a failure between
// the two leaves two objects (readData then refuses) rather than none.
func (c *p11conn) writeData(label string, value []byte) error {
	for attempt := 0; ; attempt++ {
		err := c.writeDataOnce(label, value)
		// A reader's session may hold the old object at the moment it is
		// destroyed; SoftHSM2 then fails the call. Writing again is safe:
		// each attempt destroys every older copy.
		if code, ok := p11Code(err); ok && (code == pkcs11.CKR_GENERAL_ERROR || code == pkcs11.CKR_OBJECT_HANDLE_INVALID ||
			code == pkcs11.CKR_TEMPLATE_INCONSISTENT) && attempt < 3 {
			time.Sleep(time.Duration(attempt+1) * 20 * time.Millisecond)
			continue
		}
		return err
	}
}

func (c *p11conn) writeDataOnce(label string, value []byte) error {
	return c.withSession(func(s pkcs11.SessionHandle) error {
		old, err := c.find(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		})
		if err != nil {
			return err
		}
		if _, err := c.p.CreateObject(s, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, "pstd"),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
		}); err != nil {
			return err
		}
		for _, h := range old {
			if err := c.p.DestroyObject(s, h); err != nil {
				return err
			}
		}
		return nil
	})
}

// random reads n bytes of the token's RNG straight into Go memory the
// caller owns (key scalars are drawn from it).
func (c *p11conn) random(n int) ([]byte, error) {
	b := make([]byte, n)
	err := c.withSession(func(s pkcs11.SessionHandle) error {
		return c.raw.generateRandom(s, b)
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

func (c *p11conn) ping() error {
	c.mu.Lock()
	info, err := c.p.GetSessionInfo(c.sess)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if info.State != pkcs11.CKS_RW_USER_FUNCTIONS {
		return errSessionLost
	}
	// Exercise a pooled session too: they are the ones requests use.
	var one [1]byte
	_, err = io.ReadFull(c.rng, one[:])
	return err
}
