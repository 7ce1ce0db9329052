package httpapi

import (
	"net"
	"net/netip"
	"sync"
	"syscall"
)

// Connection limits. Every open connection costs a file descriptor, and the
// descriptors are shared with the database pool and the PKCS#11 module: a
// process that runs out cannot reach PostgreSQL or the token any more, and
// an HSM error caused by it looks like a lost token. So the listener holds
// open connections below the descriptor limit, keeping a reserve, and no
// single client address may hold more than its share. A connection over
// either cap is accepted and closed at once (so it costs a descriptor for a
// moment, not for as long as the client likes); the accept queue then keeps
// moving and clients from other addresses are still served.
//
// Connections that never send a request are closed after ReadHeaderTimeout
// (Go's server starts that clock when the connection is accepted), idle
// keep-alive connections after IdleTimeout.

// Defaults of the connection limits.
const (
	// DefaultReserveFDs is how many descriptors the connection cap leaves
	// for the database pool, the PKCS#11 module, log and TLS files.
	DefaultReserveFDs = 512
	// DefaultMaxConnsPerAddr caps the connections of one client address
	// (an IPv6 client's /64). Trusted proxies are exempt.
	DefaultMaxConnsPerAddr = 256
	// adminConns is the admin listener's own cap, outside the public one,
	// so a flood on the public listener never locks out the probes.
	adminConns = 64
)

// DescriptorLimit is the process's soft RLIMIT_NOFILE (0 if unknown).
func DescriptorLimit() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	if rl.Cur > 1<<30 {
		return 1 << 30
	}
	return int(rl.Cur)
}

// connCapFor is the global connection cap for a descriptor limit: the limit
// less the reserve and the admin listener's share, at least 16.
func connCapFor(limit, reserve int) int {
	if limit <= 0 {
		return 1 << 20 // unknown limit: no cap but the per-address one
	}
	return max(16, limit-reserve-adminConns)
}

// connLimiter wraps a listener with a global and a per-address cap.
type connLimiter struct {
	net.Listener
	max, perAddr int
	exempt       []netip.Prefix
	m            *metrics
	listener     string // metric label: "public" or "admin"

	mu     sync.Mutex
	total  int
	byAddr map[string]int
}

func newConnLimiter(ln net.Listener, maxConns, perAddr int, exempt []netip.Prefix, m *metrics, name string) *connLimiter {
	return &connLimiter{Listener: ln, max: maxConns, perAddr: perAddr, exempt: exempt, m: m, listener: name, byAddr: map[string]int{}}
}

// Accept returns the next connection within the caps; connections over a
// cap are closed here and never reach the HTTP server.
func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key, exempt := l.keyOf(c.RemoteAddr())
		l.mu.Lock()
		reason := ""
		switch {
		case l.total >= l.max:
			reason = "total"
		case l.perAddr > 0 && !exempt && l.byAddr[key] >= l.perAddr:
			reason = "per_address"
		default:
			l.total++
			if !exempt {
				l.byAddr[key]++
			}
		}
		open := l.total
		l.mu.Unlock()
		if reason != "" {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // a reset: no TIME_WAIT kept for the flood
			}
			_ = c.Close()
			l.m.connRefused.WithLabelValues(l.listener, reason).Inc()
			continue
		}
		l.m.openConns.WithLabelValues(l.listener).Set(float64(open))
		return &limitedConn{Conn: c, release: func() { l.release(key, exempt) }}, nil
	}
}

func (l *connLimiter) keyOf(a net.Addr) (key string, exempt bool) {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			ip = ip.Unmap()
			for _, p := range l.exempt {
				if p.Contains(ip) {
					return "", true
				}
			}
		}
	}
	return ClientAddrKey(a.String()), false
}

func (l *connLimiter) release(key string, exempt bool) {
	l.mu.Lock()
	l.total--
	if !exempt {
		if n := l.byAddr[key] - 1; n > 0 {
			l.byAddr[key] = n
		} else {
			delete(l.byAddr, key)
		}
	}
	open := l.total
	l.mu.Unlock()
	l.m.openConns.WithLabelValues(l.listener).Set(float64(open))
}

// open is the number of connections held.
func (l *connLimiter) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// limitedConn gives its slot back once, on the first Close.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
