package stream_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/sync/stream"
	"github.com/greenswap/greenswap/trigger"
)

// A write through green onto a row the stream has not brought to green yet
// is refused, not applied over blue's newer change: an UPDATE with 40001
// (the client retries and then computes on the new value), an INSERT of a
// key blue already has with 23505. Writes onto current rows, and the
// existing "blue wins a delete race" case, go through as before. No
// streamer runs while the client writes, so the stream's lag is as long as
// the test wants.
func TestGreenWriteOnStaleRowRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := uniqueName("stale")
	f := setup(t, ordersTable(50), ordersSpec(name), name)
	f.backfill(100)
	f.exec(`SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('orders', 'id'), 1000)`)
	f.exec(strings.Join(trigger.SetReverseSQL(f.names, true), ";")) // synced
	green := fmt.Sprintf("gs_%s_green.orders", name)
	blue := fmt.Sprintf("gs_%s_blue.orders", name)

	// Blue changes row 7 and gets a new row 2000; the stream is behind.
	f.exec(`UPDATE orders SET amount = 700 WHERE id = 7`)
	f.exec(`INSERT INTO orders (id, tenant, email, amount) VALUES (2000, 1, 'blue@x', 1)`)

	wantState := func(err error, state string, what string) {
		t.Helper()
		if db.SQLState(err) != state {
			t.Fatalf("%s: want SQLSTATE %s, got %v", what, state, err)
		}
	}
	_, err := f.pool.Exec(ctx, `UPDATE `+green+` SET amount = amount + 10 WHERE id = 7`)
	wantState(err, "40001", "a read-modify-write through green on a row blue changed since")
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Hint == "" {
		t.Errorf("the refusal has no hint: %v", err)
	}
	_, err = f.pool.Exec(ctx, `INSERT INTO `+green+` (id, tenant, email, amount) VALUES (2000, 2, 'green@x', 2)`)
	wantState(err, "23505", "an insert through green of a key blue already has")
	_, err = f.pool.Exec(ctx, `UPDATE `+green+` SET id = 2000 WHERE id = 8`)
	wantState(err, "23505", "a re-key through green onto a key blue already has")
	// Blue deletes row 20 and re-keys row 21 to 3021; changes row 22.
	f.exec(`DELETE FROM orders WHERE id = 20`)
	f.exec(`UPDATE orders SET id = 3021, amount = amount + 1 WHERE id = 21`)
	f.exec(`UPDATE orders SET amount = 2200 WHERE id = 22`)
	_, err = f.pool.Exec(ctx, `UPDATE `+green+` SET amount = amount + 1 WHERE id IN (21, 3021)`)
	wantState(err, "40001", "an update through green of a row blue re-keyed (green reported UPDATE 1 and blue did nothing)")
	_, err = f.pool.Exec(ctx, `INSERT INTO `+green+` (id, tenant, email, amount) VALUES (20, 1, 'up@x', 1)
		ON CONFLICT (id) DO UPDATE SET amount = EXCLUDED.amount`)
	wantState(err, "40001", "an upsert through green onto a key blue deleted (green's stale row took the update path)")
	err = pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM `+green+` WHERE id = 22`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO `+green+` (id, tenant, email, amount) VALUES (22, 1, 'x@x', 23)`)
		return err
	})
	wantState(err, "40001", "a delete and re-insert through green of a row blue changed")
	if n := f.count(`SELECT count(*) FROM ` + blue + ` WHERE (id = 7 AND amount = 700) OR (id = 2000 AND email = 'blue@x') OR id = 8
		OR (id = 3021 AND amount = 22) OR (id = 22 AND amount = 2200)`); n != 5 {
		t.Fatalf("a refused green write changed blue: %d of 5 rows as blue wrote them", n)
	}
	if n := f.count(`SELECT count(*) FROM ` + blue + ` WHERE id IN (20, 21)`); n != 0 {
		t.Fatalf("a refused green write brought back %d rows blue had deleted or re-keyed", n)
	}
	// A delete of a row blue deleted is refused too: green would report
	// DELETE 1 for a row the live table no longer has (a client inserting
	// the key again next would make a second row beside a re-keyed one).
	f.exec(`DELETE FROM orders WHERE id = 23`)
	_, err = f.pool.Exec(ctx, `DELETE FROM `+green+` WHERE id = 23`)
	wantState(err, "40001", "a delete through green of a row blue deleted")

	// Rows blue did not change: through green as before, including a row
	// whose email the forward mapping filled in (blue's is NULL: green's
	// row is the backfill's copy, not blue's reverse).
	if _, err := f.pool.Exec(ctx, `UPDATE `+green+` SET amount = amount + 10 WHERE id IN (9, 10)`); err != nil {
		t.Fatalf("a green update of rows blue did not change: %v", err)
	}
	if n := f.count(`SELECT count(*) FROM ` + blue + ` WHERE (id = 9 AND amount = 19) OR (id = 10 AND amount = 20)`); n != 2 {
		t.Fatalf("green updates of current rows reached blue as %d of 2 rows", n)
	}
	// A row green wrote last (blue holds its reverse): written again.
	if _, err := f.pool.Exec(ctx, `UPDATE `+green+` SET amount = 12.40 WHERE id = 9`); err != nil {
		t.Fatalf("a second green update of a row green wrote: %v", err)
	}
	if _, err := f.pool.Exec(ctx, `UPDATE `+green+` SET amount = amount + 1 WHERE id = 9`); err != nil {
		t.Fatalf("a third green update (blue holds the rounded reverse, green 12.40): %v", err)
	}
	if _, err := f.pool.Exec(ctx, `UPDATE `+green+` SET amount = 20 WHERE id = 9`); err != nil { // a whole amount again, for the diff
		t.Fatalf("a fourth green update: %v", err)
	}

	// The stream catches up; the retry now computes on blue's value.
	r := f.run(stream.Options{})
	f.waitApplied(10 * time.Second)
	if _, err := f.pool.Exec(ctx, `UPDATE `+green+` SET amount = amount + 10 WHERE id = 7`); err != nil {
		t.Fatalf("the retry after the stream caught up: %v", err)
	}
	if n := f.count(`SELECT count(*) FROM ` + blue + ` WHERE id = 7 AND amount = 710`); n != 1 {
		t.Fatal("blue's update of row 7 was lost: the retry did not compute on it")
	}
	// The other refused writes, retried now, do what they would on one table.
	if _, err := f.pool.Exec(ctx, `UPDATE `+green+` SET amount = amount + 1 WHERE id IN (21, 3021)`); err != nil {
		t.Fatalf("the re-keyed row's retry: %v", err)
	}
	if _, err := f.pool.Exec(ctx, `INSERT INTO `+green+` (id, tenant, email, amount) VALUES (20, 1, 'up@x', 1)
		ON CONFLICT (id) DO UPDATE SET amount = EXCLUDED.amount`); err != nil {
		t.Fatalf("the upsert's retry: %v", err)
	}
	if n := f.count(`SELECT count(*) FROM ` + blue + ` WHERE (id = 3021 AND amount = 23) OR (id = 20 AND amount = 1 AND email = 'up@x')`); n != 2 {
		t.Fatalf("the retries reached blue as %d of 2 rows", n)
	}
	f.waitApplied(10 * time.Second)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if d := f.diff(); d != 0 {
		t.Fatalf("green differs from blue in %d rows", d)
	}
}

