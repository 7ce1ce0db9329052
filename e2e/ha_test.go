//go:build ha

package e2e

// The PostgreSQL failover test (docs/HA.md), run by `make test-ha` on the
// throwaway Patroni cluster that deploy/ha/cluster.sh starts: three
// PostgreSQL nodes in synchronous mode strict, reached by a multi-host URL
// with target_session_attrs=read-write. Behind the `ha` build tag, so plain
// `go test ./...` does not compile it.
//
// What must hold when the primary is killed (kill -9 of the postmaster and
// its processes, while commits are in flight that no standby has yet) in
// the middle of a redemption load on two pstd replicas:
//   - Patroni promotes the synchronous standby, and both replicas are ready
//     again on their own;
//   - every answer is a record (200) or a fail-closed 503: no other 5xx, no
//     dropped connection;
//   - no token whose record a client received redeems again (the double
//     spend a lost acknowledged commit would allow);
//   - every token refused with 503 during the switch redeems exactly once
//     afterwards, or is already spent (its commit reached the standby but
//     the acknowledgement was lost: the documented case);
//   - the database holds exactly one row per redeemed token.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pstd/pstd/httpapi"
	"github.com/pstd/pstd/internal/testenv"
	"github.com/pstd/pstd/signer/voprf"
)

// haCluster is the Patroni cluster deploy/ha/cluster.sh started.
type haCluster struct {
	t     *testing.T
	dbURL string   // multi-host, target_session_attrs=read-write
	apis  []string // Patroni REST API base URLs
	dir   string   // the cluster's directory: DIR/<member>/data
}

type haMember struct {
	Name  string `json:"name"`
	Role  string `json:"role"`
	State string `json:"state"`
	Port  int    `json:"port"`
	TL    int    `json:"timeline"`
}

