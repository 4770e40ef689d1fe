package trigger_test

// Targeted tests for the correctness traps of design.md (1–5) against a
// real PostgreSQL. Each sets up a migration through the real sync path
// (runner.Sync), then checks green against blue with SQL written here by
// hand, never with greenswap's own comparison code.

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/internal/testkit/runsync"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	gssync "github.com/greenswap/greenswap/sync"
	"github.com/greenswap/greenswap/trigger"
)

type mig struct {
	pool  *pgxpool.Pool
	dsn   string
	spec  *spec.Spec
	names shadow.Names
}

// migrate creates the table, then syncs spec: only adopt + green + triggers
// when setupOnly, else all the way to synced (reverse direction on).
func migrate(t *testing.T, tableSQL, specYAML string, setupOnly bool) *mig {
	t.Helper()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, tableSQL)
	spec := runsync.Sync(t, dsn, specYAML, setupOnly)
	return &mig{pool: pool, dsn: dsn, spec: spec, names: shadow.NamesFor(spec.Name, spec.AppTable())}
}

func (m *mig) exec(t *testing.T, sql string) { t.Helper(); pgtest.Exec(t, m.dsn, sql) }

func (m *mig) count(t *testing.T, sql string, args ...any) int64 {
	t.Helper()
	return testkit.Count(t, m.pool, sql, args...)
}

// diff: rows in (blueSQL EXCEPT greenSQL) plus rows in (greenSQL EXCEPT blueSQL).
func (m *mig) diff(t *testing.T, blueSQL, greenSQL string) int64 {
	t.Helper()
	return testkit.Diff(t, m.pool, blueSQL, greenSQL)
}

func (m *mig) backfiller() *gssync.Backfiller {
	ctx := context.Background()
	blue, err := shadow.LoadTable(ctx, m.pool, m.names.Blue)
	if err != nil {
		panic(err)
	}
	green, err := shadow.LoadTable(ctx, m.pool, m.names.Green)
	if err != nil {
		panic(err)
	}
	mp, err := shadow.BuildMapping(m.spec, blue, green)
	if err != nil {
		panic(err)
	}
	return &gssync.Backfiller{Pool: m.pool, Names: m.names, Mapping: mp, Blue: blue, Log: zerolog.Nop(),
		Checkpoint: func(context.Context, pgx.Tx, gssync.Checkpoint) error { return nil }}
}

func waitLockWait(t *testing.T, pool *pgxpool.Pool, pid uint32) {
	t.Helper()
	testkit.WaitLockWait(t, pool, pid)
}

const ordersTable = `
	CREATE TABLE orders (id bigserial PRIMARY KEY, email text, amount int NOT NULL, note text);
	INSERT INTO orders (email, amount) SELECT 'u' || g, g FROM generate_series(1, 100) g;`

const ordersSpec = `
name: o
table: orders
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL, amount numeric(12,2) NOT NULL, note text)
forward:
  email: coalesce(email, '-')
reverse:
  amount: round(amount)::int
`

const (
	ordersBlue  = `SELECT id, coalesce(email, '-'), amount::numeric(12,2), note FROM gs_o_blue.orders`
	ordersGreen = `SELECT id, email, amount, note FROM gs_o_green.orders`
)

