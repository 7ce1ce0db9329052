package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/pstd/pstd/cmd/internal/wiring"
	"github.com/pstd/pstd/internal/cli"
	"github.com/pstd/pstd/signer"
)

// planCommand is `pstctl keys plan`: the key schedule for the next days as
// the rotation policy will run it, the registration's expiry, and warnings
// where a setting breaks a Chrome rule.
func planCommand(out io.Writer) *ffcli.Command {
	var days int
	var format string
	return cmd("plan", "keys plan [--days 180] [--format table|json]", "print the key timeline: publication, signing and redemption windows, the next rotations, the registration's expiry", wiring.Database|wiring.Issuer,
		func(fs *flag.FlagSet) {
			fs.IntVar(&days, "days", 180, "how far ahead")
			fs.StringVar(&format, "format", "table", "table or json")
		}, func(ctx context.Context, s *wiring.Settings, _ []string) error {
			if format != "table" && format != "json" {
				return cli.Usagef("--format %q: use table or json", format)
			}
			if days < 1 || days > 3660 {
				return cli.Usagef("--days must be 1 to 3660")
			}
			reg, err := s.RegistrationExpiry()
			if err != nil {
				return cli.Usagef("%v", err)
			}
			store, err := wiring.OpenStore(ctx, s, quietLogger())
			if err != nil {
				return err
			}
			defer store.Close()
			es, err := store.KeyEpochs(ctx)
			if err != nil {
				return err
			}
			var keys []signer.KeyTimes
			for _, e := range es {
				keys = append(keys, signer.KeyTimes{KeyID: e.KeyID, NotBefore: e.NotBefore, Expiry: e.Expiry})
			}
			now := time.Now().UTC()
			horizon := time.Duration(days) * 24 * time.Hour
			tl := s.Policy().Timeline(now, keys, horizon)
			if !reg.IsZero() {
				switch left := reg.Sub(now); {
				case left < 0:
					tl.Warnings = append(tl.Warnings, fmt.Sprintf("the registration lapsed on %s: Chrome ignores this issuer; renew it", reg.Format(time.DateOnly)))
				case left < 14*24*time.Hour:
					tl.Warnings = append(tl.Warnings, fmt.Sprintf("the registration lapses on %s, in %d days: renew it now", reg.Format(time.DateOnly), int(left.Hours()/24)))
				}
			} else {
				tl.Warnings = append(tl.Warnings, "PSTD_REGISTRATION_EXPIRES is not set: nothing warns before the registration lapses")
			}
			if format == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(struct {
					signer.Timeline
					RegistrationExpires string `json:"registration_expires,omitempty"`
				}{tl, func() string {
					if reg.IsZero() {
						return ""
					}
					return reg.Format(time.DateOnly)
				}()})
			}
			tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "key plan from %s for %d days (signing period %v, published %v ahead, redeems %v after)\n\n",
				now.Format(time.DateOnly), days, s.SigningPeriod, s.PublishLead, s.RedeemGrace)
			fmt.Fprintln(tw, "KEY\tPUBLISHED\tSIGNS FROM\tSIGNS UNTIL\tREDEEMS UNTIL")
			day := func(t time.Time) string { return t.UTC().Format(time.DateOnly) }
			for _, w := range tl.Keys {
				id := fmt.Sprint(w.KeyID)
				if w.Planned {
					id = "(next)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", id, day(w.Published), day(w.SignsFrom), day(w.SignsUntil), day(w.RedeemsUntil))
			}
			fmt.Fprintln(tw)
			if !tl.NextRotation.IsZero() {
				fmt.Fprintf(tw, "next rotation:\t%s\t(successor published: %v)\n", day(tl.NextRotation), tl.Successor)
			}
			if !reg.IsZero() {
				fmt.Fprintf(tw, "registration expires:\t%s\n", day(reg))
			}
			for _, w := range tl.Warnings {
				fmt.Fprintf(tw, "warning:\t%s\n", w)
			}
			return tw.Flush()
		})
}
