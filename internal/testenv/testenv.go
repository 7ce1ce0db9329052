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
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
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
	hsmConf string
	hsmErr  error
)

// softhsmConf creates one token directory and configuration file for the
// whole test process. SoftHSM reads SOFTHSM2_CONF once, when the module is
// initialised, so every token of a process must live in the same directory.
func softhsmConf() (string, error) {
	hsmOnce.Do(func() {
		if existing := os.Getenv("SOFTHSM2_CONF"); existing != "" && os.Getenv("PSTD_TEST_KEEP_SOFTHSM2_CONF") == "1" {
			hsmConf = existing
			return
		}
		dir, err := os.MkdirTemp("", "pstd-softhsm-")
		if err != nil {
			hsmErr = err
			return
		}
		tokens := filepath.Join(dir, "tokens")
		if err := os.MkdirAll(tokens, 0o700); err != nil {
			hsmErr = err
			return
		}
		conf := filepath.Join(dir, "softhsm2.conf")
		body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			hsmErr = err
			return
		}
		hsmConf = conf
		hsmErr = os.Setenv("SOFTHSM2_CONF", conf)
	})
	return hsmConf, hsmErr
}

// NewToken initialises a fresh SoftHSM2 token with a random label and PIN.
func NewToken(t testing.TB) Token {
	t.Helper()
	if _, err := os.Stat(SoftHSMModule); err != nil {
		missing(t, "SoftHSM2 module %s not found", SoftHSMModule)
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		missing(t, "softhsm2-util not found")
	}
	conf, err := softhsmConf()
	if err != nil {
		t.Fatalf("softhsm configuration: %v", err)
	}
	tok := Token{
		Module: SoftHSMModule,
		Label:  RandomName("pstd-test-"),
		PIN:    RandomName(""),
		SOPIN:  RandomName(""),
		Conf:   conf,
	}
	cmd := exec.Command(util, "--init-token", "--free", "--label", tok.Label, "--pin", tok.PIN, "--so-pin", tok.SOPIN)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		// The output never contains the PIN: softhsm2-util does not echo it.
		t.Fatalf("softhsm2-util --init-token: %v: %s", err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		del := exec.Command(util, "--delete-token", "--token", tok.Label)
		del.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
		_ = del.Run()
	})
	return tok
}
