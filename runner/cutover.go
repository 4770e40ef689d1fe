package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/cutover"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	"github.com/greenswap/greenswap/verify"
)

// SwapSchemaVersion is the version of the JSON documents of cutover,
// rollback and finalize. Fields are only added within a version.
const SwapSchemaVersion = 1

// SwapCommandOptions are shared by cutover, rollback and finalize.
type SwapCommandOptions struct {
	LockTimeout time.Duration // per attempt (default: the spec's sync.lock_timeout, else 2s)
	MaxAttempts int           // default 10
	// Out receives what the command will do, its progress and what it did,
	// for a person (nil: nothing).
	Out io.Writer
}

func (o SwapCommandOptions) lockOptions(spec *spec.Spec) shadow.LockOptions {
	lo := shadow.DefaultLockOptions()
	if spec.Sync.LockTimeout.Duration > 0 {
		lo.Timeout = spec.Sync.LockTimeout.Duration
	}
	if o.LockTimeout > 0 {
		lo.Timeout = o.LockTimeout
	}
	if o.MaxAttempts > 0 {
		lo.MaxAttempts = o.MaxAttempts
	}
	// Back off for about a lock timeout, so a blocker has time to finish
	// and clients run between attempts.
	lo.BaseBackoff = min(max(lo.Timeout/2, 100*time.Millisecond), lo.BaseBackoff*5)
	return lo
}

func (o SwapCommandOptions) printf(format string, args ...any) {
	if o.Out != nil {
		fmt.Fprintf(o.Out, format, args...)
	}
}

// CutoverOptions tune Cutover.
type CutoverOptions struct {
	SwapCommandOptions
	SkipVerify bool // cut over without a passing verify since the last backfill
	// MaxStreamBacklog is the largest backlog of a logical-mode stream, in
	// WAL bytes, that cutover accepts (0: DefaultMaxStreamBacklog;
	// negative: any); above it cutover refuses with a *BacklogError (exit
	// 2) and changes nothing (backlog.go).
	MaxStreamBacklog int64
	// Guard: watch the health signals for a window after the swap and
	// roll back by itself past a bound (cutover_guard.go).
	Guard CutoverGuardOptions
}

// CutoverResult is what cutover (or rollback after cutover) did. Its JSON
// form is the --json document.
type CutoverResult struct {
	SchemaVersion int                  `json:"schema_version"`
	Migration     string               `json:"migration"`
	Command       string               `json:"command"` // "cutover" or "rollback"
	App           string               `json:"app"`
	Reads         string               `json:"reads"` // the table the app name reads now
	State         state.State          `json:"state"`
	PrimarySide   string               `json:"primary_side"`
	VerifySkipped bool                 `json:"verify_skipped,omitempty"`
	Plan          *cutover.SwapPlan    `json:"plan"`
	Attempts      int                  `json:"attempts"`
	Blockers      []shadow.Blocker     `json:"blockers,omitempty"` // of the last failed attempt
	LockWaitMS    float64              `json:"lock_wait_ms"`
	LockHoldMS    float64              `json:"lock_hold_ms"`
	SwapMS        float64              `json:"swap_ms"` // the swap, retries and backoff included
	Validations   []cutover.Validation `json:"validations,omitempty"`
	ValidateMS    float64              `json:"validate_ms"`
	TotalMS       float64              `json:"total_ms"`
	Warnings      []string             `json:"warnings,omitempty"`
	Guard         *GuardReport         `json:"guard,omitempty"` // cutover --guard (cutover_guard.go)

	// LockHold is the time the swap held its locks: from the first lock
	// granted to the commit (what the bench reports).
	LockHold time.Duration `json:"-"`
}

