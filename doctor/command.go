package doctor

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/pstd/pstd/internal/cli"
)

// Command is `pstctl doctor`. It takes only its own flags (no server
// settings: it speaks to the issuer over HTTP like any browser). Exit
// status (internal/cli): 0 no failure (warnings allowed), 1 a check failed,
// 2 a usage error.
func Command(out, errOut io.Writer) *ffcli.Command {
	fs := flag.NewFlagSet("pstctl doctor", flag.ContinueOnError)
	fs.SetOutput(errOut)
	format := fs.String("format", "table", "output: table or json")
	redeem := fs.Bool("redeem", false, "also spend one issued token and verify its redemption record against the JWKS")
	timeout := fs.Duration("timeout", 10*time.Second, "bound on each network operation")
	origin := fs.String("origin", DefaultOrigin, "the cross-origin page to act as (CORS checks, redeeming origin)")
	return &ffcli.Command{
		Name:       "doctor",
		ShortUsage: "pstctl doctor [--redeem] [--format table|json] [--timeout 10s] [--origin https://page.example] ISSUER_URL",
		ShortHelp:  "check a live issuer against Chrome's and the registration's rules",
		FlagSet:    fs,
		Exec: func(ctx context.Context, args []string) error {
			usage := func(err error) error { return cli.Usagef("doctor: %v", err) }
			// Flags may also follow the URL.
			var pos []string
			for len(args) > 0 {
				pos = append(pos, args[0])
				if err := fs.Parse(args[1:]); err != nil {
					if errors.Is(err, flag.ErrHelp) {
						return err
					}
					return usage(err)
				}
				args = fs.Args()
			}
			if len(pos) != 1 {
				return usage(errors.New("give exactly one issuer URL, e.g. https://issuer.example"))
			}
			if *format != "table" && *format != "json" {
				return usage(fmt.Errorf("--format %q: use table or json", *format))
			}
			rep, err := Run(ctx, pos[0], Options{Redeem: *redeem, Timeout: *timeout, Origin: *origin})
			if err != nil {
				var ue *UsageError
				if errors.As(err, &ue) {
					return usage(err)
				}
				return err
			}
			if err := rep.Write(out, *format); err != nil {
				return err
			}
			if rep.Failed() {
				return fmt.Errorf("doctor: %d check(s) failed", rep.Summary.Fail)
			}
			return nil
		},
	}
}
