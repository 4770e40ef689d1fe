// Command demo shows greenswap's whole lifecycle in about two minutes on a
// throwaway local PostgreSQL: it loads examples/orders, starts a background
// workload that writes through the app name (every write mirrored into a
// ledger table in the same transaction), and runs the real CLI through
// plan → sync --watch → verify → cutover → rollback → cutover → finalize,
// explaining each step. It ends with the number of client errors and the
// rows lost according to the ledger. Everything it starts (the cluster, the
// temp dirs, the workload, greenswap processes) is stopped and removed at the
// end, on error and on Ctrl-C.
//
//	make demo        # or: go run ./examples/demo
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/greenswap/greenswap/internal/clibuild"

	"github.com/greenswap/greenswap/examples/workload"
	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

const (
	dbName  = "shop"
	ledger  = "public.demo_ledger"
	clients = 4
	rate    = 25 // transactions per second per client
)

func main() { os.Exit(run()) }

func run() int {
	example := flag.String("example", "examples/orders", "example directory holding spec.yaml and seed.sql")
	rows := flag.Int64("rows", 500_000, "grow the table to this many rows by copying seeded ones (0: as seed.sql loads it)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d := &demo{start: time.Now(), example: *example, rows: *rows}
	code := d.run(ctx)
	d.cleanup()
	if ctx.Err() != nil {
		fmt.Println("\nInterrupted: everything the demo started has been stopped and removed.")
		return 130
	}
	return code
}

type demo struct {
	example   string // directory, relative to the module root
	rows      int64
	start     time.Time
	tmp       string
	cluster   *pgtest.Cluster
	gs        cli
	dsn       string
	spec      *spec.Spec
	specPath  string
	specShown string
	app       appShape
	wl        *workload.Workload // the current release, through the app name
	old       *workload.Workload // an old release pinned to blue's shape by search_path
	names     shadow.Names
}

// errStop ends the demo early, after a message that says why.
var errStop = errors.New("demo stopped")

func (d *demo) run(ctx context.Context) int {
	err := d.lifecycle(ctx)
	if d.wl != nil {
		d.finish(ctx)
	}
	switch {
	case err == nil:
		return 0
	case ctx.Err() != nil:
		return 130
	case errors.Is(err, errStop):
		return 1
	default:
		fmt.Fprintf(os.Stderr, "\ndemo: %v\n", err)
		return 1
	}
}

func (d *demo) cleanup() {
	if d.wl != nil {
		d.wl.Stop()
	}
	if d.old != nil {
		d.old.Stop()
	}
	if d.cluster != nil {
		if err := d.cluster.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: stopping PostgreSQL:", err)
		}
	}
	if d.tmp != "" {
		os.RemoveAll(d.tmp)
	}
}

