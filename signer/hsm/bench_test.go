package hsm

import (
	"context"
	"crypto"
	"crypto/sha256"
	"testing"

	"github.com/pstd/pstd/internal/testenv"
)

func benchHSM(b *testing.B) *HSM {
	b.Helper()
	tok := testenv.NewToken(b)
	h, err := Open(tokenConfig(b, tok))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	if err := h.EnsureKEK(context.Background()); err != nil {
		b.Fatal(err)
	}
	return h
}

// BenchmarkSoftHSMSign is the per-redemption cost of the record signature.
func BenchmarkSoftHSMSign(b *testing.B) {
	h := benchHSM(b)
	s, err := h.GenerateRRKey(context.Background(), "rr-bench")
	if err != nil {
		b.Fatal(err)
	}
	d := sha256.Sum256([]byte("claims"))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Sign(nil, d[:], crypto.SHA256); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkSoftHSMUnseal is the per-key cost at load.
func BenchmarkSoftHSMUnseal(b *testing.B) {
	h := benchHSM(b)
	sealed, err := h.Seal(make([]byte, 48), []byte("aad"))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		pt, err := h.Unseal(sealed, []byte("aad"))
		if err != nil {
			b.Fatal(err)
		}
		Wipe(pt)
	}
}
