package runner

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// testEnv connects a runner Env to dsn; it is closed before the database is dropped.
func testEnv(t *testing.T, dsn string) *Env {
	t.Helper()
	env, err := Connect(context.Background(), dsn, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	tuneForTests(env)
	t.Cleanup(env.Close)
	return env
}

func parseSpec(t *testing.T, yaml string) *spec.Spec {
	return testkit.ParseSpecAs(t, yaml, "spec.yaml")
}

// catalogSnapshot is everything plan must leave as it found it: catalog
// row counts, where the table is and what it is, every row of it, and its
// sequences.
func catalogSnapshot(t *testing.T, dsn, table string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var b strings.Builder
	for _, cat := range []string{"pg_class", "pg_namespace", "pg_proc", "pg_trigger", "pg_attribute", "pg_attrdef",
		"pg_constraint", "pg_index", "pg_depend", "pg_rewrite", "pg_policy", "pg_type", "pg_publication_rel"} {
		var n int64
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+cat).Scan(&n); err != nil {
			t.Fatal(err)
		}
		b.WriteString(cat + "=" + jsonString(n) + "\n")
	}
	var kind, schema string
	if err := conn.QueryRow(ctx, `SELECT c.relkind::text, n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = $1::regclass`, table).Scan(&kind, &schema); err != nil {
		t.Fatal(err)
	}
	b.WriteString("table " + table + " kind=" + kind + " schema=" + schema + "\n")
	var dump string
	if err := conn.QueryRow(ctx, `SELECT coalesce(string_agg(t::text, E'\n' ORDER BY t::text), '') FROM `+table+` t`).Scan(&dump); err != nil {
		t.Fatal(err)
	}
	b.WriteString(dump + "\n")
	rows, err := conn.Query(ctx, `SELECT c.oid::regclass::text FROM pg_class c WHERE c.relkind = 'S' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	seqs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range seqs {
		var last int64
		var called bool
		if err := conn.QueryRow(ctx, "SELECT last_value, is_called FROM "+s).Scan(&last, &called); err != nil {
			t.Fatal(err)
		}
		b.WriteString("sequence " + s + " " + jsonString(last) + " " + jsonString(called) + "\n")
	}
	return b.String()
}

func jsonString(v any) string { b, _ := json.Marshal(v); return string(b) }

func hazard(r *PlanResult, code string) *shadow.Hazard {
	for i := range r.Hazards {
		if r.Hazards[i].Code == code {
			return &r.Hazards[i]
		}
	}
	return nil
}

func TestPlanOrdersExample(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	seed, err := os.ReadFile("../examples/orders/seed.sql")
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, string(seed))
	pgtest.Exec(t, dsn, `ANALYZE orders`)
	spec, err := spec.LoadSpecFile("../examples/orders/spec.yaml")
	if err != nil {
		t.Fatal(err)
	}
	env := testEnv(t, dsn)

	before := catalogSnapshot(t, dsn, "public.orders")
	res, err := Plan(ctx, env, spec, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if after := catalogSnapshot(t, dsn, "public.orders"); after != before {
		t.Errorf("plan changed the database:\nbefore:\n%.2000s\nafter:\n%.2000s", before, after)
	}

	if res.SchemaVersion != PlanSchemaVersion || res.Migration != "orders_v2" || res.Table != "public.orders" ||
		!slices.Equal(res.Key, []string{"id"}) || res.GreenTable != "gs_orders_v2_green.orders" {
		t.Errorf("summary = %+v", res)
	}
	if !res.Rehearsal.Done || !res.Rehearsal.RolledBack || res.Rehearsal.LockHeldMS <= 0 {
		t.Errorf("rehearsal = %+v", res.Rehearsal)
	}
	s := res.Sample
	if !s.Forward || !s.Inserted || !s.Reverse || s.Rows < 1000 || !strings.Contains(s.Method, "TABLESAMPLE") {
		t.Errorf("sample = %+v", s)
	}
	var names []string
	for i, st := range res.Steps {
		names = append(names, st.Name)
		if st.N != i+1 || len(st.SQL) == 0 || st.Lock == "" || st.Description == "" {
			t.Errorf("step %d incomplete: %+v", i+1, st)
		}
	}
	wantSteps := []string{"adopt", "create-green", "prepare-green", "install-sync-triggers", "backfill", "build-indexes",
		"settle", "analyze", "enable-reverse-sync", "cutover", "finalize"}
	if !slices.Equal(names, wantSteps) {
		t.Errorf("steps = %v, want %v", names, wantSteps)
	}
	if !res.Steps[0].Exact || res.Steps[0].SQL[1] != `ALTER TABLE "public"."orders" SET SCHEMA "gs_orders_v2_blue"` {
		t.Errorf("adopt step = %+v", res.Steps[0])
	}
	if ix := res.Steps[5]; !strings.Contains(strings.Join(ix.SQL, "\n"), "CREATE INDEX CONCURRENTLY orders_created_at_idx ON orders (created_at)") || ix.Transactional {
		t.Errorf("build-indexes step = %+v", ix)
	}
	if bf := strings.Join(res.Steps[4].SQL, "\n"); !strings.Contains(bf, "FOR KEY SHARE") || !strings.Contains(bf, `ON CONFLICT ("id") DO NOTHING`) ||
		!strings.Contains(bf, "coalesce(email, 'unknown@invalid')") {
		t.Errorf("backfill SQL = %s", bf)
	}

	cut := res.Steps[9]
	invoker := " WITH (security_invoker = true)"
	if pgtest.ServerMajor(t) < 15 {
		invoker = "" // no security_invoker before PostgreSQL 15
	}
	if !cut.Exact || !strings.Contains(strings.Join(cut.SQL, "\n"),
		`CREATE VIEW "public"."orders"`+invoker+` AS SELECT "id", "email", "amount", "created_at" FROM "gs_orders_v2_green"."orders"`) {
		t.Errorf("cutover step (from the cutover package's planner) = %+v", cut)
	}
	if res.Blocking != 0 || hazard(res, shadow.HazardCutoverRefuses) != nil {
		t.Errorf("blocking hazards: %+v", res.Hazards)
	}
	for code, sev := range map[string]shadow.Severity{
		shadow.HazardRowTypeChange: shadow.Warning, shadow.HazardGreenStricter: shadow.Warning,
		shadow.HazardViewLimitations: shadow.Warning, shadow.HazardLossyMapping: shadow.Info,
	} {
		h := hazard(res, code)
		if h == nil || h.Severity != sev {
			t.Errorf("hazard %s: %+v, want severity %s", code, h, sev)
		}
	}
	if h := hazard(res, shadow.HazardGreenStricter); h != nil && !strings.Contains(strings.Join(h.Objects, "\n"), "email: NOT NULL on green") {
		t.Errorf("green_stricter objects = %q", h.Objects)
	}

	e := res.Estimate
	if e.Rows != 100000 || e.BlueTableBytes <= 0 || e.GreenTableBytes <= 0 || e.GreenIndexBytes <= 0 ||
		e.DiskNeededBytes != 2*e.GreenTotalBytes || e.FreeBytes != nil || e.BackfillSeconds != 10 || e.GreenRowWidth <= e.BlueRowWidth {
		t.Errorf("estimate = %+v", e)
	}
	if _, err := json.Marshal(res); err != nil {
		t.Fatal(err)
	}
}

const planFixture = `
CREATE TABLE customers (id int PRIMARY KEY);
INSERT INTO customers VALUES (1), (2);
CREATE TABLE src (
    id       serial PRIMARY KEY,
    code     text,
    amount   int NOT NULL CHECK (amount >= 0),
    email    text,
    name     text NOT NULL,
    customer int REFERENCES customers
);
INSERT INTO src (code, amount, email, name, customer) VALUES
    ('10', 5, 'a@x', 'n1', 1), ('20', 7, NULL, 'n2', 2), ('x3', 1000000, 'c@x', 'n3', NULL), ('40', 0, 'd@x', 'n4', 1);
CREATE VIEW src_view AS SELECT id, code FROM src;
CREATE FUNCTION src_touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER src_audit BEFORE UPDATE ON src FOR EACH ROW EXECUTE FUNCTION src_touch();
CREATE TABLE src_child (src_id int REFERENCES src);
`

const planGreen = `CREATE TABLE src (id bigint PRIMARY KEY, code text, amount bigint NOT NULL, email text, name text NOT NULL, customer int REFERENCES customers)`

func specYAML(ddl, extra string) string {
	return "name: src_v2\ntable: public.src\ntarget:\n  ddl: " + jsonString(ddl) + "\n" + extra
}

// TestPlanRejectsBadSpecs runs plan on specs that cannot work: each is a
// SpecError (exit 2) naming the field, its line and, for data, the key; and
// the database is as it was, however far the rehearsal got.
func TestPlanRejectsBadSpecs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, planFixture)
	env := testEnv(t, dsn)
	before := catalogSnapshot(t, dsn, "public.src")

	for _, c := range []struct {
		name, spec string
		field      string // SpecError.Field
		lineOf     string // the spec field whose line the error points at
		contains   []string
	}{
		{"missing table", "name: src_v2\ntable: public.nope\ntarget:\n  ddl: " + jsonString(planGreen) + "\n",
			"table", "table", []string{"public.nope does not exist"}},
		{"bad ddl", specYAML("CREATE TABLE src (id bigint PRIMARY KEY, code texx)", ""),
			"target.ddl", "target.ddl", []string{`type "texx" does not exist`}},
		{"key not unique", specYAML(planGreen, "key: [amount]\n"),
			"key", "key", []string{"not unique"}},
		{"key column missing", specYAML(planGreen, "key: [nope]\n"),
			"key", "key", []string{"column nope does not exist in public.src"}},
		{"expression does not compile", specYAML(planGreen, "forward:\n  email: lower(emial)\n"),
			"forward.email", "forward.email", []string{`column "emial" does not exist`}},
		{"explicit cast fails on a row", specYAML(strings.Replace(planGreen, "code text", "code int", 1), "forward:\n  code: trim(code)::int\n"),
			"forward.code", "forward.code", []string{"(id)=(3)", `invalid input syntax for type integer: "x3"`}},
		{"cast by name fails on a row", specYAML(strings.Replace(planGreen, "code text", "code int", 1), ""),
			"forward.code", "target.ddl", []string{"(id)=(3)", "write forward.code"}},
		{"NULL into NOT NULL green column", specYAML(strings.Replace(planGreen, "email text", "email text NOT NULL", 1), ""),
			"forward.email", "target.ddl", []string{"(id)=(2)", "NOT NULL", "coalesce"}},
		{"green CHECK rejects a row", specYAML(strings.Replace(planGreen, "amount bigint NOT NULL", "amount bigint NOT NULL CHECK (amount < 1000)", 1), ""),
			"target.ddl", "target.ddl", []string{"(id)=(3)", "check constraint"}},
		{"reverse cast fails on a row", specYAML(planGreen, "forward:\n  amount: amount::bigint * 10000\nreverse:\n  amount: amount::int\n"),
			"reverse.amount", "reverse.amount", []string{"(id)=(3)", "integer out of range"}},
		{"reverse NULL into NOT NULL blue column", specYAML(planGreen, "reverse:\n  name: nullif(name, 'n2')\n"),
			"reverse.name", "reverse.name", []string{"(id)=(2)", "NOT NULL"}},
		{"reverse violates blue CHECK", specYAML(planGreen, "reverse:\n  amount: amount - 1\n"),
			"reverse", "reverse", []string{"src_amount_check", "(id)=(4)"}},
		{"bad index", specYAML(planGreen, "  indexes:\n    - CREATE INDEX src_x ON src (nope)\n"),
			"target.indexes[0]", "target.indexes[0]", []string{`column "nope" does not exist`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			sp := parseSpec(t, c.spec)
			_, err := Plan(ctx, env, sp, PlanOptions{})
			var se *spec.SpecError
			if !errors.As(err, &se) {
				t.Fatalf("err = %v, want a SpecError", err)
			}
			if exitcode.Of(err) != exitcode.BadInput {
				t.Errorf("exit code %d", exitcode.Of(err))
			}
			if se.Field != c.field || se.File != "spec.yaml" || se.Line == 0 || se.Line != sp.Line(c.lineOf) {
				t.Errorf("error at %s:%d field %q, want line %d field %q: %v", se.File, se.Line, se.Field, sp.Line(c.lineOf), c.field, se)
			}
			for _, s := range c.contains {
				if !strings.Contains(se.Error(), s) {
					t.Errorf("error %q does not contain %q", se.Error(), s)
				}
			}
			if strings.Contains(se.Error(), "\n") {
				t.Errorf("error is not one line: %q", se.Error())
			}
			if after := catalogSnapshot(t, dsn, "public.src"); after != before {
				t.Errorf("a failed plan changed the database:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

func TestPlanFixtureHazards(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, planFixture)
	pgtest.Exec(t, dsn, `CREATE TABLE big (id int PRIMARY KEY, code text);
		INSERT INTO big SELECT g, 'c' || (g % 50) FROM generate_series(1, 2000) g; ANALYZE big`)
	env := testEnv(t, dsn)
	before := catalogSnapshot(t, dsn, "public.src")

	// Green without the FK, with a volatile mapping; the table has a view
	// and a trigger and is referenced.
	green := strings.Replace(planGreen, " REFERENCES customers", "", 1)
	green = strings.Replace(green, "name text NOT NULL", "name text NOT NULL, seen timestamptz NOT NULL", 1)
	res, err := Plan(ctx, env, parseSpec(t, specYAML(green, "forward:\n  seen: now()\n")), PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for code, sev := range map[string]shadow.Severity{
		shadow.HazardVolatileMapping: shadow.Warning, shadow.HazardForeignKeysMissing: shadow.Warning,
		shadow.HazardReferencedByFKs: shadow.Warning, shadow.HazardDependentViews: shadow.Warning,
		shadow.HazardUserTriggers: shadow.Warning, shadow.HazardRowTypeChange: shadow.Warning,
		shadow.HazardGreenStricter: shadow.Warning, shadow.HazardViewLimitations: shadow.Warning,
	} {
		if h := hazard(res, code); h == nil || h.Severity != sev {
			t.Errorf("hazard %s = %+v, want %s", code, h, sev)
		}
	}
	if c := res.Mapping.Forward.Column("seen"); c == nil || !c.Volatile {
		t.Errorf("forward.seen not marked volatile: %+v", c)
	}
	if after := catalogSnapshot(t, dsn, "public.src"); after != before {
		t.Errorf("plan changed the database:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// A green key that blue rows collide on (100 sampled rows, 50 codes).
	res, err = Plan(ctx, env, parseSpec(t, `name: big_v2
table: big
target:
  ddl: CREATE TABLE big (id int NOT NULL, code text PRIMARY KEY)
`), PlanOptions{SampleSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	if h := hazard(res, shadow.HazardGreenKeyNotUnique); h == nil || h.Severity != shadow.Warning {
		t.Errorf("green_key_not_unique = %+v", h)
	}
	if !strings.HasPrefix(res.Sample.Method, "ORDER BY random() LIMIT 100") || res.Sample.Rows < 100 || res.Sample.Rows > 120 {
		t.Errorf("sample = %+v", res.Sample)
	}

	// An empty table: compiled, not evaluated.
	pgtest.Exec(t, dsn, `CREATE TABLE empty (id int PRIMARY KEY)`)
	res, err = Plan(ctx, env, parseSpec(t, "name: empty_v2\ntable: empty\ntarget:\n  ddl: CREATE TABLE empty (id bigint PRIMARY KEY)\n"), PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h := hazard(res, shadow.HazardEmptySample); h == nil || h.Severity != shadow.Info || res.Sample.Rows != 0 {
		t.Errorf("empty_sample = %+v, sample %+v", h, res.Sample)
	}
}

func TestPlanBlocking(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, `CREATE TABLE heap (a int, b text); INSERT INTO heap VALUES (1, 'x');
		CREATE TABLE orders (id serial PRIMARY KEY, email text, amount int NOT NULL);`)
	env := testEnv(t, dsn)

	before := catalogSnapshot(t, dsn, "public.heap")
	res, err := Plan(ctx, env, parseSpec(t, "name: heap_v2\ntable: heap\ntarget:\n  ddl: CREATE TABLE heap (a int PRIMARY KEY, b text)\n"), PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h := hazard(res, shadow.HazardNoKey); h == nil || h.Severity != shadow.Blocking || res.Blocking == 0 {
		t.Errorf("no_key = %+v (blocking %d)", h, res.Blocking)
	}
	if res.Rehearsal.Done || res.Rehearsal.Skipped == "" || len(res.Steps) != 1 || res.Steps[0].Name != "adopt" {
		t.Errorf("rehearsal %+v, steps %+v", res.Rehearsal, res.Steps)
	}
	if after := catalogSnapshot(t, dsn, "public.heap"); after != before {
		t.Errorf("plan changed the database")
	}

	// A table that a migration already adopted: the app name is a view now.
	const spec = `
name: o2
table: public.orders
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text, amount int NOT NULL)
`
	setupForTest(t, dsn, spec)
	res, err = Plan(ctx, env, parseSpec(t, spec), PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h := hazard(res, shadow.HazardLeftover)
	if h == nil || h.Severity != shadow.Blocking || !strings.Contains(strings.Join(h.Objects, "\n"), "schema gs_o2_blue exists") {
		t.Errorf("leftover = %+v", h)
	}
}

func TestPlanGivesUpOnLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, `CREATE TABLE busy (id int PRIMARY KEY)`)
	env := testEnv(t, dsn)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT * FROM busy`); err != nil { // ACCESS SHARE, held: a long report
		t.Fatal(err)
	}
	start := time.Now()
	_, err = Plan(ctx, env, parseSpec(t, "name: busy_v2\ntable: busy\ntarget:\n  ddl: CREATE TABLE busy (id bigint PRIMARY KEY)\n"),
		PlanOptions{Lock: shadow.LockOptions{Timeout: 100 * time.Millisecond, MaxAttempts: 2, BaseBackoff: 10 * time.Millisecond, MaxBackoff: 10 * time.Millisecond}})
	var lt *shadow.LockTimeoutError
	if !errors.As(err, &lt) || exitcode.Of(err) != exitcode.LockTimeout {
		t.Fatalf("err = %v, want a LockTimeoutError", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("plan waited %s", time.Since(start))
	}
}

