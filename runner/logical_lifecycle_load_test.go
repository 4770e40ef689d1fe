package runner

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
)

// The load of TestLogicalLifecycleUnderLoad: clients writing the accounts
// table of wlSchema, each write and its ledger rows (wlSchema's ledger, read
// by ledgerDiff) in one transaction. The ledger rows are written after the
// row itself, so two transactions writing one row append to the ledger in
// the order the row lock gives them, which is the order they commit in:
// the ledger's last entry for a key is the key's truth whoever wrote it.
//
// Who writes what: the app-name clients share every row but the pinned
// clients' (and 20 hot rows they all fight over); each pinned client
// writes its own rows only. Logical mode before cutover does not reconcile
// two shapes writing one row within the stream's lag (documented, see
// sync/stream/README.md), and after cutover a blue-pinned and an app-name
// writer of one row take the two tables' row locks in opposite orders.

const llHot = 20 // ids 1..llHot: hot rows of the app-name clients

// llOwner is the pinned client owning seeded id, or "" for the app-name clients'.
func llOwner(id int64) string {
	switch {
	case id <= llHot:
		return ""
	case id%8 == 0:
		return "green"
	case id%8 == 1:
		return "blue"
	}
	return ""
}

// llKeys is a set of rows clients may pick: base ids, each living under id
// or -id (key updates flip the sign).
type llKeys struct {
	mu  gosync.Mutex
	ids []int64
}

func (k *llKeys) add(id int64) {
	k.mu.Lock()
	k.ids = append(k.ids, id)
	k.mu.Unlock()
}

func (k *llKeys) pick(rng *rand.Rand) int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	id := k.ids[rng.IntN(len(k.ids))]
	if rng.IntN(4) == 0 {
		id = -id
	}
	return id
}

type llClient struct {
	name   string
	shape  string // "app", "blue" or "green"
	mode   pgx.QueryExecMode
	keys   *llKeys // rows it picks (shared by the app-name clients)
	ops    atomic.Int64
	noops  atomic.Int64 // a picked row that was gone, or under the other sign
	mu     gosync.Mutex
	errs   []llError
	cancel context.CancelFunc
	done   chan struct{}
	load   *llLoad
}

type llError struct {
	phase string
	err   error
}

type llLoad struct {
	t       *testing.T
	dsn     string
	name    string
	gate    gosync.RWMutex // clients hold it shared per transaction; pause takes it
	phase   atomic.Pointer[string]
	clients []*llClient
	// noRekeys turns the app-name clients' key updates into plain updates
	// (before finalize: see its step).
	noRekeys atomic.Bool
}

func (l *llLoad) setPhase(p string) { l.phase.Store(&p) }

