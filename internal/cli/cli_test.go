package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"strings"
	"testing"

	"github.com/peterbourgon/ff/v3/ffcli"
)

func tree(run func(context.Context, []string) error) *ffcli.Command {
	leaf := &ffcli.Command{Name: "list", FlagSet: flag.NewFlagSet("x keys list", flag.ContinueOnError), Exec: run}
	keys := &ffcli.Command{Name: "keys", ShortUsage: "x keys list", Subcommands: []*ffcli.Command{leaf}}
	root := &ffcli.Command{Name: "x", ShortUsage: "x keys", FlagSet: flag.NewFlagSet("x", flag.ContinueOnError), Subcommands: []*ffcli.Command{keys}}
	var stderr bytes.Buffer
	keys.Exec = Group(keys, &stderr)
	root.Exec = Group(root, &stderr)
	leaf.FlagSet.SetOutput(&stderr)
	root.FlagSet.SetOutput(&stderr)
	return root
}

func TestExitCodes(t *testing.T) {
	ok := func(context.Context, []string) error { return nil }
	fail := func(context.Context, []string) error { return errors.New("database down") }
	usage := func(context.Context, []string) error { return Usagef("give one key id") }
	for _, c := range []struct {
		name string
		run  func(context.Context, []string) error
		args []string
		code int
		msg  string
	}{
		{"success", ok, []string{"keys", "list"}, 0, ""},
		{"failure", fail, []string{"keys", "list"}, 1, "database down"},
		{"usage error from a command", usage, []string{"keys", "list"}, 2, "give one key id"},
		{"help", ok, []string{"keys", "list", "-h"}, 0, ""},
		{"unknown flag", ok, []string{"keys", "list", "--bogus"}, 2, "bogus"},
		{"no command", ok, nil, 2, "a command is required"},
		{"group without a command", ok, []string{"keys"}, 2, "a command is required"},
		{"typo", ok, []string{"kyes"}, 2, `did you mean "keys"`},
		{"typo in a subcommand", ok, []string{"keys", "lsit"}, 2, `did you mean "list"`},
		{"nothing near", ok, []string{"frobnicate"}, 2, "the commands are keys"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if got := Run(context.Background(), tree(c.run), c.args, &stderr); got != c.code {
				t.Fatalf("exit %d, want %d (stderr %q)", got, c.code, stderr.String())
			}
			if !strings.Contains(stderr.String(), c.msg) {
				t.Fatalf("stderr %q lacks %q", stderr.String(), c.msg)
			}
		})
	}
}

func TestNearest(t *testing.T) {
	names := []string{"serve", "migrate", "retire", "rotate", "rotate-rr"}
	for in, want := range map[string]string{"srve": "serve", "retrie": "retire", "rotate-r": "rotate-rr", "rotat": "rotate", "mgirate": "migrate", "zzz": ""} {
		if got := Nearest(in, names); got != want {
			t.Errorf("Nearest(%q) = %q, want %q", in, got, want)
		}
	}
}
