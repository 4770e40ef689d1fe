package runner

import (
	"context"
	"testing"

	"github.com/greenswap/greenswap/internal/pgtest"
)

// TestAttackPlantedKeyOperatorNeverRuns (break11 trigger finding 5): a role
// with CREATE on public plants =, <>, <, <=, >, >= for (varchar, varchar) —
// exact matches for a varchar key, which PostgreSQL prefers to pg_catalog's
// text operators reached through a cast, whatever the search_path's order.
// greenswap's sessions (the copy's key ranges and its parallel split, the
// stream's apply, verify's chunks and join) and the sync functions, which
// run as the table owner, name pg_catalog's operators, so the planted ones
// never run: sync in either mode, verify, writes through the app name and
// both version schemas, cutover and rollback add no call. The app's own
// statements compare as text so that only greenswap could reach them.
func TestAttackPlantedKeyOperatorNeverRuns(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"trigger", "logical"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			plantedOperatorLifecycle(t, mode)
		})
	}
}

func plantedOperatorLifecycle(t *testing.T, mode string) {
	ctx := context.Background()
	_, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE TABLE public.codes (code varchar(12) PRIMARY KEY, v int NOT NULL, note text, tag varchar(20));
		INSERT INTO public.codes SELECT 'c' || g, g, 'n' || g, 't' || g FROM generate_series(1, 30000) g;
		ANALYZE public.codes;`)
	attacker, attackerDSN := lpRole(t, dsn, "opattacker", "GRANT CREATE ON SCHEMA public TO {role}")
	// Each call also records the statement it ran in, for the failure
	// message.
	plant := fmtAttack(attacker) + `
CREATE TABLE public.op_queries (q text);
GRANT INSERT ON public.op_queries TO PUBLIC;`
	for k, op := range map[string]string{"eq": "=", "ne": "<>", "lt": "<", "le": "<=", "gt": ">", "ge": ">="} {
		plant += `
CREATE FUNCTION public.vc_` + k + `(varchar, varchar) RETURNS boolean LANGUAGE plpgsql AS $$
  BEGIN PERFORM public.gs_pwn('varchar ` + op + `'); INSERT INTO public.op_queries VALUES (pg_catalog.current_query()); RAISE LOG 'gs_op_call %', pg_catalog.current_query(); RETURN $1::text OPERATOR(pg_catalog.` + op + `) $2::text; END $$;
CREATE OPERATOR public.` + op + ` (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.vc_` + k + `);`
	}
	pgtest.Exec(t, attackerDSN, plant)
	env := coEnv(t, dsn)
	calls := func() string {
		admin := coConn(t, dsn, nil)
		defer admin.Close(ctx)
		return coStr(t, admin, `SELECT last_value::text || '/' || is_called::text FROM public.pwned_calls`)
	}
	base := calls()
	ranNothing := func(after string) {
		t.Helper()
		if now := calls(); now != base {
			admin := coConn(t, dsn, nil)
			defer admin.Close(ctx)
			t.Fatalf("after %s the planted operator ran (calls %s, %s before sync), from:\n%s", after, now, base,
				coStr(t, admin, `SELECT pg_catalog.string_agg(DISTINCT pg_catalog.left(q, 600), E'\n---\n') FROM public.op_queries`))
		}
	}
	if _, err := Sync(ctx, env, parseSpec(t, `
name: op
table: public.codes
target:
  ddl: |
    CREATE TABLE codes (code varchar(12) PRIMARY KEY, v bigint NOT NULL, note text, tag varchar(20))
mode: `+mode+`
`), SyncOptions{Workers: 2}); err != nil {
		t.Fatal(err)
	}
	ranNothing("sync")
	if _, err := Verify(ctx, env, "op", VerifyOptions{}); err != nil {
		t.Fatal(err)
	}
	ranNothing("verify")
	// A difference in a varchar column, behind the triggers' back: verify
	// lists it (its row comparison) and repairs it.
	pgtest.Exec(t, dsn, `SET session_replication_role = replica;
		UPDATE gs_op_green.codes SET tag = 'forged' WHERE code::text OPERATOR(pg_catalog.=) 'c77'`)
	if res, _ := Verify(ctx, env, "op", VerifyOptions{}); res == nil || res.DifferenceCount != 1 {
		t.Fatalf("verify of a forged varchar value: %+v, want one difference", res)
	}
	if _, err := Verify(ctx, env, "op", VerifyOptions{Repair: true}); err != nil {
		t.Fatal(err)
	}
	ranNothing("verify of a difference and its repair")
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
	if mode == "logical" {
		// The stream applies the writes by key: its statements too.
		write("", "app1b")
		stopWatch, _ := startWatch(t, env, "op")
		logicalWait(t, env, "op")
		if err := stopWatch(); err != nil {
			t.Fatal(err)
		}
		ranNothing("the stream's apply")
		if _, err := Verify(ctx, env, "op", VerifyOptions{}); err != nil {
			t.Fatal(err)
		}
		ranNothing("verify after the stream")
		return
	}
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
