package runner

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/cutover"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/internal/testkit"
)

// cutOverSplitUsers is the users split of splitUsersSeed synced and cut
// over, after setup (roles, grants) ran on the seeded database.
func cutOverSplitUsers(ctx context.Context, t *testing.T, setup func(dsn string)) (*Env, string) {
	t.Helper()
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, splitUsersSeed)
	if setup != nil {
		setup(dsn)
	}
	sp := splitUsersSpec(t)
	env := testEnv(t, dsn)
	if _, err := Sync(ctx, env, sp, SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	if rep, err := VerifyMigration(ctx, env, "su", VerifyOptions{}); err != nil || !rep.OK() {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
	if _, err := Cutover(ctx, env, "su", CutoverOptions{SwapCommandOptions: SwapCommandOptions{Out: io.Discard, MaxAttempts: 50}}); err != nil {
		t.Fatal(err)
	}
	return env, dsn
}

func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// TestSplitFinalizeHeldByBlueWriter: after a split's cutover a client
// writes blue directly (search_path set to blue's schema, so its query
// names no schema) and disconnects, leaving no lock and no session to
// sample: the usage sensor cutover put on blue recorded it, so finalize
// refuses (exit 3, *cutover.UsageError naming the write), nothing
// changed; once the write is older than the quiet period, finalize runs.
func TestSplitFinalizeHeldByBlueWriter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env, dsn := cutOverSplitUsers(ctx, t, nil)
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, `SET search_path = gs_su_blue; UPDATE users SET legacy_col = 'direct' WHERE id = 7`); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	swap := SwapCommandOptions{Out: io.Discard, MaxAttempts: 50}
	_, err = Finalize(ctx, env, "su", FinalizeOptions{SwapCommandOptions: swap, QuietPeriod: 30 * time.Second,
		SampleEvery: 200 * time.Millisecond, Yes: true})
	var ue *cutover.UsageError
	if !errors.As(err, &ue) || exitcode.Of(err) != exitcode.Blocked || !strings.Contains(err.Error(), "write") {
		t.Fatalf("finalize after a direct write to blue: %v, want exit 3 naming the write", err)
	}
	if row, err := state.Get(ctx, env.Pool, "su"); err != nil || row.State != state.CutOver {
		t.Fatalf("after the refused finalize: %+v, %v", row, err)
	}
	if n := testkit.Count(t, env.Pool, `SELECT count(*) FROM gs_su_blue.users WHERE legacy_col = 'direct'`); n != 1 {
		t.Fatalf("blue lost the direct write: %d rows", n)
	}
	time.Sleep(1500 * time.Millisecond)
	if _, err := Finalize(ctx, env, "su", FinalizeOptions{SwapCommandOptions: swap, QuietPeriod: time.Second,
		SampleEvery: 200 * time.Millisecond, Yes: true}); err != nil {
		t.Fatalf("finalize once the write is past the quiet period: %v", err)
	}
	if row, _ := state.Get(ctx, env.Pool, "su"); row.State != state.Finalized {
		t.Errorf("state %s, want finalized", row.State)
	}
}

