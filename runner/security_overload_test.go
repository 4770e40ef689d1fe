package runner

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
)

// overloadAttack is what a role with nothing but CREATE on public (every
// role's default on PostgreSQL ≤ 14) plants there: exact-match overloads of
// built-ins that a query reaches only through an implicit cast or a
// polymorphic signature (findings 01 and 01b). PostgreSQL prefers such an
// exact match in any schema on the path over pg_catalog's candidate, even
// with pg_catalog searched first. Each overload bumps a sequence (nextval
// is not undone by a rollback, so plan's rolled-back rehearsal still
// leaves a trace), tries to make the attacker a superuser, and answers
// like the built-in; hash_record_extended answers a constant, so a verify
// that called it would call every pair of rows equal.
const overloadAttack = `
CREATE SEQUENCE public.pwned_calls;
GRANT USAGE, UPDATE ON SEQUENCE public.pwned_calls TO PUBLIC;
CREATE TABLE public.pwned (fn text, who text, super bool);
GRANT INSERT ON public.pwned TO PUBLIC;
CREATE FUNCTION public.gs_pwn(fn text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_catalog.nextval('public.pwned_calls');
  INSERT INTO public.pwned SELECT fn, current_user, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user;
  BEGIN
    EXECUTE 'ALTER ROLE ' || pg_catalog.quote_ident({attacker}) || ' SUPERUSER';
  EXCEPTION WHEN others THEN NULL;
  END;
END $$;
GRANT EXECUTE ON FUNCTION public.gs_pwn(text) TO PUBLIC;
CREATE FUNCTION public.col_description(oid, smallint) RETURNS text LANGUAGE plpgsql AS $$
  BEGIN PERFORM public.gs_pwn('col_description'); RETURN pg_catalog.col_description($1, $2::int); END $$;
CREATE FUNCTION public.obj_description(oid, text) RETURNS text LANGUAGE plpgsql AS $$
  BEGIN PERFORM public.gs_pwn('obj_description'); RETURN pg_catalog.obj_description($1, $2::name); END $$;
CREATE FUNCTION public.quote_ident(name) RETURNS text LANGUAGE plpgsql AS $$
  BEGIN PERFORM public.gs_pwn('quote_ident'); RETURN pg_catalog.quote_ident($1::text); END $$;
CREATE FUNCTION public.pg_relation_size(oid) RETURNS bigint LANGUAGE plpgsql AS $$
  BEGIN PERFORM public.gs_pwn('pg_relation_size'); RETURN pg_catalog.pg_relation_size($1::regclass); END $$;
CREATE FUNCTION public.hash_record_extended(record, integer) RETURNS bigint LANGUAGE plpgsql AS $$
  BEGIN PERFORM public.gs_pwn('hash_record_extended'); RETURN 0; END $$;
CREATE FUNCTION public.hashtextextended(text, integer) RETURNS bigint LANGUAGE plpgsql AS $$
  BEGIN PERFORM public.gs_pwn('hashtextextended'); RETURN 0; END $$;
CREATE FUNCTION public.width_bucket(bigint, bigint[]) RETURNS integer LANGUAGE plpgsql AS $$
  BEGIN PERFORM public.gs_pwn('width_bucket'); RETURN pg_catalog.width_bucket($1, $2); END $$;
CREATE FUNCTION public.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
  BEGIN PERFORM public.gs_pwn('unnest'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION public.array_remove(integer[], integer) RETURNS integer[] LANGUAGE plpgsql AS $$
  BEGIN PERFORM public.gs_pwn('array_remove'); RETURN pg_catalog.array_remove($1, $2); END $$;
CREATE FUNCTION public.set_config(text, text, boolean) RETURNS text LANGUAGE plpgsql AS $$
  BEGIN PERFORM public.gs_pwn('set_config'); RETURN pg_catalog.set_config($1, $2, $3); END $$;
`

// TestAttackPublicOverloadsNeverRun: a role with CREATE on public plants
// the overloads above; then greenswap runs plan, sync, status, verify
// (on equal and on deliberately divergent data), cutover, rollback and
// status again, with clients writing through the app name in between.
// None of the attacker's functions may run (its sequence was never called,
// its table is empty, it is not superuser) and verify must see the
// divergence. Run as a superuser and as a non-superuser table owner.
func TestAttackPublicOverloadsNeverRun(t *testing.T) {
	t.Parallel()
	t.Run("as superuser", func(t *testing.T) { t.Parallel(); testOverloadAttack(t, false) })
	t.Run("as the owner", func(t *testing.T) { t.Parallel(); testOverloadAttack(t, true) })
}

