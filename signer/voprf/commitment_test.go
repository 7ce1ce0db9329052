package voprf

import (
	"strings"
	"testing"
	"time"
)

func TestCommitmentRoundTrip(t *testing.T) {
	a, b := mustKey(t, 1), mustKey(t, 2)
	exp := time.UnixMicro(1767225600000000)
	body, err := BuildCommitment(7, 10, []PublishedKey{{a.Public(), exp}, {b.Public(), exp.Add(time.Hour)}})
	if err != nil {
		t.Fatal(err)
	}
	s := string(body)
	for _, want := range []string{`{"PrivateStateTokenV1VOPRF":{`, `"protocol_version":"PrivateStateTokenV1VOPRF"`, `"id":7`, `"batchsize":10`, `"expiry":"1767225600000000"`, `"1":{"Y":"AAAAAQ`} {
		if !strings.Contains(s, want) {
			t.Fatalf("commitment %s lacks %s", s, want)
		}
	}
	c, keys, err := ParseCommitment(body)
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != 7 || len(keys) != 2 || keys[2].KeyID != 2 {
		t.Fatalf("parsed %+v", c)
	}
	if _, err := BuildCommitment(0, 10, []PublishedKey{{a.Public(), exp}}); err == nil {
		t.Fatal("id 0 accepted")
	}
	if _, err := BuildCommitment(1, 101, []PublishedKey{{a.Public(), exp}}); err == nil {
		t.Fatal("batch 101 accepted")
	}
	bad := strings.Replace(s, `"expiry":"1767225600000000"`, `"expiry":1767225600000000`, 1)
	if _, _, err := ParseCommitment([]byte(bad)); err == nil {
		t.Fatal("numeric expiry accepted")
	}
}
