package signer

import (
	"fmt"
	"strings"

	"github.com/pstd/pstd/rp"
)

// Redeemers is the allow-list of redeeming origins: exact origins
// ("https://rp.example") and wildcard ones ("https://*.example.com", any
// subdomain of example.com, not example.com itself), compared on the
// canonical origin. The zero value allows any origin.
type Redeemers struct {
	exact    map[string]bool
	suffixes []string // "https://.example.com[:port]": scheme and the host suffix
	any      bool
}

// ParseRedeemers reads a comma-separated allow-list; empty allows any.
func ParseRedeemers(list string) (Redeemers, error) {
	r := Redeemers{exact: map[string]bool{}}
	for _, e := range strings.Split(list, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		if scheme, rest, ok := strings.Cut(e, "://*."); ok {
			c, err := rp.CanonicalOrigin(scheme + "://" + rest)
			if err != nil {
				return r, fmt.Errorf("redeemer origin %q: %v", e, err)
			}
			s, host, _ := strings.Cut(c, "://")
			r.suffixes = append(r.suffixes, s+"://."+host)
			continue
		}
		c, err := rp.CanonicalOrigin(e)
		if err != nil {
			return r, fmt.Errorf("redeemer origin %q: %v", e, err)
		}
		r.exact[c] = true
	}
	r.any = len(r.exact) == 0 && len(r.suffixes) == 0
	return r, nil
}

// Allows reports whether canonical origin o may redeem.
func (r Redeemers) Allows(o string) bool {
	if r.any || r.exact == nil || r.exact[o] {
		return true
	}
	scheme, host, _ := strings.Cut(o, "://")
	for _, s := range r.suffixes {
		ss, suffix, _ := strings.Cut(s, "://")
		if ss == scheme && strings.HasSuffix(host, suffix) && len(host) > len(suffix) {
			return true
		}
	}
	return false
}
