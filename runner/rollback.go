package runner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/cutover"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
)

// RollbackResult is what rollback did: a swap back to blue after cutover
// (Swap), or before cutover a teardown (Teardown). Its JSON form is the
// --json document.
type RollbackResult struct {
	SchemaVersion int                   `json:"schema_version"`
	Migration     string                `json:"migration"`
	Kind          string                `json:"kind"` // "swap" (after cutover), "teardown" (before), "none" (already rolled back)
	From          state.State           `json:"from_state"`
	State         state.State           `json:"state"`
	Swap          *CutoverResult        `json:"swap,omitempty"`
	Teardown      *cutover.TeardownPlan `json:"teardown,omitempty"`
	Attempts      int                   `json:"attempts,omitempty"`
	LockHoldMS    float64               `json:"lock_hold_ms"`
	TotalMS       float64               `json:"total_ms"`
	Notes         []string              `json:"notes,omitempty"`
	// Warnings name changes made outside greenswap (drift) that rollback
	// went ahead despite: see Rollback.
	Warnings []string `json:"warnings,omitempty"`
	// Validations are the foreign keys an interrupted swap left NOT VALID,
	// validated before anything else (revalidate.go).
	Validations []cutover.Validation    `json:"validations,omitempty"`
	teardownRes *cutover.TeardownResult // for tests
}

// Rollback switches the app name back to blue.
//
// After cutover it is the cutover swap backwards, in one transaction (view,
// dependent views, foreign keys, user triggers, primary side; state back to
// synced): blue received every write made through green since the cutover
// through the reverse sync triggers, so nothing is lost, and the migration
// can cut over again.
//
// Before cutover (planned, syncing, synced) it tears down everything sync
// built in one transaction: dependent views of the app name are dropped
// and created again over the table, the view is dropped, blue moves back
// to the app schema under its own name, green, the sync triggers and
// functions and both version schemas are dropped, the state moves to
// rolled_back. The app has its table back as before sync.
func Rollback(ctx context.Context, env *Env, name string, opts SwapCommandOptions) (*RollbackResult, error) {
	return rollback(ctx, env, name, opts, 0)
}

// NotOurCutoverError: the guard's rollback found, under the migration's
// lock, that the latest swap is not the cutover it watches (another
// command rolled back and cut over again meanwhile): it changed nothing.
type NotOurCutoverError struct{ Watched, Latest int64 }

func (e *NotOurCutoverError) Error() string {
	return fmt.Sprintf("the latest swap (event %d) is not the cutover this guard watches (event %d)", e.Latest, e.Watched)
}

