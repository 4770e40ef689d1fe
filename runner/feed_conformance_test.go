package runner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/spec"
)

// TestFeedConformance runs one lifecycle against each change feed (feed.go):
// sync with clients writing through the app name → verify while clients
// write through the app name and both version schemas → cutover → rollback
// → cutover → finalize, the clients writing throughout. Two oracles that
// share no code with greenswap judge it: the ledger every client appends
// to in the transaction of each write (cutover_workload_test.go's
// workloadRun), compared with every shape under one snapshot, and a full
// EXCEPT diff of blue against green through the mapping written out by
// hand (value widened, a generated column doubled). Each feed must also
// leave no slot behind and record every phase's event as ok.
func TestFeedConformance(t *testing.T) {
	t.Parallel()
	forEachFeed(t, feedConformance)
}

// conformanceSync syncs sp with batches of 200 rows (at least minBatches)
// and checks the feed's figures are there exactly in logical mode, whose
// stream then goes on as `sync --watch` until the test ends or a cutover
// retires it.
func conformanceSync(t *testing.T, env *Env, sp *spec.Spec, mode spec.Mode, minBatches int) *SyncStats {
	t.Helper()
	st, err := Sync(context.Background(), env, sp, SyncOptions{BatchSize: 200})
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	if st.State != state.Synced || st.Batches < minBatches {
		t.Fatalf("sync stats %+v", st)
	}
	if (st.Stream != nil) != (mode == spec.ModeLogical) {
		t.Fatalf("%s feed: stream figures %+v", mode, st.Stream)
	}
	if mode == spec.ModeLogical {
		startWatch(t, env, sp.Name) // stopped at the test's cleanup
	}
	return st
}

// forEachFeed runs conformance against each change feed, as parallel
// subtests named by the mode.
func forEachFeed(t *testing.T, conformance func(*testing.T, spec.Mode)) {
	for _, mode := range []spec.Mode{spec.ModeTrigger, spec.ModeLogical} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			conformance(t, mode)
		})
	}
}

