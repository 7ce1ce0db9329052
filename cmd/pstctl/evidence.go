package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/pstd/pstd/auditlog"
	"github.com/pstd/pstd/cmd/internal/wiring"
	"github.com/pstd/pstd/internal/cli"
)

// Head is what `pstctl audit head` prints for an auditor to keep: the newest
// signed checkpoint, the trust root's fingerprint and the audit keys. `audit
// verify --since FILE` proves a later log still extends it.
type Head struct {
	Format     string             `json:"format"`
	TakenAt    string             `json:"taken_at"`
	TrustRoot  string             `json:"trust_root"`
	Checkpoint auditlog.Signed    `json:"checkpoint"`
	Keys       []auditlog.KeyInfo `json:"keys"`
}

const headFormat = "pstd-audit-head-v1"

func readHead(path string) (*Head, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var h Head
	if err := json.Unmarshal(b, &h); err != nil || h.Format != headFormat {
		return nil, fmt.Errorf("%s is not a pstd audit head (%v)", path, err)
	}
	return &h, nil
}

// verifyReport prints a verification's outcome.
func verifyReport(out io.Writer, r auditlog.Result, anchors []string, err error) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	rep := struct {
		OK      bool            `json:"ok"`
		Error   string          `json:"error,omitempty"`
		Result  auditlog.Result `json:"result"`
		Anchors []string        `json:"anchors_checked"`
	}{err == nil, "", r, anchors}
	if err != nil {
		rep.Error = err.Error()
	}
	if anchors == nil {
		rep.Anchors = []string{}
	}
	if e := enc.Encode(rep); e != nil {
		return e
	}
	return err
}

// evidenceCommands are the audit commands that prove the log: verify, head,
// export, keys and rotate-key.
func evidenceCommands(out io.Writer) []*ffcli.Command {
	var since, bundle, trustRoot, exportOut string
	verify := cmd("verify", "audit verify [--since HEADFILE] | audit verify --bundle FILE [--trust-root FP] [--since HEADFILE]",
		"check the chain, every signature and checkpoint, and that the log reaches the HSM's anchor (and a kept head)", wiring.Database|wiring.HSM,
		func(fs *flag.FlagSet) {
			fs.StringVar(&since, "since", "", "a head from `pstctl audit head` that the log must still extend")
			fs.StringVar(&bundle, "bundle", "", "verify an export bundle instead, with no database, HSM or settings")
			fs.StringVar(&trustRoot, "trust-root", "", "fingerprint the first audit key must have (default: from --since, else trusted on first use)")
		}, func(ctx context.Context, s *wiring.Settings, args []string) error {
			if len(args) > 0 {
				return cli.Usagef("audit verify takes no arguments")
			}
			var head *Head
			if since != "" {
				h, err := readHead(since)
				if err != nil {
					return cli.Usagef("--since: %v", err)
				}
				head = h
				if trustRoot == "" {
					trustRoot = h.TrustRoot
				}
			}
			var anchors []string
			if bundle != "" {
				f, err := os.Open(bundle)
				if err != nil {
					return err
				}
				defer f.Close()
				b, err := auditlog.ReadBundle(f)
				if err != nil {
					return verifyReport(out, auditlog.Result{}, nil, err)
				}
				r, err := b.Verify(trustRoot)
				if b.Anchor != nil {
					anchors = append(anchors, "the bundle's anchor")
				}
				if err == nil && head != nil {
					v := auditlog.NewVerifier()
					v.TrustRoot = trustRoot
					for _, e := range b.Events {
						_ = v.Add(e)
					}
					_ = v.Checkpoints(b.Checkpoints)
					err = v.Anchor(head.Checkpoint, "the kept head "+filepath.Base(since))
					anchors = append(anchors, "the kept head "+filepath.Base(since))
				}
				return verifyReport(out, r, anchors, err)
			}
			if err := s.ValidateDatabase(); err != nil {
				return cli.Usagef("%v", err)
			}
			store, err := wiring.OpenStore(ctx, s, quietLogger())
			if err != nil {
				return err
			}
			defer store.Close()
			v, err := store.VerifyAuditChain(ctx)
			v.TrustRoot = trustRoot
			if err == nil {
				a, aerr := hsmAnchor(ctx, s)
				switch {
				case aerr != nil:
					err = aerr
				case a != nil:
					err = v.Anchor(*a, "the HSM's anchor")
					anchors = append(anchors, "the HSM's anchor")
				}
			}
			if err == nil && head != nil {
				err = v.Anchor(head.Checkpoint, "the kept head "+filepath.Base(since))
				anchors = append(anchors, "the kept head "+filepath.Base(since))
			}
			r, rerr := v.Result()
			if err == nil {
				err = rerr
			}
			if err == nil && trustRoot != "" && r.Root != trustRoot {
				err = fmt.Errorf("the log's trust root is %s, not %s", r.Root, trustRoot)
			}
			return verifyReport(out, r, anchors, err)
		})

	head := cmd("head", "audit head", "print the newest signed checkpoint as JSON, for an auditor to keep", wiring.Database, nil,
		func(ctx context.Context, s *wiring.Settings, _ []string) error {
			store, err := wiring.OpenStore(ctx, s, quietLogger())
			if err != nil {
				return err
			}
			defer store.Close()
			v, err := store.VerifyAuditChain(ctx)
			r, _ := v.Result()
			if err != nil {
				return fmt.Errorf("the log does not verify; no head printed: %w", err)
			}
			c, ok, err := store.LatestCheckpoint(ctx)
			if err != nil {
				return err
			}
			if !ok {
				return errors.New("no checkpoint yet: pstd writes one within seconds of a change")
			}
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(Head{Format: headFormat, TakenAt: time.Now().UTC().Format(time.RFC3339), TrustRoot: r.Root, Checkpoint: c, Keys: r.Keys})
		})

	export := cmd("export", "audit export --out FILE", "write every event, checkpoint and audit public key (and the HSM's anchor) as one JSON document", wiring.Database|wiring.HSM,
		func(fs *flag.FlagSet) {
			fs.StringVar(&exportOut, "out", "", "the bundle file to write (- for standard output)")
		}, func(ctx context.Context, s *wiring.Settings, _ []string) error {
			if exportOut == "" {
				return cli.Usagef("--out is required")
			}
			if err := s.ValidateDatabase(); err != nil {
				return cli.Usagef("%v", err)
			}
			store, err := wiring.OpenStore(ctx, s, quietLogger())
			if err != nil {
				return err
			}
			defer store.Close()
			b := auditlog.Bundle{Format: auditlog.BundleFormat, ExportedAt: time.Now().UTC().Format(time.RFC3339)}
			if err := store.AuditEvents(ctx, 1, func(e auditlog.Event) error { b.Events = append(b.Events, e); return nil }); err != nil {
				return err
			}
			if b.Checkpoints, err = store.Checkpoints(ctx); err != nil {
				return err
			}
			if b.Keys, err = store.AuditKeys(ctx); err != nil {
				return err
			}
			if b.Anchor, err = hsmAnchor(ctx, s); err != nil {
				return err
			}
			w := out
			if exportOut != "-" {
				f, err := os.OpenFile(exportOut, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
				if err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			enc := json.NewEncoder(w)
			enc.SetIndent("", " ")
			if err := enc.Encode(b); err != nil {
				return err
			}
			if f, ok := w.(*os.File); ok && f != os.Stdout {
				if err := f.Sync(); err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "pstctl: wrote %d events, %d checkpoints and %d audit keys to %s\n", len(b.Events), len(b.Checkpoints), len(b.Keys), exportOut)
			}
			return nil
		})

	keys := cmd("keys", "audit keys", "list the audit signing keys the log introduced", wiring.Database, nil,
		func(ctx context.Context, s *wiring.Settings, _ []string) error {
			store, err := wiring.OpenStore(ctx, s, quietLogger())
			if err != nil {
				return err
			}
			defer store.Close()
			ks, err := store.AuditKeys(ctx)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(ks)
		})

	rotate := cmd("rotate-key", "audit rotate-key --reason TEXT", "make a new audit signing key, introduced by the current one", keyAdmin, nil,
		func(ctx context.Context, s *wiring.Settings, _ []string) error {
			ctx, err := operatorContext(ctx, s, "audit rotate-key")
			if err != nil {
				return err
			}
			return withApp(ctx, s, func(a *wiring.App) error {
				id, err := a.Service.RotateAuditKey(ctx, s.Actor, s.Reason)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "audit key %s signs from now\n", id)
				return nil
			})
		})
	return []*ffcli.Command{verify, head, export, keys, rotate}
}