// Trap 1: a row deleted while a batch copies it must not stay in green.
// The DELETE is in flight (its trigger already ran and found nothing in
// green) when the batch starts: a plain INSERT … SELECT would copy the row
// from its snapshot and leave a ghost; the batch's FOR KEY SHARE waits for
// the DELETE and then skips the row.
func TestTrap1GhostRowDuringBackfill(t *testing.T) {
	t.Parallel()
	for _, naive := range []bool{true, false} {
		t.Run(fmt.Sprintf("naive=%v", naive), func(t *testing.T) {
			t.Parallel()
			m := migrate(t, ordersTable, ordersSpec, true)
			ctx := context.Background()
			del, err := m.pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer del.Rollback(ctx)
			if _, err := del.Exec(ctx, `DELETE FROM orders WHERE id = 5`); err != nil {
				t.Fatal(err)
			}
			batch, err := m.pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer batch.Rollback(ctx)
			done := make(chan error, 1)
			go func() {
				if naive {
					// What trap 1 warns about: no row locks. (The sync flag,
					// as the backfill sets it, passes green's write gate.)
					flag, args := trigger.SyncFlagSQL(m.names)
					if _, err := batch.Exec(ctx, flag, args...); err != nil {
						done <- err
						return
					}
					_, err := batch.Exec(ctx, `INSERT INTO gs_o_green.orders SELECT id, coalesce(email, '-'), amount, note
						FROM gs_o_blue.orders WHERE id <= 10 ON CONFLICT DO NOTHING`)
					done <- err
					return
				}
				_, err := m.backfiller().CopyBatch(ctx, batch, nil, 10)
				done <- err
			}()
			if !naive {
				waitLockWait(t, m.pool, batch.Conn().PgConn().PID())
			} else if err := <-done; err != nil {
				t.Fatal(err)
			}
			if err := del.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if !naive {
				if err := <-done; err != nil {
					t.Fatal(err)
				}
			}
			if err := batch.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			ghost := m.count(t, `SELECT count(*) FROM gs_o_green.orders WHERE id = 5`)
			if naive && ghost != 1 {
				t.Fatal("the naive batch left no ghost: this test no longer reproduces trap 1")
			}
			if !naive {
				if ghost != 0 {
					t.Fatal("ghost row 5 in green")
				}
				if n := m.count(t, `SELECT count(*) FROM gs_o_green.orders`); n != 9 {
					t.Fatalf("green has %d rows, want 9", n)
				}
			}
		})
	}
	// The other order (the batch holds its locks first, the DELETE waits
	// and then removes the copy) is TestLockWaiters in package sync.
}

