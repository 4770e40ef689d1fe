package runner

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/spec"
)

// TestGuardDoesNotRollBackALaterCutover (break7 finding 02): between two
// samples of a slow guard (every 3 s), another operator rolls back and
// cuts over again, unguarded; then the guard's probe fails. The guard
// must not roll back that later cutover: under the migration's lock its
// rollback finds the latest swap event is not the one it made, changes
// nothing and stops watching. Oracle: the migration stays cut over (the
// later cutover's), the 8 writers' ledger matches blue, green and the app
// name. On the code before, the guard rolled the later cutover back
// (state synced, exit 7).
func TestGuardDoesNotRollBackALaterCutover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := "gw_later"
	pool, _, env, m, w := gwSetup(t, name, 11)
	probe, fail := gwProbe(t)
	bounds := gwBounds(spec.GuardOptions{ProbeCmd: probe})
	bounds.Every.Duration = 3 * time.Second
	ch := gwCutover(ctx, t, env, name, time.Minute, bounds, SwapCommandOptions{})

	if _, err := Rollback(ctx, env, name, SwapCommandOptions{}); err != nil {
		t.Fatalf("the other operator's rollback: %v", err)
	}
	if _, err := Cutover(ctx, env, name, CutoverOptions{}); err != nil {
		t.Fatalf("the other operator's cutover: %v", err)
	}
	fail() // the guard's next sample trips
	r := gwWait(t, ch, time.Minute)
	if r.err != nil {
		t.Fatalf("guard: %v", r.err)
	}
	if r.res.Guard == nil || r.res.Guard.Outcome != "left" || len(r.res.Guard.Tripped) == 0 || r.res.Guard.Rollback != nil {
		t.Fatalf("the guard did not trip and stand down: %+v", r.res.Guard)
	}
	if st := gwState(t, env, name); st != state.CutOver {
		t.Fatalf("state %s: the guard undid the other operator's cutover", st)
	}
	ev := gwEvent(t, env, name, "guard-window", "left")
	if ev == nil || !strings.Contains(string(ev.Detail), "is not the cutover this guard watches") {
		t.Fatalf("no guard-window left event saying why: %+v", ev)
	}
	w.check(t, pool, m.Names, name)
}
