package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/logx"
	"github.com/greenswap/greenswap/runner"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/verify"
)

// verifyShown is how many differing keys the human output lists (--json
// lists up to --max-keys).
const verifyShown = 50

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "prove green holds what blue holds: row checksums under one snapshot, differing keys listed",
		ArgsUsage: "NAME",
		Description: `verify reads blue through the forward mapping, cast to green's column types,
and green as it is, chunk by chunk over the key, every chunk under one shared
snapshot (so concurrent writes cannot cause false alarms), and compares each
chunk's row count and hash. A chunk that differs is narrowed to its keys:
missing in green, extra in green, or different (with the columns and both row
images). Values compare by their type's equality (-0 = 0); --exact compares
their text instead. Columns whose mapping cannot be recomputed (now(),
random(), clock_timestamp(), gen_random_uuid() ...) are left out with a
warning; green columns filled by defaults are left out with a note.

--repair re-copies exactly the differing keys from the primary side (blue
before cutover, green after it, through the reverse mapping into blue), then
verifies those chunks again. Rows only the other side has may be writes that
reached only that side: they are listed and left alone (exit 1) unless
--delete-extra is given.

Before comparing, verify checks that blue, green and the app-name view were
not changed outside greenswap since its last step (columns, defaults,
constraints, indexes, the view's definition, user triggers, row-level
security and policies, owner, inheritance) and that their privileges agree,
for every table of the migration; a change is refused with exit 3, one line
per change and what to do. Once a change is mirrored on every shape,
--accept-drift records it (privileges must agree); a column added is
refused even then (exit 3: the sync triggers do not carry it).

It runs while syncing once the backfill is done, synced, or cut over, and
records its result; cutover requires a passing verify since the last backfill.

A migration of several tables (tables:) is checked table by table in
dependency order, every table under the same snapshot, so rows written
together in one transaction are compared in every table or in none. The
output has one section per table with its verdict, then the totals and the
overall verdict; --json has "ok", "different_tables", the totals and a
"tables" array of the one-table documents, each with its "table".

Example:
   greenswap verify orders_v2
   greenswap verify orders_v2 --workers 4 --json | jq '.differences'
   greenswap verify orders_v2 --repair

Exit codes: 0 identical (or repaired and rechecked); 1 differences found in any table (listed),
or left after --repair; 2 bad input (unknown migration, backfill not finished);
3 the objects were changed outside greenswap (drift, listed); 4 migration busy.`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON: counts, per-chunk timings, differing keys"},
			&cli.IntFlag{Name: "workers", Value: verify.DefaultWorkers, Usage: "concurrent readers sharing the snapshot (`N` connections, plus one)"},
			&cli.BoolFlag{Name: "repair", Usage: "re-copy the differing keys from the primary side, then verify their chunks again"},
			&cli.BoolFlag{Name: "delete-extra", Usage: "with --repair: also delete the rows only the non-primary side has (listed and kept otherwise)"},
			&cli.BoolFlag{Name: "accept-drift", Usage: "record changes made outside greenswap as mirrored on every shape (privileges must agree)"},
			&cli.IntFlag{Name: "chunk-rows", Value: verify.DefaultChunkRows, Usage: "about `N` rows per chunk"},
			&cli.BoolFlag{Name: "exact", Usage: "compare values by their text output (also reports -0 vs 0, 1.0 vs 1.00); about twice the CPU"},
			&cli.IntFlag{Name: "max-keys", Value: verify.DefaultMaxReported, Usage: "list at most `N` differing keys (all are counted and repaired)"},
		},
		Action: runVerify,
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return exitcode.Errorf(exitcode.BadInput, "%s (see `greenswap verify --help`)", err)
		},
	}
}

