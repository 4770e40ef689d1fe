package alter

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// A table whose name leaves little room under the 63-byte limit, with two
// columns sharing a long prefix.
const (
	longTable = "orders_with_a_rather_long_name_for_testing_limits"
	longColA  = "customer_reference_identifier_primary_a"
	longColB  = "customer_reference_identifier_primary_b"
)

const faithfulSchema = `
CREATE SCHEMA other; CREATE SCHEMA app; CREATE SCHEMA plain;
CREATE TABLE other.parent (id int PRIMARY KEY);
CREATE TABLE app.parent (id int PRIMARY KEY);
INSERT INTO other.parent VALUES (1); INSERT INTO app.parent VALUES (2);
CREATE TABLE app.orders (
    id     int PRIMARY KEY,
    code   text,
    pid    int,
    qid    int,
    amount int,
    CONSTRAINT orders_code_key UNIQUE (code) DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT orders_pid_fkey FOREIGN KEY (pid) REFERENCES other.parent (id) DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE app.` + longTable + ` (id int PRIMARY KEY, ` + longColA + ` int, ` + longColB + ` int, v text);
CREATE TABLE plain.` + longTable + ` (LIKE app.` + longTable + ` INCLUDING ALL);
`

func classifyIn(t *testing.T, pool *pgxpool.Pool, table spec.QualifiedName, sql string) *Plan {
	t.Helper()
	ctx := context.Background()
	stmts, err := Parse(sql)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "SET LOCAL search_path TO pg_catalog, pg_temp"); err != nil {
		t.Fatal(err)
	}
	blue, err := shadow.LoadTable(ctx, tx, table)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Classify(ctx, tx, blue, stmts)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return p
}

// constraintDefs is rel's constraints as "name: definition", rendered
// with no user schema on the path (every reference qualified).
func constraintDefs(t *testing.T, pool *pgxpool.Pool, rel string) map[string]string {
	t.Helper()
	ctx := context.Background()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SET search_path TO pg_catalog"); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = conn.Exec(ctx, "RESET search_path") }()
	rows, err := conn.Query(ctx, `SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = $1::regclass`, rel)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var n, d string
		if err := rows.Scan(&n, &d); err != nil {
			t.Fatal(err)
		}
		out[n] = d
	}
	return out
}

