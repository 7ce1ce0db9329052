package voprf

import (
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"filippo.io/bigmod"

	"github.com/pstd/pstd/internal/secmem"
	"github.com/pstd/pstd/signer/voprf/internal/p384"
)

// parallelThreshold is the batch size from which the per-element
// multiplications Z_i = k·B_i are spread over the available cores. Below it
// the goroutine hand-off costs more than it saves, and a busy server already
// keeps every core busy with concurrent requests.
const parallelThreshold = 16

var errWiped = newError(KeyWiped, "issuer key has been wiped")

// Issue runs BlindEvaluateBatch over the first min(count, max) blinded
// elements of req and returns the issue response
// u16(issued) || u32(key_id) || Z_i… || u16(96) || c || s
// together with the number of tokens issued. The DLEQ proof's nonce r is drawn
// from rand. max must be at least 1.
func (sk *PrivateKey) Issue(req *IssueRequest, max int, rand io.Reader) ([]byte, int, error) {
	// The proof nonce r gives k away with the proof's c and s: it lives in
	// protected memory, as k does, and so does the split of k below.
	mem, err := secmem.New(2 * ScalarSize)
	if err != nil {
		return nil, 0, err
	}
	defer secmem.Free(mem)
	r, k1 := mem[:ScalarSize], mem[ScalarSize:]
	if err := randomScalarInto(rand, r); err != nil {
		return nil, 0, fmt.Errorf("drawing the proof nonce failed: %w", err)
	}
	if err := randomScalarInto(rand, k1); err != nil {
		return nil, 0, fmt.Errorf("drawing the proof nonce failed: %w", err)
	}
	return sk.issue(req, max, (*[ScalarSize]byte)(r), (*[ScalarSize]byte)(k1))
}

// issue computes the response with proof nonce r; k1 is a fresh random
// share of k for the proof's arithmetic.
func (sk *PrivateKey) issue(req *IssueRequest, max int, r, k1 *[ScalarSize]byte) ([]byte, int, error) {
	if sk.wiped.Load() {
		return nil, 0, errWiped
	}
	if max < 1 {
		return nil, 0, newError(BadCount, "nothing may be issued")
	}
	n := min(req.Count(), max)

	out := make([]byte, 2+4+n*ElementSize+2+ProofSize)
	binary.BigEndian.PutUint16(out, uint16(n))
	binary.BigEndian.PutUint32(out[2:], sk.pub.KeyID)
	zs := out[6 : 6+n*ElementSize]

	// Z_i = k·B_i, constant time in k.
	zPoints := make([]p384.Point, n)
	evaluate := func(i int) {
		if _, err := zPoints[i].ScalarMult(req.points[i], sk.k[:]); err != nil {
			panic("voprf: P-384 ScalarMult refused a 48-byte scalar")
		}
	}
	if workers := runtime.GOMAXPROCS(0); n >= parallelThreshold && workers > 1 {
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := w; i < n; i += workers {
					evaluate(i)
				}
			})
		}
		wg.Wait()
	} else {
		for i := range n {
			evaluate(i)
		}
	}
	// One shared field inversion encodes every Z_i, straight into the
	// response (zs has the capacity, so append does not reallocate). k ∈
	// [1, n-1] and B_i ≠ O in a prime-order group, so Z_i ≠ O; were one the
	// identity anyway, the issuance fails below with the proof elements.
	zPtrs := make([]*p384.Point, n)
	for i := range zPoints {
		zPtrs[i] = &zPoints[i]
	}
	_, zsOK := p384.AppendBatch(zs[:0], zPtrs)

	// Composite weights d_i over (B_i, Z_i), RFC 9497 ComputeCompositesFast.
	d := make([][ScalarSize]byte, n)
	var bComp, zComp [CompressedSize]byte
	buf := make([]byte, 0, 2+48+2+2*(2+CompressedSize)+len("Composite"))
	for i := range n {
		compressFromUncompressed(&bComp, req.Blinded[i])
		compressFromUncompressed(&zComp, zs[i*ElementSize:(i+1)*ElementSize])
		d[i], buf = compositeWeight(buf, sk.seed[:], i, bComp[:], zComp[:])
	}
	m := p384.NewPoint().MultiScalarMult(d, req.points[:n])

	// Z = k·M; t2 = r·G; t3 = r·M — all constant time in the secrets k and r.
	z, err := p384.NewPoint().ScalarMult(m, sk.k[:])
	if err != nil {
		return nil, 0, fmt.Errorf("scalar multiplication failed: %w", err)
	}
	t2, err := p384.NewPoint().ScalarBaseMult(r[:])
	if err != nil {
		return nil, 0, fmt.Errorf("scalar multiplication failed: %w", err)
	}
	t3, err := p384.NewPoint().ScalarMult(m, r[:])
	if err != nil {
		return nil, 0, fmt.Errorf("scalar multiplication failed: %w", err)
	}
	var comps [4][CompressedSize]byte
	var encs [4 * ElementSize]byte
	proofPoints := []*p384.Point{m, z, t2, t3}
	_, ok := p384.AppendBatch(encs[:0], proofPoints)
	for i := range proofPoints {
		if !ok || !zsOK {
			// M = O happens only if the hash outputs cancel: probability 2^-384.
			return nil, 0, errors.New("degenerate proof element")
		}
		compressFromUncompressed(&comps[i], encs[i*ElementSize:(i+1)*ElementSize])
	}
	c := challenge(sk.pub.comp[:], comps[0][:], comps[1][:], comps[2][:], comps[3][:])

	// s = r − c·k mod n, constant time in k and r.
	cN, err := bigmod.NewNat().SetBytes(c[:], orderN)
	if err != nil {
		return nil, 0, fmt.Errorf("challenge out of range: %w", err)
	}
	rN, err := bigmod.NewNat().SetBytes(r[:], orderN)
	if err != nil {
		return nil, 0, fmt.Errorf("proof nonce out of range: %w", err)
	}
	// k is split as k1 + k2 with k1 fresh for this proof, and s = r − c·k1
	// − c·k2: neither k nor c·k (which with the public c gives k) is ever
	// a big number, whose temporaries bigmod leaves behind uncleared. The
	// big numbers themselves are zeroed at once.
	k2, err := bigmod.NewNat().SetBytes(sk.k[:], orderN)
	if err != nil {
		return nil, 0, fmt.Errorf("issuer scalar out of range: %w", err)
	}
	k1N, err := bigmod.NewNat().SetBytes(k1[:], orderN)
	if err != nil {
		return nil, 0, fmt.Errorf("key share out of range: %w", err)
	}
	k2.Sub(k1N, orderN)
	c2, err := bigmod.NewNat().SetBytes(c[:], orderN)
	if err != nil {
		return nil, 0, fmt.Errorf("challenge out of range: %w", err)
	}
	cN.Mul(k1N, orderN)
	c2.Mul(k2, orderN)
	k1N.SetUint(0)
	k2.SetUint(0)
	s := rN.Sub(cN, orderN).Sub(c2, orderN).Bytes(orderN)
	rN.SetUint(0)
	cN.SetUint(0)
	c2.SetUint(0)

	off := 6 + n*ElementSize
	binary.BigEndian.PutUint16(out[off:], ProofSize)
	copy(out[off+2:], c[:])
	copy(out[off+2+ScalarSize:], s)
	wipe(s)
	return out, n, nil
}