// Cutover points the app name at green in one transaction: dependent views,
// foreign keys, user triggers and row-level security follow, green becomes
// the primary side, the state moves to cut_over. Locks are taken in a fixed
// order with a bounded wait and retried with backoff and jitter; when every
// attempt times out it returns *shadow.LockTimeoutError (exit 5) and nothing
// has changed. Foreign keys moved to green are validated after the commit.
//
// With opts.Guard.Window, a baseline of the health signals is taken before
// the swap and the signals are watched for the window after it, the
// migration's lock released; past a bound it rolls back by itself
// (cutover_guard.go).
func Cutover(ctx context.Context, env *Env, name string, opts CutoverOptions) (*CutoverResult, error) {
	var g *cutoverGuard
	res, err := cutoverLocked(ctx, env, name, opts, &g)
	if err != nil && g != nil && res != nil && res.State == state.CutOver {
		// Committed, then a moved foreign key failed to validate: no window.
		return res, fmt.Errorf("%w (cut over; the guard window did not run: watch the application yourself, or `greenswap rollback %s`)", err, name)
	}
	if err != nil || g == nil {
		return res, err
	}
	return res, g.watch(ctx, env, opts, res)
}

// cutoverLocked is the cutover under the migration's lock; *g is set to
// the guard window to run after it, its baseline taken before the swap.
func cutoverLocked(ctx context.Context, env *Env, name string, opts CutoverOptions, g **cutoverGuard) (*CutoverResult, error) {
	start := time.Now()
	m, lock, err := loadLocked(ctx, env, name)
	if err != nil {
		return nil, err
	}
	defer lock.Release(context.WithoutCancel(ctx))
	res := &CutoverResult{SchemaVersion: SwapSchemaVersion, Migration: name, Command: "cutover", App: m.Names.App.String()}
	// A swap killed before it validated the foreign keys it moved left
	// them NOT VALID (revalidate.go): finish that first.
	vals, err := revalidatePending(ctx, env, m, opts.lockOptions(m.Spec), opts.printf)
	if err != nil {
		return nil, err
	}
	res.Validations = vals
	res.Warnings = append(res.Warnings, validationWarnings(vals)...)
	switch m.Row.State {
	case state.Synced:
	case state.CutOver:
		if len(vals) > 0 {
			// The re-run of a cutover interrupted after its swap: done now.
			res.State, res.PrimarySide, res.Reads = state.CutOver, "green", m.Names.Green.String()
			res.TotalMS = swapMS(time.Since(start))
			return res, validationsFailed("cutover", vals)
		}
		return nil, exitcode.Errorf(exitcode.BadInput, "migration %s is already cut over: %s reads %s (rollback: `greenswap rollback %s`)",
			name, m.Names.App, m.Names.Green, name)
	case state.Planned, state.Syncing:
		return nil, exitcode.Errorf(exitcode.BadInput, "migration %s is %s: run `greenswap sync` until it is synced, then verify", name, m.Row.State)
	default:
		return nil, exitcode.Errorf(exitcode.BadInput, "migration %s is %s and cannot be cut over", name, m.Row.State)
	}
	if err := checkCommandPrivileges(ctx, env, m, shadow.StepCutover); err != nil {
		return nil, err
	}
	// Logical mode: a stream far behind would hold the handover to the
	// triggers (and the app's writes paying for it) too long, or never end.
	feed := env.feedOf(m)
	if err := feed.readyForCutover(ctx, m, opts.MaxStreamBacklog); err != nil {
		return nil, err
	}
	// An app deploy may have changed the view, blue or green since sync
	// built them (trap 16): the swap would copy or drop its work blindly.
	// Checked first: drift also fails verify, and this names it. Several
	// tables: every table's objects (drift.go).
	if err := refuseOnDrift(ctx, env, m, "cutover"); err != nil {
		res.TotalMS = swapMS(time.Since(start))
		return res, err
	}
	if !verify.Passed(m.Row) { // verify_ok and verified_at ≥ backfill_done_at
		if !opts.SkipVerify {
			return nil, exitcode.Errorf(exitcode.BadInput,
				"migration %s has no passing verify since its last backfill: run `greenswap verify %s` first (or pass --skip-verify)", name, name)
		}
		res.VerifySkipped = true
		res.Warnings = append(res.Warnings, "cut over without a passing verify since the last backfill (--skip-verify)")
		_ = state.Record(ctx, env.Pool, name, "cutover", "verify-skipped", 0, "", nil)
	}
	if opts.Guard.Window > 0 {
		var notes []string
		if *g, notes, err = startCutoverGuard(ctx, env, m, opts.Guard); err != nil {
			return nil, err
		}
		for _, n := range notes {
			opts.printf("guard: %s\n", n)
		}
		res.Warnings = append(res.Warnings, notes...)
	}
	// The feed hands blue → green over to the sync triggers first, losing
	// nothing; the swap is then trigger mode's (feed_logical.go).
	if err := feed.handOver(ctx, m, opts.lockOptions(m.Spec), opts.printf); err != nil {
		res.TotalMS = swapMS(time.Since(start))
		return res, err
	}
	err = swap(ctx, env, m, cutover.ToGreen, opts.SwapCommandOptions, res, nil)
	if err == nil && *g != nil {
		// Still under the migration's lock: this swap's event is the
		// latest, and the guard rolls back only while it still is.
		if (*g).swapEvent, err = lastSwapEvent(ctx, env, name); err != nil {
			*g = nil // no window to run without knowing which swap it watches
			err = fmt.Errorf("cut over, but the guard window cannot start (watch the application yourself, or `greenswap rollback %s`): %w", name, err)
		}
	}
	res.TotalMS = swapMS(time.Since(start))
	return res, err
}

