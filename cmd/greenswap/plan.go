package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/runner"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

func planCommand() *cli.Command {
	return &cli.Command{
		Name:      "plan",
		Usage:     "review a migration: steps with their SQL and locks, estimates, hazards; changes nothing",
		ArgsUsage: " ",
		Description: `plan reads the spec, rehearses the whole setup (adopt, green table, sync triggers,
target.indexes) inside one transaction that it always rolls back, and evaluates every
forward and reverse expression on a sample of real rows, cast to the target types. A bad
DDL, a failing expression or cast, or a NULL bound for a NOT NULL column is reported with
the spec line and the offending key. The rehearsal holds ACCESS EXCLUSIVE on the table for
a few milliseconds (bounded by the spec's lock_timeout); nothing else is locked or written.

Example:
   greenswap plan --alter 'ALTER TABLE orders ALTER COLUMN id TYPE bigint, ALTER COLUMN email SET NOT NULL'
   greenswap plan --alter-file change.sql --write-spec orders_v2.yaml
   greenswap plan -f examples/orders/spec.yaml
   greenswap plan -f orders.yaml --json | jq '.hazards[] | select(.severity == "blocking")'

--alter (or --alter-file, or a spec's alter: field) starts from the ALTER TABLE a DBA
would write: each subcommand is run on an empty scratch copy of the table in a rolled-back
transaction, and what PostgreSQL did there (a rewrite, an index rebuild, the lock taken)
decides how it runs: in place under a short lock, NOT VALID then VALIDATE, a validated
CHECK before SET NOT NULL, CREATE INDEX CONCURRENTLY, or blue-green (the derived spec,
planned as above; --write-spec FILE saves it for plan -f and sync -f).

It also lists the privileges each command needs and whether the connecting role has
them; one that plan or sync needs and the role lacks ends plan with exit 2, naming the
GRANT that gives it.

A spec with several tables (tables:) is planned as one migration: every table is
rehearsed in the same rolled-back transaction, referenced tables first, the foreign keys
among the greens added NOT VALID once every green exists, and each table gets its own
section (--json: "tables" and "order"). The other commands refuse such a spec for now.

Exit codes: 0 nothing blocking; 2 bad input (spec, missing table, unreachable database,
a missing privilege); 3 blocking hazards. See greenswap help exit-codes.`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "the migration spec (YAML or JSON)", TakesFile: true},
			&cli.BoolFlag{Name: "json", Usage: "print the plan as a JSON document (schema_version " + fmt.Sprint(runner.PlanSchemaVersion) + ")"},
			&cli.IntFlag{Name: "sample-size", Value: 1000, Usage: "random rows to evaluate the mapping on (plus the first and last rows by key)"},
			&cli.DurationFlag{Name: "statement-timeout", Value: 30 * time.Second, Usage: "guard on every statement of the rehearsal"},
			&cli.Float64Flag{Name: "rows-per-sec", Value: 10000, Usage: "backfill rate assumed by the estimate"},
		}, planAlterFlags()...),
		Action: runPlan,
	}
}

func runPlan(c *cli.Context) error {
	asJSON := c.Bool("json")
	fail := func(err error) error {
		if asJSON {
			writeJSONError(c.App.Writer, runner.PlanSchemaVersion, err)
		}
		return err
	}
	sql, err := alterInput(c)
	if err != nil {
		return fail(err)
	}
	path := c.String("file")
	if sql != "" {
		if c.Args().Len() > 0 {
			return fail(exitcode.Errorf(exitcode.BadInput, "plan takes no arguments, got %q: quote the whole ALTER after --alter", c.Args().First()))
		}
		return runPlanAlter(c, sql, nil, "", fail)
	}
	if path == "" {
		return fail(exitcode.Errorf(exitcode.BadInput, "plan needs a spec: greenswap plan -f SPEC (see `greenswap plan --help`)"))
	}
	if c.Args().Len() > 0 {
		return fail(exitcode.Errorf(exitcode.BadInput, "plan takes no arguments, got %q: the spec goes after -f", c.Args().First()))
	}
	spec, err := spec.LoadSpecFile(path)
	if err != nil {
		return fail(err)
	}
	if spec.Alter != "" {
		return runPlanAlter(c, "", spec, path, fail)
	}
	env, err := connect(c)
	if err != nil {
		return fail(err)
	}
	defer env.Close()
	res, err := runner.Plan(c.Context, env, spec, planOptions(c))
	if err != nil {
		return fail(err)
	}
	if asJSON {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		writePlan(c.App.Writer, res, path)
	}
	if res.Blocking > 0 {
		return exitcode.Errorf(exitcode.Blocked, "plan found %d blocking hazard%s; nothing was changed", res.Blocking, planPlural(res.Blocking))
	}
	return nil
}

