package runner

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/cutover"
	"github.com/greenswap/greenswap/internal/pgtest"
)

// The workload: clients writing through the app name and through both
// version schemas (search_path), each transaction also appending to a
// ledger (the oracle) in the same transaction; every client reads its own
// rows back and checks them.

const wlSchema = `
CREATE TABLE accounts (id bigserial PRIMARY KEY, value int NOT NULL, note text);
CREATE TABLE ledger (seq bigserial PRIMARY KEY, op text NOT NULL, id bigint NOT NULL, value bigint, via text NOT NULL);
INSERT INTO accounts (value, note) SELECT g, 'seed' FROM generate_series(1, 2000) g;
INSERT INTO ledger (op, id, value, via) SELECT 'insert', id, value, 'seed' FROM accounts ORDER BY id;
ANALYZE accounts;
`

// wlClient is one client: a path (app, blue, green), a protocol, its own rows.
type wlClient struct {
	name   string
	path   string
	mode   pgx.QueryExecMode
	conn   *pgx.Conn
	rows   map[int64]int64 // id → value this client last wrote
	ids    []int64
	mu     gosync.Mutex
	errs   []error
	ops    int
	maxLat time.Duration
	lats   []wlLat
}

type wlLat struct {
	at  time.Time
	lat time.Duration
}

type workloadRun struct {
	t       *testing.T
	dsn     string
	clients []*wlClient
	stops   map[*wlClient]context.CancelFunc
	wg      gosync.WaitGroup
}

func (w *workloadRun) start(name, path string, mode pgx.QueryExecMode, schemaPrefix string) *wlClient {
	params := map[string]string{"application_name": name}
	if path != "app" {
		params["search_path"] = schemaPrefix + "_" + path + ", public"
	}
	c := &wlClient{name: name, path: path, mode: mode, rows: map[int64]int64{}}
	cfg, err := pgx.ParseConfig(w.dsn)
	if err != nil {
		w.t.Fatal(err)
	}
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	cfg.DefaultQueryExecMode = mode
	if c.conn, err = pgx.ConnectConfig(context.Background(), cfg); err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.clients = append(w.clients, c)
	w.stops[c] = cancel
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer c.conn.Close(context.Background())
		rng := rand.New(rand.NewPCG(uint64(len(name)), uint64(time.Now().UnixNano())))
		for ctx.Err() == nil {
			t0 := time.Now()
			err := c.step(ctx, rng)
			lat := time.Since(t0)
			c.mu.Lock()
			if err != nil && ctx.Err() == nil {
				c.errs = append(c.errs, err)
			}
			c.ops++
			c.maxLat = max(c.maxLat, lat)
			c.lats = append(c.lats, wlLat{t0, lat})
			c.mu.Unlock()
			time.Sleep(time.Duration(1+rng.IntN(3)) * time.Millisecond)
		}
	}()
	return c
}

func (w *workloadRun) stop(c *wlClient) {
	w.stops[c]()
}