// Trap 2: no echo, and no dropped write. A user trigger on another table
// writes the app table at trigger depth 2: the write must reach green (a
// pg_trigger_depth() guard would drop it). Writes through either side are
// applied to the other exactly once, and the flag is cleared after each
// sync write, so later writes of the same transaction still sync.
func TestTrap2EchoGuard(t *testing.T) {
	t.Parallel()
	m := migrate(t, ordersTable+`
		CREATE TABLE inbox (id serial PRIMARY KEY, email text);
		CREATE FUNCTION inbox_to_orders() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO public.orders (email, amount) VALUES (NEW.email, 7);
			RETURN NULL;
		END$$;
		CREATE TRIGGER inbox_to_orders AFTER INSERT ON inbox FOR EACH ROW EXECUTE FUNCTION inbox_to_orders();
		CREATE TABLE green_inbox (id serial PRIMARY KEY, email text);
		CREATE FUNCTION green_inbox_to_green() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO gs_o_green.orders (email, amount) VALUES (NEW.email, 8);
			RETURN NULL;
		END$$;
		CREATE TRIGGER green_inbox_to_green AFTER INSERT ON green_inbox FOR EACH ROW EXECUTE FUNCTION green_inbox_to_green();`,
		ordersSpec, false)
	m.exec(t, `INSERT INTO inbox (email) VALUES ('depth2@x')`)
	if n := m.count(t, `SELECT count(*) FROM gs_o_green.orders WHERE email = 'depth2@x' AND amount = 7`); n != 1 {
		t.Fatal("a write to blue from a user trigger (depth 2) did not reach green")
	}
	m.exec(t, `INSERT INTO green_inbox (email) VALUES ('green-depth2@x')`)
	if n := m.count(t, `SELECT count(*) FROM gs_o_blue.orders WHERE email = 'green-depth2@x' AND amount = 8`); n != 1 {
		t.Fatal("a write to green from a user trigger (depth 2) did not reach blue")
	}
	// One transaction, writes alternating sides; each is applied to the
	// other side exactly once (an echo would update the origin again).
	ctx := context.Background()
	tx, err := m.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	for _, s := range []string{
		`UPDATE gs_o_green.orders SET note = 'g1' WHERE id = 1`,
		`UPDATE orders SET note = 'b2' WHERE id = 2`,
		`UPDATE gs_o_green.orders SET note = 'g3' WHERE id = 3`,
		`INSERT INTO orders (email, amount) VALUES ('b-new', 1)`,
	} {
		if _, err := tx.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	var blueIns, blueUpd, greenIns, greenUpd int64
	if err := tx.QueryRow(ctx, `SELECT
		(SELECT n_tup_ins FROM pg_stat_xact_user_tables WHERE relid = 'gs_o_blue.orders'::regclass),
		(SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relid = 'gs_o_blue.orders'::regclass),
		(SELECT n_tup_ins FROM pg_stat_xact_user_tables WHERE relid = 'gs_o_green.orders'::regclass),
		(SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relid = 'gs_o_green.orders'::regclass)`).Scan(&blueIns, &blueUpd, &greenIns, &greenUpd); err != nil {
		t.Fatal(err)
	}
	// Blue: 3 updates (1 direct, 2 applied from green) + 1 insert; green:
	// 2 direct updates + 1 applied by upsert (ON CONFLICT DO UPDATE) + 1 insert.
	if blueIns != 1 || blueUpd != 3 || greenIns != 1 || greenUpd != 3 {
		t.Fatalf("blue ins/upd %d/%d, green ins/upd %d/%d; want 1/3 and 1/3 (no echo)", blueIns, blueUpd, greenIns, greenUpd)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if d := m.diff(t, ordersBlue, ordersGreen); d != 0 {
		t.Fatalf("%d rows differ", d)
	}
	var flag string
	if err := m.pool.QueryRow(ctx, `SELECT coalesce(current_setting('greenswap.sync_o', true), '')`).Scan(&flag); err != nil || flag != "" {
		t.Fatalf("sync flag %q outside a sync write: %v", flag, err)
	}
}

// Trap 3: key updates delete the row under the old key and upsert the new
// one, in both directions; composite keys compare as row values; and a
// green key that is not blue's key is followed too.
func TestTrap3KeyUpdates(t *testing.T) {
	t.Parallel()
	t.Run("composite", func(t *testing.T) {
		t.Parallel()
		m := migrate(t, `
			CREATE TABLE items (tenant int, id int, v text, PRIMARY KEY (tenant, id));
			INSERT INTO items SELECT g % 3, g, 'v' || g FROM generate_series(1, 30) g;`, `
name: o
table: items
target:
  ddl: CREATE TABLE items (tenant bigint, id bigint, v text, PRIMARY KEY (tenant, id))
`, false)
		m.exec(t, `
			UPDATE items SET tenant = 9 WHERE id = 1;          -- first key column only
			UPDATE items SET id = 100 WHERE id = 2;            -- second key column only
			UPDATE items SET tenant = 8, id = 200, v = 'x' WHERE id = 3;
			UPDATE items SET id = id + 1000 WHERE tenant = 0;  -- many rows in one statement
			UPDATE gs_o_green.items SET tenant = 7 WHERE id = 4;   -- through green
			UPDATE gs_o_green.items SET id = -5 WHERE id = 5;`)
		blue := `SELECT tenant::bigint, id::bigint, v FROM gs_o_blue.items`
		green := `SELECT tenant, id, v FROM gs_o_green.items`
		if d := m.diff(t, blue, green); d != 0 {
			t.Fatalf("%d rows differ", d)
		}
		if n := m.count(t, `SELECT count(*) FROM gs_o_green.items`); n != 30 {
			t.Fatalf("green has %d rows, want 30", n)
		}
		if n := m.count(t, `SELECT count(*) FROM gs_o_blue.items WHERE (tenant, id) IN ((7, 4), (2, -5))`); n != 2 {
			t.Fatal("key updates through green did not reach blue")
		}
	})
	t.Run("green-key-differs", func(t *testing.T) {
		t.Parallel()
		// Blue's key is id; green's primary key is code (unique in blue too).
		m := migrate(t, `
			CREATE TABLE acct (id int PRIMARY KEY, code text NOT NULL UNIQUE, v int);
			INSERT INTO acct SELECT g, 'c' || g, g FROM generate_series(1, 20) g;`, `
name: o
table: acct
target:
  ddl: CREATE TABLE acct (id int NOT NULL UNIQUE, code text PRIMARY KEY, v int)
`, false)
		m.exec(t, `
			UPDATE acct SET id = 100 WHERE id = 1;        -- blue's key: green row updated in place
			UPDATE acct SET code = 'z2' WHERE id = 2;     -- green's key: old green row deleted
			UPDATE acct SET id = 300, code = 'z3' WHERE id = 3;
			DELETE FROM acct WHERE id = 4;`)
		if d := m.diff(t, `SELECT id, code, v FROM gs_o_blue.acct`, `SELECT id, code, v FROM gs_o_green.acct`); d != 0 {
			t.Fatalf("%d rows differ", d)
		}
	})
	t.Run("equal-but-not-identical", func(t *testing.T) {
		t.Parallel()
		// 1.0 = 1.00 and 'A' = 'a' under their types' equality, yet they
		// are different keys once written: the new value must reach green.
		m := migrate(t, `
			CREATE COLLATION IF NOT EXISTS ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
			CREATE TABLE prices (id numeric PRIMARY KEY, code text COLLATE ci NOT NULL UNIQUE, v int);
			INSERT INTO prices VALUES (1.0, 'A', 1), (2.0, 'B', 2);`, `
name: o
table: prices
target:
  ddl: CREATE TABLE prices (id numeric PRIMARY KEY, code text COLLATE ci NOT NULL UNIQUE, v int)
`, false)
		m.exec(t, `
			UPDATE prices SET id = 1.00 WHERE id = 1;
			UPDATE prices SET code = 'b' WHERE code = 'B';`)
		blue := `SELECT id::text, code::text COLLATE "C", v FROM gs_o_blue.prices`
		green := `SELECT id::text, code::text COLLATE "C", v FROM gs_o_green.prices`
		if d := m.diff(t, blue, green); d != 0 {
			t.Fatalf("%d rows differ", d)
		}
		if n := m.count(t, `SELECT count(*) FROM gs_o_green.prices WHERE id::text = '1.00'`); n != 1 {
			t.Fatal("green kept the key 1.0 after blue's row became 1.00")
		}
	})
}

// Trap 4: GENERATED ALWAYS identity and stored generated columns, and one
// sequence for both shapes: after synced, inserts through the green
// version schema draw ids from blue's sequence, so ids never collide.
func TestTrap4IdentityGeneratedSequence(t *testing.T) {
	t.Parallel()
	t.Run("shared-identity", func(t *testing.T) {
		t.Parallel()
		m := migrate(t, `
			CREATE TABLE lines (
				id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
				price numeric NOT NULL,
				qty   int NOT NULL,
				total numeric GENERATED ALWAYS AS (price * qty) STORED);
			INSERT INTO lines (price, qty) SELECT g, g % 5 FROM generate_series(1, 50) g;`, `
name: o
table: lines
target:
  ddl: |
    CREATE TABLE lines (
      id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      price numeric(10,2) NOT NULL,
      qty   int NOT NULL,
      total numeric GENERATED ALWAYS AS (price * qty) STORED)
`, false)
		m.exec(t, `
			INSERT INTO lines (price, qty) VALUES (1.5, 2);                                    -- app name (blue)
			SET search_path TO gs_o_green; INSERT INTO lines (price, qty) VALUES (2.25, 4);   -- green shape
			RESET search_path; INSERT INTO lines (price, qty) VALUES (3, 3);
			UPDATE lines SET qty = qty + 1 WHERE id = 1;
			UPDATE gs_o_green.lines SET price = 10 WHERE id = 2;`)
		blue := `SELECT id, price::numeric(10,2), qty, (price::numeric(10,2) * qty) FROM gs_o_blue.lines`
		green := `SELECT id, price, qty, total FROM gs_o_green.lines`
		if d := m.diff(t, blue, green); d != 0 {
			t.Fatalf("%d rows differ", d)
		}
		if ids := m.count(t, `SELECT count(DISTINCT id) FROM gs_o_blue.lines WHERE id > 50`); ids != 3 {
			t.Fatalf("%d distinct new ids, want 3: the shapes do not share one sequence", ids)
		}
		if n := m.count(t, `SELECT last_value FROM gs_o_blue.lines_id_seq`); n != 53 {
			t.Fatalf("blue's sequence is at %d, want 53 (every insert drew from it)", n)
		}
	})
	t.Run("green-identity-only", func(t *testing.T) {
		t.Parallel()
		// Blue has no sequence; green's identity is GENERATED ALWAYS, so
		// the backfill and the trigger must write it OVERRIDING SYSTEM VALUE.
		m := migrate(t, `
			CREATE TABLE t (id int PRIMARY KEY, v text);
			INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g;`, `
name: o
table: t
target:
  ddl: CREATE TABLE t (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text)
`, false)
		m.exec(t, `INSERT INTO t VALUES (21, 'new'); UPDATE t SET id = 99 WHERE id = 1;`)
		if d := m.diff(t, `SELECT id::bigint, v FROM gs_o_blue.t`, `SELECT id, v FROM gs_o_green.t`); d != 0 {
			t.Fatalf("%d rows differ", d)
		}
	})
}

// Trap 5: a user trigger on blue fires once per logical write, whichever
// shape the write came through; the backfill fires it never.
func TestTrap5UserTriggerFiresOnce(t *testing.T) {
	t.Parallel()
	m := migrate(t, ordersTable+`
		CREATE TABLE audit (n serial, op text, id bigint);
		CREATE FUNCTION audit_orders() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO public.audit (op, id) VALUES (TG_OP, CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END);
			RETURN NULL;
		END$$;
		CREATE TRIGGER audit_orders AFTER INSERT OR UPDATE OR DELETE ON orders FOR EACH ROW EXECUTE FUNCTION audit_orders();`,
		ordersSpec, false)
	if n := m.count(t, `SELECT count(*) FROM audit`); n != 0 {
		t.Fatalf("%d audit rows after the backfill, want 0", n)
	}
	m.exec(t, `
		INSERT INTO orders (email, amount) VALUES ('a', 1);
		UPDATE orders SET amount = 2 WHERE id = 1;
		DELETE FROM orders WHERE id = 2;
		SET search_path TO gs_o_green, public;
		INSERT INTO orders (email, amount) VALUES ('g', 1);
		UPDATE orders SET amount = 3 WHERE id = 3;
		DELETE FROM orders WHERE id = 4;`)
	var got string
	if err := m.pool.QueryRow(context.Background(), `SELECT string_agg(op || ':' || id, ' ' ORDER BY n) FROM audit`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if want := "INSERT:101 UPDATE:1 DELETE:2 INSERT:102 UPDATE:3 DELETE:4"; got != want {
		t.Fatalf("audit %q, want %q", got, want)
	}
	if d := m.diff(t, ordersBlue, ordersGreen); d != 0 {
		t.Fatalf("%d rows differ", d)
	}
}

// NULLs and TOAST-sized values, copied by the backfill and by the
// triggers, including updates that leave a TOASTed value unchanged.
func TestNullsAndToast(t *testing.T) {
	t.Parallel()
	big := `(SELECT string_agg(md5(random()::text || g), '') FROM generate_series(1, 3000) g)` // ~96 kB, stored out of line
	m := migrate(t, `
		CREATE TABLE orders (id bigserial PRIMARY KEY, email text, amount int NOT NULL, note text);
		INSERT INTO orders (email, amount, note) VALUES (NULL, 1, NULL), ('a', 2, `+big+`), (NULL, 3, `+big+`);`,
		ordersSpec, true)
	m.exec(t, `
		INSERT INTO orders (email, amount, note) VALUES (NULL, 4, `+big+`), ('b', 5, NULL);
		UPDATE orders SET amount = amount + 10 WHERE id IN (2, 4);  -- TOASTed note unchanged
		UPDATE orders SET note = NULL, email = NULL WHERE id = 5;
		UPDATE orders SET note = `+big+` WHERE id = 1;`)
	if _, err := m.backfiller().Run(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	m.exec(t, `UPDATE orders SET amount = amount + 1`)
	if d := m.diff(t, ordersBlue, ordersGreen); d != 0 {
		t.Fatalf("%d rows differ", d)
	}
	if n := m.count(t, `SELECT count(*) FROM gs_o_green.orders WHERE length(note) > 90000`); n != 4 {
		t.Fatalf("%d TOAST-sized notes in green, want 4", n)
	}
	if n := m.count(t, `SELECT count(*) FROM gs_o_green.orders WHERE email = '-'`); n != 4 {
		t.Fatalf("%d NULL emails mapped to '-', want 4", n)
	}
}

// TRUNCATE of blue empties green (forward, always on); after synced,
// TRUNCATE of green empties blue.
func TestTruncate(t *testing.T) {
	t.Parallel()
	m := migrate(t, ordersTable, ordersSpec, true)
	if _, err := m.backfiller().Run(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if n := m.count(t, `SELECT count(*) FROM gs_o_green.orders`); n != 100 {
		t.Fatalf("green has %d rows", n)
	}
	m.exec(t, `TRUNCATE gs_o_blue.orders`)
	if n := m.count(t, `SELECT count(*) FROM gs_o_green.orders`); n != 0 {
		t.Fatalf("green has %d rows after TRUNCATE of blue", n)
	}
	m.exec(t, `INSERT INTO orders (email, amount) VALUES ('a', 1), ('b', 2)`)
	m2 := migrate(t, ordersTable, ordersSpec, false)
	m2.exec(t, `TRUNCATE gs_o_green.orders; INSERT INTO gs_o_green.orders (id, email, amount) VALUES (1000, 'g', 1)`)
	if n := m2.count(t, `SELECT count(*) FROM gs_o_blue.orders`); n != 1 {
		t.Fatalf("blue has %d rows after TRUNCATE of green and one insert, want 1", n)
	}
	if d := m.diff(t, ordersBlue, ordersGreen); d != 0 {
		t.Fatalf("%d rows differ", d)
	}
	if d := m2.diff(t, ordersBlue, ordersGreen); d != 0 {
		t.Fatalf("%d rows differ", d)
	}
}

// The generated trigger functions are SECURITY DEFINER with a fixed
// search_path, the reverse triggers stay off until synced, and green's
// write gate refuses a write meanwhile.
func TestReverseOffUntilSynced(t *testing.T) {
	t.Parallel()
	m := migrate(t, ordersTable, ordersSpec, true)
	var enabled string
	if err := m.pool.QueryRow(context.Background(), `SELECT string_agg(tgname || '=' || tgenabled::text, ' ' ORDER BY tgname) FROM pg_trigger
		WHERE tgrelid = 'gs_o_green.orders'::regclass AND NOT tgisinternal`).Scan(&enabled); err != nil {
		t.Fatal(err)
	}
	if enabled != "gs_sync_o=D gs_sync_o_gate=O gs_sync_o_truncate=D" {
		t.Fatalf("green triggers: %s", enabled)
	}
	_, err := m.pool.Exec(context.Background(), `INSERT INTO gs_o_green.orders (id, email, amount) VALUES (5000, 'g', 1)`)
	if pgCode(err) != "55000" {
		t.Fatalf("a write to green before synced: %v, want SQLSTATE 55000 from the gate", err)
	}
	if n := m.count(t, `SELECT count(*) FROM gs_o_blue.orders WHERE id = 5000`); n != 0 {
		t.Fatal("a write to green reached blue before synced")
	}
	var defs string
	if err := m.pool.QueryRow(context.Background(), `SELECT string_agg(p.proname || ':' || p.prosecdef || ':' || array_to_string(p.proconfig, ','), ' ' ORDER BY p.proname)
		FROM pg_proc p WHERE p.pronamespace IN ('gs_o_blue'::regnamespace, 'gs_o_green'::regnamespace)`).Scan(&defs); err != nil {
		t.Fatal(err)
	}
	for _, fn := range []string{"gs_forward", "gs_reverse", "gs_forward_truncate", "gs_reverse_truncate"} {
		if !strings.Contains(defs, fn+":true:search_path=pg_catalog") {
			t.Errorf("%s is not SECURITY DEFINER with a fixed search_path: %s", fn, defs)
		}
	}
}
