package runner

import (
	"context"
	"testing"

	"github.com/greenswap/greenswap/internal/pgtest"
)

// TestAttackPlantedKeyOperatorNeverRuns (break11 trigger finding 5): a role
// with CREATE on public plants =(varchar, varchar) — an exact match for a
// varchar key, which PostgreSQL prefers to pg_catalog's text operator
// reached through a cast, whatever the search_path's order. The sync
// functions run as the table owner and compare keys on every key-keeping
// UPDATE, DELETE and key move: they name pg_catalog's operator, so the
// planted one never runs from them: writes through the app name and both
// version schemas, cutover and rollback add no call. (sync's own
// statements still reach it: a known defect, README.) The app's own statements
// compare as text so that only greenswap could reach the operator.
func TestAttackPlantedKeyOperatorNeverRuns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE TABLE public.codes (code varchar(12) PRIMARY KEY, v int NOT NULL, note text);
		INSERT INTO public.codes SELECT 'c' || g, g, 'n' || g FROM generate_series(1, 300) g;`)
	attacker, attackerDSN := lpRole(t, dsn, "opattacker", "GRANT CREATE ON SCHEMA public TO {role}")
	pgtest.Exec(t, attackerDSN, fmtAttack(attacker)+`
CREATE FUNCTION public.vc_eq(varchar, varchar) RETURNS boolean LANGUAGE plpgsql AS $$
  BEGIN PERFORM public.gs_pwn('varchar ='); RETURN $1::text OPERATOR(pg_catalog.=) $2::text; END $$;
CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.vc_eq);`)
	env := coEnv(t, dsn)
	if _, err := Sync(ctx, env, parseSpec(t, `
name: op
table: public.codes
target:
  ddl: |
    CREATE TABLE codes (code varchar(12) PRIMARY KEY, v bigint NOT NULL, note text)
`), SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	// sync's own statements still reach the operator (a known defect,
	// README): the oracle is that no write through any shape adds a call.
	calls := func() string {
		admin := coConn(t, dsn, nil)
		defer admin.Close(ctx)
		return coStr(t, admin, `SELECT last_value::text || '/' || is_called::text FROM public.pwned_calls`)
	}
	base := calls()
	ranNothing := func(after string) {
		t.Helper()
		if now := calls(); now != base {
			t.Fatalf("after %s the planted operator ran (calls %s, %s after sync)", after, now, base)
		}
	}
	write := func(schema, tag string) {
		t.Helper()
		params := map[string]string{}
		if schema != "" {
			params["search_path"] = schema
		}
		c := coConn(t, dsn, params)
		defer c.Close(ctx)
		coExec(t, c, `INSERT INTO codes (code, v) VALUES ($1, 1)`, tag)
		coExec(t, c, `UPDATE codes SET v = v + 1 WHERE code::text OPERATOR(pg_catalog.=) ANY (ARRAY['c5', 'c6', $1])`, tag)
		coExec(t, c, `UPDATE codes SET code = $1 || 'x' WHERE code::text OPERATOR(pg_catalog.=) $1`, tag)
		coExec(t, c, `DELETE FROM codes WHERE code::text OPERATOR(pg_catalog.=) $1`, tag+"x")
	}
	write("", "app1")
	ranNothing("writes through the app name")
	write("gs_op_blue", "blue1")
	ranNothing("writes through blue")
	write("gs_op_green", "green1")
	ranNothing("writes through green")
	if _, err := Cutover(ctx, env, "op", CutoverOptions{SkipVerify: true}); err != nil {
		t.Fatal(err)
	}
	write("", "app2")
	write("gs_op_blue", "blue2")
	if _, err := Rollback(ctx, env, "op", SwapCommandOptions{}); err != nil {
		t.Fatal(err)
	}
	write("", "app3")
	ranNothing("cutover, rollback and writes")
	if d := syncCount(t, env.Pool, `SELECT count(*) FROM (
		(SELECT code::text, v::bigint, note FROM gs_op_blue.codes EXCEPT SELECT code::text, v, note FROM gs_op_green.codes) UNION ALL
		(SELECT code::text, v, note FROM gs_op_green.codes EXCEPT SELECT code::text, v::bigint, note FROM gs_op_blue.codes)) d`); d != 0 {
		t.Fatalf("%d rows differ between blue and green", d)
	}
}
