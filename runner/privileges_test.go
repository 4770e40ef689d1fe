package runner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/spec"
)

// Privileges are the same on every shape (issue 10.4): the tests connect as
// real restricted roles, as the application's users would, and try what
// those roles must not be able to do, through each shape, at each moment.

// privRole creates a LOGIN role unique to the test's database, dropped
// when the test ends, and returns its name and a DSN that connects as it.
func privRole(t *testing.T, dsn, prefix string) (string, string) {
	t.Helper()
	role := strings.Replace(testkit.RoleName(t, dsn, prefix), "_gs_test_", "_", 1)
	testkit.CreateRole(t, dsn, role)
	return role, testkit.DSNAs(t, dsn, role)
}

// privErr wants err to be a PostgreSQL error with SQLSTATE code.
func privErr(t *testing.T, what string, err error, code string) {
	t.Helper()
	if got := db.SQLState(err); got != code {
		t.Errorf("%s: %v; want SQLSTATE %s", what, err, code)
	}
}

// privRows is every row of a table as text, read by the test's superuser.
func privRows(t *testing.T, q db.Querier, rel string) string {
	t.Helper()
	return coStr(t, q, `SELECT coalesce(string_agg(r::text, ';' ORDER BY r.id), '') FROM `+rel+` r`)
}

const rlsSchema = `
CREATE TABLE orders (id int PRIMARY KEY, tenant_id int NOT NULL, note text);
INSERT INTO orders SELECT g, g %% 2 + 1, 'n' || g FROM generate_series(1, 40) g;
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON orders USING (tenant_id = current_setting('app.tenant')::int);
GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO %s;
`

