package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pstd/pstd/internal/testenv"
)

// selfSigned writes a certificate for localhost and 127.0.0.1 and returns
// a pool that trusts it.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(c)
	return certFile, keyFile, pool
}

// TestProductionListeners runs the real pstd with TLS on the public
// listener, an admin listener and a shutdown delay: HTTP/2 over TLS on the
// public port, /metrics (with pstd_build_info) only on the admin port, and
// on SIGTERM /readyz fails while the public listener still serves, then a
// clean exit.
func TestProductionListeners(t *testing.T) {
	s := prepareStack(t, testenv.NewDatabase(t), testenv.NewToken(t))
	certFile, keyFile, pool := selfSigned(t, t.TempDir())
	adminAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	port := strings.TrimPrefix(s.listen, "127.0.0.1:")
	s.env = append(s.env, "PSTD_TLS_CERT="+certFile, "PSTD_TLS_KEY="+keyFile, "PSTD_ADMIN_LISTEN="+adminAddr,
		"PSTD_SHUTDOWN_DELAY=3s", "PSTD_ISSUER_ORIGIN=https://localhost:"+port)
	s.launch()
	admin := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := admin.Get("http://" + adminAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready on the admin listener:\n%s", s.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	public := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	base := "https://localhost:" + port
	resp, err := public.Get(base + "/.well-known/private-state-token/key-commitment")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 || !bytes.Contains(body, []byte("PrivateStateTokenV1VOPRF")) {
		t.Fatalf("commitment over TLS: %d %s %s", resp.StatusCode, resp.Proto, body)
	}
	if resp, err := public.Get(base + "/metrics"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("public /metrics: %v %v", resp, err)
	}
	resp, err = admin.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(metrics, []byte("pstd_build_info{")) || !bytes.Contains(metrics, []byte("pstd_key_epoch 1")) {
		t.Fatalf("admin /metrics lacks pstd_build_info or pstd_key_epoch:\n%.2000s", metrics)
	}
	// Plain HTTP on the TLS port is refused.
	if resp, err := http.Get("http://" + s.listen + "/healthz"); err == nil && resp.StatusCode == 200 {
		t.Fatal("the public listener answered plain HTTP")
	}

	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		resp, err := admin.Get("http://" + adminAddr + "/readyz")
		if err != nil {
			t.Fatalf("the admin listener closed before readiness failed: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("readyz did not fail after SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if resp, err := public.Get(base + "/.well-known/private-state-token/key-commitment"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("the public listener stopped serving during the shutdown delay: %v", err)
	}
	select {
	case <-s.stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("pstd did not exit after SIGTERM")
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit status %d after SIGTERM:\n%s", code, s.logs.String())
	}
	s.cmd = nil
}

// TestExitCodes: one rule for every binary — help 0, usage errors 2 (a
// mistyped command names the nearest), failures 1 — and --version.
func TestExitCodes(t *testing.T) {
	run := func(bin string, env []string, args ...string) (int, string) {
		cmd := exec.Command(filepath.Join(binDir, bin), args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	bare := []string{"PATH=" + os.Getenv("PATH")}
	for _, c := range []struct {
		bin  string
		args []string
		code int
		want string
	}{
		{"pstd", []string{"--version"}, 0, "pstd "},
		{"pstctl", []string{"--version"}, 0, "pstctl "},
		{"pstd", []string{"-h"}, 0, "serve"},
		{"pstd", nil, 2, "a command is required"},
		{"pstd", []string{"srve"}, 2, `did you mean "serve"`},
		{"pstd", []string{"serve", "--bogus"}, 2, "bogus"},
		{"pstd", []string{"serve"}, 2, "PSTD_DATABASE_URL"},
		{"pstctl", []string{"keys"}, 2, "a command is required"},
		{"pstctl", []string{"keys", "retrie", "1"}, 2, `did you mean "retire"`},
		{"pstctl", []string{"keys", "list", "-h"}, 0, "database-url"},
		{"pstctl", []string{"keys", "list", "--database-url", "postgres://nobody@127.0.0.1:1/none?connect_timeout=2"}, 1, ""},
		// A key change without a reason is refused before anything opens.
		{"pstctl", []string{"keys", "rotate", "--database-url", "postgres://nobody@127.0.0.1:1/none"}, 2, "--reason"},
		{"pstctl", []string{"keys", "retire", "--reason", "   ", "1"}, 2, "--reason"},
		{"pstctl", []string{"audit", "query", "--format", "xml"}, 2, "--format"},
		{"pstctl", []string{"audit", "summary", "--from", "yesterday"}, 2, "--from"},
	} {
		code, out := run(c.bin, bare, c.args...)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("%s %s: exit %d, want %d; output lacks %q:\n%s", c.bin, strings.Join(c.args, " "), code, c.code, c.want, out)
		}
	}
}
