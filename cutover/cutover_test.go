package cutover

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

func TestRetargetTriggerDef(t *testing.T) {
	def := `CREATE TRIGGER orders_audit AFTER UPDATE OF "on" ON gs_x_blue.orders FOR EACH ROW WHEN ((new.amount > 0)) EXECUTE FUNCTION public.audit()`
	got, ok := retarget(def, "gs_x_blue.orders", spec.QualifiedName{Schema: "gs_x_green", Name: "orders"})
	want := `CREATE TRIGGER orders_audit AFTER UPDATE OF "on" ON "gs_x_green"."orders" FOR EACH ROW WHEN ((new.amount > 0)) EXECUTE FUNCTION public.audit()`
	if !ok || got != want {
		t.Errorf("retarget:\n got %s\nwant %s", got, want)
	}
	if _, ok := retarget(def, "public.other", spec.QualifiedName{Schema: "s", Name: "t"}); ok {
		t.Error("retarget found a relation that is not there")
	}
}

func TestForeignKeySQL(t *testing.T) {
	f := &foreignKey{Name: "items_fk", Table: spec.QualifiedName{Schema: "public", Name: "items"}, Columns: []string{"a", "b"},
		RefColumns: []string{"x", "y"}, Match: "f", OnUpdate: "c", OnDelete: "n", SetCols: []string{"b"}, Deferrable: true, Deferred: true}
	got := f.addSQL(spec.QualifiedName{Schema: "gs_m_green", Name: "orders"})
	want := `ALTER TABLE "public"."items" ADD CONSTRAINT "items_fk" FOREIGN KEY ("a", "b") REFERENCES "gs_m_green"."orders" ("x", "y") MATCH FULL ON UPDATE CASCADE ON DELETE SET NULL ("b") DEFERRABLE INITIALLY DEFERRED NOT VALID`
	if got != want {
		t.Errorf("addSQL:\n got %s\nwant %s", got, want)
	}
	if v := f.validateSQL(); v != `ALTER TABLE "public"."items" VALIDATE CONSTRAINT "items_fk"` {
		t.Errorf("validateSQL: %s", v)
	}
}

func TestLockSetOrderAndStatements(t *testing.T) {
	var ls lockSet
	q := func(n string) spec.QualifiedName { return spec.QualifiedName{Schema: "s", Name: n} }
	ls.addView(&viewMeta{OID: 1, Name: q("app"), Owner: "own"}, "re-pointed")
	ls.add(q("child"), 2, ShareRowExclusive, "fk")
	ls.add(q("child"), 2, AccessExclusive, "fk moved")
	ls.add(q("blue"), 3, ShareRowExclusive, "triggers")
	ls.add(q("green"), 4, ShareRowExclusive, "triggers")
	ls.pair(3, 4)
	var sql []string
	for _, l := range ls.list {
		sql = append(sql, l.SQL())
	}
	want := []string{
		`ALTER VIEW "s"."app" OWNER TO "own" /* ACCESS EXCLUSIVE on the view alone */`,
		`LOCK TABLE "s"."child" IN ACCESS EXCLUSIVE MODE`,
		`LOCK TABLE "s"."blue" IN SHARE ROW EXCLUSIVE MODE`,
		`LOCK TABLE "s"."green" IN SHARE ROW EXCLUSIVE MODE NOWAIT`,
	}
	if strings.Join(sql, "\n") != strings.Join(want, "\n") {
		t.Errorf("locks:\n%s\nwant\n%s", strings.Join(sql, "\n"), strings.Join(want, "\n"))
	}
	if ls.list[1].Why != "fk; fk moved" {
		t.Errorf("why: %q", ls.list[1].Why)
	}
}

