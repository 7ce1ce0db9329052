package httpapi

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
)

func TestForwardedClientKey(t *testing.T) {
	key := ForwardedClientKey([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")})
	for _, c := range []struct {
		name, peer string
		xff        []string
		want       string
	}{
		{"direct client, header ignored", "203.0.113.9:1", []string{"198.51.100.1"}, "203.0.113.9"},
		{"through one proxy", "10.0.0.5:1", []string{"198.51.100.1"}, "198.51.100.1"},
		{"client-forged entries left of the real one", "10.0.0.5:1", []string{"1.2.3.4, 198.51.100.1"}, "198.51.100.1"},
		{"two proxies", "10.0.0.5:1", []string{"198.51.100.1, 10.1.1.1"}, "198.51.100.1"},
		{"two header lines", "10.0.0.5:1", []string{"1.2.3.4", "198.51.100.1"}, "198.51.100.1"},
		{"garbage gets its own bucket", "10.0.0.5:1", []string{"198.51.100.1, nonsense"}, UnparsableForwardedKey},
		{"no header", "10.0.0.5:1", nil, "10.0.0.5"},
		{"IPv6 client", "10.0.0.5:1", []string{"2001:db8:1:2:3:4:5:6"}, "2001:db8:1:2::/64"},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = c.peer
		for _, v := range c.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if got := key(r); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}
