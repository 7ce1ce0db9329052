package wiring

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/pstd/pstd/auditlog"
	"github.com/pstd/pstd/db"
	"github.com/pstd/pstd/signer/hsm"
)

// TestThreeReplicasCheckpoint: three replicas (own pools, own HSM sessions
// on one SoftHSM token) append events and checkpoint concurrently. The log
// stays one chain, every checkpoint verifies and chains to the previous, and
// the token's anchor is one of them.
func TestThreeReplicasCheckpoint(t *testing.T) {
	e := newEnv(t)
	c := &clock{t: time.Now()}
	ctx := context.Background()
	var stores []*db.Store
	svc0, st0 := e.service(t, c, true)
	stores = append(stores, st0)
	services := []interface {
		Checkpoint(context.Context, bool) (bool, error)
	}{svc0}
	for range 2 {
		s, st := e.service(t, c, false)
		services = append(services, s)
		stores = append(stores, st)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	written := 0
	for i := range 3 {
		wg.Go(func() {
			for j := range 15 {
				if _, err := stores[i].AppendAudit(ctx, db.Event{Actor: fmt.Sprintf("replica-%d", i), Action: "test.event", Subject: fmt.Sprint(j)}); err != nil {
					t.Error(err)
					return
				}
				ok, err := services[i].Checkpoint(ctx, false)
				if err != nil {
					t.Error(err)
					return
				}
				if ok {
					mu.Lock()
					written++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if _, err := services[0].Checkpoint(ctx, false); err != nil {
		t.Fatal(err)
	}
	v, err := st0.VerifyAuditChain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	h, err := openHSMForTest(e)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	vs, err := h.ReadAnchor(ctx)
	if err != nil || len(vs) != 1 {
		t.Fatalf("anchor: %d copies, %v", len(vs), err)
	}
	a, err := auditlog.ParseSigned(vs[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Anchor(a, "the HSM"); err != nil {
		t.Fatal(err)
	}
	r, _ := v.Result()
	if r.Events < 45 || r.Checkpoints < 2 || written < 2 {
		t.Fatalf("%d events, %d checkpoints (%d written by the loop)", r.Events, r.Checkpoints, written)
	}
	t.Logf("%d events, %d checkpoints, one chain", r.Events, r.Checkpoints)
}

// openHSMForTest opens another session on the environment's token.
func openHSMForTest(e env) (*hsm.HSM, error) {
	return hsm.Open(hsm.Config{ModulePath: e.tok.Module, TokenLabel: e.tok.Label, PIN: e.tok.PIN})
}