// start runs a client until stop; shape "blue" or "green" pins it by
// search_path to that version schema, as the runbook advises.
func (l *llLoad) start(name, shape string, mode pgx.QueryExecMode, keys *llKeys, seed uint64) *llClient {
	l.t.Helper()
	cfg, err := pgx.ParseConfig(l.dsn)
	if err != nil {
		l.t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = name
	if shape != "app" {
		cfg.RuntimeParams["search_path"] = fmt.Sprintf("gs_%s_%s, public", l.name, shape)
	}
	cfg.DefaultQueryExecMode = mode
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		l.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &llClient{name: name, shape: shape, mode: mode, keys: keys, cancel: cancel, done: make(chan struct{}), load: l}
	l.clients = append(l.clients, c)
	go func() {
		defer close(c.done)
		defer conn.Close(context.Background())
		rng := rand.New(rand.NewPCG(seed, uint64(time.Now().UnixNano())))
		for shape != "app" && ctx.Err() == nil {
			var ok bool
			if err := conn.QueryRow(ctx, `SELECT pg_catalog.to_regclass('accounts') <> 'public.accounts'::pg_catalog.regclass`).Scan(&ok); err == nil && ok {
				break // the version schema exists: accounts is not the app's any more
			}
			time.Sleep(5 * time.Millisecond)
		}
		for ctx.Err() == nil {
			l.gate.RLock()
			err := c.step(ctx, conn, rng)
			l.gate.RUnlock()
			if err != nil && ctx.Err() == nil {
				c.mu.Lock()
				c.errs = append(c.errs, llError{*l.phase.Load(), err})
				c.mu.Unlock()
			}
			// Paced: the stream must keep up on a loaded 2-core machine
			// (issue 12 makes it faster; this test is about correctness).
			time.Sleep(time.Duration(2+rng.IntN(4)) * time.Millisecond)
		}
	}()
	return c
}

func (c *llClient) stop() {
	c.cancel()
	<-c.done
}

// step is one transaction: a write, its ledger rows, commit.
func (c *llClient) step(ctx context.Context, conn *pgx.Conn, rng *rand.Rand) (err error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tx.Rollback(context.Background())
		}
	}()
	type entry struct {
		op    string
		id    int64
		value *int64
	}
	var ledger []entry
	v := int64(rng.IntN(1_000_000))
	hot := func() int64 {
		id := int64(1 + rng.IntN(llHot))
		if rng.IntN(4) == 0 {
			id = -id
		}
		return id
	}
	// one runs a statement returning (id, value) of the rows it wrote.
	one := func(sql string, args ...any) (id, value int64, ok bool, err error) {
		err = tx.QueryRow(ctx, sql, args...).Scan(&id, &value)
		if errors.Is(err, pgx.ErrNoRows) {
			c.noops.Add(1)
			return 0, 0, false, nil
		}
		return id, value, err == nil, err
	}
	r := rng.IntN(100)
	switch {
	case r < 22:
		id, value, _, err := one(`INSERT INTO accounts (value, note) VALUES ($1, $2) RETURNING id, value`, v, c.name)
		if err != nil {
			return fmt.Errorf("insert: %w", err)
		}
		c.keys.add(id)
		ledger = append(ledger, entry{"insert", id, &value})
	case r < 45, r < 70 && c.shape != "app":
		id, value, ok, err := one(`UPDATE accounts SET value = $1 WHERE id = $2 RETURNING id, value`, v, c.keys.pick(rng))
		if err != nil {
			return fmt.Errorf("update: %w", err)
		}
		if ok {
			ledger = append(ledger, entry{"update", id, &value})
		}
	case r < 62:
		id, value, ok, err := one(`UPDATE accounts SET value = $1 WHERE id = $2 RETURNING id, value`, v, hot())
		if err != nil {
			return fmt.Errorf("update a hot row: %w", err)
		}
		if ok {
			ledger = append(ledger, entry{"update", id, &value})
		}
	case r < 70:
		// Read-modify-write: the ledger records the value it computed.
		id, value, ok, err := one(`UPDATE accounts SET value = value + 1 WHERE id = $1 RETURNING id, value`, hot())
		if err != nil {
			return fmt.Errorf("increment a hot row: %w", err)
		}
		if ok {
			ledger = append(ledger, entry{"update", id, &value})
		}
	case r < 80:
		id, _, ok, err := one(`DELETE FROM accounts WHERE id = $1 RETURNING id, value`, c.keys.pick(rng))
		if err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		if ok {
			ledger = append(ledger, entry{"delete", id, nil})
		}
	case r < 86 && c.shape == "app":
		// A hot row deleted and a new one inserted under its key, in one
		// transaction (the stream's "fresh" key).
		id, _, ok, err := one(`DELETE FROM accounts WHERE id = $1 RETURNING id, value`, hot())
		if err != nil {
			return fmt.Errorf("delete a hot row: %w", err)
		}
		if ok {
			ledger = append(ledger, entry{"delete", id, nil})
			id, value, _, err := one(`INSERT INTO accounts (id, value, note) VALUES ($1, $2, 're-inserted') RETURNING id, value`, id, v)
			if err != nil {
				return fmt.Errorf("re-insert a hot row: %w", err)
			}
			ledger = append(ledger, entry{"insert", id, &value})
		}
	case c.shape == "app" && !c.load.noRekeys.Load():
		// A key update (trap 3, 13), on a hot row or any other.
		old := c.keys.pick(rng)
		if rng.IntN(3) == 0 {
			old = hot()
		}
		id, value, ok, err := one(`UPDATE accounts SET id = -id WHERE id = $1 RETURNING id, value`, old)
		if err != nil {
			return fmt.Errorf("key update: %w", err)
		}
		if ok {
			ledger = append(ledger, entry{"delete", old, nil}, entry{"insert", id, &value})
		}
	default:
		id, value, ok, err := one(`UPDATE accounts SET value = $1, note = $2 WHERE id = $3 RETURNING id, value`, v, c.name, c.keys.pick(rng))
		if err != nil {
			return fmt.Errorf("update: %w", err)
		}
		if ok {
			ledger = append(ledger, entry{"update", id, &value})
		}
	}
	for _, e := range ledger {
		if _, err = tx.Exec(ctx, `INSERT INTO ledger (op, id, value, via) VALUES ($1, $2, $3, $4)`, e.op, e.id, e.value, c.name); err != nil {
			return fmt.Errorf("ledger: %w", err)
		}
	}
	if err = tx.Commit(ctx); err != nil {
		return err
	}
	c.ops.Add(1)
	return nil
}

