package sync_test

import (
	"context"
	"regexp"
	gosync "sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	gssync "github.com/greenswap/greenswap/sync"
)

// The index build sorts on Participants processes: PostgreSQL's own
// DEBUG1 report of each build says how many parallel workers it asked
// for, Participants-1 (maintenance_work_mem raised to let it); with
// Participants 0 the session keeps the server's settings (here
// max_parallel_maintenance_workers = 0: built serially).
func TestIndexBuildParallelWorkers(t *testing.T) {
	t.Parallel()
	f := setup(t, ordersTable, ordersSpec)
	bf := f.backfiller(t, gssync.Options{})
	if _, err := bf.Run(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		participants int
		want         string
	}{
		{0, `building index "orders_amount_idx0" on table "orders" serially`},
		{3, `building index "orders_amount_idx3" on table "orders" with request for 2 parallel workers`},
	} {
		cfg, err := pgx.ParseConfig(f.dsn)
		if err != nil {
			t.Fatal(err)
		}
		// A small table qualifies for a parallel build only without the
		// table-size floor; the server's default here builds serially.
		cfg.RuntimeParams["min_parallel_table_scan_size"] = "0"
		cfg.RuntimeParams["max_parallel_maintenance_workers"] = "0"
		cfg.RuntimeParams["maintenance_work_mem"] = "1MB"
		cfg.RuntimeParams["client_min_messages"] = "debug1"
		var mu gosync.Mutex
		var notices []string
		cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
			mu.Lock()
			defer mu.Unlock()
			notices = append(notices, n.Message)
		}
		name := regexp.MustCompile(`"(orders_amount_idx\d)"`).FindStringSubmatch(tc.want)[1]
		var events []gssync.IndexEvent
		ib := f.indexBuild(t, &events, "CREATE INDEX "+name+" ON orders (amount)")
		ib.ConnConfig = cfg
		ib.Participants = tc.participants
		if err := ib.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		found := false
		for _, n := range notices {
			found = found || n == tc.want
		}
		mu.Unlock()
		if !found {
			t.Fatalf("participants %d: no notice %q in %q", tc.participants, tc.want, notices)
		}
		if n := f.count(t, `SELECT count(*) FROM pg_index WHERE indexrelid = to_regclass('gs_o_green.'||$1) AND indisvalid`, name); n != 1 {
			t.Fatalf("index %s is not valid", name)
		}
	}
}
