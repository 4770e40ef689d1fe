package trigger_test

import (
	"context"
	"testing"

	"github.com/greenswap/greenswap/internal/pgtest"
)

// Trap 13 (issue 11.2): a key UPDATE through one shape is a key UPDATE on
// the other. line_items references the table with ON UPDATE CASCADE ON
// DELETE CASCADE: before cutover it references blue, and cutover moves the
// foreign key to green (cutover.PlanSwap's MovedFKs), so the two re-keys
// below each reach the referenced side through the sync trigger: one by a
// client pinned to green's schema (synced, before cutover: reverse trigger),
// one by an old client pinned to blue's schema (after cutover: forward
// trigger). The line items follow the key and none is deleted; a column only
// green has (with a default) and one only blue has keep their values.
func TestTrap13KeyUpdateStaysUpdate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := secureMigrate(t, `
		CREATE TABLE orders (id int PRIMARY KEY, email text NOT NULL, amount int NOT NULL, blue_only text);
		INSERT INTO orders SELECT g, 'u' || g, g, NULL FROM generate_series(1, 20) g;
		CREATE TABLE line_items (id serial PRIMARY KEY, order_id int NOT NULL REFERENCES orders ON UPDATE CASCADE ON DELETE CASCADE, qty int NOT NULL);
		INSERT INTO line_items (order_id, qty) SELECT 1 + g % 20, g FROM generate_series(1, 100) g;`, `
name: o
table: orders
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL, amount numeric(12,2) NOT NULL, green_only text NOT NULL DEFAULT 'g-default')
`, false)
	items := func(order int64) int64 {
		return s.count(t, `SELECT count(*) FROM line_items WHERE order_id = $1`, order)
	}
	total := s.count(t, `SELECT count(*) FROM line_items`)
	n1, n2 := items(1), items(2)
	if n1 == 0 || n2 == 0 {
		t.Fatal("fixture: orders 1 and 2 have no line items")
	}
	s.exec(t, `UPDATE gs_o_green.orders SET green_only = 'kept-g' WHERE id IN (1, 2);
		UPDATE gs_o_blue.orders SET blue_only = 'kept-b' WHERE id IN (1, 2)`)

	check := func(phase string, from, to int64, n int64) {
		t.Helper()
		if got := items(to); got != n || items(from) != 0 {
			t.Fatalf("%s: order %d has %d line items (want %d), order %d has %d (want 0)", phase, to, got, n, from, items(from))
		}
		if got := s.count(t, `SELECT count(*) FROM line_items`); got != total {
			t.Fatalf("%s: %d line items, want %d: the re-key deleted some", phase, got, total)
		}
		if got := s.count(t, `SELECT count(*) FROM gs_o_green.orders WHERE id = $1 AND green_only = 'kept-g'`, to); got != 1 {
			t.Fatalf("%s: green's own column of order %d was reset", phase, to)
		}
		if got := s.count(t, `SELECT count(*) FROM gs_o_blue.orders WHERE id = $1 AND blue_only = 'kept-b'`, to); got != 1 {
			t.Fatalf("%s: blue's own column of order %d was reset", phase, to)
		}
		if d := s.diff(t, `SELECT id::bigint, email, amount::numeric(12,2) FROM gs_o_blue.orders`, `SELECT id, email, amount FROM gs_o_green.orders`); d != 0 {
			t.Fatalf("%s: %d rows differ", phase, d)
		}
	}
	green := s.as(t, s.owner)
	if _, err := green.Exec(ctx, `SET search_path = gs_o_green; UPDATE orders SET id = 1001 WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	check("through green before cutover", 1, 1001, n1)

	s.cutover(t)
	if n := s.count(t, `SELECT count(*) FROM pg_constraint WHERE conrelid = 'line_items'::regclass AND contype = 'f' AND confrelid = 'gs_o_green.orders'::regclass`); n != 1 {
		t.Fatal("cutover did not move line_items' foreign key to green: this test no longer covers the forward direction")
	}
	blue := s.as(t, s.owner)
	if _, err := blue.Exec(ctx, `SET search_path = gs_o_blue; UPDATE orders SET id = 2002 WHERE id = 2`); err != nil {
		t.Fatal(err)
	}
	check("through blue after cutover", 2, 2002, n2)
}

// Issue 11.6: writes one level inside a sync write are mirrored, not
// swallowed by the echo guard. A self-referencing ON DELETE CASCADE on blue
// (green has no such key), fired by a delete through green; and a user
// trigger on blue that writes another blue row, fired by an insert through
// green. Both land on blue at trigger depth 2, one deeper than the reverse
// trigger's own write, and reach green through the forward trigger.
func TestNestedWritesInsideSyncWriteAreMirrored(t *testing.T) {
	t.Parallel()
	m := migrate(t, `
		CREATE TABLE orders (id bigserial PRIMARY KEY, parent_id bigint REFERENCES orders ON DELETE CASCADE, note text);
		INSERT INTO orders (note) SELECT 'root' || g FROM generate_series(1, 10) g;
		INSERT INTO orders (parent_id, note) SELECT 1 + g % 3, 'child' FROM generate_series(1, 9) g;
		INSERT INTO orders (parent_id, note) SELECT id, 'grandchild' FROM orders WHERE note = 'child';
		CREATE FUNCTION spawn() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.note = 'spawn' THEN
				INSERT INTO gs_o_blue.orders (parent_id, note) VALUES (NEW.id, 'spawned');
			END IF;
			RETURN NULL;
		END$$;
		CREATE TRIGGER spawn AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION spawn();`, `
name: o
table: orders
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, parent_id bigint, note text)
`, false)
	blue, green := `SELECT id, parent_id, note FROM gs_o_blue.orders`, `SELECT id, parent_id, note FROM gs_o_green.orders`
	m.exec(t, `DELETE FROM gs_o_green.orders WHERE id = 2`)
	if n := m.count(t, `SELECT count(*) FROM gs_o_green.orders WHERE note IN ('child', 'grandchild')`); n != 12 {
		t.Fatalf("green has %d children and grandchildren, want 12 (the 6 under order 2 gone)", n)
	}
	if d := m.diff(t, blue, green); d != 0 {
		t.Fatalf("after a delete through green, %d rows differ: blue's ON DELETE CASCADE was not mirrored", d)
	}
	m.exec(t, `INSERT INTO gs_o_green.orders (id, note) VALUES (500, 'spawn')`)
	if n := m.count(t, `SELECT count(*) FROM gs_o_green.orders WHERE parent_id = 500 AND note = 'spawned'`); n != 1 {
		t.Fatal("the row blue's user trigger wrote inside the sync write did not reach green")
	}
	if d := m.diff(t, blue, green); d != 0 {
		t.Fatalf("after an insert through green, %d rows differ", d)
	}
}

// The same re-key through green in logical mode, whose reverse function
// (trigger/logical.go) updates blue in place: the line items referencing
// blue follow the key, blue's own column keeps its value, and a key-keeping
// UPDATE through green still updates blue's row in place.
func TestTrap13KeyUpdateStaysUpdateLogical(t *testing.T) {
	t.Parallel()
	if pgtest.ServerMajor(t) < 14 {
		t.Skip("logical mode needs PostgreSQL 14+")
	}
	// Slots are cluster-wide: a migration name no other test of this package uses.
	m := migrate(t, `
		CREATE TABLE orders (id int PRIMARY KEY, email text NOT NULL, blue_only text DEFAULT 'b-default');
		INSERT INTO orders (id, email) SELECT g, 'u' || g FROM generate_series(1, 20) g;
		UPDATE orders SET blue_only = 'kept-b' WHERE id = 1;
		CREATE TABLE line_items (id serial PRIMARY KEY, order_id int NOT NULL REFERENCES orders ON UPDATE CASCADE ON DELETE CASCADE);
		INSERT INTO line_items (order_id) SELECT 1 + g % 4 FROM generate_series(1, 40) g;`, `
name: olk
table: orders
mode: logical
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL)
`, false)
	n1 := m.count(t, `SELECT count(*) FROM line_items WHERE order_id = 1`)
	m.exec(t, `UPDATE gs_olk_green.orders SET id = 1001 WHERE id = 1; UPDATE gs_olk_green.orders SET email = 'in-place' WHERE id = 1001`)
	if got := m.count(t, `SELECT count(*) FROM line_items WHERE order_id = 1001`); got != n1 || n1 == 0 {
		t.Fatalf("order 1001 has %d line items, want %d", got, n1)
	}
	if got := m.count(t, `SELECT count(*) FROM line_items`); got != 40 {
		t.Fatalf("%d line items, want 40: the re-key deleted some", got)
	}
	if got := m.count(t, `SELECT count(*) FROM gs_olk_blue.orders WHERE id = 1001 AND blue_only = 'kept-b' AND email = 'in-place'`); got != 1 {
		t.Fatal("blue's row was not re-keyed in place with its own column kept")
	}
}
