package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/examples/workload"
	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// The migration every figure uses: int → bigint key, int → numeric amount
// with a reverse mapping, a nullable email made NOT NULL with a forward
// mapping, one secondary index built after the copy.
const migName = "bench"

const specYAML = `name: bench
table: public.orders
mode: trigger
target:
  ddl: |
    CREATE TABLE orders (
      id          bigint PRIMARY KEY,
      customer_id integer NOT NULL,
      email       text NOT NULL,
      amount      numeric(12,2) NOT NULL,
      status      text NOT NULL DEFAULT 'new',
      note        text,
      created_at  timestamptz NOT NULL DEFAULT now()
    )
  indexes:
    - CREATE INDEX orders_customer_idx ON orders (customer_id)
forward:
  email: coalesce(email, 'unknown@invalid')
reverse:
  amount: round(amount)::int
`

// seedSQL builds public.orders with n rows; the key and indexes are added
// after the load, as a DBA would.
func seedSQL(n int64) []string {
	return []string{
		`CREATE TABLE orders (
			id          serial,
			customer_id integer NOT NULL,
			email       text,
			amount      integer NOT NULL,
			status      text NOT NULL DEFAULT 'new',
			note        text,
			created_at  timestamptz NOT NULL DEFAULT now()
		)`,
		fmt.Sprintf(`INSERT INTO orders (id, customer_id, email, amount, status, note, created_at)
		SELECT g, 1 + (g::bigint * 7919) %% 50000,
		       CASE WHEN g %% 100 = 0 THEN NULL ELSE 'customer' || (g %% 50000) || '@example.com' END,
		       1 + (g::bigint * 31) %% 100000,
		       (ARRAY['new', 'paid', 'shipped', 'delivered'])[1 + g %% 4],
		       CASE WHEN g %% 10 = 0 THEN repeat('note ', 8) END,
		       timestamptz '2024-01-01' + g * interval '1 second'
		FROM generate_series(1, %d) g`, n),
		`ALTER TABLE orders ADD PRIMARY KEY (id)`,
		`CREATE INDEX orders_customer_idx ON orders (customer_id)`,
		fmt.Sprintf(`SELECT setval(pg_get_serial_sequence('orders', 'id'), %d)`, n),
		`VACUUM (FREEZE, ANALYZE) orders`,
	}
}

var names = shadow.NamesFor(migName, spec.QualifiedName{Schema: "public", Name: "orders"})

// runAll measures every figure: the orders figures (core, sized by
// BENCH_ROWS), the tables figure (tables.go), then the pgbench ones on
// their own database.
func (b *bench) runAll(ctx context.Context) {
	var pgb pgbFigs
	if b.parts["core"] {
		b.runCore(ctx)
	}
	if b.parts["parallel"] && ctx.Err() == nil {
		b.runParallel(ctx) // parallel.go
	}
	if b.parts["tables"] && ctx.Err() == nil {
		b.runTables(ctx) // tables.go
	}
	if b.parts["pgbench"] {
		pgb = b.pgbenchFigures()
		if ctx.Err() == nil {
			b.runPgbench(ctx, pgb)
		}
	}
	if b.parts["aftermath"] && ctx.Err() == nil {
		b.runAftermath(ctx, b.aftermathFigures()) // aftermath.go
	}
	if ctx.Err() != nil {
		mark(ctx.Err(), b.res.Figures...)
	}
}