// TestDerivedDDLFaithful: green's derived DDL keeps what the table and
// the ALTER say. A DEFERRABLE INITIALLY DEFERRED unique and foreign key of
// blue, and one the ALTER adds, are deferrable on green; a foreign key to
// other.parent stays on other.parent although app.parent (the app schema,
// first on green's path) has the same name, and the ALTER's unqualified
// REFERENCES parent is the app schema's table the ALTER means, written
// qualified. An in-place ADD UNIQUE … DEFERRABLE stays deferrable. The
// names greenswap gives unnamed foreign keys on a table near the 63-byte
// limit are the ones PostgreSQL gives the plain ALTER (distinct, label
// kept), and the SET NOT NULL check's name keeps its label.
func TestDerivedDDLFaithful(t *testing.T) {
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, faithfulSchema)
	ctx := context.Background()
	orders := spec.QualifiedName{Schema: "app", Name: "orders"}

	p := classifyIn(t, pool, orders, "ALTER TABLE app.orders ALTER COLUMN amount TYPE bigint, "+
		"ADD CONSTRAINT orders_qid_fkey FOREIGN KEY (qid) REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED")
	if p.BlueGreen == nil {
		t.Fatalf("no blue-green part: %+v", p.Steps)
	}
	// Create green as setup does: green's schema first, then the app's.
	stmts := append([]string{"CREATE SCHEMA g", "SET LOCAL search_path TO g, app"}, p.BlueGreen.Target.DDL)
	stmts = append(stmts, p.BlueGreen.Target.Indexes...)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	green := constraintDefs(t, pool, "g.orders")
	want := map[string]string{
		"orders_code_key": "UNIQUE (code) DEFERRABLE INITIALLY DEFERRED",
		"orders_pid_fkey": "FOREIGN KEY (pid) REFERENCES other.parent(id) DEFERRABLE INITIALLY DEFERRED",
		"orders_qid_fkey": "FOREIGN KEY (qid) REFERENCES app.parent(id) DEFERRABLE INITIALLY DEFERRED",
	}
	for n, d := range want {
		if green[n] != d {
			t.Errorf("green's %s is %q, want %q (DDL:\n%s)", n, green[n], d, p.BlueGreen.Target.DDL)
		}
	}

	// In place: the unique stays deferrable; the FK's reference qualified.
	p = classifyIn(t, pool, orders, "ALTER TABLE app.orders ADD CONSTRAINT orders_amount_key UNIQUE (amount) DEFERRABLE INITIALLY DEFERRED, "+
		"ADD FOREIGN KEY (qid) REFERENCES parent (id)")
	var sqls []string
	for _, st := range p.Steps {
		sqls = append(sqls, st.SQL...)
	}
	for _, s := range sqls {
		if _, err := pool.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	blue := constraintDefs(t, pool, "app.orders")
	if d := blue["orders_amount_key"]; d != "UNIQUE (amount) DEFERRABLE INITIALLY DEFERRED" {
		t.Errorf("in place: orders_amount_key is %q (SQL %q)", d, sqls)
	}
	if d := blue["orders_qid_fkey"]; d != "FOREIGN KEY (qid) REFERENCES app.parent(id)" {
		t.Errorf("in place: orders_qid_fkey is %q (SQL %q)", d, sqls)
	}

	// Names at the limit: as PostgreSQL names them on the plain twin.
	const fks = ` ADD FOREIGN KEY (` + longColA + `) REFERENCES other.parent (id), ADD FOREIGN KEY (` + longColB + `) REFERENCES other.parent (id)`
	p = classifyIn(t, pool, spec.QualifiedName{Schema: "app", Name: longTable}, "ALTER TABLE app."+longTable+fks+", ALTER COLUMN v SET NOT NULL")
	pgtest.Exec(t, dsn, "ALTER TABLE plain."+longTable+fks)
	plain := constraintDefs(t, pool, "plain."+longTable)
	var names []string
	for _, st := range p.Steps {
		if st.Sub.Kind == AddForeignKey {
			names = append(names, st.Sub.Constraint)
			if plain[st.Sub.Constraint] == "" {
				t.Errorf("greenswap names the FK %q; PostgreSQL's names: %v", st.Sub.Constraint, plain)
			}
		}
		if st.Sub.Kind == SetNotNull && !strings.Contains(st.SQL[0], "_gs_not_null"+`"`) {
			t.Errorf("the NOT NULL check's name lost its label: %s", st.SQL[0])
		}
	}
	if len(names) != 2 || names[0] == names[1] {
		t.Errorf("FK names %q", names)
	}
	for _, n := range names {
		if len(n) > spec.MaxIdentLen {
			t.Errorf("%q is longer than %d bytes", n, spec.MaxIdentLen)
		}
	}

	// Index names PostgreSQL chose on the copy (whose schema holds only
	// the copy) that another relation of blue's schema already has: named
	// as PostgreSQL names them on blue, in place and on green.
	var taken string
	pgtest.Exec(t, dsn, "CREATE INDEX ON plain."+longTable+" ("+longColA+")")
	if err := pool.QueryRow(ctx, `SELECT relname::text FROM pg_class WHERE relnamespace = 'plain'::regnamespace AND relkind = 'i' AND relname::text LIKE '%idx'`).Scan(&taken); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, `CREATE TABLE app.`+db.Ident(taken)+` (x int); CREATE TABLE app.orders_amount_idx (x int)`)
	p = classifyIn(t, pool, spec.QualifiedName{Schema: "app", Name: longTable}, "CREATE INDEX ON app."+longTable+" ("+longColA+")")
	for _, s := range p.Steps[0].SQL {
		if _, err := pool.Exec(ctx, s); err != nil {
			t.Fatalf("in place: %s: %v", s, err)
		}
	}
	pgtest.Exec(t, dsn, "DROP INDEX plain."+db.Ident(taken)+"; CREATE TABLE plain."+db.Ident(taken)+" (x int); CREATE INDEX ON plain."+longTable+" ("+longColA+")")
	var ours, theirs string
	if err := pool.QueryRow(ctx, `SELECT string_agg(relname::text, ',' ORDER BY relname) FROM pg_class WHERE relnamespace = $1::regnamespace AND relkind = 'i' AND relname::text LIKE '%idx%'`, "app").Scan(&ours); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT string_agg(relname::text, ',' ORDER BY relname) FROM pg_class WHERE relnamespace = $1::regnamespace AND relkind = 'i' AND relname::text LIKE '%idx%'`, "plain").Scan(&theirs); err != nil {
		t.Fatal(err)
	}
	if ours != theirs {
		t.Errorf("index named %s in place, PostgreSQL names it %s", ours, theirs)
	}
	p = classifyIn(t, pool, orders, "ALTER TABLE app.orders ALTER COLUMN amount TYPE bigint; CREATE INDEX ON app.orders (amount)")
	if len(p.BlueGreen.Target.Indexes) != 1 || !strings.Contains(p.BlueGreen.Target.Indexes[0], "INDEX orders_amount_idx1 ON") {
		t.Errorf("green's index: %q, want orders_amount_idx1 (orders_amount_idx is a table of app)", p.BlueGreen.Target.Indexes)
	}
}
