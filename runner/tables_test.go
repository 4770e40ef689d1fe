package runner

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/spec"
)

// TestPlanTablesExample: plan rehearses orders-with-items in dependency
// order, links the greens by a NOT VALID foreign key, reports each table
// in its own section and changes nothing.
func TestPlanTablesExample(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	seed, err := os.ReadFile("../examples/orders-with-items/seed.sql")
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, string(seed))
	pgtest.Exec(t, dsn, `ANALYZE orders; ANALYZE order_items`)
	sp, err := spec.LoadSpecFile("../examples/orders-with-items/spec.yaml")
	if err != nil {
		t.Fatal(err)
	}
	env := testEnv(t, dsn)
	before := catalogSnapshot(t, dsn, "public.order_items") + catalogSnapshot(t, dsn, "public.orders")
	res, err := Plan(ctx, env, sp, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if after := catalogSnapshot(t, dsn, "public.order_items") + catalogSnapshot(t, dsn, "public.orders"); after != before {
		t.Errorf("plan changed the database:\nbefore:\n%.2000s\nafter:\n%.2000s", before, after)
	}
	if !slices.Equal(res.Order, []string{"public.orders", "public.order_items"}) || len(res.Tables) != 2 {
		t.Fatalf("order %v, %d sections", res.Order, len(res.Tables))
	}
	if !res.Rehearsal.Done || !res.Rehearsal.RolledBack || res.Blocking != 0 {
		t.Errorf("rehearsal %+v, %d blocking", res.Rehearsal, res.Blocking)
	}
	for i, tb := range res.Tables {
		if tb.Table != res.Order[i] || !tb.Rehearsal.Done || !tb.Sample.Forward || !tb.Sample.Inserted || len(tb.Steps) < 5 {
			t.Errorf("section %d: table %s rehearsal %+v sample %+v, %d steps", i, tb.Table, tb.Rehearsal, tb.Sample, len(tb.Steps))
		}
		for _, st := range tb.Steps {
			for _, q := range st.SQL {
				if strings.Contains(q, `"gs_forward"`) || strings.Contains(q, `"gs_reverse"`) {
					t.Errorf("%s step %s uses the one-table function names: %s", tb.Table, st.Name, q)
				}
			}
		}
	}
	// order_items' FK to orders is declared among the greens: it does not
	// move at cutover, so orders' section must not say it does.
	if h := hazard(res.Tables[0], "referenced_by_foreign_keys"); h != nil {
		t.Errorf("orders: a migrated table's FK reported as moving at cutover: %+v", h)
	}
	var steps []string
	for _, st := range res.Steps {
		steps = append(steps, st.Name)
	}
	if !slices.Equal(steps, []string{"create-greens", "add-foreign-keys", "validate-foreign-keys", "cutover"}) {
		t.Fatalf("steps %v", steps)
	}
	add := strings.Join(res.Steps[1].SQL, "\n")
	want := `ALTER TABLE "gs_orders_bigint_green"."order_items" ADD CONSTRAINT "order_items_order_id_fkey" FOREIGN KEY ("order_id") REFERENCES "gs_orders_bigint_green"."orders" ("id") ON DELETE CASCADE NOT VALID`
	if add != want {
		t.Errorf("add-foreign-keys SQL\n got %s\nwant %s", add, want)
	}
	if create := strings.Join(res.Steps[0].SQL, "\n"); strings.Contains(create, "REFERENCES") ||
		strings.Index(create, "CREATE TABLE orders") > strings.Index(create, "CREATE TABLE order_items") {
		t.Errorf("create-greens must create orders first and without the foreign key:\n%s", create)
	}
}

