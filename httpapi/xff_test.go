package httpapi

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
)

// TestForwardedClientKeyBracketsAndUnknown: a bracketed IPv6 entry (with
// or without a port) is the client's address, and an entry that is no
// address ("unknown", an obfuscated id) gets one bucket of its own: never
// the proxy's, which every client behind it shares.
func TestForwardedClientKeyBracketsAndUnknown(t *testing.T) {
	key := ForwardedClientKey([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	for _, c := range []struct {
		name string
		xff  []string
		want string
	}{
		{"bracketed IPv6", []string{"[2001:db8:1:2::7]"}, "2001:db8:1:2::/64"},
		{"bracketed IPv6 with port", []string{"[2001:db8:1:2::7]:4711"}, "2001:db8:1:2::/64"},
		{"IPv4 with port", []string{"198.51.100.1:4711"}, "198.51.100.1"},
		{"unknown", []string{"unknown"}, UnparsableForwardedKey},
		{"obfuscated", []string{"_hidden"}, UnparsableForwardedKey},
		{"unknown behind a second proxy", []string{"unknown, 10.1.1.1"}, UnparsableForwardedKey},
		{"empty brackets", []string{"[]"}, UnparsableForwardedKey},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = "10.0.0.5:1"
		for _, v := range c.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		got := key(r)
		if got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
		if got == "10.0.0.5" {
			t.Errorf("%s: put into the proxy's bucket", c.name)
		}
	}
}

// FuzzForwardedClientKey: any X-Forwarded-For a client or proxy can send
// yields, without panicking, the proxy's key, the shared unparsable key, or
// the key of a real address (an IPv4 address or an IPv6 /64).
func FuzzForwardedClientKey(f *testing.F) {
	for _, s := range []string{"198.51.100.1", "[2001:db8::1]:80", "unknown", "1.2.3.4, 10.0.0.1", "[", "[]", ",,", "[::ffff:1.2.3.4]", "fe80::1%eth0"} {
		f.Add(s)
	}
	key := ForwardedClientKey([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	f.Fuzz(func(t *testing.T, xff string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = "10.0.0.5:1"
		r.Header.Set("X-Forwarded-For", xff)
		got := key(r)
		if got == "10.0.0.5" || got == UnparsableForwardedKey {
			return
		}
		if a, err := netip.ParseAddr(got); err == nil && a.Is4() {
			return
		}
		if p, err := netip.ParsePrefix(got); err == nil && p.Bits() == 64 && p.Addr().Is6() {
			return
		}
		t.Fatalf("X-Forwarded-For %q gave key %q", xff, got)
	})
}
