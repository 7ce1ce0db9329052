package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pstd/pstd/db"
	"github.com/pstd/pstd/httpapi"
	"github.com/pstd/pstd/internal/testenv"
	"github.com/pstd/pstd/signer"
	"github.com/pstd/pstd/signer/hsm"
)

// startPstd runs the real issuer service — keys sealed in a real SoftHSM
// token, key epochs and redemptions in a real PostgreSQL database, the echo
// HTTP API — on http://localhost:PORT, and returns that origin.
func startPstd(t *testing.T, allowed []string) string {
	t.Helper()
	ctx := context.Background()
	dbURL := testenv.NewDatabase(t)
	tok := testenv.NewToken(t)
	store, err := db.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	h, err := hsm.Open(hsm.Config{ModulePath: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if err := h.EnsureKEK(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	origin := fmt.Sprintf("http://localhost:%d", ln.Addr().(*net.TCPAddr).Port)
	svc, err := signer.New(signer.Config{IssuerOrigin: origin}, store, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	if err := svc.EnsureAuditKey(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := svc.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	api := httpapi.New(httpapi.Config{IssuerOrigin: origin, RedemptionLifetime: 168 * time.Hour, AllowedOrigins: allowed}, svc)
	if err := api.CheckReady(ctx); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: api.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	}()
	t.Cleanup(func() { _ = srv.Close() })
	return origin
}

// TestPstdPassesEveryCheck: the doctor against a real pstd (SoftHSM,
// PostgreSQL) with --redeem finds no failure; its only warning is that
// http://localhost cannot be registered, and only TLS is skipped.
func TestPstdPassesEveryCheck(t *testing.T) {
	origin := startPstd(t, nil)
	rep, err := Run(context.Background(), origin, Options{Redeem: true, Origin: "https://rp.example", Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if testing.Verbose() || rep.Failed() {
		dump(t, rep)
	}
	if got := ids(rep, StatusFail); len(got) != 0 {
		t.Fatalf("failed checks %v against pstd", got)
	}
	if w, s := strings.Join(ids(rep, StatusWarn), ","), strings.Join(ids(rep, StatusSkip), ","); w != CheckOrigin || s != CheckTLS {
		t.Fatalf("warnings [%s], skipped [%s]; want [origin], [tls]", w, s)
	}
	if rec, _ := rep.Find(CheckRecord); !strings.Contains(rec.Message, "aud https://rp.example") {
		t.Fatalf("record check: %s", rec.Message)
	}
}

// TestPstdRestrictedOrigins: a pstd that allows only listed page origins
// passes for a listed one and fails the CORS and issuance checks for
// another page — the doctor tells the operator which page it pretended to be.
func TestPstdRestrictedOrigins(t *testing.T) {
	origin := startPstd(t, []string{"https://partner.example"})
	rep, err := Run(context.Background(), origin, Options{Origin: "https://partner.example"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed() {
		dump(t, rep)
		t.Fatalf("listed origin: failed %v", ids(rep, StatusFail))
	}
	rep, err = Run(context.Background(), origin, Options{Origin: "https://stranger.example"})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(ids(rep, StatusFail), ",")
	if want := strings.Join([]string{CheckCORSCommitment, CheckCORSIssuance, CheckCORSJWKS, CheckIssuance}, ","); got != want {
		dump(t, rep)
		t.Fatalf("unlisted origin: failed [%s], want [%s]", got, want)
	}
}