func (b *bench) runCore(ctx context.Context) {
	n := b.rows
	figBackfill := b.figure("backfill rows/s (trigger mode, idle table)", "≥ 0.8×")
	figTPS := b.figure("app write TPS during trigger-mode sync (4 clients)", "≥ 0.6×")
	figNice := b.figure("the same with sync.nice_ratio: 1 (a gentler copy)", "≥ 0.6×")
	figLogical := b.figure("app write TPS during logical-mode sync", "≥ 0.9×")
	figStream := b.figure("app write TPS while the logical stream applies (sync --watch, copy done)", "≥ 0.9×")
	figVerify1 := b.figure("verify time, --workers 1", "≤ 1.5×")
	figVerify2 := b.figure("verify time, --workers 2", "≤ 1.5×")
	figSwap := b.figure("cutover: swap lock-hold time", "< 50 ms")
	figCutLat := b.figure("cutover: client max latency (16 clients)", "≤ lock timeout (2 s)")
	figDeadlock := b.figure("cross-shape deadlocks (8 clients on both shapes, 50 hot rows)", "measured; 0 on one shape")
	figRSS1 := b.figure("greenswap peak RSS, sync of "+fmtRows(n)+" rows", "< 100 MB")
	figRSS4 := b.figure("greenswap peak RSS, sync of "+fmtRows(4*n)+" rows", "flat (≈ 1.0× of "+fmtRows(n)+"), < 100 MB")

	specPath := filepath.Join(b.tmp, "bench.yaml")
	if err := os.WriteFile(specPath, []byte(specYAML), 0o644); err != nil {
		mark(err, b.res.Figures...)
		return
	}

	// One seeded database, cloned for the write-throughput run so both
	// runs start from the same bytes.
	b.logf("seeding %s rows", fmtRows(n))
	dsn, err := b.seed(ctx, "bench", n)
	if err != nil {
		mark(err, b.res.Figures...)
		return
	}
	tpsDSN, err := b.clone(ctx, "bench", "bench_tps")
	if err != nil {
		mark(err, figTPS)
	}
	niceDSN, err := b.clone(ctx, "bench", "bench_tps_nice")
	if err != nil {
		mark(err, figNice)
	}
	niceSpec := filepath.Join(b.tmp, "bench_nice.yaml")
	if err := os.WriteFile(niceSpec, []byte(specYAML+"sync:\n  nice_ratio: 1\n"), 0o644); err != nil {
		mark(err, figNice)
	}
	logicalDSN, err := b.clone(ctx, "bench", "bench_tps_logical")
	if err != nil {
		mark(err, figLogical, figStream)
	}
	logicalSpec := filepath.Join(b.tmp, "bench_logical.yaml")
	if err := os.WriteFile(logicalSpec, []byte(strings.Replace(specYAML, "mode: trigger", "mode: logical", 1)), 0o644); err != nil {
		mark(err, figLogical, figStream)
	}

	// 1. Backfill vs INSERT … SELECT, and RSS at n rows.
	synced := false
	if err := b.backfill(ctx, dsn, specPath, figBackfill, figRSS1); err != nil {
		mark(err, figBackfill, figRSS1, figVerify1, figVerify2, figSwap, figCutLat)
	} else {
		synced = true
	}

	// 2. Verify vs plain hash scans.
	verified := false
	if synced {
		if err := b.verify(ctx, dsn, figVerify1, figVerify2); err != nil {
			mark(err, figVerify1, figVerify2)
		} else {
			verified = true
		}
	}

	// 3. Cutover under 16 clients.
	if synced {
		if err := b.cutover(ctx, dsn, verified, figSwap, figCutLat); err != nil {
			mark(err, figSwap, figCutLat, figDeadlock)
		} else if err := b.crossShape(ctx, dsn, figDeadlock); err != nil {
			mark(err, figDeadlock)
		}
	} else {
		figDeadlock.na("skipped", "needs the synced migration, whose sync failed")
	}

	// 4. App write TPS during sync vs before, on the clone.
	if tpsDSN != "" && ctx.Err() == nil {
		if err := b.tps(ctx, tpsDSN, specPath, figTPS, nil); err != nil {
			mark(err, figTPS)
		}
		b.drop("bench_tps")
	}
	if niceDSN != "" && ctx.Err() == nil {
		if err := b.tps(ctx, niceDSN, niceSpec, figNice, nil); err != nil {
			mark(err, figNice)
		}
		b.drop("bench_tps_nice")
	}
	if logicalDSN != "" && ctx.Err() == nil {
		if err := b.tps(ctx, logicalDSN, logicalSpec, figLogical, figStream); err != nil {
			mark(err, figLogical, figStream)
		}
		b.drop("bench_tps_logical")
	}

	// 5. Peak RSS at 4n rows.
	switch {
	case ctx.Err() != nil:
	case figRSS1.Status == "ok":
		b.drop("bench")
		if err := b.rss4(ctx, specPath, figRSS1, figRSS4); err != nil {
			mark(err, figRSS4)
		}
	case figRSS1.Status == "n/a":
		figRSS4.na(figRSS1.Value[len("n/a ("):len(figRSS1.Value)-1], figRSS1.Note)
	default:
		figRSS4.na("skipped", "needs the "+fmtRows(n)+"-row sync, which failed")
	}
	if ctx.Err() != nil {
		mark(ctx.Err(), b.res.Figures...)
	}
}

