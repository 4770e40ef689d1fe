package runner

// cutover --guard: the guarded cutover. A baseline of the health signals
// (guard.Sampler) is taken before the swap; after it, the signals are
// watched against that baseline for the window, and the first sample with
// a signal past its bound runs Rollback (the code `greenswap rollback`
// runs) by itself. While watching nothing is held: no advisory lock (the
// migration's lock is released with the swap, so rollback, finalize or
// status may run meanwhile), no transaction, no table lock; each sample is
// a few autocommit statements on greenswap's pool, which finalize's usage
// check does not take for a client of blue (they never name it).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/greenswap/greenswap/guard"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// CutoverGuardOptions are cutover's --guard and --guard-* flags.
type CutoverGuardOptions struct {
	// Window is how long the signals are watched after the swap (0: no
	// guard, the plain cutover).
	Window time.Duration
	// Bounds are the flags, put field by field over the spec's guard:
	// section, over guard.WithCutoverDefaults.
	Bounds spec.GuardOptions
}

// GuardReport is what the guard window saw and did: the "guard" member of
// cutover's JSON result.
type GuardReport struct {
	WindowMS  float64 `json:"window_ms"`
	WatchedMS float64 `json:"watched_ms"`
	// Outcome: "passed" (stayed cut over), "rolled_back", "rollback_failed"
	// (still cut over), "interrupted" (still cut over), "left" (the
	// migration left cut_over by another command), "error" (the signals
	// could not be read; still cut over).
	Outcome    string          `json:"outcome"`
	Samples    int             `json:"samples"`
	LastSample string          `json:"last_sample,omitempty"`
	Tripped    []guard.Signal  `json:"tripped,omitempty"`
	Rollback   *RollbackResult `json:"rollback,omitempty"`
}

// cutoverGuard is one guard window: the sampler and the baseline taken
// before the swap.
type cutoverGuard struct {
	m      *Migration
	s      *guard.Sampler
	bl     *guard.Baseline
	window time.Duration
	// swapEvent is the id of the swap event of the cutover it watches:
	// its rollback happens only while that is the latest swap.
	swapEvent int64
}

// guardSettle: when the swap changed the app name's row type, every
// prepared statement on it fails once ("cached plan must not change result
// type", trap 6), a burst of rolled-back transactions that is the swap's,
// not the new shape's: rollback_rate is not acted on until the rate
// windows that saw the burst are over.
const guardSettle = 3 * guard.RateWindow

// guardNoteEvery: how often the window records a "guard-window" event
// while watching (status shows the last event: time left, last sample).
const guardNoteEvery = 5 * time.Second

// storedProbesIgnored is what the window leaves out of the stored spec's
// guard: section (break7 finding 07): probe_sql and probe_cmd are executed
// (SQL as greenswap's role, a shell command on the operator's host), and
// the stored spec is greenswap.migrations, which the roles the runbook
// grants SELECT, INSERT, UPDATE on it may rewrite. So cutover runs only
// the probes of its own flags; sync runs those of the file it is given.
// The bounds are numbers, not code: they are still read from the row.
func storedProbesIgnored(stored, flags spec.GuardOptions) (kept spec.GuardOptions, notes []string) {
	kept = stored
	kept.ProbeSQL, kept.ProbeCmd = "", ""
	for _, p := range []struct{ field, value, flag string }{
		{"probe_sql", stored.ProbeSQL, flags.ProbeSQL}, {"probe_cmd", stored.ProbeCmd, flags.ProbeCmd},
	} {
		if p.value != "" && p.flag == "" {
			notes = append(notes, fmt.Sprintf("cutover --guard does not run the stored spec's guard.%s (greenswap.migrations is writable by the operator roles, "+
				"so what it executes comes only from the command line): pass --guard-%s to run a probe", p.field, strings.ReplaceAll(p.field, "_", "-")))
		}
	}
	return kept, notes
}

// startCutoverGuard takes the pre-cutover baseline (one rate window, 2s,
// when a rate signal is on). notes name the stored probes it does not run.
func startCutoverGuard(ctx context.Context, env *Env, m *Migration, o CutoverGuardOptions) (_ *cutoverGuard, notes []string, _ error) {
	stored, notes := storedProbesIgnored(m.Spec.Guard, o.Bounds)
	bounds := guard.WithCutoverDefaults(stored.Override(o.Bounds))
	bounds.MaxOpen.Duration = 0 // no breaker to hold open: the first trip rolls back
	s := guardSampler(env, MemberNames(m.Spec), bounds)
	bl, err := s.TakeBaseline(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("cutover --guard: take the baseline before the swap (nothing was changed): %w", err)
	}
	return &cutoverGuard{m: m, s: s, bl: bl, window: o.Window}, notes, nil
}

// GuardRolledBackError is the guard's rollback after a trip (exit 7).
type GuardRolledBackError struct {
	Migration string
	After     time.Duration
	Tripped   []guard.Signal
	App, Blue string
}

