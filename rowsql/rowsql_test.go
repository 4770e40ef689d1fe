package rowsql_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/rowsql"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	"github.com/greenswap/greenswap/trigger"
	"github.com/greenswap/greenswap/verify/verifytest"
)

// shape is one blue table and the green it migrates to.
type shape struct {
	name  string
	table string // creates and fills the app table (100 rows)
	spec  string
	// damage changes a non-key column of green's rows whose sync key
	// (blue's text form) is in $1 (and $2 …), so that an upsert must repair them.
	damage string
	// orphan writes a green row blue does not have, under orphanKey.
	orphan    string
	orphanKey []string
	// check is a query over green that counts rows the mapping got wrong
	// beyond what the row comparison sees (a generated column); "" for none.
	check string
	// walk is the key order the copy must use (the unique index's).
	walk []string
	// overriding: green writes a GENERATED ALWAYS identity column.
	overriding bool
}

var shapes = []shape{
	{
		name:  "int key, forward expressions",
		table: `CREATE TABLE public.orders (id int PRIMARY KEY, email text, amount numeric(10,2)); INSERT INTO public.orders SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'u' || g || '@x' END, g * 1.5 FROM generate_series(1, 100) g`,
		spec: `name: rs
table: public.orders
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL, amount numeric(12,2), cents bigint)
forward:
  email: coalesce(email, 'unknown@invalid')
  cents: (amount * 100)::bigint
reverse:
  amount: cents / 100.0
`,
		damage:    `UPDATE gs_rs_green.orders SET email = 'damaged' WHERE id::text = ANY($1::text[])`,
		orphan:    `INSERT INTO gs_rs_green.orders (id, email) VALUES (1000, 'orphan')`,
		orphanKey: []string{"1000"},
		walk:      []string{"id"},
	},
	{
		name: "composite key, odd identifiers, text key with collation",
		table: `CREATE TABLE public."Order Items" (tenant text COLLATE "C" NOT NULL, "a""b" int NOT NULL, "Note" text, PRIMARY KEY (tenant, "a""b"));
INSERT INTO public."Order Items" SELECT CASE WHEN g % 2 = 0 THEN 'B' ELSE 'a' END, g, 'n' || g FROM generate_series(1, 100) g`,
		spec: `name: rs
table: public."Order Items"
key: ['a"b', tenant]
target:
  ddl: CREATE TABLE "Order Items" (tenant text COLLATE "C" NOT NULL, "a""b" bigint NOT NULL, "Note" text, "Upper Note" text, PRIMARY KEY (tenant, "a""b"))
forward:
  Upper Note: upper("Note")
`,
		damage:    `UPDATE gs_rs_green."Order Items" SET "Note" = 'damaged' WHERE tenant = ANY($1::text[]) AND ("a""b")::text = ANY($2::text[])`,
		orphan:    `INSERT INTO gs_rs_green."Order Items" VALUES ('zz', 1000, 'orphan', 'ORPHAN')`,
		orphanKey: []string{"zz", "1000"},
		walk:      []string{"tenant", `a"b`},
	},
	{
		name:  "identity ALWAYS in green",
		table: `CREATE TABLE public.items (id int PRIMARY KEY, v text); INSERT INTO public.items SELECT g, 'v' || g FROM generate_series(1, 100) g`,
		spec: `name: rs
table: public.items
target:
  ddl: CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text)
`,
		damage:     `UPDATE gs_rs_green.items SET v = 'damaged' WHERE id::text = ANY($1::text[])`,
		orphan:     `INSERT INTO gs_rs_green.items OVERRIDING SYSTEM VALUE VALUES (1000, 'orphan')`,
		orphanKey:  []string{"1000"},
		walk:       []string{"id"},
		overriding: true,
	},
	{
		name:  "stored generated column",
		table: `CREATE TABLE public.lines (id int PRIMARY KEY, qty int NOT NULL, price int NOT NULL, total int NOT NULL DEFAULT 0); INSERT INTO public.lines SELECT g, g % 5, g, -1 FROM generate_series(1, 100) g`,
		spec: `name: rs
table: public.lines
target:
  ddl: CREATE TABLE lines (id int PRIMARY KEY, qty int NOT NULL, price int NOT NULL, total int GENERATED ALWAYS AS (qty * price) STORED)
`,
		damage:    `UPDATE gs_rs_green.lines SET qty = qty + 1 WHERE id::text = ANY($1::text[])`,
		orphan:    `INSERT INTO gs_rs_green.lines (id, qty, price) VALUES (1000, 1, 1)`,
		orphanKey: []string{"1000"},
		check:     `SELECT count(*) FROM gs_rs_green.lines WHERE total IS DISTINCT FROM qty * price OR total = -1`,
		walk:      []string{"id"},
	},
	{
		name:  "partitioned green",
		table: `CREATE TABLE public.events (id int PRIMARY KEY, kind text NOT NULL); INSERT INTO public.events SELECT g, 'k' || g % 3 FROM generate_series(1, 100) g`,
		spec: `name: rs
table: public.events
target:
  ddl: CREATE TABLE events (id bigint PRIMARY KEY, kind text NOT NULL) PARTITION BY RANGE (id)
  partitions:
    - CREATE TABLE events_low PARTITION OF events FOR VALUES FROM (MINVALUE) TO (50)
    - CREATE TABLE events_rest PARTITION OF events DEFAULT
`,
		damage:    `UPDATE gs_rs_green.events SET kind = 'damaged' WHERE id::text = ANY($1::text[])`,
		orphan:    `INSERT INTO gs_rs_green.events VALUES (1000, 'orphan')`,
		orphanKey: []string{"1000"},
		walk:      []string{"id"},
	},
}

