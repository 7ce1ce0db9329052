// Package cli gives pstd's binaries one exit-code rule and one way to refuse
// a mistyped command:
//
//	0  success, or help asked for (-h, --help)
//	1  the command ran and failed
//	2  a usage error: an unknown command or flag, a bad argument, no command
//
// A service manager reads anything but 0 as failure, so a typo such as
// "pstd srve" must never exit 0.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/peterbourgon/ff/v3/ffcli"
)

// UsageError is a mistake in how a command was invoked (exit status 2).
type UsageError struct{ msg string }

func (e *UsageError) Error() string { return e.msg }

// Usagef returns a UsageError.
func Usagef(format string, args ...any) error { return &UsageError{fmt.Sprintf(format, args...)} }

// Run parses args against root and runs the chosen command, printing any
// error to stderr as "NAME: error", and returns the exit status.
func Run(ctx context.Context, root *ffcli.Command, args []string, stderr io.Writer) int {
	if err := root.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "%s: %v\n", root.Name, err)
		return 2
	}
	err := root.Run(ctx)
	var ue *UsageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "%s: %v\n", root.Name, err)
		return 2
	default:
		fmt.Fprintf(stderr, "%s: %v\n", root.Name, err)
		return 1
	}
}

// Group is the Exec of a command that only holds subcommands: with no
// argument it prints the usage and is a usage error; with one it names the
// unknown command and the nearest real one.
func Group(c *ffcli.Command, stderr io.Writer) func(context.Context, []string) error {
	return func(_ context.Context, args []string) error {
		if len(args) == 0 {
			fmt.Fprint(stderr, ffcli.DefaultUsageFunc(c))
			fmt.Fprintln(stderr)
			return Usagef("%s: a command is required", c.ShortUsage)
		}
		var names []string
		for _, sc := range c.Subcommands {
			names = append(names, sc.Name)
		}
		if n := Nearest(args[0], names); n != "" {
			return Usagef("unknown command %q; did you mean %q?", args[0], n)
		}
		return Usagef("unknown command %q; the commands are %s", args[0], strings.Join(names, ", "))
	}
}

// Nearest returns the name closest to s (at most two edits away), or "".
func Nearest(s string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		if d := distance(s, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// distance is the Levenshtein distance between a and b, with a
// transposition of neighbours counting as one edit.
func distance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}