func (e *GuardRolledBackError) Error() string {
	return fmt.Sprintf("cutover --guard rolled migration %s back %s after the swap: %s; %s reads %s again, nothing was lost, the migration is synced: "+
		"find out why the application suffered, then cut over again", e.Migration, e.After.Round(100*time.Millisecond), guard.Describe(e.Tripped), e.App, e.Blue)
}

func (e *GuardRolledBackError) ExitCode() exitcode.Code { return exitcode.GuardRolledBack }

// GuardInterruptedError: the window was interrupted (exit 130); the
// migration stays cut over.
type GuardInterruptedError struct {
	Migration      string
	Watched, Of    time.Duration
	App, Green     string
	InterruptedErr error
}

func (e *GuardInterruptedError) Error() string { return e.InterruptedLine() }

// InterruptedLine is the one line the CLI prints for it.
func (e *GuardInterruptedError) InterruptedLine() string {
	return fmt.Sprintf("interrupted during cutover's guard window (%s of %s watched): migration %s stays cut over, %s reads %s; "+
		"`greenswap rollback %s` switches back, `greenswap finalize %s` retires blue", e.Watched.Round(100*time.Millisecond), e.Of, e.Migration, e.App, e.Green,
		e.Migration, e.Migration)
}

func (e *GuardInterruptedError) Unwrap() error           { return e.InterruptedErr }
func (e *GuardInterruptedError) ExitCode() exitcode.Code { return exitcode.Interrupted }

