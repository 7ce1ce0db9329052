// Package testenv gives integration tests their real dependencies: a fresh
// PostgreSQL database on the throwaway cluster that `make test` starts, and a
// fresh SoftHSM2 token in a per-process token directory.
//
// `make test` (deploy/dev/testenv.sh) exports PSTD_TEST_DATABASE_URL (an admin
// connection string of a throwaway cluster) and PSTD_TEST_REQUIRE=1. Without
// PSTD_TEST_REQUIRE a test whose dependency is missing is skipped, so plain
// `go test ./...` on a laptop still runs the pure tests; with it (and in CI)
// a missing dependency is a failure, never a silent skip.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
)

// SoftHSMModule is the Debian path of SoftHSM2's PKCS#11 module.
const SoftHSMModule = "/usr/lib/softhsm/libsofthsm2.so"

func required() bool {
	return os.Getenv("PSTD_TEST_REQUIRE") == "1" || os.Getenv("CI") == "true"
}

func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if required() {
		t.Fatalf("integration dependency missing (run `make test`): "+format, args...)
	}
	t.Skipf("skipping integration test (run `make test` for the real stack): "+format, args...)
}

// RandomName returns prefix followed by 12 random hex digits.
func RandomName(prefix string) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return prefix + hex.EncodeToString(b)
}

// AdminDatabaseURL returns the throwaway cluster's admin URL or skips/fails.
func AdminDatabaseURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("PSTD_TEST_DATABASE_URL")
	if u == "" {
		missing(t, "PSTD_TEST_DATABASE_URL is not set")
	}
	return u
}

// NewDatabase creates an empty database on the throwaway cluster, drops it
// when the test ends, and returns its connection URL. Each test gets its own
// database so tests can run in parallel.
func NewDatabase(t testing.TB) string {
	t.Helper()
	admin := AdminDatabaseURL(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("connect to test cluster: %v", err)
	}
	defer conn.Close(ctx)
	name := RandomName("pstd_test_")
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), admin)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	return WithDatabase(t, admin, name)
}