func TestDoBlockQuotesAndExplains(t *testing.T) {
	ctx := context.Background()
	_, dsn := pgtest.NewPool(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	pgtest.Exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY)`)
	var oid uint32
	if err := conn.QueryRow(ctx, `SELECT 't'::regclass::oid`).Scan(&oid); err != nil {
		t.Fatal(err)
	}
	fp, err := fingerprint(ctx, conn, []uint32{oid})
	if err != nil {
		t.Fatal(err)
	}
	stmts := []string{`COMMENT ON TABLE t IS 'it''s $gsdo$ tricky \ here'`, `CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$SELECT 1$$`}
	if _, err := conn.Exec(ctx, doBlock([]uint32{oid}, fp, stmts)); err != nil {
		t.Fatal(err)
	}
	var c string
	if err := conn.QueryRow(ctx, `SELECT obj_description('t'::regclass, 'pg_class')`).Scan(&c); err != nil || c != `it's $gsdo$ tricky \ here` {
		t.Errorf("comment %q %v", c, err)
	}
	// A stale fingerprint is a retryable lock error; a failing statement is named.
	_, err = conn.Exec(ctx, doBlock([]uint32{oid}, "stale", stmts))
	if db.SQLState(err) != db.LockNotAvailable {
		t.Errorf("stale fingerprint: %v", err)
	}
	_, err = conn.Exec(ctx, doBlock([]uint32{oid}, fp, []string{`ALTER TABLE t ADD COLUMN x int`, `ALTER TABLE nope ADD COLUMN y int`}))
	if err = explain(err); err == nil || !strings.Contains(err.Error(), "ALTER TABLE nope") {
		t.Errorf("explain: %v", err)
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != db.UndefinedTable {
		t.Errorf("the PostgreSQL error is not kept: %v", err)
	}
}

// viewCatalog is everything about the views of the test that must survive
// a drop and re-create.
func viewCatalog(t *testing.T, q db.Querier) string {
	t.Helper()
	rows, err := q.Query(context.Background(), `
SELECT string_agg(x, E'\n' ORDER BY x) FROM (
    SELECT format('%s %s %s %s %s %s %s', c.relname, c.relkind, c.reloptions, c.relacl, pg_get_userbyid(c.relowner),
                  obj_description(c.oid, 'pg_class'), CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END) AS x
      FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('v', 'm')
    UNION ALL SELECT format('col %s.%s %s %s', c.relname, a.attname, col_description(c.oid, a.attnum), pg_get_expr(d.adbin, d.adrelid))
      FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
      LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('v', 'm')
    UNION ALL SELECT pg_get_triggerdef(g.oid) FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'v'
    UNION ALL SELECT pg_get_ruledef(r.oid) FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
     WHERE c.relnamespace = 'public'::regnamespace AND r.rulename <> '_RETURN'
    UNION ALL SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'm'
) s`)
	if err != nil {
		t.Fatal(err)
	}
	all, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(all, "\n")
}

