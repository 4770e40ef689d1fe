package runner

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
)

// TestCopyYieldsToTheAppInLockCycles: an application transaction that
// writes two rows against the copy's key order (the higher key, then the
// lower) closes a lock cycle with a backfill batch copying both: the
// batch's uncommitted green row holds the app's sync trigger, and the app's
// holds the batch. PostgreSQL fails whichever waiter's deadlock_timeout
// fires first, and the app waits first; so greenswap's own row writers
// (every batch, the stream's apply: rowsql.CopySettings) give up their
// wait well before deadlock_timeout, roll back and retry. 8 writers run
// such transactions through the app name throughout sync: not one app
// transaction fails (no 40P01), and green equals blue afterwards (EXCEPT
// both ways).
func TestCopyYieldsToTheAppInLockCycles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const rows = 2000
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, fmt.Sprintf(`
		CREATE TABLE pairs (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0, note text);
		-- A forward expression that costs a moment a row (as a heavy
		-- transformation or a loaded server does) keeps a batch between
		-- two keys for long enough that the app lands in between.
		CREATE FUNCTION slow_widen(x int) RETURNS bigint LANGUAGE sql VOLATILE
			AS $$ SELECT x::bigint FROM pg_catalog.pg_sleep(0.002) $$;
		INSERT INTO pairs (id, note) SELECT g, 'n' || g FROM generate_series(1, %d) g;
		ANALYZE pairs;`, rows))
	env := syncTestEnv(t, dsn)
	app := startAppTx(t, dsn, 8, 20, func(ctx context.Context, tx pgx.Tx, rng *rand.Rand) error {
		lo := 1 + rng.Int64N(rows-40)
		hi := lo + 1 + rng.Int64N(30)
		for _, q := range []struct {
			sql string
			arg any
		}{{`UPDATE public.pairs SET v = v + 1 WHERE id = $1`, hi}, {`SELECT pg_catalog.pg_sleep($1)`, 0.002}, {`UPDATE public.pairs SET v = v + 1 WHERE id = $1`, lo}} {
			if _, err := tx.Exec(ctx, q.sql, q.arg); err != nil {
				return err
			}
		}
		return nil
	})
	st, err := Sync(ctx, env, syncSpec(t, `
name: pairs
table: public.pairs
target:
  ddl: |
    CREATE TABLE pairs (id bigint PRIMARY KEY, v bigint NOT NULL DEFAULT 0, note text)
forward:
  v: slow_widen(v)
reverse:
  v: v::int
`), SyncOptions{BatchSize: 50})
	app.stop()
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	if st.State != state.Synced {
		t.Fatalf("sync ended %s", st.State)
	}
	app.check(t, "the copy")
	diff := syncCount(t, pool, `SELECT count(*) FROM (
		(SELECT id, v::bigint, note FROM gs_pairs_blue.pairs EXCEPT ALL SELECT id, v, note FROM gs_pairs_green.pairs)
		UNION ALL
		(SELECT id, v, note FROM gs_pairs_green.pairs EXCEPT ALL SELECT id, v::bigint, note FROM gs_pairs_blue.pairs)) d`)
	if diff != 0 {
		t.Fatalf("green differs from blue in %d rows", diff)
	}
	t.Logf("app: %d transactions, none failed; sync retried %d batches", app.ops.Load(), st.Retries)
}
