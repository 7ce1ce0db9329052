package doctor

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/pstd/pstd/signer/voprf"
)

// fixture is a small PST issuer built from the project's own VOPRF issuer
// code and freshly generated keys: with the zero breakage it is a correct
// issuer (every check passes), and each field of breakage breaks one rule.
type fixture struct {
	t      testing.TB
	srv    *httptest.Server
	origin string // the origin the doctor is pointed at (records' iss)
	b      breakage

	keys     []*voprf.PrivateKey // published, ids 1..n
	rogue    *voprf.PrivateKey   // unpublished
	rrKey    *ecdsa.PrivateKey
	rrRogue  *ecdsa.PrivateKey
	fetches  atomic.Int32 // commitment fetches
	mu       sync.Mutex
	redeemed map[[voprf.NonceSize]byte]bool
}

// breakage names what the fixture gets wrong. The zero value is a correct
// issuer.
type breakage struct {
	keys        int                        // number of published keys (default 1)
	expiry      func(i int) string         // expiry string of key i (default: 90 days)
	mutate      func(entry map[string]any) // edits the VOPRF member before encoding
	rawBody     string                     // replaces the commitment body
	contentType string                     // replaces the commitment's Content-Type
	status      map[string]int             // well-known name → status to answer with
	redirect    bool                       // commitment answers 302
	hang        bool                       // commitment never answers
	huge        bool                       // commitment body of 1 MiB
	secondID    int                        // id served from the second fetch on
	noCORS      map[string]bool            // well-known name → no Access-Control-Allow-Origin
	noPreflight bool                       // OPTIONS answers 405
	noToken     bool                       // issuance answers 400 without the header
	quoted      bool                       // issuance header value in quotes
	badProof    bool                       // one proof byte flipped
	rogueKey    bool                       // issue with an unpublished key under published id 1
	unknownKey  bool                       // issue with unpublished key id 9
	noRecord    bool                       // redemption answers 200 without a record
	rogueRecord bool                       // record signed by a key not in the JWKS
	getOnly     bool                       // issuance and redemption refuse POST with 405
}

const commitmentID = 7

