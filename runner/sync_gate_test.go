package runner

import (
	"context"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
)

// A blocking hazard stops sync before anything is touched (exit 3).
func TestSyncRefusesBlockingHazard(t *testing.T) {
	t.Parallel()
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, strings.Replace(syncOrdersTable(100, false), "CREATE TABLE orders", "CREATE UNLOGGED TABLE orders", 1))
	env := syncTestEnv(t, dsn)
	_, err := Sync(context.Background(), env, syncSpec(t, syncOrdersSpec("o", false)), SyncOptions{})
	if exitcode.Of(err) != exitcode.Blocked || !strings.Contains(err.Error(), "unlogged") {
		t.Fatalf("err = %v, want exit 3 naming the unlogged hazard", err)
	}
	var kind string
	var schemas int
	if err := pool.QueryRow(context.Background(), `SELECT relkind::text, (SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'g%')
		FROM pg_class WHERE oid = 'public.orders'::regclass`).Scan(&kind, &schemas); err != nil {
		t.Fatal(err)
	}
	if kind != "r" || schemas != 0 {
		t.Fatalf("after refusal: public.orders relkind %q, greenswap/gs_ schemas %d; want untouched", kind, schemas)
	}
}
