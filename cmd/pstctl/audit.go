package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/pstd/pstd/cmd/internal/wiring"
	"github.com/pstd/pstd/db"
	"github.com/pstd/pstd/internal/cli"
	"github.com/pstd/pstd/signer"
)

// defaultActor is USER@HOST, the audit log's name for an operator who gave
// no --actor.
func defaultActor() string {
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	return name + "@" + host
}

// operatorContext checks --actor and --reason for a key-changing command
// (a missing reason is a usage error) and returns ctx carrying the operator,
// so the service records who and why with the change, or with its refusal.
func operatorContext(ctx context.Context, s *wiring.Settings, command string) (context.Context, error) {
	if s.Actor == "" {
		s.Actor = defaultActor()
	}
	if err := s.ValidateOperator(true); err != nil {
		return nil, cli.Usagef("%v", err)
	}
	return signer.WithOperator(ctx, signer.Operator{Actor: s.Actor, Reason: s.Reason, Command: command}), nil
}

// period is --from/--to.
type period struct{ from, to string }

func (p *period) register(fs *flag.FlagSet) {
	fs.StringVar(&p.from, "from", "", "start of the period, inclusive: RFC 3339 time or YYYY-MM-DD (UTC)")
	fs.StringVar(&p.to, "to", "", "end of the period, exclusive: RFC 3339 time or YYYY-MM-DD (UTC)")
}

func parseWhen(flagName, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, v); err == nil {
		return t, nil
	}
	return time.Time{}, cli.Usagef("--%s %q is neither an RFC 3339 time nor YYYY-MM-DD", flagName, v)
}

func (p *period) parse() (from, to time.Time, err error) {
	if from, err = parseWhen("from", p.from); err != nil {
		return
	}
	if to, err = parseWhen("to", p.to); err != nil {
		return
	}
	if !from.IsZero() && !to.IsZero() && !to.After(from) {
		err = cli.Usagef("--to must be after --from")
	}
	return
}

func checkFormat(format string, allowed ...string) error {
	for _, a := range allowed {
		if format == a {
			return nil
		}
	}
	return cli.Usagef("--format %q: want %s", format, strings.Join(allowed, ", "))
}

// auditQuery streams the audit rows that match to out as a table, CSV, or
// JSON lines (one object per line, so a consumer can stream too). Rows are
// written as they arrive from the database; nothing is capped unless
// --limit asks.
func auditQuery(name, usage, help, defaultFormat string, out io.Writer) *ffcli.Command {
	var p period
	var f db.AuditFilter
	var format string
	c := cmd(name, usage, help, wiring.Database, func(fs *flag.FlagSet) {
		p.register(fs)
		fs.StringVar(&f.Action, "action", "", "only this action, e.g. key.retire or count.issuance; key.* for every key.… action")
		fs.StringVar(&f.Subject, "subject", "", "only this subject, e.g. key:7")
		fs.StringVar(&f.Actor, "actor", "", "only events by this actor (a filter: PSTD_ACTOR, who an operator is, does not set it)")
		fs.Int64Var(&f.Limit, "limit", 0, "stop after this many rows (0: all)")
		fs.StringVar(&format, "format", defaultFormat, "table, csv or json (JSON lines)")
	}, func(ctx context.Context, s *wiring.Settings, args []string) error {
		if len(args) > 0 {
			return cli.Usagef("pstctl audit %s takes no arguments, not %q", name, args)
		}
		if err := checkFormat(format, "table", "csv", "json"); err != nil {
			return err
		}
		if f.Limit < 0 {
			return cli.Usagef("--limit must not be negative")
		}
		var err error
		if f.From, f.To, err = p.parse(); err != nil {
			return err
		}
		store, err := wiring.OpenStore(ctx, s, quietLogger())
		if err != nil {
			return err
		}
		defer store.Close()
		w := newAuditWriter(out, format)
		if err := store.QueryAudit(ctx, f, w.write); err != nil {
			return err
		}
		return w.flush()
	})
	envExcept(c, "actor")
	return c
}

// envExcept makes c read its settings from PSTD_* variables as every
// command does, except the flags named: there a variable of the same name
// means something else (PSTD_ACTOR is who the operator is, while audit
// query's --actor is a filter), so only the command line sets them.
func envExcept(c *ffcli.Command, except ...string) {
	c.Options = nil // the environment is read below, not by ff
	run := c.Exec
	c.Exec = func(ctx context.Context, args []string) error {
		provided := map[string]bool{}
		c.FlagSet.Visit(func(f *flag.Flag) { provided[f.Name] = true })
		var err error
		c.FlagSet.VisitAll(func(f *flag.Flag) {
			if err != nil || provided[f.Name] || slices.Contains(except, f.Name) {
				return
			}
			if v := os.Getenv(wiring.EnvName(f.Name)); v != "" {
				if serr := c.FlagSet.Set(f.Name, v); serr != nil {
					err = cli.Usagef("%s: %v", wiring.EnvName(f.Name), serr)
				}
			}
		})
		if err != nil {
			return err
		}
		return run(ctx, args)
	}
}

