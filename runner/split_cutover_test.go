package runner

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/spec"
)

// syncedSplitUsers is the users split of splitUsersSeed synced, with the
// application's pool (search_path public).
func syncedSplitUsers(ctx context.Context, t *testing.T) (*Env, *pgxpool.Pool, *spec.Spec) {
	t.Helper()
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, splitUsersSeed)
	sp := splitUsersSpec(t)
	env := testEnv(t, dsn)
	app, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(app.Close)
	if _, err := Sync(ctx, env, sp, SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	return env, app, sp
}

// TestSplitCutoverRollbackUnderWriters: ten writers on both shapes (the
// app name, the old shape: before cutover the adopt view over blue, after
// it the view rebuilt from the greens with its INSTEAD OF trigger; and
// every green directly), 40 hot keys shared by all, while the split goes
// cutover → rollback → cutover. After each swap and at the end: each green
// equals blue mapped forward, blue equals the old shape rebuilt from the
// greens, blue and green users equal the ledger (testkit.CheckSplitUsers),
// and the app name (the old-shape view) holds exactly blue's rows (EXCEPT
// both ways). The greens get views of their names in public at cutover,
// gone at rollback. A cutover whose lock budget cannot be met (the app
// name held by another session) fails with exit 5 and changes nothing.
func TestSplitCutoverRollbackUnderWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env, app, _ := syncedSplitUsers(ctx, t)
	viewDef := func() string {
		var d string
		if err := env.Pool.QueryRow(ctx, `SELECT pg_get_viewdef('public.users'::regclass)`).Scan(&d); err != nil {
			t.Fatal(err)
		}
		return d
	}
	adoptDef := viewDef()

	// The lock budget: another session holds the app name.
	blocker, err := app.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := blocker.Exec(ctx, `LOCK TABLE users IN ACCESS SHARE MODE`); err != nil {
		t.Fatal(err)
	}
	_, err = Cutover(ctx, env, "su", CutoverOptions{SkipVerify: true, SwapCommandOptions: SwapCommandOptions{
		Out: io.Discard, LockTimeout: 50 * time.Millisecond, MaxAttempts: 2}})
	blocker.Rollback(ctx)
	if exitcode.Of(err) != exitcode.LockTimeout {
		t.Fatalf("cutover with the app name locked: %v, want exit 5", err)
	}
	if viewDef() != adoptDef {
		t.Fatalf("a cutover that timed out changed the app name: %s", viewDef())
	}
	if row, _ := state.Get(ctx, env.Pool, "su"); row.State != state.Synced {
		t.Fatalf("after the timed-out cutover the state is %s", row.State)
	}

	if rep, err := VerifyMigration(ctx, env, "su", VerifyOptions{}); err != nil || !rep.OK() {
		t.Fatalf("verify of the synced split: %+v, %v", rep, err)
	}
	w := &testkit.SplitWriters{Pool: app, Green: "gs_su_green", Hot: 40}
	w.Greens.Store(true)
	w.Start(10, 7)
	swap := SwapCommandOptions{Out: io.Discard, MaxAttempts: 50}
	greenViews := func() int64 {
		return testkit.Count(t, env.Pool, `SELECT count(*) FROM pg_views WHERE schemaname = 'public' AND viewname IN ('user_profiles', 'user_activity')`)
	}
	for i, step := range []string{"cutover", "rollback", "cutover"} {
		time.Sleep(1500 * time.Millisecond)
		var err error
		if step == "cutover" {
			var res *CutoverResult
			res, err = Cutover(ctx, env, "su", CutoverOptions{SkipVerify: i > 0, SwapCommandOptions: swap})
			if err == nil && len(res.Plan.SplitViews) != 2 {
				t.Errorf("cutover made green views %+v, want user_profiles and user_activity", res.Plan.SplitViews)
			}
		} else {
			_, err = Rollback(ctx, env, "su", swap)
		}
		if err != nil {
			w.Halt(t)
			t.Fatalf("step %d, %s: %v", i+1, step, err)
		}
		want, views := state.CutOver, int64(2)
		if step == "rollback" {
			want, views = state.Synced, 0
			if viewDef() != adoptDef {
				t.Errorf("after rollback the app name reads %s, want the adopt view %s", viewDef(), adoptDef)
			}
		} else if viewDef() == adoptDef {
			t.Errorf("after cutover the app name still reads blue")
		}
		if row, _ := state.Get(ctx, env.Pool, "su"); row.State != want {
			t.Errorf("after %s the state is %s, want %s", step, row.State, want)
		}
		if n := greenViews(); n != views {
			t.Errorf("after %s: %d green views in public, want %d", step, n, views)
		}
	}
	time.Sleep(1500 * time.Millisecond)
	w.Halt(t)
	w.LogKinds(t, 300)
	testkit.CheckSplitUsers(t, app, "su", "after cutover, rollback, cutover under writers")
	const appCols = `SELECT id, email, name, bio, avatar_url, prefs::text, last_seen_at, legacy_col FROM `
	if d := testkit.Diff(t, app, appCols+`public.users`, appCols+`gs_su_blue.users`); d != 0 {
		t.Errorf("the old-shape view and blue differ by %d rows", d)
	}
	if n := testkit.Count(t, app, `SELECT count(*) FROM public.users WHERE legacy_col = 'old'`); n == 0 {
		t.Errorf("the old-shape view lost blue's dropped column")
	}
	// Writes through a green's view reach blue.
	if _, err := app.Exec(ctx, `UPDATE user_profiles SET bio = 'via view' WHERE user_id = 1000`); err != nil {
		t.Fatal(err)
	}
	if n := testkit.Count(t, app, `SELECT count(*) FROM gs_su_blue.users WHERE id = 1000 AND bio = 'via view'`); n != 1 {
		t.Errorf("a write through public.user_profiles did not reach blue")
	}
	// Finalize: the greens become the tables, blue and the version
	// schemas go, the app name is green users. (The checks above read
	// blue: finalize, rightly, refuses while a client did within its quiet
	// period, so they are let age past it.)
	time.Sleep(1200 * time.Millisecond)
	if _, err := Finalize(ctx, env, "su", FinalizeOptions{SwapCommandOptions: swap, QuietPeriod: time.Second,
		SampleEvery: 200 * time.Millisecond, Yes: true}); err != nil {
		t.Fatalf("finalize: %v", err)
	}
	if n := testkit.Count(t, env.Pool, `SELECT count(*) FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
		WHERE s.nspname = 'public' AND c.relkind = 'r' AND c.relname IN ('users', 'user_profiles', 'user_activity')`); n != 3 {
		t.Errorf("after finalize %d of the greens are tables in public, want 3", n)
	}
	if n := testkit.Count(t, env.Pool, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'gs_su_%'`); n != 0 {
		t.Errorf("after finalize %d version schemas are left", n)
	}
	if n := testkit.Count(t, env.Pool, `SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.user_profiles'::regclass AND NOT tgisinternal`); n != 0 {
		t.Errorf("after finalize user_profiles still has %d triggers", n)
	}
	if d := testkit.Diff(t, app, `SELECT id, name FROM ledger`, `SELECT id, name FROM public.users`); d != 0 {
		t.Errorf("after finalize users and the ledger differ by %d rows", d)
	}
	if _, err := app.Exec(ctx, `UPDATE user_profiles SET bio = 'after finalize' WHERE user_id = 1000`); err != nil {
		t.Errorf("a write to a finalized green: %v", err)
	}
}

