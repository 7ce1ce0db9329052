package voprf

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"testing"

	"github.com/cloudflare/circl/expander"
	"github.com/cloudflare/circl/group"
)

// hashToScalar and expandMessageXMD are compared with circl's independent
// implementations on messages of every size class, including ones larger
// than the stack buffer.
func TestHashToScalarMatchesCircl(t *testing.T) {
	for _, n := range []int{0, 1, 47, 48, 100, 163, 264, 300, 400, 600, 2000} {
		msg := make([]byte, n)
		if _, err := rand.Read(msg); err != nil {
			t.Fatal(err)
		}
		want, err := group.P384.HashToScalar(msg, dstHashToScalar).MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if got := hashToScalar(msg); !bytes.Equal(got[:], want) {
			t.Fatalf("hashToScalar of %d bytes = %x, circl says %x", n, got, want)
		}
		for _, outLen := range []int{1, 48, 72, 97, 144, 255} {
			got := make([]byte, outLen)
			expandMessageXMD(got, msg, dstHashToGroup)
			want := expander.NewExpanderMD(crypto.SHA384, dstHashToGroup).Expand(msg, uint(outLen))
			if !bytes.Equal(got, want) {
				t.Fatalf("expand_message_xmd(%d bytes → %d) differs from circl", n, outLen)
			}
		}
	}
}

// hashToGroup is compared with circl's RFC 9380 hash_to_curve.
func TestHashToGroupMatchesCircl(t *testing.T) {
	for _, n := range []int{0, 1, 64, 64, 64, 64, 100, 600} {
		msg := make([]byte, n)
		if _, err := rand.Read(msg); err != nil {
			t.Fatal(err)
		}
		want, err := group.P384.HashToElement(msg, dstHashToGroup).MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if got := hashToGroup(msg).Bytes(); !bytes.Equal(got, want) {
			t.Fatalf("hashToGroup of %d bytes = %x, circl says %x", n, got, want)
		}
	}
}

func BenchmarkHashToScalar(b *testing.B) {
	msg := make([]byte, 163) // a composite weight's input
	b.ReportAllocs()
	for b.Loop() {
		hashToScalar(msg)
	}
}

// FuzzHashToGroup compares hashToGroup (p384's simplified SWU) and
// hashToScalar with circl's RFC 9380 implementation on arbitrary input.
func FuzzHashToGroup(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, NonceSize))
	f.Add(bytes.Repeat([]byte{0xff}, 300))
	f.Fuzz(func(t *testing.T, msg []byte) {
		want, err := group.P384.HashToElement(msg, dstHashToGroup).MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if got := hashToGroup(msg).Bytes(); !bytes.Equal(got, want) {
			t.Fatalf("hashToGroup(%x) = %x, circl says %x", msg, got, want)
		}
		wantS, err := group.P384.HashToScalar(msg, dstHashToScalar).MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if got := hashToScalar(msg); !bytes.Equal(got[:], wantS) {
			t.Fatalf("hashToScalar(%x) = %x, circl says %x", msg, got, wantS)
		}
	})
}