// TestPrivilegesRLSOnGreen: a tenant role under a policy on
// current_setting('app.tenant') reads and writes only its own tenant's rows
// through green's version schema once synced, and through the app name
// after cutover, with RLS forced on blue or not: another tenant's rows are
// invisible, UPDATE and DELETE of them affect nothing, an INSERT of one is
// an RLS violation, and neither table changes. (Before, green had no
// policy until cutover: the tenant read every row through green's schema,
// and the reverse trigger, running as the owner, wrote its changes to
// another tenant's rows into blue.)
func TestPrivilegesRLSOnGreen(t *testing.T) {
	t.Parallel()
	if pgtest.ServerMajor(t) < 15 {
		t.Skip("RLS tables are a blocking hazard below PostgreSQL 15 (no security_invoker views)")
	}
	for _, force := range []bool{false, true} {
		t.Run(fmt.Sprintf("force=%v", force), func(t *testing.T) {
			t.Parallel()
			pool, dsn := pgtest.NewPool(t)
			ctx := context.Background()
			role, roleDSN := privRole(t, dsn, "tenant")
			pgtest.Exec(t, dsn, fmt.Sprintf(rlsSchema, db.Ident(role)))
			if force {
				pgtest.Exec(t, dsn, `ALTER TABLE orders FORCE ROW LEVEL SECURITY`)
			}
			env := coEnv(t, dsn)
			spec := coSync(t, env, `
name: rls
table: public.orders
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, tenant_id int NOT NULL, note text)
`)
			if s := coStr(t, pool, `SELECT relrowsecurity::text || ' ' || relforcerowsecurity::text || ' ' ||
					coalesce((SELECT string_agg(polname, ',') FROM pg_policy WHERE polrelid = c.oid), '')
				FROM pg_class c WHERE oid = 'gs_rls_green.orders'::regclass`); s != fmt.Sprintf("true %v tenant_rows", force) {
				t.Errorf("green's row-level security once synced: %s", s)
			}
			attack := func(where, searchPath string) {
				t.Helper()
				blue, green := privRows(t, pool, "gs_rls_blue.orders"), privRows(t, pool, "gs_rls_green.orders")
				c := coConn(t, roleDSN, map[string]string{"search_path": searchPath, "app.tenant": "1"})
				if n := coInt(t, c, `SELECT count(*) FROM orders`); n != 20 {
					t.Errorf("%s: tenant 1 sees %d rows, want its 20", where, n)
				}
				if n := coInt(t, c, `SELECT count(*) FROM orders WHERE tenant_id = 2`); n != 0 {
					t.Errorf("%s: tenant 1 sees %d rows of tenant 2", where, n)
				}
				for _, sql := range []string{
					`UPDATE orders SET note = 'stolen' WHERE tenant_id = 2`,
					`UPDATE orders SET tenant_id = 1 WHERE tenant_id = 2`,
					`DELETE FROM orders WHERE tenant_id = 2`,
				} {
					tag, err := c.Exec(ctx, sql)
					if err != nil || tag.RowsAffected() != 0 {
						t.Errorf("%s: %s: %v rows, %v; want 0 rows", where, sql, tag.RowsAffected(), err)
					}
				}
				_, err := c.Exec(ctx, `INSERT INTO orders (id, tenant_id, note) VALUES (1000, 2, 'planted')`)
				privErr(t, where+": INSERT of another tenant's row", err, "42501")
				_, err = c.Exec(ctx, `UPDATE orders SET tenant_id = 2 WHERE id = 2`) // own row moved to tenant 2
				privErr(t, where+": UPDATE handing a row to another tenant", err, "42501")
				if got := privRows(t, pool, "gs_rls_blue.orders"); got != blue {
					t.Errorf("%s: blue changed", where)
				}
				if got := privRows(t, pool, "gs_rls_green.orders"); got != green {
					t.Errorf("%s: green changed", where)
				}
				// Its own rows it may write, and they reach the other shape.
				coExec(t, c, `UPDATE orders SET note = 'mine' WHERE id = 2`)
				if n := coInt(t, pool, `SELECT count(*) FROM gs_rls_blue.orders b JOIN gs_rls_green.orders g USING (id)
						WHERE id = 2 AND b.note = 'mine' AND g.note = 'mine'`); n != 1 {
					t.Errorf("%s: the tenant's write to its own row did not reach both shapes", where)
				}
			}
			attack("green's version schema, synced", "gs_rls_green")
			attack("blue's version schema, synced", "gs_rls_blue")
			attack("the app name, before cutover", "public")
			if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
				t.Fatal(err)
			}
			attack("the app name, after cutover", "public")
			attack("green's version schema, after cutover", "gs_rls_green")
			if _, err := Finalize(ctx, env, spec.Name, FinalizeOptions{QuietPeriod: -1, Yes: true}); err != nil {
				t.Fatal(err)
			}
			if s := coStr(t, pool, `SELECT relrowsecurity::text || ' ' || relforcerowsecurity::text || ' ' ||
					(SELECT string_agg(polname || ':' || pg_get_expr(polqual, polrelid), ',') FROM pg_policy WHERE polrelid = c.oid)
				FROM pg_class c WHERE oid = 'public.orders'::regclass`); s != fmt.Sprintf("true %v tenant_rows:(tenant_id = (current_setting('app.tenant'::text))::integer)", force) {
				t.Errorf("row-level security after finalize: %s", s)
			}
			c := coConn(t, roleDSN, map[string]string{"app.tenant": "2"})
			if n := coInt(t, c, `SELECT count(*) FROM orders WHERE tenant_id <> 2`); n != 0 {
				t.Errorf("after finalize tenant 2 sees %d rows of others", n)
			}
		})
	}
}