// step runs one transaction: insert, update or delete through the client's
// path, the ledger row, then reads the row back.
func (c *wlClient) step(ctx context.Context, rng *rand.Rand) (err error) {
	tx, err := c.conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tx.Rollback(context.Background())
		}
	}()
	r := rng.Float64()
	v := int64(rng.IntN(1_000_000))
	var op string
	var id int64
	switch {
	case len(c.ids) < 5 || r < 0.4:
		op = "insert"
		if err = tx.QueryRow(ctx, `INSERT INTO accounts (value, note) VALUES ($1, $2) RETURNING id`, v, c.name).Scan(&id); err != nil {
			return fmt.Errorf("insert: %w", err)
		}
	case r < 0.85:
		op, id = "update", c.ids[rng.IntN(len(c.ids))]
		tag, err := tx.Exec(ctx, `UPDATE accounts SET value = $1 WHERE id = $2`, v, id)
		if err != nil {
			return fmt.Errorf("update: %w", err)
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("update of %d touched %d rows", id, tag.RowsAffected())
		}
	default:
		op, id = "delete", c.ids[rng.IntN(len(c.ids))]
		tag, err := tx.Exec(ctx, `DELETE FROM accounts WHERE id = $1`, id)
		if err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("delete of %d touched %d rows", id, tag.RowsAffected())
		}
	}
	if _, err = tx.Exec(ctx, `INSERT INTO ledger (op, id, value, via) VALUES ($1, $2, $3, $4)`, op, id, v, c.name); err != nil {
		return fmt.Errorf("ledger: %w", err)
	}
	// Read it back through the same path (the row type of the app name may
	// change under prepared statements: trap 6).
	rows, err := tx.Query(ctx, `SELECT * FROM accounts WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	vals, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (int64, error) {
		vs, err := r.Values()
		if err != nil {
			return 0, err
		}
		switch x := vs[1].(type) {
		case int32:
			return int64(x), nil
		case int64:
			return x, nil
		}
		return 0, fmt.Errorf("value is %T", vs[1])
	})
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if op == "delete" && len(vals) != 0 || op != "delete" && (len(vals) != 1 || vals[0] != v) {
		return fmt.Errorf("read back %d after %s of %d: %v", id, op, v, vals)
	}
	if err = tx.Commit(ctx); err != nil {
		return err
	}
	switch op {
	case "insert":
		c.ids = append(c.ids, id)
		c.rows[id] = v
	case "update":
		c.rows[id] = v
	case "delete":
		delete(c.rows, id)
		c.ids = slices.DeleteFunc(c.ids, func(x int64) bool { return x == id })
	}
	return nil
}

// ledgerDiff compares, under one snapshot, what the ledger implies with
// each table given (SQL selecting id, value).
func ledgerDiff(t *testing.T, dsn string, tables map[string]string) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	tx, err := c.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	out := map[string]int64{}
	for name, sel := range tables {
		var n int64
		err := tx.QueryRow(ctx, `WITH want AS (
				SELECT id, value FROM (SELECT DISTINCT ON (id) id, op, value FROM ledger ORDER BY id, seq DESC) l WHERE op <> 'delete'),
			have AS (`+sel+`)
			SELECT (SELECT count(*) FROM (SELECT * FROM want EXCEPT SELECT * FROM have) a) +
			       (SELECT count(*) FROM (SELECT * FROM have EXCEPT SELECT * FROM want) b)`).Scan(&n)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out[name] = n
	}
	return out
}

func TestCutoverUnderWorkload(t *testing.T) {
	for _, tc := range []struct {
		name        string
		valueType   string
		typeChanges bool
	}{
		{"same-row-type", "int", false},
		{"new-row-type", "bigint", true},
	} {
		t.Run(tc.name, func(t *testing.T) { runWorkloadLifecycle(t, tc.valueType, tc.typeChanges) })
	}
}

func runWorkloadLifecycle(t *testing.T, valueType string, typeChanges bool) {
	_, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, wlSchema)
	ctx := context.Background()
	env := coEnv(t, dsn)
	w := &workloadRun{t: t, dsn: dsn, stops: map[*wlClient]context.CancelFunc{}}
	simple, prepared := pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement
	appS := w.start("app-simple", "app", simple, "")
	appP := w.start("app-prepared", "app", prepared, "")
	defer func() {
		for _, c := range w.clients {
			w.stop(c)
		}
		w.wg.Wait()
	}()

	spec := coSync(t, env, fmt.Sprintf(`
name: wl
table: public.accounts
target:
  ddl: CREATE TABLE accounts (id bigint PRIMARY KEY, value %s NOT NULL CHECK (value >= 0), note text)
`, valueType))
	blueS := w.start("blue-simple", "blue", simple, "gs_wl")
	blueP := w.start("blue-prepared", "blue", prepared, "gs_wl")
	greenS := w.start("green-simple", "green", simple, "gs_wl")
	greenP := w.start("green-prepared", "green", prepared, "gs_wl")
	run := func() { time.Sleep(400 * time.Millisecond) }
	consistent := func(phase string, blue, green bool) {
		t.Helper()
		tables := map[string]string{"app": `SELECT id, value::bigint FROM public.accounts`}
		if blue {
			tables["blue"] = `SELECT id, value::bigint FROM gs_wl_blue.accounts`
		}
		if green {
			tables["green"] = `SELECT id, value::bigint FROM gs_wl_green.accounts`
		}
		for k, d := range ledgerDiff(t, dsn, tables) {
			if d != 0 {
				t.Errorf("%s: %s differs from the ledger in %d rows", phase, k, d)
			}
		}
	}
	out := &coBuffer{}
	opts := SwapCommandOptions{Out: out, LockTimeout: 500 * time.Millisecond, MaxAttempts: 40}

	run()
	consistent("synced", true, true)
	res, err := Cutover(ctx, env, spec.Name, CutoverOptions{SwapCommandOptions: opts})
	if err != nil {
		t.Fatalf("cutover: %v\n%s", err, out)
	}
	if res.Plan.RowTypeChanged != typeChanges {
		t.Fatalf("row type changed = %v, want %v", res.Plan.RowTypeChanged, typeChanges)
	}
	t.Logf("cutover: %d attempts, locks held %.1f ms", res.Attempts, res.LockHoldMS)
	run()
	consistent("cut over", true, true)
	rb, err := Rollback(ctx, env, spec.Name, opts)
	if err != nil {
		t.Fatalf("rollback: %v\n%s", err, out)
	}
	t.Logf("rollback: %d attempts, locks held %.1f ms", rb.Attempts, rb.LockHoldMS)
	run()
	consistent("rolled back", true, true)
	res, err = Cutover(ctx, env, spec.Name, CutoverOptions{SwapCommandOptions: opts})
	if err != nil {
		t.Fatalf("cutover again: %v\n%s", err, out)
	}
	t.Logf("cutover again: %d attempts, locks held %.1f ms", res.Attempts, res.LockHoldMS)
	run()
	consistent("cut over again", true, true)

	// Finalize refuses while blue's clients write, and names them.
	_, err = Finalize(ctx, env, spec.Name, FinalizeOptions{SwapCommandOptions: opts, QuietPeriod: time.Second, SampleEvery: 100 * time.Millisecond, Yes: true})
	var ue *cutover.UsageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "blue-simple") || !strings.Contains(err.Error(), "blue-prepared") {
		t.Fatalf("finalize with blue clients: %v", err)
	}
	w.stop(blueS)
	w.stop(blueP)
	time.Sleep(1200 * time.Millisecond)
	fr, err := Finalize(ctx, env, spec.Name, FinalizeOptions{SwapCommandOptions: opts, QuietPeriod: time.Second, SampleEvery: 100 * time.Millisecond, Yes: true})
	if err != nil {
		t.Fatalf("finalize: %v\n%s", err, out)
	}
	t.Logf("finalize: %d attempts, locks held %.1f ms", fr.Attempts, fr.LockHoldMS)
	run()
	for _, c := range w.clients {
		w.stop(c)
	}
	w.wg.Wait()
	consistent("finalized", false, false)

	// Errors: none for simple-protocol clients; for prepared ones only when
	// the row type of the app name changed, and then only the documented one.
	for _, c := range []*wlClient{appS, appP, blueS, blueP, greenS, greenP} {
		t.Logf("%s: %d transactions, max latency %s, %d errors", c.name, c.ops, c.maxLat.Round(time.Millisecond), len(c.errs))
		if c.ops < 20 {
			t.Errorf("%s ran only %d transactions", c.name, c.ops)
		}
		for _, err := range c.errs {
			var pe *pgconn.PgError
			if typeChanges && c == appP && errors.As(err, &pe) && pe.Code == "0A000" && strings.Contains(pe.Message, "cached plan must not change result type") {
				continue
			}
			t.Errorf("%s: %v", c.name, err)
		}
	}
	if typeChanges {
		t.Logf("app-prepared: %d \"cached plan must not change result type\" errors (trap 6)", len(appP.errs))
	}
}
