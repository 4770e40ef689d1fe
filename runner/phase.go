package runner

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/cutover"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/logx"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
)

// phaseEvent is what a phase tells runPhase about itself, beyond its
// error, for the event runPhase records.
type phaseEvent struct {
	// SQL and Detail go into the event (Detail gains "error" on failure).
	SQL    string
	Detail map[string]any
	// Took replaces runPhase's own timing when set (the work proper,
	// without what the phase did before it).
	Took time.Duration
	// Recorded: the phase recorded its "ok" event itself, in the
	// transaction that did the work, so the two commit together; runPhase
	// records only a failure.
	Recorded bool
	// Outcome replaces the one runPhase derives from the error (e.g.
	// "refused" for a precondition that is not met), but not
	// "interrupted".
	Outcome string
	// Done is logged on success (nothing when empty).
	Done string
}

// runPhase runs one phase of a command: it times fn, records the phase's
// event with its outcome (unless fn recorded its success itself), and logs
// the end. The outcome of a failure is "interrupted" when ctx was
// cancelled, "lock-timeout" when every lock attempt timed out, "refused"
// for a usage check that found clients, else "error" (or what fn set);
// the error itself is returned as it is, so its exit code is the phase's.
// The event is written even when ctx is cancelled: it says what happened.
func runPhase(ctx context.Context, env *Env, log zerolog.Logger, migration, name string, fn func(ctx context.Context, ev *phaseEvent) error) error {
	t0 := time.Now()
	ev := &phaseEvent{}
	err := fn(ctx, ev)
	took := ev.Took
	if took == 0 {
		took = time.Since(t0)
	}
	// An interruption is named as such whatever the phase thought of the
	// error it caused (a refused plan read, say).
	outcome := outcomeOf(ctx, err)
	if ev.Outcome != "" && outcome != "interrupted" {
		outcome = ev.Outcome
	}
	// Every phase's end at debug level, whatever it recorded: the log then
	// shows each phase with its timing, as the event log does.
	log.Debug().Str("step", name).Str("outcome", outcome).Float64("took_ms", logx.Ms(took)).Msg("phase ended")
	var drift *DriftError
	if errors.As(err, &drift) {
		return err // refuseOnDrift recorded it, naming what drifted
	}
	if err == nil && ev.Recorded {
		if ev.Done != "" {
			log.Info().Str("step", name).Float64("took_ms", logx.Ms(took)).Msg(ev.Done)
		}
		return nil
	}
	detail := maps.Clone(ev.Detail)
	if err != nil {
		if detail == nil {
			detail = map[string]any{}
		}
		detail["error"] = err.Error()
	}
	var d any
	if detail != nil {
		d = detail
	}
	// A phase that succeeded committed its work and its state: an event
	// that cannot be written then is a warning, not a failure of the
	// command (whose state the operator would then misread).
	if rerr := state.Record(context.WithoutCancel(ctx), env.Pool, migration, name, outcome, took, ev.SQL, d); rerr != nil {
		log.Warn().Err(rerr).Str("step", name).Str("outcome", outcome).Msg("could not record the step's event")
	}
	if err != nil {
		return err
	}
	if ev.Done != "" {
		log.Info().Str("step", name).Float64("took_ms", logx.Ms(took)).Msg(ev.Done)
	}
	return nil
}

// outcomeOf names how a phase ended, for its event.
func outcomeOf(ctx context.Context, err error) string {
	var lt *shadow.LockTimeoutError
	var ue *cutover.UsageError
	switch {
	case err == nil:
		return "ok"
	case ctx.Err() != nil || exitcode.Of(err) == exitcode.Interrupted:
		return "interrupted"
	case errors.As(err, &lt):
		return "lock-timeout"
	case errors.As(err, &ue):
		return "refused"
	default:
		return "error"
	}
}

// lockRetry is the one report of a lock attempt that timed out and will be
// retried, for every lock-taking step: a warning in the log naming the
// blockers and, when printf is set, the same for the person watching.
func lockRetry(log zerolog.Logger, step string, timeout time.Duration, printf func(string, ...any)) func(int, []shadow.Blocker, time.Duration) {
	return func(attempt int, blockers []shadow.Blocker, wait time.Duration) {
		if printf != nil {
			printf("attempt %d: a lock was not granted within %s; rolled back, nothing changed; retrying in %s\n",
				attempt, timeout, wait.Round(time.Millisecond))
			for _, b := range blockers {
				printf("  blocked by %s\n", b)
			}
		}
		ev := log.Warn().Str("step", step).Int("attempt", attempt).Float64("retry_in_ms", logx.Ms(wait))
		for _, b := range blockers {
			ev = ev.Str(fmt.Sprintf("blocker_%d", b.PID), b.String())
		}
		ev.Msg("lock wait timed out; rolled back, retrying")
	}
}
