package httpapi

import (
	"container/list"
	"context"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/pstd/pstd/internal/pstderr"
)

// Policy decides how many tokens an issuance request may get. requested is
// what the client asked for, already capped at the batch size. Allow returns
// how many it may have (0 < allowed ≤ requested), or an error with kind
// pstderr.Denied or pstderr.RateLimited (a RateLimitedError carries the
// Retry-After). The handler calls Issue with max = min(batch size, allowed).
type Policy interface {
	Allow(ctx context.Context, r *http.Request, requested int) (allowed int, err error)
}

// AllowAll lets every request have what it asks for (up to the batch size).
type AllowAll struct{}

// Allow implements Policy.
func (AllowAll) Allow(_ context.Context, _ *http.Request, requested int) (int, error) {
	return requested, nil
}

// RateLimitConfig configures RateLimit.
type RateLimitConfig struct {
	// Tokens is how many PST tokens one client address may get per Window.
	// (A browser asks for the whole batch at once, so requests per window is
	// about Tokens / batch size.) Must be > 0.
	Tokens int
	// Window is the refill period of a full bucket. Default one minute. An
	// address is forgotten once Window has passed since its last request: by
	// then its bucket would be full again, so forgetting loses nothing.
	Window time.Duration
	// MaxAddresses bounds the number of addresses held at once (default
	// 100000). When full, the address seen least recently is forgotten
	// first: memory stays bounded, and an attacker who owns that many
	// addresses gains nothing he did not already have.
	MaxAddresses int
	// Now is the clock (default time.Now); tests inject a fake one.
	Now func() time.Time
	// What names what is limited in the refusal (default "issuance requests").
	What string
	// ClientKey returns the rate-limit key of a request (default:
	// ClientAddrKey of the TCP peer). Behind a reverse proxy, supply one that
	// reads the proxy's header, trusting only the proxy's own entry.
	ClientKey func(r *http.Request) string
}

// RateLimit is a Policy that gives each client address a token bucket of
// Tokens that refills continuously over Window. Requests beyond the bucket
// get what is left; an empty bucket is refused with RateLimited and a
// Retry-After of when the next token is due. Addresses live in memory only,
// never longer than Window after their last request, and are never logged.
type RateLimit struct {
	cfg  RateLimitConfig
	rate float64 // tokens per second

	mu      sync.Mutex
	buckets map[string]*list.Element // of *bucket
	lru     list.List                // front: most recently seen
}

type bucket struct {
	key   string
	level float64
	last  time.Time
}

// NewRateLimit returns a RateLimit policy. Tokens ≤ 0 is treated as 1.
func NewRateLimit(cfg RateLimitConfig) *RateLimit {
	if cfg.Tokens <= 0 {
		cfg.Tokens = 1
	}
	if cfg.Window <= 0 {
		cfg.Window = DefaultRateWindow
	}
	if cfg.MaxAddresses <= 0 {
		cfg.MaxAddresses = 100000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ClientKey == nil {
		cfg.ClientKey = func(r *http.Request) string { return ClientAddrKey(r.RemoteAddr) }
	}
	return &RateLimit{
		cfg:     cfg,
		rate:    float64(cfg.Tokens) / cfg.Window.Seconds(),
		buckets: make(map[string]*list.Element),
	}
}

func (l *RateLimit) what() string {
	if l.cfg.What != "" {
		return l.cfg.What
	}
	return "issuance requests"
}

// Allow implements Policy.
func (l *RateLimit) Allow(_ context.Context, r *http.Request, requested int) (int, error) {
	if requested <= 0 {
		return 0, pstderr.New(pstderr.BadCount, "no tokens requested")
	}
	key := l.cfg.ClientKey(r)
	now := l.cfg.Now()

	l.mu.Lock()
	defer l.mu.Unlock()
	l.evict(now)

	var b *bucket
	if e, ok := l.buckets[key]; ok {
		b = e.Value.(*bucket)
		elapsed := now.Sub(b.last).Seconds()
		if elapsed > 0 {
			b.level = math.Min(float64(l.cfg.Tokens), b.level+elapsed*l.rate)
		}
		l.lru.MoveToFront(e)
	} else {
		for len(l.buckets) >= l.cfg.MaxAddresses {
			l.remove(l.lru.Back())
		}
		b = &bucket{key: key, level: float64(l.cfg.Tokens)}
		l.buckets[key] = l.lru.PushFront(b)
	}
	b.last = now

	allowed := min(requested, int(math.Floor(b.level+1e-9)))
	if allowed <= 0 {
		wait := time.Duration((1 - b.level) / l.rate * float64(time.Second))
		return 0, &RateLimitedError{
			Err:   pstderr.New(pstderr.RateLimited, "too many %s; try again later", l.what()),
			After: max(wait, time.Second),
		}
	}
	b.level -= float64(allowed)
	return allowed, nil
}

// evict forgets every address idle for a whole window (least recent last).
func (l *RateLimit) evict(now time.Time) {
	for e := l.lru.Back(); e != nil; e = l.lru.Back() {
		if now.Sub(e.Value.(*bucket).last) < l.cfg.Window {
			return
		}
		l.remove(e)
	}
}

func (l *RateLimit) remove(e *list.Element) {
	delete(l.buckets, e.Value.(*bucket).key)
	l.lru.Remove(e)
}

// Len is the number of addresses currently held.
func (l *RateLimit) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evict(l.cfg.Now())
	return len(l.buckets)
}

// ClientAddrKey reduces a "host:port" (or bare host) to a rate-limit key:
// an IPv4 address as is, an IPv6 address to its /64 (one subscriber usually
// holds a whole /64, so per-address limits would be trivial to dodge).
func ClientAddrKey(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// UnparsableForwardedKey is the one rate-limit key of every request whose
// X-Forwarded-For client entry is not an address.
const UnparsableForwardedKey = "x-forwarded-for:unparsable"

// ForwardedClientKey is a RateLimitConfig.ClientKey for pstd behind reverse
// proxies. When the TCP peer is one of trusted, the client is the
// rightmost X-Forwarded-For address that is not itself a trusted proxy
// (entries left of it were written by the client and prove nothing);
// otherwise the peer is the client. The result goes through ClientAddrKey.
func ForwardedClientKey(trusted []netip.Prefix) func(*http.Request) string {
	isTrusted := func(a netip.Addr) bool {
		for _, p := range trusted {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	parse := func(s string) (netip.Addr, bool) {
		s = strings.TrimSpace(s)
		if host, _, err := net.SplitHostPort(s); err == nil {
			s = host
		} else if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
			s = s[1 : len(s)-1] // a bracketed IPv6 address without a port
		}
		a, err := netip.ParseAddr(s)
		return a.Unmap().WithZone(""), err == nil
	}
	return func(r *http.Request) string {
		peer, ok := parse(r.RemoteAddr)
		if !ok || !isTrusted(peer) {
			return ClientAddrKey(r.RemoteAddr)
		}
		var hops []string
		for _, v := range r.Header.Values("X-Forwarded-For") {
			hops = append(hops, strings.Split(v, ",")...)
		}
		for i := len(hops) - 1; i >= 0; i-- {
			a, ok := parse(hops[i])
			if !ok {
				// "unknown", an obfuscated identifier or garbage where the
				// client's address should be: one bucket of their own, not
				// the proxy's (that would let them starve everyone behind
				// it) and not one per string (a client could mint buckets).
				return UnparsableForwardedKey
			}
			if !isTrusted(a) {
				return ClientAddrKey(a.String())
			}
		}
		// Only proxies, or nothing usable: key on the proxy itself.
		return ClientAddrKey(r.RemoteAddr)
	}
}
