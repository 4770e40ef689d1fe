package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/alter"
	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// eventAlterPlan records the plan a `run --alter` decided, with the ALTER
// it was given: a run started again resumes with that plan instead of
// classifying the ALTER afresh (its in-place part is on the table by then,
// and would not rehearse again: ADD COLUMN of a column that exists).
const eventAlterPlan = "alter-plan"

// AlterRunOptions are the options of RunAlter.
type AlterRunOptions struct {
	// Name is the migration's name (default: the table's name + "_alter").
	Name string
	// UntilSynced stops once the blue-green part is synced (no verify, no
	// cutover); an ALTER without a blue-green part is done after its
	// in-place steps either way.
	UntilSynced bool
	// LockTimeout and MaxAttempts bound every lock attempt of the in-place
	// steps (defaults: shadow.DefaultLockOptions).
	LockTimeout time.Duration
	MaxAttempts int
	Sync        SyncOptions
	Verify      VerifyOptions
	Cutover     CutoverOptions
	// Out receives what the command does, for a person (nil: nothing).
	Out io.Writer
}

// AlterRunResult is what RunAlter did.
type AlterRunResult struct {
	Migration string
	Plan      *alter.Plan
	// Resumed: the plan is the one an earlier run recorded.
	Resumed bool
	InPlace []alter.StatementRun
	Sync    *SyncStats
	Verify  *VerifyReport
	Cutover *CutoverResult
}

// recordedAlterPlan is the detail of an eventAlterPlan event.
type recordedAlterPlan struct {
	Alter string      `json:"alter"`
	Plan  *alter.Plan `json:"plan"`
}

// RunAlter applies an ALTER TABLE the cheapest safe way (issue 18): it
// classifies every subcommand by rehearsal (alter.Classify, the plan gate
// for what PostgreSQL accepts; bad input exits 2 with nothing changed),
// records the plan, runs the in-place steps on the live table
// (alter.Execute: short locks, retried; exit 5 after the last attempt,
// that statement and every later one not run), then takes the blue-green
// part, if any, through sync (whose own plan gate checks the derived spec's
// hazards against blue as the in-place steps left it), verify and cutover,
// or stops once synced. Run again with the same ALTER after any failure or
// interruption, it resumes: in-place statements already done are skipped,
// sync and the rest resume as they do on their own.
func RunAlter(ctx context.Context, env *Env, alterSQL string, opts AlterRunOptions) (*AlterRunResult, error) {
	stmts, err := alter.Parse(alterSQL)
	if err != nil {
		return nil, err
	}
	name := opts.Name
	if name == "" {
		name = spec.TruncateIdent(stmts[0].Table.Name + "_alter") // as the derived spec's
	}
	res := &AlterRunResult{Migration: name}
	log := env.Log.With().Str("migration", name).Logger()
	plan, err := recordedPlan(ctx, env, name, alterSQL)
	if err != nil {
		return nil, err
	}
	if plan != nil {
		res.Resumed = true
		printfTo(opts.Out, "resuming %s with the plan recorded by its first run\n", name)
		if err := recheckInPlace(ctx, env, name, alterSQL, plan); err != nil {
			return res, err
		}
	} else {
		if plan, err = ClassifyAlter(ctx, env, alterSQL, name, 0); err != nil {
			return nil, err
		}
		// plan's gate, before anything (the state schema too) is touched:
		// what plan --alter refuses with exit 3, run refuses the same way.
		if err := runAlterGate(ctx, env, name, plan); err != nil {
			return nil, err
		}
		if err := state.Ensure(ctx, env.Pool); err != nil {
			return nil, fmt.Errorf("run --alter: state schema: %w", err)
		}
		if err := state.Record(ctx, env.Pool, name, eventAlterPlan, "ok", 0, alterSQL, recordedAlterPlan{Alter: alterSQL, Plan: plan}); err != nil {
			return nil, fmt.Errorf("run --alter: record the plan: %w", err)
		}
	}
	res.Plan = plan
	for _, st := range plan.Steps {
		printfTo(opts.Out, "%-26s %s (%s: %s)\n", string(st.Strategy)+":", st.Sub.Text, st.Lock.Mode, st.Lock.Held)
	}

	lo := shadow.DefaultLockOptions()
	if opts.LockTimeout > 0 {
		lo.Timeout = opts.LockTimeout
	}
	if opts.MaxAttempts > 0 {
		lo.MaxAttempts = opts.MaxAttempts
	}
	var printf func(string, ...any)
	if opts.Out != nil {
		printf = func(f string, a ...any) { fmt.Fprintf(opts.Out, f, a...) }
	}
	err = runPhase(ctx, env, log, name, "alter-in-place-steps", func(ctx context.Context, ev *phaseEvent) error {
		runs, err := alter.Execute(ctx, env.Pool, env.ConnConfig, plan, alter.ExecOptions{
			Migration: name,
			Lock:      lo,
			OnRetry:   lockRetry(log, "alter", lo.Timeout, printf),
			OnStatement: func(r alter.StatementRun) {
				if r.Skipped {
					printfTo(opts.Out, "  done before: %s\n", r.SQL)
				} else {
					printfTo(opts.Out, "  ran in %s: %s\n", r.Took.Round(time.Millisecond), r.SQL)
				}
			},
		})
		res.InPlace = runs
		ev.Detail = map[string]any{"statements": len(runs)}
		ev.Done = "in-place steps done"
		return err
	})
	if err != nil {
		return res, err
	}
	if plan.BlueGreen == nil {
		printfTo(opts.Out, "%s: every subcommand ran in place; nothing to sync\n", name)
		return res, nil
	}
	if res.Sync, err = Sync(ctx, env, plan.BlueGreen, opts.Sync); err != nil {
		return res, err
	}
	printfTo(opts.Out, "%s is synced\n", name)
	if opts.UntilSynced {
		return res, nil
	}
	if res.Verify, err = VerifyMigration(ctx, env, name, opts.Verify); err != nil {
		return res, err
	}
	if !res.Verify.OK() {
		return res, exitcode.Errorf(exitcode.Failed, "run --alter: verify of %s found differences between blue and green: not cut over (see `greenswap verify %s`)", name, name)
	}
	if res.Cutover, err = Cutover(ctx, env, name, opts.Cutover); err != nil {
		return res, err
	}
	return res, nil
}