// TestPlanTablesGraph: the dependency graph's errors, found through plan
// against a real server: a FK to a table that neither is migrated nor
// exists, and a FK column whose green type differs from the green key it
// references; a self-reference (a tree) is fine.
func TestPlanTablesGraph(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, `
CREATE TABLE parents (id int PRIMARY KEY, up int REFERENCES parents);
CREATE TABLE kids (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parents);
CREATE TABLE toys (id int PRIMARY KEY, owner int REFERENCES parents);
INSERT INTO parents SELECT g, nullif(g - 1, 0) FROM generate_series(1, 50) g;
INSERT INTO kids SELECT g, 1 + g % 50 FROM generate_series(1, 200) g;`)
	env := testEnv(t, dsn)
	specFor := func(kidDDL, parentDDL string) *spec.Spec {
		return parseSpec(t, `name: fam
tables:
  - table: kids
    target:
      ddl: `+kidDDL+`
  - table: parents
    target:
      ddl: `+parentDDL+`
`)
	}
	const parentOK = "CREATE TABLE parents (id bigint PRIMARY KEY, up bigint REFERENCES parents)"

	res, err := Plan(ctx, env, specFor("CREATE TABLE kids (id bigint PRIMARY KEY, parent_id bigint NOT NULL REFERENCES parents)", parentOK), PlanOptions{})
	if err != nil {
		t.Fatalf("a tree and a FK to it: %v", err)
	}
	if !slices.Equal(res.Order, []string{"public.parents", "public.kids"}) || res.Blocking != 0 {
		t.Errorf("order %v, %d blocking", res.Order, res.Blocking)
	}
	if len(res.Steps) != 4 || len(res.Steps[1].SQL) != 2 || res.Steps[3].Name != "cutover" {
		t.Errorf("want 2 foreign keys among the greens (the tree's and kids'), then the cutover, got steps %+v", res.Steps)
	}
	// toys is not migrated: its FK moves at cutover, as for one table;
	// kids' is declared among the greens and does not.
	h := hazard(res.Tables[0], "referenced_by_foreign_keys")
	if h == nil || !strings.Contains(strings.Join(h.Objects, " "), "public.toys") || strings.Contains(strings.Join(h.Objects, " "), "public.kids") {
		t.Errorf("parents: referenced_by_foreign_keys = %+v, want toys' FK only", h)
	}

	for _, tc := range []struct {
		name, kid, want string
	}{
		{"type mismatch", "CREATE TABLE kids (id bigint PRIMARY KEY, parent_id int NOT NULL REFERENCES parents)",
			"spec.yaml:5: tables[0].target.ddl: kids.parent_id is integer but the key it references, parents.id, is bigint"},
		{"unknown table", "CREATE TABLE kids (id bigint PRIMARY KEY, parent_id bigint NOT NULL REFERENCES parents, o int REFERENCES nope (id))",
			"spec.yaml:5: tables[0].target.ddl: REFERENCES public.nope: no such table"},
		{"unknown column", "CREATE TABLE kids (id bigint PRIMARY KEY, parent_id bigint NOT NULL REFERENCES parents (pid))",
			"tables[0].target.ddl: REFERENCES parents (pid): no such column"},
	} {
		_, err := Plan(ctx, env, specFor(tc.kid, parentOK), PlanOptions{})
		var se *spec.SpecError
		if !errors.As(err, &se) || exitcode.Of(err) != exitcode.BadInput || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want a spec error containing %q", tc.name, err, tc.want)
		}
	}
}

// TestSeveralTablesPlannedOnly: every command takes a migration of several
// tables; one that is only planned is refused by the state checks as for
// one table (exit 2, naming the state), and nothing is changed.
func TestSeveralTablesPlannedOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a)`)
	env := testEnv(t, dsn)
	sp := parseSpec(t, `name: ab
tables:
  - table: a
    target: {ddl: "CREATE TABLE a (id bigint PRIMARY KEY)"}
  - table: b
    target: {ddl: "CREATE TABLE b (id bigint PRIMARY KEY, a_id bigint REFERENCES a)"}
`)
	// The commands read the stored spec, as the several-tables sync stores it.
	if err := state.Ensure(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := state.Create(ctx, pool, sp.Name, "public.a", string(sp.Mode), sp); err != nil {
		t.Fatal(err)
	}
	_, err := VerifyMigration(ctx, env, "ab", VerifyOptions{})
	if exitcode.Of(err) != exitcode.BadInput || err == nil || !strings.Contains(err.Error(), "is planned") {
		t.Errorf("verify: got %v (exit %d), want exit 2 saying the migration is planned", err, exitcode.Of(err))
	}
	if _, err := Cutover(ctx, env, "ab", CutoverOptions{}); err == nil || exitcode.Of(err) == exitcode.OK {
		t.Errorf("cutover of a planned migration: got %v, want a refusal", err)
	}
	if _, err := Finalize(ctx, env, "ab", FinalizeOptions{Yes: true}); err == nil || exitcode.Of(err) == exitcode.OK {
		t.Errorf("finalize of a planned migration: got %v, want a refusal", err)
	}
	for _, rel := range []string{"public.a", "public.b"} {
		var kind string
		if err := pool.QueryRow(ctx, `SELECT relkind::text FROM pg_catalog.pg_class WHERE oid = $1::regclass`, rel).Scan(&kind); err != nil || kind != "r" {
			t.Errorf("%s after the refusals: relkind %q, %v (want r: nothing changed)", rel, kind, err)
		}
	}
}