// Clients of both shapes increment the same hot rows at once while the
// stream runs (logical mode, synced, before cutover): every increment that
// committed is in the final amount — a ledger the clients keep, not
// greenswap's verify — and green equals blue (EXCEPT diff). The writes are
// increments, upserts onto existing rows and delete-and-insert-again
// transactions; writers retry what PostgreSQL and the stale-row guard
// refuse (40001, 40P01, 23505).
func TestBothShapesSameRowsNoLostUpdate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := uniqueName("both")
	const rows = 6
	f := setup(t, ordersTable(rows), ordersSpec(name), name)
	f.backfill(100)
	f.exec(strings.Join(trigger.SetReverseSQL(f.names, true), ";")) // synced
	r := f.run(stream.Options{})
	green := fmt.Sprintf("gs_%s_green.orders", name)
	blue := fmt.Sprintf("gs_%s_blue.orders", name)
	before := map[int64]int64{}
	rs, err := f.pool.Query(ctx, `SELECT id, amount FROM `+blue)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var id, a int64
		if err := rs.Scan(&id, &a); err != nil {
			t.Fatal(err)
		}
		before[id] = a
	}
	rs.Close()

	var (
		mu      gosync.Mutex
		ledger  = map[int64]int64{} // committed increments per row
		refused = map[string]int{}
		wg      gosync.WaitGroup
		fail    error
	)
	deadline := time.Now().Add(4 * time.Second)
	writer := func(seed uint64, table string) {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(seed, 7))
		conn, err := pgx.Connect(ctx, f.dsn)
		if err != nil {
			fail = err
			return
		}
		defer conn.Close(context.Background())
		for time.Now().Before(deadline) {
			id, delta := int64(1+rng.IntN(rows)), int64(1+rng.IntN(9))
			var err error
			var tag pgconn.CommandTag
			applied := true // the write changed the row (an UPDATE can match none: below)
			switch rng.IntN(4) {
			case 0, 1:
				// At READ COMMITTED an UPDATE that waited for another client's
				// delete-and-insert of the row finds the old version deleted and
				// updates nothing: committed, but no increment (as on one table).
				tag, err = conn.Exec(ctx, `UPDATE `+table+` SET amount = amount + $1 WHERE id = $2`, delta, id)
				applied = tag.RowsAffected() == 1
			case 2: // an upsert onto a row that exists: its update path
				_, err = conn.Exec(ctx, `INSERT INTO `+table+` (id, tenant, email, amount) VALUES ($2, 1, 'new@x', 0)
					ON CONFLICT (id) DO UPDATE SET amount = `+table+`.amount + $1`, delta, id)
			default: // read, delete and insert again: a read-modify-write by DELETE
				err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					var tenant, amount int64
					var email *string
					if err := tx.QueryRow(ctx, `SELECT tenant, email, amount FROM `+table+` WHERE id = $1 FOR UPDATE`, id).Scan(&tenant, &email, &amount); err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, `DELETE FROM `+table+` WHERE id = $1`, id); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, `INSERT INTO `+table+` (id, tenant, email, amount) VALUES ($1, $2, coalesce($3, 'unknown@invalid'), $4)`,
						id, tenant, email, amount+delta)
					return err
				})
			}
			mu.Lock()
			switch st := db.SQLState(err); {
			case err == nil && applied:
				ledger[id] += delta
			case err == nil:
				refused["updated nothing"]++
			case st == "40001" || st == "40P01" || st == "23505":
				refused[st]++
			case errors.Is(err, pgx.ErrNoRows):
				// Another delete-and-insert of the row committed meanwhile: at
				// READ COMMITTED the FOR UPDATE skips the deleted version and
				// this snapshot does not see the new one. Nothing written.
				refused["no row"]++
			default:
				if fail == nil {
					fail = fmt.Errorf("%s: %w", table, err)
				}
			}
			mu.Unlock()
		}
	}
	for i := range 4 {
		wg.Add(2)
		go writer(uint64(2*i), "orders") // the app name: blue before cutover
		go writer(uint64(2*i+1), green)  // a client pinned to green's shape
	}
	wg.Wait()
	if fail != nil {
		t.Fatal(fail)
	}
	f.waitApplied(20 * time.Second)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	lost := 0
	for id, a0 := range before {
		var a int64
		if err := f.pool.QueryRow(ctx, `SELECT amount FROM `+blue+` WHERE id = $1`, id).Scan(&a); err != nil {
			t.Fatal(err)
		}
		if a != a0+ledger[id] {
			lost++
			t.Errorf("row %d: amount %d, the ledger says %d + %d = %d", id, a, a0, ledger[id], a0+ledger[id])
		}
	}
	t.Logf("committed increments %v; refused %v", ledger, refused)
	if lost > 0 {
		t.Fatalf("%d of %d hot rows lost committed increments", lost, rows)
	}
	if d := f.diff(); d != 0 {
		t.Fatalf("green differs from blue in %d rows", d)
	}
}
