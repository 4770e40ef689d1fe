package runner

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	gosync "sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/internal/testkit"
)

// The orders-with-items shape (examples/orders-with-items): order_items
// references orders ON DELETE CASCADE, and orders.id with
// order_items.order_id go int → bigint together.
func tablesSchema(orders, itemsPerOrder int) string {
	return fmt.Sprintf(`
		CREATE TABLE orders (
			id     serial PRIMARY KEY,
			email  text NOT NULL,
			amount int NOT NULL
		);
		CREATE TABLE order_items (
			id       serial PRIMARY KEY,
			order_id int NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
			sku      text NOT NULL,
			qty      int NOT NULL
		);
		CREATE INDEX order_items_order_id_idx ON order_items (order_id);
		INSERT INTO orders (email, amount) SELECT 'u' || g || '@x', g %% 1000 FROM generate_series(1, %d) g;
		INSERT INTO order_items (order_id, sku, qty)
		SELECT o, 'sku-' || k, k FROM generate_series(1, %d) o, generate_series(1, %d) k;
		ANALYZE orders; ANALYZE order_items;`, orders, orders, itemsPerOrder)
}

// tablesSpec lists order_items first: sync must order them by the foreign key.
func tablesSpec(name string) string {
	return fmt.Sprintf(`
name: %s
mode: trigger
tables:
  - table: public.order_items
    key: [id]
    target:
      ddl: |
        CREATE TABLE order_items (
          id       bigint PRIMARY KEY,
          order_id bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
          sku      text NOT NULL,
          qty      int NOT NULL
        )
      indexes:
        - CREATE INDEX order_items_order_id_idx ON order_items (order_id)
    reverse:
      order_id: order_id::int
      id: id::int
  - table: public.orders
    target:
      ddl: |
        CREATE TABLE orders (
          id     bigint PRIMARY KEY,
          email  text NOT NULL,
          amount int NOT NULL
        )
    reverse:
      id: id::int
`, name)
}

// tablesDiff is the per-table EXCEPT diff, blue mapped forward by hand
// against green, both ways.
func tablesDiff(t *testing.T, q db.Querier, name string) (orders, items int64) {
	t.Helper()
	b, g := "gs_"+name+"_blue", "gs_"+name+"_green"
	orders = testkit.Diff(t, q, "SELECT id::bigint, email, amount FROM "+b+".orders", "SELECT id, email, amount FROM "+g+".orders")
	items = testkit.Diff(t, q, "SELECT id::bigint, order_id::bigint, sku, qty FROM "+b+".order_items",
		"SELECT id, order_id, sku, qty FROM "+g+".order_items")
	return orders, items
}

// tablesWorkload: writers through the app names, each transaction an
// order with its items, an update of both, an update of an item alone,
// or an order deleted (its items cascade in blue).
type tablesWorkload struct {
	ops    atomic.Int64
	errs   []error
	mu     gosync.Mutex
	cancel context.CancelFunc
	wg     gosync.WaitGroup
}

func startTablesWorkload(t *testing.T, dsn string, workers int, seed uint64) *tablesWorkload {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &tablesWorkload{cancel: cancel}
	for i := range workers {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			for ctx.Err() == nil {
				err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return tablesOp(ctx, tx, rng) })
				switch {
				case err == nil:
					w.ops.Add(1)
				case ctx.Err() != nil:
				case db.SQLState(err) == db.DeadlockDetected || db.SQLState(err) == "40001":
				default:
					w.mu.Lock()
					w.errs = append(w.errs, err)
					w.mu.Unlock()
					time.Sleep(10 * time.Millisecond)
				}
			}
		}()
	}
	t.Cleanup(func() { w.stop(); pool.Close() })
	return w
}

