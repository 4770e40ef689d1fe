package main

import (
	"math"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/greenswap/greenswap/internal/exitcode"
)

// checkFlagValues refuses flag values that parse but that the library would
// quietly replace or could not honour: a non-finite number (NaN slips past
// every range check, as no comparison with it holds) and a --lock-timeout
// of zero or less, which the library reads as "the default" and PostgreSQL
// would read as "wait forever", and a negative --quiet-period. The operator asked for something and must
// learn they did not get it. Run before each action and again after the
// flags written after a migration name are applied.
func checkFlagValues(c *cli.Context) error {
	if c.Command == nil {
		return nil
	}
	for _, f := range c.Command.Flags {
		name := f.Names()[0]
		if !c.IsSet(name) {
			continue
		}
		switch f.(type) {
		case *cli.Float64Flag:
			if v := c.Float64(name); math.IsNaN(v) || math.IsInf(v, 0) {
				return exitcode.Errorf(exitcode.BadInput, "--%s %g is not a number greenswap can use: give a finite value (see `greenswap %s --help`)",
					name, v, c.Command.Name)
			}
		case *cli.DurationFlag:
			v := c.Duration(name)
			if name == "lock-timeout" && v <= 0 {
				return exitcode.Errorf(exitcode.BadInput,
					"--lock-timeout %s: give a positive duration such as 500ms (PostgreSQL's 0 waits for a lock forever, with the application's queries queued behind it)", v.Round(time.Millisecond))
			}
			if name == "quiet-period" && v < 0 {
				// A negative quiet period used to finalize without watching
				// (an explicit 0 is the documented "do not watch").
				return exitcode.Errorf(exitcode.BadInput, "--%s %s: give a duration of zero or more (see `greenswap %s --help`)", name, v, c.Command.Name)
			}
		}
	}
	return nil
}

// withFlagValueChecks runs checkFlagValues before the command's own action.
func withFlagValueChecks(cmd *cli.Command) {
	action := cmd.Action
	if action == nil {
		return
	}
	cmd.Action = func(c *cli.Context) error {
		if err := checkFlagValues(c); err != nil {
			return err
		}
		return action(c)
	}
}
