package hsm

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"

	"github.com/miekg/pkcs11"
)

// atDescriptorLimit lowers the process's soft RLIMIT_NOFILE to just above
// the descriptors it holds while f runs, so the process really is out of
// descriptors (this package's tests do not run in parallel).
func atDescriptorLimit(t *testing.T, f func()) {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	low := old
	low.Cur = uint64(len(ents) + 2)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
			t.Fatal(err)
		}
	}()
	f()
}

// TestResourceExhaustionIsNotALostToken: out of descriptors or memory, an
// HSM call fails closed (ErrUnavailable, ErrResources) but pstd neither
// logs out nor reconnects; the same device error with descriptors to spare
// is a lost session and reconnects.
func TestResourceExhaustionIsNotALostToken(t *testing.T) {
	tok := newFakeToken("1234")
	h := mustOpenFake(t, tok)
	if err := h.EnsureKEK(t.Context()); err != nil {
		t.Fatal(err)
	}
	sealed, err := h.Seal([]byte("k"), nil)
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, decErr error, atLimit bool) {
		t.Helper()
		tok.decErr = decErr
		var err error
		if atLimit {
			atDescriptorLimit(t, func() { _, err = h.Unseal(sealed, nil) })
		} else {
			_, err = h.Unseal(sealed, nil)
		}
		tok.decErr = nil
		if !errors.Is(err, ErrResources) || !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s: %v, want ErrResources and ErrUnavailable", what, err)
		}
		if tok.dials != 1 || h.reconnectCount() != 0 {
			t.Errorf("%s: dials %d, reconnects %d: taken for a lost token", what, tok.dials, h.reconnectCount())
		}
	}
	check("CKR_HOST_MEMORY", pkcs11.Error(pkcs11.CKR_HOST_MEMORY), false)
	check("EMFILE", fmt.Errorf("module: open: %w", syscall.EMFILE), false)
	check("ENFILE", fmt.Errorf("module: socket: %w", syscall.ENFILE), false)
	check("CKR_DEVICE_ERROR out of descriptors", pkcs11.Error(pkcs11.CKR_DEVICE_ERROR), true)
	if _, err := h.Unseal(sealed, nil); err != nil {
		t.Fatalf("after the pressure: %v", err)
	}

	// With descriptors to spare, a device error is a lost session.
	tok.decErr = pkcs11.Error(pkcs11.CKR_DEVICE_ERROR)
	_, _ = h.Unseal(sealed, nil)
	tok.decErr = nil
	if h.reconnectCount() == 0 {
		t.Error("CKR_DEVICE_ERROR with descriptors to spare did not reconnect")
	}
}