type env struct {
	pool *pgxpool.Pool
	f    *verifytest.Fixture
	k    rowsql.Key
	b    rowsql.Builder
	keys [][]string // blue's keys as text, in walk order
}

func newEnv(t *testing.T, s shape) *env {
	t.Helper()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, s.table)
	f, err := verifytest.Setup(ctx, pool, s.spec, pgtest.ServerMajor(t))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{pool: pool, f: f, b: rowsql.For(&f.Mapping.Forward)}
	if e.k, err = rowsql.WalkKey(f.Blue, f.Mapping.Key); err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, "SELECT "+e.k.AsText()+" FROM "+e.b.From+" ORDER BY "+e.k.List())
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		vals := make([]string, len(e.k.Cols))
		dest := make([]any, len(vals))
		for i := range vals {
			dest[i] = &vals[i]
		}
		if err := rows.Scan(dest...); err != nil {
			t.Fatal(err)
		}
		e.keys = append(e.keys, vals)
	}
	if rows.Err() != nil || len(e.keys) != 100 {
		t.Fatalf("blue keys: %d, %v", len(e.keys), rows.Err())
	}
	return e
}

// tx runs fn in a transaction set up as the backfill's: the sync flag and
// rowsql.CopySettings.
func (e *env) tx(t *testing.T, fn func(pgx.Tx) error) {
	t.Helper()
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
		flag, args := trigger.SyncFlagSQL(e.f.Names)
		if _, err := tx.Exec(ctx, flag, args...); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, rowsql.SelectSettings(rowsql.CopySettings("$1", "$2")...), e.f.Names.SearchPath(), "2s"); err != nil {
			return err
		}
		return fn(tx)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// differ counts the rows of blue (mapped) and green that the other lacks.
func (e *env) differ(t *testing.T, s shape) int64 {
	t.Helper()
	var n int64
	e.tx(t, func(tx pgx.Tx) error {
		d := e.f.Mapping.Forward
		q := fmt.Sprintf(`SELECT count(*) FROM ((SELECT %[1]s FROM %[3]s EXCEPT SELECT %[2]s FROM %[4]s)
			UNION ALL (SELECT %[2]s FROM %[4]s EXCEPT SELECT %[1]s FROM %[3]s)) d`, d.SelectList(), d.TargetList(), e.b.From, e.b.Into)
		if err := tx.QueryRow(context.Background(), q).Scan(&n); err != nil {
			return err
		}
		if s.check != "" {
			var bad int64
			if err := tx.QueryRow(context.Background(), s.check).Scan(&bad); err != nil {
				return err
			}
			n += bad
		}
		return nil
	})
	return n
}

