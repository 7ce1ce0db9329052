package wiring

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/pstd/pstd/httpapi"
	"github.com/pstd/pstd/rp"
	"github.com/pstd/pstd/signer/voprf"
)

// TestThreeReplicasOneToken: three HTTP servers (own pools, own HSM
// sessions) on one database; 64 concurrent redemptions of one token spread
// over them give exactly one record, 63 409 refusals and no 5xx. The record
// verifies against the JWKS with the rp package.
func TestThreeReplicasOneToken(t *testing.T) {
	e := newEnv(t)
	c := &clock{t: time.Now()}
	var urls []string
	for i := range 3 {
		s, _ := e.service(t, c, i == 0)
		if i == 0 {
			if _, err := s.Rotate(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Reload(context.Background()); err != nil {
			t.Fatal(err)
		}
		api := httpapi.New(httpapi.Config{IssuerOrigin: "https://issuer.example"}, s)
		if err := api.CheckReady(context.Background()); err != nil {
			t.Fatalf("replica %d not ready: %v", i, err)
		}
		srv := httptest.NewServer(api.Handler())
		t.Cleanup(srv.Close)
		urls = append(urls, srv.URL)
	}
	// Issue a batch of 10 over HTTP from replica 0.
	body := get(t, urls[0]+"/.well-known/private-state-token/key-commitment")
	_, keys, err := voprf.ParseCommitment(body)
	if err != nil {
		t.Fatal(err)
	}
	client := voprf.NewClient(keys[voprf.SortedKeyIDs(keys)[0]])
	p, _ := client.Blind(10, rand.Reader)
	resp := do(t, urls[0]+"/.well-known/private-state-token/issuance", base64.StdEncoding.EncodeToString(p.Request()))
	if resp.StatusCode != 200 {
		t.Fatalf("issuance: %d", resp.StatusCode)
	}
	raw, _ := base64.StdEncoding.DecodeString(resp.Header.Get("Sec-Private-State-Token"))
	toks, err := client.Finish(p, raw)
	if err != nil || len(toks) != 10 {
		t.Fatalf("finish: %d tokens, %v", len(toks), err)
	}
	cd, _ := voprf.MarshalClientData(&voprf.ClientData{RedeemingOrigin: "https://rp.example", RedemptionTimestamp: uint64(time.Now().Unix())})
	rr, _ := voprf.MarshalRedeemRequest(&toks[0], cd)
	hdr := base64.StdEncoding.EncodeToString(rr)

	var mu sync.Mutex
	statuses := map[int]int{}
	var records []string
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			r := do(t, urls[i%3]+"/.well-known/private-state-token/redemption", hdr)
			mu.Lock()
			defer mu.Unlock()
			statuses[r.StatusCode]++
			if rec := r.Header.Get("Sec-Private-State-Token"); rec != "" {
				records = append(records, rec)
			}
		})
	}
	wg.Wait()
	if statuses[200] != 1 || statuses[409] != 63 || len(records) != 1 {
		t.Fatalf("statuses %v, %d records; want one 200 with a record and 63 409s", statuses, len(records))
	}
	// The record verifies offline against replica 2's JWKS.
	v, err := rp.NewVerifier(rp.Config{Issuers: map[string]string{"https://issuer.example": urls[2] + rp.JWKSPath}})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := v.VerifyRecord(context.Background(), "https://issuer.example", records[0])
	if err != nil {
		t.Fatalf("record does not verify: %v", err)
	}
	if rec.Audience != "https://rp.example" || rec.KeyID != toks[0].KeyID {
		t.Fatalf("record claims %+v", rec)
	}
}

// TestHTTPIssueAndRedeem: one server on SoftHSM and PostgreSQL, the Go
// client over HTTP at batch 1, 10 and an over-large 15 (capped at the
// batch size): every token redeems once with a record that verifies
// against the JWKS, and a second redemption is refused with 409.
func TestHTTPIssueAndRedeem(t *testing.T) {
	e := newEnv(t)
	s, _ := e.service(t, &clock{t: time.Now()}, true)
	if _, err := s.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	api := httpapi.New(httpapi.Config{IssuerOrigin: "https://issuer.example"}, s)
	if err := api.CheckReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	v, err := rp.NewVerifier(rp.Config{Issuers: map[string]string{"https://issuer.example": srv.URL + rp.JWKSPath}})
	if err != nil {
		t.Fatal(err)
	}
	_, keys, err := voprf.ParseCommitment(get(t, srv.URL+"/.well-known/private-state-token/key-commitment"))
	if err != nil {
		t.Fatal(err)
	}
	client := voprf.NewClient(keys[voprf.SortedKeyIDs(keys)[0]])
	for _, c := range []struct{ ask, want int }{{1, 1}, {10, 10}, {15, 10}} {
		p, err := client.Blind(c.ask, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		resp := do(t, srv.URL+"/.well-known/private-state-token/issuance", base64.StdEncoding.EncodeToString(p.Request()))
		if resp.StatusCode != 200 {
			t.Fatalf("batch %d: issuance %d", c.ask, resp.StatusCode)
		}
		raw, err := base64.StdEncoding.DecodeString(resp.Header.Get("Sec-Private-State-Token"))
		if err != nil {
			t.Fatal(err)
		}
		toks, err := client.Finish(p, raw)
		if err != nil || len(toks) != c.want {
			t.Fatalf("batch %d: %d tokens (%v), want %d", c.ask, len(toks), err, c.want)
		}
		for i, tok := range toks {
			cd, _ := voprf.MarshalClientData(&voprf.ClientData{RedeemingOrigin: "https://rp.example", RedemptionTimestamp: uint64(time.Now().Unix())})
			rr, _ := voprf.MarshalRedeemRequest(&tok, cd)
			hdr := base64.StdEncoding.EncodeToString(rr)
			r := do(t, srv.URL+"/.well-known/private-state-token/redemption", hdr)
			if r.StatusCode != 200 {
				t.Fatalf("batch %d token %d: redemption %d", c.ask, i, r.StatusCode)
			}
			rec, err := v.VerifyRecord(context.Background(), "https://issuer.example", r.Header.Get("Sec-Private-State-Token"))
			if err != nil || rec.Audience != "https://rp.example" || rec.KeyID != tok.KeyID {
				t.Fatalf("batch %d token %d: record %+v, %v", c.ask, i, rec, err)
			}
			if again := do(t, srv.URL+"/.well-known/private-state-token/redemption", hdr); again.StatusCode != 409 || again.Header.Get("Sec-Private-State-Token") != "" {
				t.Fatalf("batch %d token %d: second redemption %d", c.ask, i, again.StatusCode)
			}
		}
	}
}

func do(t *testing.T, url, token string) *http.Response {
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Sec-Private-State-Token-Crypto-Version", voprf.ProtocolVersion)
	req.Header.Set("Sec-Private-State-Token", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Error(err)
		return &http.Response{StatusCode: 0, Header: http.Header{}}
	}
	resp.Body.Close()
	return resp
}

func get(t *testing.T, url string) []byte {
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
