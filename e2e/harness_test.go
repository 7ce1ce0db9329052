package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"

	"github.com/pstd/pstd/internal/testenv"
)

// chromiumPath is Debian's Chromium; `make test` installs it.
const chromiumPath = "/usr/bin/chromium"

var binDir string

// TestMain builds pstd and pstctl once for the whole suite.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pstd-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	cmd := exec.Command("go", "build", "-o", dir+"/", "github.com/pstd/pstd/cmd/pstd", "github.com/pstd/pstd/cmd/pstctl")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// stack is a real pstd on real PostgreSQL and SoftHSM.
type stack struct {
	t     *testing.T
	env   []string
	dbURL string // the cluster's superuser, who owns the schema
	// serviceURL connects as a login member of pstd_service (set once the
	// database is migrated): pstd serve runs with the privileges the
	// migrations give the service, and no more.
	serviceURL string
	origin     string
	listen     string
	rp         string // the demo relying party's origin: another site
	cmd        *exec.Cmd
	logs       *syncBuffer
	stopped    chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func requireChromium(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("PSTD_TEST_REQUIRE") == "1" || os.Getenv("CI") == "true" {
			t.Fatalf("chromium not installed at %s (make test installs it)", chromiumPath)
		}
		t.Skip("chromium not installed; run make test")
	}
}

// newStack provisions a database and a token, runs `pstctl keys init` and
// starts `pstd serve --demo`.
func newStack(t *testing.T) *stack {
	t.Helper()
	requireChromium(t)
	return newStackOn(t, testenv.NewDatabase(t), testenv.NewToken(t))
}

// newStackOn is newStack on a given database and token, without Chromium.
func newStackOn(t *testing.T, dbURL string, tok testenv.Token) *stack {
	t.Helper()
	s := prepareStack(t, dbURL, tok)
	s.start()
	return s
}

// prepareStack migrates the database and provisions keys (pstctl), but
// starts no server.
func prepareStack(t *testing.T, dbURL string, tok testenv.Token) *stack {
	t.Helper()
	pinFile := filepath.Join(t.TempDir(), "pin")
	if err := os.WriteFile(pinFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port, rpPort := testenv.FreePort(t), testenv.FreePort(t)
	s := &stack{
		t:      t,
		dbURL:  dbURL,
		origin: fmt.Sprintf("http://localhost:%d", port),
		listen: fmt.Sprintf("127.0.0.1:%d", port),
		rp:     fmt.Sprintf("http://127.0.0.1:%d", rpPort),
		env: append(os.Environ(),
			"PSTD_DATABASE_URL="+dbURL,
			"PSTD_PKCS11_MODULE="+tok.Module,
			"PSTD_PKCS11_TOKEN_LABEL="+tok.Label,
			"PSTD_PKCS11_PIN_FILE="+pinFile,
			"SOFTHSM2_CONF="+tok.Conf,
			fmt.Sprintf("PSTD_ISSUER_ORIGIN=http://localhost:%d", port),
			fmt.Sprintf("PSTD_LISTEN=127.0.0.1:%d", port),
			fmt.Sprintf("PSTD_DEMO_RP_LISTEN=127.0.0.1:%d", rpPort),
			"PSTD_ACTOR=e2e@test",
			"PSTD_REASON=e2e test",
		),
	}
	s.pstctl("migrate")
	s.serviceURL = testenv.RoleURL(t, dbURL, "pstd_service")
	s.pstctl("keys", "init")
	return s
}

func (s *stack) pstctl(args ...string) string {
	s.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "pstctl"), args...)
	cmd.Env = s.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		s.t.Fatalf("pstctl %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String()
}

// start runs `pstd serve --demo` and waits until /readyz answers 200.
func (s *stack) start() {
	s.t.Helper()
	s.launch()
	s.waitReady(30 * time.Second)
}

// launch runs `pstd serve --demo` without waiting for readiness; the
// process is stopped when the test ends.
func (s *stack) launch() {
	s.t.Helper()
	s.logs = &syncBuffer{}
	s.cmd = exec.Command(filepath.Join(binDir, "pstd"), "serve", "--demo")
	s.cmd.Env = s.env
	if s.serviceURL != "" {
		// The last of duplicate variables wins.
		s.cmd.Env = append(append([]string{}, s.env...), "PSTD_DATABASE_URL="+s.serviceURL)
	}
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.stopped = make(chan struct{})
	go func() { s.cmd.Wait(); close(s.stopped) }()
	s.t.Cleanup(s.stop)
}

