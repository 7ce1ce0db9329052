package rp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/net/idna"
)

const (
	// RecordType is the JWS "typ" of a pstd redemption record.
	RecordType = "pst-rr+jwt"
	// JWKSPath is where an issuer publishes its redemption-record keys.
	JWKSPath = "/.well-known/private-state-token/jwks.json"
	// MaxRecordBytes bounds one compact JWS before it is decoded.
	MaxRecordBytes = 8 << 10
)

// Defaults for the zero values of Config.
const (
	DefaultClockSkew       = time.Minute
	DefaultJWKSTTL         = time.Hour
	DefaultRefetchInterval = 30 * time.Second
	DefaultMaxStale        = 24 * time.Hour
	DefaultFetchTimeout    = 5 * time.Second
	DefaultMaxJWKSBytes    = 64 << 10
)

// Config configures a Verifier. Only Issuers is required.
type Config struct {
	// Issuers maps each trusted issuer origin ("https://issuer.example") to
	// the URL of its JWKS; an empty URL means origin + JWKSPath.
	Issuers map[string]string
	// Audiences are this site's own origins. A record is accepted only if
	// its "aud" (the origin that redeemed the token) is one of them. Empty
	// accepts any audience, which lets a record redeemed by another site be
	// replayed here: set it in production.
	Audiences []string
	// HTTPClient fetches JWKS; nil means a client without extra settings
	// (each fetch is bounded by FetchTimeout anyway).
	HTTPClient *http.Client
	// Now is the clock; nil means time.Now. Tests inject a fake one.
	Now func() time.Time
	// ClockSkew is the tolerance for exp, iat and nbf between the issuer's
	// clock and ours. Zero means DefaultClockSkew; negative means none.
	ClockSkew time.Duration
	// JWKSTTL is how long a fetched JWKS is used before it is refreshed.
	JWKSTTL time.Duration
	// RefetchInterval is the least time between two fetches of one issuer's
	// JWKS, whatever triggers them (unknown kid, TTL, earlier failure).
	RefetchInterval time.Duration
	// MaxStale is how long past its TTL a cached JWKS is still used while
	// refreshes fail; beyond that, verification fails with ErrJWKSUnavailable.
	MaxStale time.Duration
	// FetchTimeout bounds one JWKS request.
	FetchTimeout time.Duration
	// MaxJWKSBytes bounds a JWKS response body.
	MaxJWKSBytes int64
}

// Verifier checks redemption records against the JWKS of trusted issuers.
// It is safe for concurrent use; create one per process and share it, so
// that the JWKS cache is shared.
type Verifier struct {
	issuers         map[string]*keySet // canonical origin → keys
	audiences       map[string]bool    // canonical origins; empty = any
	client          *http.Client
	now             func() time.Time
	skew            time.Duration
	ttl             time.Duration
	refetchInterval time.Duration
	maxStale        time.Duration
	fetchTimeout    time.Duration
	maxJWKSBytes    int64
}

// Record is a verified redemption record.
type Record struct {
	Issuer         string    // iss: the issuer origin
	KeyID          uint32    // pst_key_id: the VOPRF key the token was issued under
	RecordID       string    // jti: random record id (the browser re-sends a cached record, so it repeats)
	Audience       string    // aud: the origin that redeemed the token
	IssuedAt       time.Time // iat
	Expiry         time.Time // exp
	RedemptionTime time.Time // pst_redemption_time: the browser's redemption timestamp
	RRKeyID        string    // JWS kid: the issuer's redemption-record signing key
}

// Result is the outcome of verifying a whole Sec-Redemption-Record header.
type Result struct {
	Records  []Record      // entries that verified, in header order
	Failures []*EntryError // entries that did not, untrusted issuers included
}

// Err joins the failures (nil if there are none); errors.Is works on it.
func (r Result) Err() error {
	errs := make([]error, len(r.Failures))
	for i, f := range r.Failures {
		errs[i] = f
	}
	return errors.Join(errs...)
}

