package runner

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/shadow"
)

// setupForTest adopts and creates green for spec in one committed transaction.
func setupForTest(t *testing.T, dsn string, specYAML string) *Build {
	t.Helper()
	ctx := context.Background()
	spec, err := shadow.ParseSpec([]byte(specYAML), "test.yaml", "yaml")
	if err != nil {
		t.Fatal(err)
	}
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
	n := shadow.NamesFor(spec.Name, spec.AppTable())
	if _, err := adoptTx(ctx, tx, spec, n, pgtest.ServerMajor(t)); err != nil {
		t.Fatal(err)
	}
	b, err := createGreenTx(ctx, tx, spec, n)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSetupForwardTriggerKeepsGreenEqual(t *testing.T) {
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `
		CREATE TABLE orders (id serial PRIMARY KEY, email text, amount int NOT NULL, note text);
		INSERT INTO orders (email, amount) VALUES ('a@x', 1), (NULL, 2);`)
	setupForTest(t, dsn, `
name: o2
table: public.orders
target:
  ddl: |
    CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL, amount numeric(12,2) NOT NULL, note text)
forward:
  email: coalesce(email, 'unknown@invalid')
reverse:
  amount: round(amount)::int
`)
	ctx := context.Background()
	// Writes through the app-name view reach blue and, by trigger, green.
	pgtest.Exec(t, dsn, `
		INSERT INTO orders (email, amount) VALUES ('c@x', 3);
		INSERT INTO gs_o2_green.orders SELECT id, coalesce(email, 'unknown@invalid'), amount, note FROM gs_o2_blue.orders ON CONFLICT DO NOTHING;
		UPDATE orders SET amount = 20, note = repeat('x', 100000) WHERE id = 2;
		UPDATE orders SET id = 10 WHERE id = 1;
		DELETE FROM orders WHERE id = 3;
		INSERT INTO orders (email, amount) VALUES (NULL, 4);`)
	var diff int
	err := pool.QueryRow(ctx, `SELECT count(*) FROM (
		(SELECT id::bigint, coalesce(email, 'unknown@invalid'), amount::numeric(12,2), note FROM gs_o2_blue.orders
		 EXCEPT SELECT * FROM gs_o2_green.orders)
		UNION ALL
		(SELECT * FROM gs_o2_green.orders EXCEPT
		 SELECT id::bigint, coalesce(email, 'unknown@invalid'), amount::numeric(12,2), note FROM gs_o2_blue.orders)) d`).Scan(&diff)
	if err != nil {
		t.Fatal(err)
	}
	if diff != 0 {
		t.Fatalf("green differs from blue in %d rows", diff)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM gs_o2_green.orders`).Scan(&n); err != nil || n != 3 {
		t.Fatalf("green rows = %d, %v; want 3", n, err)
	}
}
