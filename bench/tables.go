package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// The tables figure (issue 14): one migration of two linked tables
// (orders and order_items, a foreign key between them) against two
// one-table migrations of the same tables, each on its own clone of one
// seeded database, in the same run.

// tablesOrders are the orders of the tables figure (BENCH_ROWS / 2, with
// two items each: BENCH_ROWS items).
func tablesOrders(rows int64) int64 { return max(rows/2, 500) }

const tablesOrdersTarget = `    target:
      ddl: |
        CREATE TABLE orders (
          id          bigint PRIMARY KEY,
          customer_id integer NOT NULL,
          amount      integer NOT NULL,
          created_at  timestamptz NOT NULL DEFAULT now()
        )
    reverse:
      id: id::int
`

const tablesItemsTarget = `    target:
      ddl: |
        CREATE TABLE order_items (
          id       bigint PRIMARY KEY,
          order_id bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
          sku      text NOT NULL,
          qty      integer NOT NULL
        )
      indexes:
        - CREATE INDEX order_items_order_idx ON order_items (order_id)
    reverse:
      id: id::int
      order_id: order_id::int
`

// tablesSpecs are the linked migration's spec and the two one-table ones
// (the same targets, as a member and alone).
func tablesSpecs() (linked, orders, items string) {
	linked = "name: tables\nmode: trigger\ntables:\n  - table: public.orders\n" + tablesOrdersTarget +
		"  - table: public.order_items\n" + tablesItemsTarget
	orders = "name: tables_orders\nmode: trigger\ntable: public.orders\n" + unindent(tablesOrdersTarget)
	items = "name: tables_items\nmode: trigger\ntable: public.order_items\n" + unindent(tablesItemsTarget)
	return linked, orders, items
}

// unindent takes a member's fields (indented under "- table:") to the top level.
func unindent(s string) string {
	return strings.ReplaceAll("\n"+s, "\n    ", "\n")[1:]
}

func tablesSeedSQL(orders int64) []string {
	return []string{
		`CREATE TABLE orders (
			id          serial PRIMARY KEY,
			customer_id integer NOT NULL,
			amount      integer NOT NULL,
			created_at  timestamptz NOT NULL DEFAULT now()
		)`,
		`CREATE TABLE order_items (
			id       serial PRIMARY KEY,
			order_id integer NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
			sku      text NOT NULL,
			qty      integer NOT NULL
		)`,
		fmt.Sprintf(`INSERT INTO orders (id, customer_id, amount, created_at)
		SELECT g, 1 + (g::bigint * 7919) %% 50000, 1 + (g::bigint * 31) %% 100000, timestamptz '2024-01-01' + g * interval '1 second'
		FROM generate_series(1, %d) g`, orders),
		fmt.Sprintf(`INSERT INTO order_items (order_id, sku, qty)
		SELECT o, 'sku-' || (o %% 5000) || '-' || k, k FROM generate_series(1, %d) o, generate_series(1, 2) k`, orders),
		`CREATE INDEX order_items_order_idx ON order_items (order_id)`,
		fmt.Sprintf(`SELECT setval(pg_get_serial_sequence('orders', 'id'), %d)`, orders),
		`VACUUM (FREEZE, ANALYZE) orders, order_items`,
	}
}

// runTables measures the tables figure.
func (b *bench) runTables(ctx context.Context) {
	fig := b.figure("sync of two linked tables, one migration (orders + order_items)", "≈ 1.0× (one migration costs no more than two)")
	if err := b.tablesFigure(ctx, fig); err != nil {
		mark(err, fig)
	}
}

func (b *bench) tablesFigure(ctx context.Context, fig *Figure) error {
	orders := tablesOrders(b.rows)
	linked, one1, one2 := tablesSpecs()
	paths := map[string]string{}
	for name, body := range map[string]string{"tables.yaml": linked, "tables_orders.yaml": one1, "tables_items.yaml": one2} {
		p := filepath.Join(b.tmp, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			return err
		}
		paths[name] = p
	}
	b.logf("tables: seeding %s orders with 2 items each", fmtRows(orders))
	dsn, err := b.cluster.CreateDatabase(ctx, "bench_tables")
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := execAll(ctx, dsn, tablesSeedSQL(orders)...); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	b.logf("  seeded in %s", fmtDur(time.Since(t0)))
	// Each sync on its own copy of the same bytes; the seed is not used.
	runs := []struct {
		db, spec, migration string
		took                time.Duration
	}{
		{db: "bench_tables_orders", spec: "tables_orders.yaml", migration: "tables_orders"},
		{db: "bench_tables_items", spec: "tables_items.yaml", migration: "tables_items"},
		{db: "bench_tables_linked", spec: "tables.yaml", migration: "tables"},
	}
	dsns := make([]string, len(runs))
	for i, r := range runs {
		if dsns[i], err = b.clone(ctx, "bench_tables", r.db); err != nil {
			return err
		}
	}
	b.drop("bench_tables")
	for i := range runs {
		r := &runs[i]
		if err := execAll(ctx, dsns[i], "CHECKPOINT"); err != nil {
			return err
		}
		b.logf("greenswap sync -f %s", r.spec)
		res, err := b.syncRun(ctx, dsns[i], paths[r.spec])
		if err != nil {
			return fmt.Errorf("%s: %w", r.spec, err)
		}
		if st, err := tablesState(ctx, dsns[i], r.migration); err != nil || st != "synced" {
			return fmt.Errorf("%s: migration %s is %q after sync (%v)", r.spec, r.migration, st, err)
		}
		r.took = res.Took
		b.logf("  %s", fmtDur(r.took))
		b.drop(r.db)
	}
	sum := runs[0].took + runs[1].took
	fig.Value = fmtDur(runs[2].took)
	fig.Baseline = fmtDur(sum) + " (orders alone + order_items alone)"
	fig.ratio(runs[2].took.Seconds(), sum.Seconds())
	fig.raw("seconds", runs[2].took.Seconds())
	fig.raw("orders_alone_seconds", runs[0].took.Seconds())
	fig.raw("items_alone_seconds", runs[1].took.Seconds())
	fig.raw("orders", float64(orders))
	fig.raw("items", float64(2*orders))
	fig.Note = fmt.Sprintf("wall time of `greenswap sync -f` to synced (process start included), idle tables, %s orders and %s items, each sync on its own clone: "+
		"linked %s; orders alone %s; order_items alone %s. The linked sync copies with the foreign key among the greens dropped and adds it back NOT VALID, then VALIDATEs it in one scan; "+
		"order_items alone has its green's foreign key to orders checked row by row during the copy",
		fmtRows(orders), fmtRows(2*orders), fmtDur(runs[2].took), fmtDur(runs[0].took), fmtDur(runs[1].took))
	return nil
}

func tablesState(ctx context.Context, dsn, name string) (string, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var st string
	err = conn.QueryRow(ctx, `SELECT state FROM greenswap.migrations WHERE name = $1`, name).Scan(&st)
	return st, err
}