func newHACluster(t *testing.T) *haCluster {
	t.Helper()
	c := &haCluster{
		t:     t,
		dbURL: os.Getenv("PSTD_TEST_HA_DATABASE_URL"),
		dir:   os.Getenv("PSTD_TEST_HA_DIR"),
	}
	if apis := os.Getenv("PSTD_TEST_HA_PATRONI"); apis != "" {
		c.apis = strings.Split(apis, ",")
	}
	if c.dbURL == "" || c.dir == "" || len(c.apis) == 0 {
		msg := "PSTD_TEST_HA_DATABASE_URL, PSTD_TEST_HA_PATRONI and PSTD_TEST_HA_DIR are not set: run `make test-ha`"
		if os.Getenv("PSTD_TEST_REQUIRE") == "1" || os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if !strings.Contains(c.dbURL, "target_session_attrs=read-write") || strings.Count(c.dbURL, ",") < 2 {
		t.Fatalf("PSTD_TEST_HA_DATABASE_URL %q is not a multi-host read-write URL", c.dbURL)
	}
	return c
}

var patroniClient = &http.Client{Timeout: 2 * time.Second}

// members is Patroni's /cluster from the first REST API that answers.
func (c *haCluster) members() ([]haMember, error) {
	var last error
	for _, base := range c.apis {
		resp, err := patroniClient.Get(base + "/cluster")
		if err != nil {
			last = err
			continue
		}
		var doc struct {
			Members []haMember `json:"members"`
		}
		err = json.NewDecoder(resp.Body).Decode(&doc)
		resp.Body.Close()
		if err != nil {
			last = err
			continue
		}
		return doc.Members, nil
	}
	return nil, fmt.Errorf("no Patroni REST API answered: %v", last)
}

func (c *haCluster) describe() string {
	ms, err := c.members()
	if err != nil {
		return err.Error()
	}
	var parts []string
	for _, m := range ms {
		parts = append(parts, fmt.Sprintf("%s %s %s tl%d", m.Name, m.Role, m.State, m.TL))
	}
	return strings.Join(parts, ", ")
}

// roles returns the running leader and the synchronous standby.
func (c *haCluster) roles() (leader, standby haMember, ok bool) {
	ms, err := c.members()
	if err != nil {
		return
	}
	for _, m := range ms {
		switch {
		case m.Role == "leader" && m.State == "running":
			leader = m
		case m.Role == "sync_standby" && (m.State == "running" || m.State == "streaming"):
			standby = m
		}
	}
	return leader, standby, leader.Name != "" && standby.Name != ""
}

// postmasterPID reads a member's postmaster.pid (first line: the pid).
func (c *haCluster) postmasterPID(member string) int {
	c.t.Helper()
	f, err := os.Open(filepath.Join(c.dir, member, "data", "postmaster.pid"))
	if err != nil {
		c.t.Fatalf("primary %s: %v", member, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		c.t.Fatalf("primary %s: empty postmaster.pid", member)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
	if err != nil || pid <= 1 {
		c.t.Fatalf("primary %s: postmaster.pid starts with %q", member, sc.Text())
	}
	return pid
}

// newDatabase creates a database for one test on the cluster, through the
// multi-host URL (so on the primary), drops it when the test ends, and
// returns the multi-host URL naming it.
func (c *haCluster) newDatabase() string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.dbURL)
	if err != nil {
		c.t.Fatalf("connecting to the primary: %v", err)
	}
	defer conn.Close(context.Background())
	name := testenv.RandomName("pstd_ha_")
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		c.t.Fatalf("create database: %v", err)
	}
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if conn, err := pgx.Connect(ctx, c.dbURL); err == nil {
			_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			conn.Close(context.Background())
		}
	})
	// pgx gives up on a multi-host URL at the first host that answers
	// "database does not exist" (SQLSTATE 3D000) instead of trying the
	// next, so wait until every standby has replayed the creation.
	deadline := time.Now().Add(60 * time.Second)
	for {
		// (A member still starting, say rewinding after a failover,
		// refuses connections, and pgx tries the next host.)
		ms, err := c.members()
		have, running := 0, 0
		for _, m := range ms {
			if m.State != "running" && m.State != "streaming" {
				continue
			}
			running++
			if ok, err := memberValue[bool](m, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = '"+name+"')"); err == nil && ok {
				have++
			}
		}
		if err == nil && have == running && have >= 2 {
			break
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("database %s on %d of the %d running members after 60 s: %s", name, have, running, c.describe())
		}
		time.Sleep(100 * time.Millisecond)
	}
	u := testenv.WithDatabase(c.t, c.dbURL, name)
	if !strings.Contains(u, "/"+name+"?") || !strings.Contains(u, "target_session_attrs=read-write") || strings.Count(u, ",") < 2 {
		c.t.Fatalf("database URL %q lost its hosts or parameters", u)
	}
	return u
}

// config is Patroni's dynamic configuration (GET /config).
func (c *haCluster) config() (map[string]any, error) {
	var last error
	for _, base := range c.apis {
		resp, err := patroniClient.Get(base + "/config")
		if err != nil {
			last = err
			continue
		}
		var cfg map[string]any
		err = json.NewDecoder(resp.Body).Decode(&cfg)
		resp.Body.Close()
		if err == nil {
			return cfg, nil
		}
		last = err
	}
	return nil, fmt.Errorf("no Patroni REST API answered /config: %v", last)
}