func planOptions(c *cli.Context) runner.PlanOptions {
	return runner.PlanOptions{
		SampleSize:       c.Int("sample-size"),
		StatementTimeout: c.Duration("statement-timeout"),
		RowsPerSecond:    c.Float64("rows-per-sec"),
	}
}

// jsonError is the document --json prints when a command fails.
type jsonError struct {
	SchemaVersion int `json:"schema_version"`
	Error         struct {
		Message string `json:"message"`
		File    string `json:"file,omitempty"`
		Line    int    `json:"line,omitempty"`
		Field   string `json:"field,omitempty"`
		Fix     string `json:"fix,omitempty"`
		// MissingPrivileges: what the connecting role lacks, when that is why.
		MissingPrivileges []shadow.Privilege `json:"missing_privileges,omitempty"`
		// StreamBacklog and MaxStreamBacklog: a cutover refused for the
		// logical stream's backlog, and the bound in bytes.
		StreamBacklog    *runner.StreamBacklog `json:"stream_backlog,omitempty"`
		MaxStreamBacklog int64                 `json:"max_stream_backlog,omitempty"`
	} `json:"error"`
	ExitCode int `json:"exit_code"`
}

func writeJSONError(w io.Writer, version int, err error) {
	var doc jsonError
	doc.SchemaVersion = version
	doc.Error.Message = err.Error()
	var se *spec.SpecError
	if errors.As(err, &se) {
		doc.Error.File, doc.Error.Line, doc.Error.Field, doc.Error.Fix = se.File, se.Line, se.Field, se.Fix
	}
	var pe *shadow.PrivilegeError
	if errors.As(err, &pe) {
		doc.Error.MissingPrivileges = pe.Missing
	}
	var be *runner.BacklogError
	if errors.As(err, &be) {
		doc.Error.StreamBacklog, doc.Error.MaxStreamBacklog = &be.Backlog, be.Bound
	}
	doc.ExitCode = int(exitcode.Of(err))
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(doc)
}

// writePlan prints the plan for a human.
func writePlan(w io.Writer, r *runner.PlanResult, path string) {
	if len(r.Tables) > 0 {
		writeTablesPlan(w, r, path)
		return
	}
	if r.Split != nil {
		writeSplitPlan(w, r, path) // plan_split.go
		return
	}
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	mode := string(r.Mode)
	p("greenswap plan: %s — %s → %s (%s mode)", r.Migration, r.Table, r.GreenTable, mode)
	key := "none"
	if len(r.Key) > 0 {
		key = "(" + strings.Join(r.Key, ", ") + ")"
	}
	e := r.Estimate
	p("  PostgreSQL %s · key %s · ~%s rows · blue %s + %s indexes",
		planFirstWord(r.Server.Version), key, thousands(e.Rows), runner.HumanBytes(e.BlueTableBytes), runner.HumanBytes(e.BlueIndexBytes))
	if r.Rehearsal.Done {
		p("  Rehearsed in one transaction and rolled back: nothing was changed (ACCESS EXCLUSIVE on %s held %.0f ms)",
			r.Table, r.Rehearsal.LockHeldMS)
		s := r.Sample
		p("  Sample: %s rows (%s): forward %s · green constraints %s · reverse %s",
			thousands(s.Rows), s.Method, planOK(s.Forward), planOK(s.Inserted), planOK(s.Reverse))
	} else {
		p("  Not rehearsed: %s. Nothing was changed.", r.Rehearsal.Skipped)
	}
	p("  Result: %d blocking · %d warning%s · %d info", r.Blocking, r.Warnings, planPlural(r.Warnings), r.Infos)

	writePlanSections(w, r)
	p("")
	switch {
	case r.Blocking > 0:
		p("BLOCKED: fix the %d blocking hazard%s above, then plan again. Nothing was changed.", r.Blocking, planPlural(r.Blocking))
	default:
		p("Nothing blocking. Nothing was changed. Next: greenswap sync -f %s", path)
	}
}