// seed creates database name with n rows in public.orders.
func (b *bench) seed(ctx context.Context, name string, n int64) (string, error) {
	dsn, err := b.cluster.CreateDatabase(ctx, name)
	if err != nil {
		return "", err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	t0 := time.Now()
	for _, s := range seedSQL(n) {
		if _, err := conn.Exec(ctx, s); err != nil {
			return "", fmt.Errorf("seed: %w", err)
		}
	}
	b.logf("  seeded %s rows in %s", fmtRows(n), fmtDur(time.Since(t0)))
	return dsn, nil
}

// clone copies database from (no session may be connected to it).
func (b *bench) clone(ctx context.Context, from, to string) (string, error) {
	conn, err := pgx.Connect(ctx, b.cluster.DSN("postgres"))
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+db.Ident(to)+" TEMPLATE "+db.Ident(from)); err != nil {
		return "", fmt.Errorf("clone %s: %w", from, err)
	}
	return b.cluster.DSN(to), nil
}

func (b *bench) drop(name string) {
	if err := b.cluster.DropDatabase(context.Background(), name); err != nil {
		b.logf("  (drop database %s: %v)", name, err)
	}
}

func execAll(ctx context.Context, dsn string, sql ...string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for _, s := range sql {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", oneLine(s, 60), err)
		}
	}
	return nil
}

// syncRun runs `greenswap sync -f spec` to completion.
func (b *bench) syncRun(ctx context.Context, dsn, specPath string) (result, error) {
	if !b.cli.has(ctx, "sync") {
		return result{}, notBuiltErr("sync")
	}
	r, err := b.cli.run(ctx, dsn, "sync", "-f", specPath)
	if err != nil {
		return r, err
	}
	if notBuilt(r) {
		return r, notBuiltErr("sync")
	}
	if r.Code != 0 {
		return r, fmt.Errorf("greenswap sync exited %d: %s", r.Code, oneLine(lastLines(r.Stderr, 3), 300))
	}
	return r, nil
}

// backfillStats reads what sync recorded about its copy.
type backfillStats struct {
	state              string
	rows               int64
	started, done      *time.Time
	recordedRowsPerSec float64
}

func readBackfill(ctx context.Context, dsn string) (backfillStats, error) {
	var s backfillStats
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return s, err
	}
	defer conn.Close(context.Background())
	err = conn.QueryRow(ctx, `SELECT state, rows_copied, backfill_started_at, backfill_done_at, rows_per_sec
		FROM greenswap.migrations WHERE name = $1`, migName).Scan(&s.state, &s.rows, &s.started, &s.done, &s.recordedRowsPerSec)
	return s, err
}

