package runner

import (
	"context"
	"strings"
	"testing"
)

// TestPlanTablesCutoverShowsGreens (issue 14): plan of a migration of
// several tables shows the cutover the cutover command will run: one
// step, planned by the cutover package on a rehearsed catalog where every
// table is adopted and every green built, that moves payments' foreign key
// (a table outside the migration) to green orders NOT VALID and validates
// it after; no cutover SQL, the migration's or a table's own, points a
// foreign key at an app name (a view at cutover); the locks after the
// first are taken NOWAIT; and plan changes nothing.
func TestPlanTablesCutoverShowsGreens(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	coExec(t, pool, tablesSchema(50, 2)+`
		CREATE TABLE payments (id serial PRIMARY KEY, order_id int NOT NULL REFERENCES orders (id), cents int NOT NULL);`)
	env := syncTestEnv(t, dsn)
	before := catalogSnapshot(t, dsn, "public.orders") + catalogSnapshot(t, dsn, "public.order_items") + catalogSnapshot(t, dsn, "public.payments")
	res, err := Plan(ctx, env, syncSpec(t, tablesSpec("pc")), PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if after := catalogSnapshot(t, dsn, "public.orders") + catalogSnapshot(t, dsn, "public.order_items") + catalogSnapshot(t, dsn, "public.payments"); after != before {
		t.Fatalf("plan changed the database")
	}
	var cut *PlanStep
	for i := range res.Steps {
		if res.Steps[i].Name == "cutover" {
			cut = &res.Steps[i]
		}
	}
	if cut == nil || !cut.Exact || cut.Command != "cutover" {
		t.Fatalf("no exact migration-level cutover step: %+v", res.Steps)
	}
	sql := strings.Join(cut.SQL, "\n")
	for _, want := range []string{
		`REFERENCES "gs_pc_green"."orders"`,
		`ALTER TABLE "public"."payments" VALIDATE CONSTRAINT`,
		`IN SHARE ROW EXCLUSIVE MODE NOWAIT`,
	} {
		if !strings.Contains(sql, want) {
			t.Errorf("the cutover step lacks %s:\n%s", want, sql)
		}
	}
	check := func(where, sql string) {
		for _, app := range []string{`REFERENCES "public"."orders"`, `REFERENCES "public"."order_items"`} {
			if strings.Contains(sql, app) {
				t.Errorf("%s: a foreign key points at the app name (%s), not a green:\n%s", where, app, sql)
			}
		}
	}
	check("the migration's cutover", sql)
	for _, tb := range res.Tables {
		for _, st := range tb.Steps {
			if st.Name == "cutover" {
				check(tb.Table+"'s cutover", strings.Join(st.SQL, "\n"))
			}
		}
	}
}