// Plan shows the backfill's batch as sync runs it (issue 13: plan printed
// FOR KEY SHARE where sync takes FOR SHARE): for examples/composite-key,
// whose green key (tenant_id, id) reads a column outside blue's key (id), a
// plain UPDATE of tenant_id moves the green row, so the batch locks FOR SHARE;
// the statements are package sync's own (BatchPreview).
func TestPlanBackfillLockIsSyncs(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDB(t)
	seed, err := os.ReadFile("../examples/composite-key/seed.sql")
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, string(seed))
	spec, err := spec.LoadSpecFile("../examples/composite-key/spec.yaml")
	if err != nil {
		t.Fatal(err)
	}
	res, err := Plan(context.Background(), testEnv(t, dsn), spec, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var bf *PlanStep
	for i := range res.Steps {
		if res.Steps[i].Name == "backfill" {
			bf = &res.Steps[i]
		}
	}
	if bf == nil {
		t.Fatal("no backfill step")
	}
	sql := strings.Join(bf.SQL, "\n")
	if !strings.Contains(sql, "ORDER BY \"id\" FOR SHARE") || strings.Contains(sql, "KEY SHARE") || !strings.HasPrefix(bf.Lock, "FOR SHARE") || !bf.Exact {
		t.Errorf("backfill step: lock %q, exact %v, SQL:\n%s", bf.Lock, bf.Exact, sql)
	}
	if !strings.Contains(sql, "set_config('row_security', 'off', true)") {
		t.Errorf("backfill step lacks the session settings sync sets:\n%s", sql)
	}
}
