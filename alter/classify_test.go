package alter

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

const classifySchema = `
CREATE TABLE public.orders (
    id         serial PRIMARY KEY,
    email      text,
    code       varchar(10),
    price      numeric(8,2),
    amount     int NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_code_idx ON public.orders (code);
CREATE TABLE public.customers (id int PRIMARY KEY);
INSERT INTO public.orders (email, code, price, amount) SELECT 'a' || g, 'c' || g, g, g FROM generate_series(1, 50) g;
`

// classify parses and classifies sql against public.orders in a
// transaction it rolls back.
func classify(t *testing.T, pool *pgxpool.Pool, sql string) (*Plan, error) {
	t.Helper()
	ctx := context.Background()
	stmts, err := Parse(sql)
	if err != nil {
		return nil, err
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	blue, err := shadow.LoadTable(ctx, tx, spec.QualifiedName{Schema: "public", Name: "orders"})
	if err != nil {
		t.Fatal(err)
	}
	return Classify(ctx, tx, blue, stmts)
}

// TestClassifyRehearsal: the strategy, rewrite and lock of each
// subcommand come from running it on the scratch copy; each case below is
// one PostgreSQL would decide the other way for a neighbouring input.
func TestClassifyRehearsal(t *testing.T) {
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, classifySchema)
	cases := []struct {
		sql      string
		strategy Strategy
		rewrite  bool
		mode     string
		sqlHas   string
	}{
		{"ALTER TABLE orders ALTER COLUMN code TYPE varchar(20)", InPlace, false, "AccessExclusiveLock", "TYPE varchar(20)"},
		{"ALTER TABLE orders ALTER COLUMN code TYPE varchar(5)", BlueGreen, true, "AccessExclusiveLock", ""},
		{"ALTER TABLE orders ALTER COLUMN code TYPE text", InPlace, false, "AccessExclusiveLock", ""},
		{"ALTER TABLE orders ALTER COLUMN id TYPE bigint", BlueGreen, true, "AccessExclusiveLock", ""},
		{"ALTER TABLE orders ALTER COLUMN price TYPE numeric(12,2)", InPlace, false, "AccessExclusiveLock", ""},
		{"ALTER TABLE orders ALTER COLUMN price TYPE numeric(8,4)", BlueGreen, true, "AccessExclusiveLock", ""},
		{"ALTER TABLE orders ADD COLUMN seen timestamptz DEFAULT now()", InPlace, false, "AccessExclusiveLock", ""},
		{"ALTER TABLE orders ADD COLUMN r float8 DEFAULT random()", BlueGreen, true, "AccessExclusiveLock", ""},
		{"ALTER TABLE orders ADD COLUMN note text", InPlace, false, "AccessExclusiveLock", ""},
		{"ALTER TABLE orders DROP COLUMN code", InPlace, false, "AccessExclusiveLock", ""},
		{"ALTER TABLE orders ALTER COLUMN amount SET DEFAULT 0", InPlace, false, "AccessExclusiveLock", ""},
		{"ALTER TABLE orders ALTER COLUMN created_at DROP DEFAULT", InPlace, false, "AccessExclusiveLock", ""},
		{"ALTER TABLE orders ALTER COLUMN amount DROP NOT NULL", InPlace, false, "AccessExclusiveLock", ""},
		{"ALTER TABLE orders ALTER COLUMN code SET STATISTICS 500", InPlace, false, "ShareUpdateExclusiveLock", ""},
		{"ALTER TABLE orders SET (fillfactor = 80)", InPlace, false, "ShareUpdateExclusiveLock", ""},
		{"ALTER TABLE orders ALTER COLUMN email SET NOT NULL", CheckThenSetNotNull, false, "AccessExclusiveLock", "IS NOT NULL) NOT VALID"},
		{"ALTER TABLE orders ADD CHECK (amount >= 0)", NotValidThenValidate, false, "AccessExclusiveLock", `ADD CONSTRAINT "orders_amount_check" CHECK (amount >= 0) NOT VALID`},
		{"ALTER TABLE orders ADD CONSTRAINT fk_c FOREIGN KEY (amount) REFERENCES customers (id)", NotValidThenValidate, false, "ShareRowExclusiveLock", `VALIDATE CONSTRAINT "fk_c"`},
		{"CREATE INDEX ON orders (email)", Concurrently, false, "ShareUpdateExclusiveLock", `CREATE INDEX CONCURRENTLY orders_email_idx ON "public"."orders"`},
		{"ALTER TABLE orders ADD UNIQUE (email)", Concurrently, false, "ShareUpdateExclusiveLock", `UNIQUE USING INDEX "orders_email_key"`},
		{"ALTER TABLE orders RENAME COLUMN email TO mail", InPlace, false, "AccessExclusiveLock", "RENAME COLUMN"},
		{"ALTER TABLE orders RENAME TO purchases", InPlace, false, "AccessExclusiveLock", `ALTER TABLE "public"."orders" RENAME TO purchases`},
	}
	for _, c := range cases {
		t.Run(c.sql, func(t *testing.T) {
			plan, err := classify(t, pool, c.sql)
			if err != nil {
				t.Fatal(err)
			}
			if len(plan.Steps) != 1 {
				t.Fatalf("%d steps", len(plan.Steps))
			}
			st := plan.Steps[0]
			if st.Strategy != c.strategy || st.Rewrite != c.rewrite || st.Lock.Mode != c.mode {
				t.Fatalf("got %s rewrite=%v lock %s (%s), want %s rewrite=%v lock %s", st.Strategy, st.Rewrite, st.Lock.Mode, st.Why, c.strategy, c.rewrite, c.mode)
			}
			if c.sqlHas != "" && !strings.Contains(strings.Join(st.SQL, "\n"), c.sqlHas) {
				t.Fatalf("SQL %q lacks %q", st.SQL, c.sqlHas)
			}
			if (st.Strategy == BlueGreen) != (plan.BlueGreen != nil) {
				t.Fatalf("strategy %s, derived spec %v", st.Strategy, plan.BlueGreen)
			}
		})
	}
	// The rehearsal changed nothing: the table is as before, no temp table
	// is left in any session's schema.
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_class WHERE relpersistence = 't'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d temporary relations left", n)
	}
}

