package hsm

import (
	"crypto"
	"errors"
	"fmt"
)

// objHandle is a PKCS#11 object handle. Handles are valid for every session
// of the process until the module is finalised, so a reconnect invalidates
// them.
type objHandle uint

// keyPolicy is what the token says about a key's custody attributes.
type keyPolicy struct {
	Token            bool // CKA_TOKEN: persists on the token
	Private          bool // CKA_PRIVATE: needs a login to use
	Sensitive        bool // CKA_SENSITIVE: value never leaves in plaintext
	Extractable      bool // CKA_EXTRACTABLE: value may leave wrapped
	AlwaysSensitive  bool // CKA_ALWAYS_SENSITIVE
	NeverExtractable bool // CKA_NEVER_EXTRACTABLE
	Local            bool // CKA_LOCAL: generated on the token, not imported
}

// check refuses a key pstd must not rely on: every key pstd uses (the KEK,
// the record keys, the audit keys) must have been generated on the token
// (CKA_LOCAL), and sensitive and unextractable from birth
// (CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE). A key that fails this was
// imported, or was once exportable: someone may hold a copy, so pstd never
// adopts it, whatever its label.
func (p keyPolicy) check() error {
	var bad []string
	if !p.Token {
		bad = append(bad, "not a token object")
	}
	if !p.Private {
		bad = append(bad, "not private")
	}
	if !p.Sensitive {
		bad = append(bad, "not sensitive")
	}
	if p.Extractable {
		bad = append(bad, "extractable")
	}
	if !p.AlwaysSensitive {
		bad = append(bad, "not always sensitive")
	}
	if !p.NeverExtractable {
		bad = append(bad, "once extractable")
	}
	if !p.Local {
		bad = append(bad, "not generated on the token (CKA_LOCAL false)")
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %v", ErrUnsafeKey, bad)
	}
	return nil
}

// backend is the narrow PKCS#11 surface HSM uses, one logged-in connection
// to one token. p11conn implements it with crypto11 and miekg/pkcs11; unit
// tests use a test double. Every method may be called concurrently.
//
// Objects are named by a label that is also their CKA_ID.
type backend interface {
	// findAESKey finds the AES secret key with this label; ok is false if
	// there is none. More than one is an error.
	findAESKey(label string) (h objHandle, ok bool, err error)
	// generateAESKey creates a non-extractable, sensitive AES-256 token key.
	generateAESKey(label string) (objHandle, error)
	// secretKeyPolicy reads a secret key's custody attributes.
	secretKeyPolicy(h objHandle) (keyPolicy, error)
	// gcmEncrypt runs CKM_AES_GCM with exactly this 12-byte IV and a
	// 128-bit tag and returns ciphertext||tag.
	gcmEncrypt(h objHandle, iv, aad, plaintext []byte) ([]byte, error)
	// gcmDecrypt is gcmEncrypt's inverse.
	gcmDecrypt(h objHandle, iv, aad, sealed []byte) ([]byte, error)

	// generateECKey creates a non-extractable ECDSA P-256 token key pair.
	generateECKey(label string) (crypto.Signer, error)
	// findECKey finds the key pair with this label.
	findECKey(label string) (s crypto.Signer, ok bool, err error)
	// privateKeyPolicy reads the custody attributes of s's private half;
	// s must come from generateECKey or findECKey of the same backend.
	privateKeyPolicy(s crypto.Signer) (keyPolicy, error)
	// deleteECKey destroys both halves; ok is false if nothing was found.
	deleteECKey(label string) (ok bool, err error)

	// readData reads the values of the token data objects (CKO_DATA)
	// with this label: normally one; none if never written; two if a
	// writer stopped between creating the new object and destroying the
	// old one.
	readData(label string) (values [][]byte, err error)
	// writeData creates the private, non-modifiable-by-others token data
	// object with this label, or replaces its value.
	writeData(label string, value []byte) error

	// random reads n bytes from the token's RNG.
	random(n int) ([]byte, error)
	// ping proves the connection is usable and logged in.
	ping() error
	// close logs out and releases the connection.
	close() error
}

// dialFunc opens a logged-in backend. It returns ErrNoModule, ErrNoToken,
// ErrBadPIN or ErrPINLocked (wrapped) for the start-up failures.
type dialFunc func(cfg Config, pin []byte) (backend, error)

// safeCall runs fn and turns a panic into an error: crypto11's AEAD panics
// on PKCS#11 errors, and a panic in key custody must become a failed request,
// not a dead process.
func safeCall(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = panicError{r}
		}
	}()
	return fn()
}

var errNotOurSigner = errors.New("hsm: signer does not belong to this connection")