func runVerify(c *cli.Context) error {
	asJSON := c.Bool("json")
	fail := func(err error) error {
		if asJSON {
			writeVerifyJSONError(c.App.Writer, err)
		}
		return err
	}
	args, err := trailingFlags(c)
	if err != nil {
		return fail(err)
	}
	asJSON = c.Bool("json")
	if c.Bool("delete-extra") && !c.Bool("repair") {
		return fail(exitcode.Errorf(exitcode.BadInput, "--delete-extra only means something with --repair"))
	}
	if len(args) != 1 {
		return fail(exitcode.Errorf(exitcode.BadInput, "verify takes one migration name: greenswap verify NAME (see `greenswap status` for the names)"))
	}
	for _, f := range []string{"workers", "chunk-rows", "max-keys"} {
		if c.Int(f) < 1 {
			return fail(exitcode.Errorf(exitcode.BadInput, "--%s must be at least 1, got %d", f, c.Int(f)))
		}
	}
	name := args[0]
	env, err := connect(c)
	if err != nil {
		return fail(err)
	}
	defer env.Close()
	opts := runner.VerifyOptions{
		Workers:     c.Int("workers"),
		ChunkRows:   c.Int("chunk-rows"),
		Repair:      c.Bool("repair"),
		DeleteExtra: c.Bool("delete-extra"),
		AcceptDrift: c.Bool("accept-drift"),
		Exact:       c.Bool("exact"),
		MaxReported: c.Int("max-keys"),
	}
	errw := c.App.ErrWriter
	var bar *verifyBar
	if !asJSON && logx.IsTerminal(errw) {
		bar = &verifyBar{w: errw}
		opts.Progress = bar.draw
	}
	if bar != nil {
		opts.OnTable = bar.table
	}
	rep, err := runner.VerifyMigration(c.Context, env, name, opts)
	bar.clear()
	var de *runner.DriftError
	if err != nil && !asJSON && errors.As(err, &de) {
		writeDrift(c.App.Writer, de)
		return exitcode.Errorf(exitcode.Blocked, "verify %s refused: %d change(s) made outside greenswap, listed above; nothing was compared", name, len(de.Drift))
	}
	if err != nil {
		return fail(err)
	}
	var doc any = verifyJSON{Migration: name, Result: rep.Result}
	if rep.Tables != nil {
		doc = verifyTablesJSON{Migration: name, TablesVerifyResult: rep.Tables}
	}
	switch {
	case asJSON:
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		if err := enc.Encode(doc); err != nil {
			return err
		}
	case rep.Tables != nil:
		writeVerifyTables(c.App.Writer, name, rep.Tables)
	default:
		writeVerify(c.App.Writer, name, rep.Result)
	}
	if !rep.OK() {
		return exitcode.With(exitcode.Failed, errAlreadyReported)
	}
	return nil
}

