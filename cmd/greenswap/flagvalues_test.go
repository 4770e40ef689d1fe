package main

import (
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestFlagValuesNeverQuietlyReplaced: for every command, every number flag
// given NaN or Inf, and every --lock-timeout given 0s or a negative
// duration, before and (for commands taking one) after the migration
// name, is exit 2 with
// one line naming the flag; nothing connects (the DSN points nowhere). A
// NaN passes every range check (no comparison with it holds) and a zero
// lock timeout used to become the 2 s default without a word.
func TestFlagValuesNeverQuietlyReplaced(t *testing.T) {
	cases := 0
	for _, cmd := range commands() {
		for _, f := range cmd.Flags {
			name := f.Names()[0]
			var bad []string
			switch f.(type) {
			case *cli.Float64Flag:
				bad = []string{"NaN", "Inf", "-Inf"}
			case *cli.DurationFlag:
				if name == "quiet-period" {
					bad = []string{"-1s"}
				}
				if name == "lock-timeout" {
					bad = []string{"0s", "-1s"}
				}
			}
			for _, v := range bad {
				forms := [][]string{{cmd.Name, "--" + name + "=" + v}}
				if strings.Contains(cmd.ArgsUsage, "NAME") { // flags may follow the name
					forms = [][]string{{cmd.Name, "--" + name + "=" + v, "x"}, {cmd.Name, "x", "--" + name + "=" + v}}
				}
				for _, args := range forms {
					cases++
					code, _, stderr := runCutoverCLI(args...)
					lines := strings.Split(strings.TrimSpace(stderr), "\n")
					if code != 2 || len(lines) != 1 || !strings.Contains(stderr, "--"+name) {
						t.Errorf("%q: exit %d, stderr %q; want exit 2, one line naming --%s", args, code, stderr, name)
					}
				}
			}
		}
	}
	if cases < 20 {
		t.Fatalf("only %d cases: the commands lost their number flags or --lock-timeout?", cases)
	}
}
