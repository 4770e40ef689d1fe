package stream_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/sync/stream"
	"github.com/greenswap/greenswap/trigger"
)

// TestRetireHoldsWritersUntilDrained: Retire's switch transaction holds
// blue's writers from the moment it reads the switch position until the
// stream has applied everything before it and the forward triggers are on,
// so no trigger ever writes a green that is not current. The writes that
// made the PG 18 ghost row under the old order (a delete of a re-keyed
// row, a re-key back; sync/stream/README.md, "Cutover") are started inside
// that window: they must wait (a lock wait, seen
// in pg_stat_activity), then commit by trigger after the switch, and green
// equals blue (the hand-written EXCEPT diff). Whether the re-keys are still
// in the slot when the switch locks blue depends on the catching up; the
// window is what the old order (switch, then drain) left open.
func TestRetireHoldsWritersUntilDrained(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := uniqueName("hold")
	f := setup(t, ordersTable(20), ordersSpec(name), name)
	f.backfill(100)
	f.exec(strings.Join(trigger.SetReverseSQL(f.names, true), ";")) // synced
	f.exec(`UPDATE orders SET id = -5 WHERE id = 5`)                // in the slot, not applied
	f.exec(`UPDATE orders SET id = -6 WHERE id = 6`)

	writes := []string{`DELETE FROM orders WHERE id = -5`, `UPDATE orders SET id = 6 WHERE id = -6`}
	conns := make([]*pgx.Conn, len(writes))
	pids := make([]int32, len(writes))
	for i := range writes {
		c, err := pgx.Connect(ctx, f.dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if err := c.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pids[i]); err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	errs := make(chan error, len(writes))
	var waited []string
	opt := stream.RetireOptions{Lock: shadow.DefaultLockOptions(), Hold: 20 * time.Second}
	stream.SetRetireAfterLock(&opt, func() {
		for i, w := range writes {
			go func() { _, err := conns[i].Exec(ctx, w); errs <- err }()
		}
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			var n int
			if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1) AND wait_event_type = 'Lock'`, pids).Scan(&n); err != nil {
				t.Error(err)
				return
			}
			if n == len(writes) {
				waited = writes
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	res, err := stream.Retire(ctx, f.config(stream.Options{}), opt)
	if err != nil {
		t.Fatal(err)
	}
	if len(waited) != len(writes) {
		t.Fatal("blue's writers did not wait for the switch while the stream applied the rest")
	}
	for range writes {
		if err := <-errs; err != nil {
			t.Fatalf("a writer held by the switch: %v", err)
		}
	}
	if n := f.count(`SELECT count(*) FROM ` + f.names.Green.Schema + `.orders WHERE id IN (-5, -6)`); n != 0 {
		t.Fatalf("green keeps %d of the rows blue deleted or re-keyed during the switch", n)
	}
	if d := f.diff(); d != 0 {
		t.Fatalf("green differs from blue in %d rows after Retire", d)
	}
	t.Logf("retire: %d attempts, pre-drain %s, drain under the lock %s, switch %s", res.Attempts, res.PreDrain, res.Drain, res.Switch)
}

// TestRetireHoldExpiredChangesNothing: when the stream cannot apply the
// rest within Hold in any attempt, Retire gives up with a lock timeout
// (exit 5) naming the lag, and nothing has changed: the forward triggers
// are still off, the slot and publication are still there, the writers it
// held went on. Retire then succeeds with a Hold it can meet.
func TestRetireHoldExpiredChangesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := uniqueName("hexp")
	f := setup(t, ordersTable(50), ordersSpec(name), name)
	f.backfill(100)
	f.exec(strings.Join(trigger.SetReverseSQL(f.names, true), ";")) // synced
	w := startWorkload(t, f.dsn, "orders", 2, 21, false)            // always something left to apply
	time.Sleep(200 * time.Millisecond)
	lock := shadow.DefaultLockOptions()
	lock.MaxAttempts, lock.BaseBackoff = 2, 10*time.Millisecond
	_, err := stream.Retire(ctx, f.config(stream.Options{}), stream.RetireOptions{Lock: lock, Hold: time.Nanosecond})
	var lto *shadow.LockTimeoutError
	if !errors.As(err, &lto) || lto.Attempts != 2 || !strings.Contains(err.Error(), "while blue's writers waited") {
		t.Fatalf("Retire with a hold it cannot meet: %v", err)
	}
	if n := f.count(`SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::regclass AND tgname LIKE 'gs_sync_%' AND tgenabled <> 'D'`,
		f.names.Blue.Schema+"."+f.names.Blue.Name); n != 0 {
		t.Fatalf("%d forward triggers enabled after a failed Retire", n)
	}
	if exists, _, _, _ := stream.SlotInfo(ctx, f.pool, f.names.Slot); !exists {
		t.Fatal("a failed Retire dropped the slot")
	}
	if errs := w.stop(); len(errs) > 0 { // the writers it held went on
		t.Fatalf("%d workload errors, first: %v", len(errs), errs[0])
	}
	if w.ops.Load() == 0 {
		t.Fatal("the workload did not run")
	}
	res, err := stream.Retire(ctx, f.config(stream.Options{}), stream.RetireOptions{Lock: shadow.DefaultLockOptions(), Hold: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if d := f.diff(); d != 0 {
		t.Fatalf("green differs from blue in %d rows after Retire", d)
	}
	t.Logf("retire after the failed one: %d attempts", res.Attempts)
}