// Evaluate computes k·H(nonce), the W of a valid token for this key.
func (sk *PrivateKey) evaluateNonce(nonce []byte) ([]byte, error) {
	if sk.wiped.Load() {
		return nil, errWiped
	}
	h := hashToGroup(nonce)
	w, err := p384.NewPoint().ScalarMult(h, sk.k[:])
	if err != nil {
		return nil, fmt.Errorf("scalar multiplication failed: %w", err)
	}
	return w.Bytes(), nil
}

// VerifyToken checks W == k·HashToGroup(nonce) for a token of this key.
// A token naming another key id is UnknownKey; a wrong W is InvalidToken.
func (sk *PrivateKey) VerifyToken(t *Token) error {
	if t.KeyID != sk.pub.KeyID {
		return newError(UnknownKey, "token key id does not match the key")
	}
	w, err := sk.evaluateNonce(t.Nonce[:])
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(w, t.W[:]) != 1 {
		return newError(InvalidToken, "token does not verify")
	}
	return nil
}

// KeySet finds issuer keys by key id for redemption.
type KeySet interface {
	Key(keyID uint32) (*PrivateKey, bool)
}

// Redeem parses a redemption request, finds the token's key in keys and
// verifies the token. On success it returns the parsed request (key id,
// nonce and the raw client data).
func Redeem(keys KeySet, request []byte) (*RedeemRequest, error) {
	req, err := ParseRedeemRequest(request)
	if err != nil {
		return nil, err
	}
	sk, ok := keys.Key(req.Token.KeyID)
	if !ok {
		return nil, newError(UnknownKey, "token key id %d is not a key of this issuer", req.Token.KeyID)
	}
	if err := sk.VerifyToken(&req.Token); err != nil {
		return nil, err
	}
	return req, nil
}
