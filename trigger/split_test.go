package trigger_test

// Table splits (issue 15): the forward function on blue writes every green,
// each green's reverse function rebuilds the blue row. Checked against the
// greens and blue with SQL written here, never through greenswap's verify.

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	gssync "github.com/greenswap/greenswap/sync"
	"github.com/greenswap/greenswap/trigger"
)

const splitUsersTable = `
	CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL, name text, bio text, avatar_url text,
		prefs jsonb, last_seen_at timestamptz, legacy_col text);
	INSERT INTO users (email, name, bio, prefs, last_seen_at, legacy_col)
	SELECT 'u' || g || '@x', 'n' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'bio ' || g END, pg_catalog.jsonb_build_object('g', g),
	       CASE WHEN g % 2 = 0 THEN '2026-01-01'::timestamptz + g * interval '1 minute' END, 'old'
	  FROM generate_series(1, 300) g;`

const splitUsersSpec = `
name: us
table: public.users
split:
  - table: user_activity
    ddl: CREATE TABLE user_activity (user_id bigint PRIMARY KEY REFERENCES users ON UPDATE CASCADE ON DELETE CASCADE, last_seen_at timestamptz NOT NULL)
    forward: {user_id: id}
    where: last_seen_at IS NOT NULL
  - table: users
    ddl: CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, name text)
  - table: user_profiles
    ddl: CREATE TABLE user_profiles (user_id bigint PRIMARY KEY REFERENCES users ON UPDATE CASCADE ON DELETE CASCADE, bio text, avatar_url text, prefs jsonb)
    forward: {user_id: id}
drop: [legacy_col]
`

// The oracle, by hand: each green against blue mapped forward, and blue
// against the old shape rebuilt from the greens.
var splitUsersChecks = [][2]string{
	{`SELECT id, email, name FROM gs_us_blue.users`, `SELECT id, email, name FROM gs_us_green.users`},
	{`SELECT id, bio, avatar_url, prefs::text FROM gs_us_blue.users`, `SELECT user_id, bio, avatar_url, prefs::text FROM gs_us_green.user_profiles`},
	{`SELECT id, last_seen_at FROM gs_us_blue.users WHERE last_seen_at IS NOT NULL`, `SELECT user_id, last_seen_at FROM gs_us_green.user_activity`},
	{`SELECT id, email, name, bio, avatar_url, prefs::text, last_seen_at FROM gs_us_blue.users`,
		`SELECT u.id, u.email, u.name, p.bio, p.avatar_url, p.prefs::text, a.last_seen_at FROM gs_us_green.users u
		   LEFT JOIN gs_us_green.user_profiles p ON p.user_id = u.id LEFT JOIN gs_us_green.user_activity a ON a.user_id = u.id`},
}

const splitOrdersTable = `
	CREATE TABLE orders (id bigserial PRIMARY KEY, status text NOT NULL, amount int NOT NULL, note text);
	INSERT INTO orders (status, amount) SELECT CASE WHEN g % 4 = 0 THEN 'closed' ELSE 'open' END, g FROM generate_series(1, 300) g;`

const splitOrdersSpec = `
name: os
table: orders
split:
  - table: orders
    ddl: CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, amount numeric(12,2) NOT NULL, note text)
    where: status <> 'closed'
  - table: orders_archive
    ddl: CREATE TABLE orders_archive (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL, note text)
    where: status = 'closed'
reverse:
  status: "CASE WHEN orders.id IS NOT NULL THEN orders.status ELSE 'closed' END"
  amount: COALESCE(orders.amount, orders_archive.amount)::int
`

var splitOrdersChecks = [][2]string{
	{`SELECT id, status, amount::numeric(12,2), note FROM gs_os_blue.orders WHERE status <> 'closed'`, `SELECT id, status, amount, note FROM gs_os_green.orders`},
	{`SELECT id, amount::numeric(12,2), note FROM gs_os_blue.orders WHERE status = 'closed'`, `SELECT id, amount, note FROM gs_os_green.orders_archive`},
	{`SELECT id, status, amount, note FROM gs_os_blue.orders`,
		`SELECT * FROM (SELECT id, status, round(amount)::int, note FROM gs_os_green.orders UNION ALL SELECT id, 'closed', round(amount)::int, note FROM gs_os_green.orders_archive) s`},
}

