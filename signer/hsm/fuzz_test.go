package hsm

import (
	"encoding/binary"
	"strings"
	"testing"
)

// FuzzParseURI: an RFC 7512 URI from configuration. What parses renders
// (String) into a URI that parses to the same token, module and PIN source,
// and the rendering never carries the PIN value.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"pkcs11:token=pstd",
		"pkcs11:token=pstd%20dev;object=x?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/run/pstd/pin",
		"pkcs11:token=a?pin-value=1234",
		"pkcs11:token=%",
		"pkcs11:?pin-source=file:/x",
		"pkcs11:token=a;token=b",
		"http://x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseURI(s)
		if err != nil {
			return
		}
		out := u.String()
		if u.PINValue != "" && strings.Contains(out, "pin-value="+uriEscape(u.PINValue)) {
			t.Fatalf("String %q shows the PIN", out)
		}
		v, err := ParseURI(out)
		if err != nil {
			t.Fatalf("%q renders as %q, which does not parse: %v", s, out, err)
		}
		if v.TokenLabel != u.TokenLabel || v.ModulePath != u.ModulePath || v.PINSource != u.PINSource {
			t.Fatalf("%q -> %+v -> %q -> %+v", s, u, out, v)
		}
	})
}

// FuzzSealedKEKGeneration: the header of a sealed key blob read back from
// the database. Short or unknown-version blobs are refused, never a panic,
// and an accepted one names the generation it carries.
func FuzzSealedKEKGeneration(f *testing.F) {
	good := make([]byte, 1+4+12+32+16)
	good[0] = 1
	binary.BigEndian.PutUint32(good[1:5], KEKGeneration)
	f.Add(good)
	f.Add(good[:5])
	f.Add([]byte{})
	f.Add([]byte{2, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		gen, err := SealedKEKGeneration(b)
		if err != nil {
			return
		}
		if len(b) < 5 || gen != binary.BigEndian.Uint32(b[1:5]) {
			t.Fatalf("generation %d from %x", gen, b)
		}
	})
}