// watch runs the window after a committed swap. res is the cutover's
// result; it is updated when the guard rolls back.
func (g *cutoverGuard) watch(ctx context.Context, env *Env, o CutoverOptions, res *CutoverResult) error {
	name, n := g.m.Spec.Name, g.m.Names
	rep := &GuardReport{WindowMS: swapMS(g.window)}
	res.Guard = rep
	start := time.Now()
	until := start.Add(g.window)
	record := func(step, outcome string, detail map[string]any) {
		detail["window_ms"], detail["watched_ms"] = rep.WindowMS, swapMS(time.Since(start))
		if err := state.Record(context.WithoutCancel(ctx), env.Pool, name, step, outcome, time.Since(start), "", detail); err != nil {
			env.Log.Warn().Err(err).Str("migration", name).Msg("record the guard window's event")
		}
	}
	done := func(outcome string) { rep.Outcome, rep.WatchedMS = outcome, swapMS(time.Since(start)) }
	// Held for the window and its rollback: status tells a live guard
	// from a killed one by it (the events cannot: a killed process
	// records nothing).
	gl, ok, err := state.AcquireGuardLock(ctx, env.ConnConfig, name)
	if err != nil || !ok {
		env.Log.Warn().Err(err).Str("migration", name).Msg("the guard's lock is not held: status cannot tell whether this guard is alive")
	}
	defer gl.Release(context.WithoutCancel(ctx))
	o.printf("guard: watching for %s (until %s) against the baseline taken before the swap; a signal past its bound rolls back\n",
		g.window, until.UTC().Format(time.TimeOnly))
	record("guard-window", "watching", map[string]any{"until": until.UTC(), "bounds": g.s.Opts})
	nextNote := start.Add(guardNoteEvery)
	var settleUntil time.Time
	if res.Plan != nil && res.Plan.RowTypeChanged {
		settleUntil = start.Add(guardSettle)
	}
	tick := time.NewTicker(g.s.Opts.Every.Duration)
	defer tick.Stop()
	for {
		sigs, err := g.s.Sample(ctx, g.bl)
		if ctx.Err() != nil {
			done("interrupted")
			record("guard-window", "interrupted", map[string]any{"last_sample": rep.LastSample})
			return &GuardInterruptedError{Migration: name, Watched: time.Since(start), Of: g.window, App: n.App.String(), Green: n.Green.String(), InterruptedErr: ctx.Err()}
		}
		if err != nil {
			done("error")
			record("guard-window", "error", map[string]any{"error": err.Error()})
			return fmt.Errorf("cutover --guard could not read the signals after %s: %w; migration %s stays cut over (%s reads %s): watch it yourself, or `greenswap rollback %s`",
				time.Since(start).Round(100*time.Millisecond), err, name, n.App, n.Green, name)
		}
		rep.Samples++
		rep.LastSample = guard.Describe(sigs)
		tripped := guard.Tripped(sigs)
		if time.Now().Before(settleUntil) {
			tripped = slices.DeleteFunc(tripped, func(s guard.Signal) bool { return s.Name == guard.SigRollbackRate })
		}
		if len(tripped) > 0 {
			rep.Tripped = tripped
			detail := guard.Details(tripped)
			record("guard-tripped", "rolling-back", map[string]any{"signals": detail})
			return g.rollBack(ctx, env, o, res, time.Since(start), record, done)
		}
		now := time.Now()
		if !now.Before(until) {
			done("passed")
			record("guard-window", "passed", map[string]any{"samples": rep.Samples, "last_sample": rep.LastSample})
			o.printf("guard: %s passed (%d samples, no signal past its bound): %s stays on %s\n", g.window, rep.Samples, n.App, n.Green)
			return nil
		}
		if !now.Before(nextNote) {
			nextNote = now.Add(guardNoteEvery)
			row, err := state.Get(ctx, env.Pool, name)
			if err == nil && row.State != state.CutOver {
				// Rolled back or finalized by hand meanwhile: nothing left to guard.
				done("left")
				record("guard-window", "left", map[string]any{"state": row.State})
				o.printf("guard: migration %s is %s now (another command): the guard stops watching\n", name, row.State)
				return nil
			}
			record("guard-window", "watching", map[string]any{"until": until.UTC(), "left_ms": swapMS(until.Sub(now)), "last_sample": rep.LastSample})
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// rollBack is the guard's own rollback: Rollback, the code path of
// `greenswap rollback`, with cutover's lock budget.
func (g *cutoverGuard) rollBack(ctx context.Context, env *Env, o CutoverOptions, res *CutoverResult, after time.Duration,
	record func(step, outcome string, detail map[string]any), done func(string)) error {
	name, n, rep := g.m.Spec.Name, g.m.Names, res.Guard
	o.printf("guard: %s after %s: rolling back\n", guard.Describe(rep.Tripped), after.Round(100*time.Millisecond))
	rb, err := rollback(ctx, env, name, o.SwapCommandOptions, g.swapEvent)
	rep.Rollback = rb
	var notOurs *NotOurCutoverError
	if errors.As(err, &notOurs) {
		done("left")
		record("guard-window", "left", map[string]any{"reason": notOurs.Error(), "signals": guard.Details(rep.Tripped)})
		o.printf("guard: %s past its bound, but migration %s was rolled back or cut over by another command since this guard's cutover (%s): "+
			"the guard stops watching and changes nothing; `greenswap status %s` shows where it is\n", guard.Describe(rep.Tripped), name, notOurs, name)
		return nil
	}
	if err != nil {
		done("rollback_failed")
		record("guard-rollback", "failed", map[string]any{"error": err.Error(), "signals": guard.Details(rep.Tripped)})
		var lt *shadow.LockTimeoutError
		if errors.As(err, &lt) {
			return exitcode.With(exitcode.LockTimeout, fmt.Errorf(
				"cutover --guard tripped (%s) but its rollback gave up waiting for locks: migration %s is still cut over (%s reads %s, green is primary); "+
					"run `greenswap rollback %s` once the blocker is gone: %w", guard.Describe(rep.Tripped), name, n.App, n.Green, name, err))
		}
		return fmt.Errorf("cutover --guard tripped (%s) but its rollback failed (`greenswap status %s` says whether it is still cut over; `greenswap rollback %s` retries): %w",
			guard.Describe(rep.Tripped), name, name, err)
	}
	done("rolled_back")
	record("guard-rollback", "ok", map[string]any{"signals": guard.Details(rep.Tripped), "lock_hold_ms": rb.LockHoldMS, "attempts": rb.Attempts})
	res.State, res.PrimarySide, res.Reads = rb.State, "blue", n.Blue.String()
	return &GuardRolledBackError{Migration: name, After: after, Tripped: rep.Tripped, App: n.App.String(), Blue: n.Blue.String()}
}

// GuardWindowStatus is a guard window in progress as status shows it,
// read from the migration's last event (the window's "guard-window
// watching", recorded every guardNoteEvery): no other state is kept.
type GuardWindowStatus struct {
	Until      time.Time `json:"until"`
	WindowMS   float64   `json:"window_ms"`
	LeftMS     float64   `json:"left_ms"`
	LastSample string    `json:"last_sample,omitempty"`
	// Stale: the window should have ended and recorded its verdict by
	// now; the process watching it stopped without one (killed).
	Stale bool `json:"stale,omitempty"`
	// Phase: "watching", or "rolling-back" (the last event is the trip:
	// its rollback has not recorded an outcome).
	Phase string `json:"phase"`
	// Gone: no session holds the guard's lock (state.GuardLock): the
	// cutover --guard process is gone, whatever the last event says.
	Gone bool      `json:"gone,omitempty"`
	At   time.Time `json:"at"` // the last event's time
}

// guardWindowStatus reads a window in progress from ev (nil: none).
func guardWindowStatus(ev *state.Event, st state.State, now time.Time) *GuardWindowStatus {
	if ev != nil && ev.Step == "guard-tripped" && ev.Outcome == "rolling-back" {
		return &GuardWindowStatus{Phase: "rolling-back", At: ev.At}
	}
	if ev == nil || ev.Step != "guard-window" || ev.Outcome != "watching" || st != state.CutOver {
		return nil
	}
	var d struct {
		Until      time.Time `json:"until"`
		WindowMS   float64   `json:"window_ms"`
		LastSample string    `json:"last_sample"`
	}
	if json.Unmarshal(ev.Detail, &d) != nil || d.Until.IsZero() {
		return nil
	}
	g := &GuardWindowStatus{Until: d.Until, WindowMS: d.WindowMS, LastSample: d.LastSample, LeftMS: max(0, swapMS(d.Until.Sub(now))),
		Phase: "watching", At: ev.At}
	g.Stale = now.After(d.Until.Add(2 * guardNoteEvery))
	return g
}
