package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/greenswap/greenswap/cutover"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/internal/testkit"
)

// shapeWorkload is writers and readers on the shapes of public.acc, each
// with its own application_name, counting their own commits per shape (the
// oracle the telemetry is held to).
type shapeWorkload struct {
	t       *testing.T
	dsn     string
	commits map[string]*atomic.Int64 // shape → committed writes
	errs    chan error
	groups  map[string]*shapeGroup
}

type shapeGroup struct {
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// start runs n sessions named app-1… on shape (search_path for blue and
// green, the default for the app name): writers insert a row tagged with
// the shape in a transaction held 30 ms; readers count rows the same way.
func (w *shapeWorkload) start(shape, app, searchPath string, n int, write bool) {
	ctx, stop := context.WithCancel(context.Background())
	g := &shapeGroup{stop: stop}
	w.groups[app] = g
	for i := 1; i <= n; i++ {
		params := map[string]string{"application_name": fmt.Sprintf("%s-%d", app, i)}
		if searchPath != "" {
			params["search_path"] = searchPath
		}
		c := coConn(w.t, w.dsn, params)
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			bg := context.Background() // a stop never cuts an iteration short: the ledger stays exact
			for ctx.Err() == nil {
				tx, err := c.Begin(bg)
				if err != nil {
					return
				}
				if write {
					_, err = tx.Exec(bg, `INSERT INTO acc (v, shape) VALUES (1, $1)`, shape)
				} else {
					_, err = tx.Exec(bg, `SELECT count(*) FROM acc`)
				}
				if err != nil {
					tx.Rollback(bg)
					w.errs <- fmt.Errorf("%s: %w", params["application_name"], err)
					return
				}
				time.Sleep(30 * time.Millisecond)
				if err := tx.Commit(bg); err != nil {
					w.errs <- fmt.Errorf("%s: commit: %w", params["application_name"], err)
					return
				}
				if write {
					w.commits[shape].Add(1)
				}
			}
		}()
	}
}

func (w *shapeWorkload) stopGroup(app string) {
	g := w.groups[app]
	g.stop()
	g.wg.Wait()
}

func (w *shapeWorkload) ledger() map[string]int64 {
	out := map[string]int64{}
	for k, v := range w.commits {
		out[k] = v.Load()
	}
	return out
}

