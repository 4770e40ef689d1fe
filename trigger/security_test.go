package trigger_test

// Tests written as an attacker would try greenswap's objects (design.md trap
// 11, issue 10): real roles, connected as themselves, against a migration
// whose table belongs to a role that is not a superuser. Each asserts that
// the attack fails and that blue and green are as they were (or, for a
// writer's own legitimate writes, equal to each other).

import (
	"context"
	"fmt"
	"hash/fnv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/runner"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

func pgCode(err error) string { return db.SQLState(err) }

// roles are the attacker's cast: the table owner (not a superuser), a role
// that may only read the app table, one that may write it.
type roles struct{ owner, reader, writer string }

// sec is a migration whose app table belongs to roles.owner; greenswap
// itself runs as the superuser of the test cluster.
type sec struct {
	*mig
	roles
}

// roleName is unique per test (roles are cluster-wide, tests run in parallel).
func roleName(t *testing.T, base string) string {
	h := fnv.New64a()
	h.Write([]byte(t.Name()))
	return fmt.Sprintf("%s_%x", base, h.Sum64())
}

// createRole creates a LOGIN role dropped when the test ends (after the
// connections the test opened as it are closed: cleanups run last-in first-out).
func createRole(t *testing.T, dsn, name string) {
	t.Helper()
	testkit.CreateRole(t, dsn, name)
}

// secureMigrate is migrate for a table owned by a non-superuser: tableSQL
// may name {owner}, {reader} and {writer}; every table it creates in public
// is then given to the owner (with its sequences), before sync adopts it.
func secureMigrate(t *testing.T, tableSQL, specYAML string, setupOnly bool) *sec {
	t.Helper()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	r := roles{owner: roleName(t, "owner"), reader: roleName(t, "reader"), writer: roleName(t, "writer")}
	for _, name := range []string{r.owner, r.reader, r.writer} {
		createRole(t, dsn, name)
	}
	q := func(s string) string { return pgx.Identifier{s}.Sanitize() }
	pgtest.Exec(t, dsn, strings.NewReplacer("{owner}", q(r.owner), "{reader}", q(r.reader), "{writer}", q(r.writer)).Replace(tableSQL))
	pgtest.Exec(t, dsn, `DO $$DECLARE t record; BEGIN
		FOR t IN SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') LOOP
			EXECUTE format('ALTER TABLE public.%I OWNER TO %I', t.relname, `+dbLiteral(r.owner)+`);
		END LOOP; END$$`)
	spec, err := spec.ParseSpec([]byte(specYAML), "test.yaml", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	m := &mig{pool: pool, dsn: dsn, spec: spec, names: shadow.NamesFor(spec.Name, spec.AppTable())}
	s := &sec{mig: m, roles: r}
	if err := s.sync(ctx, setupOnly); err != nil {
		t.Fatal(err)
	}
	return s
}

func dbLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// sync runs (or resumes) runner.Sync as greenswap does.
func (s *sec) sync(ctx context.Context, setupOnly bool) error {
	env, err := runner.Connect(ctx, s.dsn, zerolog.Nop())
	if err != nil {
		return err
	}
	defer env.Close()
	_, err = runner.Sync(ctx, env, s.spec, runner.SyncOptions{StopAfterSetup: setupOnly})
	return err
}

func (s *sec) cutover(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	env, err := runner.Connect(ctx, s.dsn, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	if _, err := runner.Cutover(ctx, env, s.spec.Name, runner.CutoverOptions{SkipVerify: true}); err != nil {
		t.Fatal(err)
	}
}

// as connects as role; the connection is closed when the test ends.
func (s *sec) as(t *testing.T, role string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.User = role
	c, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// snapshot is every row of blue and of green, in key order.
func (m *mig) snapshot(t *testing.T) string {
	t.Helper()
	var b, g string
	n := m.names
	if err := m.pool.QueryRow(context.Background(), fmt.Sprintf(`SELECT
		coalesce((SELECT string_agg(row_to_json(b)::text, E'\n' ORDER BY row_to_json(b)::text) FROM %s b), ''),
		coalesce((SELECT string_agg(row_to_json(g)::text, E'\n' ORDER BY row_to_json(g)::text) FROM %s g), '')`,
		pgx.Identifier{n.Blue.Schema, n.Blue.Name}.Sanitize(), pgx.Identifier{n.Green.Schema, n.Green.Name}.Sanitize())).Scan(&b, &g); err != nil {
		t.Fatal(err)
	}
	return "blue:\n" + b + "\ngreen:\n" + g
}

const secOrders = ordersTable + `
	GRANT SELECT ON orders TO {reader};
	GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO {writer};
	GRANT USAGE ON SEQUENCE orders_id_seq TO {writer};`

// A role that may only read the app table attaches greenswap's functions to
// a temp table of its own and writes / truncates it. EXECUTE is revoked from
// PUBLIC, so CREATE TRIGGER is refused; and were EXECUTE granted by mistake,
// the functions' self-check refuses to run for any trigger but their own.
func TestAttackAttachFunctionsToTempTable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := secureMigrate(t, secOrders, ordersSpec, false)
	s.cutover(t) // the usage sensor exists from the first cutover
	before := s.snapshot(t)
	n := s.names
	greenCols, blueCols := "id bigint, email text, amount numeric(12,2), note text", "id bigint, email text, amount int, note text"
	fns := []struct {
		fn   string
		row  bool // a row-trigger function (else a statement one)
		cols string
	}{
		{"gs_o_blue.gs_reverse", true, greenCols},
		{"gs_o_green.gs_forward", true, blueCols},
		{"gs_o_blue.gs_reverse_truncate", false, greenCols},
		{"gs_o_green.gs_forward_truncate", false, blueCols},
		{"gs_o_blue.gs_usage_note", false, blueCols},
	}
	if n := s.count(t, `SELECT count(*) FROM pg_proc p WHERE p.pronamespace IN ('gs_o_blue'::regnamespace, 'gs_o_green'::regnamespace)
		AND (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))`); n != 0 {
		t.Fatalf("%d of greenswap's functions are executable by PUBLIC", n)
	}
	if n := s.count(t, `SELECT count(*) FROM pg_proc p WHERE p.pronamespace IN ('gs_o_blue'::regnamespace, 'gs_o_green'::regnamespace)`); n != int64(len(fns)) {
		t.Fatalf("%d functions in the version schemas, want %d: test them all", n, len(fns))
	}
	attack := func(t *testing.T, c *pgx.Conn, fn string, row bool, cols string) (attach error, fire []error) {
		tbl := "victim_" + strings.ReplaceAll(fn, ".", "_")
		if _, err := c.Exec(ctx, "CREATE TEMP TABLE "+tbl+" ("+cols+"); INSERT INTO "+tbl+" (id, email, amount) VALUES (1, 'x', 1), (2, 'y', 2), (1000, 'z', 3)"); err != nil {
			t.Fatal(err)
		}
		// Named like greenswap's own trigger, in case the name were all it checked.
		trg := "CREATE TRIGGER " + n.Trigger + " AFTER INSERT OR UPDATE OR DELETE ON " + tbl + " FOR EACH ROW EXECUTE FUNCTION " + fn + "()"
		if !row {
			trg = "CREATE TRIGGER " + n.Trigger + "_truncate AFTER TRUNCATE ON " + tbl + " FOR EACH STATEMENT EXECUTE FUNCTION " + fn + "()"
		}
		if _, attach = c.Exec(ctx, trg); attach != nil {
			return attach, nil
		}
		for _, w := range []string{
			"INSERT INTO " + tbl + " (id, email, amount) VALUES (3, 'w', 4)",
			"UPDATE " + tbl + " SET id = id + 1, email = 'hacked'",
			"DELETE FROM " + tbl,
			"TRUNCATE " + tbl,
		} {
			_, err := c.Exec(ctx, w)
			fire = append(fire, err)
		}
		return nil, fire
	}
	t.Run("no-execute", func(t *testing.T) {
		c := s.as(t, s.reader)
		for _, f := range fns {
			if err, _ := attack(t, c, f.fn, f.row, f.cols); pgCode(err) != "42501" {
				t.Errorf("attaching %s as a SELECT-only role: %v, want permission denied (42501)", f.fn, err)
			}
		}
	})
	t.Run("execute-granted-by-mistake", func(t *testing.T) {
		for _, f := range fns {
			s.exec(t, "GRANT EXECUTE ON FUNCTION "+f.fn+"() TO "+pgx.Identifier{s.reader}.Sanitize())
		}
		c := s.as(t, s.reader)
		for _, f := range fns {
			attach, fire := attack(t, c, f.fn, f.row, f.cols)
			if attach != nil {
				t.Fatalf("attach %s with EXECUTE: %v", f.fn, attach)
			}
			for i, err := range fire {
				// Row functions fire on the three row writes, statement ones on TRUNCATE;
				// whatever fires must raise the self-check.
				wantFire := (f.row && i < 3) || (!f.row && i == 3)
				if wantFire && (pgCode(err) != "42501" || !strings.Contains(err.Error(), "runs only as trigger")) {
					t.Errorf("%s fired on the attacker's temp table (statement %d): %v, want the self-check's 42501", f.fn, i, err)
				}
			}
		}
	})
	if after := s.snapshot(t); after != before {
		t.Fatalf("blue or green changed:\nbefore %s\nafter %s", before, after)
	}
}

// A role allowed to write the table creates pg_temp.text, a domain whose
// CHECK calls its own function, which notes the role it runs as and reads a
// table only the owner may read. Its writes through the app name and through
// green (before and after cutover) sync, and the function never runs as the
// owner: the sync functions' search_path names pg_temp last and every type
// they write is qualified.
func TestAttackTempSchemaShadowsText(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := secureMigrate(t, secOrders+`
		CREATE TABLE secret (s text);
		INSERT INTO secret VALUES ('owner-only');
		REVOKE ALL ON secret FROM PUBLIC;`, ordersSpec, false)
	c := s.as(t, s.writer)
	if _, err := c.Exec(ctx, `
		CREATE FUNCTION pg_temp.spy(v pg_catalog.text) RETURNS boolean LANGUAGE plpgsql AS $$
		BEGIN
			PERFORM pg_catalog.set_config('attack.ran_as', pg_catalog.current_setting('attack.ran_as') || ' ' || current_user, false);
			BEGIN
				PERFORM pg_catalog.set_config('attack.secret', (SELECT s FROM public.secret LIMIT 1), false);
			EXCEPTION WHEN insufficient_privilege THEN NULL;
			END;
			RETURN true;
		END$$;
		CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (pg_temp.spy(VALUE));
		SELECT pg_catalog.set_config('attack.ran_as', '', false), pg_catalog.set_config('attack.secret', '', false);`); err != nil {
		t.Fatal(err)
	}
	// The domain works, as the writer: the attack is armed.
	var armed string
	if err := c.QueryRow(ctx, `SELECT 'x'::pg_temp.text, current_setting('attack.ran_as')`).Scan(new(string), &armed); err != nil || !strings.Contains(armed, s.writer) {
		t.Fatalf("the domain's check did not run: %q %v", armed, err)
	}
	writes := func(phase string) {
		for _, w := range []string{
			`INSERT INTO orders (email, amount, note) VALUES ('w@x', 5, 'n')`,
			`UPDATE orders SET note = 'app-' || id, email = email || '.' WHERE id <= 3`,
			`UPDATE orders SET id = id + 5000 WHERE id = 4`,
			`DELETE FROM orders WHERE id = 5`,
			`UPDATE gs_o_green.orders SET note = 'green-' || id WHERE id BETWEEN 6 AND 8`,
			`UPDATE gs_o_green.orders SET id = id + 7000 WHERE id = 9`,
			`DELETE FROM gs_o_green.orders WHERE id = 10`,
		} {
			if _, err := c.Exec(ctx, w); err != nil {
				t.Fatalf("%s: %s: %v", phase, w, err)
			}
		}
		var ranAs, secret string
		if err := c.QueryRow(ctx, `SELECT current_setting('attack.ran_as'), current_setting('attack.secret')`).Scan(&ranAs, &secret); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(ranAs, s.owner) || secret != "" {
			t.Fatalf("%s: the attacker's function ran as %q and read %q", phase, ranAs, secret)
		}
		if d := s.diff(t, ordersBlue, ordersGreen); d != 0 {
			t.Fatalf("%s: %d rows differ between blue and green", phase, d)
		}
	}
	writes("synced")
	if n := s.count(t, `SELECT count(*) FROM gs_o_blue.orders WHERE id IN (5004, 7009) OR note IN ('app-1', 'green-6')`); n != 4 {
		t.Fatalf("the writer's writes did not all reach blue: %d of 4", n)
	}
	s.cutover(t)
	if _, err := c.Exec(ctx, `DISCARD PLANS`); err != nil {
		t.Fatal(err)
	}
	writes("cut over")
}

// A role that sets the echo guard's flag itself ('on' as older greenswaps
// used, '0' and '1' as the trigger depths the new one uses, …) still has
// every write reach the other side: the guard holds only for a member of the
// table owner.
func TestAttackSpoofEchoGuard(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := secureMigrate(t, secOrders, ordersSpec, false)
	c := s.as(t, s.writer)
	id := 1
	for _, v := range []string{"on", "0", "1", "2", "", "true"} {
		for _, target := range []string{"orders", "gs_o_blue.orders", "gs_o_green.orders"} {
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			mark := fmt.Sprintf("spoof-%q-%s", v, target)
			for _, q := range []string{
				`SELECT set_config('greenswap.sync_o', $1, true)`,
				`UPDATE ` + target + ` SET note = $1 WHERE id = $2`,
				`INSERT INTO ` + target + ` (id, email, amount, note) VALUES ($1 + 10000, 'spoof', 1, $2)`,
				`DELETE FROM ` + target + ` WHERE id = $1 + 50`,
			} {
				var args []any
				switch {
				case strings.HasPrefix(q, "SELECT"):
					args = []any{v}
				case strings.HasPrefix(q, "UPDATE"):
					args = []any{mark, id}
				case strings.HasPrefix(q, "INSERT"):
					args = []any{id, mark}
				default:
					args = []any{id}
				}
				if _, err := tx.Exec(ctx, q, args...); err != nil {
					t.Fatalf("%s: %s: %v", mark, q, err)
				}
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if d := s.diff(t, ordersBlue, ordersGreen); d != 0 {
				t.Fatalf("%s: %d rows differ: a write skipped the other side", mark, d)
			}
			if n := s.count(t, `SELECT count(*) FROM gs_o_green.orders WHERE note = $1`, mark); n != 2 {
				t.Fatalf("%s: green has %d rows marked, want 2", mark, n)
			}
			id++
		}
	}
}

// Green's version schema refuses writes until the migration is synced, for
// any role, the owner included, and for a writer that spoofs the sync flag; a direct
// write to a partition of a partitioned green too. After synced the same
// writes reach blue.
func TestEarlyWriteToGreenRefused(t *testing.T) {
	t.Parallel()
	t.Run("plain", func(t *testing.T) {
		t.Parallel()
		ctx := context.Background()
		s := secureMigrate(t, secOrders, ordersSpec, true)
		before := s.snapshot(t)
		early := []string{
			`INSERT INTO gs_o_green.orders (id, email, amount) VALUES (9001, 'early', 1)`,
			`UPDATE gs_o_green.orders SET note = 'early'`,
			`DELETE FROM gs_o_green.orders`,
			`TRUNCATE gs_o_green.orders`,
			`SELECT set_config('greenswap.sync_o', '0', true); INSERT INTO gs_o_green.orders (id, email, amount) VALUES (9002, 'early', 1)`,
		}
		for _, who := range []string{s.writer, s.owner} {
			c := s.as(t, who)
			for _, w := range early {
				if who == s.writer && strings.HasPrefix(w, "TRUNCATE") {
					continue // the writer may not TRUNCATE at all
				}
				if who == s.owner && strings.HasPrefix(w, "SELECT") {
					continue // the owner may set the flag (it could drop the triggers too): EchoGuard
				}
				_, err := c.Exec(ctx, w)
				if pgCode(err) != "55000" || !strings.Contains(err.Error(), "migration o is not synced yet") {
					t.Errorf("as %s: %s: %v, want the gate's 55000", who, w, err)
				}
			}
		}
		if after := s.snapshot(t); after != before {
			t.Fatalf("an early write changed blue or green:\nbefore %s\nafter %s", before, after)
		}
		// The app's writes meanwhile still reach green through the forward
		// trigger, past the gate.
		s.exec(t, `INSERT INTO orders (email, amount) VALUES ('during', 1); UPDATE orders SET note = 'during' WHERE id = 1`)
		if err := s.sync(ctx, false); err != nil {
			t.Fatal(err)
		}
		c := s.as(t, s.writer)
		for _, w := range []string{
			`INSERT INTO gs_o_green.orders (id, email, amount) VALUES (9001, 'late', 1)`,
			`UPDATE gs_o_green.orders SET note = 'late' WHERE id = 2`,
			`DELETE FROM gs_o_green.orders WHERE id = 3`,
		} {
			if _, err := c.Exec(ctx, w); err != nil {
				t.Fatalf("after synced: %s: %v", w, err)
			}
		}
		if n := s.count(t, `SELECT count(*) FROM gs_o_blue.orders WHERE id = 9001 OR (id = 2 AND note = 'late')`); n != 2 {
			t.Fatal("a write through green after synced did not reach blue")
		}
		if n := s.count(t, `SELECT count(*) FROM gs_o_blue.orders WHERE id = 3`); n != 0 {
			t.Fatal("a delete through green after synced did not reach blue")
		}
		if d := s.diff(t, ordersBlue, ordersGreen); d != 0 {
			t.Fatalf("%d rows differ", d)
		}
	})
	t.Run("partitioned", func(t *testing.T) {
		t.Parallel()
		ctx := context.Background()
		s := secureMigrate(t, ordersTable, `
name: o
table: orders
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text, amount int NOT NULL, note text) PARTITION BY RANGE (id)
  partitions:
    - CREATE TABLE orders_low PARTITION OF orders FOR VALUES FROM (MINVALUE) TO (50)
    - |
      CREATE TABLE orders_high PARTITION OF orders FOR VALUES FROM (50) TO (MAXVALUE) PARTITION BY RANGE (id)
    - CREATE TABLE orders_high_a PARTITION OF orders_high FOR VALUES FROM (50) TO (10000)
    - CREATE TABLE orders_high_b PARTITION OF orders_high FOR VALUES FROM (10000) TO (MAXVALUE)
`, true)
		before := s.snapshot(t)
		// As greenswap's own role, which owns green's partitions (the
		// table owner gets green itself only).
		c, err := s.pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Release()
		for _, w := range []string{
			`INSERT INTO gs_o_green.orders_low (id, email, amount) VALUES (1, 'early', 1)`,
			`INSERT INTO gs_o_green.orders_high_b (id, email, amount) VALUES (20000, 'early', 1)`,
			`UPDATE gs_o_green.orders_high SET note = 'early'`,
			`DELETE FROM gs_o_green.orders_high_a`,
			`TRUNCATE gs_o_green.orders_low`,
			`INSERT INTO gs_o_green.orders (id, email, amount) VALUES (30000, 'early', 1)`,
		} {
			if _, err := c.Exec(ctx, w); pgCode(err) != "55000" {
				t.Errorf("%s: %v, want the gate's 55000", w, err)
			}
		}
		if after := s.snapshot(t); after != before {
			t.Fatalf("an early write changed blue or green:\nbefore %s\nafter %s", before, after)
		}
		if err := s.sync(ctx, false); err != nil {
			t.Fatal(err)
		}
		var gates string
		if err := s.pool.QueryRow(ctx, `SELECT string_agg(tgrelid::regclass::text || '=' || tgenabled::text, ' ' ORDER BY tgrelid::regclass::text)
			FROM pg_trigger WHERE tgname = 'gs_sync_o_gate'`).Scan(&gates); err != nil {
			t.Fatal(err)
		}
		if want := "gs_o_green.orders=D gs_o_green.orders_high=D gs_o_green.orders_high_a=D gs_o_green.orders_high_b=D gs_o_green.orders_low=D"; gates != want {
			t.Fatalf("gates after synced: %s, want %s", gates, want)
		}
		for _, w := range []string{
			`INSERT INTO gs_o_green.orders_high_b (id, email, amount) VALUES (20000, 'late', 1)`,
			`UPDATE gs_o_green.orders_low SET note = 'late' WHERE id = 7`,
			`DELETE FROM gs_o_green.orders_high_a WHERE id = 60`,
		} {
			if _, err := c.Exec(ctx, w); err != nil {
				t.Fatalf("after synced: %s: %v", w, err)
			}
		}
		if n := s.count(t, `SELECT count(*) FROM gs_o_blue.orders WHERE id = 20000 OR (id = 7 AND note = 'late')`); n != 2 {
			t.Fatal("a write to a partition of green after synced did not reach blue")
		}
		if d := s.diff(t, `SELECT id, email, amount, note FROM gs_o_blue.orders`, `SELECT id, email, amount, note FROM gs_o_green.orders`); d != 0 {
			t.Fatalf("%d rows differ", d)
		}
	})
}
