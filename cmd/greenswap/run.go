package main

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/runner"
)

func runCommand() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "apply an ALTER TABLE the cheapest safe way, in one command: in place where PostgreSQL can, blue-green where it must",
		ArgsUsage: " ",
		Description: `run --alter takes the ALTER TABLE (and CREATE INDEX) a DBA would write and
does all of it, for scripts and CI:

  1. plan gate: every subcommand is rehearsed on an empty copy of the table
     in a rolled-back transaction (as ` + "`greenswap plan --alter`" + ` shows it); an
     ALTER PostgreSQL refuses exits 2 with nothing changed, and what plan
     --alter reports blocking (a session-dependent type conversion, a
     table without a key, …) exits 3 with nothing changed;
  2. in-place steps, on the live table, one statement at a time under a
     short lock_timeout, retried with backoff (ADD COLUMN, DROP COLUMN,
     SET/DROP DEFAULT, widenings without a rewrite, renames; CHECK and
     FOREIGN KEY as NOT VALID then VALIDATE; SET NOT NULL through a
     validated CHECK; indexes and UNIQUE built CONCURRENTLY, an INVALID
     leftover of an earlier try dropped and rebuilt). After the last
     attempt: exit 5, the statement that timed out and every later one
     not run;
  3. the blue-green part, if any (a type change that rewrites, a new
     primary key, partitioning): sync of the derived spec (its own plan
     gate first: blocking hazards exit 3), verify, cutover. --until synced
     stops once green is synced.

Each statement is recorded in greenswap.events when it commits. After any
failure or interruption run the same command again: it resumes with the
plan its first run recorded (its in-place steps not yet run rehearsed again
against the table as it is now: one that no longer holds is refused, exit
2), skips what is done, and the lifecycle resumes where it stopped. A different ALTER under the same migration name is
refused (exit 2).

Sessions with server-side prepared statements that select * from the table
(or RETURNING *) see one "cached plan must not change result type" error per
statement after a column is added or dropped in place, as with the plain
ALTER; the blue-green part changes nothing they see until cutover.

Exit codes as for every command (greenswap help exit-codes).

Example:

   greenswap run --alter 'ALTER TABLE public.orders ADD COLUMN note text, ALTER COLUMN email SET NOT NULL'
   greenswap run --alter-file change.sql --until synced
   greenswap run --alter 'ALTER TABLE public.orders ALTER COLUMN id TYPE bigint' --name orders_v2`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "alter", Usage: "the `SQL`: one or more ALTER TABLE (or CREATE INDEX) statements on one table"},
			&cli.StringFlag{Name: "alter-file", Usage: "read the ALTER statements from `FILE`", TakesFile: true},
			&cli.StringFlag{Name: "name", Usage: "the migration's `NAME`", DefaultText: "the table's name + _alter"},
			&cli.StringFlag{Name: "until", Usage: "stop after `PHASE`: synced (before verify and cutover)", DefaultText: "through cutover"},
			&cli.DurationFlag{Name: "lock-timeout", Usage: "wait at most `DURATION` per attempt for a table lock, then roll back and retry", DefaultText: "2s"},
			&cli.IntFlag{Name: "max-attempts", Usage: "lock attempts per statement before giving up (exit 5)", DefaultText: "10"},
			&cli.IntFlag{Name: "batch-size", Usage: "blue-green part: copy exactly `N` rows per batch", DefaultText: "adaptive"},
			&cli.Float64Flag{Name: "nice-ratio", Usage: "blue-green part: after each batch, sleep `RATIO` times its duration", DefaultText: "0"},
		},
		Action: runAction,
	}
}

func runAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return exitcode.Errorf(exitcode.BadInput, "run takes no arguments, got %q: quote the whole ALTER after --alter", c.Args().First())
	}
	sql, err := alterInput(c) // plan --alter's reading of --alter / --alter-file
	if err != nil {
		return err
	}
	if sql == "" {
		return exitcode.Errorf(exitcode.BadInput, "run needs the change: greenswap run --alter 'ALTER TABLE …' (see `greenswap run --help`)")
	}
	opts := runner.AlterRunOptions{
		Name:        c.String("name"),
		LockTimeout: c.Duration("lock-timeout"),
		MaxAttempts: c.Int("max-attempts"),
		Sync:        runner.SyncOptions{BatchSize: c.Int("batch-size"), NiceRatio: c.Float64("nice-ratio"), LockTimeout: c.Duration("lock-timeout")},
		Out:         c.App.Writer,
	}
	switch c.String("until") {
	case "":
	case "synced":
		opts.UntilSynced = true
	default:
		return exitcode.Errorf(exitcode.BadInput, "--until %q: the one phase run can stop after is synced", c.String("until"))
	}
	if opts.LockTimeout < 0 || opts.MaxAttempts < 0 || opts.Sync.BatchSize < 0 || opts.Sync.NiceRatio < 0 {
		return exitcode.Errorf(exitcode.BadInput, "--lock-timeout, --max-attempts, --batch-size and --nice-ratio must not be negative")
	}
	opts.Cutover.SwapCommandOptions = runner.SwapCommandOptions{LockTimeout: opts.LockTimeout, MaxAttempts: opts.MaxAttempts, Out: c.App.Writer}
	env, err := connect(c)
	if err != nil {
		return err
	}
	defer env.Close()
	t0 := time.Now()
	res, err := runner.RunAlter(c.Context, env, sql, opts)
	if err != nil {
		if res != nil {
			fmt.Fprintf(c.App.ErrWriter, "run the same command again to resume %s\n", res.Migration)
		}
		return err
	}
	switch {
	case res.Plan.BlueGreen == nil:
		fmt.Fprintf(c.App.Writer, "%s: done in place in %s\n", res.Migration, time.Since(t0).Round(time.Millisecond))
	case opts.UntilSynced:
		fmt.Fprintf(c.App.Writer, "%s: in-place steps done and green synced; next: greenswap verify %s, then greenswap cutover %s\n", res.Migration, res.Migration, res.Migration)
	default:
		fmt.Fprintf(c.App.Writer, "%s: cut over in %s; the app name reads green. Roll back with greenswap rollback %s, or finalize with greenswap finalize %s\n",
			res.Migration, time.Since(t0).Round(time.Millisecond), res.Migration, res.Migration)
	}
	return nil
}