// backfill measures INSERT … SELECT into a green-shaped scratch table, then
// greenswap's own sync of the same table.
func (b *bench) backfill(ctx context.Context, dsn, specPath string, fig, figRSS *Figure) error {
	b.logf("backfill baseline: one INSERT INTO green SELECT <mapped> FROM blue")
	base, err := b.insertSelect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("baseline INSERT … SELECT: %w", err)
	}
	baseRate := float64(b.rows) / base.Seconds()
	b.logf("  %s rows in %s (%s)", fmtRows(b.rows), fmtDur(base), fmtRate(baseRate, "rows/s"))
	fig.Baseline = fmtRate(baseRate, "rows/s")
	fig.raw("baseline_rows_per_sec", baseRate)

	b.logf("greenswap sync on the idle table")
	if err := execAll(ctx, dsn, "CHECKPOINT"); err != nil {
		return err
	}
	r, err := b.syncRun(ctx, dsn, specPath)
	if err != nil {
		return err
	}
	st, err := readBackfill(ctx, dsn)
	if err != nil {
		return fmt.Errorf("read greenswap.migrations: %w", err)
	}
	if st.state != "synced" {
		return fmt.Errorf("sync exited 0 but the migration is %s, not synced", st.state)
	}
	copied := st.rows
	if copied == 0 {
		copied = b.rows
	}
	var rate float64
	how := ""
	if st.started != nil && st.done != nil && st.done.After(*st.started) {
		d := st.done.Sub(*st.started)
		rate = float64(copied) / d.Seconds()
		how = fmt.Sprintf("copy phase %s (backfill_started_at → backfill_done_at); whole sync command %s incl. adopt, index build, ANALYZE", fmtDur(d), fmtDur(r.Took))
	} else {
		rate = float64(copied) / r.Took.Seconds()
		how = fmt.Sprintf("wall time of the whole sync command (%s): the state row has no backfill timestamps", fmtDur(r.Took))
	}
	fig.Value = fmtRate(rate, "rows/s")
	fig.ratio(rate, baseRate)
	fig.Note = how
	fig.raw("rows_per_sec", rate)
	fig.raw("sync_seconds", r.Took.Seconds())
	b.logf("  synced: %s, %s", fig.Value, how)

	figRSS.Value = fmt.Sprintf("%.1f MB", float64(r.MaxRSSKB)/1024)
	figRSS.raw("max_rss_kb", float64(r.MaxRSSKB))
	figRSS.raw("rusage_max_rss_kb", float64(r.RusageMaxRSSKB))
	figRSS.Note = rssNote(r)
	return nil
}

// insertSelect times one INSERT … SELECT through the spec's forward mapping
// into a table built from target.ddl (primary key only, like green during the
// copy), then drops it.
func (b *bench) insertSelect(ctx context.Context, dsn string) (time.Duration, error) {
	sp, err := spec.ParseSpec([]byte(specYAML), "bench.yaml", "yaml")
	if err != nil {
		return 0, err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	scratch := spec.QualifiedName{Schema: "bench_baseline", Name: "orders"}
	for _, s := range []string{
		"DROP SCHEMA IF EXISTS bench_baseline CASCADE",
		"CREATE SCHEMA bench_baseline",
		"SET search_path TO bench_baseline, public",
		sp.Target.DDL,
		"RESET search_path",
	} {
		if _, err := conn.Exec(ctx, s); err != nil {
			return 0, err
		}
	}
	blue, err := shadow.LoadTable(ctx, conn, spec.QualifiedName{Schema: "public", Name: "orders"})
	if err != nil {
		return 0, err
	}
	green, err := shadow.LoadTable(ctx, conn, scratch)
	if err != nil {
		return 0, err
	}
	m, err := shadow.BuildMapping(sp, blue, green)
	if err != nil {
		return 0, err
	}
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return 0, err
	}
	t0 := time.Now()
	_, err = conn.Exec(ctx, "INSERT INTO "+db.Ident(scratch.Schema, scratch.Name)+" ("+m.Forward.TargetList()+") SELECT "+
		m.Forward.SelectList()+" FROM public.orders")
	took := time.Since(t0)
	if err != nil {
		return 0, err
	}
	_, err = conn.Exec(ctx, "DROP SCHEMA bench_baseline CASCADE")
	return took, err
}