// trailingFlags applies the command's flags written after the migration
// name (greenswap verify NAME --repair: urfave/cli stops parsing flags at
// the first argument) and returns the positional arguments.
func trailingFlags(c *cli.Context) ([]string, error) {
	args := c.Args().Slice()
	var pos []string
	for len(args) > 0 {
		set := flag.NewFlagSet(c.Command.Name, flag.ContinueOnError)
		set.SetOutput(io.Discard)
		// The global flags (--dsn, --log-format, ...) are accepted after the
		// name too: `greenswap verify NAME --dsn ...` is how people type it.
		for _, f := range append(append([]cli.Flag{}, c.Command.Flags...), c.App.Flags...) {
			if set.Lookup(f.Names()[0]) != nil {
				continue
			}
			if err := f.Apply(set); err != nil {
				return nil, err
			}
		}
		if err := set.Parse(args); err != nil {
			return nil, exitcode.Errorf(exitcode.BadInput, "%s (see `greenswap %s --help`)", err, c.Command.Name)
		}
		var serr error
		set.Visit(func(f *flag.Flag) {
			if err := c.Set(f.Name, f.Value.String()); err != nil && serr == nil {
				serr = exitcode.Errorf(exitcode.BadInput, "--%s: %s", f.Name, err)
			}
		})
		if serr != nil {
			return nil, serr
		}
		rest := set.Args()
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	return pos, checkFlagValues(c)
}

// verifyJSON is the --json document.
type verifyJSON struct {
	Migration string `json:"migration"`
	*verify.Result
}

// verifyTablesJSON is the --json document of a migration of several
// tables: the overall verdict and totals, and under "tables" each table's
// one-table document with its "table".
type verifyTablesJSON struct {
	Migration string `json:"migration"`
	*runner.TablesVerifyResult
}

func writeVerifyJSONError(w io.Writer, err error) {
	var doc struct {
		Error    string         `json:"error"`
		ExitCode int            `json:"exit_code"`
		Drift    []shadow.Drift `json:"drift,omitempty"`
	}
	doc.Error, doc.ExitCode = err.Error(), int(exitcode.Of(err))
	var de *runner.DriftError
	if errors.As(err, &de) {
		doc.Drift = de.Drift
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(doc)
}

// writeDrift lists the changes made outside greenswap, one line each with
// what to do under it.
func writeDrift(w io.Writer, de *runner.DriftError) {
	fmt.Fprintf(w, "greenswap verify: %s — %d change(s) made outside greenswap since its last step:\n", de.Migration, len(de.Drift))
	for _, d := range de.Drift {
		fmt.Fprintf(w, "  %s\n", d)
		if d.Fix != "" {
			fmt.Fprintf(w, "      fix: %s\n", d.Fix)
		}
	}
	if de.Uncarried {
		fmt.Fprintf(w, "\nBLOCKED: --accept-drift cannot record these (greenswap cannot carry them through cutover and finalize): "+
			"undo them, or `greenswap rollback %s` and plan again with them in the spec\n", de.Migration)
		return
	}
	fmt.Fprintf(w, "\nBLOCKED: apply the same change to the other shape(s) or undo it, then verify again "+
		"(--accept-drift records a change mirrored on every shape); or `greenswap rollback %s`\n", de.Migration)
}

// verifyBar is the one-line progress display on a terminal.
type verifyBar struct {
	w     io.Writer
	drawn bool
	last  time.Time
	name  string // the table being compared, for several tables
}

func (b *verifyBar) table(name string, i, n int) {
	b.name = fmt.Sprintf(" %s (%d/%d)", name, i+1, n)
}

func (b *verifyBar) draw(p verify.Progress) {
	if time.Since(b.last) < 100*time.Millisecond && p.Done != p.Total {
		return
	}
	b.last = time.Now()
	rate := ""
	if s := p.Elapsed.Seconds(); s > 0 && p.Rows > 0 {
		rate = fmt.Sprintf(", %s rows/s", thousands(int64(float64(p.Rows)/s)))
	}
	unit := "chunks"
	if p.Phase == "repair" {
		unit = "batches"
	}
	fmt.Fprintf(b.w, "\r\033[Kverify%s %s: %d/%d %s, %s rows read%s, %s", b.name, p.Phase, p.Done, p.Total, unit,
		thousands(p.Rows), rate, p.Elapsed.Round(100*time.Millisecond))
	b.drawn = true
}

func (b *verifyBar) clear() {
	if b != nil && b.drawn {
		fmt.Fprint(b.w, "\r\033[K")
	}
}

// writeVerify prints the result for a human.
func writeVerify(w io.Writer, name string, r *verify.Result) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	mapped := "forward-mapped"
	if r.Direction == verify.Reverse {
		mapped = "reverse-mapped"
	}
	p("greenswap verify: %s — %s %s (%s) vs %s %s", name, r.SourceSide, r.Source, mapped, r.TargetSide, r.Target)
	rate := ""
	if s := r.Duration.Seconds(); s > 0 {
		rate = fmt.Sprintf(" (%s rows/s)", thousands(int64(float64(r.SourceRows+r.TargetRows)/s)))
	}
	p("  rows compared   %s %s, %s %s", thousands(r.SourceRows), r.SourceSide, thousands(r.TargetRows), r.TargetSide)
	p("  chunks          %d over key (%s), %d mismatched; %d workers, one snapshot at %s",
		r.Chunks, strings.Join(r.KeyColumns, ", "), r.MismatchedChunks, r.Workers, r.SnapshotAt.Format("15:04:05.000"))
	p("  duration        %s%s", r.Duration.Round(time.Millisecond), rate)
	how := "each type's equality (-0 = 0; --exact compares text)"
	if r.Exact {
		how = "text output (exact)"
	}
	p("  compared        %s, by %s", strings.Join(r.Compared, ", "), how)
	for _, e := range r.Excluded {
		p("  not compared    %s (%s): %s", e.Column, e.Reason, e.Detail)
	}
	for _, warn := range r.Warnings {
		if !strings.HasPrefix(warn, "column ") { // volatile columns are listed above
			p("  note            %s", warn)
		}
	}
	if r.Accepted > 0 {
		p("  accepted        %d rows equal only through the reverse mapping (written on %s, synced back)", r.Accepted, r.TargetSide)
	}
	if r.DifferenceCount > 0 {
		p("")
		p("  %d difference(s):", r.DifferenceCount)
		for i, d := range r.Differences {
			if i == verifyShown {
				p("  … and %d more (greenswap verify %s --json lists up to --max-keys)", r.DifferenceCount-verifyShown, name)
				break
			}
			keys := make([]string, len(d.Key))
			for j, k := range d.Key {
				keys[j] = r.KeyColumns[j] + "=" + k
			}
			what := d.Kind + " in " + r.TargetSide
			if d.Kind == "different" {
				what = "different: " + strings.Join(d.Columns, ", ")
			}
			p("  %-24s %s", strings.Join(keys, " "), what)
			if d.Source != "" {
				p("      %-6s %s", r.SourceSide+":", d.Source)
			}
			if d.Target != "" {
				p("      %-6s %s", r.TargetSide+":", d.Target)
			}
		}
		if len(r.Differences) < r.DifferenceCount && len(r.Differences) < verifyShown {
			p("  … and %d more not listed (raise --max-keys)", r.DifferenceCount-len(r.Differences))
		}
	}
	if rep := r.Repair; rep != nil {
		p("")
		p("  repair          %d keys: %d rows copied from %s, %d extra rows deleted from %s",
			rep.Keys, rep.Upserted, r.SourceSide, rep.Deleted, r.TargetSide)
		if rep.ExtraLeft > 0 {
			keys := make([]string, len(rep.ExtraKeys))
			for i, k := range rep.ExtraKeys {
				keys[i] = "(" + strings.Join(k, ", ") + ")"
			}
			more := ""
			if rep.ExtraLeft > len(keys) {
				more = fmt.Sprintf(" … and %d more", rep.ExtraLeft-len(keys))
			}
			p("  left alone      %d row(s) only %s has, maybe writes that never reached %s: %s%s",
				rep.ExtraLeft, r.TargetSide, r.SourceSide, strings.Join(keys, " "), more)
			p("                  copy what must survive to %s by hand, then `greenswap verify %s --repair --delete-extra` deletes the rest",
				r.SourceSide, name)
		}
		p("  recheck         %d chunk(s) under a new snapshot: %d difference(s) left", rep.Recheck.Chunks, rep.Recheck.DifferenceCount)
		for i, d := range rep.Recheck.Differences {
			if i == verifyShown {
				break
			}
			p("      still %s: %s", d.Kind, strings.Join(d.Key, ", "))
		}
	}
	p("")
	switch {
	case r.OK && r.Repair != nil:
		p("REPAIRED: %s and %s are now identical (%d difference(s) fixed)", r.SourceSide, r.TargetSide, r.DifferenceCount)
	case r.OK:
		p("IDENTICAL: %s matches %s in every compared column", r.TargetSide, r.SourceSide)
	case r.Repair != nil && r.Repair.ExtraLeft > 0:
		p("DIFFERENT: %d difference(s) remain after repair, %d of them rows only %s has, left alone (see above)",
			r.Repair.Recheck.DifferenceCount, r.Repair.ExtraLeft, r.TargetSide)
	case r.Repair != nil:
		p("DIFFERENT: %d difference(s) remain after repair (concurrent damage, or a write the mapping cannot express)", r.Repair.Recheck.DifferenceCount)
	default:
		p("DIFFERENT: %d difference(s); `greenswap verify %s --repair` re-copies them from the primary side (blue before cutover, green after)", r.DifferenceCount, name)
	}
}

// writeVerifyTables prints a verify of several tables: one section per
// table, in dependency order, each with its verdict, then the totals and
// the overall verdict.
func writeVerifyTables(w io.Writer, name string, r *runner.TablesVerifyResult) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	tables := make([]string, len(r.Tables))
	for i, t := range r.Tables {
		tables[i] = t.Table
	}
	p("greenswap verify: %s — %d tables, in dependency order (%s), under one snapshot at %s",
		name, len(r.Tables), strings.Join(tables, ", "), r.SnapshotAt.Format("15:04:05.000"))
	for _, t := range r.Tables {
		p("")
		p("== %s ==", t.Table)
		writeVerify(w, name, t.Result)
	}
	p("")
	p("== all tables ==")
	src, dst := "blue", "green"
	if len(r.Tables) > 0 {
		src, dst = r.Tables[0].SourceSide, r.Tables[0].TargetSide
	}
	p("  rows compared   %s %s, %s %s", thousands(r.SourceRows), src, thousands(r.TargetRows), dst)
	p("  chunks          %d, %d mismatched", r.Chunks, r.MismatchedChunks)
	p("  differences     %d", r.DifferenceCount)
	p("  duration        %s", r.Duration.Round(time.Millisecond))
	p("")
	if r.OK {
		p("IDENTICAL: every table's green matches its blue (%s)", strings.Join(tables, ", "))
		return
	}
	var same []string
	for _, t := range r.Tables {
		if t.OK {
			same = append(same, t.Table)
		}
	}
	line := fmt.Sprintf("DIFFERENT: %s (%d difference(s))", strings.Join(r.Different, ", "), r.DifferenceCount)
	if len(same) > 0 {
		line += "; identical: " + strings.Join(same, ", ")
	}
	// A table still different after --repair has its repair result (the
	// sections say what is left); without any, no repair was asked for.
	repaired := false
	for _, t := range r.Tables {
		repaired = repaired || t.Repair != nil
	}
	if !repaired {
		line += fmt.Sprintf("; `greenswap verify %s --repair` re-copies them from the primary side", name)
	}
	p("%s", line)
}
