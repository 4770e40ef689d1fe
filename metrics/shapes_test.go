package metrics

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/runner"
)

// TestScrapeShapes: after cutover, 4 writers pinned to blue's schema
// (old-api-N) and 4 on the app name (app-N) write concurrently, each
// counting its commits. Every scrape samples the shapes: each writer shows
// in greenswap_shape_client_sessions on its own shape and never on the
// other, greenswap_shape_sightings_total grows on both, blue's and the app
// name's greenswap_shape_write_share are within 0.2 of their shares of
// the commits, and greenswap_shape_rows_written_total counts blue's rows.
func TestScrapeShapes(t *testing.T) {
	t.Parallel()
	_, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, metricsTable(500))
	env := metricsEnv(t, dsn)
	ctx := context.Background()
	const name = "m_shapes"
	if _, err := runner.Sync(ctx, env, metricsSpec(t, name, "trigger"), runner.SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := runner.Cutover(ctx, env, name, runner.CutoverOptions{SkipVerify: true}); err != nil {
		t.Fatal(err)
	}
	url, stop := serveMigration(t, env, name)
	defer stop()

	wctx, stopWriters := context.WithCancel(ctx)
	var wg sync.WaitGroup
	commits := map[string]*atomic.Int64{"blue": {}, "app": {}}
	for i := 1; i <= 8; i++ {
		shape, app, searchPath := "app", fmt.Sprintf("app-%d", i), "public"
		if i%2 == 0 {
			shape, app, searchPath = "blue", fmt.Sprintf("old-api-%d", i), "gs_m_shapes_blue"
		}
		cfg, err := pgx.ParseConfig(dsn)
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["application_name"], cfg.RuntimeParams["search_path"] = app, searchPath
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for wctx.Err() == nil {
				tx, err := c.Begin(ctx)
				if err != nil {
					return
				}
				if _, err := tx.Exec(ctx, `INSERT INTO orders (email, amount) VALUES ($1, 1)`, app); err != nil {
					t.Errorf("%s: %v", app, err)
					tx.Rollback(ctx)
					return
				}
				time.Sleep(30 * time.Millisecond)
				if tx.Commit(ctx) == nil {
					commits[shape].Add(1)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	b0, a0 := commits["blue"].Load(), commits["app"].Load()
	onShape := map[string]map[string]bool{} // application → shapes
	for range 25 {
		fams := scrape(t, url)
		for _, m := range fams["greenswap_shape_client_sessions"].GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if onShape[l["application_name"]] == nil {
				onShape[l["application_name"]] = map[string]bool{}
			}
			onShape[l["application_name"]][l["shape"]] = true
		}
		time.Sleep(60 * time.Millisecond)
	}
	fams := scrape(t, url)
	stopWriters()
	wg.Wait()
	b1, a1 := commits["blue"].Load(), commits["app"].Load()
	for i := 1; i <= 8; i++ {
		app, want := fmt.Sprintf("app-%d", i), "app"
		if i%2 == 0 {
			app, want = fmt.Sprintf("old-api-%d", i), "blue"
		}
		if got := onShape[app]; !got[want] || len(got) != 1 {
			t.Errorf("%s seen on %v, want %s only", app, got, want)
		}
	}
	mig := map[string]string{"migration": name, "table": "public.orders"}
	with := func(kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range mig {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	for _, shape := range []string{"blue", "app"} {
		if v := must(t, fams, "greenswap_shape_sightings_total", with("shape", shape, "kind", "write")); v < 5 {
			t.Errorf("write sightings of %s: %v", shape, v)
		}
	}
	if v := must(t, fams, "greenswap_shape_rows_written_total", with("shape", "blue")); v < float64(b1-b0) {
		t.Errorf("rows written to blue %v, the workload committed %d in the window alone", v, b1-b0)
	}
	total := float64(b1 - b0 + a1 - a0)
	for shape, n := range map[string]int64{"blue": b1 - b0, "app": a1 - a0} {
		got := must(t, fams, "greenswap_shape_write_share", map[string]string{"migration": name, "shape": shape})
		if want := float64(n) / total; math.Abs(got-want) > 0.2 {
			t.Errorf("write share of %s: %.3f in the scrape, %.3f in the ledger", shape, got, want)
		}
	}
}