// TestClassifyBadInput: an unknown column, another table and bad syntax
// are one-line errors with exit 2.
func TestClassifyBadInput(t *testing.T) {
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, classifySchema)
	for _, c := range []struct{ sql, want string }{
		{"ALTER TABLE orders ALTER COLUMN nope TYPE bigint", `column "nope"`},
		{"ALTER TABLE customers ADD COLUMN x int", "not public.orders"},
		{"ALTER TABLE orders ALTER COLUMN id TYPE bigint USING (", ""},
		{"ALTER TABLE orders ADD COLUMN x nosuchtype", `type "nosuchtype" does not exist`},
		{"ALTER TABLE orders ADD FOREIGN KEY (nope) REFERENCES customers (id)", `column "nope"`},
	} {
		_, err := classify(t, pool, c.sql)
		if err == nil {
			t.Fatalf("%s: no error", c.sql)
		}
		if exitcode.Of(err) != exitcode.BadInput || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: exit %d: %v", c.sql, exitcode.Of(err), err)
		}
	}
}

// TestClassifyMixed: the order of a mixed ALTER, the mixes that must be
// split, and the derived spec (green read back, USING → forward, a cast
// back → reverse, an index build moved to green).
func TestClassifyMixed(t *testing.T) {
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, classifySchema)
	plan, err := classify(t, pool, `ALTER TABLE orders ALTER COLUMN amount TYPE numeric(12,2) USING amount / 100.0, ADD COLUMN note text;
CREATE INDEX orders_note_idx ON orders (note)`)
	if err != nil {
		t.Fatal(err)
	}
	if plan.Order != InPlaceFirst || plan.Steps[0].Strategy != BlueGreen || plan.Steps[1].Strategy != InPlace || plan.Steps[2].Strategy != BlueGreen {
		t.Fatalf("order %s, steps %+v", plan.Order, plan.Steps)
	}
	s := plan.BlueGreen
	if s == nil || s.Forward["amount"] != "amount / 100.0" || s.Reverse["amount"] != `("amount")::integer` {
		t.Fatalf("derived spec %+v", s)
	}
	for _, want := range []string{`"amount" numeric(12,2) NOT NULL`, `"note" text`, `"id" integer NOT NULL,`, `CONSTRAINT "orders_pkey" PRIMARY KEY (id)`} {
		if !strings.Contains(s.Target.DDL, want) {
			t.Errorf("green DDL lacks %q:\n%s", want, s.Target.DDL)
		}
	}
	if strings.Contains(s.Target.DDL, "nextval") {
		t.Errorf("green draws from blue's sequence through setup, not its own default:\n%s", s.Target.DDL)
	}
	if strings.Join(s.Target.Indexes, ";") != `CREATE INDEX orders_code_idx ON "orders" USING btree (code);CREATE INDEX orders_note_idx ON "orders" USING btree (note)` {
		t.Errorf("green indexes %q", s.Target.Indexes)
	}
	for _, c := range []struct{ sql, want string }{
		{"ALTER TABLE orders ALTER COLUMN id TYPE bigint; ALTER TABLE orders RENAME TO purchases", "rename the table in its own ALTER"},
		{"ALTER TABLE orders ALTER COLUMN amount TYPE bigint USING price::bigint, DROP COLUMN price", "a USING expression reads"},
		{"ALTER TABLE orders ALTER COLUMN id TYPE bigint; ALTER TABLE orders RENAME COLUMN email TO mail", "give the rename its own ALTER"},
	} {
		_, err := classify(t, pool, c.sql)
		if err == nil || exitcode.Of(err) != exitcode.BadInput || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.sql, err, c.want)
		}
	}
}