// patchConfig changes Patroni's dynamic configuration (PATCH /config).
func (c *haCluster) patchConfig(patch string) error {
	var last error
	for _, base := range c.apis {
		req, _ := http.NewRequest(http.MethodPatch, base+"/config", strings.NewReader(patch))
		resp, err := patroniClient.Do(req)
		if err != nil {
			last = err
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		last = fmt.Errorf("PATCH /config: %s", resp.Status)
	}
	return last
}

// memberValue runs a single-value query on one member, directly (not
// through the multi-host URL).
func memberValue[T any](m haMember, sql string) (T, error) {
	var v T
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", m.Port))
	if err != nil {
		return v, fmt.Errorf("connecting to %s: %w", m.Name, err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(ctx, sql).Scan(&v); err != nil {
		return v, fmt.Errorf("%s on %s: %w", sql, m.Name, err)
	}
	return v, nil
}

// memberQuery is memberValue that fails the test on an error.
func memberQuery[T any](t *testing.T, m haMember, sql string) T {
	t.Helper()
	v, err := memberValue[T](m, sql)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// requireNoLossConfig checks the settings docs/HA.md says the guarantee
// rests on, in Patroni's configuration and on the running primary.
func (c *haCluster) requireNoLossConfig(leader haMember) {
	c.t.Helper()
	cfg, err := c.config()
	if err != nil {
		c.t.Fatal(err)
	}
	for k, want := range map[string]any{"synchronous_mode": true, "synchronous_mode_strict": true, "primary_start_timeout": float64(0)} {
		if cfg[k] != want {
			c.t.Fatalf("Patroni %s = %v, want %v", k, cfg[k], want)
		}
	}
	if v := memberQuery[string](c.t, leader, "SHOW synchronous_standby_names"); v == "" {
		c.t.Fatalf("primary %s has no synchronous_standby_names", leader.Name)
	}
	if v := memberQuery[string](c.t, leader, "SHOW synchronous_commit"); v != "on" && v != "remote_apply" {
		c.t.Fatalf("primary %s: synchronous_commit = %s", leader.Name, v)
	}
}

// children returns the pids whose parent is pid.
func children(pid int) []int {
	var out []int
	stats, _ := filepath.Glob("/proc/[0-9]*/status")
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // gone meanwhile
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "PPid:"); ok {
				if pp, _ := strconv.Atoi(strings.TrimSpace(v)); pp == pid {
					n, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
					out = append(out, n)
				}
				break
			}
		}
	}
	return out
}

// haAttempt is one redemption request of the load.
type haAttempt struct {
	tok        int // index into the token list
	replica    int
	status     int
	record     string
	problem    string
	err        error
	start, end time.Time
}

// readiness follows one replica's /readyz from the kill on.
type readiness struct {
	down    time.Time // first non-200 after the kill
	readyAt time.Time // first 200 after down
	firstOK time.Time // first record of a request sent after the kill
	reason  string    // the detail of the last 503 before readyAt
}

// haFigures is what one failover run measured.
type haFigures struct {
	killed, standby, promoted string
	promotion                 time.Duration
	frozenFor                 time.Duration // replication held back before the kill
	inFlight                  int           // redemptions under way at the kill
	syncWaiting               int           // of them, commits waiting for the synchronous standby
	unflushed                 int64         // bytes of WAL the primary had and no standby had flushed
	before, after, afterReady int           // records received before/after the kill, after both ready
	summary                   string        // answers under load by status
	refused, late, ackLost    int           // 503s; of them redeemed afterwards; already spent
	replayed, doubleSpends    int
	ready                     []readiness
	killedAt                  time.Time
}

func (f *haFigures) lines() []string {
	out := []string{
		fmt.Sprintf("  primary %s killed (postmaster and its processes, kill -9) after its WAL senders were held for %v", f.killed, f.frozenFor.Round(time.Millisecond)),
		fmt.Sprintf("  at the kill: %d redemptions in flight, %d commits waiting for the synchronous standby, %d bytes of WAL on no standby", f.inFlight, f.syncWaiting, f.unflushed),
		fmt.Sprintf("  synchronous standby before the kill: %s; promoted: %s, %v after the kill", f.standby, f.promoted, f.promotion.Round(time.Millisecond)),
		fmt.Sprintf("  tokens redeemed before the kill: %d; after it: %d (%d once both replicas were ready again)", f.before, f.after, f.afterReady),
		fmt.Sprintf("  answers under load: %s", f.summary),
		fmt.Sprintf("  refused with 503: %d; of them redeemed once afterwards: %d; already spent (acknowledgement lost): %d", f.refused, f.late, f.ackLost),
		fmt.Sprintf("  records replayed: %d; double spends found: %d", f.replayed, f.doubleSpends),
	}
	for r, rd := range f.ready {
		first := "none"
		if !rd.firstOK.IsZero() {
			first = rd.firstOK.Sub(f.killedAt).Round(time.Millisecond).String()
		}
		if rd.readyAt.IsZero() {
			out = append(out, fmt.Sprintf("  replica %d: /readyz never failed; first record after the kill at %s", r, first))
		} else {
			out = append(out, fmt.Sprintf("  replica %d: /readyz 503 from %v, ready again %v after the kill (last 503: %q); first record after the kill at %s", r,
				rd.down.Sub(f.killedAt).Round(time.Millisecond), rd.readyAt.Sub(f.killedAt).Round(time.Millisecond), rd.reason, first))
		}
	}
	return out
}

// TestPatroniFailover: the failover of issue 14 on the cluster as
// deploy/ha/cluster.sh configures it (synchronous mode strict). No token
// whose record a client received may redeem again.
func TestPatroniFailover(t *testing.T) {
	testStart := time.Now()
	c := newHACluster(t)
	leader, _, ok := c.roles()
	if !ok {
		t.Fatalf("cluster not healthy before the test: %s", c.describe())
	}
	c.requireNoLossConfig(leader)
	f := runFailover(t, c, true)
	lines := append([]string{"HA failover figures (two pstd replicas under a redemption load):"}, f.lines()...)
	lines = append(lines, fmt.Sprintf("  cluster afterwards: %s", c.describe()))
	lines = append(lines, fmt.Sprintf("  test duration: %v", time.Since(testStart).Round(time.Second)))
	t.Log(strings.Join(lines, "\n"))
	if f.doubleSpends != 0 {
		t.Fatalf("%d double spends", f.doubleSpends)
	}
}

// TestPatroniFailoverAsyncControl is the negative control, which `make
// test-ha` runs after TestPatroniFailover (PSTD_TEST_HA_CONTROL=1): the
// same failover with Patroni's synchronous mode switched off must lose
// acknowledged redemptions, which the replay finds as double spends. It
// shows that TestPatroniFailover's replay can fail, and why the
// synchronous settings of docs/HA.md are required.
func TestPatroniFailoverAsyncControl(t *testing.T) {
	if os.Getenv("PSTD_TEST_HA_CONTROL") != "1" {
		t.Skip("negative control: set PSTD_TEST_HA_CONTROL=1 (it switches the test cluster to asynchronous replication)")
	}
	c := newHACluster(t)
	if err := c.patchConfig(`{"synchronous_mode": false, "synchronous_mode_strict": false}`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.patchConfig(`{"synchronous_mode": true, "synchronous_mode_strict": true}`)
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		ms, err := c.members()
		if err == nil {
			async, sync := 0, 0
			var leader haMember
			for _, m := range ms {
				switch {
				case m.Role == "replica" && (m.State == "running" || m.State == "streaming"):
					async++
				case m.Role == "sync_standby":
					sync++
				case m.Role == "leader" && m.State == "running":
					leader = m
				}
			}
			if async >= 1 && sync == 0 && leader.Name != "" {
				if v, err := memberValue[string](leader, "SHOW synchronous_standby_names"); err == nil && v == "" {
					break
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster not asynchronous after 60 s: %s", c.describe())
		}
		time.Sleep(200 * time.Millisecond)
	}
	f := runFailover(t, c, false)
	t.Log(strings.Join(append([]string{"negative control, asynchronous replication:"}, f.lines()...), "\n"))
	if f.doubleSpends == 0 {
		t.Fatalf("asynchronous replication lost no acknowledged redemption: the failover test cannot tell safe settings from unsafe ones")
	}
}

// runFailover starts two pstd replicas on the cluster, redeems under load,
// holds the primary's replication back for a moment (so that commits are
// in flight that no standby has), kills the primary, and checks and
// measures what follows. With wantSync the synchronous standby must be
// the one promoted, and double spends are errors; without, they are only
// counted (the negative control).
func runFailover(t *testing.T, c *haCluster, wantSync bool) *haFigures {
	f := &haFigures{}
	leader, standby, _ := c.roles()
	if leader.Name == "" {
		t.Fatalf("no leader: %s", c.describe())
	}
	f.killed, f.standby = leader.Name, standby.Name

	// Two replicas on a fresh database and token, one issuer origin.
	dbURL := c.newDatabase()
	tok := testenv.NewToken(t)
	a := prepareStack(t, dbURL, tok)
	// No per-address limit on either replica: the load client issues
	// hundreds of tokens from 127.0.0.1 within a minute (the default allows
	// 30 batches), and a refusal there would be the test's, not the
	// failover's.
	a.env = append(a.env, "PSTD_RATE_LIMIT=0")
	b := &stack{t: t, dbURL: dbURL, origin: a.origin}
	b.listen = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	b.env = append(append([]string{}, a.env...), "PSTD_LISTEN="+b.listen,
		fmt.Sprintf("PSTD_DEMO_RP_LISTEN=127.0.0.1:%d", testenv.FreePort(t))) // each replica its own demo listener
	a.start()
	b.start()
	replicas := []*stack{a, b}

	// Tokens for the redemptions before the switch and the 503s during it
	// (each worker pauses after one); those for after the switch are
	// issued once a replica is ready again. Workers that run out wait.
	const wantBefore, wantAfter = 150, 150
	issueStart := time.Now()
	tokens := a.issueTokens(wantBefore + 350)
	t.Logf("cluster: %s; issued %d tokens in %v", c.describe(), len(tokens), time.Since(issueStart).Round(time.Millisecond))

	var (
		mu       sync.Mutex
		attempts []haAttempt
		inFlight = map[int]time.Time{} // token -> start
		next     int
	)
	okSince := func(since time.Time) int { // 200s that ended at or after since
		n := 0
		for _, at := range attempts {
			if at.status == http.StatusOK && !at.end.Before(since) {
				n++
			}
		}
		return n
	}
	ctx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	var wg sync.WaitGroup
	const workers = 6
	for w := range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				mu.Lock()
				if next == len(tokens) {
					mu.Unlock()
					time.Sleep(20 * time.Millisecond)
					continue
				}
				i := next
				next++
				at := haAttempt{tok: i, replica: (i + w) % 2, start: time.Now()}
				inFlight[i] = at.start
				mu.Unlock()
				mu.Lock()
				tok := tokens[i]
				mu.Unlock()
				o := replicas[at.replica].redeemToken(tok)
				at.end = time.Now()
				at.status, at.record, at.problem, at.err = o.status, o.token, o.problem, o.err
				mu.Lock()
				delete(inFlight, i)
				attempts = append(attempts, at)
				mu.Unlock()
				if o.status != http.StatusOK {
					// Fail-closed answers come at once: do not burn the
					// token supply while the database is switching.
					time.Sleep(200 * time.Millisecond)
				}
			}
		})
	}
	// waitFor polls cond (under mu) until it holds or the deadline passes.
	waitFor := func(what string, within time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			mu.Lock()
			done, exhausted := cond(), next == len(tokens)
			mu.Unlock()
			if done {
				return
			}
			if time.Now().After(deadline) {
				stopLoad()
				wg.Wait()
				t.Fatalf("%s: not within %v (%s; tokens left: %t; cluster: %s)", what, within, summarize(attempts), !exhausted, c.describe())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	waitFor("redemptions before the failover", 2*time.Minute, func() bool { return okSince(time.Time{}) >= wantBefore })

	// Watch both replicas' readiness; what counts starts at the kill.
	f.ready = make([]readiness, len(replicas))
	var watchers sync.WaitGroup
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	for i, s := range replicas {
		watchers.Go(func() {
			for watchCtx.Err() == nil {
				o := s.readyz()
				now := time.Now()
				mu.Lock()
				switch {
				case f.killedAt.IsZero() || now.Before(f.killedAt):
				case o.status != http.StatusOK:
					if f.ready[i].down.IsZero() {
						f.ready[i].down = now
					}
					f.ready[i].reason = o.detail
				case o.status == http.StatusOK && !f.ready[i].down.IsZero():
					f.ready[i].readyAt = now
					mu.Unlock()
					return
				}
				mu.Unlock()
				time.Sleep(50 * time.Millisecond)
			}
		})
	}

	// Hold the primary's replication back (SIGSTOP its WAL senders): from
	// now on no standby receives anything, so commits are in flight that
	// only the primary has. Under synchronous replication they wait for the
	// standby and no record leaves pstd; under asynchronous replication
	// they are acknowledged. Then the whole primary dies: postmaster first
	// (so it restarts nothing), then its processes, WAL senders included.
	pm := c.postmasterPID(leader.Name)
	procs := children(pm) // its processes; after its death they are reparented
	walSenders := memberQuery[[]int32](t, leader, "SELECT coalesce(array_agg(pid), '{}') FROM pg_stat_replication")
	if len(walSenders) == 0 || (wantSync && len(walSenders) < 2) {
		t.Fatalf("primary %s has %d WAL senders, want one per standby", leader.Name, len(walSenders))
	}
	killed := false
	defer func() {
		if !killed { // the test failed before the kill: let replication go on
			for _, p := range walSenders {
				_ = syscall.Kill(int(p), syscall.SIGCONT)
			}
		}
	}()
	for _, p := range walSenders {
		if !slices.Contains(procs, int(p)) {
			t.Fatalf("WAL sender %d is not a child of the postmaster %d", p, pm)
		}
		if err := syscall.Kill(int(p), syscall.SIGSTOP); err != nil {
			t.Fatalf("SIGSTOP WAL sender %d: %v", p, err)
		}
	}
	frozenAt := time.Now()
	mu.Lock()
	startedBefore := next
	mu.Unlock()
	// Hold until a dozen redemptions have started since (asynchronous:
	// they complete) or for 2 s (synchronous: every worker waits on a
	// commit, so no more start). Then the kill must find commits in
	// flight: backends waiting for the synchronous standby, or WAL that no
	// standby has flushed.
	holdUntil := frozenAt.Add(2 * time.Second)
	for {
		mu.Lock()
		started := next - startedBefore
		mu.Unlock()
		if started >= 2*workers || time.Now().After(holdUntil) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	const inFlightSQL = `SELECT (SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep')::text || ' ' ||
		coalesce((SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)) FROM pg_stat_replication), 0)::bigint::text`
	deadline := time.Now().Add(10 * time.Second)
	for {
		var waiting, unflushed int64
		v := memberQuery[string](t, leader, inFlightSQL)
		if _, err := fmt.Sscan(v, &waiting, &unflushed); err != nil {
			t.Fatalf("%q: %v", v, err)
		}
		if waiting > 0 || unflushed > 0 {
			f.syncWaiting, f.unflushed = int(waiting), unflushed
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no commit in flight on the primary %v after holding its replication", time.Since(frozenAt).Round(time.Millisecond))
		}
		time.Sleep(50 * time.Millisecond)
	}

	mu.Lock()
	f.killedAt = time.Now()
	f.frozenFor = f.killedAt.Sub(frozenAt)
	f.inFlight = len(inFlight)
	if err := syscall.Kill(pm, syscall.SIGKILL); err != nil {
		mu.Unlock()
		t.Fatalf("kill -9 %d (postmaster of %s): %v", pm, leader.Name, err)
	}
	killed = true
	mu.Unlock()
	// Its processes as listed before the kill (a pid reused in these
	// microseconds is the risk taken) plus any it started since.
	procs = append(procs, children(pm)...)
	for _, p := range procs {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	t.Logf("killed the primary %s (postmaster %d) with %d redemptions in flight; synchronous standby was %q", leader.Name, pm, f.inFlight, standby.Name)

	// Patroni must promote a standby, not restart the old primary in place;
	// in synchronous mode, the synchronous standby.
	var promotedAt time.Time
	deadline = time.Now().Add(90 * time.Second)
	for {
		if l, _, _ := c.roles(); l.Name != "" && l.Name != leader.Name {
			promotedAt, f.promoted = time.Now(), l.Name
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new primary 90 s after the kill: %s", c.describe())
		}
		time.Sleep(100 * time.Millisecond)
	}
	f.promotion = promotedAt.Sub(f.killedAt)
	if wantSync && f.promoted != standby.Name {
		t.Fatalf("Patroni promoted %s, not the synchronous standby %s", f.promoted, standby.Name)
	}
	t.Logf("%s promoted %v after the kill", f.promoted, f.promotion.Round(time.Millisecond))

	// Tokens for after the switch, from whichever replica issues first.
	var more []voprf.Token
	deadline = time.Now().Add(90 * time.Second)
	for len(more) < wantAfter+50 {
		got := false
		for _, s := range replicas {
			if s.readyz().status != http.StatusOK {
				continue
			}
			_, keys, err := voprf.ParseCommitment(getBody(t, "http://"+s.listen+"/.well-known/private-state-token/key-commitment"))
			if err != nil {
				t.Fatal(err)
			}
			if o, toks := s.issueOnce(keys, 10); o.status == http.StatusOK {
				more = append(more, toks...)
				got = true
			} else if o.status != http.StatusServiceUnavailable {
				t.Fatalf("issuance after the switch: %+v", o)
			}
		}
		if !got {
			if time.Now().After(deadline) {
				t.Fatalf("no replica issues tokens 90 s after the promotion: %s", c.describe())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	mu.Lock()
	tokens = append(tokens, more...)
	mu.Unlock()

	// Both replicas ready again (or never unready and redeeming through the
	// new primary), then wantAfter more records.
	firstOKAfterKill := func(r int) time.Time {
		var first time.Time
		for _, at := range attempts {
			if at.replica == r && at.status == http.StatusOK && at.start.After(f.killedAt) && (first.IsZero() || at.end.Before(first)) {
				first = at.end
			}
		}
		return first
	}
	waitFor("both replicas ready again after the failover", 90*time.Second, func() bool {
		for r := range replicas {
			if f.ready[r].readyAt.IsZero() && !(f.ready[r].down.IsZero() && !firstOKAfterKill(r).IsZero()) {
				return false
			}
		}
		return true
	})
	stopWatch()
	watchers.Wait()
	var bothReady time.Time
	for r := range replicas {
		at := f.ready[r].readyAt
		if at.IsZero() {
			at = firstOKAfterKill(r)
		}
		if at.After(bothReady) {
			bothReady = at
		}
	}
	waitFor("redemptions after the failover", 2*time.Minute, func() bool { return okSince(bothReady) >= wantAfter })
	stopLoad()
	wg.Wait()
	for r := range replicas {
		f.ready[r].firstOK = firstOKAfterKill(r)
	}

	// Every answer under load: a record, or a fail-closed 503.
	var (
		records []string
		spent   []int // tokens whose record a client received
		refused []int // tokens refused with 503
	)
	for _, at := range attempts {
		switch {
		case at.err != nil:
			t.Errorf("token %d at replica %d: transport error %v", at.tok, at.replica, at.err)
		case at.status == http.StatusOK && at.record != "":
			records = append(records, at.record)
			spent = append(spent, at.tok)
			if at.end.Before(f.killedAt) {
				f.before++
			} else {
				f.after++
			}
		case at.status == http.StatusServiceUnavailable && at.record == "" && at.problem == httpapi.ProblemTypePrefix+"unavailable":
			refused = append(refused, at.tok)
		default:
			t.Errorf("token %d at replica %d: status %d problem %q record %t; want 200 with a record or 503 unavailable",
				at.tok, at.replica, at.status, at.problem, at.record != "")
		}
	}
	f.afterReady = okSince(bothReady)
	f.summary = summarize(attempts)
	f.refused = len(refused)
	if t.Failed() {
		t.FailNow()
	}
	for _, s := range replicas {
		s.assertRunning()
		s.waitReady(60 * time.Second)
	}
	report := t.Errorf
	if !wantSync {
		report = t.Logf
	}

	// Replay every token whose record a client received, at the other
	// replica than the one that redeemed it: none may redeem again.
	replica := map[int]int{}
	for _, at := range attempts {
		replica[at.tok] = at.replica
	}
	for _, i := range spent {
		f.replayed++
		o := replicas[1-replica[i]].redeemToken(tokens[i])
		switch {
		case o.status == http.StatusConflict && o.problem == httpapi.ProblemTypePrefix+"already-redeemed" && o.token == "":
		case o.status == http.StatusOK:
			f.doubleSpends++
			if wantSync || f.doubleSpends <= 3 {
				report("DOUBLE SPEND: token %d, whose record a client received, redeemed again after the failover", i)
			}
		default:
			t.Errorf("replaying token %d: %+v, want 409 already-redeemed", i, o)
		}
	}

	// Every token refused during the switch: redeems exactly once now, or
	// was already spent with its acknowledgement lost.
	for _, i := range refused {
		o := replicas[replica[i]].redeemToken(tokens[i])
		switch {
		case o.status == http.StatusOK && o.token != "":
			records = append(records, o.token)
			f.late++
			if o2 := replicas[1-replica[i]].redeemToken(tokens[i]); o2.status != http.StatusConflict {
				t.Errorf("token %d redeemed after the switch, then again: %+v", i, o2)
				if o2.status == http.StatusOK {
					f.doubleSpends++
				}
			}
		case o.status == http.StatusConflict && o.problem == httpapi.ProblemTypePrefix+"already-redeemed":
			f.ackLost++
		default:
			t.Errorf("redeeming token %d, refused during the switch: %+v", i, o)
		}
	}

	// The database: one row per record handed out and not lost, plus one
	// per lost acknowledgement, and nothing else.
	ids := a.verifyRecords(records)
	rows := haRecordIDs(t, dbURL)
	missing := 0
	for _, id := range ids {
		switch rows[id] {
		case 1:
		case 0:
			missing++
		default:
			t.Errorf("record %s has %d rows", id, rows[id])
		}
	}
	if missing != f.doubleSpends {
		report("%d records handed out have no row in the database", missing)
	}
	total := 0
	for _, n := range rows {
		total += n
	}
	if want := len(ids) - missing + f.ackLost + f.doubleSpends; total != want {
		t.Errorf("%d redemption rows, want %d (records %d, of them lost %d, lost acknowledgements %d, double spends %d)",
			total, want, len(ids), missing, f.ackLost, f.doubleSpends)
	}
	for _, s := range replicas {
		s.assertNo500()
		s.assertRunning()
	}
	return f
}

// summarize counts the load's answers by status.
func summarize(attempts []haAttempt) string {
	counts := map[string]int{}
	for _, at := range attempts {
		k := strconv.Itoa(at.status)
		if at.err != nil {
			k = "transport error"
		}
		counts[k]++
	}
	var parts []string
	for _, k := range []string{"200", "503", "transport error"} {
		if counts[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s: %d", k, counts[k]))
			delete(counts, k)
		}
	}
	for k, n := range counts {
		parts = append(parts, fmt.Sprintf("%s: %d", k, n))
	}
	return strings.Join(parts, ", ")
}

// haRecordIDs counts the redemption rows per record id on the primary.
func haRecordIDs(t *testing.T, dbURL string) map[string]int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT record_id, count(*) FROM redemptions GROUP BY record_id`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		out[id] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
