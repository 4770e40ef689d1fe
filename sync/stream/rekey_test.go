package stream_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/sync/stream"
	"github.com/greenswap/greenswap/trigger"
)

// rekeySpec is ordersSpec with a column only green has (origin, with a
// default): a re-key that reached green as DELETE + INSERT would reset it.
func rekeySpec(name string) string {
	return strings.Replace(ordersSpec(name), "      note       text,", "      note       text,\n      origin     text NOT NULL DEFAULT 'default',", 1)
}

// TestKeyUpdateStaysUpdate (issue 11.2, trap 13): blue re-keys rows — one
// UPDATE, a chain A → B → C in one transaction, a re-key followed by a new
// row under the old key — and green, through the stream, updates its rows
// in place: the green-only column keeps the value set through green, and a
// table referencing green ON UPDATE CASCADE ON DELETE CASCADE keeps its
// rows, following the new keys.
func TestKeyUpdateStaysUpdate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := uniqueName("rekey")
	f := setup(t, ordersTable(100), rekeySpec(name), name)
	f.backfill(1000)
	f.exec(strings.Join(trigger.SetReverseSQL(f.names, true), ";"))
	green := db.Ident(f.names.Green.Schema, f.names.Green.Name)
	r := f.run(stream.Options{})
	f.exec(`CREATE TABLE public.line_items (order_id bigint NOT NULL REFERENCES ` + green + ` (id) ON UPDATE CASCADE ON DELETE CASCADE, n int)`)
	f.exec(`UPDATE ` + green + ` SET origin = 'green ' || id WHERE id IN (5, 6, 7, 8, 9, 10, 11)`)
	f.exec(`INSERT INTO public.line_items VALUES (5, 1), (6, 1), (7, 1), (8, 1), (9, 1), (10, 1)`)
	f.waitApplied(10 * time.Second)

	f.exec(`UPDATE orders SET id = -5 WHERE id = 5`)
	f.exec(`BEGIN; UPDATE orders SET id = 1006 WHERE id = 6; UPDATE orders SET amount = 66 WHERE id = 1006; UPDATE orders SET id = 2006 WHERE id = 1006; COMMIT`)
	f.exec(`BEGIN; UPDATE orders SET id = -7 WHERE id = 7; INSERT INTO orders (id, tenant, email, amount) VALUES (7, 1, 'new@x', 7); COMMIT`)
	f.exec(`BEGIN; UPDATE orders SET id = -8 WHERE id = 8; UPDATE orders SET id = 8 WHERE id = -8; COMMIT`)                               // back where it was
	f.exec(`BEGIN; UPDATE orders SET id = 3009 WHERE id = 9; UPDATE orders SET id = 9 WHERE id = 10; COMMIT`)                             // into the key just freed
	f.exec(`BEGIN; DELETE FROM orders WHERE id = 11; INSERT INTO orders (id, tenant, email, amount) VALUES (11, 1, 'new@x', 11); COMMIT`) // a new row, not the old one
	f.waitApplied(10 * time.Second)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	rows, err := f.pool.Query(ctx, `SELECT id, origin FROM `+green+` WHERE id IN (-5, 5, 6, 1006, 2006, -7, 7, 8, -8, 9, 10, 3009, 11) ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[int64]string{}
	for rows.Next() {
		var id int64
		var origin string
		if err := rows.Scan(&id, &origin); err != nil {
			t.Fatal(err)
		}
		got[id] = origin
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	want := map[int64]string{-5: "green 5", 2006: "green 6", -7: "green 7", 7: "default", 8: "green 8", 3009: "green 9", 9: "green 10", 11: "default"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("green rows after blue's key updates: %v, want %v (a re-key applied as DELETE + INSERT resets green's own columns)", got, want)
	}
	var items string
	if err := f.pool.QueryRow(ctx, `SELECT string_agg(order_id::text, ',' ORDER BY order_id) FROM public.line_items`).Scan(&items); err != nil {
		t.Fatal(err)
	}
	if items != "-7,-5,8,9,2006,3009" {
		t.Fatalf("line items reference %s, want -7,-5,8,9,2006,3009 (ON DELETE CASCADE fired?)", items)
	}
	if d := f.diff(); d != 0 {
		t.Fatalf("green differs from blue in %d rows", d)
	}
}

// TestKeyUpdatesRandomized: concurrent writers through the app name re-key
// rows (single, chained in one transaction, re-key and insert under the
// old key), update, insert and delete them, while the stream applies in
// small batches. Oracles, both independent of greenswap: the full EXCEPT
// diff of the mapped columns, and for the green-only column the row's
// identity — every original row carries its original id in blue's note
// (the workload never writes note), green's origin was set from it once,
// and must still match wherever the row went; rows the workload inserted
// must have the default.
func TestKeyUpdatesRandomized(t *testing.T) {
	t.Parallel()
	for _, seed := range seeds(t, 2) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			ctx := context.Background()
			name := uniqueName("rkr")
			table := ordersTable(0) + `
				INSERT INTO orders (id, tenant, email, amount, note) SELECT g, g % 7, 'u' || g || '@x', g % 1000, 'o' || g FROM generate_series(1, 3000) g;
				SELECT setval('orders_id_seq', 3000);
				CREATE SEQUENCE public.rekey_seq START 1000000;`
			f := setup(t, table, rekeySpec(name), name)
			f.backfill(1000)
			green := db.Ident(f.names.Green.Schema, f.names.Green.Name)
			blue := db.Ident(f.names.Blue.Schema, f.names.Blue.Name)
			// Set before the reverse direction is on: green's own column only.
			// As greenswap's own session (sync flag set): green refuses other
			// writes until synced.
			pgtest.Exec(t, f.dsn, `SELECT pg_catalog.set_config(`+db.Literal(f.names.SyncFlag)+`, '0', true); UPDATE `+green+` SET origin = id::text`)
			f.exec(strings.Join(trigger.SetReverseSQL(f.names, true), ";"))
			r := f.run(stream.Options{MaxBatchKeys: 40, ApplyWorkers: 3})

			cfg, err := pgxpool.ParseConfig(f.dsn)
			if err != nil {
				t.Fatal(err)
			}
			cfg.MaxConns = 4
			wp, err := pgxpool.NewWithConfig(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer wp.Close()
			var ops, failed atomic.Int64
			wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			var wg gosync.WaitGroup
			errs := make(chan error, 4)
			const pick = `(SELECT id FROM orders ORDER BY random() LIMIT 1)`
			for i := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(seed, uint64(i)))
					for wctx.Err() == nil {
						var err error
						switch op := rng.IntN(100); {
						case op < 30:
							_, err = wp.Exec(wctx, `UPDATE orders SET id = nextval('public.rekey_seq') WHERE id = `+pick)
						case op < 45:
							err = pgx.BeginFunc(wctx, wp, func(tx pgx.Tx) error {
								var to int64
								if err := tx.QueryRow(wctx, `UPDATE orders SET id = nextval('public.rekey_seq') WHERE id = `+pick+` RETURNING id`).Scan(&to); err != nil {
									return err
								}
								if _, err := tx.Exec(wctx, `UPDATE orders SET amount = amount + 1 WHERE id = $1`, to); err != nil {
									return err
								}
								_, err := tx.Exec(wctx, `UPDATE orders SET id = nextval('public.rekey_seq') WHERE id = $1`, to)
								return err
							})
						case op < 55:
							err = pgx.BeginFunc(wctx, wp, func(tx pgx.Tx) error {
								var from int64
								if err := tx.QueryRow(wctx, `UPDATE orders AS o SET id = nextval('public.rekey_seq') FROM (SELECT id AS old FROM orders ORDER BY random() LIMIT 1) AS p
									WHERE o.id = p.old RETURNING p.old`).Scan(&from); err != nil {
									return err
								}
								_, err := tx.Exec(wctx, `INSERT INTO orders (id, tenant, email, amount) VALUES ($1, 1, 'again@x', 1)`, from)
								return err
							})
						case op < 75:
							_, err = wp.Exec(wctx, `UPDATE orders SET amount = $1, email = $2 WHERE id = `+pick, rng.IntN(100000), fmt.Sprint("e", rng.IntN(100)))
						case op < 88:
							_, err = wp.Exec(wctx, `INSERT INTO orders (tenant, email, amount) VALUES (2, 'ins@x', $1)`, rng.IntN(1000))
						default:
							_, err = wp.Exec(wctx, `DELETE FROM orders WHERE id = `+pick)
						}
						switch {
						case err == nil:
							ops.Add(1)
						case wctx.Err() != nil:
						case db.SQLState(err) == db.DeadlockDetected || db.SQLState(err) == db.UniqueViolation || err == pgx.ErrNoRows:
							failed.Add(1) // rolled back: nothing happened
						default:
							select {
							case errs <- err:
							default:
							}
							return
						}
					}
				}()
			}
			wg.Wait()
			select {
			case err := <-errs:
				t.Fatalf("workload: %v", err)
			default:
			}
			f.waitApplied(30 * time.Second)
			st := r.s.Stats()
			if err := r.stop(); err != nil {
				t.Fatal(err)
			}
			if d := f.diff(); d != 0 {
				t.Fatalf("green differs from blue in %d rows", d)
			}
			moved := f.count(`SELECT count(*) FROM ` + blue + ` WHERE note LIKE 'o%' AND id::text <> substr(note, 2)`)
			wrong := f.count(`SELECT count(*) FROM ` + blue + ` AS b JOIN ` + green + ` AS g USING (id)
				WHERE g.origin IS DISTINCT FROM CASE WHEN b.note LIKE 'o%' THEN substr(b.note, 2) ELSE 'default' END`)
			if wrong != 0 {
				rows, err := f.pool.Query(ctx, `SELECT b.id, b.note, g.origin FROM `+blue+` AS b JOIN `+green+` AS g USING (id)
					WHERE g.origin IS DISTINCT FROM CASE WHEN b.note LIKE 'o%' THEN substr(b.note, 2) ELSE 'default' END ORDER BY b.id LIMIT 10`)
				if err == nil {
					for rows.Next() {
						v, _ := rows.Values()
						t.Logf("wrong: id, note, origin = %v", v)
					}
					rows.Close()
				}
			}
			if wrong != 0 || moved < 100 {
				t.Fatalf("%d green rows carry another row's green-only value (or a reset one); %d original rows were re-keyed", wrong, moved)
			}
			t.Logf("%d ops (%d rolled back), %d original rows re-keyed; stream %d txns, %d keys, %d batches", ops.Load(), failed.Load(), moved, st.Txns, st.Keys, st.Batches)
		})
	}
}