func feedConformance(t *testing.T, mode spec.Mode) {
	ctx := context.Background()
	name := logicalName("cf")
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, wlSchema)
	env := coEnv(t, dsn)
	w := &workloadRun{t: t, dsn: dsn, stops: map[*wlClient]context.CancelFunc{}}
	defer func() {
		for _, c := range w.clients {
			w.stop(c)
		}
		w.wg.Wait()
	}()
	simple, prepared := pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement
	prefix := "gs_" + name
	blueT, greenT := prefix+"_blue.accounts", prefix+"_green.accounts"

	ledger := func(phase string, tables map[string]string) {
		t.Helper()
		for k, d := range ledgerDiff(t, dsn, tables) {
			if d != 0 {
				t.Errorf("%s: %s differs from the ledger in %d rows", phase, k, d)
			}
		}
	}
	shapes := func(phase string) {
		t.Helper()
		ledger(phase, map[string]string{
			"app":   `SELECT id, value::bigint FROM public.accounts`,
			"blue":  `SELECT id, value::bigint FROM ` + blueT,
			"green": `SELECT id, value FROM ` + greenT,
		})
		// Blue mapped forward by hand: value widened, doubled generated.
		mapped := `SELECT id, value::bigint, value::bigint * 2, note FROM ` + blueT
		green := `SELECT id, value, doubled, note FROM ` + greenT
		if n := coInt(t, pool, fmt.Sprintf(`SELECT count(*) FROM ((%s EXCEPT %s) UNION ALL (%s EXCEPT %s)) d`, mapped, green, green, mapped)); n != 0 {
			t.Errorf("%s: blue mapped forward and green differ in %d rows", phase, n)
		}
	}
	run := func() { time.Sleep(400 * time.Millisecond) }

	// Sync with clients writing through the app name from before adopt.
	appS := w.start("app-simple", "app", simple, "")
	appP := w.start("app-prepared", "app", prepared, "")
	run()
	sp := syncSpec(t, fmt.Sprintf(`
name: %s
table: public.accounts
mode: %s
target:
  ddl: |
    CREATE TABLE accounts (id bigint PRIMARY KEY, value bigint NOT NULL CHECK (value >= 0), note text,
                           doubled bigint GENERATED ALWAYS AS (value * 2) STORED)
  indexes:
    - CREATE INDEX ON accounts (value)
`, name, mode))
	conformanceSync(t, env, sp, mode, 10)
	// Writes from every side while synced; verify settles whatever feed.
	clients := []*wlClient{appS, appP,
		w.start("blue-simple", "blue", simple, prefix), w.start("blue-prepared", "blue", prepared, prefix),
		w.start("green-simple", "green", simple, prefix), w.start("green-prepared", "green", prepared, prefix)}
	blueS, blueP := clients[2], clients[3]
	run()
	ledger("synced", map[string]string{"app": `SELECT id, value::bigint FROM public.accounts`, "blue": `SELECT id, value::bigint FROM ` + blueT})
	coVerify(t, env, sp)

	out := &coBuffer{}
	opts := SwapCommandOptions{Out: out, LockTimeout: 500 * time.Millisecond, MaxAttempts: 40}
	if _, err := Cutover(ctx, env, name, CutoverOptions{SwapCommandOptions: opts}); err != nil {
		t.Fatalf("cutover: %v\n%s", err, out)
	}
	run()
	shapes("cut over") // both directions run by trigger from the handover on
	if _, err := Rollback(ctx, env, name, opts); err != nil {
		t.Fatalf("rollback: %v\n%s", err, out)
	}
	run()
	shapes("rolled back")
	if _, err := Cutover(ctx, env, name, CutoverOptions{SwapCommandOptions: opts}); err != nil {
		t.Fatalf("cutover again: %v\n%s", err, out)
	}
	run()
	shapes("cut over again")
	w.stop(blueS)
	w.stop(blueP)
	time.Sleep(1200 * time.Millisecond)
	if _, err := Finalize(ctx, env, name, FinalizeOptions{SwapCommandOptions: opts, QuietPeriod: time.Second,
		SampleEvery: 100 * time.Millisecond, Yes: true}); err != nil {
		t.Fatalf("finalize: %v\n%s", err, out)
	}
	run()
	for _, c := range w.clients {
		w.stop(c)
	}
	w.wg.Wait()
	ledger("finalized", map[string]string{"app": `SELECT id, value FROM public.accounts`})
	if n := coInt(t, pool, `SELECT count(*) FROM public.accounts WHERE doubled IS DISTINCT FROM value * 2`); n != 0 {
		t.Errorf("finalized: %d rows with a wrong generated column", n)
	}

	// The feed left nothing behind and each phase says ok.
	if slotExists(t, env, "gs_"+name) || publicationExists(t, env, "gs_"+name) {
		t.Errorf("%s feed: the slot or publication outlived the migration", mode)
	}
	steps := map[string]int64{"adopt": 1, "create-green": 1, "backfill": 1, "build-index": 1, "settle": 1, "analyze": 1, "synced": 1,
		"verify": 1, "cutover": 2, "rollback": 1, "finalize": 1}
	if mode == spec.ModeLogical {
		steps["create-slot"], steps["stream"], steps["retire-stream"] = 1, 1, 2 // the second cutover finds it retired
	}
	for step, want := range steps {
		if n := coInt(t, pool, `SELECT count(*) FROM greenswap.events WHERE migration = $1 AND step = $2 AND outcome = 'ok'`, name, step); n != want {
			t.Errorf("%s feed: %d ok events of %s, want %d", mode, n, step, want)
		}
	}
	if n := coInt(t, pool, `SELECT count(*) FROM greenswap.events WHERE migration = $1 AND outcome NOT IN ('ok')`, name); n != 0 {
		t.Errorf("%s feed: %d events that are not ok", mode, n)
	}
	m, err := state.Get(ctx, pool, name)
	if err != nil {
		t.Fatal(err)
	}
	if built, err := m.BuiltIndexes(); err != nil || len(built) != 1 || built[0] == "" {
		t.Errorf("indexes built in the state: %v, %v", built, err)
	}

	// Only the documented error: prepared statements on the app name,
	// whose row type changes at each swap (trap 6).
	for _, c := range clients {
		t.Logf("%s: %d transactions, max latency %s, %d errors", c.name, c.ops, c.maxLat.Round(time.Millisecond), len(c.errs))
		if c.ops < 20 {
			t.Errorf("%s ran only %d transactions", c.name, c.ops)
		}
		for _, err := range c.errs {
			var pe *pgconn.PgError
			if c == appP && errors.As(err, &pe) && pe.Code == "0A000" && strings.Contains(pe.Message, "cached plan must not change result type") {
				continue
			}
			t.Errorf("%s: %v", c.name, err)
		}
	}
}
