package runner

import (
	"context"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/greenswap/greenswap/cutover"
)

// TestStatusSeveralTablesShapes: a migration of orders and order_items
// after cutover shows each table's progress line, and each table's shapes:
// an app client writing an order with its items through the app names is
// on the app name of both tables and nowhere else (its sync writes, their
// foreign key checks among the blues and greens, are not a client of a
// version schema); an old release adding items through blue's schema is on
// blue of order_items only (its check of the parent in orders is not a
// read of orders); a report reading orders in green's schema is on green
// of orders only.
func TestStatusSeveralTablesShapes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, dsn, env := tablesCutOver(t, "st", 40)
	// The writers are waited for before their connections close (a
	// cleanup closing one under a writer failed it with "conn closed").
	wctx, cancel := context.WithCancel(ctx)
	var wg gosync.WaitGroup
	stop := func() { cancel(); wg.Wait() }
	defer stop()
	var writes atomic.Int64
	loop := func(app, searchPath, sql string) {
		params := map[string]string{"application_name": app}
		if searchPath != "" {
			params["search_path"] = searchPath
		}
		c := coConn(t, dsn, params)
		wg.Add(1)
		go func() {
			defer wg.Done()
			bg := context.Background()
			for wctx.Err() == nil {
				tx, err := c.Begin(bg)
				if err != nil {
					return
				}
				if _, err := tx.Exec(bg, sql); err != nil {
					t.Errorf("%s: %v", app, err)
					tx.Rollback(bg)
					return
				}
				time.Sleep(30 * time.Millisecond)
				if tx.Commit(bg) == nil {
					writes.Add(1)
				}
			}
		}()
	}
	loop("app-orders", "", `WITH o AS (INSERT INTO orders (email, amount) VALUES ('a@x', 1) RETURNING id)
		INSERT INTO order_items (order_id, sku, qty) SELECT id, 'app', 1 FROM o`)
	loop("old-items", "gs_st_blue", `INSERT INTO order_items (order_id, sku, qty) VALUES (7, 'old', 1)`)
	loop("green-report", "gs_st_green", `SELECT count(*) FROM orders`)
	time.Sleep(200 * time.Millisecond)
	rep, err := Status(ctx, env, "st", StatusOptions{Sample: -1, ShapeWindow: 2 * time.Second, ShapeEvery: 50 * time.Millisecond})
	stop()
	if err != nil {
		t.Fatal(err)
	}
	m := rep.Migrations[0]
	if len(m.Tables) != 2 || m.Tables[0].Table != "public.orders" || m.Tables[1].Table != "public.order_items" || !m.Tables[0].Done {
		t.Fatalf("tables progress: %+v", m.Tables)
	}
	if m.Shapes == nil || len(m.Shapes.Tables) != 2 {
		t.Fatalf("shapes: %+v", m.Shapes)
	}
	seen := map[string]map[string]bool{} // application → "table shape"
	for _, ts := range m.Shapes.Tables {
		for _, u := range ts.Shapes {
			for _, c := range u.Clients {
				if seen[c.Application] == nil {
					seen[c.Application] = map[string]bool{}
				}
				seen[c.Application][ts.Table+" "+u.Shape] = true
			}
		}
	}
	want := map[string][]string{
		"app-orders":   {"public.orders " + cutover.ShapeApp, "public.order_items " + cutover.ShapeApp},
		"old-items":    {"public.order_items " + cutover.ShapeBlue},
		"green-report": {"public.orders " + cutover.ShapeGreen},
	}
	for app, places := range want {
		got := seen[app]
		if len(got) != len(places) {
			t.Errorf("%s seen on %v, want %v", app, got, places)
			continue
		}
		for _, p := range places {
			if !got[p] {
				t.Errorf("%s seen on %v, want %v", app, got, places)
			}
		}
	}
	if writes.Load() < 10 {
		t.Fatalf("only %d transactions committed during the window", writes.Load())
	}
}
