package rp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// keySet is the cached JWKS of one trusted issuer.
//
// Readers take mu only briefly; at most one fetch per issuer runs at a time
// (sem), and fetches are rate limited so that records with random kids
// cannot make the RP hammer the issuer: a fetch starts only if the last
// attempt (successful or not) is at least refetchInterval old.
type keySet struct {
	origin string
	url    string
	sem    chan struct{} // capacity 1: the fetch lock, waitable with a context

	mu        sync.RWMutex
	keys      map[string]*ecdsa.PublicKey // kid → key; nil until the first success
	fetched   time.Time                   // last successful fetch
	attempted time.Time                   // last fetch attempt
	lastErr   error                       // error of the last attempt, nil after a success
}

func newKeySet(origin, url string) *keySet {
	return &keySet{origin: origin, url: url, sem: make(chan struct{}, 1)}
}

// lookup returns the key for kid, fetching the JWKS when the cache is
// empty or older than the TTL, or when kid is unknown (key rotation).
func (s *keySet) lookup(ctx context.Context, v *Verifier, kid string) (*ecdsa.PublicKey, error) {
	now := v.now()
	if k, ok, fresh := s.cached(kid, now, v.ttl); ok && fresh {
		return k, nil
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %s: %w", ErrJWKSUnavailable, s.url, ctx.Err())
	}
	defer func() { <-s.sem }()

	// Another caller may have fetched while we waited for the lock.
	now = v.now()
	if k, ok, fresh := s.cached(kid, now, v.ttl); ok && fresh {
		return k, nil
	}
	s.mu.RLock()
	mayFetch := s.attempted.IsZero() || now.Sub(s.attempted) >= v.refetchInterval
	s.mu.RUnlock()
	if mayFetch {
		keys, err := v.fetchJWKS(ctx, s.url)
		s.mu.Lock()
		s.attempted = now
		s.lastErr = err
		if err == nil {
			s.keys, s.fetched = keys, now
		}
		s.mu.Unlock()
	}

	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.keys == nil {
		if s.lastErr != nil {
			return nil, s.lastErr
		}
		return nil, fmt.Errorf("%w: %s: no successful fetch yet", ErrJWKSUnavailable, s.url)
	}
	if age := now.Sub(s.fetched); age >= v.ttl+v.maxStale {
		// Serving stale keys while the issuer is briefly unreachable keeps
		// the RP up; serving them for ever would defeat key removal.
		return nil, fmt.Errorf("%w: cached JWKS of %s is %s old (refresh failing: %v)", ErrJWKSUnavailable, s.origin, age.Round(time.Second), s.lastErr)
	}
	k, ok := s.keys[kid]
	if !ok {
		if s.lastErr != nil {
			return nil, fmt.Errorf("%w: kid %q (refetch failed: %w)", ErrUnknownKID, kid, s.lastErr)
		}
		return nil, fmt.Errorf("%w: kid %q not published by %s", ErrUnknownKID, kid, s.origin)
	}
	return k, nil
}

func (s *keySet) cached(kid string, now time.Time, ttl time.Duration) (k *ecdsa.PublicKey, ok, fresh bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k, ok = s.keys[kid]
	return k, ok, s.keys != nil && now.Sub(s.fetched) < ttl
}

// fetchJWKS downloads and parses a JWKS, keeping only keys that can verify
// a record: ECDSA P-256, with a kid, use "sig" or unset, alg ES256 or unset.
// Keys go-jose cannot parse (another kty, say) are skipped rather than
// failing the set, so an issuer adding a new key type does not break RPs.
func (v *Verifier) fetchJWKS(ctx context.Context, url string) (map[string]*ecdsa.PublicKey, error) {
	ctx, cancel := context.WithTimeout(ctx, v.fetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrJWKSUnavailable, url, err)
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := v.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrJWKSUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: GET %s: HTTP %d", ErrJWKSUnavailable, url, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, v.maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: GET %s: %w", ErrJWKSUnavailable, url, err)
	}
	if int64(len(body)) > v.maxJWKSBytes {
		return nil, fmt.Errorf("%w: GET %s: body larger than %d bytes", ErrJWKSUnavailable, url, v.maxJWKSBytes)
	}
	keys, err := parseJWKS(body)
	if err != nil {
		return nil, fmt.Errorf("%w: GET %s: %w", ErrJWKSUnavailable, url, err)
	}
	return keys, nil
}

// parseJWKS keeps the keys of a JWKS body that can verify a record.
func parseJWKS(body []byte) (map[string]*ecdsa.PublicKey, error) {
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, fmt.Errorf("not a JWKS: %w", err)
	}
	if raw.Keys == nil {
		return nil, errors.New(`not a JWKS: no "keys" array`)
	}
	keys := make(map[string]*ecdsa.PublicKey, len(raw.Keys))
	for _, r := range raw.Keys {
		var k jose.JSONWebKey
		if err := json.Unmarshal(r, &k); err != nil {
			continue
		}
		if k.KeyID == "" || (k.Use != "" && k.Use != "sig") ||
			(k.Algorithm != "" && k.Algorithm != string(jose.ES256)) {
			continue
		}
		// Public() also strips a private half an issuer published by mistake.
		pub, ok := k.Public().Key.(*ecdsa.PublicKey)
		if !ok || pub.Curve != elliptic.P256() {
			continue
		}
		if _, dup := keys[k.KeyID]; dup {
			continue // first wins: a kid must name one key
		}
		keys[k.KeyID] = pub
	}
	return keys, nil
}
