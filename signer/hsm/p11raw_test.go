package hsm

import (
	"bytes"
	"strings"
	"testing"
)

// The raw calls find the function table of the module the HSM loaded, and
// loading it cross-checks C_Login, C_Decrypt and C_GenerateRandom against
// the names SoftHSM2 exports: a wrong slot in our table fails here.
func TestRawFunctionsMatchTheModule(t *testing.T) {
	tok, h := openToken(t)
	if _, err := loadRawFuncs(tok.Module); err != nil {
		t.Fatalf("the module's function table: %v", err)
	}
	// Through the table: random bytes (not all zero), and a seal that the
	// raw C_Decrypt opens.
	r, err := h.Random(64)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(r, make([]byte, 64)) {
		t.Fatal("C_GenerateRandom wrote nothing")
	}
	if err := h.EnsureKEK(t.Context()); err != nil {
		t.Fatal(err)
	}
	msg := []byte("forty-eight bytes of secret scalar, more or less")
	sealed, err := h.Seal(msg, []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	pt, err := h.Unseal(sealed, []byte("aad"))
	if err != nil || !bytes.Equal(pt, msg) {
		t.Fatalf("Unseal = %q, %v", pt, err)
	}
	if _, err := h.Unseal(sealed, []byte("other")); err == nil {
		t.Fatal("Unseal with other aad succeeded")
	}
}

// A module that is not loaded is not loaded by loadRawFuncs either.
func TestRawFunctionsNeedTheLoadedModule(t *testing.T) {
	_, err := loadRawFuncs("/nonexistent/libpkcs11.so")
	if err == nil || !strings.Contains(err.Error(), "not loaded") {
		t.Fatalf("loadRawFuncs of an unloaded module: %v", err)
	}
}
