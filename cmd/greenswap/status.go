package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/runner"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show where every migration stands (or one): state, progress, verify, last event",
		ArgsUsage: "[NAME]",
		Description: `status lists every migration recorded in this database (greenswap.migrations), or
only NAME: its state and phase, backfill progress (rows copied of the estimate, rate,
batch size, throttle, paused), the last verify result, which side is primary, timestamps,
the last event of its log and, in logical mode, the WAL its replication slot retains
and the stream's backlog: the WAL not applied to green yet, about how far behind that
is in time, whether it grows or shrinks (WAL bytes/s, from two readings --sample apart)
and when it will have caught up ("never at this rate" while it grows).
A migration of several tables shows each table's progress line.

Shapes: while green exists (syncing, synced, cut over), status samples for --sample
(every 100ms) which client sessions use each shape of each table: the app name (the
view), blue and green (the tables in their version schemas), from pg_locks of open
transactions and pg_stat_activity: application_name, user, client address, read and
write sightings, last seen, and each shape's share of the write sightings; blue's
share of all sightings is what finalize --max-legacy-share bounds. It cannot see a
statement that starts and commits between two samples, nor a session idle between
transactions (the output says so); sessions named greenswap... are listed apart.
It only reads; a database where greenswap never ran has no migrations.

Example:
   greenswap status
   greenswap status orders_v2 --json | jq .migrations[0].progress

Exit codes: 0 shown (also when there are none); 2 no migration of that name, or an
unreachable database.`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print a JSON document (schema_version " + fmt.Sprint(runner.StatusSchemaVersion) + ")"},
			&cli.DurationFlag{Name: "sample", Value: runner.DefaultStatusSample,
				Usage: "read each logical stream's backlog twice this `DURATION` apart for its trend and ETA (0: once, no trend), and sample the sessions on the shapes for as long"},
		},
		BashComplete: completeMigrations,
		Action:       runStatus,
	}
}