// TestSplitRLSThroughInvokerViews: row-level security put on a green
// after cutover applies through the app name's old-shape view and the
// green's view (security_invoker): a role sees and writes only the rows
// the policy gives it, while the owner's reads are whole; a write through
// the old-shape view, whose INSTEAD OF trigger writes as the owner, is
// refused (42501) while a green has RLS, and works again without it.
func TestSplitRLSThroughInvokerViews(t *testing.T) {
	t.Parallel()
	if pgtest.ServerMajor(t) < 15 {
		// No security_invoker views before 15: the split's views read as
		// their owner there (documented; cutover refuses RLS on a green).
		t.Skip("security_invoker views need PostgreSQL 15")
	}
	ctx := context.Background()
	var rw string
	env, dsn := cutOverSplitUsers(ctx, t, func(dsn string) {
		rw = testkit.RoleName(t, dsn, "split_tenant")
		testkit.CreateRole(t, dsn, rw, "GRANT SELECT, INSERT, UPDATE, DELETE ON users TO {role}", "GRANT USAGE ON SEQUENCE users_id_seq TO {role}")
	})
	pgtest.Exec(t, dsn, `ALTER TABLE gs_su_green.user_profiles ENABLE ROW LEVEL SECURITY;
		CREATE POLICY low ON gs_su_green.user_profiles USING (user_id <= 100)`)
	c := testkit.ConnectAs(t, dsn, rw)
	count := func(q string) int64 {
		t.Helper()
		var n int64
		if err := c.QueryRow(ctx, q).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	if n := count(`SELECT count(*) FROM public.user_profiles`); n != 100 {
		t.Errorf("the tenant sees %d rows of public.user_profiles, want the policy's 100", n)
	}
	want := testkit.Count(t, env.Pool, `SELECT count(*) FROM gs_su_blue.users WHERE bio IS NOT NULL AND id <= 100`)
	if n := count(`SELECT count(*) FROM public.users WHERE bio IS NOT NULL`); n != want {
		t.Errorf("the tenant sees %d bios through the old-shape view, want the policy's %d", n, want)
	}
	if n := testkit.Count(t, env.Pool, `SELECT count(*) FROM public.user_profiles`); n != 3000 {
		t.Errorf("the owner sees %d rows of public.user_profiles, want 3000", n)
	}
	tag, err := c.Exec(ctx, `UPDATE public.user_profiles SET bio = 'tenant' WHERE user_id IN (50, 500)`)
	if err != nil || tag.RowsAffected() != 1 {
		t.Errorf("the tenant's update through public.user_profiles: %v, %d rows, want 1 (50; 500 is hidden)", err, tag.RowsAffected())
	}
	if n := testkit.Count(t, env.Pool, `SELECT count(*) FROM gs_su_blue.users WHERE bio = 'tenant'`); n != 1 {
		t.Errorf("blue has %d rows of the tenant's update, want 1", n)
	}
	for _, w := range []string{`UPDATE public.users SET name = 'x' WHERE id = 500`, `DELETE FROM public.users WHERE id = 600`,
		`INSERT INTO public.users (email) VALUES ('t@x')`} {
		if _, err := c.Exec(ctx, w); sqlState(err) != "42501" || !strings.Contains(err.Error(), "row-level security") {
			t.Errorf("%s through the old-shape view while a green has RLS: %v, want 42501", w, err)
		}
	}
	if n := testkit.Count(t, env.Pool, `SELECT count(*) FROM gs_su_blue.users WHERE id = 600 OR name = 'x' OR email = 't@x'`); n != 1 {
		t.Errorf("a refused write changed blue: %d rows, want user 600 alone", n)
	}
	pgtest.Exec(t, dsn, `ALTER TABLE gs_su_green.user_profiles DISABLE ROW LEVEL SECURITY`)
	if _, err := c.Exec(ctx, `UPDATE public.users SET name = 'x' WHERE id = 500`); err != nil {
		t.Errorf("a write through the old-shape view without RLS: %v", err)
	}
	// Rollback after cutover, then before it: the sensor cutover put on
	// blue goes with the rest, the table is back.
	swap := SwapCommandOptions{Out: io.Discard, MaxAttempts: 50}
	for i := range 2 {
		if _, err := Rollback(ctx, env, "su", swap); err != nil {
			t.Fatalf("rollback %d: %v", i+1, err)
		}
	}
	if n := testkit.Count(t, env.Pool, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'gs_su_%'`); n != 0 {
		t.Errorf("after rollback before cutover %d version schemas are left", n)
	}
	if n := testkit.Count(t, env.Pool, `SELECT count(*) FROM public.users WHERE name = 'x' AND id = 500 AND bio = 'tenant' IS NOT TRUE`); n != 1 {
		t.Errorf("the table after rollback lacks the writes made through the split: %d", n)
	}
}

// TestSplitViewsReadOnlyRoles: after a split's cutover, roles that may
// only read the table (SELECT alone; with TEMP; with CREATE on the app
// schema) write nothing through any name of the split nor through the
// INSTEAD OF trigger's function (attached to a view of their own, in
// pg_temp or in the app schema): every write is refused (42501), and
// blue and the greens are unchanged.
func TestSplitViewsReadOnlyRoles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var plain, temp, create string
	env, dsn := cutOverSplitUsers(ctx, t, func(dsn string) {
		plain, temp, create = testkit.RoleName(t, dsn, "ro_plain"), testkit.RoleName(t, dsn, "ro_temp"), testkit.RoleName(t, dsn, "ro_create")
		u, _ := pgconn.ParseConfig(dsn)
		dbname := pgx.Identifier{u.Database}.Sanitize()
		pgtest.Exec(t, dsn, "REVOKE TEMP ON DATABASE "+dbname+" FROM PUBLIC")
		testkit.CreateRole(t, dsn, plain, "GRANT SELECT ON users TO {role}")
		testkit.CreateRole(t, dsn, temp, "GRANT SELECT ON users TO {role}", "GRANT TEMP ON DATABASE "+dbname+" TO {role}")
		testkit.CreateRole(t, dsn, create, "GRANT SELECT ON users TO {role}", "GRANT CREATE ON SCHEMA public TO {role}")
	})
	snapshot := func() string {
		var s string
		if err := env.Pool.QueryRow(ctx, `SELECT md5(string_agg(t, '|' ORDER BY t)) FROM (
			SELECT 'b' || u::text AS t FROM gs_su_blue.users u UNION ALL SELECT 'u' || g::text FROM gs_su_green.users g
			UNION ALL SELECT 'p' || p::text FROM gs_su_green.user_profiles p UNION ALL SELECT 'a' || a::text FROM gs_su_green.user_activity a) s`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := snapshot()
	writes := []string{
		`INSERT INTO public.users (email) VALUES ('ro@x')`, `UPDATE public.users SET name = 'ro'`, `DELETE FROM public.users`,
		`UPDATE public.user_profiles SET bio = 'ro'`, `DELETE FROM public.user_activity`,
		`UPDATE gs_su_green.users SET name = 'ro'`, `UPDATE gs_su_blue.users SET name = 'ro'`, `TRUNCATE gs_su_green.user_profiles`,
		`CREATE TRIGGER gs_sync_su_view INSTEAD OF UPDATE ON public.users FOR EACH ROW EXECUTE FUNCTION gs_su_green.gs_forward_view()`,
		`SELECT gs_su_green.gs_forward_view()`,
	}
	for _, role := range []string{plain, temp, create} {
		c := testkit.ConnectAs(t, dsn, role)
		var n int64
		if err := c.QueryRow(ctx, `SELECT count(*) FROM public.users`).Scan(&n); err != nil || n != 3000 {
			t.Errorf("%s reading the app name: %d, %v", role, n, err)
		}
		own := writes
		switch role {
		case temp:
			own = append(own, `CREATE TEMP TABLE v (LIKE public.users); CREATE TEMP VIEW users AS SELECT * FROM v;
				CREATE TRIGGER gs_sync_su_view INSTEAD OF INSERT OR UPDATE OR DELETE ON pg_temp.users FOR EACH ROW EXECUTE FUNCTION gs_su_green.gs_forward_view()`)
		case create:
			own = append(own, `CREATE TABLE public.ro_v (LIKE public.users); CREATE VIEW public.ro_users AS SELECT * FROM public.ro_v;
				CREATE TRIGGER gs_sync_su_view INSTEAD OF INSERT OR UPDATE OR DELETE ON public.ro_users FOR EACH ROW EXECUTE FUNCTION gs_su_green.gs_forward_view()`)
		}
		for _, w := range own {
			if _, err := c.Exec(ctx, w); sqlState(err) != "42501" {
				t.Errorf("%s: %s: %v, want 42501", role, w, err)
			}
		}
	}
	if snapshot() != before {
		t.Fatal("a read-only role changed blue or a green")
	}
}

// TestSplitFinalizeIdentityKey: a split of a table whose key is an
// identity column: blue's identity sequence goes with blue at finalize, so
// a new sequence in the app schema continues it, owned by the key of the
// green named like the table (pg_get_serial_sequence answers) and the
// default of every root's key; an insert through the app name afterwards
// gets an id past every one there.
func TestSplitFinalizeIdentityKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, `CREATE TABLE users (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, email text NOT NULL, name text, bio text, avatar_url text,
		prefs jsonb, last_seen_at timestamptz, legacy_col text);
	INSERT INTO users (email, bio) SELECT 'u' || g || '@x', 'bio ' || g FROM generate_series(1, 500) g;
	SELECT setval(pg_get_serial_sequence('users', 'id'), 900)`)
	sp := splitUsersSpec(t)
	env := testEnv(t, dsn)
	if _, err := Sync(ctx, env, sp, SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	swap := SwapCommandOptions{Out: io.Discard, MaxAttempts: 50}
	if _, err := Cutover(ctx, env, "su", CutoverOptions{SwapCommandOptions: swap, SkipVerify: true}); err != nil {
		t.Fatal(err)
	}
	var viaView int64
	if err := env.Pool.QueryRow(ctx, `INSERT INTO public.users (email) VALUES ('view@x') RETURNING id`).Scan(&viaView); err != nil || viaView != 901 {
		t.Fatalf("insert through the old-shape view: id %d, %v; want 901 from blue's identity", viaView, err)
	}
	time.Sleep(1200 * time.Millisecond)
	if _, err := Finalize(ctx, env, "su", FinalizeOptions{SwapCommandOptions: swap, QuietPeriod: time.Second,
		SampleEvery: 200 * time.Millisecond, Yes: true}); err != nil {
		t.Fatalf("finalize: %v", err)
	}
	var seq *string
	if err := env.Pool.QueryRow(ctx, `SELECT pg_get_serial_sequence('public.users', 'id')`).Scan(&seq); err != nil || seq == nil || *seq != "public.users_id_seq" {
		t.Errorf("after finalize pg_get_serial_sequence('public.users', 'id') = %v, %v; want public.users_id_seq", seq, err)
	}
	var id int64
	if err := env.Pool.QueryRow(ctx, `INSERT INTO public.users (email) VALUES ('after@x') RETURNING id`).Scan(&id); err != nil || id != 902 {
		t.Errorf("insert after finalize: id %d, %v; want 902, continuing blue's identity", id, err)
	}
}

// TestSplitFinalizeAllOrNothing: a finalize of a split that fails at its
// last statements (an object of someone else's in blue's schema stops
// DROP SCHEMA … RESTRICT) changes nothing: still cut over, the app name
// the old-shape view, blue and the greens where they were with their
// triggers, the greens' views there; once the object is gone it runs.
func TestSplitFinalizeAllOrNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env, dsn := cutOverSplitUsers(ctx, t, nil)
	catalog := func() string {
		var s string
		if err := env.Pool.QueryRow(ctx, `SELECT md5(string_agg(x, '|' ORDER BY x)) FROM (
			SELECT n.nspname || '.' || c.relname || ':' || c.relkind::text AS x FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			 WHERE n.nspname IN ('public', 'gs_su_blue', 'gs_su_green')
			UNION ALL SELECT tgrelid::regclass::text || ':' || tgname FROM pg_trigger WHERE NOT tgisinternal
			UNION ALL SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace IN ('gs_su_blue'::regnamespace, 'gs_su_green'::regnamespace)
			UNION ALL SELECT c.oid::regclass::text || '.' || a.attname || '=' || pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
			  JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum JOIN pg_class c ON c.oid = d.adrelid) s`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	pgtest.Exec(t, dsn, `CREATE TABLE gs_su_blue.stray (x int)`)
	before := catalog()
	time.Sleep(1200 * time.Millisecond)
	swap := SwapCommandOptions{Out: io.Discard, MaxAttempts: 50}
	opts := FinalizeOptions{SwapCommandOptions: swap, QuietPeriod: time.Second, SampleEvery: 200 * time.Millisecond, Yes: true}
	if _, err := Finalize(ctx, env, "su", opts); err == nil || !strings.Contains(err.Error(), "DROP SCHEMA") {
		t.Fatalf("finalize with a stray table in blue's schema: %v, want the DROP SCHEMA's failure", err)
	}
	if after := catalog(); after != before {
		t.Errorf("the failed finalize changed the catalog")
	}
	if row, _ := state.Get(ctx, env.Pool, "su"); row.State != state.CutOver {
		t.Errorf("after the failed finalize the state is %s", row.State)
	}
	if n := testkit.Count(t, env.Pool, `SELECT count(*) FROM public.users WHERE bio IS NOT NULL`); n == 0 {
		t.Errorf("the old-shape view lost its columns")
	}
	pgtest.Exec(t, dsn, `DROP TABLE gs_su_blue.stray`)
	time.Sleep(1200 * time.Millisecond)
	if _, err := Finalize(ctx, env, "su", opts); err != nil {
		t.Fatalf("finalize once the stray table is gone: %v", err)
	}
}
