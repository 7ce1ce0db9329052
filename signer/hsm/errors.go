package hsm

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/miekg/pkcs11"
)

// Start-up errors. Open returns them wrapped with the module path or token
// label (never the PIN); test them with errors.Is.
var (
	// ErrNoModule: the PKCS#11 module is not configured, does not exist or
	// cannot be loaded.
	ErrNoModule = errors.New("hsm: PKCS#11 module not usable")
	// ErrNoToken: no token (or more than one) carries the configured label,
	// or the token is not initialised.
	ErrNoToken = errors.New("hsm: PKCS#11 token not found")
	// ErrNoPIN: no user PIN was given.
	ErrNoPIN = errors.New("hsm: no PKCS#11 user PIN configured")
	// ErrBadPIN: the token refused the user PIN. pstd tries a PIN once per
	// start and never again after a refusal, so it cannot lock the token.
	ErrBadPIN = errors.New("hsm: PKCS#11 user PIN refused")
	// ErrPINLocked: the token has locked the user PIN (too many wrong
	// attempts); only the security officer can unlock it.
	ErrPINLocked = errors.New("hsm: PKCS#11 user PIN is locked")
)

// Run-time errors.
var (
	// ErrClosed: the HSM was closed.
	ErrClosed = errors.New("hsm: closed")
	// ErrUnavailable: the token session was lost and could not be restored
	// (yet). Callers should fail closed; a later call tries to reconnect.
	ErrUnavailable = errors.New("hsm: token unavailable")
	// ErrNoKEK: the key-encryption key a sealed blob names is not on the
	// token (wrong token, or EnsureKEK was never run).
	ErrNoKEK = errors.New("hsm: key-encryption key not found on the token")
	// ErrUnsealFailed: a sealed blob is malformed, was tampered with, or is
	// bound to different associated data.
	ErrUnsealFailed = errors.New("hsm: unseal failed")
	// ErrKeyNotFound: no redemption-record key with that id is on the token.
	ErrKeyNotFound = errors.New("hsm: key not found on the token")
	// ErrKeyExists: a redemption-record key with that id is already on the
	// token.
	ErrKeyExists = errors.New("hsm: key already exists on the token")
	// ErrResources: the host ran out of file descriptors or memory
	// (EMFILE, ENFILE, CKR_HOST_MEMORY). The session is not lost, so pstd
	// neither logs out nor reconnects: that would only cost more
	// descriptors and leave the token unusable for a backoff period once
	// the pressure is gone. Callers fail closed for this call; it wraps
	// ErrUnavailable.
	ErrResources = errors.New("hsm: host out of resources (file descriptors or memory)")
	// ErrUnsafeKey: a key on the token is extractable, not sensitive, not
	// private or not a token object; pstd refuses to use it.
	ErrUnsafeKey = errors.New("hsm: key attributes are unsafe")
)

// ckrAEADDecryptFailed is PKCS#11 3.0's CKR_AEAD_DECRYPT_FAILED, which
// miekg/pkcs11 v1.1 does not define.
const ckrAEADDecryptFailed = pkcs11.Error(0x35)

// p11Code returns the PKCS#11 return value in err's chain. It follows both
// Unwrap (standard library) and Cause (github.com/pkg/errors v0.8, which
// crypto11 uses and which has no Unwrap).
func p11Code(err error) (pkcs11.Error, bool) {
	for err != nil {
		if e, ok := err.(pkcs11.Error); ok {
			return e, true
		}
		switch x := err.(type) {
		case interface{ Unwrap() error }:
			err = x.Unwrap()
		case interface{ Cause() error }:
			err = x.Cause()
		default:
			return 0, false
		}
	}
	return 0, false
}

// errSessionLost marks a session that exists but is no longer logged in.
var errSessionLost = errors.New("hsm: session no longer logged in")

