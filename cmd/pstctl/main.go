// Command pstctl administers a pstd issuer: migrations, keys, the key
// commitment, the audit log and redemption-record verification.
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/peterbourgon/ff/v3"
	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/pstd/pstd/cmd/internal/wiring"
	"github.com/pstd/pstd/doctor"
	"github.com/pstd/pstd/internal/cli"
	"github.com/pstd/pstd/internal/secmem"
	"github.com/pstd/pstd/internal/version"
	"github.com/pstd/pstd/rp"
	"github.com/pstd/pstd/signer"
	"github.com/pstd/pstd/signer/voprf"
)

func main() {
	// As pstd does, before anything else: the PIN and database password
	// leave the kernel's copy of the environment (a re-execution), and the
	// process stops being dumpable (pstctl holds the PIN and, for keys
	// init/rotate/import, a plaintext scalar).
	if err := wiring.SecureProcess(); err != nil {
		fmt.Fprintln(os.Stderr, "pstctl:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(cli.Run(ctx, root(os.Stdout), os.Args[1:], os.Stderr))
}

var opts = []ff.Option{ff.WithEnvVarPrefix("PSTD")}

// keyAdmin are the settings of the commands that change keys: they open the
// database and the HSM and run the issuer service's key administration, as
// the operator --actor names, for the --reason given (audit.go).
const keyAdmin = wiring.Database | wiring.HSM | wiring.Origin | wiring.Issuer | wiring.Operator

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// cmd builds a subcommand with the settings of groups plus extra flags.
func cmd(name, usage, help string, groups wiring.Group, extra func(fs *flag.FlagSet), run func(ctx context.Context, s *wiring.Settings, args []string) error) *ffcli.Command {
	var s wiring.Settings
	fs := flag.NewFlagSet("pstctl "+name, flag.ContinueOnError)
	s.Register(fs, groups)
	if extra != nil {
		extra(fs)
	}
	return &ffcli.Command{Name: name, ShortUsage: "pstctl " + usage, ShortHelp: help, FlagSet: fs, Options: opts,
		Exec: func(ctx context.Context, args []string) error { return run(ctx, &s, args) }}
}

// withApp runs an operator's command on the opened service and then
// checkpoints the audit log, so the change is under a signed checkpoint and
// the HSM's anchor before the command returns.
func withApp(ctx context.Context, s *wiring.Settings, fn func(*wiring.App) error) error {
	a, err := wiring.Open(ctx, s, quietLogger(), false, nil)
	if err != nil {
		return err
	}
	defer a.Close()
	if err := fn(a); err != nil {
		return err
	}
	if _, err := a.Service.Checkpoint(ctx, false); err != nil {
		return fmt.Errorf("the change is made, but checkpointing the audit log failed (pstd will retry): %w", err)
	}
	return nil
}

func root(out io.Writer) *ffcli.Command {
	var force bool
	var importFile, notBefore string
	var importDays int
	var chromium bool
	var rrIssuer, rrJWKS string

	keys := &ffcli.Command{Name: "keys", ShortUsage: "pstctl keys list|plan|init|rotate|retire|import|rotate-rr|fence", ShortHelp: "manage VOPRF and record keys",
		Subcommands: []*ffcli.Command{
			cmd("list", "keys list", "list key epochs (which signs, until when it signs and redeems) and record keys", wiring.Database|wiring.Issuer, nil, func(ctx context.Context, s *wiring.Settings, _ []string) error {
				store, err := wiring.OpenStore(ctx, s, quietLogger())
				if err != nil {
					return err
				}
				defer store.Close()
				es, err := store.ListKeyEpochs(ctx)
				if err != nil {
					return err
				}
				now := time.Now()
				var live []signer.KeyTimes
				for _, e := range es {
					if e.RetiredAt.IsZero() {
						live = append(live, signer.KeyTimes{KeyID: e.KeyID, NotBefore: e.NotBefore, Expiry: e.Expiry})
					}
				}
				signing, _ := signer.SigningKey(now, live)
				tl := s.Policy().Timeline(now, live, 0)
				signsUntil := map[uint32]time.Time{}
				for _, w := range tl.Keys {
					signsUntil[w.KeyID] = w.SignsUntil
				}
				tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "KEY ID\tSTATE\tSIGNS\tSIGNS FROM\tSIGNS UNTIL\tREDEEMS UNTIL\tIMPORTED")
				for _, e := range es {
					signs, until := "", "-"
					if e.KeyID == signing.KeyID && e.RetiredAt.IsZero() {
						signs = "yes"
					}
					if t, ok := signsUntil[e.KeyID]; ok && e.RetiredAt.IsZero() {
						until = t.UTC().Format(time.RFC3339)
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%v\n", e.KeyID, e.State(now), signs, e.NotBefore.UTC().Format(time.RFC3339), until, e.Expiry.UTC().Format(time.RFC3339), e.Imported)
				}
				if !tl.NextRotation.IsZero() {
					succ := "not yet published"
					if tl.Successor {
						succ = "published"
					}
					fmt.Fprintf(tw, "\nnext rotation: %s (successor %s)\n", tl.NextRotation.UTC().Format(time.RFC3339), succ)
				}
				rr, err := store.RRKeys(ctx)
				if err != nil {
					return err
				}
				fmt.Fprintln(tw, "\nRECORD KEY\tSTATE\tCREATED\tIN JWKS UNTIL\t")
				for _, k := range rr {
					state, until := "signing", "-"
					if k.Retired {
						state, until = "retired", k.NotAfter.UTC().Format(time.RFC3339)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", k.ID, state, k.CreatedAt.UTC().Format(time.RFC3339), until)
				}
				return tw.Flush()
			}),
			cmd("init", "keys init --reason R", "provision the first key, record key and commitment (idempotent)", keyAdmin, nil, func(ctx context.Context, s *wiring.Settings, _ []string) error {
				ctx, err := operatorContext(ctx, s, "keys init")
				if err != nil {
					return err
				}
				return withApp(ctx, s, func(a *wiring.App) error {
					ok, err := a.Service.Rotate(ctx)
					if err != nil {
						return err
					}
					if !ok {
						return errors.New("another replica holds the rotation lock; try again")
					}
					fmt.Fprintln(out, "keys provisioned")
					return nil
				})
			}),
			cmd("rotate", "keys rotate [--force] --reason R", "introduce a key that signs from now", keyAdmin, func(fs *flag.FlagSet) {
				fs.BoolVar(&force, "force", false, "rotate even if the current key signed for less than 60 days")
			}, func(ctx context.Context, s *wiring.Settings, _ []string) error {
				ctx, err := operatorContext(ctx, s, "keys rotate")
				if err != nil {
					return err
				}
				return withApp(ctx, s, func(a *wiring.App) error {
					id, err := a.Service.ForceRotate(ctx, force, s.Actor)
					if err != nil {
						return err
					}
					fmt.Fprintf(out, "key %d signs from now\n", id)
					return nil
				})
			}),
			cmd("retire", "keys retire --reason R KEY_ID", "take a key out of service now, before its expiry (suspected compromise); its tokens stop redeeming", keyAdmin, nil, func(ctx context.Context, s *wiring.Settings, args []string) error {
				if len(args) != 1 {
					return cli.Usagef("usage: pstctl keys retire --reason R KEY_ID")
				}
				id, err := strconv.ParseUint(args[0], 10, 32)
				if err != nil || id == 0 {
					return cli.Usagef("%q is not a key id", args[0])
				}
				ctx, err = operatorContext(ctx, s, "keys retire")
				if err != nil {
					return err
				}
				return withApp(ctx, s, func(a *wiring.App) error {
					if err := a.Service.RetireKey(ctx, uint32(id), s.Actor); err != nil {
						return err
					}
					fmt.Fprintf(out, "key %d retired; replicas stop redeeming its tokens within seconds, and browsers drop it with the next commitment they fetch\n", id)
					return nil
				})
			}),
			cmd("import", "keys import --file BLOB --reason R", "import a BoringSSL private key blob (u32 key id || k), base64 or raw", keyAdmin, func(fs *flag.FlagSet) {
				fs.StringVar(&importFile, "file", "", "file with the private key blob (base64 or 52 raw bytes); - for stdin")
				fs.StringVar(&notBefore, "not-before", "", "RFC 3339 time the key starts signing (default now)")
				fs.IntVar(&importDays, "days", 120, "days until the key expires")
			}, func(ctx context.Context, s *wiring.Settings, _ []string) error {
				opCtx, err := operatorContext(ctx, s, "keys import")
				if err != nil {
					return err
				}
				blob, err := readBlob(importFile)
				if err != nil {
					return err
				}
				defer secmem.Free(blob)
				nb := time.Now()
				if notBefore != "" {
					if nb, err = time.Parse(time.RFC3339, notBefore); err != nil {
						return err
					}
				}
				return withApp(ctx, s, func(a *wiring.App) error {
					id, err := a.Service.ImportKey(opCtx, blob, signer.KeyTimes{NotBefore: nb, Expiry: nb.AddDate(0, 0, importDays)}, s.Actor)
					if err != nil {
						return err
					}
					if _, err := a.Service.Rotate(ctx); err != nil {
						return err
					}
					fmt.Fprintf(out, "imported key %d\n", id)
					return nil
				})
			}),
			cmd("rotate-rr", "keys rotate-rr --reason R", "create a new redemption-record key in the HSM", keyAdmin, nil, func(ctx context.Context, s *wiring.Settings, _ []string) error {
				ctx, err := operatorContext(ctx, s, "keys rotate-rr")
				if err != nil {
					return err
				}
				return withApp(ctx, s, func(a *wiring.App) error {
					id, err := a.Service.RotateRRKey(ctx, s.Actor)
					if err != nil {
						return err
					}
					fmt.Fprintf(out, "record key %s signs from now\n", id)
					return nil
				})
			}),
			fenceCommand(out),
			planCommand(out),
		}}

	rootFS := flag.NewFlagSet("pstctl", flag.ContinueOnError)
	showVersion := rootFS.Bool("version", false, "print the version and exit")
	c := &ffcli.Command{
		Name:       "pstctl",
		FlagSet:    rootFS,
		ShortUsage: "pstctl migrate|keys|commitment|audit|rr|doctor",
		Subcommands: []*ffcli.Command{
			cmd("migrate", "migrate", "apply database migrations", wiring.Database, nil, func(ctx context.Context, s *wiring.Settings, _ []string) error {
				store, err := wiring.OpenStore(ctx, s, quietLogger())
				if err != nil {
					return err
				}
				defer store.Close()
				return store.Migrate(ctx)
			}),
			keys,
			cmd("commitment", "commitment [--chromium]", "print the key commitment", wiring.Database|wiring.Origin, func(fs *flag.FlagSet) {
				fs.BoolVar(&chromium, "chromium", false, "print the value of Chrome's --additional-private-state-token-key-commitments switch")
			}, func(ctx context.Context, s *wiring.Settings, _ []string) error {
				store, err := wiring.OpenStore(ctx, s, quietLogger())
				if err != nil {
					return err
				}
				defer store.Close()
				_, _, body, err := store.LatestCommitment(ctx)
				if err != nil {
					return err
				}
				if len(body) == 0 {
					return errors.New("no commitment published yet: run pstctl keys init --reason R")
				}
				if chromium {
					wrapped, err := json.Marshal(map[string]json.RawMessage{strings.TrimSuffix(s.IssuerOrigin, "/"): body})
					if err != nil {
						return err
					}
					body = wrapped
				}
				_, err = fmt.Fprintln(out, string(body))
				return err
			}),
			{Name: "audit", ShortUsage: "pstctl audit list|query|summary|verify|head|export|keys|rotate-key", ShortHelp: "read, summarise, prove and export the audit log",
				Subcommands: append([]*ffcli.Command{
					auditQuery("list", "audit list [--from T] [--to T] [--limit N]", "print audit entries as JSON lines (pstctl audit query --format json)", "json", out),
					auditQuery("query", "audit query [--from T] [--to T] [--action A] [--subject S] [--actor X] [--limit N] [--format table|csv|json]",
						"stream the audit entries that match, oldest first (json: one object per line)", "table", out),
					auditSummary(out),
				}, evidenceCommands(out)...)},
			{Name: "rr", ShortUsage: "pstctl rr verify --issuer ORIGIN RECORD|-", ShortHelp: "verify redemption records",
				Subcommands: []*ffcli.Command{
					cmd("verify", "rr verify [--issuer ORIGIN] [--jwks URL] RECORD|-", "verify a redemption record against the issuer's JWKS", wiring.Origin, func(fs *flag.FlagSet) {
						fs.StringVar(&rrIssuer, "issuer", "", "issuer origin (default PSTD_ISSUER_ORIGIN)")
						fs.StringVar(&rrJWKS, "jwks", "", "JWKS URL (default ISSUER/.well-known/private-state-token/jwks.json)")
					}, func(ctx context.Context, s *wiring.Settings, args []string) error {
						if len(args) != 1 {
							return errors.New("give one record, or - to read it from stdin")
						}
						rec := args[0]
						if rec == "-" {
							b, err := io.ReadAll(io.LimitReader(os.Stdin, rp.MaxRecordBytes+1))
							if err != nil {
								return err
							}
							rec = strings.TrimSpace(string(b))
						}
						issuer := rrIssuer
						if issuer == "" {
							issuer = s.IssuerOrigin
						}
						v, err := rp.NewVerifier(rp.Config{Issuers: map[string]string{issuer: rrJWKS}})
						if err != nil {
							return err
						}
						r, err := v.VerifyRecord(ctx, issuer, rec)
						if err != nil {
							return fmt.Errorf("record does not verify: %w", err)
						}
						enc := json.NewEncoder(out)
						enc.SetIndent("", "  ")
						return enc.Encode(r)
					}),
				}},
			doctor.Command(out, os.Stderr),
		},
	}
	setGroups(c)
	group := c.Exec
	c.Exec = func(ctx context.Context, args []string) error {
		if *showVersion {
			fmt.Fprintln(out, version.Get().String("pstctl"))
			return nil
		}
		return group(ctx, args)
	}
	return c
}

// setGroups makes every command that only holds subcommands refuse to run
// bare or with an unknown subcommand (a usage error, naming the nearest).
func setGroups(c *ffcli.Command) {
	if len(c.Subcommands) > 0 && c.Exec == nil {
		c.Exec = cli.Group(c, os.Stderr)
	}
	for _, sc := range c.Subcommands {
		setGroups(sc)
	}
}

// readBlob reads a private key blob as raw bytes or base64, into protected
// memory (internal/secmem) and decoded there: no copy of the scalar is left
// on the heap. The caller frees it with secmem.Free.
func readBlob(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("--file is required")
	}
	f := os.Stdin
	if path != "-" {
		var err error
		if f, err = os.Open(path); err != nil {
			return nil, err
		}
		defer f.Close()
	}
	buf, err := secmem.New(secmem.MaxSize)
	if err != nil {
		return nil, err
	}
	defer secmem.Free(buf)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, err
	}
	if n == len(buf) {
		return nil, fmt.Errorf("key blob file is larger than %d bytes", len(buf)-1)
	}
	out, err := secmem.New(voprf.PrivateKeyBlobSize)
	if err != nil {
		return nil, err
	}
	if n == voprf.PrivateKeyBlobSize {
		copy(out, buf[:n])
		return out, nil
	}
	text := bytes.TrimSpace(buf[:n])
	if base64.StdEncoding.DecodedLen(len(text)) <= secmem.MaxSize {
		dec, derr := secmem.New(base64.StdEncoding.DecodedLen(len(text)))
		if derr == nil {
			defer secmem.Free(dec)
			if m, err := base64.StdEncoding.Decode(dec, text); err == nil && m == voprf.PrivateKeyBlobSize {
				copy(out, dec[:m])
				return out, nil
			}
		}
	}
	secmem.Free(out)
	return nil, errors.New("key blob is neither 52 raw bytes nor base64 of them")
}