func tablesOp(ctx context.Context, tx pgx.Tx, rng *rand.Rand) error {
	switch rng.IntN(4) {
	case 0:
		var id int
		if err := tx.QueryRow(ctx, `INSERT INTO public.orders (email, amount) VALUES ($1, $2) RETURNING id`,
			fmt.Sprintf("w%d@x", rng.IntN(1e6)), rng.IntN(1000)).Scan(&id); err != nil {
			return err
		}
		for k := range 1 + rng.IntN(4) {
			if _, err := tx.Exec(ctx, `INSERT INTO public.order_items (order_id, sku, qty) VALUES ($1, $2, $3)`, id, fmt.Sprintf("w-%d", k), k+1); err != nil {
				return err
			}
		}
		return nil
	case 1:
		id := 1 + rng.IntN(2000)
		if _, err := tx.Exec(ctx, `UPDATE public.orders SET amount = amount + 1 WHERE id = $1`, id); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE public.order_items SET qty = qty + 1 WHERE order_id = $1`, id)
		return err
	case 2:
		// An item alone: its order is not written in this transaction.
		_, err := tx.Exec(ctx, `UPDATE public.order_items SET qty = qty + 1 WHERE id = $1`, 1+rng.IntN(9000))
		return err
	default:
		_, err := tx.Exec(ctx, `DELETE FROM public.orders WHERE id = (SELECT max(id) - $1 FROM public.orders)`, rng.IntN(1500))
		return err
	}
}

func (w *tablesWorkload) stop() []error {
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errs
}

// tablesFKsValid: every foreign key among the greens exists and is validated.
func tablesFKs(t *testing.T, q db.Querier, name string) (all, valid int64) {
	t.Helper()
	g := "gs_" + name + "_green"
	all = testkit.Count(t, q, `SELECT count(*) FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid
		WHERE c.contype = 'f' AND c.connamespace = $1::regnamespace AND r.relnamespace = $1::regnamespace`, g)
	valid = testkit.Count(t, q, `SELECT count(*) FROM pg_constraint c JOIN pg_class r ON r.oid = c.confrelid
		WHERE c.contype = 'f' AND c.connamespace = $1::regnamespace AND r.relnamespace = $1::regnamespace AND c.convalidated`, g)
	return all, valid
}

// TestTablesSyncUnderWriters: the orders-with-items migration syncs both
// tables while 8 writers insert orders with their items in one
// transaction, update both and delete orders (cascading): at synced the
// per-table EXCEPT diff is empty, the foreign key among the greens is
// there and validated, green has no orphan item; the events name the NOT
// VALID add and the VALIDATE; status shows both tables; the teardown
// leaves the catalog as before the migration.
func TestTablesSyncUnderWriters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	if _, err := pool.Exec(ctx, tablesSchema(3000, 3)); err != nil {
		t.Fatal(err)
	}
	before := coCatalog(t, pool)
	env := syncTestEnv(t, dsn)
	sp := syncSpec(t, tablesSpec("oi"))
	w := startTablesWorkload(t, dsn, 8, 1)
	syncWaitFor(t, 10*time.Second, "the writers to start", func() bool { return w.ops.Load() > 20 })
	stats, err := Sync(ctx, env, sp, SyncOptions{BatchSize: 200, NiceRatio: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	if stats.State != state.Synced || stats.Rows < 9000 { // the writers delete some before they are copied
		t.Fatalf("sync: state %s, rows %d", stats.State, stats.Rows)
	}
	time.Sleep(300 * time.Millisecond) // writes through both directions now
	if errs := w.stop(); len(errs) > 0 {
		t.Fatalf("%d writer errors, first: %v", len(errs), errs[0])
	}
	if w.ops.Load() < 50 {
		t.Fatalf("only %d writer transactions", w.ops.Load())
	}
	if o, i := tablesDiff(t, pool, "oi"); o != 0 || i != 0 {
		t.Fatalf("blue vs green differ: %d orders rows, %d order_items rows", o, i)
	}
	if all, valid := tablesFKs(t, pool, "oi"); all != 1 || valid != 1 {
		t.Fatalf("foreign keys among the greens: %d, %d validated; want 1, 1", all, valid)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM gs_oi_green.order_items i WHERE NOT EXISTS
		(SELECT 1 FROM gs_oi_green.orders o WHERE o.id = i.order_id)`); n != 0 {
		t.Fatalf("%d orphan items in green", n)
	}
	for _, step := range []string{"add-foreign-key", "validate-foreign-key"} {
		if n := testkit.Count(t, pool, `SELECT count(*) FROM greenswap.events WHERE migration = 'oi' AND step = $1 AND outcome = 'ok'`, step); n != 1 {
			t.Fatalf("%d %s events, want 1", n, step)
		}
	}
	m, err := state.Get(ctx, pool, "oi")
	if err != nil {
		t.Fatal(err)
	}
	tables, _ := m.Tables()
	if o, i := tables["public.orders"], tables["public.order_items"]; !o.Done || !i.Done || o.Order != 0 || i.Order != 1 || o.RowsCopied == 0 || i.RowsCopied == 0 ||
		m.RowsCopied != o.RowsCopied+i.RowsCopied {
		t.Fatalf("per-table progress: %+v, total %d", tables, m.RowsCopied)
	}
	p, err := ReadSyncProgress(ctx, env, "oi")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Tables) != 2 || p.Tables[0].Table != "public.orders" || p.Tables[1].Table != "public.order_items" || !p.Tables[1].Done {
		t.Fatalf("progress tables: %+v", p.Tables)
	}

	rep, err := Status(ctx, env, "oi", StatusOptions{Sample: -1})
	if err != nil {
		t.Fatal(err)
	}
	if st := rep.Migrations[0]; len(st.Tables) != 2 || st.Tables[0].Table != "public.orders" || st.Tables[0].Percent != 100 ||
		st.Progress.RowsCopied != st.Tables[0].RowsCopied+st.Tables[1].RowsCopied || st.Table != "public.orders, public.order_items" {
		t.Fatalf("status: %+v", st)
	}

	// A second sync has nothing to do.
	if st, err := Sync(ctx, env, sp, SyncOptions{}); err != nil || !st.AlreadySynced {
		t.Fatalf("second sync: %+v, %v", st, err)
	}
	res, err := Rollback(ctx, env, "oi", SwapCommandOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Kind != "teardown" || res.State != state.RolledBack {
		t.Fatalf("rollback: %+v", res)
	}
	after := coCatalog(t, pool)
	if d := coDiff(before, after); d != "" {
		t.Fatalf("the catalog after the teardown is not as before the migration:\n%s", d)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'gs\_%'`); n != 0 {
		t.Fatalf("%d gs_ schemas left", n)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM pg_proc WHERE proname LIKE 'gs\_%'`); n != 0 {
		t.Fatalf("%d gs_ functions left", n)
	}
	// The app writes its tables again, the foreign key still cascades.
	if _, err := pool.Exec(ctx, `DELETE FROM public.orders WHERE id = (SELECT min(id) FROM public.orders)`); err != nil {
		t.Fatal(err)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM public.order_items i WHERE NOT EXISTS (SELECT 1 FROM public.orders o WHERE o.id = i.order_id)`); n != 0 {
		t.Fatalf("%d orphan items after the teardown", n)
	}
}

// TestTablesSyncResumesPerTable: a sync stopped during the second
// table's backfill (orders done, order_items part way) resumes there:
// orders is not copied again, order_items goes on from its cursor, and
// the result equals blue.
func TestTablesSyncResumesPerTable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	if _, err := pool.Exec(ctx, tablesSchema(1000, 4)); err != nil {
		t.Fatal(err)
	}
	env := syncTestEnv(t, dsn)
	sp := syncSpec(t, tablesSpec("oir"))
	run, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		// Stop once order_items has some rows copied, not all.
		for run.Err() == nil {
			if m, err := state.Get(ctx, pool, "oir"); err == nil {
				if tb, _ := m.Tables(); tb["public.order_items"].RowsCopied > 0 {
					cancel()
					return
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	_, err := Sync(run, env, sp, SyncOptions{BatchSize: 100, NiceRatio: 1})
	if exitcode.Of(err) != exitcode.Interrupted {
		t.Fatalf("sync: %v (exit %d), want interrupted", err, exitcode.Of(err))
	}
	m, err := state.Get(ctx, pool, "oir")
	if err != nil {
		t.Fatal(err)
	}
	tables, _ := m.Tables()
	o, i := tables["public.orders"], tables["public.order_items"]
	if !o.Done || o.RowsCopied != 1000 || i.Done || i.RowsCopied == 0 || i.RowsCopied >= 4000 || m.Phase != PhaseBackfill {
		t.Fatalf("after the stop: orders %+v, items %+v, phase %q", o, i, m.Phase)
	}
	// Rows written meanwhile reach green through the triggers.
	if _, err := pool.Exec(ctx, `INSERT INTO public.order_items (order_id, sku, qty) VALUES (1, 'late', 9)`); err != nil {
		t.Fatal(err)
	}
	stats, err := Sync(ctx, env, sp, SyncOptions{BatchSize: 500})
	if err != nil {
		t.Fatal(err)
	}
	if stats.State != state.Synced {
		t.Fatalf("resumed sync: %s", stats.State)
	}
	// Only the rest of order_items was copied in the second run.
	if stats.Rows > 4000-i.RowsCopied+1 || stats.Rows == 0 {
		t.Fatalf("resumed sync copied %d rows; order_items had %d of 4000", stats.Rows, i.RowsCopied)
	}
	if od, id := tablesDiff(t, pool, "oir"); od != 0 || id != 0 {
		t.Fatalf("blue vs green differ: %d, %d", od, id)
	}
	if all, valid := tablesFKs(t, pool, "oir"); all != 1 || valid != 1 {
		t.Fatalf("foreign keys among the greens: %d, %d validated", all, valid)
	}
}

// TestTablesSyncLogicalOneSlot: a migration of several tables in logical
// mode streams every member through one slot and one publication, which
// names every blue (and nothing else), with the forward triggers of every
// blue off; a rollback (teardown) drops both, and the catalog is as before
// the migration.
func TestTablesSyncLogicalOneSlot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	if _, err := pool.Exec(ctx, tablesSchema(50, 2)); err != nil {
		t.Fatal(err)
	}
	before := coCatalog(t, pool)
	env := syncTestEnv(t, dsn)
	name := logicalName("ol")
	sp := syncSpec(t, strings.Replace(tablesSpec(name), "mode: trigger", "mode: logical", 1))
	if st, err := Sync(ctx, env, sp, SyncOptions{}); err != nil || st.State != state.Synced || st.Stream == nil {
		t.Fatalf("sync: %+v, %v", st, err)
	}
	blue := "gs_" + name + "_blue"
	if got := coStr(t, pool, `SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY tablename COLLATE "C") FROM pg_publication_tables WHERE pubname = $1`,
		"gs_"+name); got != blue+".order_items,"+blue+".orders" {
		t.Fatalf("the publication has %q, want both blues", got)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE $1`, "gs\\_"+name+"%"); n != 1 {
		t.Fatalf("%d slots of the migration, want 1", n)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM pg_trigger t WHERE t.tgrelid IN ($1::regclass, $2::regclass) AND t.tgname LIKE 'gs\_sync\_%' AND t.tgenabled = 'D'`,
		blue+".orders", blue+".order_items"); n != 4 {
		t.Fatalf("%d disabled forward triggers on the blues, want 4 (row and truncate of each)", n)
	}
	if _, err := Rollback(ctx, env, name, SwapCommandOptions{}); err != nil {
		t.Fatal(err)
	}
	if slotExists(t, env, "gs_"+name) || publicationExists(t, env, "gs_"+name) {
		t.Fatal("the slot or publication outlived the rollback")
	}
	if d := coDiff(before, coCatalog(t, pool)); d != "" {
		t.Fatalf("the catalog after the teardown is not as before the migration:\n%s", d)
	}
}

// TestTablesSyncKilledResumes: greenswap sync is killed (SIGKILL) during
// the second table's backfill, with writers on both tables; the re-run
// resumes order_items from its checkpoint (orders is not copied again),
// and the result equals blue with the foreign key among the greens valid.
func TestTablesSyncKilledResumes(t *testing.T) {
	t.Parallel()
	bin := syncBuildCLI(t)
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	if _, err := pool.Exec(ctx, tablesSchema(2000, 5)); err != nil {
		t.Fatal(err)
	}
	file := syncWriteSpec(t, tablesSpec("oik"))
	w := startTablesWorkload(t, dsn, 2, 7)
	r := syncStartCLI(t, bin, dsn, "sync", "-f", file, "--batch-size", "100")
	var at state.TableProgress
	for {
		select {
		case err := <-r.done:
			t.Fatalf("sync ended before the kill: %v\n%s", err, r.stderr.String())
		case <-time.After(3 * time.Millisecond):
		}
		m, err := state.Get(ctx, pool, "oik")
		if err != nil {
			continue
		}
		if tb, _ := m.Tables(); tb["public.order_items"].RowsCopied > 0 {
			r.cmd.Process.Signal(syscall.SIGKILL)
			<-r.done
			break
		}
	}
	// A batch the killed client was committing can still commit on the
	// server after the client is gone: read the state once its sessions are.
	syncWaitFor(t, 10*time.Second, "the killed run's sessions to end", func() bool {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_stat_activity
			WHERE datname = pg_catalog.current_database() AND pid <> pg_catalog.pg_backend_pid()
			  AND application_name LIKE 'greenswap%'`).Scan(&n)
		return err == nil && n == 0
	})
	m, err := state.Get(ctx, pool, "oik")
	if err != nil {
		t.Fatal(err)
	}
	tables, _ := m.Tables()
	o := tables["public.orders"]
	at = tables["public.order_items"]
	if !o.Done || at.Done || at.RowsCopied == 0 || m.Phase != PhaseBackfill || m.State != state.Syncing {
		t.Fatalf("after the kill: orders %+v, items %+v, %s/%s", o, at, m.State, m.Phase)
	}
	env := syncTestEnv(t, dsn)
	if p, err := ReadSyncProgress(ctx, env, "oik"); err != nil || len(p.Tables) != 2 || p.Tables[0].Copying || !p.Tables[1].Copying ||
		p.Tables[1].RowsCopied != at.RowsCopied || p.RowsCopied != o.RowsCopied+at.RowsCopied {
		t.Fatalf("progress after the kill: %+v, %v", p, err)
	}
	var stats *SyncStats
	syncWaitFor(t, 10*time.Second, "the killed run's lock to go", func() bool {
		stats, err = Sync(ctx, env, syncSpec(t, tablesSpec("oik")), SyncOptions{BatchSize: 500})
		return exitcode.Of(err) != exitcode.Busy
	})
	if err != nil {
		t.Fatal(err)
	}
	if errs := w.stop(); len(errs) > 0 {
		t.Fatalf("%d writer errors, first: %v", len(errs), errs[0])
	}
	if stats.State != state.Synced || stats.Rows == 0 || stats.Rows > 10000-at.RowsCopied+500 {
		t.Fatalf("resumed sync: %s, copied %d rows; order_items had %d of ~10000 at the kill", stats.State, stats.Rows, at.RowsCopied)
	}
	if od, id := tablesDiff(t, pool, "oik"); od != 0 || id != 0 {
		t.Fatalf("blue vs green differ: %d, %d", od, id)
	}
	if all, valid := tablesFKs(t, pool, "oik"); all != 1 || valid != 1 {
		t.Fatalf("foreign keys among the greens: %d, %d validated", all, valid)
	}
}

