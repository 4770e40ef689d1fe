package main

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/clibuild"
)

// buildBinary builds cmd/greenswap as an operator gets it, so the help
// paths are checked through a real process: its exit status and its two
// streams, not run()'s return value.
func buildBinary(t *testing.T) string {
	t.Helper()
	root, err := clibuild.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin, err := clibuild.Build(ctx, root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

type cliResult struct {
	code           int
	stdout, stderr string
}

func runBinary(t *testing.T, bin string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	// No database may be needed to ask for help: point every way of
	// finding one at nothing.
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir(), "PGHOST=/nonexistent"}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("greenswap %s: %v", strings.Join(args, " "), err)
	}
	return cliResult{code, out.String(), errb.String()}
}

// Every help path of the built binary: asking for help prints it on stdout,
// nothing on stderr, exit 0; a wrong command, topic or flag prints no help,
// one line on stderr naming the help to read, exit 2.
func TestHelpPathsBinary(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t)
	const appHelp = "greenswap - rewrite the structure of a live PostgreSQL table"

	type tc struct {
		args   []string
		code   int
		stdout string // must contain ("" = must be empty)
		stderr string // must contain ("" = must be empty)
	}
	cases := []tc{
		{nil, 0, appHelp, ""},
		{[]string{"--help"}, 0, appHelp, ""},
		{[]string{"-h"}, 0, appHelp, ""},
		{[]string{"help"}, 0, appHelp, ""},
		{[]string{"h"}, 0, appHelp, ""},
		{[]string{"help", "exit-codes"}, 0, "greenswap exit codes:", ""},
		{[]string{"nope"}, 2, "", `greenswap: no command "nope"; see ` + "`greenswap --help`"},
		{[]string{"help", "nope"}, 2, "", `greenswap: no command or help topic "nope" (topics: exit-codes)`},
		{[]string{"--bogus"}, 2, "", "greenswap: flag provided but not defined: -bogus (see `greenswap --help`)"},
		{[]string{"help", "exit-codes", "--bogus"}, 2, "", "greenswap: flag provided but not defined: --bogus"},
		{[]string{"help", "plan", "extra"}, 2, "", `greenswap: help takes one COMMAND or topic, got also "extra"`},
		{[]string{"--log-format", "bogus", "status"}, 2, "", `greenswap: --log-format "bogus" is not valid: use one of auto|console|json`},
		{[]string{"--log-level", "bogus", "status"}, 2, "", `greenswap: --log-level "bogus" is not valid: use one of debug|info|warn|error`},
		{[]string{"--log-level", "bogus", "help"}, 2, "", `greenswap: --log-level "bogus" is not valid`},
	}
	// Each command, by the three ways of asking for its help.
	for _, c := range commands() {
		title := "greenswap " + c.Name + " - " + c.Usage
		cases = append(cases,
			tc{[]string{"help", c.Name}, 0, title, ""},
			tc{[]string{c.Name, "--help"}, 0, title, ""},
			tc{[]string{c.Name, "-h"}, 0, title, ""},
		)
		if c.Name != "help" {
			cases = append(cases, tc{[]string{c.Name, "--bogus"}, 2, "",
				"greenswap: flag provided but not defined: -bogus (see `greenswap " + c.Name + " --help`)"})
		}
	}
	// `help --help` and `help -h` print the app's help (urfave/cli answers
	// a help flag given to the help command with the page of its parent);
	// what matters is that they are help, on stdout, exit 0.
	for i := range cases {
		if a := cases[i].args; len(a) == 2 && a[0] == "help" && strings.HasPrefix(a[1], "-") {
			cases[i].stdout = appHelp
		}
	}

	for _, c := range cases {
		name := strings.Join(c.args, " ")
		r := runBinary(t, bin, c.args...)
		if r.code != c.code {
			t.Errorf("greenswap %s: exit %d, want %d (stderr %q)", name, r.code, c.code, r.stderr)
		}
		check := func(what, got, want string) {
			if want == "" && got != "" {
				t.Errorf("greenswap %s: %s should be empty, got %q", name, what, got)
			}
			if want != "" && !strings.Contains(got, want) {
				t.Errorf("greenswap %s: %s lacks %q:\n%s", name, what, want, got)
			}
		}
		check("stdout", r.stdout, c.stdout)
		check("stderr", r.stderr, c.stderr)
		if c.code != 0 && strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
			t.Errorf("greenswap %s: more than one line on stderr:\n%s", name, r.stderr)
		}
		if c.code == 0 && !strings.Contains(r.stdout, "USAGE:") && c.args[len(c.args)-1] != "exit-codes" {
			t.Errorf("greenswap %s: stdout is not a help page (no USAGE:):\n%s", name, r.stdout)
		}
	}
}
