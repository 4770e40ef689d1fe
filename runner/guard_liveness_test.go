package runner

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/state"
)

// TestStatusSeesAKilledGuard (break7 findings 01, 09): the built binary
// runs cutover --guard under 8 writers; status says the guard is alive
// while it watches; it is killed with SIGKILL (no final event); status
// must then say the guard process is gone and what to do, not "watching".
// Then the same while its own rollback retries against a lock on the app
// view: alive and rolling back, then gone after SIGKILL with the migration
// still cut over. The guard's lock is not the migration's: rollback runs
// meanwhile. On the code before, status said "watching, N left" (and
// "rolling-back" forever) after the kill.
func TestStatusSeesAKilledGuard(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := "gw_killed"
	pool, dsn, env, m, w := gwSetup(t, name, 12)
	bin := syncBuildCLI(t)
	probe, fail := gwProbe(t)
	guardOf := func() *GuardWindowStatus {
		t.Helper()
		st, err := Status(ctx, env, name)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Migrations) != 1 {
			t.Fatalf("status: %d migrations", len(st.Migrations))
		}
		return st.Migrations[0].GuardWindow
	}
	cliStatus := func() string {
		t.Helper()
		out, err := exec.Command(bin, "--dsn", dsn, "status", name).CombinedOutput()
		if err != nil {
			t.Fatalf("status: %v\n%s", err, out)
		}
		return string(out)
	}
	kill := func(r *syncCLIRun) {
		t.Helper()
		if err := r.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		r.wait(t, 30*time.Second)
		// The server ends the killed process's sessions once it notices.
		syncWaitFor(t, 30*time.Second, "the killed guard's lock to go", func() bool {
			alive, err := state.GuardAlive(ctx, pool, name)
			return err == nil && !alive
		})
	}

	// 1. Killed while watching.
	r := syncStartCLI(t, bin, dsn, "cutover", name, "--guard", "5m", "--guard-every", "200ms", "--guard-probe-cmd", probe)
	syncWaitFor(t, 60*time.Second, "the guard window", func() bool { return gwEvent(t, env, name, "guard-window", "watching") != nil })
	if g := guardOf(); g == nil || g.Gone || g.Phase != "watching" {
		t.Fatalf("a live guard: %+v", g)
	}
	kill(r)
	g := guardOf()
	if g == nil || !g.Gone {
		t.Fatalf("status after the guard was killed: %+v", g)
	}
	if out := cliStatus(); !strings.Contains(out, "guard process gone") || !strings.Contains(out, "is cut_over") ||
		!strings.Contains(out, "greenswap rollback "+name) || strings.Contains(out, "left of") {
		t.Fatalf("status after the kill:\n%s", out)
	}

	// 2. Killed while its rollback retries.
	if _, err := Rollback(ctx, env, name, SwapCommandOptions{}); err != nil { // the migration's lock is free
		t.Fatalf("rollback: %v", err)
	}
	r = syncStartCLI(t, bin, dsn, "cutover", name, "--guard", "5m", "--guard-every", "200ms", "--guard-probe-cmd", probe,
		"--lock-timeout", "200ms", "--max-attempts", "10000")
	syncWaitFor(t, 60*time.Second, "the second guard window", func() bool {
		g := guardOf()
		return g != nil && g.Phase == "watching" && !g.Gone
	})
	holder := coConn(t, dsn, map[string]string{"application_name": "app-report"})
	coExec(t, holder, "BEGIN")
	coExec(t, holder, "LOCK TABLE "+db.Ident(m.Names.App.Schema, m.Names.App.Name)+" IN ACCESS SHARE MODE")
	fail()
	syncWaitFor(t, 30*time.Second, "the guard to trip", func() bool {
		g := guardOf()
		return g != nil && g.Phase == "rolling-back"
	})
	if g := guardOf(); g.Gone {
		t.Fatalf("a guard retrying its rollback reported gone: %+v", g)
	}
	kill(r)
	coExec(t, holder, "COMMIT")
	if g := guardOf(); g == nil || !g.Gone || g.Phase != "rolling-back" {
		t.Fatalf("status after the guard was killed mid-rollback: %+v", g)
	}
	if out := cliStatus(); !strings.Contains(out, "guard process gone") || !strings.Contains(out, "rolling-back") || !strings.Contains(out, "is cut_over") {
		t.Fatalf("status after the kill mid-rollback:\n%s", out)
	}
	if st := gwState(t, env, name); st != state.CutOver {
		t.Fatalf("state %s, want cut_over", st)
	}
	w.check(t, pool, m.Names, name)
}

// TestStatusSlotHandedOver (break7 finding 10b): after a logical
// migration's cutover dropped its slot on purpose, status says so
// (handed_over) instead of reporting a recorded slot that does not exist.
func TestStatusSlotHandedOver(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := logicalName("gwho")
	_, _, env, _, w := gwSetupMode(t, name, 13, true)
	defer w.stop()
	if _, err := Cutover(ctx, env, name, CutoverOptions{}); err != nil {
		t.Fatalf("cutover: %v", err)
	}
	st, err := Status(ctx, env, name)
	if err != nil {
		t.Fatal(err)
	}
	if s := st.Migrations[0].Slot; s == nil || s.Exists || !s.HandedOver {
		t.Fatalf("slot after the handover: %+v", s)
	}
}
