package runner

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/verify"
	"github.com/greenswap/greenswap/verify/verifytest"
)

const verifySpec = `
name: o2
table: public.orders
target:
  ddl: |
    CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL, amount numeric(12,2) NOT NULL, note text)
forward:
  email: coalesce(email, 'unknown@invalid')
reverse:
  amount: round(amount)::int
`

// verifyFixture builds migration o2 over 2000 orders, copies blue into
// green and registers it in state st.
func verifyFixture(t *testing.T, st state.State, backfillDone bool) (*Env, string) {
	t.Helper()
	ctx := t.Context()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `
		CREATE TABLE orders (id serial PRIMARY KEY, email text, amount int NOT NULL, note text);
		INSERT INTO orders (email, amount, note)
		SELECT CASE WHEN g % 5 = 0 THEN NULL ELSE 'u' || g END, g, md5(g::text) FROM generate_series(1, 2000) g;`)
	f, err := verifytest.Setup(ctx, pool, verifySpec, pgtest.ServerMajor(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Copy(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if err := f.Register(ctx, pool, st, backfillDone); err != nil {
		t.Fatal(err)
	}
	env, err := Connect(ctx, dsn, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	tuneForTests(env)
	t.Cleanup(env.Close)
	return env, dsn
}

func TestVerifyRefusesIncompleteMigrations(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env, _ := verifyFixture(t, state.Syncing, false)
	_, err := Verify(ctx, env, "o2", VerifyOptions{})
	if exitcode.Of(err) != exitcode.BadInput || !strings.Contains(err.Error(), "backfill has not finished") {
		t.Fatalf("before the backfill: %v (exit %d), want exit 2 naming the backfill", err, exitcode.Of(err))
	}
	_, err = Verify(ctx, env, "nope", VerifyOptions{})
	if exitcode.Of(err) != exitcode.BadInput {
		t.Fatalf("unknown migration: %v (exit %d)", err, exitcode.Of(err))
	}
	if ok, err := LastVerifyPassed(ctx, env.Pool, "o2"); ok || err != nil {
		t.Fatalf("LastVerifyPassed = %v, %v before any verify", ok, err)
	}
	// Syncing with the backfill done is verifiable.
	if _, err := env.Pool.Exec(ctx, `UPDATE greenswap.migrations SET backfill_done_at = now()`); err != nil {
		t.Fatal(err)
	}
	res, err := Verify(ctx, env, "o2", VerifyOptions{})
	if err != nil || !res.OK || res.Rows != 2000 {
		t.Fatalf("syncing after backfill: %v %+v", err, res)
	}
}

func TestVerifyRecordsResult(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env, dsn := verifyFixture(t, state.Synced, true)
	var reports int
	res, err := Verify(ctx, env, "o2", VerifyOptions{ChunkRows: 300, Progress: func(verify.Progress) { reports++ }})
	if err != nil || !res.OK || res.Chunks < 5 || reports == 0 {
		t.Fatalf("verify: %v %+v (progress reports %d)", err, res, reports)
	}
	m, err := state.Get(ctx, env.Pool, "o2")
	if err != nil {
		t.Fatal(err)
	}
	if m.VerifyOK == nil || !*m.VerifyOK || m.VerifiedAt == nil || m.VerifiedAt.Before(*m.BackfillDoneAt) {
		t.Fatalf("migration row: verify_ok %v verified_at %v backfill_done_at %v", m.VerifyOK, m.VerifiedAt, m.BackfillDoneAt)
	}
	ev := lastEvent(t, env, "o2")
	if ev.Step != "verify" || ev.Outcome != "ok" {
		t.Fatalf("event %+v", ev)
	}
	var detail map[string]any
	if err := json.Unmarshal(ev.Detail, &detail); err != nil || detail["rows"] != float64(2000) || detail["ok"] != true {
		t.Fatalf("event detail %s (%v)", ev.Detail, err)
	}
	if ok, err := LastVerifyPassed(ctx, env.Pool, "o2"); !ok || err != nil {
		t.Fatalf("LastVerifyPassed = %v, %v after a passing verify", ok, err)
	}
	// A later backfill (a resumed sync) needs a new verify.
	if _, err := env.Pool.Exec(ctx, `UPDATE greenswap.migrations SET backfill_done_at = clock_timestamp()`); err != nil {
		t.Fatal(err)
	}
	if ok, _ := LastVerifyPassed(ctx, env.Pool, "o2"); ok {
		t.Fatal("LastVerifyPassed true although the backfill ran after the verify")
	}

	// Damage green: verify fails, says so in the row and the event.
	pgtest.Exec(t, dsn, `SET session_replication_role = replica;
		DELETE FROM gs_o2_green.orders WHERE id = 77; UPDATE gs_o2_green.orders SET note = 'x' WHERE id = 1500`)
	res, err = Verify(ctx, env, "o2", VerifyOptions{ChunkRows: 300})
	if err != nil || res.OK || res.DifferenceCount != 2 {
		t.Fatalf("damaged: %v %+v", err, res)
	}
	if ev := lastEvent(t, env, "o2"); ev.Outcome != "failed" || !strings.Contains(string(ev.Detail), `"77"`) {
		t.Fatalf("event after a failed verify: %+v %s", ev, ev.Detail)
	}
	if ok, _ := LastVerifyPassed(ctx, env.Pool, "o2"); ok {
		t.Fatal("LastVerifyPassed true after a failed verify")
	}
	// Repair; the recorded result is the repaired one.
	res, err = Verify(ctx, env, "o2", VerifyOptions{ChunkRows: 300, Repair: true})
	if err != nil || !res.OK || res.Repair == nil || res.Repair.Keys != 2 {
		t.Fatalf("repair: %v %+v", err, res)
	}
	if ok, _ := LastVerifyPassed(ctx, env.Pool, "o2"); !ok {
		t.Fatal("LastVerifyPassed false after a repairing verify")
	}
	if res, err := Verify(ctx, env, "o2", VerifyOptions{}); err != nil || !res.OK {
		t.Fatalf("after repair: %v %+v", err, res)
	}
}

// TestVerifySyncedAcceptsGreenWrites: once synced, a write through green's
// version schema syncs to blue through the lossy reverse mapping; verify
// must not call that a difference.
func TestVerifySyncedAcceptsGreenWrites(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env, dsn := verifyFixture(t, state.CutOver, true)
	pgtest.Exec(t, dsn, `SET search_path = gs_o2_green; UPDATE orders SET amount = 10.40 WHERE id = 10;
		INSERT INTO orders (id, email, amount) VALUES (5000, 'new', 3.3)`)
	res, err := Verify(ctx, env, "o2", VerifyOptions{})
	if err != nil || !res.OK || res.Accepted != 2 {
		t.Fatalf("cut over with green writes: %v %+v", err, res)
	}
}

func TestVerifyTakesTheLock(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	env, _ := verifyFixture(t, state.Synced, true)
	lock, err := env.Lock(ctx, "o2")
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Release(context.Background())
	if _, err := Verify(ctx, env, "o2", VerifyOptions{}); exitcode.Of(err) != exitcode.Busy {
		t.Fatalf("verify while the lock is held: %v (exit %d), want 4", err, exitcode.Of(err))
	}
}

func lastEvent(t *testing.T, env *Env, name string) state.Event {
	t.Helper()
	evs, err := state.Events(t.Context(), env.Pool, name, 1)
	if err != nil || len(evs) != 1 {
		t.Fatalf("events: %v %v", evs, err)
	}
	return evs[0]
}