// writePlanSections prints one table's steps, estimate, privileges and
// hazards.
func writePlanSections(w io.Writer, r *runner.PlanResult) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	e := r.Estimate
	if len(r.Steps) > 0 {
		p("")
		p("Steps")
		writePlanSteps(w, r.Steps)
	}

	p("")
	p("Estimate (an estimate, not a promise)")
	p("  backfill: ~%s rows at a conservative %s rows/s ≈ %s (with the spec's nice ratio)", thousands(e.Rows), thousands(int64(e.RowsPerSecond)),
		(time.Duration(e.BackfillSeconds * float64(time.Second))).Round(time.Second))
	widths := ""
	if e.BlueRowWidth > 0 && e.GreenRowWidth > 0 {
		widths = fmt.Sprintf("; sampled row width %.0f → %.0f bytes", e.BlueRowWidth, e.GreenRowWidth)
	}
	p("  disk: green ≈ %s table + %s indexes = %s%s", runner.HumanBytes(e.GreenTableBytes), runner.HumanBytes(e.GreenIndexBytes),
		runner.HumanBytes(e.GreenTotalBytes), widths)
	writeSettleEstimate(p, e)
	p("  WARNING free disk space is unknown to greenswap (not readable over SQL): keep at least %s free", runner.HumanBytes(e.DiskNeededBytes))
	p("          (2 × green and its indexes: the copy, its WAL, and the writes while it runs)")

	if len(r.Privileges) > 0 {
		p("")
		p("Privileges of the connecting role")
		for _, pr := range r.Privileges {
			mark := "ok     "
			if !pr.Granted {
				mark = "MISSING"
			}
			planWrap(w, fmt.Sprintf("  %s %s: ", mark, strings.Join(pr.Steps, ", ")), "           ", pr.Need+" ("+pr.Why+")")
			if !pr.Granted {
				planWrap(w, "           fix: ", "                ", pr.Fix)
			}
		}
	}

	p("")
	writeHazards(w, r.Hazards)
}

// writeHazards prints the hazards, each with its objects and fix.
func writeHazards(w io.Writer, hazards []shadow.Hazard) {
	if len(hazards) == 0 {
		fmt.Fprintln(w, "Hazards: none")
		return
	}
	fmt.Fprintln(w, "Hazards")
	for _, h := range hazards {
		planWrap(w, fmt.Sprintf("  %-8s %s: ", strings.ToUpper(string(h.Severity)), h.Code), "           ", h.Message)
		for _, o := range h.Objects {
			planWrap(w, "           - ", "             ", o)
		}
		if h.Fix != "" {
			planWrap(w, "           fix: ", "                ", h.Fix)
		}
	}
}

// writeTablesPlan prints the plan of a spec with several tables: the order,
// the steps linking the greens, then each table's own plan.
func writeTablesPlan(w io.Writer, r *runner.PlanResult, path string) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("greenswap plan: %s — %d tables, in dependency order (referenced first): %s (%s mode)",
		r.Migration, len(r.Tables), strings.Join(r.Order, " → "), r.Mode)
	e := r.Estimate
	p("  PostgreSQL %s · ~%s rows in all · blue %s + %s indexes", planFirstWord(r.Server.Version), thousands(e.Rows),
		runner.HumanBytes(e.BlueTableBytes), runner.HumanBytes(e.BlueIndexBytes))
	if r.Rehearsal.Done {
		p("  Rehearsed in one transaction and rolled back: nothing was changed (each table's ACCESS EXCLUSIVE held in turn, %.0f ms in all)",
			r.Rehearsal.LockHeldMS)
	} else {
		p("  Not fully rehearsed: %s. Nothing was changed.", r.Rehearsal.Skipped)
	}
	p("  Result: %d blocking · %d warning%s · %d info", r.Blocking, r.Warnings, planPlural(r.Warnings), r.Infos)
	p("  Backfill, all tables: ~%s rows ≈ %s; keep at least %s of disk free", thousands(e.Rows),
		(time.Duration(e.BackfillSeconds * float64(time.Second))).Round(time.Second), runner.HumanBytes(e.DiskNeededBytes))
	if len(r.Steps) > 0 {
		p("")
		p("Linking the greens")
		writePlanSteps(w, r.Steps)
	}
	for i, t := range r.Tables {
		p("")
		p("=== Table %d/%d: %s → %s", i+1, len(r.Tables), t.Table, t.GreenTable)
		key := "none"
		if len(t.Key) > 0 {
			key = "(" + strings.Join(t.Key, ", ") + ")"
		}
		te := t.Estimate
		p("  key %s · ~%s rows · blue %s + %s indexes", key, thousands(te.Rows), runner.HumanBytes(te.BlueTableBytes), runner.HumanBytes(te.BlueIndexBytes))
		if t.Rehearsal.Done {
			s := t.Sample
			p("  Sample: %s rows (%s): forward %s · green constraints %s · reverse %s",
				thousands(s.Rows), s.Method, planOK(s.Forward), planOK(s.Inserted), planOK(s.Reverse))
		} else {
			p("  Not rehearsed: %s.", t.Rehearsal.Skipped)
		}
		p("  Result: %d blocking · %d warning%s · %d info", t.Blocking, t.Warnings, planPlural(t.Warnings), t.Infos)
		writePlanSections(w, t)
	}
	p("")
	if r.Blocking > 0 {
		p("BLOCKED: fix the %d blocking hazard%s above, then plan again. Nothing was changed.", r.Blocking, planPlural(r.Blocking))
		return
	}
	p("Nothing blocking. Nothing was changed. Next: greenswap sync -f %s", path)
}

