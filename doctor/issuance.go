package doctor

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-jose/go-jose/v4"

	"github.com/pstd/pstd/rp"
	"github.com/pstd/pstd/signer/voprf"
)

const (
	headerToken    = "Sec-Private-State-Token"
	headerVersion  = "Sec-Private-State-Token-Crypto-Version"
	headerLifetime = "Sec-Private-State-Token-Lifetime"
	headerACAO     = "Access-Control-Allow-Origin"
)

// CORS, and which endpoints need it. A page runs PST operations with
// fetch(issuerURL, {privateToken: …}) from its own origin, so every request
// to the issuance and redemption endpoints is a cross-origin CORS request:
// Chrome performs the token operation in its network stack, but the page's
// fetch only resolves if the response passes the CORS check, i.e. carries
// Access-Control-Allow-Origin for the page (or *). The key commitment and the
// JWKS are public documents that pages — a relying party verifying records in
// the browser, an issuer's status page on another origin — read with fetch
// too, so they need the same header. Chrome adds the Sec-Private-State-Token*
// request headers itself; they are forbidden to page scripts and do not make
// the request "non-simple", so Chrome's own operations need no preflight. A
// preflight (OPTIONS with Access-Control-Request-*) only comes from pages
// that add headers of their own, which is why an unanswered preflight is a
// warning and not a failure.

// corsAllows reports whether h lets the page at origin read the response.
func corsAllows(h http.Header, origin string) (bool, string) {
	v := h.Values(headerACAO)
	switch {
	case len(v) == 0:
		return false, "no Access-Control-Allow-Origin"
	case len(v) > 1:
		return false, fmt.Sprintf("%d Access-Control-Allow-Origin headers (browsers refuse more than one)", len(v))
	case v[0] == "*":
		return true, "Access-Control-Allow-Origin: *"
	case strings.EqualFold(strings.TrimSuffix(v[0], "/"), origin):
		if !varyOrigin(h) {
			return true, "Access-Control-Allow-Origin echoes " + origin + " but without Vary: Origin"
		}
		return true, "Access-Control-Allow-Origin: " + origin
	default:
		return false, fmt.Sprintf("Access-Control-Allow-Origin is %q, not %s or *", truncate(v[0], 100), origin)
	}
}

func varyOrigin(h http.Header) bool {
	for _, v := range h.Values("Vary") {
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f == "*" || strings.EqualFold(f, "Origin") {
				return true
			}
		}
	}
	return false
}

const corsFix = "answer requests carrying Origin with Access-Control-Allow-Origin: * (or the page's origin, with Vary: Origin); if only some pages may use the issuer, run the doctor with --origin set to one of them"

// corsResult records a CORS check from a response header.
func (d *run) corsResult(id, what string, h http.Header) {
	ok, msg := corsAllows(h, d.opts.Origin)
	switch {
	case !ok:
		d.fail(id, corsFix, "%s for a page on %s: %s", what, d.opts.Origin, msg)
	case !varyOrigin(h) && h.Get(headerACAO) != "*":
		d.warn(id, "add Vary: Origin, or caches may hand one origin's answer to another", "%s: %s", what, msg)
	default:
		d.pass(id, "%s: %s", what, msg)
	}
}

func (d *run) checkCORSCommitment(ctx context.Context) {
	if !d.ok(CheckCommitmentGet) {
		d.skip(CheckCORSCommitment, "the commitment could not be fetched (see commitment-get)")
		return
	}
	resp, err := d.get(ctx, "key-commitment", d.opts.Origin, maxCommitmentBytes)
	if err != nil {
		d.fail(CheckCORSCommitment, "answer cross-origin requests as any other", "GET with Origin %s failed: %v", d.opts.Origin, err)
		return
	}
	if resp.status != 200 {
		d.fail(CheckCORSCommitment, "answer cross-origin requests as any other", "GET with Origin %s answered HTTP %d", d.opts.Origin, resp.status)
		return
	}
	d.corsResult(CheckCORSCommitment, "key commitment", resp.header)
}