// TestDependentViewsRoundTrip: the views over a table, dropped in reverse
// depth order and created again from what loadDependents read, are as they
// were: definitions, options, owner, grants, comments, column defaults,
// INSTEAD OF triggers, rules, materialized views with their indexes.
func TestDependentViewsRoundTrip(t *testing.T) {
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `
		CREATE TABLE base (id int PRIMARY KEY, v int, note text);
		INSERT INTO base VALUES (1, 10, 'a'), (2, 20, 'b');
		CREATE VIEW v1 WITH (security_barrier = true, check_option = local) AS SELECT id, v FROM base WHERE v > 0;
		COMMENT ON VIEW v1 IS 'positive';
		COMMENT ON COLUMN v1.v IS 'the value';
		ALTER VIEW v1 ALTER COLUMN v SET DEFAULT 5;
		GRANT SELECT, INSERT ON v1 TO PUBLIC;
		CREATE VIEW v2 AS SELECT id, v * 2 AS dbl, lower('X') AS l FROM v1;
		CREATE FUNCTION v2_ins() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN INSERT INTO base (id, v) VALUES (NEW.id, NEW.dbl / 2); RETURN NEW; END$$;
		CREATE TRIGGER v2_ins INSTEAD OF INSERT ON v2 FOR EACH ROW EXECUTE FUNCTION v2_ins();
		CREATE RULE v2_del AS ON DELETE TO v2 DO INSTEAD NOTHING;
		CREATE MATERIALIZED VIEW m1 AS SELECT id, dbl FROM v2;
		CREATE UNIQUE INDEX m1_id ON m1 (id);
		CREATE MATERIALIZED VIEW m2 AS SELECT id FROM base WITH NO DATA;`)
	before := viewCatalog(t, pool)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if err := setPath(ctx, tx, catalogPath); err != nil {
		t.Fatal(err)
	}
	base, err := findRelation(ctx, tx, spec.QualifiedName{Schema: "public", Name: "base"})
	if err != nil {
		t.Fatal(err)
	}
	views, err := loadDependents(ctx, tx, []uint32{base.OID}, 0, "", "")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range views {
		names = append(names, v.Name.Name)
	}
	if strings.Join(names, ",") != "m2,v1,v2,m1" {
		t.Fatalf("views in creation order: %v", names)
	}
	var sql []string
	for i := len(views) - 1; i >= 0; i-- {
		sql = append(sql, views[i].dropSQL())
	}
	for _, v := range views {
		sql = append(sql, v.createSQL()...)
	}
	for _, s := range sql {
		if _, err := tx.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	if err := setPath(ctx, tx, `"$user", public`); err != nil {
		t.Fatal(err)
	}
	if after := viewCatalog(t, tx); after != before {
		t.Errorf("views differ after drop and re-create:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	var populated bool
	if err := tx.QueryRow(ctx, `SELECT relispopulated FROM pg_class WHERE oid = 'public.m2'::regclass`).Scan(&populated); err != nil || populated {
		t.Errorf("m2 populated %v %v; it was created WITH NO DATA", populated, err)
	}
}

// TestUsageSensor: the sensor records writes that start on blue, with who
// made them, once switched on; not the sync trigger's own writes (the sync
// flag is on), not while off; and Usage also sees readers holding a lock.
func TestUsageSensor(t *testing.T) {
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	n := shadow.NamesFor("us", spec.QualifiedName{Schema: "public", Name: "acc"})
	pgtest.Exec(t, dsn, `CREATE SCHEMA gs_us_blue; CREATE TABLE gs_us_blue.acc (id int PRIMARY KEY)`)
	for _, s := range usageInstallSQL(n, "postgres", usageObjects{}) {
		pgtest.Exec(t, dsn, s)
	}
	// After the setup: its sessions may linger in pg_stat_activity a moment
	// after closing, with a last query that names the blue schema.
	since := time.Now()
	client := func(app string) *pgx.Conn {
		cfg, _ := pgx.ParseConfig(dsn)
		cfg.RuntimeParams["application_name"] = app
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(ctx) })
		return c
	}
	old := client("old-app")
	if _, err := old.Exec(ctx, `INSERT INTO gs_us_blue.acc VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	if cs, err := Usage(ctx, pool, n, since, nil); err != nil || len(cs) != 1 || cs[0].How != "query" {
		t.Fatalf("sensor off: %+v %v (want only the query naming the schema)", cs, err)
	}
	pgtest.Exec(t, dsn, usageSwitchSQL(n, true))
	pinned := client("pinned-app")
	if _, err := pinned.Exec(ctx, `SET search_path = gs_us_blue; INSERT INTO acc VALUES (2)`); err != nil {
		t.Fatal(err)
	}
	syncer := client("sync-like")
	tx, err := syncer.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tx.Exec(ctx, `SELECT set_config($1, '0', true)`, n.SyncFlag) // what trigger.SyncFlagSQL sets
	tx.Exec(ctx, `SET LOCAL search_path = gs_us_blue`)
	tx.Exec(ctx, `INSERT INTO acc VALUES (3)`)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	reader := client("reader-app")
	rtx, err := reader.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rtx.Rollback(ctx)
	rtx.Exec(ctx, `SET LOCAL search_path = gs_us_blue`)
	rtx.Exec(ctx, `SELECT count(*) FROM acc`)

	cs, err := Usage(ctx, pool, n, since, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, c := range cs {
		got[c.Application] += strings.Fields(c.How)[0] + " "
	}
	if !strings.Contains(got["pinned-app"], "write") || got["reader-app"] != "lock " || got["sync-like"] != "" || got["old-app"] != "query " {
		t.Errorf("clients seen: %v\n%+v", got, cs)
	}
	for _, c := range cs {
		if c.Application == "pinned-app" && (c.ClientAddr == "" || c.User != "postgres" || !strings.Contains(c.Query, "INSERT INTO acc")) {
			t.Errorf("the write is not described: %+v", c)
		}
	}
}