// isSessionLost reports whether err means the connection to the token is
// gone (session closed, token removed, library finalised) so that a
// reconnect may help. A refused PIN is never one of these.
func isSessionLost(err error) bool {
	if errors.Is(err, errSessionLost) {
		return true
	}
	code, ok := p11Code(err)
	if !ok {
		return false
	}
	switch code {
	case pkcs11.CKR_SESSION_HANDLE_INVALID,
		pkcs11.CKR_SESSION_CLOSED,
		pkcs11.CKR_DEVICE_REMOVED,
		pkcs11.CKR_DEVICE_ERROR,
		pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_TOKEN_NOT_RECOGNIZED,
		pkcs11.CKR_USER_NOT_LOGGED_IN,
		pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED,
		pkcs11.CKR_SLOT_ID_INVALID:
		return true
	}
	return false
}

// isResourceExhaustion reports whether err comes from the host running out
// of descriptors or memory rather than from the token: CKR_HOST_MEMORY, an
// EMFILE or ENFILE in the chain, or a "device" failure while the process
// holds (nearly) all the descriptors it may — a module that cannot open a
// socket or file reports that as a device error, which would otherwise be
// taken for a lost token.
func isResourceExhaustion(err error) bool {
	if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ENOMEM) {
		return true
	}
	code, ok := p11Code(err)
	if !ok {
		return false
	}
	switch code {
	case pkcs11.CKR_HOST_MEMORY:
		return true
	case pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_DEVICE_MEMORY,
		pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_TOKEN_NOT_PRESENT:
		return descriptorsExhausted()
	}
	return false
}

// fdHeadroom is how close to RLIMIT_NOFILE counts as exhausted.
const fdHeadroom = 8

// descriptorsExhausted reports whether the process's open descriptors are
// within fdHeadroom of its limit (or cannot even be counted, which needs
// one descriptor).
func descriptorsExhausted() bool {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return false
	}
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
	}
	defer d.Close()
	n := 0
	for {
		names, err := d.Readdirnames(4096)
		n += len(names)
		if err != nil || len(names) == 0 {
			break
		}
	}
	return uint64(n+fdHeadroom) >= rl.Cur
}

// isStaleHandle reports whether err says an object handle is invalid. That
// happens when the key was deleted, but also after the login was lost:
// SoftHSM2 invalidates the handles of private objects at logout, and
// crypto11's pool then hands out fresh, logged-out sessions on which
// C_SignInit fails with CKR_OBJECT_HANDLE_INVALID. HSM.do tells the two
// apart by checking the connection.
func isStaleHandle(err error) bool {
	code, ok := p11Code(err)
	return ok && (code == pkcs11.CKR_OBJECT_HANDLE_INVALID || code == pkcs11.CKR_KEY_HANDLE_INVALID)
}

// isAuthFailure reports whether a C_Decrypt error means the GCM tag did not
// verify. SoftHSM2 reports a bad tag as CKR_GENERAL_ERROR; PKCS#11 3.0 tokens
// use CKR_AEAD_DECRYPT_FAILED; others CKR_ENCRYPTED_DATA_INVALID.
func isAuthFailure(err error) bool {
	code, ok := p11Code(err)
	if !ok {
		return false
	}
	switch code {
	case pkcs11.CKR_GENERAL_ERROR,
		pkcs11.CKR_ENCRYPTED_DATA_INVALID,
		pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		ckrAEADDecryptFailed:
		return true
	}
	return false
}

// panicError is what a panic inside a PKCS#11 call becomes.
type panicError struct{ v any }

func (e panicError) Error() string { return fmt.Sprintf("hsm: PKCS#11 call panicked: %v", e.v) }

// beforeLogin marks a dial failure that happened before the token checked
// the PIN (the module would not initialise, no session opened, C_Login
// failed with a device or general error rather than a PIN error): trying
// again costs the PIN nothing, so Open does, briefly.
type beforeLogin struct{ err error }

func (e beforeLogin) Error() string { return e.err.Error() }
func (e beforeLogin) Unwrap() error { return e.err }

// retryableDial reports whether Open may dial again after err.
func retryableDial(err error) bool {
	var bl beforeLogin
	return errors.Is(err, ErrNoToken) || errors.As(err, &bl)
}