// checkJWKS fetches the redemption-record keys. PST leaves records opaque,
// so a JWKS is a pstd convention (records are JWS): an issuer without one is
// only a problem for --redeem. It returns errNoJWKS when there is none.
func (d *run) checkJWKS(ctx context.Context) error {
	u := d.url("jwks.json")
	if d.unreachable {
		d.skipAll("the issuer did not answer (see commitment-get)", CheckJWKS, CheckCORSJWKS)
		return errNoJWKS
	}
	resp, err := d.get(ctx, "jwks.json", "", maxJWKSBytes)
	switch {
	case err != nil:
		d.fail(CheckJWKS, "serve the JWKS (a few KiB) at "+u, "GET %s: %v", u, err)
	case resp.status == http.StatusNotFound:
		d.skip(CheckJWKS, "no JWKS at %s: fine unless relying parties verify JWS records against it", u)
		d.skip(CheckCORSJWKS, "no JWKS")
		return errNoJWKS
	case resp.status != 200:
		d.fail(CheckJWKS, "serve the JWKS at "+u, "GET %s answered HTTP %d", u, resp.status)
	default:
		var set jose.JSONWebKeySet
		n := 0
		if json.Unmarshal(resp.body, &set) == nil {
			for _, k := range set.Keys {
				if pub, ok := k.Key.(*ecdsa.PublicKey); ok && pub.Curve == elliptic.P256() && k.KeyID != "" && k.IsPublic() {
					n++
				}
			}
		}
		if n == 0 {
			d.fail(CheckJWKS, `serve {"keys": [...]} with the ES256 (P-256) public keys that sign records, each with a kid`,
				"GET %s: no usable P-256 public key with a kid", u)
		} else {
			d.pass(CheckJWKS, "%d P-256 record key(s) at %s", n, u)
		}
	}
	if !d.ok(CheckJWKS) {
		d.skip(CheckCORSJWKS, "no usable JWKS (see jwks)")
		return errNoJWKS
	}
	resp, err = d.get(ctx, "jwks.json", d.opts.Origin, maxJWKSBytes)
	if err != nil || resp.status != 200 {
		d.fail(CheckCORSJWKS, "answer cross-origin requests as any other", "GET with Origin %s failed", d.opts.Origin)
		return nil
	}
	d.corsResult(CheckCORSJWKS, "JWKS", resp.header)
	return nil
}