// lastSwapEvent is the id of the migration's latest swap event (a
// cutover's or a rollback's swap that committed).
func lastSwapEvent(ctx context.Context, env *Env, name string) (int64, error) {
	return state.LastEventOf(ctx, env.Pool, name, "ok", string(cutover.ToGreen), string(cutover.ToBlue))
}

// loadLocked takes the migration's advisory lock and reads its row under it.
func loadLocked(ctx context.Context, env *Env, name string) (*Migration, *state.Lock, error) {
	if _, err := env.LoadMigration(ctx, name); err != nil {
		return nil, nil, err
	}
	lock, err := env.Lock(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	m, err := env.LoadMigration(ctx, name) // as it is now that we hold the lock
	if err != nil {
		lock.Release(context.WithoutCancel(ctx))
		return nil, nil, err
	}
	return m, lock, nil
}

// swap runs a swap in direction dir and fills res. keep is drift the swap
// goes ahead despite (rollback; nil for cutover), kept reported afterwards.
func swap(ctx context.Context, env *Env, m *Migration, dir cutover.Direction, o SwapCommandOptions, res *CutoverResult, keep *driftCheck) error {
	name := m.Spec.Name
	in := cutover.SwapInput{Migration: name, Names: m.Names, Direction: dir, ServerMajor: env.ServerMajor}
	multi := m.Spec.MultiTable()
	if multi {
		in.Members = MemberNames(m.Spec) // every table swapped in one transaction
	}
	lo := o.lockOptions(m.Spec)
	to, side, next := m.Names.Green, "green", state.CutOver
	if dir == cutover.ToBlue {
		to, side, next = m.Names.Blue, "blue", state.Synced
	}

	log := env.Log.With().Str("migration", name).Logger()
	var sr *cutover.SwapResult
	err := runPhase(ctx, env, log, name, string(dir), func(ctx context.Context, ev *phaseEvent) error {
		// State what will happen.
		var plan *cutover.SwapPlan
		var err error
		run := cutover.Swap
		if m.Spec.IsSplit() {
			// One blue, several greens: the app name becomes the old
			// shape over the greens (swap_split.go in cutover).
			sin := cutover.SplitSwapInput{Migration: name, Spec: m.Spec, Direction: dir, ServerMajor: env.ServerMajor}
			plan, err = planSplitSwapReadOnly(ctx, env, sin)
			run = func(ctx context.Context, pool *pgxpool.Pool, _ cutover.SwapInput, opt cutover.SwapOptions) (*cutover.SwapResult, error) {
				return cutover.SplitSwap(ctx, pool, sin, opt)
			}
		} else {
			plan, err = planSwapReadOnly(ctx, env, in)
		}
		if err != nil {
			ev.Outcome = "refused"
			return err
		}
		describeSwap(o, plan, lo)
		sr, err = run(ctx, env.Pool, in, cutover.SwapOptions{
			Lock:    lo,
			OnRetry: lockRetry(log, string(dir), lo.Timeout, o.printf),
			Commit: func(ctx context.Context, tx pgx.Tx, p *cutover.SwapPlan) error {
				if err := state.Transition(ctx, tx, name, next); err != nil {
					return err
				}
				if err := recordPendingFKs(ctx, tx, name, p); err != nil {
					return err
				}
				if err := state.SetPrimarySide(ctx, tx, name, side); err != nil {
					return err
				}
				// The swap changed the views and the triggers (of every
				// table): what is there now is greenswap's.
				return recordFingerprint(ctx, tx, m.Spec, keep)
			},
		})
		res.Plan, res.Attempts, res.Blockers = sr.Plan, sr.Attempts, sr.Blockers
		res.SwapMS = swapMS(sr.Duration)
		ev.Took = sr.Duration
		if err != nil {
			var lt *shadow.LockTimeoutError
			if errors.As(err, &lt) {
				o.printf("gave up after %d attempts: nothing was changed; %s still reads %s\n", sr.Attempts, m.Names.App, plan.From)
			}
			ev.Detail = map[string]any{"attempts": sr.Attempts, "blockers": sr.Blockers}
			return err
		}
		res.LockHold, res.LockHoldMS, res.LockWaitMS = sr.LockHold, swapMS(sr.LockHold), swapMS(sr.LockWait)
		ev.SQL = strings.Join(sr.Plan.Step().SQL, ";\n")
		ev.Detail = map[string]any{"lock_hold_ms": res.LockHoldMS, "lock_wait_ms": res.LockWaitMS, "attempts": sr.Attempts,
			"row_type_changed": sr.Plan.RowTypeChanged, "view_mode": sr.Plan.ViewMode}
		return nil
	})
	if err != nil {
		return err
	}
	res.State, res.PrimarySide, res.Reads = next, side, to.String()
	res.Warnings = append(res.Warnings, sr.Plan.Warnings...)
	o.printf("done: %s now reads %s; %s is primary (%d attempt%s, locks held %.1f ms, swap %s)\n",
		m.Names.App, to, side, sr.Attempts, swapPlural(sr.Attempts), res.LockHoldMS, sr.Duration.Round(time.Millisecond))

	if env.afterSwapCommit != nil {
		if err := env.afterSwapCommit(); err != nil {
			return err
		}
	}
	var own []cutover.Validation
	if len(sr.Plan.After) > 0 {
		t0 := time.Now()
		own = cutover.Validate(ctx, env.Pool, sr.Plan, lo)
		res.Validations = append(res.Validations, own...)
		res.ValidateMS = swapMS(time.Since(t0))
		for _, v := range own {
			outcome := "ok"
			if v.Error != "" {
				outcome = "error"
				res.Warnings = append(res.Warnings, fmt.Sprintf("%s failed: %s; the constraint stays NOT VALID (enforced for new rows); fix the rows and run it by hand", v.SQL, v.Error))
				o.printf("FAILED %s: %s (the constraint stays NOT VALID and is enforced for new rows)\n", v.SQL, v.Error)
			} else {
				o.printf("validated: %s (%.1f ms)\n", v.SQL, v.DurationMS)
			}
			_ = state.Record(ctx, env.Pool, name, "validate-constraint", outcome, time.Duration(v.DurationMS*float64(time.Millisecond)), v.SQL, nil)
		}
	}
	for _, w := range res.Warnings {
		o.printf("warning: %s\n", w)
	}
	if dir == cutover.ToGreen {
		o.printf("next: `greenswap finalize %s` once no client uses %s, or `greenswap rollback %s` to switch back (nothing is lost)\n",
			name, m.Names.BlueSchema, name)
	}
	return validationsFailed(string(dir), own)
}

// validationsFailed is the error of the first failed validation (nil
// when all passed): the step is done, the key stays NOT VALID (exit 1).
func validationsFailed(step string, vals []cutover.Validation) error {
	for _, v := range vals {
		if v.Error != "" {
			return exitcode.Errorf(exitcode.Failed, "%s done, but validating a moved foreign key failed: %s: %s", step, v.SQL, v.Error)
		}
	}
	return nil
}

// planSwapReadOnly plans in a read-only transaction (nothing is locked).
func planSwapReadOnly(ctx context.Context, env *Env, in cutover.SwapInput) (*cutover.SwapPlan, error) {
	tx, err := env.Pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx)
	return cutover.PlanSwap(ctx, tx, in)
}