// WithDatabase returns base with its database name replaced by name.
func WithDatabase(t testing.TB, base, name string) string {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse PSTD_TEST_DATABASE_URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// Token is a SoftHSM2 token made for one test.
type Token struct {
	Module string
	Label  string
	PIN    string
	SOPIN  string
	// Conf is the SOFTHSM2_CONF file; it is also set in this process's
	// environment (and so inherited by subprocesses).
	Conf string
}

var (
	hsmOnce sync.Once
	hsmDir  string
	hsmErr  error
)

// softhsmDir makes the one token directory of this test process and points
// SOFTHSM2_CONF at its configuration file, which softhsm/init-token.sh
// writes when it makes the first token. SoftHSM reads SOFTHSM2_CONF once,
// when the module is initialised, so every token of a process must live in
// the same directory.
func softhsmDir() (string, error) {
	hsmOnce.Do(func() {
		hsmDir, hsmErr = os.MkdirTemp("", "pstd-softhsm-")
		if hsmErr != nil {
			return
		}
		hsmErr = os.Setenv("SOFTHSM2_CONF", filepath.Join(hsmDir, "softhsm2.conf"))
	})
	return hsmDir, hsmErr
}

// initTokenMu serialises token creation within the process.
var initTokenMu sync.Mutex

// NewToken initialises a fresh SoftHSM2 token with a random label and PINs,
// by running softhsm/init-token.sh: the same provisioning as `make setup`,
// so a test failure there is a `make run` failure too. The token shares
// the process's token directory; its PINs are in a directory of its own.
func NewToken(t testing.TB) Token {
	t.Helper()
	if _, err := os.Stat(SoftHSMModule); err != nil {
		missing(t, "SoftHSM2 module %s not found", SoftHSMModule)
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		missing(t, "softhsm2-util not found")
	}
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := softhsmDir()
	if err != nil {
		t.Fatalf("softhsm token directory: %v", err)
	}
	label := RandomName("pstd-test-")
	pins := filepath.Join(dir, "pins", label)
	cmd := exec.Command(filepath.Join(root, "softhsm", "init-token.sh"), dir, label, pins)
	// softhsm2-util --init-token --free picks the first free slot: two at
	// once in one token directory can pick the same one. The tokens of one
	// test process share the directory, so they are made one at a time.
	initTokenMu.Lock()
	out, err := cmd.CombinedOutput()
	initTokenMu.Unlock()
	if err != nil {
		// The output never contains a PIN: neither the script nor
		// softhsm2-util prints one.
		t.Fatalf("softhsm/init-token.sh: %v: %s", err, strings.TrimSpace(string(out)))
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if got := os.Getenv("SOFTHSM2_CONF"); got != conf {
		t.Fatalf("SOFTHSM2_CONF is %q, want %q: a test changed it", got, conf)
	}
	tok := Token{
		Module: SoftHSMModule,
		Label:  label,
		PIN:    readPIN(t, filepath.Join(pins, "pin")),
		SOPIN:  readPIN(t, filepath.Join(pins, "so-pin")),
		Conf:   conf,
	}
	t.Cleanup(func() {
		del := exec.Command(util, "--delete-token", "--token", tok.Label)
		del.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
		_ = del.Run()
		_ = os.RemoveAll(pins)
	})
	return tok
}

// readPIN reads a PIN file that init-token.sh wrote, and checks that it is
// private to this user (0600), as the script promises.
func readPIN(t testing.TB, path string) string {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("PIN file: %v", err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("PIN file %s has mode %o, want 600", path, perm)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("PIN file: %v", err)
	}
	pin := strings.TrimSpace(string(b))
	if pin == "" {
		t.Fatalf("PIN file %s is empty", path)
	}
	return pin
}

// dir returns the token's directory in SoftHSM's token store: the one
// whose token.object names the (random, so unique) label.
func (tok Token) dir(t testing.TB) string {
	t.Helper()
	objs, err := filepath.Glob(filepath.Join(filepath.Dir(tok.Conf), "tokens", "*", "token.object"))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		b, err := os.ReadFile(o)
		if err == nil && strings.Contains(string(b), tok.Label) {
			return filepath.Dir(o)
		}
	}
	t.Fatalf("no SoftHSM token directory holds label %s", tok.Label)
	return ""
}

// Unplug takes the token away from every process using it, as an HSM
// partition going offline would: its directory leaves SoftHSM's token
// store, so its objects vanish from open sessions and a fresh C_Initialize
// finds no such token. Replug puts it back; the test's cleanup does too.
func (tok Token) Unplug(t testing.TB) {
	t.Helper()
	d := tok.dir(t)
	away := filepath.Join(filepath.Dir(tok.Conf), "unplugged-"+tok.Label)
	if err := os.Rename(d, away); err != nil {
		t.Fatalf("unplug token: %v", err)
	}
	t.Cleanup(func() {
		if _, err := os.Stat(away); err == nil {
			_ = os.Rename(away, d)
		}
	})
	unplugged.Store(tok.Label, d)
}

// Replug undoes Unplug.
func (tok Token) Replug(t testing.TB) {
	t.Helper()
	d, ok := unplugged.LoadAndDelete(tok.Label)
	if !ok {
		t.Fatalf("token %s is not unplugged", tok.Label)
	}
	away := filepath.Join(filepath.Dir(tok.Conf), "unplugged-"+tok.Label)
	if err := os.Rename(away, d.(string)); err != nil {
		t.Fatalf("replug token: %v", err)
	}
}

var unplugged sync.Map // label -> original directory

// Cluster is a private PostgreSQL cluster that a test may stop and start,
// made with deploy/dev/pg.sh (the same script as the development and test
// clusters). Use it only for tests that take the database away; the others
// share the `make test` cluster through NewDatabase.
type Cluster struct {
	// URL connects to the cluster's postgres database as superuser.
	URL  string
	dir  string
	port int
	pgsh string
}

// NewCluster starts a throwaway cluster on a free port; it is stopped and
// deleted when the test ends.
func NewCluster(t testing.TB) *Cluster {
	t.Helper()
	AdminDatabaseURL(t) // the same precondition as every database test
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pstd-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	// The postgres account must traverse it (pg.sh runs the server as it).
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	c := &Cluster{dir: dir, pgsh: filepath.Join(root, "deploy", "dev", "pg.sh")}
	t.Cleanup(func() {
		_ = exec.Command(c.pgsh, "stop", filepath.Join(c.dir, "pg")).Run()
		_ = os.RemoveAll(dir)
	})
	for attempt := 0; ; attempt++ {
		c.port = FreePort(t)
		err := c.run("start", strconv.Itoa(c.port), "--throwaway")
		if err == nil {
			break
		}
		if attempt == 3 {
			t.Fatalf("starting a private cluster: %v", err)
		}
	}
	c.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
	return c
}

// Stop shuts the cluster down (fast mode: open connections are cut).
func (c *Cluster) Stop(t testing.TB) {
	t.Helper()
	if err := c.run("stop"); err != nil {
		t.Fatalf("stopping the cluster: %v", err)
	}
}

// Start starts it again on the same port.
func (c *Cluster) Start(t testing.TB) {
	t.Helper()
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
}

// Restart is Start for a goroutine other than the test's: it returns the
// error instead of failing the test.
func (c *Cluster) Restart() error {
	if err := c.run("start", strconv.Itoa(c.port), "--throwaway"); err != nil {
		return fmt.Errorf("restarting the cluster: %w", err)
	}
	return nil
}

func (c *Cluster) run(args ...string) error {
	full := append([]string{args[0], filepath.Join(c.dir, "pg")}, args[1:]...)
	out, err := exec.Command(c.pgsh, full...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg.sh %s: %v: %s", strings.Join(full, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on now.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// repoRoot is the directory holding go.mod, found from the working
// directory (go test runs in the package's directory).
func repoRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		d = parent
	}
}