// checkIssuance runs a real issuance as Chrome does: as many blinded nonces
// as the batch size, the crypto version header, an Origin. The response
// header must be raw padded base64 (Chromium's decoder is strict), parse as
// a PST v1 VOPRF issue response, name a published key, and carry a batched
// DLEQ proof that verifies against that key — the same verification a
// browser does before it stores anything. It returns the tokens.
func (d *run) checkIssuance(ctx context.Context, c *commitmentInfo) []voprf.Token {
	if c == nil {
		d.skipAll("the commitment gives no usable key and batch size", CheckIssuance, CheckIssuanceProof, CheckCORSIssuance)
		return nil
	}
	ids := voprf.SortedKeyIDs(c.keys)
	// The blinded elements do not depend on the key (B = b·HashToGroup(nonce));
	// the response says which key signed, and its client verifies.
	p, err := voprf.NewClient(c.keys[ids[0]]).Blind(c.batchSize, rand.Reader)
	if err != nil {
		d.fail(CheckIssuance, "", "blinding failed: %v", err)
		d.skipAll("no request was sent", CheckIssuanceProof, CheckCORSIssuance)
		return nil
	}
	defer p.Wipe()
	u := d.url("issuance")
	resp, err := d.sendPST(ctx, u, base64.StdEncoding.EncodeToString(p.Request()), d.opts.Origin)
	if err != nil {
		d.fail(CheckIssuance, "make "+u+" answer issue requests", "%s: %v", u, err)
		d.skipAll("the issuance request failed (see issuance)", CheckIssuanceProof, CheckCORSIssuance)
		return nil
	}
	defer func() { d.corsResult(CheckCORSIssuance, "issuance response", resp.header) }()
	proofSkip := func() { d.skip(CheckIssuanceProof, "no issue response to verify (see issuance)") }
	vals := resp.header.Values(headerToken)
	switch {
	case len(vals) == 0:
		d.fail(CheckIssuance, "answer a valid issue request with the Sec-Private-State-Token response header (Chrome ignores the status and needs the header)",
			"%s answered HTTP %d without %s%s", u, resp.status, headerToken, problemDetail(resp))
		proofSkip()
		return nil
	case len(vals) > 1:
		d.fail(CheckIssuance, "send exactly one Sec-Private-State-Token header", "%d %s headers", len(vals), headerToken)
		proofSkip()
		return nil
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(vals[0])
	if err != nil {
		fix := "send the issue response as raw standard base64 with padding"
		if strings.HasPrefix(vals[0], `"`) {
			fix += ", unquoted (Chromium's decoder refuses a quoted value)"
		}
		d.fail(CheckIssuance, fix, "the %s header is not standard padded base64", headerToken)
		proofSkip()
		return nil
	}
	resp2, err := voprf.ParseIssueResponse(raw)
	if err != nil {
		d.fail(CheckIssuance, "answer u16(count) || u32(key id) || count × 97-byte points || u16(96) || proof", "not a PST v1 VOPRF issue response: %v", err)
		proofSkip()
		return nil
	}
	n := len(resp2.Evaluated)
	switch {
	case n == 0:
		d.fail(CheckIssuance, "issue at least one token to a valid request", "the issuer issued 0 of %d tokens", c.batchSize)
		proofSkip()
		return nil
	case n > c.batchSize:
		d.fail(CheckIssuance, "issue at most as many tokens as were asked for", "the issuer returned %d tokens for %d requested", n, c.batchSize)
		proofSkip()
		return nil
	case resp.status != 200:
		d.warn(CheckIssuance, "answer a successful issuance with 200", "HTTP %d with %d of %d tokens under key %d (Chrome ignores the status, monitoring will not)", resp.status, n, c.batchSize, resp2.KeyID)
	default:
		d.pass(CheckIssuance, "HTTP 200, %d of %d tokens under key %d", n, c.batchSize, resp2.KeyID)
	}
	pk, ok := c.keys[resp2.KeyID]
	if !ok {
		d.fail(CheckIssuanceProof, "sign only with a key the commitment publishes",
			"the response names key %d, which the commitment does not publish (published: %s)", resp2.KeyID, joinIDs(ids))
		return nil
	}
	tokens, err := voprf.NewClient(pk).Finish(p, raw)
	if err != nil {
		d.fail(CheckIssuanceProof, "sign with the private key of the published key "+strconv.FormatUint(uint64(resp2.KeyID), 10)+" (check that the commitment and the signer use the same key material)",
			"the DLEQ proof does not verify against the published key %d: browsers would store nothing (%v)", resp2.KeyID, err)
		return nil
	}
	d.pass(CheckIssuanceProof, "the batched DLEQ proof verifies against published key %d; %d tokens unblinded", resp2.KeyID, len(tokens))
	return tokens
}

// sendPST sends a PST request as a page's fetch would: POST, with the
// crypto version, the token header (if any) and Origin (if any). The page
// picks the method, so an issuer that refuses POST with 405 is asked again
// with GET, the other method Chrome's PST fetches use.
func (d *run) sendPST(ctx context.Context, u, token, origin string) (*response, error) {
	var resp *response
	var err error
	for _, method := range []string{http.MethodPost, http.MethodGet} {
		req, _ := http.NewRequest(method, u, nil)
		req.Header.Set(headerVersion, voprf.ProtocolVersion)
		if token != "" {
			req.Header.Set(headerToken, token)
		}
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err = d.do(ctx, req, maxOtherBytes)
		if err != nil || resp.status != http.StatusMethodNotAllowed || resp.header.Get(headerToken) != "" {
			break
		}
	}
	return resp, err
}

// problemDetail summarises a problem document (RFC 9457) body, if any.
func problemDetail(resp *response) string {
	var p struct {
		Type   string `json:"type"`
		Title  string `json:"title"`
		Detail string `json:"detail"`
	}
	if json.Unmarshal(resp.body, &p) != nil || (p.Title == "" && p.Type == "") {
		return ""
	}
	s := p.Title
	if p.Detail != "" {
		s += ": " + p.Detail
	}
	if p.Type != "" {
		s += " (" + p.Type + ")"
	}
	return " — " + truncate(s, 200)
}

func joinIDs(ids []uint32) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.FormatUint(uint64(id), 10)
	}
	return strings.Join(s, ", ")
}

