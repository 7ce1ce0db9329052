package voprf

import (
	"bytes"
	"crypto/rand"
	"math/big"
	"testing"

	"filippo.io/nistec"
	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/oprf"
	"github.com/cloudflare/circl/zk/dleq"

	"github.com/pstd/pstd/signer/voprf/internal/p384"
)

// circl's oprf package is an independent RFC 9497 implementation. For random
// keys and inputs, our issuer's evaluation and proof must satisfy circl's
// verifiable client, and circl's server output must satisfy ours.
func TestCirclCrossCheck(t *testing.T) {
	for trial := range 8 {
		sk, err := GenerateKey(uint32(trial+1), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		var csk oprf.PrivateKey
		if err := csk.UnmarshalBinary(oprf.SuiteP384, sk.k[:]); err != nil {
			t.Fatal(err)
		}
		cpub, err := csk.Public().MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(cpub, sk.pub.comp[:]) {
			t.Fatal("circl derives a different public key")
		}

		count := 1 + trial*3
		inputs := make([][]byte, count)
		for i := range inputs {
			inputs[i] = make([]byte, NonceSize)
			rand.Read(inputs[i])
		}
		client := oprf.NewVerifiableClient(oprf.SuiteP384, csk.Public())
		fin, evReq, err := client.Blind(inputs)
		if err != nil {
			t.Fatal(err)
		}
		wire := make([][]byte, count)
		for i, e := range evReq.Elements {
			if wire[i], err = e.MarshalBinary(); err != nil {
				t.Fatal(err)
			}
		}
		req, err := ParseIssueRequest(MarshalIssueRequest(wire))
		if err != nil {
			t.Fatal(err)
		}

		// Ours → circl.
		resp, _, err := sk.Issue(req, count, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := ParseIssueResponse(resp)
		if err != nil {
			t.Fatal(err)
		}
		ev := &oprf.Evaluation{Proof: new(dleq.Proof)}
		for _, z := range parsed.Evaluated {
			e := group.P384.NewElement()
			if err := e.UnmarshalBinary(z); err != nil {
				t.Fatal(err)
			}
			ev.Elements = append(ev.Elements, e)
		}
		if err := ev.Proof.UnmarshalBinary(group.P384, parsed.Proof[:]); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Finalize(fin, ev); err != nil {
			t.Fatalf("trial %d: circl rejects our evaluation: %v", trial, err)
		}

		// circl → ours.
		server := oprf.NewVerifiableServer(oprf.SuiteP384, &csk)
		cev, err := server.Evaluate(evReq)
		if err != nil {
			t.Fatal(err)
		}
		var zs [][]byte
		for i, e := range cev.Elements {
			b, err := e.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, parsed.Evaluated[i]) {
				t.Fatalf("trial %d: circl evaluates element %d differently", trial, i)
			}
			zs = append(zs, b)
		}
		proof, err := cev.Proof.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		theirs := append([]byte{0, byte(count), 0, 0, 0, byte(trial + 1)}, bytes.Join(zs, nil)...)
		theirs = append(theirs, 0, ProofSize)
		theirs = append(theirs, proof...)
		tp, err := ParseIssueResponse(theirs)
		if err != nil {
			t.Fatal(err)
		}
		if err := NewClient(sk.Public()).verifyProof(req.Blinded, req.points, tp); err != nil {
			t.Fatalf("trial %d: we reject circl's proof: %v", trial, err)
		}
	}
}

// TestMSMMatchesNaive checks the variable-time multi-scalar multiplication
// against a sum of separate nistec multiplications, including zero and tiny
// scalars.
func TestMSMMatchesNaive(t *testing.T) {
	for _, n := range []int{1, 2, 5, 17} {
		scalars := make([][ScalarSize]byte, n)
		points := make([]*nistec.P384Point, n)
		ours := make([]*p384.Point, n)
		for i := range n {
			switch i {
			case 1:
				scalars[i][ScalarSize-1] = 1
			case 2:
				// zero
			case 3:
				copy(scalars[i][:], new(big.Int).Sub(orderBig, big.NewInt(1)).FillBytes(make([]byte, ScalarSize)))
			default:
				s, _ := randomScalar(rand.Reader)
				scalars[i] = s
			}
			k, _ := randomScalar(rand.Reader)
			points[i], _ = nistec.NewP384Point().ScalarBaseMult(k[:])
			p, err := p384.NewPoint().SetBytes(points[i].Bytes())
			if err != nil {
				t.Fatal(err)
			}
			ours[i] = p
		}
		got := p384.NewPoint().MultiScalarMult(scalars, ours)
		want := nistec.NewP384Point()
		for i := range n {
			p, _ := nistec.NewP384Point().ScalarMult(points[i], scalars[i][:])
			want.Add(want, p)
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("msm of %d terms differs from the naive sum", n)
		}
	}
}
