package voprf

import (
	"crypto/subtle"
	"fmt"
	"io"
	"math/big"

	"filippo.io/bigmod"

	"github.com/pstd/pstd/signer/voprf/internal/p384"
)

// Client is the browser's half of PST v1 VOPRF, for tests, the load tool and
// pstctl: it blinds nonces, verifies the issuer's batched proof, unblinds
// tokens and builds redemption requests.
type Client struct {
	pub  *PublicKey
	seed [48]byte
}

// NewClient returns a client for the issuer key pub.
func NewClient(pub *PublicKey) *Client {
	return &Client{pub: pub, seed: seedHash(pub.comp[:])}
}

// Pending is a client's state between sending an issue request and reading
// the response. It holds the blinds, which are secret.
type Pending struct {
	nonces  [][NonceSize]byte
	blinds  [][ScalarSize]byte
	blinded [][]byte
	points  []*p384.Point
}

// Request returns the issue request for p.
func (p *Pending) Request() []byte { return MarshalIssueRequest(p.blinded) }

// Wipe clears the blinds.
func (p *Pending) Wipe() {
	for i := range p.blinds {
		wipe(p.blinds[i][:])
	}
}

// Blind draws count random nonces and blinds them: B_i = b_i·HashToGroup(nonce_i).
func (c *Client) Blind(count int, rand io.Reader) (*Pending, error) {
	if count < 1 || count > MaxBatchSize {
		return nil, newError(BadCount, "count must be in [1, %d]", MaxBatchSize)
	}
	p := &Pending{
		nonces:  make([][NonceSize]byte, count),
		blinds:  make([][ScalarSize]byte, count),
		blinded: make([][]byte, count),
		points:  make([]*p384.Point, count),
	}
	for i := range count {
		if _, err := io.ReadFull(rand, p.nonces[i][:]); err != nil {
			return nil, fmt.Errorf("drawing a nonce failed: %w", err)
		}
		b, err := randomScalar(rand)
		if err != nil {
			return nil, fmt.Errorf("drawing a blind failed: %w", err)
		}
		p.blinds[i] = b
		h := hashToGroup(p.nonces[i][:])
		bp, err := p384.NewPoint().ScalarMult(h, b[:])
		if err != nil {
			return nil, fmt.Errorf("blinding failed: %w", err)
		}
		p.points[i] = bp
		p.blinded[i] = bp.Bytes()
	}
	return p, nil
}

var nMinus2 = new(big.Int).Sub(orderBig, big.NewInt(2)).FillBytes(make([]byte, ScalarSize))

// Finish parses the issue response, verifies its DLEQ proof against the
// client's key and the blinded elements it covers, and unblinds the tokens.
// The issuer may have issued fewer tokens than requested.
func (c *Client) Finish(p *Pending, response []byte) ([]Token, error) {
	resp, err := ParseIssueResponse(response)
	if err != nil {
		return nil, err
	}
	if resp.KeyID != c.pub.KeyID {
		return nil, newError(UnknownKey, "response names key %d, expected %d", resp.KeyID, c.pub.KeyID)
	}
	n := len(resp.Evaluated)
	if n > len(p.blinded) {
		return nil, newError(BadCount, "issuer returned %d tokens for %d requested", n, len(p.blinded))
	}
	if n == 0 {
		return nil, nil
	}
	if err := c.verifyProof(p.blinded[:n], p.points[:n], resp); err != nil {
		return nil, err
	}
	tokens := make([]Token, n)
	for i := range n {
		b, err := bigmod.NewNat().SetBytes(p.blinds[i][:], orderN)
		if err != nil {
			return nil, fmt.Errorf("blind out of range: %w", err)
		}
		inv := bigmod.NewNat().Exp(b, nMinus2, orderN).Bytes(orderN) // b^-1, constant time
		w, err := p384.NewPoint().ScalarMult(resp.points[i], inv)
		wipe(inv)
		if err != nil {
			return nil, fmt.Errorf("unblinding failed: %w", err)
		}
		tokens[i].KeyID = resp.KeyID
		tokens[i].Nonce = p.nonces[i]
		copy(tokens[i].W[:], w.Bytes())
	}
	return tokens, nil
}

// verifyProof checks the batched DLEQ proof of resp over the blinded elements
// (everything here is public, so it uses the variable-time msm).
func (c *Client) verifyProof(blinded [][]byte, bPoints []*p384.Point, resp *IssueResponse) error {
	n := len(blinded)
	d := make([][ScalarSize]byte, n)
	var bComp, zComp [CompressedSize]byte
	var buf []byte
	for i := range n {
		compressFromUncompressed(&bComp, blinded[i])
		compressFromUncompressed(&zComp, resp.Evaluated[i])
		d[i], buf = compositeWeight(buf, c.seed[:], i, bComp[:], zComp[:])
	}
	m := p384.NewPoint().MultiScalarMult(d, bPoints)
	z := p384.NewPoint().MultiScalarMult(d, resp.points)

	var cs, ss [ScalarSize]byte
	copy(cs[:], resp.Proof[:ScalarSize])
	copy(ss[:], resp.Proof[ScalarSize:])
	if _, err := bigmod.NewNat().SetBytes(cs[:], orderN); err != nil {
		return newError(BadProof, "proof challenge out of range")
	}
	if _, err := bigmod.NewNat().SetBytes(ss[:], orderN); err != nil {
		return newError(BadProof, "proof response out of range")
	}
	g := p384.NewPoint().SetGenerator()
	sc := [][ScalarSize]byte{ss, cs}
	t2 := p384.NewPoint().MultiScalarMult(sc, []*p384.Point{g, c.pub.point})
	t3 := p384.NewPoint().MultiScalarMult(sc, []*p384.Point{m, z})
	var comps [4][CompressedSize]byte
	for i, pt := range []*p384.Point{m, z, t2, t3} {
		b := pt.Bytes()
		if len(b) != ElementSize {
			return newError(BadProof, "proof does not verify")
		}
		compressFromUncompressed(&comps[i], b)
	}
	want := challenge(c.pub.comp[:], comps[0][:], comps[1][:], comps[2][:], comps[3][:])
	if subtle.ConstantTimeCompare(want[:], cs[:]) != 1 {
		return newError(BadProof, "proof does not verify")
	}
	return nil
}

// RedeemRequest builds the redemption request for token t with clientData.
func (c *Client) RedeemRequest(t *Token, clientData []byte) ([]byte, error) {
	return MarshalRedeemRequest(t, clientData)
}