// checkPreflight sends the preflight a page that sets the PST headers itself
// would cause (see the CORS note above): a warning at worst.
func (d *run) checkPreflight(ctx context.Context) {
	if d.unreachable {
		d.skip(CheckCORSPreflight, "the issuer did not answer (see commitment-get)")
		return
	}
	u := d.url("issuance")
	req, _ := http.NewRequest(http.MethodOptions, u, nil)
	req.Header.Set("Origin", d.opts.Origin)
	req.Header.Set("Access-Control-Request-Method", http.MethodPost)
	req.Header.Set("Access-Control-Request-Headers", strings.ToLower(headerToken+","+headerVersion))
	resp, err := d.do(ctx, req, maxOtherBytes)
	const fix = "answer OPTIONS preflights with 2xx, Access-Control-Allow-Origin, Access-Control-Allow-Methods: GET, POST and Access-Control-Allow-Headers naming the Sec-Private-State-Token headers"
	if err != nil {
		d.warn(CheckCORSPreflight, fix, "OPTIONS %s: %v (Chrome's own PST requests need no preflight)", u, err)
		return
	}
	ok, msg := corsAllows(resp.header, d.opts.Origin)
	allowHdr := strings.ToLower(strings.Join(resp.header.Values("Access-Control-Allow-Headers"), ","))
	switch {
	case resp.status < 200 || resp.status > 299:
		d.warn(CheckCORSPreflight, fix, "preflight answered HTTP %d (Chrome's own PST requests need no preflight; pages that add headers do)", resp.status)
	case !ok:
		d.warn(CheckCORSPreflight, fix, "preflight: %s (Chrome's own PST requests need no preflight; pages that add headers do)", msg)
	case allowHdr != "*" && !strings.Contains(allowHdr, strings.ToLower(headerToken)):
		d.warn(CheckCORSPreflight, fix, "preflight does not allow the %s header", headerToken)
	default:
		d.pass(CheckCORSPreflight, "preflight from %s answered HTTP %d, %s", d.opts.Origin, resp.status, msg)
	}
}