// waitReady waits until /readyz answers 200.
func (s *stack) waitReady(within time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + s.listen + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-s.stopped:
			s.t.Fatalf("pstd exited at start:\n%s", s.logs.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	s.t.Fatalf("pstd not ready after %v:\n%s", within, s.logs.String())
}

func (s *stack) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.stopped:
	case <-time.After(15 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.stopped
	}
	s.cmd = nil
}

// withConn runs fn on a connection to the stack's database as its owner.
func (s *stack) withConn(fn func(ctx context.Context, conn *pgx.Conn)) {
	s.t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.dbURL)
	if err != nil {
		s.t.Fatal(err)
	}
	defer conn.Close(ctx)
	fn(ctx, conn)
}

// count runs a single-value SQL query against the stack's database.
func (s *stack) count(sql string, args ...any) (n int) {
	s.t.Helper()
	s.withConn(func(ctx context.Context, conn *pgx.Conn) {
		if err := conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
			s.t.Fatalf("%s: %v", sql, err)
		}
	})
	return n
}

// column returns the one text column a query selects, row by row.
func (s *stack) column(sql string, args ...any) (out []string) {
	s.t.Helper()
	s.withConn(func(ctx context.Context, conn *pgx.Conn) {
		rows, _ := conn.Query(ctx, sql, args...)
		var err error
		if out, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			s.t.Fatalf("%s: %v", sql, err)
		}
	})
	return out
}

func (s *stack) redemptions() int { return s.count("SELECT count(*) FROM redemptions") }

// logLines returns pstd's JSON log lines that contain every one of substrs.
func (s *stack) logLines(substrs ...string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s.logs.String()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		ok := true
		for _, sub := range substrs {
			if !strings.Contains(line, sub) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// browser is one headless Chromium with its own profile.
type browser struct {
	ctx    context.Context
	cancel func()
	dir    string
}

// newBrowser starts Chromium with the given commitments switch value and
// profile directory (reuse the directory to keep tokens across restarts).
func newBrowser(t *testing.T, commitments, profile string) *browser {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", "new"),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1100, 900),
		chromedp.Flag("additional-private-state-token-key-commitments", commitments),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	b := &browser{ctx: ctx, dir: profile, cancel: func() { cancelTimeout(); cancelCtx(); cancelAlloc() }}
	t.Cleanup(b.cancel)
	if _, err := chromedp.Run(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return b
}

// close shuts Chromium down gracefully (Browser.close), so that it flushes
// its profile, and waits for it to exit.
func (b *browser) close(t *testing.T) {
	t.Helper()
	if err := chromedp.Cancel(b.ctx); err != nil {
		t.Logf("closing chromium: %v", err)
	}
	b.cancel()
}

func (b *browser) navigate(t *testing.T, url string) {
	t.Helper()
	if _, err := chromedp.Run(b.ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("navigate %s: %v", url, err)
	}
}

// eval runs an async JavaScript function body and decodes its result.
func eval[T any](t *testing.T, b *browser, body string) T {
	t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T]("(async () => {"+body+"})()", chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluate: %v", err)
	}
	return v
}

func chromiumVersion(t *testing.T) string {
	out, err := exec.Command(chromiumPath, "--version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

func getBody(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// waitLog waits up to 5 s for a log line containing every substring (the
// access log is written after the response).
func (s *stack) waitLog(substrs ...string) {
	s.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(s.logLines(substrs...)) == 0 {
		if time.Now().After(deadline) {
			s.t.Fatalf("pstd logged no line with %q", substrs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// metric returns the sum of a Prometheus metric's samples from /metrics.
func (s *stack) metric(name string) float64 {
	s.t.Helper()
	var sum float64
	for _, line := range strings.Split(string(getBody(s.t, "http://"+s.listen+"/metrics")), "\n") {
		if !strings.HasPrefix(line, name) || strings.HasPrefix(line, "#") {
			continue
		}
		rest := strings.TrimPrefix(line, name)
		if rest != "" && rest[0] != ' ' && rest[0] != '{' {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(rest[strings.LastIndex(rest, " ")+1:], &v); err == nil {
			sum += v
		}
	}
	return sum
}
