package runner

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
)

// TestRunPhaseOutcomes: the phase wrapper records one event per phase with
// the outcome its error implies (a cancelled context is "interrupted", a
// lock that was never granted "lock-timeout"), fn's detail with the error,
// its own or fn's timing, and returns the error untouched (exit code
// unchanged); a phase that recorded its success itself gets no second
// event, a drift refusal none (refuseOnDrift recorded it).
func TestRunPhaseOutcomes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, dsn := pgtest.NewPool(t)
	env := coEnv(t, dsn)
	if err := state.Ensure(ctx, env.Pool); err != nil {
		t.Fatal(err)
	}
	if _, err := state.Create(ctx, env.Pool, "ph", "public.t", "trigger", map[string]string{"name": "ph"}); err != nil {
		t.Fatal(err)
	}
	failed := exitcode.Errorf(exitcode.Failed, "it broke")
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	cases := []struct {
		step    string
		ctx     context.Context
		fn      func(context.Context, *phaseEvent) error
		outcome string // "" : no event
		code    exitcode.Code
	}{
		{"p-ok", ctx, func(_ context.Context, ev *phaseEvent) error {
			ev.SQL, ev.Detail, ev.Took = "SELECT 1", map[string]any{"rows": 3}, 1500*time.Millisecond
			return nil
		}, "ok", exitcode.OK},
		{"p-recorded", ctx, func(_ context.Context, ev *phaseEvent) error { ev.Recorded = true; return nil }, "", exitcode.OK},
		{"p-error", ctx, func(_ context.Context, ev *phaseEvent) error {
			ev.Recorded, ev.Detail = true, map[string]any{"attempts": 2}
			return failed
		}, "error", exitcode.Failed},
		{"p-interrupted", cancelled, func(ctx context.Context, _ *phaseEvent) error { return ctx.Err() }, "interrupted", exitcode.Of(context.Canceled)},
		{"p-lock", ctx, func(context.Context, *phaseEvent) error {
			return &shadow.LockTimeoutError{Step: "p-lock", Attempts: 3}
		}, "lock-timeout", exitcode.Of(&shadow.LockTimeoutError{})},
		{"p-refused", ctx, func(_ context.Context, ev *phaseEvent) error { ev.Outcome = "refused"; return failed }, "refused", exitcode.Failed},
		{"p-refused-interrupted", cancelled, func(ctx context.Context, ev *phaseEvent) error { ev.Outcome = "refused"; return ctx.Err() },
			"interrupted", exitcode.Of(context.Canceled)},
		{"p-drift", ctx, func(context.Context, *phaseEvent) error { return &DriftError{Migration: "ph", Step: "p-drift"} }, "", exitcode.Of(&DriftError{})},
	}
	for _, c := range cases {
		err := runPhase(c.ctx, env, env.Log, "ph", c.step, c.fn)
		if got := exitcode.Of(err); got != c.code {
			t.Errorf("%s: exit code %d (%v), want %d", c.step, got, err, c.code)
		}
		evs := phaseEvents(t, env, "ph", c.step)
		if c.outcome == "" {
			if len(evs) != 0 {
				t.Errorf("%s: %d events, want none", c.step, len(evs))
			}
			continue
		}
		if len(evs) != 1 || evs[0].Outcome != c.outcome {
			t.Errorf("%s: events %+v, want one %q", c.step, evs, c.outcome)
			continue
		}
		var d map[string]any
		_ = json.Unmarshal(evs[0].Detail, &d)
		if err != nil && d["error"] != err.Error() {
			t.Errorf("%s: detail %v lacks the error %q", c.step, d, err)
		}
		if c.step == "p-ok" && (evs[0].SQL != "SELECT 1" || evs[0].DurationMS != 1500 || d["rows"] != float64(3)) {
			t.Errorf("p-ok: event %+v", evs[0])
		}
		if c.step == "p-error" && d["attempts"] != float64(2) {
			t.Errorf("p-error: detail %v", d)
		}
	}
	if !errors.Is(runPhase(cancelled, env, env.Log, "ph", "p-same", func(context.Context, *phaseEvent) error { return failed }), failed) {
		t.Error("runPhase did not return the phase's own error")
	}
}