// planSplitSwapReadOnly is planSwapReadOnly for a split.
func planSplitSwapReadOnly(ctx context.Context, env *Env, in cutover.SplitSwapInput) (*cutover.SwapPlan, error) {
	tx, err := env.Pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx)
	return cutover.PlanSplitSwap(ctx, tx, in)
}

// describeSwap states what a swap will do.
func describeSwap(o SwapCommandOptions, p *cutover.SwapPlan, lo shadow.LockOptions) {
	if o.Out == nil {
		return
	}
	o.printf("%s %s: in one transaction, point %s at %s (now %s)\n", p.Direction, p.Migration, p.App, p.To, p.From)
	if p.RowTypeChanged {
		o.printf("  the row type of %s changes: the view is dropped and created again; clients with prepared statements on it\n"+
			"  get one \"cached plan must not change result type\" error per statement; old releases pinned to a version\n"+
			"  schema by search_path keep their shape\n", p.App)
	} else {
		o.printf("  the row type of %s is unchanged: CREATE OR REPLACE VIEW\n", p.App)
	}
	for _, v := range p.Views {
		how := "created again"
		if v.Repoint {
			how = "created again over " + p.App.String()
		}
		o.printf("  dependent view %s: %s\n", v.Name, how)
	}
	for _, f := range p.MovedFKs {
		o.printf("  foreign key %s on %s: now references %s (NOT VALID, validated after the swap)\n", f.Name, f.Table, p.To)
	}
	for _, f := range p.AddedFKs {
		o.printf("  foreign key %s added on %s → %s (NOT VALID, validated after the swap)\n", f.Name, p.To, f.RefTable)
	}
	for _, t := range p.Triggers {
		note := ""
		if t.Created {
			note = " (copied from " + p.From.String() + ")"
		}
		if t.Note != "" {
			o.printf("  user trigger %s: %s\n", t.Name, t.Note)
			continue
		}
		o.printf("  user trigger %s: fires on %s%s, disabled on %s\n", t.Name, p.To, note, p.From)
	}
	for _, v := range p.SplitViews {
		o.printf("  view %s created over the green %s (writes reach blue through its sync trigger)\n", v.View, v.Green)
	}
	for _, pol := range p.Policies {
		o.printf("  policy added: %s\n", pol)
	}
	o.printf("  locks, in this order:")
	for _, l := range p.Locks {
		nw := ""
		if l.NoWait {
			nw = " NOWAIT"
		}
		o.printf(" %s %s%s;", l.Mode, l.Rel, nw)
	}
	o.printf("\n  lock wait at most %s per attempt, up to %d attempts with backoff\n", lo.Timeout, lo.MaxAttempts)
}

func swapMS(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func swapPlural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}
