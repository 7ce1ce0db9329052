package httpapi

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/pstd/pstd/internal/pstderr"
)

// Issuance must be earned: a PST issuer exists to give tokens only to
// visitors a site decided to trust. The policies here carry that decision
// to pstd without anything that could link the visitor's issuance to a
// later redemption: a ticket or a webhook answer says "yes" or "no" and
// nothing is stored about the blinded elements.

// TicketParam is the query parameter of the issuance URL that carries an
// issuance ticket: the trusting site's page fetches
// https://issuer/.well-known/private-state-token/issuance?pst-ticket=… with
// {privateToken: {operation: "token-request", …}}.
const TicketParam = "pst-ticket"

const (
	ticketVersion = 1
	ticketLen     = 1 + 8 + 16 + sha256.Size
)

// MintTicket makes a single-use issuance ticket valid for ttl: base64url of
// version (1) || expiry (uint64, Unix seconds) || 16 random bytes ||
// HMAC-SHA256(key, the preceding bytes). The site that decided to trust a
// visitor mints it with the key it shares with pstd.
func MintTicket(key []byte, ttl time.Duration, now time.Time) (string, error) {
	b := make([]byte, ticketLen)
	b[0] = ticketVersion
	binary.BigEndian.PutUint64(b[1:9], uint64(now.Add(ttl).Unix()))
	if _, err := rand.Read(b[9:25]); err != nil {
		return "", err
	}
	m := hmac.New(sha256.New, key)
	m.Write(b[:25])
	copy(b[25:], m.Sum(nil))
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// SpentTickets remembers used tickets until they expire (pstd keeps the
// ticket's hash and its expiry, nothing else). Spend reports false for a
// ticket already spent.
type SpentTickets interface {
	Spend(ctx context.Context, hash [32]byte, expires time.Time) (fresh bool, err error)
}

// TicketPolicy admits an issuance request that carries a valid, unexpired,
// unspent ticket. It checks the ticket before any other work: a request
// without one, with an expired or forged one, or with a replayed one costs
// one HMAC (and for a valid one, one database write) and no scalar
// multiplication.
type TicketPolicy struct {
	Key    []byte        // at least 32 bytes
	MaxTTL time.Duration // tickets valid for longer are refused (default 10 min)
	Spent  SpentTickets
	Now    func() time.Time
}

// Allow implements Policy.
func (p *TicketPolicy) Allow(ctx context.Context, r *http.Request, requested int) (int, error) {
	now := time.Now
	if p.Now != nil {
		now = p.Now
	}
	maxTTL := p.MaxTTL
	if maxTTL <= 0 {
		maxTTL = 10 * time.Minute
	}
	vals := r.URL.Query()[TicketParam]
	if len(vals) != 1 {
		return 0, pstderr.New(pstderr.Denied, "issuance needs one %s from the site that trusts this visitor", TicketParam)
	}
	b, err := base64.RawURLEncoding.DecodeString(vals[0])
	if err != nil || len(b) != ticketLen || b[0] != ticketVersion {
		return 0, pstderr.New(pstderr.Denied, "the issuance ticket is malformed")
	}
	m := hmac.New(sha256.New, p.Key)
	m.Write(b[:25])
	if !hmac.Equal(m.Sum(nil), b[25:]) {
		return 0, pstderr.New(pstderr.Denied, "the issuance ticket is not genuine")
	}
	exp := time.Unix(int64(binary.BigEndian.Uint64(b[1:9])), 0)
	t := now()
	if !exp.After(t) {
		return 0, pstderr.New(pstderr.Denied, "the issuance ticket has expired")
	}
	if exp.Sub(t) > maxTTL {
		return 0, pstderr.New(pstderr.Denied, "the issuance ticket is valid for longer than pstd accepts")
	}
	fresh, err := p.Spent.Spend(ctx, sha256.Sum256(b), exp)
	if err != nil {
		return 0, err
	}
	if !fresh {
		return 0, pstderr.New(pstderr.Denied, "the issuance ticket was already used")
	}
	return requested, nil
}

// WebhookPolicy asks the operator's own service whether to issue, passing
// the request's first-party context — the cookies and the chosen headers the
// browser sent to the issuer, never the blinded elements — and issues only
// on an explicit {"issue": true}. A "no", an error, a timeout or anything
// else refuses: it fails closed.
type WebhookPolicy struct {
	URL     string
	Headers []string // request headers to forward (besides Cookie)
	Timeout time.Duration
	Client  *http.Client
}

type webhookRequest struct {
	Cookies   []string            `json:"cookies"`
	Headers   map[string][]string `json:"headers"`
	Requested int                 `json:"requested"`
}

type webhookAnswer struct {
	Issue bool `json:"issue"`
	Max   int  `json:"max,omitempty"`
}

// Allow implements Policy.
func (p *WebhookPolicy) Allow(ctx context.Context, r *http.Request, requested int) (int, error) {
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = 500 * time.Millisecond
	}
	client := p.Client
	if client == nil {
		client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	body := webhookRequest{Cookies: r.Header.Values("Cookie"), Headers: map[string][]string{}, Requested: requested}
	for _, h := range p.Headers {
		if v := r.Header.Values(h); len(v) > 0 && !strings.EqualFold(h, HeaderToken) {
			body.Headers[http.CanonicalHeaderKey(h)] = v
		}
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.URL, bytes.NewReader(raw))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, pstderr.Wrap(pstderr.Unavailable, err, "the issuance webhook did not answer")
	}
	defer resp.Body.Close()
	var ans webhookAnswer
	dec := json.NewDecoder(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || dec.Decode(&ans) != nil {
		return 0, pstderr.New(pstderr.Denied, "the issuance webhook did not say yes")
	}
	if !ans.Issue {
		return 0, pstderr.New(pstderr.Denied, "issuance not allowed for this visitor")
	}
	if ans.Max > 0 && ans.Max < requested {
		return ans.Max, nil
	}
	return requested, nil
}

// AllOf admits a request only if every policy does, giving the smallest
// allowance; the first refusal ends it (so a cheap policy first saves the
// costly ones).
func AllOf(ps ...Policy) Policy { return allOf(ps) }

type allOf []Policy

func (a allOf) Allow(ctx context.Context, r *http.Request, requested int) (int, error) {
	allowed := requested
	for _, p := range a {
		n, err := p.Allow(ctx, r, allowed)
		if err != nil {
			return 0, err
		}
		allowed = min(allowed, n)
	}
	return allowed, nil
}

// ErrWeakTicketKey is returned for an issuance ticket key under 32 bytes.
var ErrWeakTicketKey = errors.New("the issuance ticket key must be at least 32 bytes")

// CheckTicketKey validates a ticket key.
func CheckTicketKey(k []byte) error {
	if len(k) < 32 {
		return fmt.Errorf("%w (got %d)", ErrWeakTicketKey, len(k))
	}
	return nil
}