func newFixture(t testing.TB, b breakage) *fixture {
	t.Helper()
	f := &fixture{t: t, b: b, redeemed: map[[voprf.NonceSize]byte]bool{}}
	n := b.keys
	if n == 0 {
		n = 1
	}
	for i := range n {
		k, err := voprf.GenerateKey(uint32(i+1), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		f.keys = append(f.keys, k)
	}
	var err error
	id := uint32(1)
	if b.unknownKey {
		id = 9
	}
	if f.rogue, err = voprf.GenerateKey(id, rand.Reader); err != nil {
		t.Fatal(err)
	}
	if f.rrKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	if f.rrRogue, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point of the TLS cases
	return f
}

// start serves plain http; the doctor is pointed at the server's own URL.
func (f *fixture) start() *fixture {
	f.srv.Start()
	f.t.Cleanup(f.srv.Close)
	f.origin = f.srv.URL
	return f
}

// startTLS serves https with cert; the doctor is pointed at
// https://issuer.example:PORT and dials the server for that name.
func (f *fixture) startTLS(cert tls.Certificate) *fixture {
	f.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	f.srv.StartTLS()
	f.t.Cleanup(f.srv.Close)
	_, port, _ := net.SplitHostPort(f.srv.Listener.Addr().String())
	f.origin = "https://issuer.example:" + port
	return f
}

// dial sends every connection to the fixture, whatever the name.
func (f *fixture) dial(ctx context.Context, network, _ string) (net.Conn, error) {
	return (&net.Dialer{}).DialContext(ctx, network, f.srv.Listener.Addr().String())
}

func (f *fixture) serve(w http.ResponseWriter, r *http.Request) {
	name, ok := strings.CutPrefix(r.URL.Path, wellKnown)
	if !ok {
		http.NotFound(w, r)
		return
	}
	h := w.Header()
	if r.Header.Get("Origin") != "" && !f.b.noCORS[name] {
		h.Set("Access-Control-Allow-Origin", "*")
	}
	if r.Method == http.MethodOptions {
		if f.b.noPreflight {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		h.Set("Access-Control-Allow-Methods", "GET, POST")
		h.Set("Access-Control-Allow-Headers", headerToken+", "+headerVersion)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if f.b.getOnly && r.Method == http.MethodPost && (name == "issuance" || name == "redemption") {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	if s := f.b.status[name]; s != 0 {
		http.Error(w, "broken on purpose", s)
		return
	}
	switch name {
	case "key-commitment":
		f.commitment(w, r)
	case "jwks.json":
		h.Set("Content-Type", "application/jwk-set+json")
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &f.rrKey.PublicKey, KeyID: "rr-1", Algorithm: "ES256", Use: "sig"}}})
	case "issuance":
		f.issue(w, r)
	case "redemption":
		f.redeem(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (f *fixture) commitment(w http.ResponseWriter, r *http.Request) {
	n := f.fetches.Add(1)
	switch {
	case f.b.hang:
		<-r.Context().Done()
		return
	case f.b.redirect:
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
		return
	}
	ct := "application/pst-issuer-directory"
	if f.b.contentType != "" {
		ct = f.b.contentType
	}
	w.Header().Set("Content-Type", ct)
	if f.b.rawBody != "" {
		_, _ = w.Write([]byte(f.b.rawBody))
		return
	}
	keys := map[string]any{}
	for i, k := range f.keys {
		exp := strconv.FormatInt(time.Now().Add(90*24*time.Hour).UnixMicro(), 10)
		if f.b.expiry != nil {
			exp = f.b.expiry(i)
		}
		keys[strconv.Itoa(int(k.KeyID()))] = map[string]any{"Y": base64.StdEncoding.EncodeToString(k.Public().MarshalBlob()), "expiry": exp}
	}
	id := commitmentID
	if n > 1 && f.b.secondID != 0 {
		id = f.b.secondID
	}
	entry := map[string]any{"protocol_version": voprf.ProtocolVersion, "id": id, "batchsize": 10, "keys": keys}
	if f.b.mutate != nil {
		f.b.mutate(entry)
	}
	body, err := json.Marshal(map[string]any{voprf.ProtocolVersion: entry})
	if err != nil {
		f.t.Error(err)
	}
	if f.b.huge {
		body = append(body, []byte(strings.Repeat(" ", 1<<20))...)
	}
	_, _ = w.Write(body)
}

func (f *fixture) issue(w http.ResponseWriter, r *http.Request) {
	if f.b.noToken {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"type":"urn:fixture:problem:refused","title":"refused on purpose","status":400}`))
		return
	}
	raw, err := base64.StdEncoding.DecodeString(r.Header.Get(headerToken))
	if err != nil {
		http.Error(w, "bad base64", http.StatusBadRequest)
		return
	}
	req, err := voprf.ParseIssueRequest(raw)
	if err != nil {
		http.Error(w, "bad issue request", http.StatusBadRequest)
		return
	}
	key := f.keys[0]
	if f.b.rogueKey || f.b.unknownKey {
		key = f.rogue
	}
	resp, _, err := key.Issue(req, req.Count(), rand.Reader)
	if err != nil {
		http.Error(w, "issue failed", http.StatusInternalServerError)
		return
	}
	if f.b.badProof {
		resp[len(resp)-1] ^= 1
	}
	v := base64.StdEncoding.EncodeToString(resp)
	if f.b.quoted {
		v = `"` + v + `"`
	}
	w.Header().Set(headerToken, v)
}

type keySet []*voprf.PrivateKey

func (s keySet) Key(id uint32) (*voprf.PrivateKey, bool) {
	for _, k := range s {
		if k.KeyID() == id {
			return k, true
		}
	}
	return nil, false
}

func (f *fixture) redeem(w http.ResponseWriter, r *http.Request) {
	raw, err := base64.StdEncoding.DecodeString(r.Header.Get(headerToken))
	if err != nil || len(raw) == 0 {
		http.Error(w, "no token", http.StatusBadRequest)
		return
	}
	req, err := voprf.Redeem(keySet(f.keys), raw)
	if err != nil {
		http.Error(w, "invalid token", http.StatusBadRequest)
		return
	}
	cd, err := voprf.ParseClientData(req.ClientData)
	if err != nil {
		http.Error(w, "bad client data", http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	spent := f.redeemed[req.Token.Nonce]
	f.redeemed[req.Token.Nonce] = true
	f.mu.Unlock()
	if spent {
		http.Error(w, "spent", http.StatusConflict)
		return
	}
	if f.b.noRecord {
		return
	}
	key := f.rrKey
	if f.b.rogueRecord {
		key = f.rrRogue
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{}).WithType("pst-rr+jwt").WithHeader("kid", "rr-1"))
	if err != nil {
		http.Error(w, "signer", http.StatusInternalServerError)
		return
	}
	now := time.Now()
	rec, err := jwt.Signed(sig).Claims(map[string]any{
		"iss": f.origin, "aud": cd.RedeemingOrigin, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"jti": "fixture-" + strconv.FormatInt(now.UnixNano(), 36), "pst_key_id": req.Token.KeyID,
		"pst_redemption_time": cd.RedemptionTimestamp,
	}).Serialize()
	if err != nil {
		http.Error(w, "sign", http.StatusInternalServerError)
		return
	}
	w.Header().Set(headerToken, rec)
	w.Header().Set(headerLifetime, "3600")
}

// testCA is a private certificate authority for the TLS cases.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "doctor test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// leaf issues a server certificate for host valid in [notBefore, notAfter].
func (ca *testCA) leaf(t testing.TB, host string, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