// NewVerifier checks cfg and returns a Verifier. No JWKS is fetched yet:
// keys are fetched on first use, so an issuer being down at start-up does
// not stop the site.
func NewVerifier(cfg Config) (*Verifier, error) {
	if len(cfg.Issuers) == 0 {
		return nil, errors.New("rp: no trusted issuers configured")
	}
	v := &Verifier{
		issuers:         make(map[string]*keySet, len(cfg.Issuers)),
		audiences:       make(map[string]bool, len(cfg.Audiences)),
		client:          cfg.HTTPClient,
		now:             cfg.Now,
		skew:            orDefault(cfg.ClockSkew, DefaultClockSkew),
		ttl:             orDefault(cfg.JWKSTTL, DefaultJWKSTTL),
		refetchInterval: orDefault(cfg.RefetchInterval, DefaultRefetchInterval),
		maxStale:        orDefault(cfg.MaxStale, DefaultMaxStale),
		fetchTimeout:    orDefault(cfg.FetchTimeout, DefaultFetchTimeout),
		maxJWKSBytes:    cfg.MaxJWKSBytes,
	}
	if v.client == nil {
		v.client = &http.Client{}
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.skew < 0 {
		v.skew = 0 // negative means "no tolerance"
	}
	if v.maxJWKSBytes <= 0 {
		v.maxJWKSBytes = DefaultMaxJWKSBytes
	}
	for _, d := range []time.Duration{v.ttl, v.refetchInterval, v.maxStale, v.fetchTimeout} {
		if d < 0 {
			return nil, fmt.Errorf("rp: negative duration %s in config", d)
		}
	}
	for o, jwksURL := range cfg.Issuers {
		origin, err := canonicalOrigin(o)
		if err != nil {
			return nil, fmt.Errorf("rp: trusted issuer %q: %w", o, err)
		}
		if _, dup := v.issuers[origin]; dup {
			return nil, fmt.Errorf("rp: trusted issuer %q configured twice", origin)
		}
		if jwksURL == "" {
			jwksURL = origin + JWKSPath
		}
		u, err := url.Parse(jwksURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, fmt.Errorf("rp: JWKS URL %q of issuer %q is not an absolute http(s) URL", jwksURL, origin)
		}
		v.issuers[origin] = newKeySet(origin, jwksURL)
	}
	for _, a := range cfg.Audiences {
		origin, err := canonicalOrigin(a)
		if err != nil {
			return nil, fmt.Errorf("rp: audience %q: %w", a, err)
		}
		v.audiences[origin] = true
	}
	return v, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// VerifyRequest verifies the Sec-Redemption-Record header of r, for
// net/http handlers; see VerifyHeader.
func (v *Verifier) VerifyRequest(r *http.Request) (Result, error) {
	return v.VerifyHeader(r.Context(), r.Header.Values(HeaderName)...)
}

// VerifyHeader parses and verifies a Sec-Redemption-Record header. The
// error is non-nil only for a malformed header (ErrMalformedHeader); each
// entry that does not verify, from an untrusted issuer or not, is reported
// in Result.Failures and does not stop the others.
func (v *Verifier) VerifyHeader(ctx context.Context, values ...string) (Result, error) {
	entries, err := ParseRedemptionRecordHeader(values...)
	if err != nil {
		return Result{}, err
	}
	var res Result
	for i, e := range entries {
		rec, err := v.VerifyRecord(ctx, e.Issuer, e.Record)
		if err != nil {
			res.Failures = append(res.Failures, &EntryError{Index: i, Issuer: e.Issuer, Err: err})
			continue
		}
		res.Records = append(res.Records, rec)
	}
	return res, nil
}

// wireClaims is the JSON payload of a record (docs/ARCHITECTURE.md);
// pointers tell a missing claim from a zero one.
type wireClaims struct {
	jwt.Claims
	KeyID          *uint32 `json:"pst_key_id"`
	RedemptionTime *int64  `json:"pst_redemption_time"`
}

// VerifyRecord verifies one compact-JWS redemption record that arrived
// under the issuer origin issuer. The error wraps one of the per-record
// kinds (ErrUntrustedIssuer, ErrMalformed, ErrBadAlgorithm, ErrWrongType,
// ErrUnknownKID, ErrJWKSUnavailable, ErrBadSignature, ErrWrongIssuer,
// ErrExpired, ErrNotYetValid, ErrAudienceMismatch).
func (v *Verifier) VerifyRecord(ctx context.Context, issuer, jws string) (Record, error) {
	origin, err := canonicalOrigin(issuer)
	if err != nil {
		return Record{}, fmt.Errorf("%w: %q is not an origin", ErrUntrustedIssuer, issuer)
	}
	keys := v.issuers[origin]
	if keys == nil {
		return Record{}, fmt.Errorf("%w: %s", ErrUntrustedIssuer, origin)
	}
	if len(jws) > MaxRecordBytes {
		return Record{}, fmt.Errorf("%w: %d bytes, more than %d", ErrMalformed, len(jws), MaxRecordBytes)
	}

	// Compact serialization only: the JSON forms have unprotected headers
	// and several signatures, neither of which a record may use. The
	// algorithm list is fixed here, never taken from the token or the JWK.
	obj, err := jose.ParseSignedCompact(jws, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		var alg *jose.ErrUnexpectedSignatureAlgorithm
		if errors.As(err, &alg) {
			return Record{}, fmt.Errorf("%w: alg %q", ErrBadAlgorithm, alg.Got)
		}
		return Record{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if len(obj.Signatures) != 1 {
		return Record{}, fmt.Errorf("%w: %d signatures", ErrMalformed, len(obj.Signatures))
	}
	h := obj.Signatures[0].Protected
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); !isRecordType(typ) {
		return Record{}, fmt.Errorf("%w: typ %q", ErrWrongType, typ)
	}
	if h.KeyID == "" {
		return Record{}, fmt.Errorf("%w: no kid in the protected header", ErrMalformed)
	}
	key, err := keys.lookup(ctx, v, h.KeyID)
	if err != nil {
		return Record{}, err
	}
	payload, err := obj.Verify(key)
	if err != nil {
		return Record{}, fmt.Errorf("%w: kid %q of %s", ErrBadSignature, h.KeyID, origin)
	}

	// From here on the payload is the issuer's own words.
	var c wireClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return Record{}, fmt.Errorf("%w: claims: %w", ErrMalformed, err)
	}
	switch {
	case c.Issuer == "":
		return Record{}, fmt.Errorf("%w: no iss", ErrMalformed)
	case c.Expiry == nil:
		return Record{}, fmt.Errorf("%w: no exp", ErrMalformed)
	case c.IssuedAt == nil:
		return Record{}, fmt.Errorf("%w: no iat", ErrMalformed)
	case c.ID == "":
		return Record{}, fmt.Errorf("%w: no jti", ErrMalformed)
	case len(c.Audience) != 1 || c.Audience[0] == "":
		return Record{}, fmt.Errorf("%w: aud must be exactly one origin, got %d values", ErrMalformed, len(c.Audience))
	case c.KeyID == nil:
		return Record{}, fmt.Errorf("%w: no pst_key_id", ErrMalformed)
	case c.RedemptionTime == nil:
		return Record{}, fmt.Errorf("%w: no pst_redemption_time", ErrMalformed)
	}
	// A record signed by issuer A's key but claiming to be B's (or the
	// reverse) is refused: the key vouches only for its own origin.
	if iss, err := canonicalOrigin(c.Issuer); err != nil || iss != origin {
		return Record{}, fmt.Errorf("%w: iss %q under %s", ErrWrongIssuer, c.Issuer, origin)
	}
	now := v.now()
	exp, iat := c.Expiry.Time(), c.IssuedAt.Time()
	if now.After(exp.Add(v.skew)) {
		return Record{}, fmt.Errorf("%w: exp %s, now %s", ErrExpired, exp.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if iat.After(now.Add(v.skew)) {
		return Record{}, fmt.Errorf("%w: iat %s, now %s", ErrNotYetValid, iat.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if c.NotBefore != nil && c.NotBefore.Time().After(now.Add(v.skew)) {
		return Record{}, fmt.Errorf("%w: nbf %s, now %s", ErrNotYetValid, c.NotBefore.Time().UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	aud := c.Audience[0]
	if len(v.audiences) > 0 {
		a, err := canonicalOrigin(aud)
		if err != nil || !v.audiences[a] {
			return Record{}, fmt.Errorf("%w: aud %q", ErrAudienceMismatch, aud)
		}
	}
	return Record{
		Issuer:         origin,
		KeyID:          *c.KeyID,
		RecordID:       c.ID,
		Audience:       aud,
		IssuedAt:       iat,
		Expiry:         exp,
		RedemptionTime: time.Unix(*c.RedemptionTime, 0),
		RRKeyID:        h.KeyID,
	}, nil
}

// isRecordType compares a JWS typ as RFC 7515 §4.1.9 says: media types are
// case-insensitive and "application/" may be left out.
func isRecordType(typ string) bool {
	typ = strings.ToLower(typ)
	return typ == RecordType || typ == "application/"+RecordType
}

// canonicalOrigin is CanonicalOrigin.
func canonicalOrigin(s string) (string, error) { return CanonicalOrigin(s) }

// CanonicalOrigin turns an http(s) origin into its ASCII serialisation
// (lower-case scheme and host, internationalised names in punycode, the
// default port dropped), so that a configured "https://Issuer.example:443/"
// matches the "https://issuer.example" a browser sends. It refuses anything
// that is not an origin: a path, query, fragment or user info, an empty
// host, a port outside 1–65535, an IPv6 zone.
func CanonicalOrigin(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", errors.New("not a URL")
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "https" && scheme != "http" {
		return "", errors.New("not an http(s) origin")
	}
	if u.Opaque != "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.Host == "" {
		return "", errors.New("not an origin (scheme://host[:port] only)")
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		return "", errors.New("origin without host")
	}
	if strings.Contains(host, "%") {
		return "", errors.New("an IPv6 zone is not part of an origin")
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
			return "", errors.New("port outside 1-65535")
		}
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.String()
		if ip.Is6() {
			host = "[" + host + "]"
		}
	} else {
		ascii, err := idna.Lookup.ToASCII(host)
		if err != nil || ascii == "" {
			return "", errors.New("host is not a valid domain name")
		}
		host = strings.ToLower(ascii)
	}
	if (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		port = ""
	}
	if port != "" {
		host += ":" + port
	}
	return scheme + "://" + host, nil
}