// verify times greenswap verify with 1 and 2 workers against one plain hash
// scan of each table.
func (b *bench) verify(ctx context.Context, dsn string, f1, f2 *Figure) error {
	if !b.cli.has(ctx, "verify") {
		return notBuiltErr("verify")
	}
	b.logf("verify baseline: SELECT sum(hashtextextended(t::text, 0)) over blue, then green")
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	var base time.Duration
	for _, rel := range []spec.QualifiedName{names.Blue, names.Green} {
		var sum any
		t0 := time.Now()
		if err := conn.QueryRow(ctx, "SELECT sum(hashtextextended(t::text, 0)) FROM "+db.Ident(rel.Schema, rel.Name)+" t").Scan(&sum); err != nil {
			conn.Close(context.Background())
			return fmt.Errorf("hash scan of %s: %w", rel, err)
		}
		base += time.Since(t0)
	}
	conn.Close(context.Background())
	b.logf("  both scans: %s", fmtDur(base))
	for _, w := range []struct {
		n   int
		fig *Figure
	}{{1, f1}, {2, f2}} {
		b.logf("greenswap verify --workers %d", w.n)
		r, err := b.cli.run(ctx, dsn, "verify", "--workers", strconv.Itoa(w.n), migName)
		if err != nil {
			return err
		}
		if notBuilt(r) {
			return notBuiltErr("verify")
		}
		if r.Code != 0 {
			w.fig.fail(fmt.Errorf("verify exited %d: %s", r.Code, oneLine(lastLines(r.Stderr+r.Stdout, 3), 300)))
			continue
		}
		w.fig.Value = fmtDur(r.Took)
		w.fig.Baseline = fmtDur(base) + " (2 hash scans)"
		w.fig.ratio(r.Took.Seconds(), base.Seconds())
		w.fig.raw("seconds", r.Took.Seconds())
		w.fig.raw("baseline_seconds", base.Seconds())
		w.fig.Note = "wall time of the verify process (start-up and connect included)"
		b.logf("  %s", fmtDur(r.Took))
	}
	return nil
}

