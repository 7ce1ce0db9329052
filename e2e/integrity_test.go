package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pstd/pstd/internal/testenv"
)

// asOwner runs SQL as the database owner with triggers bypassed, as an
// insider with database rights can.
func (s *stack) asOwner(sql string, args ...any) {
	s.t.Helper()
	s.withConn(func(ctx context.Context, conn *pgx.Conn) {
		if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err != nil {
			s.t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			s.t.Fatalf("%s: %v", sql, err)
		}
	})
}

// waitRefusal waits until the replica is not ready with detail naming what.
func (s *stack) waitRefusal(what string) outcome {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		o := s.readyz()
		if o.status == http.StatusServiceUnavailable && strings.Contains(o.detail, what) {
			return o
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the replica did not refuse (%q) within 30 s: %+v\n%s", what, o, s.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTamperedRowsRefused: what an insider with database rights but without
// the HSM can change in the key tables makes a running replica refuse within
// one refresh, with the reason named and an audit event, and nothing forged
// or resurrected is ever served or accepted.
func TestTamperedRowsRefused(t *testing.T) {
	t.Run("record key inserted", func(t *testing.T) {
		t.Parallel()
		s := newStackOn(t, testenv.NewDatabase(t), testenv.NewToken(t))
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
		s.asOwner(`INSERT INTO rr_keys (id, public_key, created_at, retired_at, not_after) VALUES ('rr-9', $1, now(), now(), now() + interval '1 day')`, der)
		s.waitRefusal("record key rr-9")
		if strings.Contains(string(getBody(t, "http://"+s.listen+"/.well-known/private-state-token/jwks.json")), "rr-9") {
			t.Fatal("the JWKS lists the inserted key")
		}
		if o := s.issueStatus(); o.status == http.StatusOK {
			t.Fatalf("issued while refusing: %+v", o)
		}
		if n := s.count(`SELECT count(*) FROM audit_log WHERE action = 'integrity.violation'`); n < 1 {
			t.Fatal("no integrity.violation audit event")
		}
	})
	t.Run("commitment inserted", func(t *testing.T) {
		t.Parallel()
		s := newStackOn(t, testenv.NewDatabase(t), testenv.NewToken(t))
		// Another key's commitment: the body of key 1's with its Y replaced.
		s.asOwner(`INSERT INTO commitments (id, key_ids, body)
			SELECT id + 1, key_ids, replace(body, substring(body from '"Y":"([^"]{20})'), 'AAAAAQTIuRHMo4lILwYj')
			  FROM commitments ORDER BY id DESC LIMIT 1`)
		s.waitRefusal("commitment")
		if n := s.count(`SELECT count(*) FROM audit_log WHERE action = 'integrity.violation'`); n < 1 {
			t.Fatal("no integrity.violation audit event")
		}
	})
	t.Run("retirement undone", func(t *testing.T) {
		t.Parallel()
		s := newStackOn(t, testenv.NewDatabase(t), testenv.NewToken(t))
		old := s.issueTokens(1)
		s.pstctl("keys", "rotate", "--force")
		s.pstctl("keys", "retire", "1")
		s.waitReady(30 * time.Second)
		checkpoints := s.count(`SELECT count(*) FROM audit_checkpoints`)
		tampered := time.Now()
		s.asOwner(`UPDATE key_epochs SET retired_at = NULL WHERE key_id = 1`)
		s.waitRefusal("key 1 is live in the database")
		took := time.Since(tampered)
		t.Logf("refused %.1f s after the tamper", took.Seconds())
		if took > 2*5*time.Second+5*time.Second { // signer.DefaultRefreshInterval is 5 s
			t.Errorf("refused only %s after the tamper, more than two refreshes", took)
		}
		if n := s.count(`SELECT count(*) FROM audit_log WHERE action = 'integrity.violation'`); n < 1 {
			t.Fatal("no integrity.violation audit event")
		}
		// The replica's own checkpoints (every 10 s) must not sign the
		// undone retirement into the HSM's anchor: after three intervals it
		// still refuses, the key's token still does not redeem, and no
		// checkpoint names key 1 live.
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if o := s.readyz(); o.status == http.StatusOK {
				t.Fatalf("ready again %.0f s after the tamper: the undone retirement was accepted", time.Since(tampered).Seconds())
			}
			time.Sleep(500 * time.Millisecond)
		}
		if o := s.redeemToken(old[0]); o.status == http.StatusOK {
			t.Fatalf("the resurrected key's token redeemed: %+v", o)
		}
		if n := s.count(`SELECT count(*) FROM redemptions`); n != 0 {
			t.Fatalf("%d redemptions", n)
		}
		if n := s.count(`SELECT count(*) FROM audit_checkpoints WHERE n > (SELECT max(n) FROM audit_checkpoints) - $1
			AND (body::jsonb -> 'live_keys') @> '[1]'`, s.count(`SELECT count(*) FROM audit_checkpoints`)-checkpoints); n != 0 {
			t.Fatalf("%d checkpoints since the tamper sign key 1 as live", n)
		}
	})
	t.Run("sealed blobs swapped", func(t *testing.T) {
		t.Parallel()
		s := newStackOn(t, testenv.NewDatabase(t), testenv.NewToken(t))
		s.pstctl("keys", "rotate", "--force")
		s.waitReady(30 * time.Second)
		s.asOwner(`UPDATE key_epochs k SET sealed_secret = o.sealed_secret FROM key_epochs o
			WHERE (k.key_id, o.key_id) IN ((1, 2), (2, 1))`)
		s.waitRefusal("sealed blob does not open")
		if n := s.count(`SELECT count(*) FROM audit_log WHERE action = 'integrity.violation'`); n < 1 {
			t.Fatal("no integrity.violation audit event")
		}
	})
}