// TestTablesTeardownBeforeBackfill: a migration of several tables rolled
// back right after setup (every table adopted, every green with its
// triggers, the foreign keys among them dropped) gives the app every
// table back in one transaction: the catalog is as before, no gs_ object.
func TestTablesTeardownBeforeBackfill(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	if _, err := pool.Exec(ctx, tablesSchema(50, 2)); err != nil {
		t.Fatal(err)
	}
	before := coCatalog(t, pool)
	env := syncTestEnv(t, dsn)
	if _, err := Sync(ctx, env, syncSpec(t, tablesSpec("oit")), SyncOptions{StopAfterSetup: true}); err != nil {
		t.Fatal(err)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM pg_class WHERE relnamespace = 'gs_oit_green'::regnamespace AND relkind = 'r'`); n != 2 {
		t.Fatalf("%d greens after setup, want 2", n)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM pg_trigger WHERE tgname = 'gs_sync_oit'`); n != 4 {
		t.Fatalf("%d sync triggers after setup, want 4 (blue and green of each table)", n)
	}
	if all, _ := tablesFKs(t, pool, "oit"); all != 0 {
		t.Fatalf("%d foreign keys among the greens during the copy, want 0", all)
	}
	var out strings.Builder
	res, err := Rollback(ctx, env, "oit", SwapCommandOptions{Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	if res.Kind != "teardown" || res.State != state.RolledBack {
		t.Fatalf("rollback: %+v", res)
	}
	for _, want := range []string{"drop the view public.orders", "drop the view public.order_items", "drop gs_oit_green.order_items"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("rollback output lacks %q:\n%s", want, out.String())
		}
	}
	if d := coDiff(before, coCatalog(t, pool)); d != "" {
		t.Fatalf("the catalog after the teardown is not as before the migration:\n%s", d)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM pg_proc WHERE proname LIKE 'gs\_%'`); n != 0 {
		t.Fatalf("%d gs_ functions left", n)
	}
}
