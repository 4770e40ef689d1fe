package trigger_test

import (
	"context"
	"testing"
)

// Trap 1 when green's key reads a blue column outside blue's key: an UPDATE
// of that column is not a key update for blue, so FOR KEY SHARE would not
// make it wait, and the batch would copy the old image under the old green
// key next to the trigger's new one (a ghost). The batch must lock FOR SHARE.
func TestBackfillGreenKeyBeyondBlueKeyLeavesNoGhost(t *testing.T) {
	t.Parallel()
	m := migrate(t, `
		CREATE TABLE orders (id bigserial PRIMARY KEY, tenant int NOT NULL, v text);
		INSERT INTO orders (tenant, v) SELECT 1, 'x' || g FROM generate_series(1, 20) g;`, `
name: o
table: orders
target:
  ddl: CREATE TABLE orders (id bigint NOT NULL, tenant int NOT NULL, v text, PRIMARY KEY (tenant, id))
`, true)
	ctx := context.Background()
	upd, err := m.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer upd.Rollback(ctx)
	if _, err := upd.Exec(ctx, `UPDATE orders SET tenant = 2 WHERE id = 5`); err != nil {
		t.Fatal(err)
	}
	batch, err := m.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer batch.Rollback(ctx)
	// The batch bounds its row-lock waits at a quarter of deadlock_timeout
	// (it yields to the app in lock cycles); raised here so that the wait
	// outlasts a slow machine's gap between seeing it and the commit.
	if _, err := batch.Exec(ctx, `SET LOCAL deadlock_timeout = '40s'`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		if _, err := m.backfiller().CopyBatch(ctx, batch, nil, 100); err != nil {
			done <- err
			return
		}
		done <- batch.Commit(ctx)
	}()
	waitLockWait(t, m.pool, batch.Conn().PgConn().PID())
	select {
	case err := <-done:
		t.Fatalf("the batch did not wait for the UPDATE of a green-key column (err %v)", err)
	default:
	}
	if err := upd.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b := m.count(t, `SELECT count(*) FROM gs_o_blue.orders`)
	g := m.count(t, `SELECT count(*) FROM gs_o_green.orders`)
	g5 := m.count(t, `SELECT count(*) FROM gs_o_green.orders WHERE id = 5 AND tenant = 2`)
	if g != b || g5 != 1 {
		t.Fatalf("blue %d rows, green %d rows, green (2, 5) rows: %d (ghost)", b, g, g5)
	}
}
