package voprf

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"testing"
)

func mustKey(t testing.TB, id uint32) *PrivateKey {
	t.Helper()
	sk, err := GenerateKey(id, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return sk
}

func flip(b []byte, i int) []byte {
	out := append([]byte(nil), b...)
	out[i] ^= 1
	return out
}

func wantKind(t *testing.T, name string, err error, k Kind) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: no error, want %s", name, k)
	}
	if got, _ := KindOf(err); got != k {
		t.Fatalf("%s: kind %s (%v), want %s", name, got, err, k)
	}
}

func TestIssueRequestRejections(t *testing.T) {
	sk := mustKey(t, 1)
	p, err := NewClient(sk.Public()).Blind(3, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	good := p.Request()
	offCurve := flip(good, 2+40) // a byte of B_0's X
	compressedForm := append([]byte(nil), good...)
	compressedForm[2] = 0x02
	allZero := append([]byte{0, 1, 4}, make([]byte, 96)...)
	over := binary.BigEndian.AppendUint16(nil, MaxBatchSize+1)
	over = append(over, bytes.Repeat(good[2:2+ElementSize], MaxBatchSize+1)...)
	cases := []struct {
		name string
		in   []byte
		kind Kind
	}{
		{"empty", nil, Malformed},
		{"one byte", []byte{0}, Malformed},
		{"count 0", []byte{0, 0}, BadCount},
		{"count above 100", over, BadCount},
		{"truncated", good[:len(good)-1], Malformed},
		{"trailing byte", append(append([]byte(nil), good...), 0), Malformed},
		{"count says more", append([]byte{0, 4}, good[2:]...), Malformed},
		{"off curve", offCurve, BadPoint},
		{"compressed prefix", compressedForm, BadPoint},
		{"identity-like zero point", allZero, BadPoint},
	}
	for _, tc := range cases {
		_, err := ParseIssueRequest(tc.in)
		wantKind(t, tc.name, err, tc.kind)
	}
	req, err := ParseIssueRequest(good)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = sk.Issue(req, 0, rand.Reader)
	wantKind(t, "max 0", err, BadCount)
	// A count above the configured batch size is capped, not refused.
	resp, n, err := sk.Issue(req, 2, rand.Reader)
	if err != nil || n != 2 || binary.BigEndian.Uint16(resp) != 2 {
		t.Fatalf("capped issuance: n=%d err=%v", n, err)
	}
}

func TestIssueResponseRejections(t *testing.T) {
	sk := mustKey(t, 5)
	c := NewClient(sk.Public())
	p, _ := c.Blind(4, rand.Reader)
	req, _ := ParseIssueRequest(p.Request())
	resp, _, err := sk.Issue(req, 4, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	proofOff := len(resp) - ProofSize
	other := mustKey(t, 5)
	otherResp, _, _ := other.Issue(req, 4, rand.Reader)
	wrongID := append([]byte(nil), resp...)
	binary.BigEndian.PutUint32(wrongID[2:], 6)
	tooMany, _ := c.Blind(2, rand.Reader)

	cases := []struct {
		name string
		p    *Pending
		in   []byte
		kind Kind
	}{
		{"tampered c", p, flip(resp, proofOff+3), BadProof},
		{"tampered s", p, flip(resp, proofOff+ScalarSize+3), BadProof},
		{"tampered Z (off curve)", p, flip(resp, 6+50), BadPoint},
		{"other key's evaluation", p, otherResp, BadProof},
		{"wrong key id", p, wrongID, UnknownKey},
		{"more tokens than requested", tooMany, resp, BadCount},
		{"truncated", p, resp[:len(resp)-1], Malformed},
		{"bad proof length", p, flip(resp, proofOff-1), Malformed},
	}
	for _, tc := range cases {
		_, err := c.Finish(tc.p, tc.in)
		wantKind(t, tc.name, err, tc.kind)
	}
	// Swapping two evaluated elements keeps every point valid but breaks the proof.
	swapped := append([]byte(nil), resp...)
	copy(swapped[6:], resp[6+ElementSize:6+2*ElementSize])
	copy(swapped[6+ElementSize:], resp[6:6+ElementSize])
	_, err = c.Finish(p, swapped)
	wantKind(t, "swapped elements", err, BadProof)
	if _, err := c.Finish(p, resp); err != nil {
		t.Fatalf("untampered response rejected: %v", err)
	}
}

func TestRedemptionRejections(t *testing.T) {
	sk := mustKey(t, 9)
	c := NewClient(sk.Public())
	p, _ := c.Blind(1, rand.Reader)
	req, _ := ParseIssueRequest(p.Request())
	resp, _, _ := sk.Issue(req, 1, rand.Reader)
	toks, err := c.Finish(p, resp)
	if err != nil {
		t.Fatal(err)
	}
	cd := []byte("client data")
	good, _ := MarshalRedeemRequest(&toks[0], cd)
	keys := mapKeys{9: sk}
	unknown := append([]byte(nil), good...)
	binary.BigEndian.PutUint32(unknown[2:], 10)
	bigCD := make([]byte, MaxClientDataSize+1)
	oversized := append(append([]byte{0, TokenSize}, toks[0].Marshal()...), binary.BigEndian.AppendUint16(nil, uint16(len(bigCD)))...)
	oversized = append(oversized, bigCD...)

	cases := []struct {
		name string
		in   []byte
		kind Kind
	}{
		{"empty", nil, Malformed},
		{"token length 164", append([]byte{0, 164}, good[2:]...), Malformed},
		{"truncated token", good[:100], Malformed},
		{"no client data length", good[:2+TokenSize+1], Malformed},
		{"client data truncated", good[:len(good)-1], Malformed},
		{"trailing byte", append(append([]byte(nil), good...), 1), Malformed},
		{"oversized", oversized, Malformed},
		{"unknown key id", unknown, UnknownKey},
		{"tampered nonce", flip(good, 2+4+10), InvalidToken},
		{"tampered W", flip(good, 2+4+NonceSize+60), BadPoint},
	}
	for _, tc := range cases {
		_, err := Redeem(keys, tc.in)
		wantKind(t, tc.name, err, tc.kind)
	}
	// A valid token of another key with the same id does not verify.
	wrongKey := mustKey(t, 9)
	_, err = Redeem(mapKeys{9: wrongKey}, good)
	wantKind(t, "same id, other key", err, InvalidToken)

	got, err := Redeem(keys, good)
	if err != nil || !bytes.Equal(got.ClientData, cd) {
		t.Fatalf("good redemption: %v", err)
	}
	sk.Wipe()
	_, err = Redeem(keys, good)
	wantKind(t, "wiped key", err, KeyWiped)
}

func TestKeyRejections(t *testing.T) {
	sk := mustKey(t, 3)
	blob := sk.Public().MarshalBlob()
	cases := []struct {
		name string
		in   []byte
		kind Kind
	}{
		{"short", blob[:100], Malformed},
		{"off curve", flip(blob, 30), BadPoint},
	}
	for _, tc := range cases {
		_, err := ParsePublicKeyBlob(tc.in)
		wantKind(t, tc.name, err, tc.kind)
	}
	zero := make([]byte, PrivateKeyBlobSize)
	_, err := ParsePrivateKeyBlob(zero)
	wantKind(t, "zero scalar", err, Malformed)
	n := append([]byte{0, 0, 0, 1}, orderBytes...)
	_, err = ParsePrivateKeyBlob(n)
	wantKind(t, "scalar n", err, Malformed)
}

func TestClientData(t *testing.T) {
	// Chromium 156's client data as seen on the wire (docs/PROTOCOL.md,
	// "Client data").
	chrome, _ := hex.DecodeString("a2" + "70" + hex.EncodeToString([]byte("redeeming-origin")) +
		"75" + hex.EncodeToString([]byte("http://localhost:8480")) +
		"74" + hex.EncodeToString([]byte("redemption-timestamp")) + "1a6b067fb7")
	cd, err := ParseClientData(chrome)
	if err != nil {
		t.Fatal(err)
	}
	if cd.RedeemingOrigin != "http://localhost:8480" || cd.RedemptionTimestamp != 0x6b067fb7 {
		t.Fatalf("decoded %+v", cd)
	}
	again, err := MarshalClientData(cd)
	if err != nil || !bytes.Equal(again, chrome) {
		t.Fatalf("re-encoding differs from Chrome's bytes: %x", again)
	}
	bad := map[string][]byte{
		"empty":         nil,
		"not cbor":      []byte{0xff, 0x00},
		"array":         {0x80},
		"no origin":     mustCBOR(t, map[string]any{"redemption-timestamp": 5}),
		"no timestamp":  mustCBOR(t, map[string]any{"redeeming-origin": "https://a.example"}),
		"path origin":   mustCBOR(t, map[string]any{"redeeming-origin": "https://a.example/x", "redemption-timestamp": 5}),
		"wrong type":    mustCBOR(t, map[string]any{"redeeming-origin": 7, "redemption-timestamp": 5}),
		"negative time": mustCBOR(t, map[string]any{"redeeming-origin": "https://a.example", "redemption-timestamp": -5}),
		"too big":       make([]byte, MaxClientDataSize+1),
	}
	for name, in := range bad {
		_, err := ParseClientData(in)
		if !errors.Is(err, Malformed) {
			t.Fatalf("%s: want Malformed, got %v", name, err)
		}
	}
}

func mustCBOR(t *testing.T, v any) []byte {
	t.Helper()
	b, err := clientDataEncMode.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