func (d *demo) lifecycle(ctx context.Context) error {
	title("greenswap demo")
	say("greenswap rewrites the structure of a live PostgreSQL table while the application keeps writing to it, " +
		"and can switch back without losing a write. This demo runs the whole lifecycle on a throwaway PostgreSQL " +
		"on this machine, with an application writing the whole time. It takes about two minutes; Ctrl-C stops it and cleans up.")

	root, err := clibuild.ModuleRoot()
	if err != nil {
		return err
	}
	if d.tmp, err = os.MkdirTemp("", "greenswap-demo-"); err != nil {
		return err
	}
	dir := d.example
	if !filepath.IsAbs(dir) {
		dir = filepath.Join(root, dir)
	}
	d.specPath = filepath.Join(dir, "spec.yaml")
	seedPath := filepath.Join(dir, "seed.sql")
	for _, p := range []string{d.specPath, seedPath} {
		if _, err := os.Stat(p); err != nil {
			note("%s is missing: the example is not in this checkout, so there is nothing to migrate.", rel(root, p))
			return errStop
		}
	}
	if d.spec, err = spec.LoadSpecFile(d.specPath); err != nil {
		return err
	}
	d.specShown = rel(root, d.specPath)
	d.names = shadow.NamesFor(d.spec.Name, d.spec.AppTable())

	section("Setting up")
	doing("building the greenswap command (go build ./cmd/greenswap)")
	bin, err := clibuild.Build(ctx, root, d.tmp)
	if err != nil {
		return err
	}
	d.gs = cli{bin: bin, dir: root}
	doing("starting a throwaway PostgreSQL in a temp dir (no Docker needed)")
	if d.cluster, err = pgtest.StartCluster(ctx, pgtest.Options{}); err != nil {
		return err
	}
	if d.dsn, err = d.cluster.CreateDatabase(ctx, dbName); err != nil {
		return err
	}
	d.gs.dsn = d.dsn
	done("PostgreSQL %s is listening on 127.0.0.1:%d, database %q", d.cluster.Release, d.cluster.Port, dbName)

	doing("loading %s", rel(root, seedPath))
	n, err := d.seed(ctx, seedPath)
	if err != nil {
		return err
	}
	if d.app, err = inspectApp(ctx, d.dsn, d.spec); err != nil {
		return err
	}
	if d.rows > n {
		doing("copying rows until the table holds %s", thousands(d.rows))
		if n, err = d.topUp(ctx, n, d.rows); err != nil {
			return err
		}
	}
	done("%s holds %s rows", d.spec.AppTable(), thousands(n))
	say(fmt.Sprintf("The migration in %s is called %s. It rebuilds %s in a new shape (the \"green\" table) "+
		"beside today's table (\"blue\"):", d.specShown, d.spec.Name, d.spec.AppTable()))
	showSpec(d.specPath)

	section("Starting the application")
	if err := workload.CreateLedger(ctx, d.dsn, ledger); err != nil {
		return err
	}
	d.wl, err = workload.Start(ctx, workload.Config{
		DSN: d.dsn, Table: d.app.table, Key: d.app.key, Value: d.app.value, InsertSQL: d.app.insertSQL,
		Clients: clients, KeyRange: d.app.maxKey, Ledger: ledger, Rate: rate, AppName: "demo-app",
	})
	if err != nil {
		return err
	}
	say(fmt.Sprintf("%d clients of the current release now insert, update and delete rows through the name %s, about %d writes "+
		"a second in all, exactly as the application does today. Every write also goes into a ledger table in the same "+
		"transaction; at the end the ledger tells us whether any write was lost.", clients, d.spec.AppTable(), clients*rate))
	// An old release that keeps blue's shape: pinned by search_path to blue's
	// version schema (which resolves to the table itself until adopt), it
	// writes only the columns it knows.
	d.old, err = workload.Start(ctx, workload.Config{
		DSN: d.dsn, Table: d.spec.AppTable().Name, Key: d.app.key, Value: d.app.value,
		InsertSQL: d.app.oldInsertSQL,
		Clients:   1, Ledger: ledger, Rate: 10, AppName: "demo-old-release", Seed: 99,
		SearchPath: []string{db.Ident(d.names.BlueSchema) + ", " + db.Ident(d.spec.AppTable().Schema)},
	})
	if err != nil {
		return err
	}
	say(fmt.Sprintf("One more client plays an old release (say, an old mobile API) that must keep the old shape until it is "+
		"retired: it sets search_path = %s, %s and inserts rows with only the columns it knows. Once greenswap adopts the table, "+
		"that name resolves to blue in its version schema, whatever the app name points at.", d.names.BlueSchema, d.spec.AppTable().Schema))
	if err := d.pause(ctx, 3*time.Second); err != nil {
		return err
	}

	// The operator's day, with the real CLI.
	steps := []struct {
		cmd  string
		fn   func(context.Context) error
		name string
	}{
		{"plan", d.plan, "plan"},
		{"sync", d.sync, "sync"},
		{"verify", d.verify, "verify"},
		{"cutover", d.cutover, "cutover"},
		{"rollback", d.rollback, "rollback"},
		{"cutover", d.cutoverAgain, "cutover again"},
		{"finalize", d.finalize, "finalize"},
	}
	for i, s := range steps {
		if !d.gs.has(ctx, s.cmd) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			section(fmt.Sprintf("Step %d of %d: %s", i+1, len(steps), s.name))
			note("`greenswap %s` is not built yet in this checkout, so the demo stops here. "+
				"The steps before it ran for real; the application's writes are checked against the ledger below.", s.cmd)
			return errStop
		}
		section(fmt.Sprintf("Step %d of %d: %s", i+1, len(steps), s.name))
		if err := s.fn(ctx); err != nil {
			return err
		}
	}
	return nil
}

// finish stops the application and checks its writes against the ledger.
func (d *demo) finish(ctx context.Context) {
	section("The verdict")
	d.wl.Stop()
	tot := d.wl.Totals()
	errs := d.wl.Errors()
	if d.old != nil {
		d.old.Stop()
		tot.Commits += d.old.Totals().Commits
		for m, n := range d.old.Errors() {
			errs["old release: "+m] += n
		}
	}
	nerr := 0
	for _, n := range errs {
		nerr += n
	}
	say(fmt.Sprintf("The application made %s writes in %s. Now every row it wrote is compared with its ledger, "+
		"through the name the application uses:", thousands(int64(tot.Commits)), time.Since(tot.From).Round(time.Second)))
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	r, err := workload.Check(cctx, d.dsn, ledger, d.app.table, d.app.key, d.app.value)
	if err != nil {
		note("could not compare with the ledger: %v", err)
		return
	}
	r.Relation = d.spec.AppTable().String()
	done("%s", r)
	if nerr > 0 {
		fmt.Println("\n  client errors:")
		fmt.Print(workload.ErrorList(errs))
	}
	fmt.Printf("\n  ══ %s ══\n\n", workload.Summary(nerr, r.Lost()))
	fmt.Printf("  (demo took %s; the throwaway PostgreSQL and temp files are removed now)\n", time.Since(d.start).Round(time.Second))
}
