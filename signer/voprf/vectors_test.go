package voprf

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/nistec"
)

// The vectors are copies of BoringSSL-made transcripts kept in the
// repository's testdata so that a fresh clone tests without ../shared.
var vectorDir = filepath.Join("..", "..", "testdata", "pst-vectors")

type jsonlRedemption struct {
	KeyID         uint32 `json:"key_id"`
	ClientData    string `json:"client_data"`
	RedeemRequest string `json:"redeem_request"`
	Nonce         string `json:"nonce"`
}

type jsonlVector struct {
	Method        string            `json:"method"`
	KeyID         uint32            `json:"key_id"`
	PrivateKey    string            `json:"private_key"`
	PublicKey     string            `json:"public_key"`
	Count         int               `json:"count"`
	IssueRequest  string            `json:"issue_request"`
	IssueResponse string            `json:"issue_response"`
	Tokens        []string          `json:"tokens"`
	Redemptions   []jsonlRedemption `json:"redemptions"`
}

func b64(t testing.TB, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		t.Fatalf("vector base64: %v", err)
	}
	return b
}

func loadJSONL(t testing.TB) []jsonlVector {
	t.Helper()
	f, err := os.Open(filepath.Join(vectorDir, "voprf.jsonl"))
	if err != nil {
		t.Fatalf("open vectors: %v", err)
	}
	defer f.Close()
	var out []jsonlVector
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var v jsonlVector
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("parse vector: %v", err)
		}
		if v.Method != "voprf" {
			t.Fatalf("unexpected method %q", v.Method)
		}
		out = append(out, v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("no vectors")
	}
	return out
}

type mapKeys map[uint32]*PrivateKey

func (m mapKeys) Key(id uint32) (*PrivateKey, bool) { k, ok := m[id]; return k, ok }

// TestBoringSSLTranscripts replays every BoringSSL transcript: our issuer must
// produce exactly the vector's evaluated elements, both proofs must verify with
// our client, and our redemption check must accept every vector token.
func TestBoringSSLTranscripts(t *testing.T) {
	for i, v := range loadJSONL(t) {
		sk, err := ParsePrivateKeyBlob(b64(t, v.PrivateKey))
		if err != nil {
			t.Fatalf("vector %d: private key: %v", i, err)
		}
		if sk.KeyID() != v.KeyID {
			t.Fatalf("vector %d: key id %d, want %d", i, sk.KeyID(), v.KeyID)
		}
		if !bytes.Equal(sk.Public().MarshalBlob(), b64(t, v.PublicKey)) {
			t.Fatalf("vector %d: public key blob differs from BoringSSL's", i)
		}
		if !bytes.Equal(sk.MarshalPrivateKeyBlob(), b64(t, v.PrivateKey)) {
			t.Fatalf("vector %d: private key blob does not round-trip", i)
		}
		pub, err := ParsePublicKeyBlob(b64(t, v.PublicKey))
		if err != nil {
			t.Fatalf("vector %d: public key: %v", i, err)
		}

		req, err := ParseIssueRequest(b64(t, v.IssueRequest))
		if err != nil {
			t.Fatalf("vector %d: issue request: %v", i, err)
		}
		if req.Count() != v.Count {
			t.Fatalf("vector %d: count %d, want %d", i, req.Count(), v.Count)
		}
		ours, n, err := sk.Issue(req, v.Count, rand.Reader)
		if err != nil || n != v.Count {
			t.Fatalf("vector %d: issue: n=%d err=%v", i, n, err)
		}
		theirs := b64(t, v.IssueResponse)
		// Everything but the proof (random r) is byte-identical.
		if len(ours) != len(theirs) || !bytes.Equal(ours[:len(ours)-ProofSize], theirs[:len(theirs)-ProofSize]) {
			t.Fatalf("vector %d: issue response differs from BoringSSL's outside the proof", i)
		}
		client := NewClient(pub)
		for name, resp := range map[string][]byte{"ours": ours, "boringssl": theirs} {
			parsed, err := ParseIssueResponse(resp)
			if err != nil {
				t.Fatalf("vector %d %s: parse response: %v", i, name, err)
			}
			if err := client.verifyProof(req.Blinded, req.points, parsed); err != nil {
				t.Fatalf("vector %d %s: proof does not verify: %v", i, name, err)
			}
		}

		keys := mapKeys{sk.KeyID(): sk}
		for j, tb := range v.Tokens {
			tok, err := ParseToken(b64(t, tb))
			if err != nil {
				t.Fatalf("vector %d token %d: %v", i, j, err)
			}
			if err := sk.VerifyToken(tok); err != nil {
				t.Fatalf("vector %d token %d: %v", i, j, err)
			}
		}
		for j, r := range v.Redemptions {
			got, err := Redeem(keys, b64(t, r.RedeemRequest))
			if err != nil {
				t.Fatalf("vector %d redemption %d: %v", i, j, err)
			}
			if got.Token.KeyID != r.KeyID || !bytes.Equal(got.Token.Nonce[:], b64(t, r.Nonce)) ||
				!bytes.Equal(got.ClientData, b64(t, r.ClientData)) {
				t.Fatalf("vector %d redemption %d: recovered key id, nonce or client data differ", i, j)
			}
		}
	}
}