// pause holds every client between two transactions while check runs.
func (l *llLoad) pause(check func()) {
	l.gate.Lock()
	defer l.gate.Unlock()
	check()
}

// TestLogicalLifecycleUnderLoad (issue 12.4): the whole lifecycle in
// logical mode — plan → sync → verify → cutover → rollback → verify →
// cutover → finalize — while eight clients write through the app name the
// whole time (four by the simple protocol, four by prepared statements;
// inserts, updates, deletes, key updates, a delete and re-insert under one
// key, read-modify-writes, on random and on 20 hot rows they all share),
// started before sync so the backfill races them, and four clients pinned
// by search_path to blue's and to green's version schema (one of each
// protocol per shape) write their own rows. Oracles independent of
// greenswap's verify: the ledger every committed write appends to in its
// own transaction, checked against the app name, blue and green at every
// stage and against the final table; and the hand-written EXCEPT diff of
// blue and green wherever both exist. Asserted: no client error but the
// documented "cached plan must not change result type" (prepared
// statements on the app name, whose row type changes at each swap; trap
// 6, docs/runbook.md); no row lost, extra or wrong against the ledger; no
// replication slot and no publication left.
func TestLogicalLifecycleUnderLoad(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := logicalName("ll")
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, wlSchema)
	env := syncTestEnv(t, dsn)
	spec := syncSpec(t, fmt.Sprintf(`
name: %s
table: public.accounts
mode: logical
target:
  ddl: CREATE TABLE accounts (id bigint PRIMARY KEY, value bigint NOT NULL CHECK (value >= 0), note text)
`, name))
	blue, green := fmt.Sprintf("gs_%s_blue.accounts", name), fmt.Sprintf("gs_%s_green.accounts", name)

	app, pinnedBlue, pinnedGreen := &llKeys{}, &llKeys{}, &llKeys{}
	for id := int64(1); id <= 2000; id++ {
		switch llOwner(id) {
		case "blue":
			pinnedBlue.add(id)
		case "green":
			pinnedGreen.add(id)
		default:
			if id > llHot {
				app.add(id)
			}
		}
	}
	l := &llLoad{t: t, dsn: dsn, name: name}
	l.setPhase("before sync")
	simple, prepared := pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement
	for i := range 8 {
		mode, kind := simple, "simple"
		if i%2 == 1 {
			mode, kind = prepared, "prepared"
		}
		l.start(fmt.Sprintf("app-%s-%d", kind, i), "app", mode, app, uint64(i+1))
	}
	t.Cleanup(func() {
		for _, c := range l.clients {
			c.stop()
		}
	})

	res, err := Plan(ctx, env, spec, PlanOptions{})
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	if res.Blocking != 0 || !hasHazard(res.Hazards, shadow.HazardRowTypeChange) {
		t.Fatalf("plan: %d blocking hazards, hazards %+v; want none blocking and %s", res.Blocking, res.Hazards, shadow.HazardRowTypeChange)
	}

	// Blue's pinned clients begin as soon as adopt has made blue's version
	// schema, so they race the backfill too; green's once synced (green
	// refuses writes until then: its write gate).
	l.start("blue-simple", "blue", simple, pinnedBlue, 101)
	l.start("blue-prepared", "blue", prepared, pinnedBlue, 102)
	l.setPhase("sync")
	t0 := time.Now()
	st, err := Sync(ctx, env, spec, SyncOptions{BatchSize: 100})
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	if st.State != state.Synced {
		t.Fatalf("sync ended in %s", st.State)
	}
	t.Logf("sync %s: %d batches, %d rows; stream %d transactions, %d keys", time.Since(t0).Round(time.Millisecond),
		st.Batches, st.Rows, st.Stream.Txns, st.Stream.Keys)
	l.setPhase("synced")
	stopWatch, _ := startWatch(t, env, name)
	l.start("green-simple", "green", simple, pinnedGreen, 201)
	l.start("green-prepared", "green", prepared, pinnedGreen, 202)
	run := func() { time.Sleep(700 * time.Millisecond) }

	// consistent pauses the clients and checks the oracles: the ledger
	// against the app name, blue and green where they exist, and blue
	// against green (EXCEPT both ways). In logical mode green is current
	// once the stream has applied everything committed.
	consistent := func(stage string, logical, both bool) {
		t.Helper()
		l.pause(func() {
			if logical {
				logicalWait(t, env, name)
			}
			tables := map[string]string{"app name": `SELECT id, value::bigint FROM public.accounts`}
			if both {
				tables["blue"] = `SELECT id, value::bigint FROM ` + blue
				tables["green"] = `SELECT id, value FROM ` + green
				if n := coInt(t, pool, fmt.Sprintf(`SELECT count(*) FROM ((SELECT id, value::bigint, note FROM %[1]s EXCEPT SELECT id, value, note FROM %[2]s)
					UNION ALL (SELECT id, value, note FROM %[2]s EXCEPT SELECT id, value::bigint, note FROM %[1]s)) d`, blue, green)); n != 0 {
					t.Errorf("%s: blue and green differ in %d rows", stage, n)
					logDiff(t, pool, blue, green)
				}
			}
			for k, d := range ledgerDiff(t, dsn, tables) {
				if d != 0 {
					t.Errorf("%s: %s differs from the ledger in %d rows", stage, k, d)
				}
			}
		})
	}

	run()
	consistent("synced", true, true)
	step := func(what string, f func() error) {
		t.Helper()
		l.setPhase(what)
		t0 := time.Now()
		if err := f(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s: %s", what, time.Since(t0).Round(time.Millisecond))
		l.setPhase("after " + what)
	}
	out := &coBuffer{}
	opts := SwapCommandOptions{Out: out, LockTimeout: 500 * time.Millisecond, MaxAttempts: 40}
	cutover := func() error {
		n := len(out.String())
		_, err := Cutover(ctx, env, name, CutoverOptions{SwapCommandOptions: opts})
		t.Logf("cutover said:\n%s", out.String()[n:])
		return err
	}
	step("verify", func() error { return verifyOK(ctx, env, name) })
	step("cutover", cutover)
	if slotExists(t, env, "gs_"+name) || publicationExists(t, env, "gs_"+name) {
		t.Fatal("slot or publication left after the cutover retired the stream")
	}
	run()
	consistent("cut over", false, true)
	step("rollback", func() error { _, err := Rollback(ctx, env, name, opts); return err })
	run()
	consistent("rolled back", false, true)
	step("verify again", func() error { return verifyOK(ctx, env, name) })
	step("cutover again", cutover)
	run()
	consistent("cut over again", false, true)
	if err := stopWatch(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("sync --watch: %v", err)
	}

	// Finalize waits for a quiet period on blue: its pinned clients stop.
	// So do key updates through the app name: the reverse trigger's key
	// update reads blue (the NOT EXISTS of trigger.rekey), and the ACCESS
	// SHARE lock that takes in the client's session makes finalize's usage
	// check (cutover/usage.go) name the app-name client as one of blue's.
	l.noRekeys.Store(true)
	for _, c := range l.clients {
		if c.shape == "blue" {
			c.stop()
		}
	}
	time.Sleep(1200 * time.Millisecond)
	step("finalize", func() error {
		_, err := Finalize(ctx, env, name, FinalizeOptions{SwapCommandOptions: opts, QuietPeriod: time.Second, SampleEvery: 100 * time.Millisecond, Yes: true})
		return err
	})
	run()
	for _, c := range l.clients {
		c.stop()
	}
	consistent("finalized", false, false)
	if kind := coStr(t, pool, `SELECT relkind::text FROM pg_class WHERE oid = 'public.accounts'::regclass`); kind != "r" {
		t.Fatalf("public.accounts is relkind %s after finalize, want a table", kind)
	}
	if slotExists(t, env, "gs_"+name) || publicationExists(t, env, "gs_"+name) {
		t.Fatal("slot or publication left after finalize")
	}
	if n := coInt(t, pool, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`); n != 0 {
		t.Fatalf("%d replication slots left in the database", n)
	}
	if n := coInt(t, pool, `SELECT count(*) FROM pg_publication`); n != 0 {
		t.Fatalf("%d publications left in the database", n)
	}

	planErrs := 0
	for _, c := range l.clients {
		t.Logf("%s: %d transactions (%d found their row gone or moved), %d errors", c.name, c.ops.Load(), c.noops.Load(), len(c.errs))
		if c.ops.Load() < 50 {
			t.Errorf("%s ran only %d transactions", c.name, c.ops.Load())
		}
		for _, e := range c.errs {
			var pe *pgconn.PgError
			if c.shape == "app" && c.mode == prepared && errors.As(e.err, &pe) && pe.Code == "0A000" &&
				strings.Contains(pe.Message, "cached plan must not change result type") {
				planErrs++
				continue
			}
			t.Errorf("%s during %s: %v", c.name, e.phase, e.err)
		}
	}
	var n int64
	for _, c := range l.clients {
		n += c.ops.Load()
	}
	t.Logf("%d transactions in all; %d \"cached plan must not change result type\" errors (trap 6)", n, planErrs)
}

func hasHazard(hs []shadow.Hazard, code string) bool {
	for _, h := range hs {
		if h.Code == code {
			return true
		}
	}
	return false
}

// logDiff logs a few rows blue and green disagree on.
func logDiff(t *testing.T, pool db.Querier, blue, green string) {
	t.Helper()
	rows, err := pool.Query(context.Background(), fmt.Sprintf(`SELECT 'blue only' AS side, * FROM (SELECT id, value::bigint, note FROM %[1]s EXCEPT SELECT id, value, note FROM %[2]s) b
		UNION ALL SELECT 'green only', * FROM (SELECT id, value, note FROM %[2]s EXCEPT SELECT id, value::bigint, note FROM %[1]s) g ORDER BY 2 LIMIT 10`, blue, green))
	if err != nil {
		t.Log(err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		v, _ := rows.Values()
		t.Logf("  %v", v)
	}
}