// cutover runs `greenswap cutover` while 16 clients update rows through the
// app name, and compares their latency during the cutover with just before.
func (b *bench) cutover(ctx context.Context, dsn string, verified bool, figSwap, figLat *Figure) error {
	if !b.cli.has(ctx, "cutover") {
		return notBuiltErr("cutover")
	}
	const clients, rate = 16, 50
	before := 5 * time.Second
	b.logf("cutover with %d clients (%d updates/s each) on the app name", clients, rate)
	wl, err := workload.Start(ctx, workload.Config{
		DSN: dsn, Table: "orders", Clients: clients, KeyRange: b.rows,
		Mix: workload.Mix{Update: 1}, Rate: rate, AppName: "bench-cutover",
	})
	if err != nil {
		return err
	}
	defer wl.Stop()
	if err := sleep(ctx, before); err != nil {
		return err
	}
	args := []string{"cutover"}
	if !verified {
		args = append(args, "--skip-verify")
	}
	args = append(args, migName)
	t0 := time.Now()
	r, err := b.cli.run(ctx, dsn, args...)
	t1 := time.Now()
	if err != nil {
		return err
	}
	_ = sleep(ctx, time.Second)
	wl.Stop()
	if notBuilt(r) {
		return notBuiltErr("cutover")
	}
	if r.Code != 0 {
		return fmt.Errorf("cutover exited %d: %s", r.Code, oneLine(lastLines(r.Stderr+r.Stdout, 3), 300))
	}
	pre := wl.Window(t0.Add(-before), t0)
	during := wl.Window(t0, t1)
	figLat.Value = fmtDur(during.MaxLatency)
	figLat.Baseline = fmtDur(pre.MaxLatency) + " (5 s just before)"
	figLat.ratio(during.MaxLatency.Seconds(), pre.MaxLatency.Seconds())
	figLat.raw("max_latency_ms", ms(during.MaxLatency))
	figLat.raw("baseline_max_latency_ms", ms(pre.MaxLatency))
	figLat.raw("client_errors", float64(during.Errors))
	figLat.Note = fmt.Sprintf("window = the cutover command (%s); %d client errors in it; p99 %s during vs %s before",
		fmtDur(t1.Sub(t0)), during.Errors, fmtDur(during.P99Latency), fmtDur(pre.P99Latency))
	if msgs := wl.Errors(); len(msgs) > 0 {
		figLat.Note += "; errors: " + oneLine(workload.ErrorList(msgs), 200)
	}

	if hold, src, ok := lockHold(ctx, dsn, r); ok {
		figSwap.Value = fmtDur(hold)
		figSwap.raw("lock_hold_ms", ms(hold))
		figSwap.Note = "as reported by greenswap (" + src + ")"
	} else {
		figSwap.na("not reported", fmt.Sprintf("greenswap cutover did not report its lock-hold time; the whole cutover command took %s", fmtDur(r.Took)))
	}
	b.logf("  lock hold %s; client max latency %s (before: %s)", figSwap.Value, figLat.Value, fmtDur(pre.MaxLatency))
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

var lockHoldRE = regexp.MustCompile(`(?i)(?:lock[ _-]?hold|held (?:its |the )?locks? for|locks held)[^0-9]{0,20}([0-9]+(?:\.[0-9]+)?)\s*(µs|us|ms|s)\b`)

// lockHold finds the swap's lock-hold time in cutover's output (JSON or
// text), else in its event.
func lockHold(ctx context.Context, dsn string, r result) (time.Duration, string, bool) {
	var doc any
	if json.Unmarshal([]byte(strings.TrimSpace(r.Stdout)), &doc) == nil {
		if d, ok := findHold(doc, ""); ok {
			return d, "cutover --json", true
		}
	}
	for _, line := range strings.Split(r.Stdout+"\n"+r.Stderr, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "{") {
			var v any
			if json.Unmarshal([]byte(line), &v) == nil {
				if d, ok := findHold(v, ""); ok {
					return d, "cutover output", true
				}
			}
		}
		if m := lockHoldRE.FindStringSubmatch(line); m != nil {
			if d, ok := parseDur(m[1], m[2]); ok {
				return d, "cutover output", true
			}
		}
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, "", false
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT detail FROM greenswap.events WHERE migration = $1 AND detail IS NOT NULL ORDER BY id DESC LIMIT 20`, migName)
	if err != nil {
		return 0, "", false
	}
	defer rows.Close()
	for rows.Next() {
		var v any
		if rows.Scan(&v) == nil {
			if d, ok := findHold(v, ""); ok {
				return d, "greenswap.events", true
			}
		}
	}
	return 0, "", false
}

// findHold looks for a key mentioning lock hold in a decoded JSON value.
func findHold(v any, key string) (time.Duration, bool) {
	k := strings.ToLower(key)
	isHold := strings.Contains(k, "hold") || strings.Contains(k, "held")
	switch x := v.(type) {
	case map[string]any:
		for kk, vv := range x {
			if d, ok := findHold(vv, kk); ok {
				return d, true
			}
		}
	case float64:
		if isHold {
			switch {
			case strings.HasSuffix(k, "_us"):
				return time.Duration(x * float64(time.Microsecond)), true
			case strings.HasSuffix(k, "_s") || strings.HasSuffix(k, "_seconds"):
				return time.Duration(x * float64(time.Second)), true
			case strings.HasSuffix(k, "_ns"):
				return time.Duration(x), true
			default: // _ms, or a bare number: milliseconds
				return time.Duration(x * float64(time.Millisecond)), true
			}
		}
	case string:
		if isHold {
			if d, err := time.ParseDuration(x); err == nil {
				return d, true
			}
		}
	}
	return 0, false
}

func parseDur(num, unit string) (time.Duration, bool) {
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(f) {
		return 0, false
	}
	switch unit {
	case "µs", "us":
		return time.Duration(f * float64(time.Microsecond)), true
	case "ms":
		return time.Duration(f * float64(time.Millisecond)), true
	default:
		return time.Duration(f * float64(time.Second)), true
	}
}

// tps compares app write throughput (4 clients, pgbench-style updates of
// random rows through the app name, as fast as they go) during a sync with
// the same clients just before it. In logical mode (streamFig not nil) it
// then runs `sync --watch` and measures the same clients while the stream
// applies their writes: the steady state logical mode is chosen for.
func (b *bench) tps(ctx context.Context, dsn, specPath string, fig, streamFig *Figure) error {
	if !b.cli.has(ctx, "sync") {
		return notBuiltErr("sync")
	}
	const clients = 4
	window := 10 * time.Second
	if b.rows < 1_000_000 {
		window = 5 * time.Second
	}
	b.logf("app write TPS (%s): %d clients updating through the app name, %s before sync, during it, %s after", filepath.Base(specPath), clients, window, window)
	wl, err := workload.Start(ctx, workload.Config{
		DSN: dsn, Table: "orders", Clients: clients, KeyRange: b.rows,
		Mix: workload.Mix{Update: 1}, AppName: "bench-tps",
	})
	if err != nil {
		return err
	}
	defer wl.Stop()
	if err := sleep(ctx, window); err != nil {
		return err
	}
	t0 := time.Now()
	r, err := b.syncRun(ctx, dsn, specPath)
	t1 := time.Now()
	if err != nil {
		return err
	}
	pre := wl.Window(t0.Add(-window), t0)
	during := wl.Window(t0, t1)
	fig.Value = fmtRate(during.TPS, "tx/s")
	fig.Baseline = fmtRate(pre.TPS, "tx/s") + " (before sync)"
	fig.ratio(during.TPS, pre.TPS)
	fig.raw("tps", during.TPS)
	fig.raw("baseline_tps", pre.TPS)
	fig.raw("sync_seconds", r.Took.Seconds())
	fig.Note = fmt.Sprintf("window = the whole sync command (%s: adopt, copy, index build); Go clients with unnamed statements; %d errors during, %d before",
		fmtDur(r.Took), during.Errors, pre.Errors)
	if st, err := readBackfill(ctx, dsn); err == nil && st.started != nil && st.done != nil {
		copyWin := wl.Window(*st.started, *st.done)
		fig.Note += fmt.Sprintf("; during the copy phase alone: %s (%.2f×)", fmtRate(copyWin.TPS, "tx/s"), copyWin.TPS/pre.TPS)
		fig.raw("copy_phase_tps", copyWin.TPS)
	}
	b.logf("  %s before, %s during sync (%s)", fmtRate(pre.TPS, "tx/s"), fmtRate(during.TPS, "tx/s"), fig.ratioText())
	if streamFig == nil {
		// The same clients again once synced (the triggers still run, the
		// copy does not): with the seconds before, this brackets the sync,
		// so load that drifts during the run skews both sides alike.
		if err := sleep(ctx, window); err != nil {
			return err
		}
		post := wl.Window(t1, time.Now())
		fig.raw("after_sync_tps", post.TPS)
		fig.Note += fmt.Sprintf("; after sync (triggers on both ways, no copy): %s (%.2f×)", fmtRate(post.TPS, "tx/s"), post.TPS/pre.TPS)
		return nil
	}
	b.logf("  logical stream: sync --watch, %s of the same clients once caught up", window)
	sf, err := b.streamWindow(ctx, dsn, specPath, window)
	if err != nil {
		mark(err, streamFig)
		return nil
	}
	post := wl.Window(sf.from, sf.to)
	streamFig.Value = fmtRate(post.TPS, "tx/s")
	streamFig.Baseline = fmtRate(pre.TPS, "tx/s") + " (before sync)"
	streamFig.ratio(post.TPS, pre.TPS)
	streamFig.raw("tps", post.TPS)
	streamFig.raw("baseline_tps", pre.TPS)
	streamFig.raw("apply_rows_per_sec", sf.applyRowsPerSc)
	streamFig.raw("lag_bytes_median", sf.lagBytesMedian)
	streamFig.raw("lag_bytes_max", sf.lagBytesMax)
	streamFig.raw("lag_seconds_median", sf.lagSecsMedian)
	streamFig.raw("catch_up_seconds", sf.catchUp.Seconds())
	lagSecs := "not reported"
	if sf.lagSecsMedian >= 0 {
		lagSecs = fmt.Sprintf("%.2f s", sf.lagSecsMedian)
	}
	streamFig.Note = fmt.Sprintf("window = %s of `sync --watch` streaming, after it caught up (%s) with the backlog the sync left; "+
		"apply %s into green (pg_stat_user_tables) for the clients' %s; slot lag (current WAL − confirmed_flush_lsn, %d samples) median %s, max %s; "+
		"stream lag median %s (status lines); %d client errors",
		fmtDur(sf.to.Sub(sf.from)), fmtDur(sf.catchUp), fmtRate(sf.applyRowsPerSc, "rows/s"), fmtRate(post.TPS, "tx/s"),
		sf.samples, fmtBytes(sf.lagBytesMedian), fmtBytes(sf.lagBytesMax), lagSecs, post.Errors)
	b.logf("  %s while streaming (%s); apply %s, lag median %s", fmtRate(post.TPS, "tx/s"), streamFig.ratioText(),
		fmtRate(sf.applyRowsPerSc, "rows/s"), fmtBytes(sf.lagBytesMedian))
	return nil
}

// fmtBytes prints a byte count in kB/MB.
func fmtBytes(v float64) string {
	switch {
	case v < 0:
		return "—"
	case v < 1<<20:
		return fmt.Sprintf("%.0f kB", v/1024)
	default:
		return fmt.Sprintf("%.1f MB", v/(1<<20))
	}
}

// rss4 syncs a table 4× the size and compares greenswap's peak RSS.
func (b *bench) rss4(ctx context.Context, specPath string, fig1, fig4 *Figure) error {
	n := 4 * b.rows
	b.logf("peak RSS: seeding %s rows", fmtRows(n))
	dsn, err := b.seed(ctx, "bench_4x", n)
	if err != nil {
		return err
	}
	defer b.drop("bench_4x")
	b.logf("greenswap sync of %s rows", fmtRows(n))
	r, err := b.syncRun(ctx, dsn, specPath)
	if err != nil {
		return err
	}
	rss1 := fig1.Raw["max_rss_kb"]
	fig4.Value = fmt.Sprintf("%.1f MB", float64(r.MaxRSSKB)/1024)
	fig4.Baseline = fig1.Value + " (" + fmtRows(b.rows) + " rows)"
	fig4.ratio(float64(r.MaxRSSKB), rss1)
	fig4.raw("max_rss_kb", float64(r.MaxRSSKB))
	fig4.raw("rusage_max_rss_kb", float64(r.RusageMaxRSSKB))
	fig4.Note = fmt.Sprintf("sync of %s rows took %s; %s", fmtRows(n), fmtDur(r.Took), rssNote(r))
	if st, err := readBackfill(ctx, dsn); err == nil && st.started != nil && st.done != nil && st.done.After(*st.started) {
		fig4.Note += fmt.Sprintf(" (copy at %s)", fmtRate(float64(st.rows)/st.done.Sub(*st.started).Seconds(), "rows/s"))
	}
	b.logf("  %s", fig4.Value)
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// rssNote says how a peak RSS figure was measured.
func rssNote(r result) string {
	if r.RSSFromProc {
		return fmt.Sprintf("VmHWM of the greenswap process (/proc/PID/status, polled every %s); "+
			"wait4's ru_maxrss said %.1f MB, which on Linux includes the bench's own peak (Go starts children with vfork)",
			pollRSS, float64(r.RusageMaxRSSKB)/1024)
	}
	return "ru_maxrss of the greenswap process (wait4): /proc was not readable; on Linux this includes the bench's own peak RSS"
}