// TestSplitVerify: verify of a synced split compares each green with blue
// through its forward mapping and where, and the old shape rebuilt from
// the greens with blue, under one snapshot: equal after sync (ok, one
// section per green and one for the rebuild); a green row changed behind
// the triggers' back (session_replication_role = replica) is named in
// that green's section and in the rebuild's, the verdict recorded failed
// so cutover refuses (exit 2).
func TestSplitVerify(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env, app, _ := syncedSplitUsers(ctx, t)
	rep, err := VerifyMigration(ctx, env, "su", VerifyOptions{})
	if err != nil || !rep.OK() {
		t.Fatalf("verify: %+v, %v; want ok", rep, err)
	}
	want := []string{"gs_su_green.users", "gs_su_green.user_profiles", "gs_su_green.user_activity", "old shape rebuilt from the greens"}
	if len(rep.Tables.Tables) != len(want) {
		t.Fatalf("verify sections: %+v, want %v", rep.Tables.Tables, want)
	}
	for i, tv := range rep.Tables.Tables {
		if tv.Table != want[i] {
			t.Errorf("section %d is %s, want %s", i, tv.Table, want[i])
		}
	}
	// 3000 blue rows; user_activity holds the half with last_seen_at.
	if r := rep.Tables.Tables[2]; r.SourceRows != 1500 || r.TargetRows != 1500 {
		t.Errorf("user_activity compared %d blue rows with %d green rows, want 1500 each (its where)", r.SourceRows, r.TargetRows)
	}
	conn, err := app.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `UPDATE gs_su_green.user_profiles SET bio = 'behind the triggers' WHERE user_id = 7`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `RESET session_replication_role`); err != nil {
		t.Fatal(err)
	}
	conn.Release()
	rep, err = VerifyMigration(ctx, env, "su", VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || rep.Tables.DifferenceCount != 2 || len(rep.Tables.Different) != 2 ||
		rep.Tables.Different[0] != "gs_su_green.user_profiles" || rep.Tables.Different[1] != "old shape rebuilt from the greens" {
		t.Fatalf("verify after the change: ok=%v, %d differences in %v; want 2, in user_profiles and the rebuild", rep.OK(), rep.Tables.DifferenceCount, rep.Tables.Different)
	}
	if d := rep.Tables.Tables[1].Differences; len(d) != 1 || d[0].Kind != "different" || d[0].Key[0] != "7" {
		t.Errorf("user_profiles differences: %+v, want key 7 different", d)
	}
	if _, err := Cutover(ctx, env, "su", CutoverOptions{SwapCommandOptions: SwapCommandOptions{Out: io.Discard}}); exitcode.Of(err) != exitcode.BadInput {
		t.Errorf("cutover after a failed verify: %v, want exit 2", err)
	}
}

