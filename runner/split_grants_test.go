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

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
)

var tablePrivileges = []string{"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"}

// privilegesOf is the table privileges role holds on rel, as
// has_table_privilege sees them.
func privilegesOf(ctx context.Context, t *testing.T, q pgx.Tx, role, rel string) string {
	t.Helper()
	var have []string
	for _, p := range tablePrivileges {
		var ok bool
		if err := q.QueryRow(ctx, `SELECT pg_catalog.has_table_privilege($1, $2, $3)`, role, rel, p).Scan(&ok); err != nil {
			t.Fatalf("has_table_privilege(%s, %s, %s): %v", role, rel, p, err)
		}
		if ok {
			have = append(have, p)
		}
	}
	return strings.Join(have, ",")
}

// splitRoleCase is an app role and what it may do to the split's names.
type splitRoleCase struct {
	role  string
	privs string // what it had on public.users before sync
	write bool
}

// checkSplitRoles asserts that each role holds exactly the privileges it
// had on the table, on every name (rels), and that its reads work and
// its writes work or fail with 42501 as those privileges say.
func checkSplitRoles(ctx context.Context, t *testing.T, dsn string, roles []splitRoleCase, rels []string, when string) {
	t.Helper()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	tx, err := admin.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range roles {
		for _, rel := range rels {
			if got := privilegesOf(ctx, t, tx, r.role, rel); got != r.privs {
				t.Errorf("%s: %s holds %q on %s, want exactly %q (what it had on the table)", when, r.role, got, rel, r.privs)
			}
		}
	}
	tx.Rollback(ctx)
	for _, r := range roles {
		c := testkit.ConnectAs(t, dsn, r.role)
		for _, rel := range rels {
			var n int64
			if err := c.QueryRow(ctx, `SELECT count(*) FROM `+rel).Scan(&n); err != nil || n == 0 {
				t.Errorf("%s: %s reading %s: %d rows, %v", when, r.role, rel, n, err)
			}
		}
		// A write through the app name and through a green's name, each
		// in a transaction rolled back (the oracle is the ledger's).
		writes := []string{
			`INSERT INTO public.users (email, name) VALUES ('role@x', 'role') RETURNING id`,
			`UPDATE public.users SET name = name WHERE id = (SELECT min(id) FROM public.users) RETURNING id`,
			`UPDATE public.user_profiles SET bio = bio WHERE user_id = (SELECT min(user_id) FROM public.user_profiles) RETURNING user_id`,
			`DELETE FROM public.users WHERE id = (SELECT max(id) FROM public.users) RETURNING id`,
		}
		for _, w := range writes {
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var id *int64
			err = tx.QueryRow(ctx, w).Scan(&id)
			tx.Rollback(ctx)
			var pe *pgconn.PgError
			switch {
			case r.write && (err != nil || id == nil):
				t.Errorf("%s: %s: %s: id %v, %v", when, r.role, w, id, err)
			case !r.write && !(errors.As(err, &pe) && pe.Code == "42501"):
				t.Errorf("%s: %s may not write, yet %s: id %v, err %v (want 42501)", when, r.role, w, id, err)
			}
		}
	}
}

