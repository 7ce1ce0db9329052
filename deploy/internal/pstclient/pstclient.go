// Package pstclient is a minimal Private State Token client over HTTP for
// the deployment tests (deploy/image, deploy/systemd): it fetches the key
// commitment, gets tokens issued with signer/voprf's client cryptography
// (blinding, DLEQ proof check, unblinding) and redeems them.
package pstclient

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/pstd/pstd/httpapi"
	"github.com/pstd/pstd/rp"
	"github.com/pstd/pstd/signer/voprf"
)

// Client talks to the issuer at Base (scheme://host:port).
type Client struct {
	Base string
	HTTP *http.Client
}

// New returns a client for base with a 10 s request timeout.
func New(base string) *Client {
	return &Client{Base: base, HTTP: &http.Client{Timeout: 10 * time.Second}}
}

// Result is one issuance or redemption exchange.
type Result struct {
	Status int
	Token  string // the response's Sec-Private-State-Token
	Body   string
}

func (c *Client) pst(path, token string) (Result, error) {
	req, err := http.NewRequest(http.MethodPost, c.Base+path, nil)
	if err != nil {
		return Result{}, err
	}
	req.Header.Set(httpapi.HeaderCryptoVersion, voprf.ProtocolVersion)
	req.Header.Set(httpapi.HeaderToken, token)
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return Result{}, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return Result{Status: resp.StatusCode, Token: resp.Header.Get(httpapi.HeaderToken), Body: string(body)}, nil
}

// Commitment fetches and parses the key commitment.
func (c *Client) Commitment() (map[uint32]*voprf.PublicKey, error) {
	resp, err := c.HTTP.Get(c.Base + httpapi.PathKeyCommitment)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("key commitment: status %d: %s", resp.StatusCode, body)
	}
	_, keys, err := voprf.ParseCommitment(body)
	if err != nil {
		return nil, fmt.Errorf("key commitment: %w", err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("key commitment has no keys")
	}
	return keys, nil
}

// Issue gets n tokens in one issuance request, blinded for the newest key
// of keys, and checks the issuer's proof.
func (c *Client) Issue(keys map[uint32]*voprf.PublicKey, n int) ([]voprf.Token, error) {
	ids := voprf.SortedKeyIDs(keys)
	p, err := voprf.NewClient(keys[ids[len(ids)-1]]).Blind(n, rand.Reader)
	if err != nil {
		return nil, err
	}
	r, err := c.pst(httpapi.PathIssuance, base64.StdEncoding.EncodeToString(p.Request()))
	if err != nil {
		return nil, err
	}
	if r.Status != http.StatusOK || r.Token == "" {
		return nil, fmt.Errorf("issuance: status %d: %s", r.Status, r.Body)
	}
	raw, err := base64.StdEncoding.DecodeString(r.Token)
	if err != nil {
		return nil, fmt.Errorf("issuance response: %w", err)
	}
	// The response names the key that signed.
	if len(raw) < 6 {
		return nil, fmt.Errorf("issuance response of %d bytes", len(raw))
	}
	id := uint32(raw[2])<<24 | uint32(raw[3])<<16 | uint32(raw[4])<<8 | uint32(raw[5])
	k, ok := keys[id]
	if !ok {
		return nil, fmt.Errorf("issuance signed with key %d, which is not in the commitment", id)
	}
	toks, err := voprf.NewClient(k).Finish(p, raw)
	if err != nil {
		return nil, fmt.Errorf("finishing issuance: %w", err)
	}
	return toks, nil
}

// Redeem redeems tok as origin and returns the exchange; a successful
// redemption has status 200 and the redemption record in Token.
func (c *Client) Redeem(tok voprf.Token, origin string) (Result, error) {
	cd, err := voprf.MarshalClientData(&voprf.ClientData{RedeemingOrigin: origin, RedemptionTimestamp: uint64(time.Now().Unix())})
	if err != nil {
		return Result{}, err
	}
	raw, err := voprf.MarshalRedeemRequest(&tok, cd)
	if err != nil {
		return Result{}, err
	}
	return c.pst(httpapi.PathRedemption, base64.StdEncoding.EncodeToString(raw))
}

// RoundTrip is what a deployment test proves first: it fetches the
// commitment, gets n tokens issued, redeems the first as redeemer, and
// verifies the record against the issuer's JWKS (issuer is the origin the
// records name). It returns the keys and tokens for further use.
func (c *Client) RoundTrip(issuer, redeemer string, n int) (map[uint32]*voprf.PublicKey, []voprf.Token, rp.Record, error) {
	keys, err := c.Commitment()
	if err != nil {
		return nil, nil, rp.Record{}, err
	}
	toks, err := c.Issue(keys, n)
	if err != nil {
		return nil, nil, rp.Record{}, err
	}
	r, err := c.Redeem(toks[0], redeemer)
	if err != nil {
		return nil, nil, rp.Record{}, err
	}
	if r.Status != http.StatusOK || r.Token == "" {
		return nil, nil, rp.Record{}, fmt.Errorf("redemption: status %d, %s", r.Status, r.Body)
	}
	v, err := rp.NewVerifier(rp.Config{Issuers: map[string]string{issuer: c.Base + rp.JWKSPath}})
	if err != nil {
		return nil, nil, rp.Record{}, err
	}
	rec, err := v.VerifyRecord(context.Background(), issuer, r.Token)
	if err != nil {
		return nil, nil, rp.Record{}, fmt.Errorf("the redemption record does not verify against the JWKS: %w", err)
	}
	return keys, toks, rec, nil
}