// TestPrivilegesRLSPolicyColumnMissing: a green without a column a policy
// reads (here renamed) is a spec error on target.ddl, found by the plan
// rehearsal sync runs first: exit 2 and nothing changed.
func TestPrivilegesRLSPolicyColumnMissing(t *testing.T) {
	t.Parallel()
	pool, dsn := pgtest.NewPool(t)
	role, _ := privRole(t, dsn, "tenant")
	pgtest.Exec(t, dsn, fmt.Sprintf(rlsSchema, db.Ident(role)))
	env := coEnv(t, dsn)
	sp := syncSpec(t, `
name: rlsm
table: public.orders
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, tenant int NOT NULL, note text)
forward:
  tenant: tenant_id
reverse:
  tenant_id: tenant
`)
	_, err := Sync(context.Background(), env, sp, SyncOptions{})
	var se *spec.SpecError
	if !errors.As(err, &se) || se.Field != "target.ddl" || !containsAll(se.Error(), "tenant_rows", "tenant_id") {
		t.Fatalf("sync with a green lacking the policy's column: %v; want a spec error on target.ddl naming the policy and the column", err)
	}
	if k := coStr(t, pool, `SELECT relkind::text FROM pg_class WHERE oid = 'public.orders'::regclass`); k != "r" {
		t.Errorf("public.orders is %s after the refused sync, want the table", k)
	}
	if n := coInt(t, pool, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'gs\_rlsm\_%'`); n != 0 {
		t.Errorf("%d version schemas exist after the refused sync", n)
	}
}

// TestPrivilegesColumnGrants: a role with only SELECT (id, email) and
// UPDATE (email) keeps exactly those through the app name after adopt,
// through both version schemas once synced, through the app name after
// cutover (the view is created again: the row type changes), after rollback
// and after finalize; it is denied the other columns and INSERT every
// time. Version-schema USAGE goes to it (it holds column privileges) and
// not to a role without privileges on the table. (Before, the view and
// green had no column privileges: the role was denied everything.)
func TestPrivilegesColumnGrants(t *testing.T) {
	t.Parallel()
	pool, dsn := pgtest.NewPool(t)
	ctx := context.Background()
	role, roleDSN := privRole(t, dsn, "colr")
	nobody, _ := privRole(t, dsn, "nopriv")
	pgtest.Exec(t, dsn, `
		CREATE TABLE orders (id int PRIMARY KEY, email text, secret text);
		INSERT INTO orders SELECT g, 'u' || g, 's' || g FROM generate_series(1, 10) g;
		GRANT SELECT (id, email), UPDATE (email) ON orders TO `+db.Ident(role))
	env := coEnv(t, dsn)
	spec := coSync(t, env, `
name: colg
table: public.orders
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text, secret text)
`)
	check := func(where, searchPath string) {
		t.Helper()
		c := coConn(t, roleDSN, map[string]string{"search_path": searchPath})
		var n int64
		if err := c.QueryRow(ctx, `SELECT count(*) FROM (SELECT id, email FROM orders) s`).Scan(&n); err != nil || n != 10 {
			t.Fatalf("%s: SELECT id, email sees %d rows (%v), want 10", where, n, err)
		}
		if tag, err := c.Exec(ctx, `UPDATE orders SET email = email || '.' WHERE id = 3`); err != nil || tag.RowsAffected() != 1 {
			t.Errorf("%s: UPDATE of email: %v, %v", where, tag.RowsAffected(), err)
		}
		_, err := c.Exec(ctx, `SELECT secret FROM orders`)
		privErr(t, where+": SELECT secret", err, "42501")
		_, err = c.Exec(ctx, `UPDATE orders SET secret = 'x' WHERE id = 3`)
		privErr(t, where+": UPDATE of secret", err, "42501")
		_, err = c.Exec(ctx, `INSERT INTO orders (id, email) VALUES (100, 'new')`)
		privErr(t, where+": INSERT", err, "42501")
	}
	usage := func(where string, want bool) {
		t.Helper()
		for _, schema := range []string{"gs_colg_blue", "gs_colg_green"} {
			var r, n bool
			if err := pool.QueryRow(ctx, `SELECT has_schema_privilege($1, $3, 'USAGE'), has_schema_privilege($2, $3, 'USAGE')`,
				role, nobody, schema).Scan(&r, &n); err != nil {
				t.Fatal(err)
			}
			if r != want || n {
				t.Errorf("%s: USAGE on %s: column-privileged role %v (want %v), role without privileges %v (want false)", where, schema, r, want, n)
			}
		}
	}
	check("the app name, after adopt", "public")
	check("blue's version schema", "gs_colg_blue")
	check("green's version schema, synced", "gs_colg_green")
	usage("synced", true)
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
		t.Fatal(err)
	}
	check("the app name, after cutover", "public")
	if _, err := Rollback(ctx, env, spec.Name, SwapCommandOptions{}); err != nil {
		t.Fatal(err)
	}
	check("the app name, after rollback", "public")
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Finalize(ctx, env, spec.Name, FinalizeOptions{QuietPeriod: -1, Yes: true}); err != nil {
		t.Fatal(err)
	}
	check("the table, after finalize", "public")
	if s := coStr(t, pool, `SELECT coalesce(string_agg(attname || '=' || attacl::text, ' ' ORDER BY attnum), '') FROM pg_attribute
			WHERE attrelid = 'public.orders'::regclass AND attnum > 0 AND attacl IS NOT NULL`); !containsAll(s, "id=", "email=") || strings.Contains(s, "secret=") {
		t.Errorf("column privileges after finalize: %s", s)
	}
	// No role got more than it had: the role holds nothing on the table itself.
	if n := coInt(t, pool, `SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a
			WHERE c.oid = 'public.orders'::regclass AND a.grantee = $1::regrole`, role); n != 0 {
		t.Errorf("the role holds %d table-level privileges after finalize", n)
	}
}