// TestSplitGrantsCarried: a table with grants to app roles (one with
// SELECT only, one with SELECT, INSERT, UPDATE, DELETE and the sequence)
// splits: sync gives every green blue's grants, so verify and cutover see
// no privilege drift; each role holds exactly what it had, no more, on the
// app name, the greens' views after cutover and the greens after finalize,
// the reader can only read and the writer's inserts through the app name
// get ids from blue's sequence.
func TestSplitGrantsCarried(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, splitUsersSeed)
	ro, rw := testkit.RoleName(t, dsn, "split_ro"), testkit.RoleName(t, dsn, "split_rw")
	testkit.CreateRole(t, dsn, ro, "GRANT SELECT ON users TO {role}")
	testkit.CreateRole(t, dsn, rw, "GRANT SELECT, INSERT, UPDATE, DELETE ON users TO {role}", "GRANT USAGE ON SEQUENCE users_id_seq TO {role}")
	roles := []splitRoleCase{{role: ro, privs: "SELECT"}, {role: rw, privs: "SELECT,INSERT,UPDATE,DELETE", write: true}}
	sp := splitUsersSpec(t)
	env := testEnv(t, dsn)
	if _, err := Sync(ctx, env, sp, SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	greens := []string{"gs_su_green.users", "gs_su_green.user_profiles", "gs_su_green.user_activity"}
	for _, g := range greens {
		for _, r := range roles {
			if got := privilegesOf(ctx, t, mustBegin(ctx, t, env), r.role, g); got != r.privs {
				t.Errorf("after sync %s holds %q on %s, want %q", r.role, got, g, r.privs)
			}
		}
	}
	if rep, err := VerifyMigration(ctx, env, "su", VerifyOptions{}); err != nil || !rep.OK() {
		t.Fatalf("verify of a split with grants: %+v, %v", rep, err)
	}
	// A new-shape client inserts without a key, before cutover and after:
	// the root green draws from blue's sequence (break11 split 02: it had
	// no default until finalize), and the row reaches blue under that id.
	newShape := func(when string) {
		t.Helper()
		c := testkit.ConnectAs(t, dsn, rw)
		var id int64
		if _, err := c.Exec(ctx, `SET search_path TO gs_su_green, public`); err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRow(ctx, `INSERT INTO users (email, name) VALUES ('new@x', $1) RETURNING id`, when).Scan(&id); err != nil {
			t.Fatalf("%s: a new-shape insert without a key: %v", when, err)
		}
		if n := testkit.Count(t, env.Pool, `SELECT count(*) FROM gs_su_blue.users WHERE id = $1 AND name = $2`, id, when); n != 1 || id <= 3000 {
			t.Fatalf("%s: the new-shape insert got id %d; blue has %d rows of it", when, id, n)
		}
	}
	newShape("before cutover")
	swap := SwapCommandOptions{Out: io.Discard, MaxAttempts: 50}
	if _, err := Cutover(ctx, env, "su", CutoverOptions{SwapCommandOptions: swap}); err != nil {
		t.Fatalf("cutover of a split with grants: %v", err)
	}
	newShape("after cutover")
	names := []string{"public.users", "public.user_profiles", "public.user_activity"}
	checkSplitRoles(ctx, t, dsn, roles, append(names, greens...), "after cutover")
	if _, err := Rollback(ctx, env, "su", swap); err != nil {
		t.Fatal(err)
	}
	if _, err := Cutover(ctx, env, "su", CutoverOptions{SwapCommandOptions: swap, SkipVerify: true}); err != nil {
		t.Fatal(err)
	}
	checkSplitRoles(ctx, t, dsn, roles, append(names, greens...), "after cutover, rollback, cutover")
	time.Sleep(1200 * time.Millisecond) // the checks read the greens' schema; let the quiet period start after them
	if _, err := Finalize(ctx, env, "su", FinalizeOptions{SwapCommandOptions: swap, QuietPeriod: time.Second,
		SampleEvery: 200 * time.Millisecond, Yes: true}); err != nil {
		t.Fatalf("finalize: %v", err)
	}
	checkSplitRoles(ctx, t, dsn, roles, names, "after finalize")
	var seq *string
	if err := env.Pool.QueryRow(ctx, `SELECT pg_get_serial_sequence('public.users', 'id')`).Scan(&seq); err != nil || seq == nil || *seq != "public.users_id_seq" {
		t.Errorf("after finalize pg_get_serial_sequence('public.users', 'id') = %v, %v; want public.users_id_seq", seq, err)
	}
	for _, rel := range names {
		var kind string
		if err := env.Pool.QueryRow(ctx, `SELECT relkind::text FROM pg_class WHERE oid = $1::regclass`, rel).Scan(&kind); err != nil || kind != "r" {
			t.Errorf("after finalize %s is %q, %v; want a table", rel, kind, err)
		}
	}
}

func mustBegin(ctx context.Context, t *testing.T, env *Env) pgx.Tx {
	t.Helper()
	tx, err := env.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback(context.Background()) })
	return tx
}