func phaseEvents(t *testing.T, env *Env, name, step string) []state.Event {
	t.Helper()
	all, err := state.Events(context.Background(), env.Pool, name, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []state.Event
	for _, e := range all {
		if e.Step == step {
			out = append(out, e)
		}
	}
	return out
}

// TestResumedSyncSkipsIndexesInState: the indexes a sync built are in the
// state row, one per target.indexes statement, and a sync resumed at the
// index phase builds none again, the unnamed one included (found by the
// name recorded in the state, not by the event log).
func TestResumedSyncSkipsIndexesInState(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(500, false))
	env := syncTestEnv(t, dsn)
	spec := syncSpec(t, syncOrdersSpec("ix", false))
	if _, err := Sync(ctx, env, spec, SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	m, err := state.Get(ctx, pool, "ix")
	if err != nil {
		t.Fatal(err)
	}
	built, err := m.BuiltIndexes()
	if err != nil || len(built) != 2 {
		t.Fatalf("indexes in the state: %v, %v; want both statements", built, err)
	}
	for i, ix := range built {
		if n := syncCount(t, pool, `SELECT count(*) FROM pg_indexes WHERE schemaname = 'gs_ix_green' AND indexname = $1`, ix); n != 1 {
			t.Errorf("statement %d: index %q recorded but not on green", i, ix)
		}
	}
	indexes := `SELECT count(*) FROM pg_indexes WHERE schemaname = 'gs_ix_green' AND tablename = 'orders'`
	before := syncCount(t, pool, indexes)
	// Back to the index phase, as a crash right after the builds leaves it.
	if err := state.Transition(ctx, pool, "ix", state.Syncing); err != nil {
		t.Fatal(err)
	}
	if err := state.SetPhase(ctx, pool, "ix", PhaseIndexes); err != nil {
		t.Fatal(err)
	}
	st, err := Sync(ctx, env, spec, SyncOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.State != state.Synced {
		t.Fatalf("resumed sync ended in %s", st.State)
	}
	if after := syncCount(t, pool, indexes); after != before {
		t.Fatalf("green has %d indexes after the resumed sync, %d before: a built one was built again", after, before)
	}
	if n := syncCount(t, pool, `SELECT count(*) FROM greenswap.events WHERE migration = 'ix' AND step = 'build-index'`); n != 2 {
		t.Fatalf("%d build-index events, want the first run's 2", n)
	}
}

// TestFinalizeInterruptedIsRecorded: a finalize stopped (Ctrl-C) while it
// watches blue for clients exits 130 and its event says "interrupted";
// the old outcome block recorded it as "error". The migration is still cut
// over and finalizes afterwards.
func TestFinalizeInterruptedIsRecorded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE TABLE things (id bigint PRIMARY KEY, v int NOT NULL); INSERT INTO things SELECT g, g FROM generate_series(1, 100) g`)
	env := coEnv(t, dsn)
	spec := coSync(t, env, `
name: fi
table: public.things
target:
  ddl: CREATE TABLE things (id bigint PRIMARY KEY, v bigint NOT NULL)
`)
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(500*time.Millisecond, cancel)
	_, err := Finalize(cctx, env, spec.Name, FinalizeOptions{QuietPeriod: time.Minute, SampleEvery: 50 * time.Millisecond, Yes: true})
	if exitcode.Of(err) != exitcode.Interrupted {
		t.Fatalf("interrupted finalize = %v (exit %d), want exit %d", err, exitcode.Of(err), exitcode.Interrupted)
	}
	if evs := phaseEvents(t, env, spec.Name, "finalize"); len(evs) != 1 || evs[0].Outcome != "interrupted" {
		t.Fatalf("finalize events %+v, want one interrupted", evs)
	}
	if n := syncCount(t, pool, `SELECT count(*) FROM greenswap.migrations WHERE name = 'fi' AND state = 'cut_over'`); n != 1 {
		t.Fatal("the interrupted finalize changed the state")
	}
	if _, err := Finalize(ctx, env, spec.Name, FinalizeOptions{Force: true, Yes: true}); err != nil {
		t.Fatalf("finalize after the interruption: %v", err)
	}
}
