//go:build ha

package e2e

// The PostgreSQL failover test (docs/HA.md), run by `make test-ha` on the
// throwaway Patroni cluster that deploy/ha/cluster.sh starts: three
// PostgreSQL nodes in synchronous mode strict, reached by a multi-host URL
// with target_session_attrs=read-write. Behind the `ha` build tag, so plain
// `go test ./...` does not compile it.
//
// What must hold when the primary's postmaster is killed (kill -9) in the
// middle of a redemption load on two pstd replicas:
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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pstd/pstd/httpapi"
	"github.com/pstd/pstd/internal/testenv"
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
}

func TestPatroniFailover(t *testing.T) {
	testStart := time.Now()
	c := newHACluster(t)
	leader, standby, ok := c.roles()
	if !ok {
		t.Fatalf("cluster not healthy before the test: %s", c.describe())
	}

	// Two replicas on the same database and token, one issuer origin.
	tok := testenv.NewToken(t)
	a := prepareStack(t, c.dbURL, tok)
	b := &stack{t: t, dbURL: c.dbURL, origin: a.origin}
	portB := freePort(t)
	b.listen = fmt.Sprintf("127.0.0.1:%d", portB)
	b.env = append(append([]string{}, a.env...), "PSTD_LISTEN="+b.listen)
	a.start()
	b.start()
	replicas := []*stack{a, b}

	// Tokens: enough for a few hundred redemptions before and after the
	// switch and for the 503s in between (each worker pauses after one).
	const nTokens = 2000
	tokens := a.issueTokens(nTokens)
	t.Logf("cluster: %s; issued %d tokens", c.describe(), len(tokens))

	var (
		mu       sync.Mutex
		attempts []haAttempt
		killedAt time.Time // zero until the kill
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
					return
				}
				i := next
				next++
				mu.Unlock()
				r := (i + w) % 2
				at := haAttempt{tok: i, replica: r, start: time.Now()}
				o := replicas[r].redeemToken(tokens[i])
				at.end = time.Now()
				at.status, at.record, at.problem, at.err = o.status, o.token, o.problem, o.err
				mu.Lock()
				attempts = append(attempts, at)
				mu.Unlock()
				if o.status != http.StatusOK {
					// Fail-closed answers come at once: do not burn the
					// token supply while the database is switching.
					time.Sleep(100 * time.Millisecond)
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
			if exhausted {
				stopLoad()
				wg.Wait()
				t.Fatalf("ran out of tokens waiting for %s (%s)", what, summarize(attempts))
			}
			if time.Now().After(deadline) {
				stopLoad()
				wg.Wait()
				t.Fatalf("%s: not within %v (%s; cluster: %s)", what, within, summarize(attempts), c.describe())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	const wantBefore, wantAfter = 150, 150
	waitFor("redemptions before the failover", 2*time.Minute, func() bool { return okSince(time.Time{}) >= wantBefore })

	// Watch both replicas' readiness from the kill on.
	ready := make([]readiness, len(replicas))
	var watchers sync.WaitGroup
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	pid := c.postmasterPID(leader.Name)
	mu.Lock()
	killedAt = time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		mu.Unlock()
		t.Fatalf("kill -9 %d (postmaster of %s): %v", pid, leader.Name, err)
	}
	mu.Unlock()
	t.Logf("killed the postmaster (pid %d) of the primary %s; synchronous standby was %s", pid, leader.Name, standby.Name)
	for i, s := range replicas {
		watchers.Go(func() {
			for watchCtx.Err() == nil {
				o := s.readyz()
				now := time.Now()
				mu.Lock()
				switch {
				case o.status != http.StatusOK && ready[i].down.IsZero():
					ready[i].down = now
				case o.status == http.StatusOK && !ready[i].down.IsZero():
					ready[i].readyAt = now
					mu.Unlock()
					return
				}
				mu.Unlock()
				time.Sleep(50 * time.Millisecond)
			}
		})
	}

	// Patroni must promote the synchronous standby, not restart the old
	// primary in place.
	var promotedAt time.Time
	var newLeader haMember
	deadline := time.Now().Add(90 * time.Second)
	for {
		if l, _, _ := c.roles(); l.Name != "" && l.Name != leader.Name {
			promotedAt, newLeader = time.Now(), l
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new primary 90 s after the kill: %s", c.describe())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if newLeader.Name != standby.Name {
		t.Fatalf("Patroni promoted %s, not the synchronous standby %s", newLeader.Name, standby.Name)
	}
	t.Logf("%s promoted %v after the kill", newLeader.Name, promotedAt.Sub(killedAt).Round(time.Millisecond))

	// Both replicas ready again (or never unready and redeeming through the
	// new primary), then wantAfter more records.
	firstOKAfterKill := func(r int) time.Time {
		var first time.Time
		for _, at := range attempts {
			if at.replica == r && at.status == http.StatusOK && at.start.After(killedAt) && (first.IsZero() || at.end.Before(first)) {
				first = at.end
			}
		}
		return first
	}
	waitFor("both replicas ready again after the failover", 90*time.Second, func() bool {
		for r := range replicas {
			if ready[r].readyAt.IsZero() && !(ready[r].down.IsZero() && !firstOKAfterKill(r).IsZero()) {
				return false
			}
		}
		return true
	})
	stopWatch()
	watchers.Wait()
	var bothReady time.Time
	for r := range replicas {
		at := ready[r].readyAt
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

	// Every answer under load: a record, or a fail-closed 503.
	var (
		records []string
		spent   []int // tokens whose record a client received
		refused []int // tokens refused with 503
		before  int
		after   int
	)
	for _, at := range attempts {
		switch {
		case at.err != nil:
			t.Errorf("token %d at replica %d: transport error %v", at.tok, at.replica, at.err)
		case at.status == http.StatusOK && at.record != "":
			records = append(records, at.record)
			spent = append(spent, at.tok)
			if at.end.Before(killedAt) {
				before++
			} else {
				after++
			}
		case at.status == http.StatusServiceUnavailable && at.record == "" && at.problem == httpapi.ProblemTypePrefix+"unavailable":
			refused = append(refused, at.tok)
		default:
			t.Errorf("token %d at replica %d: status %d problem %q record %t; want 200 with a record or 503 unavailable",
				at.tok, at.replica, at.status, at.problem, at.record != "")
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	for _, s := range replicas {
		s.assertRunning()
		s.waitReady(60 * time.Second)
	}

	// Replay every token whose record a client received, at the other
	// replica than the one that redeemed it: none may redeem again.
	replica := map[int]int{}
	for _, at := range attempts {
		replica[at.tok] = at.replica
	}
	doubleSpends := 0
	for _, i := range spent {
		o := replicas[1-replica[i]].redeemToken(tokens[i])
		switch {
		case o.status == http.StatusConflict && o.problem == httpapi.ProblemTypePrefix+"already-redeemed" && o.token == "":
		case o.status == http.StatusOK:
			doubleSpends++
			t.Errorf("DOUBLE SPEND: token %d, whose record a client received before, redeemed again after the failover", i)
		default:
			t.Errorf("replaying token %d: %+v, want 409 already-redeemed", i, o)
		}
	}

	// Every token refused during the switch: redeems exactly once now, or
	// was already spent with its acknowledgement lost.
	ackLost, lateRecords := 0, 0
	for _, i := range refused {
		o := replicas[replica[i]].redeemToken(tokens[i])
		switch {
		case o.status == http.StatusOK && o.token != "":
			records = append(records, o.token)
			lateRecords++
			if o2 := replicas[1-replica[i]].redeemToken(tokens[i]); o2.status != http.StatusConflict {
				t.Errorf("token %d redeemed after the switch, then again: %+v", i, o2)
				if o2.status == http.StatusOK {
					doubleSpends++
				}
			}
		case o.status == http.StatusConflict && o.problem == httpapi.ProblemTypePrefix+"already-redeemed":
			ackLost++
		default:
			t.Errorf("redeeming token %d, refused during the switch: %+v", i, o)
		}
	}

	// The database: one row per record handed out, plus one per lost
	// acknowledgement, and nothing else.
	ids := a.verifyRecords(records)
	rows := haRecordIDs(t, c.dbURL)
	for _, id := range ids {
		if rows[id] != 1 {
			t.Errorf("record %s has %d rows", id, rows[id])
		}
	}
	total := 0
	for _, n := range rows {
		total += n
	}
	if total != len(ids)+ackLost {
		t.Errorf("%d redemption rows for %d records and %d lost acknowledgements", total, len(ids), ackLost)
	}
	if total != len(spent)+len(refused) {
		t.Errorf("%d redemption rows for %d tokens presented", total, len(spent)+len(refused))
	}
	for _, s := range replicas {
		s.assertNo500()
		s.assertRunning()
	}

	var lines []string
	lines = append(lines, "HA failover figures (kill -9 of the primary's postmaster under load, two pstd replicas):")
	lines = append(lines, fmt.Sprintf("  primary %s killed; synchronous standby %s promoted after %v", leader.Name, newLeader.Name, promotedAt.Sub(killedAt).Round(time.Millisecond)))
	lines = append(lines, fmt.Sprintf("  tokens redeemed before the kill: %d; after it: %d (%d once both replicas were ready again)", before, after, okSince(bothReady)))
	lines = append(lines, fmt.Sprintf("  answers under load: %s", summarize(attempts)))
	lines = append(lines, fmt.Sprintf("  refused with 503 during the switch: %d; redeemed once afterwards: %d; already spent (acknowledgement lost): %d", len(refused), lateRecords, ackLost))
	lines = append(lines, fmt.Sprintf("  records replayed: %d; double spends found: %d", len(spent), doubleSpends))
	for r := range replicas {
		if ready[r].readyAt.IsZero() {
			lines = append(lines, fmt.Sprintf("  replica %d: /readyz never failed; first record through the new primary %v after the kill", r, firstOKAfterKill(r).Sub(killedAt).Round(time.Millisecond)))
		} else {
			lines = append(lines, fmt.Sprintf("  replica %d: /readyz not ready %v after the kill, ready again %v after the kill", r, ready[r].down.Sub(killedAt).Round(time.Millisecond), ready[r].readyAt.Sub(killedAt).Round(time.Millisecond)))
		}
	}
	lines = append(lines, fmt.Sprintf("  cluster afterwards: %s", c.describe()))
	lines = append(lines, fmt.Sprintf("  test duration: %v", time.Since(testStart).Round(time.Second)))
	t.Log(strings.Join(lines, "\n"))
	if doubleSpends != 0 {
		t.Fatalf("%d double spends", doubleSpends)
	}
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