func flat(keys ...[]string) []any {
	var out []any
	for _, k := range keys {
		for _, v := range k {
			out = append(out, v)
		}
	}
	return out
}

// Every statement of the builder runs on a real server for every shape,
// and leaves green equal to blue through the mapping.
func TestStatementsOnEveryShape(t *testing.T) {
	t.Parallel()
	for _, s := range shapes {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			e := newEnv(t, s)
			lock := e.f.Mapping.SourceRowLock()
			if !slices.Equal(e.k.Cols, s.walk) {
				t.Errorf("walk key %q, want the unique index's order %q", e.k.Cols, s.walk)
			}
			if got := strings.Contains(e.b.Insert("src", rowsql.DoNothing, ""), "OVERRIDING SYSTEM VALUE"); got != s.overriding {
				t.Errorf("OVERRIDING SYSTEM VALUE %v, want %v", got, s.overriding)
			}

			// The whole range, plain: every row, counted by the command tag.
			all := e.b.CopyBatch(e.k, lock, false, false, false)
			if len(all.Params) != 0 {
				t.Errorf("whole-range batch expects %v", all.Params)
			}
			e.tx(t, func(tx pgx.Tx) error {
				tag, err := tx.Exec(ctx, all.SQL)
				if err == nil && tag.RowsAffected() != 100 {
					err = fmt.Errorf("copied %d rows, want 100", tag.RowsAffected())
				}
				return err
			})
			if n := e.differ(t, s); n != 0 {
				t.Fatalf("after the plain copy %d rows differ:\n%s", n, all.SQL)
			}

			// Delete keys (cursor, upper] = keys[10..29], then the ON
			// CONFLICT batch over that range puts back exactly those; again,
			// it reads them and inserts none.
			del := e.b.DeleteKeys(e.k, nil, false, nil)
			mid := e.b.CopyBatch(e.k, lock, true, true, true)
			if want := 2 * len(e.k.Cols); len(mid.Params) != want || mid.Params[0].Role != "cursor" || mid.Params[want-1].Role != "upper" || mid.Params[want-1].N != want {
				t.Errorf("range batch params %+v", mid.Params)
			}
			for round, want := range []int64{20, 0} {
				e.tx(t, func(tx pgx.Tx) error {
					if round == 0 {
						tag, err := tx.Exec(ctx, del.SQL, rowsql.KeyArgs(e.keys[10:30], len(e.k.Cols))...)
						if err != nil {
							return err
						}
						if tag.RowsAffected() != 20 {
							return fmt.Errorf("deleted %d rows, want 20:\n%s", tag.RowsAffected(), del.SQL)
						}
					}
					var ins, read int64
					if err := tx.QueryRow(ctx, mid.SQL, flat(e.keys[9], e.keys[29])...).Scan(&ins, &read); err != nil {
						return err
					}
					if ins != want || read != 20 {
						return fmt.Errorf("round %d: inserted %d of %d read, want %d of 20:\n%s", round, ins, read, want, mid.SQL)
					}
					return nil
				})
			}
			// The plain form over (keys[29], keys[39]] after deleting those.
			plain := e.b.CopyBatch(e.k, lock, true, true, false)
			e.tx(t, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, del.SQL, rowsql.KeyArgs(e.keys[30:40], len(e.k.Cols))...); err != nil {
					return err
				}
				tag, err := tx.Exec(ctx, plain.SQL, flat(e.keys[29], e.keys[39])...)
				if err == nil && tag.RowsAffected() != 10 {
					err = fmt.Errorf("plain range batch copied %d rows, want 10", tag.RowsAffected())
				}
				return err
			})
			// The first batch (no cursor) up to keys[4] finds them all there.
			first := e.b.CopyBatch(e.k, lock, false, true, true)
			e.tx(t, func(tx pgx.Tx) error {
				var ins, read int64
				if err := tx.QueryRow(ctx, first.SQL, flat(e.keys[4])...).Scan(&ins, &read); err != nil {
					return err
				}
				if ins != 0 || read != 5 {
					return fmt.Errorf("first batch inserted %d of %d read, want 0 of 5", ins, read)
				}
				return nil
			})
			if n := e.differ(t, s); n != 0 {
				t.Fatalf("after the range batches %d rows differ", n)
			}

			// Upsert by keys repairs damaged rows.
			up := e.b.UpsertKeys(e.k, "FOR NO KEY UPDATE")
			if len(up.Params) != len(e.k.Cols) || up.Params[0].Type != "text[]" {
				t.Errorf("upsert params %+v", up.Params)
			}
			e.tx(t, func(tx pgx.Tx) error {
				damaged := rowsql.KeyArgs(e.keys[50:55], len(e.k.Cols))
				if _, err := tx.Exec(ctx, s.damage, damaged...); err != nil {
					return err
				}
				return nil
			})
			if n := e.differ(t, s); n == 0 {
				t.Fatal("the damage changed nothing: the test proves nothing")
			}
			e.tx(t, func(tx pgx.Tx) error {
				tag, err := tx.Exec(ctx, up.SQL, rowsql.KeyArgs(e.keys[50:55], len(e.k.Cols))...)
				if err == nil && tag.RowsAffected() != 5 {
					err = fmt.Errorf("upserted %d rows, want 5:\n%s", tag.RowsAffected(), up.SQL)
				}
				return err
			})
			if n := e.differ(t, s); n != 0 {
				t.Fatalf("after the upsert %d rows differ:\n%s", n, up.SQL)
			}

			// Delete orphans: of a key blue lacks and one it has, only the
			// first goes.
			orphans := e.b.DeleteKeys(e.k, nil, true, nil)
			e.tx(t, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, s.orphan); err != nil {
					return err
				}
				tag, err := tx.Exec(ctx, orphans.SQL, rowsql.KeyArgs([][]string{s.orphanKey, e.keys[0]}, len(e.k.Cols))...)
				if err == nil && tag.RowsAffected() != 1 {
					err = fmt.Errorf("deleted %d orphans, want 1:\n%s", tag.RowsAffected(), orphans.SQL)
				}
				return err
			})
			if n := e.differ(t, s); n != 0 {
				t.Fatalf("after deleting orphans %d rows differ", n)
			}
		})
	}
}