// TestSplitInboundForeignKey: a foreign key into the table being split is
// a blocking hazard of plan (split_inbound_fk, naming it), and one added to
// blue after sync makes cutover refuse with the app name untouched.
func TestSplitInboundForeignKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, splitUsersSeed+`; CREATE TABLE sessions (id bigint PRIMARY KEY, user_id bigint CONSTRAINT sessions_user_fk REFERENCES users)`)
	sp := splitUsersSpec(t)
	env := testEnv(t, dsn)
	res, err := Plan(ctx, env, sp, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, h := range res.Hazards {
		if h.Code == "split_inbound_fk" && h.Severity == "blocking" && len(h.Objects) == 1 && h.Objects[0] == "sessions_user_fk on public.sessions" {
			found = true
		}
	}
	if !found || res.Blocking == 0 {
		t.Fatalf("plan hazards %+v: want split_inbound_fk blocking, naming sessions_user_fk", res.Hazards)
	}

	env2, app, _ := syncedSplitUsers(ctx, t)
	if rep, err := VerifyMigration(ctx, env2, "su", VerifyOptions{}); err != nil || !rep.OK() {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
	pgtest.Exec(t, app.Config().ConnString(), `CREATE TABLE sessions (id bigint PRIMARY KEY, user_id bigint REFERENCES gs_su_blue.users)`)
	if _, err := Cutover(ctx, env2, "su", CutoverOptions{SwapCommandOptions: SwapCommandOptions{Out: io.Discard}}); exitcode.Of(err) != exitcode.BadInput ||
		!strings.Contains(err.Error(), "sessions_user_id_fkey") {
		t.Fatalf("cutover with a foreign key into blue: %v, want exit 2 naming it", err)
	}
	var def string
	if err := env2.Pool.QueryRow(ctx, `SELECT pg_get_viewdef('public.users'::regclass)`).Scan(&def); err != nil || !strings.Contains(def, "gs_su_blue.users") || strings.Contains(def, "gs_su_green") {
		t.Errorf("after the refused cutover the app name reads %q (%v), want blue", def, err)
	}
}