type splitMig struct {
	pool    *pgxpool.Pool
	dsn     string
	spec    *spec.Spec
	names   []shadow.Names
	blue    *shadow.Table
	mapping *shadow.SplitMapping
}

// splitSetup adopts blue by hand (moved to its version schema, the app
// name a view over it, as adopt does), creates the greens in dependency
// order and installs the split's triggers through trigger.SplitInstallStep.
// Backfill and the reverse direction are the test's to run.
func splitSetup(t *testing.T, tableSQL, specYAML string) *splitMig {
	t.Helper()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, tableSQL)
	sp := testkit.ParseSpec(t, specYAML)
	names := shadow.SplitNames(sp)
	n0 := names[0]
	app := sp.AppTable()
	var ddl []string
	ddl = append(ddl, "CREATE SCHEMA "+db.Ident(n0.BlueSchema), "CREATE SCHEMA "+db.Ident(n0.GreenSchema),
		"ALTER TABLE "+db.Ident(app.Schema, app.Name)+" SET SCHEMA "+db.Ident(n0.BlueSchema),
		"CREATE VIEW "+db.Ident(app.Schema, app.Name)+" AS SELECT * FROM "+db.Ident(n0.Blue.Schema, n0.Blue.Name),
		"SET search_path = "+db.Ident(n0.GreenSchema))
	for _, i := range sp.SplitOrder() {
		ddl = append(ddl, sp.Split[i].DDL)
	}
	ddl = append(ddl, "RESET search_path")
	pgtest.Exec(t, dsn, strings.Join(ddl, ";\n"))
	ctx := context.Background()
	blue, err := shadow.LoadTable(ctx, pool, n0.Blue)
	if err != nil {
		t.Fatal(err)
	}
	greens := make([]*shadow.Table, len(sp.Split))
	for i, n := range names {
		if greens[i], err = shadow.LoadTable(ctx, pool, n.Green); err != nil {
			t.Fatal(err)
		}
	}
	m, err := shadow.BuildSplitMapping(sp, blue, greens)
	if err != nil {
		t.Fatal(err)
	}
	step := trigger.SplitInstallStep(names, m, blue.Owner)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	for _, s := range step.SQL {
		if _, err := tx.Exec(ctx, s); err != nil {
			t.Fatalf("%v\n%s", err, s)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return &splitMig{pool: pool, dsn: dsn, spec: sp, names: names, blue: blue, mapping: m}
}

// backfill copies blue into every green, parents first, each with its
// where, through the keyed Backfiller with small batches.
func (m *splitMig) backfill(t *testing.T) {
	t.Helper()
	for k := range m.mapping.Greens {
		g := &m.mapping.Greens[k]
		b := &gssync.Backfiller{Pool: m.pool, Names: m.names[g.Spec], Mapping: m.mapping.GreenMapping(g), Blue: m.blue,
			Where: g.Where, Log: zerolog.Nop(), Options: gssync.Options{BatchSize: 7, Fixed: true},
			Checkpoint: func(context.Context, pgx.Tx, gssync.Checkpoint) error { return nil }}
		if _, err := b.Run(context.Background(), nil); err != nil {
			t.Fatalf("backfill %s: %v", g.Name, err)
		}
	}
}

func (m *splitMig) reverseOn(t *testing.T) {
	t.Helper()
	pgtest.Exec(t, m.dsn, strings.Join(trigger.SplitSetReverseSQL(m.names, true), ";\n"))
}

func (m *splitMig) check(t *testing.T, checks [][2]string, when string) {
	t.Helper()
	for _, c := range checks {
		if d := testkit.Diff(t, m.pool, c[0], c[1]); d != 0 {
			t.Errorf("%s: %d rows differ between\n  %s\nand\n  %s", when, d, c[0], c[1])
		}
	}
}

// TestSplitForwardEveryWriteKind: every kind of write through the app
// name (blue) lands in the right greens: an insert in each green whose
// where holds, an update, an update that moves the row into and out of a
// where (user_activity; orders ↔ orders_archive), a key update (an UPDATE
// in every green: a child row's column only green has survives it), a
// delete from every green, TRUNCATE of blue empties every green, and
// TRUNCATE of a green is refused.
func TestSplitForwardEveryWriteKind(t *testing.T) {
	t.Parallel()
	t.Run("vertical", func(t *testing.T) {
		t.Parallel()
		m := splitSetup(t, splitUsersTable, splitUsersSpec)
		m.backfill(t)
		m.check(t, splitUsersChecks, "after backfill")
		if n := testkit.Count(t, m.pool, `SELECT count(*) FROM gs_us_green.user_activity`); n != 150 {
			t.Errorf("user_activity holds %d rows, want the 150 with last_seen_at", n)
		}
		for _, s := range []string{
			`INSERT INTO users (email, name, bio, last_seen_at) VALUES ('new@x', 'new', 'b', now())`,
			`INSERT INTO users (email) VALUES ('bare@x')`,
			`UPDATE users SET bio = 'changed', prefs = '{"a": 1}' WHERE id BETWEEN 10 AND 20`,
			`UPDATE users SET last_seen_at = NULL WHERE id BETWEEN 2 AND 12`,   // out of user_activity
			`UPDATE users SET last_seen_at = now() WHERE id BETWEEN 21 AND 31`, // into it
			`UPDATE users SET legacy_col = 'still blue' WHERE id = 40`,
			`UPDATE users SET id = id + 10000 WHERE id BETWEEN 50 AND 60`, // key update
			`UPDATE users SET id = 50, email = 'swap@x' WHERE id = 10050`, // and back onto a freed key
			`DELETE FROM users WHERE id BETWEEN 70 AND 80`,
		} {
			m.exec(t, s)
			m.check(t, splitUsersChecks, s)
		}
		// A key update is an UPDATE in the greens: an ON DELETE CASCADE
		// referencing a green would have fired on DELETE + INSERT.
		m.exec(t, `CREATE TABLE gs_us_green.watch (user_id bigint REFERENCES gs_us_green.user_profiles ON UPDATE CASCADE ON DELETE CASCADE);
			INSERT INTO gs_us_green.watch VALUES (100)`)
		m.exec(t, `UPDATE users SET id = 20100 WHERE id = 100`)
		if n := testkit.Count(t, m.pool, `SELECT count(*) FROM gs_us_green.watch WHERE user_id = 20100`); n != 1 {
			t.Errorf("a row referencing user_profiles followed the key update %d times, want 1 (the key update became a delete)", n)
		}
		m.check(t, splitUsersChecks, "key update with a referencing table")
		_, err := m.pool.Exec(context.Background(), `TRUNCATE gs_us_green.user_activity`)
		if db.SQLState(err) != "55000" {
			t.Errorf("TRUNCATE of one green before synced: %v, want the write gate's 55000", err)
		}
		m.exec(t, `DROP TABLE gs_us_green.watch; TRUNCATE gs_us_blue.users`)
		for _, g := range []string{"users", "user_profiles", "user_activity"} {
			if n := testkit.Count(t, m.pool, `SELECT count(*) FROM gs_us_green.`+g); n != 0 {
				t.Errorf("after TRUNCATE of blue, green %s holds %d rows", g, n)
			}
		}
	})
	t.Run("horizontal", func(t *testing.T) {
		t.Parallel()
		m := splitSetup(t, splitOrdersTable, splitOrdersSpec)
		m.backfill(t)
		m.check(t, splitOrdersChecks, "after backfill")
		for _, s := range []string{
			`INSERT INTO orders (status, amount) VALUES ('open', 1), ('closed', 2)`,
			`UPDATE orders SET status = 'closed' WHERE id BETWEEN 1 AND 10`, // open → archive
			`UPDATE orders SET status = 'open' WHERE id IN (4, 8, 12, 16)`,  // archive → open
			`UPDATE orders SET id = id + 1000, status = 'closed' WHERE id BETWEEN 20 AND 25`,
			`UPDATE orders SET note = 'n' WHERE id % 5 = 0`,
			`DELETE FROM orders WHERE id BETWEEN 30 AND 40`,
		} {
			m.exec(t, s)
			m.check(t, splitOrdersChecks, s)
		}
	})
}

func (m *splitMig) exec(t *testing.T, sql string) { t.Helper(); pgtest.Exec(t, m.dsn, sql) }

// TestSplitReverseEveryWriteKind: from synced on, every kind of write
// through each green lands in blue: an update of one green's column
// rebuilds the blue row, an insert of a root with its children makes the
// blue row, a child's insert and delete (user_activity: into and out of
// its where), a key update of the root (cascading into the children)
// stays an UPDATE of blue, a delete of a root deletes the blue row, and a
// row moved between horizontal partitions by delete + insert in one
// transaction is one blue row with the new values.
func TestSplitReverseEveryWriteKind(t *testing.T) {
	t.Parallel()
	t.Run("vertical", func(t *testing.T) {
		t.Parallel()
		m := splitSetup(t, splitUsersTable, splitUsersSpec)
		m.backfill(t)
		m.reverseOn(t)
		// A table referencing blue: a key update that reached blue as
		// DELETE + INSERT would empty its row (ON DELETE CASCADE).
		m.exec(t, `CREATE TABLE public.sessions (user_id bigint REFERENCES gs_us_blue.users ON UPDATE CASCADE ON DELETE CASCADE);
			INSERT INTO public.sessions VALUES (7), (9)`)
		for _, s := range []string{
			`UPDATE gs_us_green.users SET email = 'g@x', name = 'g' WHERE id BETWEEN 1 AND 5`,
			`UPDATE gs_us_green.user_profiles SET bio = 'from green', prefs = '[1]' WHERE user_id BETWEEN 3 AND 8`,
			`BEGIN; INSERT INTO gs_us_green.users VALUES (50000, 'new@x', 'new'); INSERT INTO gs_us_green.user_profiles VALUES (50000, 'b', NULL, NULL); COMMIT`,
			`INSERT INTO gs_us_green.user_activity VALUES (1, now())`, // into the where
			`DELETE FROM gs_us_green.user_activity WHERE user_id IN (2, 4)`,
			`UPDATE gs_us_green.user_activity SET last_seen_at = '2020-01-01' WHERE user_id = 6`,
			`UPDATE gs_us_green.users SET id = 30007 WHERE id = 7`, // cascades into both children
			`UPDATE gs_us_green.user_profiles SET user_id = 30009 WHERE user_id = 9`,
			`DELETE FROM gs_us_green.users WHERE id BETWEEN 90 AND 99`, // cascades
		} {
			if strings.Contains(s, "SET user_id = 30009") {
				// A child's key cannot move away from its parent's: the FK
				// refuses it, and blue is untouched.
				if _, err := m.pool.Exec(context.Background(), s); db.SQLState(err) != "23503" {
					t.Errorf("%s: %v, want a foreign key violation", s, err)
				}
				m.check(t, splitUsersChecks, s)
				continue
			}
			m.exec(t, s)
			m.check(t, splitUsersChecks, s)
		}
		_, err := m.pool.Exec(context.Background(), `TRUNCATE gs_us_green.user_activity`)
		if db.SQLState(err) != "0A000" {
			t.Errorf("TRUNCATE of one green once synced: %v, want 0A000 (it would not reach blue)", err)
		}
		if n := testkit.Count(t, m.pool, `SELECT count(*) FROM public.sessions WHERE user_id = 30007`); n != 1 {
			t.Errorf("the row referencing blue followed the key update %d times, want 1 (blue saw DELETE + INSERT)", n)
		}
		if n := testkit.Count(t, m.pool, `SELECT count(*) FROM gs_us_blue.users WHERE id = 30007 AND legacy_col = 'old'`); n != 1 {
			t.Errorf("the dropped column (blue only) did not survive the key update through green")
		}
	})
	t.Run("horizontal", func(t *testing.T) {
		t.Parallel()
		m := splitSetup(t, splitOrdersTable, splitOrdersSpec)
		m.backfill(t)
		m.reverseOn(t)
		for _, s := range []string{
			`UPDATE gs_os_green.orders SET amount = 7, note = 'g' WHERE id BETWEEN 1 AND 3`,
			`UPDATE gs_os_green.orders_archive SET note = 'arch' WHERE id IN (4, 8)`,
			`INSERT INTO gs_os_green.orders_archive VALUES (9000, 5, 'a')`,
			`BEGIN; DELETE FROM gs_os_green.orders WHERE id = 1; INSERT INTO gs_os_green.orders_archive VALUES (1, 7, 'moved'); COMMIT`,
			`UPDATE gs_os_green.orders SET id = 7001 WHERE id = 2`,
			`DELETE FROM gs_os_green.orders_archive WHERE id = 12`,
		} {
			m.exec(t, s)
			m.check(t, splitOrdersChecks, s)
		}
	})
}
