package voprf

import (
	"crypto/rand"
	"fmt"
	"testing"
)

func benchIssue(b *testing.B, batch int) {
	sk := mustKey(b, 1)
	p, err := NewClient(sk.Public()).Blind(batch, rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	raw := p.Request()
	b.ReportAllocs()
	start := processCPU()
	for b.Loop() {
		req, err := ParseIssueRequest(raw)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := sk.Issue(req, batch, rand.Reader); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(batch*b.N)/b.Elapsed().Seconds(), "tokens/s")
	reportCPU(b, start, batch)
}

// BenchmarkIssue measures parse + BlindEvaluateBatch + proof for one request.
// Per-core throughput: go test -bench Issue -cpu 1 ./signer/voprf/
func BenchmarkIssue(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) { benchIssue(b, n) })
	}
}

func BenchmarkRedeem(b *testing.B) {
	sk := mustKey(b, 1)
	c := NewClient(sk.Public())
	p, _ := c.Blind(1, rand.Reader)
	req, _ := ParseIssueRequest(p.Request())
	resp, _, _ := sk.Issue(req, 1, rand.Reader)
	toks, err := c.Finish(p, resp)
	if err != nil {
		b.Fatal(err)
	}
	raw, _ := MarshalRedeemRequest(&toks[0], []byte("client data"))
	keys := mapKeys{1: sk}
	b.ReportAllocs()
	start := processCPU()
	for b.Loop() {
		if _, err := Redeem(keys, raw); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, start, 0)
}

func BenchmarkClient(b *testing.B) {
	sk := mustKey(b, 1)
	c := NewClient(sk.Public())
	for _, n := range []int{1, 10} {
		p, _ := c.Blind(n, rand.Reader)
		req, _ := ParseIssueRequest(p.Request())
		resp, _, _ := sk.Issue(req, n, rand.Reader)
		b.Run(fmt.Sprintf("blind/batch=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Blind(n, rand.Reader); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("finish/batch=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Finish(p, resp); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkHashToGroup(b *testing.B) {
	nonce := make([]byte, NonceSize)
	for b.Loop() {
		hashToGroup(nonce)
	}
}
