package httpapi

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writeCert writes a self-signed certificate for 127.0.0.1 with the given
// serial to certFile/keyFile and returns it.
func writeCert(t *testing.T, certFile, keyFile string, serial int64) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "pstd test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// serve runs a server on fresh loopback listeners until the test ends.
func serve(t *testing.T, cfg Config, withAdmin bool) (public, admin string, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var aln net.Listener
	if withAdmin {
		if aln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		admin = aln.Addr().String()
	}
	s := New(cfg, newFake())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeAll(ctx, ln, aln) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("ServeAll: %v", err)
			}
		}
	}
	t.Cleanup(stop)
	return ln.Addr().String(), admin, stop
}

func get(t *testing.T, c *http.Client, url string) *http.Response {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TLS: at least 1.2, HTTP/2 by ALPN, and a renewed certificate is served
// to new connections after a reload while an open connection keeps working.
func TestTLSListener(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	first := writeCert(t, certFile, keyFile, 1)
	r, err := NewCertReloader(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr, _, _ := serve(t, Config{TLS: r.TLSConfig(), ReadyInterval: time.Hour}, false)
	url := "https://" + addr + PathHealthz

	pool := x509.NewCertPool()
	pool.AddCert(first)
	client := func(p *x509.CertPool) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: p}, ForceAttemptHTTP2: true}}
	}
	old := client(pool)
	resp := get(t, old, url)
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 || resp.TLS.PeerCertificates[0].SerialNumber.Int64() != 1 {
		t.Fatalf("status %d, %s, serial %v", resp.StatusCode, resp.Proto, resp.TLS.PeerCertificates[0].SerialNumber)
	}

	// TLS 1.1 is refused.
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, MaxVersion: tls.VersionTLS11})
	if err == nil {
		conn.Close()
		t.Fatal("a TLS 1.1 handshake succeeded")
	}

	// Renewal: new files, a reload (as on SIGHUP).
	second := writeCert(t, certFile, keyFile, 2)
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	pool2 := x509.NewCertPool()
	pool2.AddCert(second)
	resp = get(t, client(pool2), url)
	if got := resp.TLS.PeerCertificates[0].SerialNumber.Int64(); got != 2 {
		t.Fatalf("after reload a new connection got certificate %d", got)
	}
	// The connection made before the renewal still serves.
	if resp := get(t, old, url); resp.StatusCode != 200 || resp.TLS.PeerCertificates[0].SerialNumber.Int64() != 1 {
		t.Fatalf("the old connection: status %d", resp.StatusCode)
	}

	// A broken pair keeps the current certificate.
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(); err == nil {
		t.Fatal("a broken certificate file reloaded")
	}
	if got := get(t, client(pool2), url).TLS.PeerCertificates[0].SerialNumber.Int64(); got != 2 {
		t.Fatalf("after a failed reload the certificate is %d", got)
	}
}

// Watch picks up changed files by itself.
func TestCertReloaderWatch(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCert(t, certFile, keyFile, 1)
	r, err := NewCertReloader(certFile, keyFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Watch(ctx, 10*time.Millisecond)
	writeCert(t, certFile, keyFile, 7)
	later := time.Now().Add(time.Minute) // a distinct modification time, whatever the file system's resolution
	if err := os.Chtimes(certFile, later, later); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, _ := r.GetCertificate(nil)
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err == nil && leaf.SerialNumber.Int64() == 7 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("Watch did not reload the changed certificate")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// With an admin listener, /metrics is served there and no longer on the
// public listener; the probes answer on both.
func TestAdminListener(t *testing.T) {
	public, admin, _ := serve(t, Config{SeparateAdmin: true, ReadyInterval: time.Hour}, true)
	c := &http.Client{Timeout: 10 * time.Second}
	if got := get(t, c, "http://"+public+PathMetrics).StatusCode; got != http.StatusNotFound {
		t.Fatalf("public /metrics: %d, want 404", got)
	}
	for _, p := range []string{PathMetrics, PathHealthz, PathReadyz} {
		if got := get(t, c, "http://"+admin+p).StatusCode; got != http.StatusOK {
			t.Errorf("admin %s: %d", p, got)
		}
	}
	if got := get(t, c, "http://"+public+PathKeyCommitment).StatusCode; got != http.StatusOK {
		t.Errorf("public commitment: %d", got)
	}
	if got := get(t, c, "http://"+admin+PathKeyCommitment).StatusCode; got != http.StatusNotFound {
		t.Errorf("admin listener serves the commitment: %d", got)
	}
}

// On shutdown /readyz fails first while the listener still serves for the
// shutdown delay, so a load balancer drains the replica before it closes.
func TestShutdownDelay(t *testing.T) {
	public, _, stop := serve(t, Config{ShutdownDelay: 3 * time.Second, ReadyInterval: time.Hour}, false)
	c := &http.Client{Timeout: 10 * time.Second}
	if got := get(t, c, "http://"+public+PathReadyz).StatusCode; got != 200 {
		t.Fatalf("readyz before shutdown: %d", got)
	}
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := c.Get("http://" + public + PathReadyz)
		if err != nil {
			t.Fatalf("the listener closed before readiness failed: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("readyz never failed during shutdown")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Still serving the API while draining.
	if got := get(t, c, "http://"+public+PathKeyCommitment).StatusCode; got != 200 {
		t.Fatalf("commitment while draining: %d", got)
	}
	<-stopped
	if _, err := c.Get("http://" + public + PathHealthz); err == nil {
		t.Fatal("the listener still answers after shutdown")
	}
}