// writePlanSteps prints steps with their locks, SQL and notes.
func writePlanSteps(w io.Writer, steps []runner.PlanStep) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	for _, s := range steps {
		p("  %d. %s (greenswap %s) — %s", s.N, s.Name, s.Command, s.Description)
		hold := s.LockHold
		if hold == "" || hold == "-" {
			p("     lock: %s", s.Lock)
		} else {
			p("     lock: %s; held %s", s.Lock, hold)
		}
		kind := "exact"
		if !s.Exact {
			kind = "shape"
		}
		tx := "one transaction"
		if !s.Transactional {
			tx = "no transaction"
		}
		p("     SQL (%s, %s):", kind, tx)
		for j, q := range s.SQL {
			if j < len(s.SQLLabels) {
				p("       -- %s", s.SQLLabels[j])
			}
			for i, line := range strings.Split(strings.TrimRight(q, "\n"), "\n") {
				lead := "       "
				if i > 0 {
					lead = "         "
				}
				p("%s%s", lead, line)
			}
		}
		if s.Note != "" {
			planWrap(w, "     note: ", "           ", s.Note)
		}
	}
}

// planWrap writes text after first, wrapping at 100 columns with later
// lines starting with indent.
func planWrap(w io.Writer, first, indent, text string) {
	const width = 100
	line := first
	col := len([]rune(first))
	start := true
	for _, word := range strings.Fields(text) {
		n := len([]rune(word))
		if !start && col+1+n > width {
			fmt.Fprintln(w, line)
			line, col = indent+word, len([]rune(indent))+n
			continue
		}
		if !start {
			line += " "
			col++
		}
		line += word
		col += n
		start = false
	}
	fmt.Fprintln(w, line)
}

func planOK(ok bool) string {
	if ok {
		return "ok"
	}
	return "not checked"
}

func planPlural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func planFirstWord(s string) string {
	if i := strings.IndexByte(s, ' '); i > 0 {
		return s[:i]
	}
	return s
}

// writeSettleEstimate prints the settle's time and the WAL the copy and the
// settle write, with the checkpoints it requests.
func writeSettleEstimate(p func(string, ...any), e runner.Estimate) {
	w := e.Settings
	if w.VacuumCostLimit == 0 {
		return
	}
	p("  settle: VACUUM (FREEZE) of ~%s at autovacuum's pace (vacuum_cost_limit %d per 2ms) ≈ %s",
		runner.HumanBytes(e.GreenTableBytes), w.VacuumCostLimit, (time.Duration(e.SettleSeconds * float64(time.Second))).Round(time.Second))
	p("  WAL: about %s (the copy and its indexes, the row locks on blue, the freeze; an autovacuum of green during the copy adds up to %s);",
		runner.HumanBytes(e.WALBytes), runner.HumanBytes(e.GreenTableBytes))
	p("       with max_wal_size %s that requests about %d checkpoint(s),", runner.HumanBytes(w.MaxWALBytes), e.Checkpoints)
	p("       each spread by PostgreSQL over %.0f%% of checkpoint_timeout %s; greenswap requests none (an immediate CHECKPOINT would not be spread)",
		100*w.CheckpointCompletionTarget, time.Duration(w.CheckpointTimeoutS)*time.Second)
}