// KeyOrder takes the unique index on exactly the key's columns, else a
// btree index leading with them (verify's source after cutover: green,
// where blue's key need not be unique), else the key as given; HasIndexOn
// sees only a btree index leading with the columns in that order.
func TestKeyOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE TABLE uniq (a int, b int, c int);
		CREATE INDEX uniq_lead ON uniq (b, a, c); CREATE UNIQUE INDEX uniq_z ON uniq (a, b);
		CREATE TABLE lead (a int, b int, c int); CREATE INDEX lead_hash ON lead USING hash (a); CREATE INDEX lead_bac ON lead (b, a, c);
		CREATE TABLE bare (a int, b int); CREATE INDEX bare_partial ON bare (b, a) WHERE a > 0`)
	for _, c := range []struct {
		table string
		want  []string
		index bool
	}{{"uniq", []string{"a", "b"}, true}, {"lead", []string{"b", "a"}, true}, {"bare", []string{"a", "b"}, false}} {
		tb, err := shadow.LoadTable(ctx, pool, spec.QualifiedName{Schema: "public", Name: c.table})
		if err != nil {
			t.Fatal(err)
		}
		got := rowsql.KeyOrder(tb, []string{"a", "b"})
		if !slices.Equal(got, c.want) || rowsql.HasIndexOn(tb, got) != c.index {
			t.Errorf("%s: order %q (indexed %v), want %q (%v)", c.table, got, rowsql.HasIndexOn(tb, got), c.want, c.index)
		}
	}
}
