package voprf

import (
	"bytes"
	"crypto/rand"
	"strconv"
	"testing"
	"time"
)

// Every parser of untrusted bytes has a fuzz target seeded from the
// BoringSSL vectors. Each asserts that a parse never panics, that every error
// is typed (never Internal), and that what parses re-encodes to the input.

func seedFromVectors(f *testing.F, pick func(v jsonlVector) [][]byte) {
	for _, v := range loadJSONL(f) {
		for _, b := range pick(v) {
			f.Add(b)
		}
	}
}

func requireTyped(t *testing.T, err error) {
	if _, ok := KindOf(err); err != nil && !ok {
		t.Fatalf("untyped error: %v", err)
	}
}

func FuzzParseIssueRequest(f *testing.F) {
	seedFromVectors(f, func(v jsonlVector) [][]byte { return [][]byte{b64(f, v.IssueRequest)} })
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := ParseIssueRequest(b)
		requireTyped(t, err)
		if err == nil && !bytes.Equal(MarshalIssueRequest(req.Blinded), b) {
			t.Fatal("issue request does not round-trip")
		}
	})
}

func FuzzParseIssueResponse(f *testing.F) {
	seedFromVectors(f, func(v jsonlVector) [][]byte { return [][]byte{b64(f, v.IssueResponse)} })
	f.Fuzz(func(t *testing.T, b []byte) {
		_, err := ParseIssueResponse(b)
		requireTyped(t, err)
	})
}

func FuzzParseRedeemRequest(f *testing.F) {
	seedFromVectors(f, func(v jsonlVector) [][]byte {
		var out [][]byte
		for _, r := range v.Redemptions {
			out = append(out, b64(f, r.RedeemRequest))
		}
		return out
	})
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := ParseRedeemRequest(b)
		requireTyped(t, err)
		if err == nil {
			again, err := MarshalRedeemRequest(&req.Token, req.ClientData)
			if err != nil || !bytes.Equal(again, b) {
				t.Fatal("redemption request does not round-trip")
			}
		}
	})
}

// FuzzRedeem runs the full redemption check (parse, key lookup, k·H(nonce))
// on mutated requests against the vectors' keys.
func FuzzRedeem(f *testing.F) {
	keys := mapKeys{}
	for _, v := range loadJSONL(f) {
		sk, err := ParsePrivateKeyBlob(b64(f, v.PrivateKey))
		if err != nil {
			f.Fatal(err)
		}
		keys[sk.KeyID()] = sk
		for _, r := range v.Redemptions {
			f.Add(b64(f, r.RedeemRequest))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, err := Redeem(keys, b)
		requireTyped(t, err)
	})
}

func FuzzParseClientData(f *testing.F) {
	cd, _ := MarshalClientData(&ClientData{RedeemingOrigin: "http://localhost:8480", RedemptionTimestamp: 1795588023})
	f.Add(cd)
	f.Add([]byte{0xa1, 0x60, 0x60})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, err := ParseClientData(b)
		requireTyped(t, err)
	})
}

func FuzzParseKeyBlobs(f *testing.F) {
	seedFromVectors(f, func(v jsonlVector) [][]byte { return [][]byte{b64(f, v.PublicKey), b64(f, v.PrivateKey)} })
	f.Fuzz(func(t *testing.T, b []byte) {
		pk, err := ParsePublicKeyBlob(b)
		requireTyped(t, err)
		if err == nil && !bytes.Equal(pk.MarshalBlob(), b) {
			t.Fatal("public key blob does not round-trip")
		}
		_, err = ParsePrivateKeyBlob(b)
		requireTyped(t, err)
	})
}

// FuzzClientFinish feeds mutated issue responses to a client with pending
// blinds: nothing may panic and a mutated proof must never verify.
func FuzzClientFinish(f *testing.F) {
	sk, err := NewPrivateKey(1, bytes.Repeat([]byte{7}, ScalarSize))
	if err != nil {
		f.Fatal(err)
	}
	c := NewClient(sk.Public())
	p, err := c.Blind(2, rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	req, _ := ParseIssueRequest(p.Request())
	resp, _, err := sk.Issue(req, 2, rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(resp)
	f.Fuzz(func(t *testing.T, b []byte) {
		toks, err := c.Finish(p, b)
		requireTyped(t, err)
		if err == nil && len(b) == len(resp) && !bytes.Equal(b, resp) && len(toks) == 2 {
			// Only a different valid proof for the same elements may pass.
			if !bytes.Equal(b[:len(b)-ProofSize], resp[:len(resp)-ProofSize]) {
				t.Fatal("a mutated response verified")
			}
		}
	})
}

// FuzzParseCommitment: a commitment comes from an issuer's server (for the
// Go client, pstbench and pstctl). What parses rebuilds into a commitment
// that parses to the same keys.
func FuzzParseCommitment(f *testing.F) {
	var pubs []PublishedKey
	for id := uint32(1); id <= 3; id++ {
		sk, err := GenerateKey(id, rand.Reader)
		if err != nil {
			f.Fatal(err)
		}
		pubs = append(pubs, PublishedKey{Public: sk.Public(), Expiry: time.UnixMicro(1805966804721048)})
	}
	for n := 1; n <= 3; n++ {
		b, err := BuildCommitment(uint32(n), 10, pubs[:n])
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"PrivateStateTokenV1VOPRF":{"protocol_version":"PrivateStateTokenV1VOPRF","id":1,"batchsize":10,"keys":{}}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, keys, err := ParseCommitment(b)
		requireTyped(t, err)
		if err != nil {
			return
		}
		var again []PublishedKey
		for _, id := range SortedKeyIDs(keys) {
			var exp int64
			for label, k := range c.Keys {
				if n, _ := strconv.ParseUint(label, 10, 32); uint32(n) == id {
					exp, _ = strconv.ParseInt(k.Expiry, 10, 64)
				}
			}
			again = append(again, PublishedKey{Public: keys[id], Expiry: time.UnixMicro(exp)})
		}
		rebuilt, err := BuildCommitment(c.ID, c.BatchSize, again)
		if err != nil {
			t.Fatalf("parsed commitment does not rebuild: %v", err)
		}
		_, keys2, err := ParseCommitment(rebuilt)
		if err != nil || len(keys2) != len(keys) {
			t.Fatalf("rebuilt commitment: %d keys, %v", len(keys2), err)
		}
		for id, k := range keys {
			if !bytes.Equal(keys2[id].MarshalBlob(), k.MarshalBlob()) {
				t.Fatalf("key %d changed in the round trip", id)
			}
		}
	})
}