// rollback is Rollback; with swapEvent (the guard's), only while the
// migration's latest swap event is that one, checked under the lock.
func rollback(ctx context.Context, env *Env, name string, opts SwapCommandOptions, swapEvent int64) (*RollbackResult, error) {
	start := time.Now()
	m, lock, err := loadLocked(ctx, env, name)
	if err != nil {
		return nil, err
	}
	defer lock.Release(context.WithoutCancel(ctx))
	if swapEvent != 0 {
		latest, err := lastSwapEvent(ctx, env, name)
		if err != nil {
			return nil, err
		}
		if latest != swapEvent || m.Row.State != state.CutOver {
			return nil, &NotOurCutoverError{Watched: swapEvent, Latest: latest}
		}
	}
	res := &RollbackResult{SchemaVersion: SwapSchemaVersion, Migration: name, From: m.Row.State}
	defer func() { res.TotalMS = swapMS(time.Since(start)) }()
	if m.Row.State != state.RolledBack && m.Row.State != state.Finalized {
		if err := checkCommandPrivileges(ctx, env, m, shadow.StepRollback); err != nil {
			return nil, err
		}
	}
	if m.Row.State == state.CutOver || m.Row.State == state.Synced {
		// An interrupted swap's NOT VALID foreign keys (revalidate.go):
		// validated under a lock no writer waits for, before the swap
		// back or the teardown moves them.
		vals, err := revalidatePending(ctx, env, m, opts.lockOptions(m.Spec), opts.printf)
		if err != nil {
			return nil, err
		}
		res.Validations = vals
		res.Warnings = append(res.Warnings, validationWarnings(vals)...)
	}
	// Rollback is the emergency exit: drift does not block it (an operator
	// backing out of a bad cutover must not first reconcile a GRANT), but
	// every change is named, in the output, the result and the event log,
	// since the swap back or the teardown may not carry it.
	var drift *driftCheck
	// Several tables: every table's objects (drift.go).
	if m.Row.State == state.CutOver || m.Row.State == state.Synced || m.Row.State == state.Syncing {
		var w []string
		if drift, w = rollbackDriftWarnings(ctx, env, m); len(w) > 0 {
			res.Warnings = append(res.Warnings, w...)
			for _, l := range w {
				opts.printf("warning: %s\n", l)
			}
		}
	}
	switch m.Row.State {
	case state.CutOver:
		// Several tables: every table swapped back in one transaction
		// (swap, cutover.SwapInput.Members).
		res.Kind = "swap"
		cr := &CutoverResult{SchemaVersion: SwapSchemaVersion, Migration: name, Command: "rollback", App: m.Names.App.String()}
		res.Swap = cr
		err := swap(ctx, env, m, cutover.ToBlue, opts, cr, drift)
		cr.TotalMS = swapMS(time.Since(start))
		res.State, res.Attempts, res.LockHoldMS = cr.State, cr.Attempts, cr.LockHoldMS
		if err == nil {
			opts.printf("blue is primary again; the migration is synced and can cut over again (`greenswap cutover %s`)\n", name)
		}
		return res, err
	case state.Planned, state.Syncing, state.Synced:
		res.Kind = "teardown"
		if err := teardown(ctx, env, m, opts, res); err != nil {
			return res, err
		}
		return res, env.feedOf(m).drop(ctx, m) // an active slot too (feed_logical.go)
	case state.RolledBack:
		res.Kind, res.State = "none", state.RolledBack
		if err := env.feedOf(m).drop(ctx, m); err != nil { // one left behind (feed_logical.go)
			return res, err
		}
		opts.printf("migration %s is already rolled back: %s is the app's table\n", name, m.Names.App)
		return res, nil
	default:
		return nil, exitcode.Errorf(exitcode.BadInput, "migration %s is %s: a finalized migration cannot be rolled back", name, m.Row.State)
	}
}

