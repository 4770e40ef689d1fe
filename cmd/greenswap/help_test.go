package main

import (
	"bytes"
	"strings"
	"testing"
)

// Every way of asking for help prints it on stdout and exits 0; every
// wrong word or flag exits 2 with one line on stderr naming the help to
// read, and prints no help page.
func TestHelpPaths(t *testing.T) {
	t.Parallel()
	const appHelp = "greenswap - rewrite the structure of a live PostgreSQL table"
	cases := []struct {
		args   []string
		code   int
		stdout string // must contain ("" = must be empty)
		stderr string // must contain ("" = must be empty)
	}{
		{nil, 0, appHelp, ""},
		{[]string{"--help"}, 0, appHelp, ""},
		{[]string{"-h"}, 0, appHelp, ""},
		{[]string{"help"}, 0, appHelp, ""},
		{[]string{"h"}, 0, appHelp, ""},
		{[]string{"help", "plan"}, 0, "greenswap plan - review a migration", ""},
		{[]string{"help", "cutover"}, 0, "greenswap cutover", ""},
		{[]string{"plan", "--help"}, 0, "greenswap plan - review a migration", ""},
		{[]string{"sync", "-h"}, 0, "greenswap sync - adopt the table", ""},
		{[]string{"help", "exit-codes"}, 0, "greenswap exit codes:", ""},
		{[]string{"nope"}, 2, "", `no command "nope"; see ` + "`greenswap --help`"},
		{[]string{"help", "nope"}, 2, "", `no command or help topic "nope"`},
		{[]string{"--bogus"}, 2, "", "flag provided but not defined: -bogus (see `greenswap --help`)"},
		{[]string{"plan", "--bogus"}, 2, "", "flag provided but not defined: -bogus (see `greenswap plan --help`)"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		code := run(append([]string{"greenswap"}, c.args...), &out, &errb)
		name := strings.Join(c.args, " ")
		if code != c.code {
			t.Errorf("greenswap %s: exit %d, want %d (stderr %q)", name, code, c.code, errb.String())
		}
		check := func(what, got, want string) {
			if want == "" && got != "" {
				t.Errorf("greenswap %s: %s should be empty, got %q", name, what, got)
			}
			if want != "" && !strings.Contains(got, want) {
				t.Errorf("greenswap %s: %s lacks %q:\n%s", name, what, want, got)
			}
		}
		check("stdout", out.String(), c.stdout)
		check("stderr", errb.String(), c.stderr)
		if c.code != 0 && strings.Count(strings.TrimSpace(errb.String()), "\n") > 0 {
			t.Errorf("greenswap %s: more than one line on stderr:\n%s", name, errb.String())
		}
	}
}
