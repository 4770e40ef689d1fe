package runner

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/pgtest"
)

// TestBidirectionalSyncExactlyOnce: from synced on, a write through either
// version schema is applied to the other side exactly once (no echo: the
// per-transaction tuple counters of both tables move by one), inside the
// writer's transaction (visible there before commit, gone with a rollback).
func TestBidirectionalSyncExactlyOnce(t *testing.T) {
	pool, dsn := pgtest.NewPool(t)
	ctx := context.Background()
	pgtest.Exec(t, dsn, `CREATE TABLE acc (id bigint PRIMARY KEY, v int NOT NULL, email text);
		INSERT INTO acc SELECT g, g, NULL FROM generate_series(1, 100) g;`)
	env := coEnv(t, dsn)
	spec := coSync(t, env, `
name: bi
table: public.acc
target:
  ddl: CREATE TABLE acc (id bigint PRIMARY KEY, v numeric(12,2) NOT NULL, email text NOT NULL)
forward:
  email: coalesce(email, 'none')
reverse:
  v: round(v)::int
`)
	// The session's not yet reported tuple counters of both tables (they
	// accumulate until reported, so steps compare deltas).
	counters := func(tx pgx.Tx) [6]int64 {
		t.Helper()
		var c [6]int64
		err := tx.QueryRow(ctx, `SELECT
			pg_stat_get_xact_tuples_inserted('gs_bi_blue.acc'::regclass), pg_stat_get_xact_tuples_updated('gs_bi_blue.acc'::regclass),
			pg_stat_get_xact_tuples_deleted('gs_bi_blue.acc'::regclass),
			pg_stat_get_xact_tuples_inserted('gs_bi_green.acc'::regclass), pg_stat_get_xact_tuples_updated('gs_bi_green.acc'::regclass),
			pg_stat_get_xact_tuples_deleted('gs_bi_green.acc'::regclass)`).Scan(&c[0], &c[1], &c[2], &c[3], &c[4], &c[5])
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	delta := func(a, b [6]int64) string {
		return fmt.Sprintf("blue %d/%d/%d green %d/%d/%d", b[0]-a[0], b[1]-a[1], b[2]-a[2], b[3]-a[3], b[4]-a[4], b[5]-a[5])
	}
	for _, side := range []string{"blue", "green"} {
		other := map[string]string{"blue": "green", "green": "blue"}[side]
		c := coConn(t, dsn, map[string]string{"search_path": "gs_bi_" + side})
		for _, step := range []struct {
			sql, want string
		}{
			{`INSERT INTO acc (id, v, email) VALUES (1000, 5, 'a@x')`, "blue 1/0/0 green 1/0/0"},
			{`UPDATE acc SET v = 6 WHERE id = 1000`, "blue 0/1/0 green 0/1/0"},
			{`UPDATE acc SET id = 1001 WHERE id = 1000`, "blue 0/1/0 green 0/1/0"}, // a key UPDATE stays an UPDATE (trap 13)
			{`DELETE FROM acc WHERE id = 1001`, "blue 0/0/1 green 0/0/1"},
		} {
			for _, commit := range []bool{false, true} {
				tx, err := c.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				c0 := counters(tx)
				if _, err := tx.Exec(ctx, step.sql); err != nil {
					t.Fatalf("%s: %s: %v", side, step.sql, err)
				}
				want := step.want
				if got := delta(c0, counters(tx)); got != want {
					t.Errorf("%s: %s: tuple counters %s, want %s (each side written once)", side, step.sql, got, want)
				}
				// The other side has it inside the same transaction.
				got := coStr(t, tx, fmt.Sprintf(`SELECT coalesce(string_agg(id || ':' || v::int, ','), '') FROM gs_bi_%s.acc WHERE id >= 1000`, other))
				mine := coStr(t, tx, fmt.Sprintf(`SELECT coalesce(string_agg(id || ':' || v::int, ','), '') FROM gs_bi_%s.acc WHERE id >= 1000`, side))
				if got != mine {
					t.Errorf("%s: %s: %s has %q, %s has %q in the same transaction", side, step.sql, other, got, side, mine)
				}
				if commit {
					if err := tx.Commit(ctx); err != nil {
						t.Fatal(err)
					}
				} else {
					tx.Rollback(ctx)
				}
			}
		}
		if n := coInt(t, pool, `SELECT (SELECT count(*) FROM gs_bi_blue.acc) - (SELECT count(*) FROM gs_bi_green.acc)`); n != 0 {
			t.Errorf("after writes through %s: blue and green differ in size by %d", side, n)
		}
	}
	coVerify(t, env, spec)
}