func runStatus(c *cli.Context) error {
	names, err := trailingFlags(c)
	asJSON := c.Bool("json")
	fail := func(err error) error {
		if asJSON {
			writeJSONError(c.App.Writer, runner.StatusSchemaVersion, err)
		}
		return err
	}
	if err != nil {
		return fail(err)
	}
	if len(names) > 1 {
		return fail(exitcode.Errorf(exitcode.BadInput, "status takes at most one migration name, got %q", names))
	}
	name := ""
	if len(names) == 1 {
		name = names[0]
	}
	env, err := connect(c)
	if err != nil {
		return fail(err)
	}
	defer env.Close()
	sample := c.Duration("sample")
	if sample < 0 {
		return fail(exitcode.Errorf(exitcode.BadInput, "--sample must not be negative"))
	}
	// --sample 0: one reading of the backlog, one sample of the shapes.
	rep, err := runner.Status(c.Context, env, name, runner.StatusOptions{Sample: sample, ShapeWindow: max(sample, time.Nanosecond)})
	if err != nil {
		return fail(err)
	}
	if asJSON {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	writeStatus(c.App.Writer, rep, time.Now())
	return nil
}

// completeMigrations completes migration names for `status` when a
// database is reachable, and flags after a "-".
func completeMigrations(c *cli.Context) {
	if n := len(os.Args); n > 2 && strings.HasPrefix(os.Args[n-2], "-") {
		cli.DefaultCompleteWithFlags(c.Command)(c) // urfave/cli reads the word being completed from os.Args too
		return
	}
	if c.NArg() > 0 {
		return
	}
	env, err := connect(c)
	if err != nil {
		return
	}
	defer env.Close()
	rep, err := runner.Status(c.Context, env, "", runner.StatusOptions{Sample: -1, ShapeWindow: -1})
	if err != nil {
		return
	}
	for _, m := range rep.Migrations {
		fmt.Fprintln(c.App.Writer, m.Name)
	}
}

func writeStatus(w io.Writer, rep *runner.StatusReport, now time.Time) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	if len(rep.Migrations) == 0 {
		p("no migrations in this database (greenswap plan -f SPEC reviews one; greenswap sync -f SPEC starts it)")
		return
	}
	for i, m := range rep.Migrations {
		if i > 0 {
			p("")
		}
		state := string(m.State)
		if m.Phase != "" {
			state += " (" + m.Phase + ")"
		}
		p("%s  %s  %s mode  %s  primary: %s", m.Name, m.Table, m.Mode, state, m.PrimarySide)

		pr := m.Progress
		prog := fmt.Sprintf("%s of ~%s rows (%.1f%%)", thousands(pr.RowsCopied), thousands(pr.RowsEstimate), pr.Percent)
		if pr.Done {
			prog = fmt.Sprintf("backfill done: %s rows copied", thousands(pr.RowsCopied))
		}
		var extra []string
		if pr.RowsPerSec > 0 && !pr.Done {
			extra = append(extra, thousands(int64(pr.RowsPerSec))+" rows/s")
		}
		if pr.BatchSize > 0 && !pr.Done {
			extra = append(extra, "batch "+thousands(int64(pr.BatchSize)))
		}
		if pr.ETASeconds != nil {
			extra = append(extra, "ETA "+(time.Duration(*pr.ETASeconds*float64(time.Second))).Round(time.Second).String())
		}
		if pr.Paused {
			extra = append(extra, "PAUSED (greenswap resume "+m.Name+")")
		}
		if pr.Throttle != "" {
			extra = append(extra, "throttled: "+pr.Throttle)
		}
		if len(extra) > 0 {
			prog += ", " + strings.Join(extra, ", ")
		}
		p("  progress  %s", prog)
		for _, t := range m.Tables {
			p("%s", tableProgressLine(t))
		}

		switch {
		case !m.Verify.Run:
			p("  verify    not run yet")
		case m.Verify.OK != nil && *m.Verify.OK:
			p("  verify    identical, %s", statusWhen(m.Verify.At, now))
		default:
			p("  verify    DIFFERENCES found, %s (greenswap verify %s shows them)", statusWhen(m.Verify.At, now), m.Name)
		}
		if e := m.LastEvent; e != nil {
			who := e.Actor
			if e.Host != "" {
				who += "@" + e.Host
			}
			p("  last      %s: %s (%s) by %s, %s", e.Step, e.Outcome, statusMS(e.DurationMS), who, statusWhen(&e.At, now))
		}
		if g := m.GuardWindow; g != nil { // cutover --guard watching
			if g.Gone {
				p("  guard     guard process gone at its last event (%s, %s); the migration is %s: %s", g.Phase, statusWhen(&g.At, now), m.State, guardGoneAdvice(m.Name, m.State))
			} else if g.Phase == "rolling-back" {
				p("  guard     tripped, rolling back (the guard process is alive)")
			} else if g.Stale {
				p("  guard     the window was to end %s but recorded no verdict: the cutover --guard process stopped; still cut over", statusWhen(&g.Until, now))
			} else {
				p("  guard     watching, %s left of %s; last sample: %s", (time.Duration(g.LeftMS) * time.Millisecond).Round(time.Second), time.Duration(g.WindowMS)*time.Millisecond, g.LastSample)
			}
		}
		if s := m.Slot; s != nil {
			switch {
			case !s.Exists && s.HandedOver:
				p("  slot      %s dropped when cutover handed blue → green over to the sync triggers (expected): the triggers carry the changes", s.Name)
			case !s.Exists:
				p("  slot      %s is recorded but does not exist", s.Name)
			default:
				act := "inactive"
				if s.Active {
					act = "active"
				}
				p("  slot      %s %s, retains %s of WAL", s.Name, act, runner.HumanBytes(s.RetainedBytes))
			}
		}
		if b := m.StreamBacklog; b != nil {
			p("  backlog   %s", b.Summary())
		}
		for _, k := range m.NotValidForeignKeys {
			p("  fk        %s on %s is NOT VALID: the swap that moved it was interrupted before validating it; the next cutover, rollback or finalize of %s validates it (or run %s)",
				k.Name, k.Table, m.Name, k.SQL)
		}
		writeShapes(p, m)
		t := m.Timestamps
		line := fmt.Sprintf("created %s, in this state since %s, updated %s", statusWhen(&t.Created, now), statusWhen(&t.StateChanged, now), statusWhen(&t.Updated, now))
		if t.BackfillStarted != nil {
			line += ", backfill started " + statusWhen(t.BackfillStarted, now)
		}
		if t.BackfillDone != nil {
			line += ", done " + statusWhen(t.BackfillDone, now)
		}
		p("  times     %s", line)
	}
}