// auditWriter writes audit rows in one format, flushing as it goes.
type auditWriter struct {
	format string
	enc    *json.Encoder
	csv    *csv.Writer
	tw     *tabwriter.Writer
	n      int
}

// tableBlock is how many table rows are aligned together: a table is
// flushed in blocks so memory stays bounded however long the log is.
const tableBlock = 500

func newAuditWriter(out io.Writer, format string) *auditWriter {
	w := &auditWriter{format: format}
	switch format {
	case "json":
		w.enc = json.NewEncoder(out)
	case "csv":
		w.csv = csv.NewWriter(out)
		_ = w.csv.Write([]string{"seq", "at", "actor", "action", "subject", "details"})
	default:
		w.tw = tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
		fmt.Fprintln(w.tw, "SEQ\tAT\tACTOR\tACTION\tSUBJECT\tDETAILS")
	}
	return w
}

func (w *auditWriter) write(r db.AuditRecord) error {
	w.n++
	at := r.At.UTC().Format(time.RFC3339Nano)
	switch w.format {
	case "json":
		return w.enc.Encode(r)
	case "csv":
		if err := w.csv.Write([]string{strconv.FormatInt(r.Seq, 10), at, r.Actor, r.Action, r.Subject, string(r.Details)}); err != nil {
			return err
		}
		if w.n%tableBlock == 0 {
			w.csv.Flush()
			return w.csv.Error()
		}
		return nil
	default:
		// Tabs and newlines inside a field would break the table.
		clean := strings.NewReplacer("\t", " ", "\n", " ", "\r", " ")
		fmt.Fprintf(w.tw, "%d\t%s\t%s\t%s\t%s\t%s\n", r.Seq, at, clean.Replace(r.Actor), r.Action, clean.Replace(r.Subject), clean.Replace(string(r.Details)))
		if w.n%tableBlock == 0 {
			return w.tw.Flush()
		}
		return nil
	}
}

func (w *auditWriter) flush() error {
	switch w.format {
	case "csv":
		w.csv.Flush()
		return w.csv.Error()
	case "table":
		return w.tw.Flush()
	}
	return nil
}

// auditSummary prints db.Summarize's report: one JSON document (an object
// with a keys array), or tables.
func auditSummary(out io.Writer) *ffcli.Command {
	var p period
	var format string
	return cmd("summary", "audit summary [--from T] [--to T] [--format table|json]",
		"per key: state, lifecycle times, tokens issued, redemptions (per origin) and refusals by reason", wiring.Database, func(fs *flag.FlagSet) {
			p.register(fs)
			fs.StringVar(&format, "format", "table", "table or json")
		}, func(ctx context.Context, s *wiring.Settings, args []string) error {
			if len(args) > 0 {
				return cli.Usagef("pstctl audit summary takes no arguments, not %q", args)
			}
			if err := checkFormat(format, "table", "json"); err != nil {
				return err
			}
			from, to, err := p.parse()
			if err != nil {
				return err
			}
			store, err := wiring.OpenStore(ctx, s, quietLogger())
			if err != nil {
				return err
			}
			defer store.Close()
			sum, err := store.Summarize(ctx, from, to)
			if err != nil {
				return err
			}
			if format == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(sum)
			}
			return summaryTable(out, sum)
		})
}

func summaryTable(out io.Writer, sum *db.Summary) error {
	ts := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return t.UTC().Format(time.RFC3339)
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "period: %s to %s (counts whose bucket starts in it)\n\n", ts(sum.From), ts(sum.To))
	fmt.Fprintln(tw, "KEY ID\tSTATE\tNOT BEFORE\tEXPIRY\tRETIRED\tTOKENS ISSUED\tREDEMPTIONS\tREPLAY\tUNKNOWN KEY\tMALFORMED\tINVALID TOKEN")
	for _, k := range sum.Keys {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\n", k.KeyID, k.State, ts(&k.NotBefore), ts(&k.Expiry), ts(k.RetiredAt),
			k.TokensIssued, k.Redemptions, k.Refusals[db.RefusalReplay], k.Refusals[db.RefusalUnknownKey], k.Refusals[db.RefusalMalformed], k.Refusals[db.RefusalInvalidToken])
	}
	fmt.Fprintf(tw, "all\t\t\t\t\t\t\t%d\t%d\t%d\t%d\n", sum.Refusals[db.RefusalReplay], sum.Refusals[db.RefusalUnknownKey], sum.Refusals[db.RefusalMalformed], sum.Refusals[db.RefusalInvalidToken])
	fmt.Fprintln(tw, "\nKEY ID\tREDEEMING ORIGIN\tREDEMPTIONS")
	for _, k := range sum.Keys {
		for _, o := range k.RedemptionsByOrigin {
			origin := o.RedeemingOrigin
			if origin == "" {
				origin = "(none)"
			}
			fmt.Fprintf(tw, "%d\t%s\t%d\n", k.KeyID, origin, o.Redemptions)
		}
	}
	return tw.Flush()
}