// rfcVectors reads rfc9497-voprf-p384-boringssl.txt (name value per line).
func rfcVectors(t *testing.T) map[string][]byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(vectorDir, "rfc9497-voprf-p384-boringssl.txt"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			t.Fatalf("bad vector line %q", line)
		}
		b, err := hex.DecodeString(f[1])
		if err != nil {
			t.Fatal(err)
		}
		out[f[0]] = b
	}
	return out
}

func uncompress(t *testing.T, c []byte) []byte {
	t.Helper()
	p, err := nistec.NewP384Point().SetBytes(c)
	if err != nil {
		t.Fatal(err)
	}
	return p.Bytes()
}

// TestRFC9497Vectors reproduces BoringSSL's deterministic RFC 9497 vectors byte
// for byte, proof included, with the vector's fixed proof scalar.
func TestRFC9497Vectors(t *testing.T) {
	v := rfcVectors(t)
	sk, err := NewPrivateKey(1, v["setup_voprf_test_key.kPrivateKey"])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sk.pub.comp[:], v["setup_voprf_test_key.kPublicKey"]) {
		t.Fatal("public key differs from the vector")
	}
	cases := []struct {
		name string
		n    int
	}{{"PSTV1VOPRFTestVector1", 1}, {"PSTV1VOPRFTestVector2", 1}, {"PSTV1VOPRFTestVector3", 2}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var blinded, evaluated [][]byte
			if tc.n == 1 {
				blinded = [][]byte{v[tc.name+".kBlindedElement"]}
				evaluated = [][]byte{v[tc.name+".kEvaluatedElement"]}
			} else {
				for i := 1; i <= tc.n; i++ {
					blinded = append(blinded, v[tc.name+".kBlindedElement"+string(rune('0'+i))])
					evaluated = append(evaluated, v[tc.name+".kEvaluatedElement"+string(rune('0'+i))])
				}
			}
			var wire [][]byte
			for _, b := range blinded {
				wire = append(wire, uncompress(t, b))
			}
			req, err := ParseIssueRequest(MarshalIssueRequest(wire))
			if err != nil {
				t.Fatal(err)
			}
			var r [ScalarSize]byte
			copy(r[:], v[tc.name+".kProofScalar"])
			// Any split of k gives the same bytes: the share is random.
			k1, err := randomScalar(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			resp, n, err := sk.issue(req, tc.n, &r, &k1)
			if err != nil || n != tc.n {
				t.Fatalf("issue: n=%d err=%v", n, err)
			}
			parsed, err := ParseIssueResponse(resp)
			if err != nil {
				t.Fatal(err)
			}
			for i := range tc.n {
				var comp [CompressedSize]byte
				compressFromUncompressed(&comp, parsed.Evaluated[i])
				if !bytes.Equal(comp[:], evaluated[i]) {
					t.Fatalf("evaluated element %d differs", i)
				}
			}
			if !bytes.Equal(parsed.Proof[:], v[tc.name+".kProof"]) {
				t.Fatalf("proof differs:\n got %x\nwant %x", parsed.Proof, v[tc.name+".kProof"])
			}
		})
	}
}

// TestClientRoundTrip issues with our issuer and finishes with our client at
// several batch sizes, including a cap below the request.
func TestClientRoundTrip(t *testing.T) {
	sk, err := GenerateKey(7, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c := NewClient(sk.Public())
	for _, tc := range []struct{ count, max, want int }{{1, 10, 1}, {10, 10, 10}, {10, 3, 3}, {20, 100, 20}, {100, 100, 100}} {
		p, err := c.Blind(tc.count, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		req, err := ParseIssueRequest(p.Request())
		if err != nil {
			t.Fatal(err)
		}
		resp, n, err := sk.Issue(req, tc.max, rand.Reader)
		if err != nil || n != tc.want {
			t.Fatalf("count %d max %d: n=%d err=%v", tc.count, tc.max, n, err)
		}
		toks, err := c.Finish(p, resp)
		if err != nil {
			t.Fatalf("finish: %v", err)
		}
		if len(toks) != tc.want {
			t.Fatalf("got %d tokens, want %d", len(toks), tc.want)
		}
		cd, _ := MarshalClientData(&ClientData{RedeemingOrigin: "https://rp.example", RedemptionTimestamp: 1767225600})
		for i := range toks {
			rr, err := c.RedeemRequest(&toks[i], cd)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Redeem(mapKeys{7: sk}, rr)
			if err != nil {
				t.Fatalf("redeem token %d: %v", i, err)
			}
			if got.Token.Nonce != toks[i].Nonce {
				t.Fatal("nonce not recovered")
			}
		}
	}
}

func TestErrorsAreTyped(t *testing.T) {
	_, err := ParseIssueRequest([]byte{0})
	if !errors.Is(err, Malformed) {
		t.Fatalf("want Malformed, got %v", err)
	}
}
