package doctor

import (
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/pstd/pstd/signer/voprf"
)

// FuzzAnalyzeCommitment feeds arbitrary bodies to the commitment rules: they
// never panic, always answer the same eight checks in order with bounded
// messages, and when they find nothing wrong at all the project's own strict
// parser agrees and yields the same keys.
func FuzzAnalyzeCommitment(f *testing.F) {
	now := time.Unix(1_780_000_000, 0)
	k1, _ := voprf.GenerateKey(1, rand.Reader)
	k2, _ := voprf.GenerateKey(2, rand.Reader)
	good, err := voprf.BuildCommitment(3, 10, []voprf.PublishedKey{
		{Public: k1.Public(), Expiry: now.Add(30 * 24 * time.Hour)},
		{Public: k2.Public(), Expiry: now.Add(90 * 24 * time.Hour)},
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(strings.Replace(string(good), `"id":3`, `"id":"3"`, 1)))
	f.Add([]byte(strings.Replace(string(good), `"keys":{"1"`, `"keys":{"01"`, 1)))
	f.Add([]byte(strings.Replace(string(good), `"expiry":"`, `"expiry":`, 1)))
	f.Add([]byte(`{"PrivateStateTokenV1VOPRF":{"protocol_version":"PrivateStateTokenV1VOPRF","id":1,"batchsize":1e1,"keys":{"1":[],"x":{}}}}`))
	f.Add([]byte(`{"PrivateStateTokenV1VOPRF":null}`))
	f.Add([]byte(`[]`))
	want := []string{CheckJSON, CheckID, CheckBatchSize, CheckKeyCount, CheckKeyIDs, CheckKeyY, CheckExpiryFormat, CheckExpiry}
	f.Fuzz(func(t *testing.T, body []byte) {
		res, info := analyzeCommitment(body, now)
		if len(res) != len(want) {
			t.Fatalf("%d results, want %d", len(res), len(want))
		}
		clean := true
		for i, r := range res {
			if r.ID != want[i] {
				t.Fatalf("result %d is %s, want %s", i, r.ID, want[i])
			}
			switch r.Status {
			case StatusPass:
			case StatusWarn, StatusFail:
				clean = false
				if r.Fix == "" {
					t.Fatalf("%s %s without a fix", r.ID, r.Status)
				}
			case StatusSkip:
				clean = false
			default:
				t.Fatalf("%s: status %q", r.ID, r.Status)
			}
			if len(r.Message) > 4096 {
				t.Fatalf("%s: %d-byte message", r.ID, len(r.Message))
			}
		}
		if !clean {
			return
		}
		c, keys, err := voprf.ParseCommitment(body)
		if err != nil {
			t.Fatalf("every rule passes but voprf.ParseCommitment refuses: %v", err)
		}
		if int64(c.ID) != info.id || c.BatchSize != info.batchSize || len(keys) != len(info.keys) {
			t.Fatalf("parsers disagree: id %d/%d batch %d/%d keys %d/%d", c.ID, info.id, c.BatchSize, info.batchSize, len(keys), len(info.keys))
		}
		for id, k := range keys {
			if d := info.keys[id]; d == nil || string(d.MarshalBlob()) != string(k.MarshalBlob()) {
				t.Fatalf("key %d differs", id)
			}
		}
	})
}
