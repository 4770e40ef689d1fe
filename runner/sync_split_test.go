package runner

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/spec"
)

const splitUsersSeed = `
CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL, name text, bio text, avatar_url text,
	prefs jsonb, last_seen_at timestamptz, legacy_col text);
INSERT INTO users (email, name, bio, prefs, last_seen_at, legacy_col)
SELECT 'u' || g || '@x', 'n' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'bio ' || g END, jsonb_build_object('g', g),
       CASE WHEN g % 2 = 0 THEN '2026-01-01'::timestamptz + g * interval '1 minute' END, 'old'
  FROM generate_series(1, 3000) g;
ANALYZE users;
CREATE TABLE ledger (id bigint PRIMARY KEY, name text);
INSERT INTO ledger SELECT id, name FROM users;`

const splitUsersSpecYAML = `name: su
table: public.users
split:
  - table: users
    ddl: CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, name text)
    indexes: ["CREATE INDEX users_email_idx ON users (email)"]
  - table: user_profiles
    ddl: CREATE TABLE user_profiles (user_id bigint PRIMARY KEY REFERENCES users ON UPDATE CASCADE ON DELETE CASCADE, bio text, avatar_url text, prefs jsonb)
    forward: {user_id: id}
  - table: user_activity
    ddl: CREATE TABLE user_activity (user_id bigint PRIMARY KEY REFERENCES users ON UPDATE CASCADE ON DELETE CASCADE, last_seen_at timestamptz NOT NULL)
    forward: {user_id: id}
    where: last_seen_at IS NOT NULL
drop: [legacy_col]
sync: {batch_size: 100, max_batch_size: 200}
`

// TestSyncSplitUnderWriters: greenswap sync takes the users split to
// synced while ten writers work through the app name (the backfill of each
// green races them: trap 1), with the green index built, every green's
// progress recorded and the state synced; then the writers also write the
// greens. At the end each green equals blue mapped forward, blue equals the
// old shape rebuilt from the greens, and blue and green users hold the
// ledger's names (testkit.CheckSplitUsers, SQL by hand).
func TestSyncSplitUnderWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, splitUsersSeed)
	sp := splitUsersSpec(t)
	env := testEnv(t, dsn)
	app, err := pgxpool.New(ctx, dsn) // the application's sessions (greenswap's pin search_path to pg_catalog)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	w := &testkit.SplitWriters{Pool: app, Green: "gs_su_green", Hot: 40}
	w.Start(10, 1)
	time.Sleep(200 * time.Millisecond)
	stats, err := Sync(ctx, env, sp, SyncOptions{})
	if err != nil {
		w.Halt(t)
		t.Fatal(err)
	}
	if stats.State != state.Synced || stats.Batches < 30 {
		t.Errorf("sync ended %s after %d batches, want synced after at least 30 (3 greens, batches of at most 200)", stats.State, stats.Batches)
	}
	w.Greens.Store(true)
	time.Sleep(3 * time.Second)
	w.Halt(t)
	w.LogKinds(t, 300)
	testkit.CheckSplitUsers(t, app, "su", "after sync and the workload")
	row, err := state.Get(ctx, env.Pool, "su")
	if err != nil {
		t.Fatal(err)
	}
	progress, err := row.Tables()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range []string{"gs_su_green.users", "gs_su_green.user_profiles", "gs_su_green.user_activity"} {
		if !progress[g].Done {
			t.Errorf("progress of %s: %+v, want done", g, progress[g])
		}
	}
	if n := testkit.Count(t, env.Pool, `SELECT count(*) FROM pg_indexes WHERE schemaname = 'gs_su_green' AND indexname = 'users_email_idx'`); n != 1 {
		t.Errorf("the green's index was not built")
	}
	// A second sync is a no-op.
	if again, err := Sync(ctx, env, sp, SyncOptions{}); err != nil || !again.AlreadySynced {
		t.Errorf("second sync: %+v, %v; want already synced", again, err)
	}
	// Cutover needs a passing verify; verify of a split compares every
	// green and the rebuilt old shape (TestSplitVerify).
	if _, err := Cutover(ctx, env, "su", CutoverOptions{}); exitcode.Of(err) != exitcode.BadInput {
		t.Errorf("cutover of a split without a verify: %v, want a refusal (exit 2)", err)
	}
	if rep, err := VerifyMigration(ctx, env, "su", VerifyOptions{}); err != nil || !rep.OK() {
		t.Errorf("verify of the synced split: %+v, %v; want ok", rep, err)
	}
	testkit.CheckSplitUsers(t, app, "su", "after verify")
	// Rollback before cutover: one teardown transaction, under writers on
	// the app name (the greens' writers stopped: their tables go), gives
	// the app name its table back with every write (the ledger) and leaves
	// none of the split's objects.
	w2 := &testkit.SplitWriters{Pool: app, Green: "gs_su_green", Hot: 40}
	w2.Start(8, 2)
	time.Sleep(500 * time.Millisecond)
	if _, err := Rollback(ctx, env, "su", SwapCommandOptions{MaxAttempts: 50}); err != nil {
		w2.Halt(t)
		t.Fatalf("rollback of the synced split: %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	w2.Halt(t)
	if n := testkit.Count(t, env.Pool, `SELECT count(*) FROM pg_class WHERE oid = 'public.users'::regclass AND relkind = 'r'`); n != 1 {
		t.Errorf("after rollback public.users is not a table")
	}
	if n := testkit.Count(t, env.Pool, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'gs_su_%'`); n != 0 {
		t.Errorf("after rollback %d version schemas are left", n)
	}
	if n := testkit.Count(t, env.Pool, `SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.users'::regclass AND NOT tgisinternal`); n != 0 {
		t.Errorf("after rollback public.users has %d triggers", n)
	}
	if d := testkit.Diff(t, app, `SELECT id, name FROM ledger`, `SELECT id, name FROM public.users`); d != 0 {
		t.Errorf("after rollback users and the ledger differ by %d rows", d)
	}
	if row, _ := state.Get(ctx, env.Pool, "su"); row.State != state.RolledBack {
		t.Errorf("after rollback the state is %s", row.State)
	}
}

// splitUsersSpec is splitUsersSpecYAML loaded as a spec file would be.
func splitUsersSpec(t *testing.T) *spec.Spec {
	t.Helper()
	p := filepath.Join(t.TempDir(), "su.yaml")
	if err := os.WriteFile(p, []byte(splitUsersSpecYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	sp, err := spec.LoadSpecFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}