func statusMS(ms float64) string {
	return (time.Duration(ms * float64(time.Millisecond))).Round(time.Millisecond).String()
}

// statusWhen formats t as a local timestamp and how long ago it was.
func statusWhen(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	ago := now.Sub(*t).Round(time.Second)
	if ago < 0 {
		ago = 0
	}
	return fmt.Sprintf("%s (%s ago)", t.Local().Format("2006-01-02 15:04:05"), ago)
}

// writeShapes prints the shape telemetry: per table, each shape's clients
// with their read and write sightings, and the write shares.
func writeShapes(p func(string, ...any), m runner.MigrationStatus) {
	if m.ShapesUnavailable != "" {
		p("  shapes    not sampled: %s", m.ShapesUnavailable)
	}
	r := m.Shapes
	if r == nil {
		return
	}
	share := func(sh string) string { return fmt.Sprintf("%s %.0f%%", sh, 100*r.WriteShare[sh]) }
	shares := "no client write seen"
	if len(r.WriteShare) > 0 {
		var parts []string
		for _, sh := range []string{"app", "blue", "green", "blue|green"} {
			if _, ok := r.WriteShare[sh]; ok {
				parts = append(parts, share(sh))
			}
		}
		shares = "writes: " + strings.Join(parts, ", ")
	}
	p("  shapes    over %.1fs (%d samples): %s; legacy (blue) share of sightings %.0f%%", r.WindowS, r.Samples, shares, 100*r.LegacyShare)
	for _, t := range r.Tables {
		p("    %s", t.Table)
		for _, u := range t.Shapes {
			rows := ""
			if u.RowsWritten != nil {
				rows = fmt.Sprintf(", %s rows written by any path", thousands(*u.RowsWritten))
			}
			p("      %-10s %d client(s), %d read / %d write sightings, %.0f%% of writes%s", u.Shape, len(u.Clients), u.Reads, u.Writes, 100*u.WriteShare, rows)
			for _, c := range u.Clients {
				p("        %s", c)
			}
		}
	}
	for _, c := range r.Greenswap {
		p("    greenswap's own (by application_name, not counted): %s on %s of %s", c, c.Shape, c.Table)
	}
	p("    (%s)", r.Misses)
}

// tableProgressLine is one table's backfill line of a migration of several
// tables, in status and in sync --watch.
func tableProgressLine(t runner.TableProgress) string {
	line := fmt.Sprintf("%s of ~%s rows (%.1f%%)", thousands(t.RowsCopied), thousands(t.RowsEstimate), t.Percent)
	if t.Done {
		line = fmt.Sprintf("done: %s rows copied", thousands(t.RowsCopied))
	} else if t.Copying {
		line += ", copying now"
		if t.RowsPerSec > 0 {
			line += ", " + thousands(int64(t.RowsPerSec)) + " rows/s"
		}
	}
	return "    table " + t.Table + "  " + line
}

// guardGoneAdvice: what to do about a migration whose guard process died.
func guardGoneAdvice(name string, st state.State) string {
	if st == state.CutOver {
		return fmt.Sprintf("nothing watches it; watch the application yourself, `greenswap rollback %s` switches back, `greenswap finalize %s` retires blue", name, name)
	}
	return fmt.Sprintf("its rollback committed, the app name reads blue; cut over again when ready (`greenswap cutover %s`)", name)
}