// checkRedemption: without --redeem it only sees that the redemption
// endpoint exists (a request with no token, which spends nothing); with
// --redeem it spends one issued token with Chrome's client data (the
// --origin as redeeming origin) and verifies the record it gets with the
// project's relying-party verifier against the issuer's JWKS.
func (d *run) checkRedemption(ctx context.Context, tokens []voprf.Token, jwks error) {
	u := d.url("redemption")
	if !d.opts.Redeem {
		defer d.skip(CheckRecord, "pass --redeem to spend a token and verify its record")
		if d.unreachable {
			d.skip(CheckRedemption, "the issuer did not answer (see commitment-get)")
			return
		}
		resp, err := d.sendPST(ctx, u, "", "")
		switch {
		case err != nil:
			d.fail(CheckRedemption, "make "+u+" answer redemption requests", "%s: %v", u, err)
		case resp.status == http.StatusNotFound:
			d.fail(CheckRedemption, "serve redemption at exactly "+u, "%s answered HTTP 404", u)
		default:
			d.pass(CheckRedemption, "the endpoint answers (HTTP %d to a request without a token); pass --redeem to spend one", resp.status)
		}
		return
	}
	if len(tokens) == 0 {
		d.skipAll("no token to redeem (see issuance)", CheckRedemption, CheckRecord)
		return
	}
	tok := tokens[0]
	cd, err := voprf.MarshalClientData(&voprf.ClientData{RedeemingOrigin: d.opts.Origin, RedemptionTimestamp: uint64(d.opts.Now().Unix())})
	if err != nil {
		d.fail(CheckRedemption, "", "client data: %v", err)
		d.skip(CheckRecord, "no redemption")
		return
	}
	rr, err := voprf.MarshalRedeemRequest(&tok, cd)
	if err != nil {
		d.fail(CheckRedemption, "", "redeem request: %v", err)
		d.skip(CheckRecord, "no redemption")
		return
	}
	resp, err := d.sendPST(ctx, u, base64.StdEncoding.EncodeToString(rr), d.opts.Origin)
	if err != nil {
		d.fail(CheckRedemption, "make "+u+" answer redemption requests", "%s: %v", u, err)
		d.skip(CheckRecord, "no redemption record (see redemption)")
		return
	}
	vals := resp.header.Values(headerToken)
	if len(vals) != 1 || vals[0] == "" {
		d.fail(CheckRedemption, "answer a valid redemption with the record in one Sec-Private-State-Token header",
			"%s answered HTTP %d with %d %s headers%s", u, resp.status, len(vals), headerToken, problemDetail(resp))
		d.skip(CheckRecord, "no redemption record (see redemption)")
		return
	}
	record := vals[0]
	lifetime := "no " + headerLifetime
	if l := resp.header.Get(headerLifetime); l != "" {
		if v, err := strconv.ParseUint(l, 10, 63); err != nil || v == 0 {
			d.fail(CheckRedemption, "send "+headerLifetime+" as a positive number of seconds, or not at all", "%s is %q", headerLifetime, truncate(l, 40))
			d.checkRecord(ctx, record, tok, jwks)
			return
		}
		lifetime = headerLifetime + ": " + l
	}
	if ok, msg := corsAllows(resp.header, d.opts.Origin); !ok {
		d.fail(CheckRedemption, corsFix, "redeemed (HTTP %d), but a page on %s cannot read the answer: %s", resp.status, d.opts.Origin, msg)
	} else {
		d.pass(CheckRedemption, "spent one token: HTTP %d, a %d-byte record, %s", resp.status, len(record), lifetime)
	}
	d.checkRecord(ctx, record, tok, jwks)
}

// checkRecord verifies a pstd-style record (compact JWS, ES256, typ
// pst-rr+jwt) with rp.Verifier against the issuer's JWKS, with the doctor's
// origin as the only accepted audience, and checks it names the token's key.
func (d *run) checkRecord(ctx context.Context, record string, tok voprf.Token, jwks error) {
	if errors.Is(jwks, errNoJWKS) {
		d.fail(CheckRecord, "publish the record-signing keys at "+d.url("jwks.json")+" so relying parties can verify records",
			"no usable JWKS to verify the record against (see jwks)")
		return
	}
	v, err := rp.NewVerifier(rp.Config{
		Issuers:      map[string]string{d.issuer.String(): ""},
		Audiences:    []string{d.opts.Origin},
		HTTPClient:   d.client,
		FetchTimeout: d.opts.Timeout,
		Now:          d.opts.Now,
	})
	if err != nil {
		d.fail(CheckRecord, "", "verifier: %v", err)
		return
	}
	rec, err := v.VerifyRecord(ctx, d.issuer.String(), record)
	if err != nil {
		d.fail(CheckRecord, "sign records as compact JWS (ES256, typ pst-rr+jwt) with a key in the JWKS, iss = the issuer origin, aud = the redeeming origin",
			"the record does not verify: %v", err)
		return
	}
	if rec.KeyID != tok.KeyID {
		d.fail(CheckRecord, "put the redeemed token's key id in pst_key_id", "the record names key %d, the token was issued under key %d", rec.KeyID, tok.KeyID)
		return
	}
	d.pass(CheckRecord, "record verifies against %s (kid %s): aud %s, key %d, expires %s",
		d.url("jwks.json"), rec.RRKeyID, rec.Audience, rec.KeyID, rec.Expiry.UTC().Format("2006-01-02T15:04:05Z"))
}