// fenceCommand is `pstctl keys fence`.
func fenceCommand(out io.Writer) *ffcli.Command {
	return cmd("fence", "keys fence --reason TEXT", "after a restore the HSM's audit head says was lossy: retire every key live at that head and start a new one", keyAdmin, nil,
		func(ctx context.Context, s *wiring.Settings, _ []string) error {
			ctx, err := operatorContext(ctx, s, "keys fence")
			if err != nil {
				return err
			}
			return withApp(ctx, s, func(a *wiring.App) error {
				newKey, retired, err := a.Service.Fence(ctx, s.Actor, s.Reason)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "fenced: retired keys %v; key %d signs from now; a new commitment is published\n", retired, newKey)
				return nil
			})
		})
}

// hsmAnchor reads the token's newest audit anchor, or nil when the settings
// name no token or the token holds none.
func hsmAnchor(ctx context.Context, s *wiring.Settings) (*auditlog.Signed, error) {
	if !s.HSMConfigured() {
		return nil, nil
	}
	h, err := wiring.OpenHSM(s, quietLogger())
	if err != nil {
		return nil, err
	}
	defer h.Close()
	vs, err := h.ReadAnchor(ctx)
	if err != nil {
		return nil, err
	}
	return newestAnchor(vs)
}

// newestAnchor parses the token's anchor copies and returns the newest, or
// nil if the token holds none.
func newestAnchor(vs [][]byte) (*auditlog.Signed, error) {
	var best *auditlog.Signed
	var bestN int64
	for _, b := range vs {
		a, err := auditlog.ParseSigned(b)
		if err != nil {
			return nil, fmt.Errorf("the HSM's audit anchor: %w", err)
		}
		if c, _, _ := a.Open(); c.N > bestN {
			best, bestN = &a, c.N
		}
	}
	return best, nil
}