func teardown(ctx context.Context, env *Env, m *Migration, o SwapCommandOptions, res *RollbackResult) error {
	name := m.Spec.Name
	lo := o.lockOptions(m.Spec)
	tx, err := env.Pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	planTeardown := func(q pgx.Tx) (*cutover.TeardownPlan, error) {
		return cutover.PlanTeardownMembers(ctx, q, name, MemberNames(m.Spec))
	}
	runTeardown := func(opt cutover.SwapOptions, commit func(context.Context, pgx.Tx, *cutover.TeardownPlan) error) (*cutover.TeardownResult, error) {
		return cutover.TeardownMembers(ctx, env.Pool, name, MemberNames(m.Spec), opt, commit)
	}
	if m.Spec.IsSplit() { // every green dropped, children first (cutover/teardown_split.go)
		planTeardown = func(q pgx.Tx) (*cutover.TeardownPlan, error) { return cutover.PlanTeardownSplit(ctx, q, name, m.Spec) }
		runTeardown = func(opt cutover.SwapOptions, commit func(context.Context, pgx.Tx, *cutover.TeardownPlan) error) (*cutover.TeardownResult, error) {
			return cutover.TeardownSplit(ctx, env.Pool, name, m.Spec, opt, commit)
		}
	}
	plan, err := planTeardown(tx)
	tx.Rollback(ctx)
	if err != nil {
		return err
	}
	if o.Out != nil {
		o.printf("rollback %s (%s, before cutover): in one transaction, give %s its table back as before sync\n", name, m.Row.State, m.Names.App)
		if plan.Adopted {
			for _, n := range MemberNames(m.Spec) {
				o.printf("  drop the view %s and move %s back to %s under its own name\n", n.App, n.Blue, n.App.Schema)
			}
		}
		for _, v := range plan.Views {
			o.printf("  dependent view %s: created again over the table\n", v.Name)
		}
		if plan.Green {
			for _, n := range MemberNames(m.Spec) {
				o.printf("  drop %s, the sync triggers and functions\n", n.Green)
			}
		}
		o.printf("  drop the schemas %s and %s\n", m.Names.BlueSchema, m.Names.GreenSchema)
		if plan.Slot != "" {
			o.printf("  then drop the replication slot %s\n", plan.Slot)
		}
		o.printf("  lock wait at most %s per attempt, up to %d attempts with backoff\n", lo.Timeout, lo.MaxAttempts)
	}
	log := env.Log.With().Str("migration", name).Logger()
	var tr *cutover.TeardownResult
	err = runPhase(ctx, env, log, name, "rollback", func(ctx context.Context, ev *phaseEvent) error {
		var err error
		tr, err = runTeardown(cutover.SwapOptions{
			Lock: lo, OnRetry: lockRetry(log, "rollback", lo.Timeout, o.printf),
		}, func(ctx context.Context, tx pgx.Tx, _ *cutover.TeardownPlan) error {
			if err := state.Transition(ctx, tx, name, state.RolledBack); err != nil {
				return err
			}
			return state.SetTornDown(ctx, tx, name)
		})
		res.Teardown, res.Attempts = tr.Plan, tr.Attempts
		ev.Took = tr.Duration
		if err != nil {
			var lt *shadow.LockTimeoutError
			if errors.As(err, &lt) {
				o.printf("gave up after %d attempts: nothing was changed\n", tr.Attempts)
			}
			ev.Detail = map[string]any{"attempts": tr.Attempts}
			return err
		}
		res.State, res.LockHoldMS = state.RolledBack, swapMS(tr.LockHold)
		ev.SQL = strings.Join(tr.Plan.Step().SQL, ";\n")
		ev.Detail = map[string]any{"kind": "teardown", "lock_hold_ms": res.LockHoldMS, "attempts": tr.Attempts}
		return nil
	})
	if err != nil {
		return err
	}
	if tr.SlotNote != "" {
		res.Notes = append(res.Notes, tr.SlotNote)
		o.printf("%s\n", tr.SlotNote)
	}
	o.printf("done: %s is the app's table again; greenswap's objects are gone (%d attempt%s, locks held %.1f ms, %s)\n",
		m.Names.App, tr.Attempts, swapPlural(tr.Attempts), res.LockHoldMS, tr.Duration.Round(time.Millisecond))
	return nil
}

// rollbackDriftWarnings lists drift as warnings (recorded as an event) and
// returns the check, so the swap back records the drift as still pending;
// a failure to check is itself a warning, never a reason not to roll back.
func rollbackDriftWarnings(ctx context.Context, env *Env, m *Migration) (*driftCheck, []string) {
	c, err := checkDrift(ctx, env, m)
	if err != nil {
		return nil, []string{"could not check for changes made outside greenswap: " + err.Error()}
	}
	d := c.all()
	if len(d) == 0 {
		return c, nil
	}
	w := make([]string, 0, len(d))
	for _, x := range d {
		w = append(w, "changed outside greenswap, rolling back anyway: "+x.String()+" (the rollback may not carry it; fix: "+x.Fix+")")
	}
	_ = state.Record(context.WithoutCancel(ctx), env.Pool, m.Spec.Name, "rollback", "drift-warning", 0, "", map[string]any{"drift": d})
	return c, w
}