func printfTo(w io.Writer, format string, args ...any) {
	if w != nil {
		fmt.Fprintf(w, format, args...)
	}
}

// recordedPlan is the plan an earlier run of the migration recorded (nil:
// none). A different ALTER under the same name is refused: the two plans
// would mix.
func recordedPlan(ctx context.Context, env *Env, name, alterSQL string) (*alter.Plan, error) {
	if ok, err := state.Exists(ctx, env.Pool); err != nil || !ok {
		return nil, err
	}
	var detail []byte
	err := env.Pool.QueryRow(ctx, `SELECT detail FROM greenswap.events WHERE migration = $1 AND step = $2 AND outcome = 'ok'
 ORDER BY id DESC LIMIT 1`, name, eventAlterPlan).Scan(&detail)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("run --alter: read the recorded plan of %s: %w", name, err)
	}
	var rec recordedAlterPlan
	if err := json.Unmarshal(detail, &rec); err != nil || rec.Plan == nil {
		return nil, fmt.Errorf("run --alter: the recorded plan of %s does not decode: %v", name, err)
	}
	if rec.Alter != alterSQL {
		return nil, exitcode.Errorf(exitcode.BadInput,
			"run --alter: migration %s was started with another ALTER (%q): run that one again to resume, or give this one another --name", name, rec.Alter)
	}
	return rec.Plan, nil
}

// runAlterGate is plan --alter's verdict on a fresh run: the blue-green
// part planned as plan plans it, with the ALTER's own hazards; any
// blocking one refuses the run with plan's exit code (3).
func runAlterGate(ctx context.Context, env *Env, name string, plan *alter.Plan) error {
	if plan.BlueGreen == nil {
		return alterGate(ctx, env, name, plan, "run --alter")
	}
	pr, err := Plan(ctx, env, plan.BlueGreen, PlanOptions{})
	if err != nil {
		return err
	}
	withAlterHazards(pr, plan)
	if pr.Blocking == 0 {
		return nil
	}
	var msgs []string
	for _, h := range pr.Hazards {
		if h.Severity == shadow.Blocking {
			msgs = append(msgs, h.Code+": "+h.Message)
		}
	}
	return exitcode.Errorf(exitcode.Blocked, "run --alter refused, nothing was changed: plan found %d blocking hazard(s): %s (see `greenswap plan --alter`)",
		pr.Blocking, strings.Join(msgs, "; "))
}

// recheckInPlace re-rehearses the recorded plan's in-place steps that have
// not started against the table as it is now (alter.Recheck), in a
// transaction it rolls back.
func recheckInPlace(ctx context.Context, env *Env, name, alterSQL string, plan *alter.Plan) error {
	tx, err := env.Pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("run --alter: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, "SET LOCAL statement_timeout = 30000"); err != nil {
		return fmt.Errorf("run --alter: %w", err)
	}
	var kind string
	if err := tx.QueryRow(ctx, `SELECT coalesce((SELECT relkind::text FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass($1)), '')`,
		db.Ident(plan.Table.Schema, plan.Table.Name)).Scan(&kind); err != nil {
		return fmt.Errorf("run --alter: %w", err)
	}
	switch kind {
	case "":
		return exitcode.Errorf(exitcode.BadInput, "run --alter: resume of %s: table %s no longer exists: nothing was run", name, plan.Table)
	case "r", "p":
	default:
		return nil // adopted (a view): the in-place steps all ran before sync did
	}
	blue, err := shadow.LoadTable(ctx, tx, plan.Table)
	if err != nil {
		return err
	}
	return alter.Recheck(ctx, tx, blue, plan, name)
}