func testOverloadAttack(t *testing.T, asOwner bool) {
	ctx := context.Background()
	_, dsn := pgtest.NewPool(t)
	gsDSN := dsn
	pgtest.Exec(t, dsn, `CREATE TABLE public.orders (id serial PRIMARY KEY, email text, amount int NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
		INSERT INTO public.orders (email, amount) SELECT 'c' || g || '@x', g FROM generate_series(1, 200) g;
		COMMENT ON TABLE public.orders IS 'orders';
		COMMENT ON COLUMN public.orders.email IS 'who';
		ANALYZE public.orders`)
	if asOwner {
		var owner string
		owner, gsDSN = lpOwner(t, dsn)
		pgtest.Exec(t, dsn, "ALTER TABLE public.orders OWNER TO "+db.Ident(owner))
	}
	attacker, attackerDSN := lpRole(t, dsn, "attacker", "GRANT CREATE ON SCHEMA public TO {role}")
	pgtest.Exec(t, attackerDSN, fmtAttack(attacker))

	name := "ovl"
	spec := parseSpec(t, `
name: `+name+`
table: public.orders
target:
  ddl: |
    CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL, amount numeric(12,2) NOT NULL, created_at timestamptz NOT NULL DEFAULT now())
  indexes:
    - CREATE INDEX orders_created_at_idx ON orders (created_at)
forward:
  email: coalesce(email, 'unknown@invalid')
reverse:
  amount: round(amount)::int
`)
	env := coEnv(t, gsDSN)
	// ranNothing is the oracle, read as the test's superuser: the
	// attacker's sequence never advanced and it holds no new attribute.
	ranNothing := func(after string) {
		t.Helper()
		var called, super bool
		admin := coConn(t, dsn, nil)
		defer admin.Close(ctx)
		if err := admin.QueryRow(ctx, `SELECT s.is_called, r.rolsuper FROM public.pwned_calls s, pg_catalog.pg_roles r WHERE r.rolname = $1`, attacker).Scan(&called, &super); err != nil {
			t.Fatal(err)
		}
		if called || super {
			rows := coStr(t, admin, `SELECT coalesce(pg_catalog.string_agg(fn || ' as ' || who, ', '), '(rolled back)') FROM public.pwned`)
			t.Fatalf("after %s the attacker's overloads ran as greenswap's role: %s (attacker superuser: %v)", after, rows, super)
		}
	}
	write := func(tag string) {
		t.Helper()
		c := coConn(t, gsDSN, nil)
		defer c.Close(ctx)
		coExec(t, c, `INSERT INTO public.orders (email, amount) VALUES ($1, 7)`, tag+"@x")
		coExec(t, c, `UPDATE public.orders SET amount = amount + 1, email = email || '+' WHERE id % 17 = 0`)
		coExec(t, c, `UPDATE public.orders SET id = -id WHERE id = 3`)
		coExec(t, c, `DELETE FROM public.orders WHERE id % 19 = 0`)
	}

	res, err := Plan(ctx, env, spec, PlanOptions{})
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	if res.Blocking != 0 {
		t.Fatalf("plan found blocking hazards: %+v", res.Hazards)
	}
	if hazard(res, "writable_schema_on_path") == nil {
		t.Errorf("plan did not warn that %s can create objects in public", attacker)
	}
	ranNothing("plan")

	st, err := Sync(ctx, env, spec, SyncOptions{})
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	if st.State != state.Synced {
		t.Fatalf("sync ended in %s", st.State)
	}
	ranNothing("sync")
	write("synced")
	ranNothing("writes through the app name")
	if _, err := Status(ctx, env, name); err != nil {
		t.Fatalf("status: %v", err)
	}
	ranNothing("status")
	coVerify(t, env, spec)
	ranNothing("verify")

	// Green diverges from blue without the triggers carrying it over (the
	// sync flag is greenswap's own echo guard): verify must say so.
	c := coConn(t, gsDSN, nil)
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	coExec(t, tx, `SELECT pg_catalog.set_config('greenswap.sync_`+name+`', '0', true)`)
	coExec(t, tx, `UPDATE gs_`+name+`_green.orders SET email = 'DIVERGED', amount = 0 WHERE id = 5`)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	if n := syncCount(t, env.Pool, `SELECT count(*) FROM gs_`+name+`_blue.orders b JOIN gs_`+name+`_green.orders g USING (id) WHERE b.id = 5 AND b.email IS DISTINCT FROM g.email`); n != 1 {
		t.Fatalf("the divergence did not stick: %d rows differ", n)
	}
	vr, err := Verify(ctx, env, name, VerifyOptions{})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if vr.OK || vr.DifferenceCount < 1 {
		t.Fatalf("verify called divergent data equal (OK=%v, %d differences)", vr.OK, vr.DifferenceCount)
	}
	ranNothing("verify on divergent data")
	if _, err := Verify(ctx, env, name, VerifyOptions{Repair: true}); err != nil {
		t.Fatalf("verify --repair: %v", err)
	}
	ranNothing("repair")
	coVerify(t, env, spec)

	if _, err := Cutover(ctx, env, name, CutoverOptions{}); err != nil {
		t.Fatalf("cutover: %v", err)
	}
	ranNothing("cutover")
	write("cut-over")
	ranNothing("writes after cutover")
	if _, err := Rollback(ctx, env, name, SwapCommandOptions{}); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	ranNothing("rollback")
	if _, err := Status(ctx, env, name); err != nil {
		t.Fatalf("status: %v", err)
	}
	ranNothing("status after rollback")
	if n := syncOrdersLikeDiff(t, env, name); n != 0 {
		t.Fatalf("blue and green differ by %d rows after the lifecycle", n)
	}
}

// fmtAttack fills the attacker's own name into overloadAttack.
func fmtAttack(attacker string) string {
	return strings.ReplaceAll(overloadAttack, "{attacker}", db.Literal(attacker))
}

// syncOrdersLikeDiff counts rows that differ between blue mapped by hand
// and green, both ways, for the table of TestAttackPublicOverloadsNeverRun.
func syncOrdersLikeDiff(t *testing.T, env *Env, name string) int64 {
	t.Helper()
	blue := fmt.Sprintf(`SELECT id::bigint, coalesce(email, 'unknown@invalid'), amount::numeric(12,2), created_at FROM gs_%s_blue.orders`, name)
	green := fmt.Sprintf(`SELECT id, email, amount, created_at FROM gs_%s_green.orders`, name)
	return syncCount(t, env.Pool, fmt.Sprintf(`SELECT count(*) FROM ((%s EXCEPT %s) UNION ALL (%s EXCEPT %s)) d`, blue, green, green, blue))
}