// TestShapeTelemetryAndLegacyShare: after cutover, 3 writers pinned to
// blue's schema (old-api), 3 to green's (canary), 3 on the app name (app)
// and a reader pinned to blue (old-report), each with its own
// application_name, run concurrently. status names every session on its
// shape only, with reads or writes as it does them, and each shape's share
// of the write sightings is within 0.15 of its share of the commits the
// workload counted itself over the same window. finalize refuses with
// --max-legacy-share 0 (naming old-api) and with 0.05 (blue's share is
// about 0.4, named with it); with the blue clients gone it finalizes while
// the app writers keep writing, and every committed row is in the table,
// tagged with its shape, as the ledger says.
func TestShapeTelemetryAndLegacyShare(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE TABLE acc (id bigserial PRIMARY KEY, v int NOT NULL, shape text NOT NULL DEFAULT 'seed');
		INSERT INTO acc (v) SELECT g FROM generate_series(1, 200) g;`)
	env := coEnv(t, dsn)
	sp := coSync(t, env, `
name: tel
table: public.acc
target:
  ddl: CREATE TABLE acc (id bigint PRIMARY KEY, v bigint NOT NULL, shape text NOT NULL DEFAULT 'seed')
`)
	if _, err := Cutover(ctx, env, sp.Name, CutoverOptions{}); err != nil {
		t.Fatal(err)
	}
	w := &shapeWorkload{t: t, dsn: dsn, errs: make(chan error, 100), groups: map[string]*shapeGroup{},
		commits: map[string]*atomic.Int64{"blue": {}, "green": {}, "app": {}}}
	w.start("blue", "old-api", "gs_tel_blue", 3, true)
	w.start("green", "canary", "gs_tel_green", 3, true)
	w.start("app", "app", "", 3, true)
	w.start("blue", "old-report", "gs_tel_blue", 1, false)
	time.Sleep(300 * time.Millisecond)

	before := w.ledger()
	rep, err := Status(ctx, env, sp.Name, StatusOptions{Sample: -1, ShapeWindow: 3 * time.Second, ShapeEvery: 50 * time.Millisecond})
	after := w.ledger()
	if err != nil {
		t.Fatal(err)
	}
	r := rep.Migrations[0].Shapes
	if r == nil {
		t.Fatalf("status has no shapes: %+v", rep.Migrations[0])
	}
	if out := os.Getenv("GS_SHAPES_OUT"); out != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		os.WriteFile(out, b, 0o644)
	}
	if len(r.Tables) != 1 || r.Tables[0].Table != "public.acc" || r.Samples < 20 || r.Misses == "" {
		t.Fatalf("shapes: %+v", r)
	}
	// Every session on its own shape only, doing what it does.
	where := map[string][]string{}
	for _, u := range r.Tables[0].Shapes {
		for _, c := range u.Clients {
			where[c.Application] = append(where[c.Application], u.Shape)
			reader := c.Application == "old-report-1"
			if reader && (c.Writes != 0 || c.Reads == 0) || !reader && c.Writes == 0 {
				t.Errorf("%s on %s: %d reads, %d writes", c.Application, u.Shape, c.Reads, c.Writes)
			}
		}
		if u.Shape != cutover.ShapeApp && (u.RowsWritten == nil || *u.RowsWritten == 0) {
			t.Errorf("%s: no rows written counted over the window", u.Shape)
		}
	}
	for app, shape := range map[string]string{"old-api": "blue", "canary": "green", "app": "app", "old-report": "blue"} {
		n := 3
		if app == "old-report" {
			n = 1
		}
		for i := 1; i <= n; i++ {
			name := fmt.Sprintf("%s-%d", app, i)
			if got := where[name]; len(got) != 1 || got[0] != shape {
				t.Errorf("%s seen on %v, want %s only", name, got, shape)
			}
		}
	}
	// Shares against the workload's own ledger over the window.
	var total int64
	for k := range after {
		total += after[k] - before[k]
	}
	for _, shape := range []string{"blue", "green", "app"} {
		want := float64(after[shape]-before[shape]) / float64(total)
		if got := r.WriteShare[shape]; math.Abs(got-want) > 0.15 {
			t.Errorf("write share of %s: %.3f from the samples, %.3f in the ledger (%v → %v)", shape, got, want, before, after)
		}
	}
	t.Logf("shares %v, ledger %v → %v, legacy share %.3f", r.WriteShare, before, after, r.LegacyShare)

	// finalize refuses, naming the blue clients.
	fo := FinalizeOptions{Yes: true, QuietPeriod: time.Minute, SampleEvery: 100 * time.Millisecond}
	_, err = Finalize(ctx, env, sp.Name, fo)
	var ue *cutover.UsageError
	if !errors.As(err, &ue) || exitcode.Of(err) != exitcode.Blocked || !strings.Contains(err.Error(), "old-api-") {
		t.Fatalf("finalize --max-legacy-share 0 with clients on blue: want a refusal naming old-api (exit 3), got exit %d: %v", exitcode.Of(err), err)
	}
	fo.QuietPeriod, fo.MaxLegacyShare = 2*time.Second, 0.05
	res, err := Finalize(ctx, env, sp.Name, fo)
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "old-api-") || !strings.Contains(err.Error(), "over --max-legacy-share 0.05") ||
		res == nil || res.Shapes == nil || res.Shapes.LegacyShare <= 0.05 {
		t.Fatalf("finalize --max-legacy-share 0.05 with about 0.4 on blue: want a refusal naming old-api and the share, got %v (%+v)", err, res)
	}
	if k := coStr(t, pool, `SELECT relkind::text FROM pg_class WHERE oid = 'public.acc'::regclass`); k != "v" {
		t.Fatalf("after the refusals public.acc is %s, want still the view", k)
	}

	// The blue clients go (the canaries move to the app name too); the app
	// writers keep writing through finalize.
	w.stopGroup("old-api")
	w.stopGroup("old-report")
	w.stopGroup("canary")
	time.Sleep(1600 * time.Millisecond)
	fo.QuietPeriod, fo.MaxLegacyShare = 1500*time.Millisecond, 0
	fr, err := Finalize(ctx, env, sp.Name, fo)
	if err != nil || fr.State != state.Finalized {
		t.Fatalf("finalize with the blue clients gone: %v (%+v)", err, fr)
	}
	time.Sleep(200 * time.Millisecond)
	w.stopGroup("app")
	close(w.errs)
	for err := range w.errs {
		// A statement in flight on the view when finalize replaced it may
		// fail once; nothing else may.
		if !strings.Contains(err.Error(), "app-") {
			t.Errorf("workload: %v", err)
		}
	}
	for shape, n := range w.ledger() {
		if got := testkit.Count(t, pool, `SELECT count(*) FROM public.acc WHERE shape = $1`, shape); int64(got) != n {
			t.Errorf("shape %s: %d rows in the table, %d committed by the workload", shape, got, n)
		}
	}
}

// TestLegacyShareCountsClientsCalledGreenswap: after cutover, a reader and
// a writer pinned to blue that call themselves greenswap-… (any client may)
// run beside writers on the app name. finalize --max-legacy-share 0.05
// refuses, naming both and a share over the bound, and blue is still the
// view's source; status still lists them apart. A share that trusted the
// name left them out: the reader was invisible and finalize dropped blue
// under it.
func TestLegacyShareCountsClientsCalledGreenswap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE TABLE acc (id bigserial PRIMARY KEY, v int NOT NULL, shape text NOT NULL DEFAULT 'seed');
		INSERT INTO acc (v) SELECT g FROM generate_series(1, 200) g;`)
	env := coEnv(t, dsn)
	sp := coSync(t, env, `
name: telgs
table: public.acc
target:
  ddl: CREATE TABLE acc (id bigint PRIMARY KEY, v bigint NOT NULL, shape text NOT NULL DEFAULT 'seed')
`)
	if _, err := Cutover(ctx, env, sp.Name, CutoverOptions{}); err != nil {
		t.Fatal(err)
	}
	w := &shapeWorkload{t: t, dsn: dsn, errs: make(chan error, 100), groups: map[string]*shapeGroup{},
		commits: map[string]*atomic.Int64{"blue": {}, "green": {}, "app": {}}}
	w.start("app", "app", "", 3, true)
	w.start("blue", "greenswap-report", "gs_telgs_blue", 1, false)
	w.start("blue", "greenswap-sync", "gs_telgs_blue", 1, true)
	defer func() {
		for _, g := range []string{"app", "greenswap-report", "greenswap-sync"} {
			w.stopGroup(g)
		}
	}()
	time.Sleep(300 * time.Millisecond)

	res, err := Finalize(ctx, env, sp.Name, FinalizeOptions{Yes: true, QuietPeriod: 2 * time.Second, SampleEvery: 50 * time.Millisecond, MaxLegacyShare: 0.05})
	var ue *cutover.UsageError
	if !errors.As(err, &ue) || exitcode.Of(err) != exitcode.Blocked ||
		!strings.Contains(err.Error(), "greenswap-report-1") || !strings.Contains(err.Error(), "greenswap-sync-1") {
		t.Fatalf("finalize --max-legacy-share 0.05 with clients called greenswap on blue: want exit 3 naming both, got exit %d: %v", exitcode.Of(err), err)
	}
	if res == nil || res.Shapes == nil || res.Shapes.LegacyShare <= 0.05 {
		t.Fatalf("legacy share %+v: want over 0.05 (about 0.4)", res)
	}
	if k := coStr(t, pool, `SELECT relkind::text FROM pg_class WHERE oid = 'public.acc'::regclass`); k != "v" {
		t.Fatalf("after the refusal public.acc is %s, want still the view", k)
	}
	rep, err := Status(ctx, env, sp.Name, StatusOptions{Sample: -1, ShapeWindow: time.Second, ShapeEvery: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r := rep.Migrations[0].Shapes; r == nil || len(r.Greenswap) == 0 {
		t.Errorf("status no longer lists the sessions called greenswap apart: %+v", r)
	}
}
