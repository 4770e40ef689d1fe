package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/runner"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

const ordersAlter = "ALTER TABLE orders ALTER COLUMN id TYPE bigint, ALTER COLUMN email SET NOT NULL"

// catalogFingerprint is everything about the database plan must not
// change: every relation, column, constraint and index outside the
// system schemas, with their relfilenodes.
func catalogFingerprint(t *testing.T, dsn string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var fp string
	err = conn.QueryRow(ctx, `
SELECT string_agg(x, E'\n' ORDER BY x) FROM (
  SELECT format('rel %s.%s %s %s', n.nspname, c.relname, c.relkind, c.relfilenode) AS x
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp%'
  UNION ALL
  SELECT format('col %s %s %s %s %s', a.attrelid::regclass, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid))
    FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
   WHERE a.attrelid = 'public.orders'::regclass AND a.attnum > 0
  UNION ALL
  SELECT format('con %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid)) FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL
  SELECT format('ns %s', nspname) FROM pg_namespace) s`).Scan(&fp)
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

// TestPlanAlterOrders: the ALTER form of the orders example. Its derived
// spec passes plan -f once blue has no NULL email, --write-spec's file
// loads, and green is the hand-written examples/orders green in effect
// for what the ALTER changes: same columns, types, NOT NULLs, defaults
// and constraints.
func TestPlanAlterOrders(t *testing.T) {
	t.Parallel()
	dsn := ordersDB(t)
	before := catalogFingerprint(t, dsn)
	written := filepath.Join(t.TempDir(), "orders_alter.yaml")
	// Blue has NULL emails: the classification is shown and the spec
	// written, and the blue-green part's sample names a NULL row: exit 2,
	// as the plain ALTER would fail.
	code, out, errOut := gsCLI("--dsn", dsn, "plan", "--alter", ordersAlter, "--write-spec", written)
	if code != 2 || !strings.Contains(out, "strategy: check, then set not null") || !strings.Contains(errOut, "to NULL, but green.email is NOT NULL") {
		t.Fatalf("plan --alter with NULL emails: exit %d\n%s\n%s", code, out, errOut)
	}
	pgtest.Exec(t, dsn, `UPDATE orders SET email = 'unknown@invalid' WHERE email IS NULL`)
	before = catalogFingerprint(t, dsn)
	code, out, errOut = gsCLI("--dsn", dsn, "plan", "--alter", ordersAlter, "--write-spec", written)
	if code != 0 {
		t.Fatalf("plan --alter: exit %d\n%s\n%s", code, out, errOut)
	}
	t.Logf("plan --alter output:\n%s", out)
	for _, want := range []string{
		"greenswap plan --alter: public.orders on PostgreSQL",
		"Order: in place first, then blue-green",
		"1. ALTER COLUMN id TYPE bigint", "strategy: blue-green", "rehearsal: rewrites the table",
		"2. ALTER COLUMN email SET NOT NULL", "strategy: check, then set not null",
		`SQL:      ALTER TABLE "public"."orders" ADD CONSTRAINT "orders_email_gs_not_null" CHECK ("email" IS NOT NULL) NOT VALID`,
		`VALIDATE CONSTRAINT "orders_email_gs_not_null"`,
		"Derived spec", `"id" bigint NOT NULL`, `"email" text NOT NULL`,
		"greenswap plan: orders_alter — public.orders",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if got := catalogFingerprint(t, dsn); got != before {
		t.Fatalf("plan --alter changed the database:\nbefore:\n%s\nafter:\n%s", before, got)
	}

	// The written spec loads and plans.
	derived, err := spec.LoadSpecFile(written)
	if err != nil {
		t.Fatalf("--write-spec output does not load: %v", err)
	}
	code, out, errOut = gsCLI("--dsn", dsn, "plan", "-f", written)
	if code != 0 {
		t.Fatalf("plan -f written spec: exit %d\n%s\n%s", code, out, errOut)
	}

	// Green in effect: create both greens beside each other and compare.
	hand, err := spec.LoadSpecFile(exampleSpec)
	if err != nil {
		t.Fatal(err)
	}
	got, want := greenShape(t, dsn, "derived_green", derived.Target), greenShape(t, dsn, "hand_green", hand.Target)
	for _, c := range []string{"column id", "column email", "column created_at", "primary key"} {
		if got[c] != want[c] {
			t.Errorf("%s: derived %q, hand-written %q", c, got[c], want[c])
		}
	}
	if got["column amount"] != "integer notnull=true default=" {
		t.Errorf("amount is not in the ALTER, yet green has %q", got["column amount"])
	}
}

// greenShape creates target in schema and reads back what matters of
// green: each column's type, NOT NULL and default, the primary key, the
// other constraints and the indexes (named, definitions without schema).
func greenShape(t *testing.T, dsn, schema string, target spec.Target) map[string]string {
	t.Helper()
	pgtest.Exec(t, dsn, "CREATE SCHEMA "+schema+"; SET search_path TO "+schema+"; "+target.DDL+"; "+strings.Join(target.Indexes, "; "))
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tbl, err := shadow.LoadTable(ctx, conn, spec.QualifiedName{Schema: schema, Name: "orders"})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, c := range tbl.Columns {
		m["column "+c.Name] = fmt.Sprintf("%s notnull=%v default=%s", c.Type, c.NotNull, c.Default)
	}
	m["primary key"] = strings.Join(tbl.PrimaryKey.Columns, ",")
	for _, c := range tbl.Constraints {
		m["constraint "+c.Name] = c.Def
	}
	for _, ix := range tbl.Indexes {
		m["index "+ix.Name] = strings.ReplaceAll(ix.Def, schema+".", "")
	}
	return m
}

// TestPlanAlterExampleMatchesOrders: examples/orders-alter (the ALTER
// form, with orders' forward and reverse) gives exactly the hand-written
// examples/orders green, plans with nothing blocking although blue has
// NULL emails (forward fills them: the NOT NULL goes to green only), and
// plan -f shows that in its classification.
func TestPlanAlterExampleMatchesOrders(t *testing.T) {
	t.Parallel()
	dsn := ordersDB(t)
	before := catalogFingerprint(t, dsn)
	const alterSpec = "../../examples/orders-alter/spec.yaml"
	code, out, errOut := gsCLI("--dsn", dsn, "plan", "-f", alterSpec)
	if code != 0 {
		t.Fatalf("plan -f %s: exit %d\n%s\n%s", alterSpec, code, out, errOut)
	}
	for _, want := range []string{
		"Order: blue-green only",
		"forward.email fills the NULLs blue has: NOT NULL on green only",
		"the index is built on green",
		"Nothing blocking. Nothing was changed. Next: greenswap sync -f " + alterSpec,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if got := catalogFingerprint(t, dsn); got != before {
		t.Fatal("plan -f of the alter: spec changed the database")
	}
	s, err := spec.LoadSpecFile(alterSpec)
	if err != nil {
		t.Fatal(err)
	}
	env, err := runner.Connect(context.Background(), dsn, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	resolved, _, err := runner.ResolveAlterSpec(context.Background(), env, s, 0)
	if err != nil {
		t.Fatal(err)
	}
	hand, err := spec.LoadSpecFile(exampleSpec)
	if err != nil {
		t.Fatal(err)
	}
	got, want := greenShape(t, dsn, "derived_green", resolved.Target), greenShape(t, dsn, "hand_green", hand.Target)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("derived green\n%v\nhand-written green\n%v", got, want)
	}
	if fmt.Sprint(resolved.Forward) != fmt.Sprint(hand.Forward) || fmt.Sprint(resolved.Reverse) != fmt.Sprint(hand.Reverse) {
		t.Fatalf("mappings %v %v, hand-written %v %v", resolved.Forward, resolved.Reverse, hand.Forward, hand.Reverse)
	}
}

// TestPlanAlterBadInput: an unknown column, another table, a syntax
// error: one line, exit 2, the database as it was.
func TestPlanAlterBadInput(t *testing.T) {
	t.Parallel()
	dsn := ordersDB(t)
	pgtest.Exec(t, dsn, "CREATE TABLE customers (id int PRIMARY KEY)")
	before := catalogFingerprint(t, dsn)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--alter", "ALTER TABLE orders ALTER COLUMN nope TYPE bigint"}, `column "nope" of relation "orders" does not exist`},
		{[]string{"--alter", "ALTER TABLE orders ADD COLUMN x int; ALTER TABLE customers ADD COLUMN y int"}, "is about \"customers\", not public.orders"},
		{[]string{"--alter", "ALTER TABLE nosuch ADD COLUMN x int"}, `table "public"."nosuch" does not exist`},
		{[]string{"--alter", "ALTER TABLE orders ALTER COLUMN id TYPE bigint USING id +"}, "syntax error"},
		{[]string{"--alter", "ALTER TABLE orders OWNER TO bob"}, `"OWNER TO bob" is not supported`},
		{[]string{"--alter", "ALTER TABLE orders ADD COLUMN x int", "-f", exampleSpec}, "not both"},
		{[]string{"--alter", "ALTER TABLE orders ADD COLUMN x int", "--write-spec", "/tmp/x.yaml"}, "no blue-green spec to write"},
	} {
		code, out, errOut := gsCLI(append([]string{"--dsn", dsn, "plan"}, c.args...)...)
		msg := strings.TrimSpace(errOut)
		if code != 2 || !strings.Contains(msg, c.want) || strings.Count(msg, "\n") > 0 {
			t.Errorf("%v: exit %d, stderr %q (stdout %q), want exit 2 and %q", c.args, code, errOut, out, c.want)
		}
	}
	// sync runs only a blue-green part: an alter: with an in-place step is
	// refused before anything is touched.
	mixed := filepath.Join(t.TempDir(), "mixed.yaml")
	if err := os.WriteFile(mixed, []byte("name: orders_mixed\ntable: public.orders\nalter: ALTER TABLE orders ALTER COLUMN id TYPE bigint, ADD COLUMN note text\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := gsCLI("--dsn", dsn, "sync", "-f", mixed)
	if code != 2 || !strings.Contains(errOut, "mixed.yaml:3: alter: the ALTER has steps that run in place") {
		t.Errorf("sync of an ALTER with in-place steps: exit %d, %q", code, errOut)
	}
	if got := catalogFingerprint(t, dsn); got != before {
		t.Fatalf("bad ALTERs changed the database:\nbefore:\n%s\nafter:\n%s", before, got)
	}
	if _, err := os.Stat("/tmp/x.yaml"); err == nil {
		t.Fatal("--write-spec wrote a file for an in-place-only ALTER")
	}
}

// TestAlterSessionConversionCLI: through the CLI, plan --alter and run
// --alter of a session-dependent type change (timestamptz → date: the
// cast reads TimeZone) exit 3, the hazard named in plan's output and in
// run's one-line error, the database unchanged.
func TestAlterSessionConversionCLI(t *testing.T) {
	t.Parallel()
	dsn := ordersDB(t)
	before := catalogFingerprint(t, dsn)
	const change = "ALTER TABLE orders ALTER COLUMN created_at TYPE date"
	code, out, errOut := gsCLI("--dsn", dsn, "plan", "--alter", change)
	if code != 3 || !strings.Contains(out, "alter_session_dependent_conversion") || !strings.Contains(out, "AT TIME ZONE") {
		t.Errorf("plan --alter: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, out, errOut = gsCLI("--dsn", dsn, "run", "--alter", change, "--until", "synced")
	msg := strings.TrimSpace(errOut)
	if code != 3 || !strings.Contains(msg, "alter_session_dependent_conversion") || strings.Count(msg, "\n") > 0 {
		t.Errorf("run --alter: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if got := catalogFingerprint(t, dsn); got != before {
		t.Fatalf("refused ALTERs changed the database:\nbefore:\n%s\nafter:\n%s", before, got)
	}
}
