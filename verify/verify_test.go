package verify

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/spec"
	"github.com/greenswap/greenswap/trigger"
	"github.com/greenswap/greenswap/verify/verifytest"
)

// fixture creates the app table with seed, builds the migration of spec and
// copies blue into green.
func fixture(t *testing.T, seed, spec string) (*pgxpool.Pool, string, *verifytest.Fixture) {
	t.Helper()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, seed)
	ctx := t.Context()
	f, err := verifytest.Setup(ctx, pool, spec, pgtest.ServerMajor(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Copy(ctx, pool); err != nil {
		t.Fatal(err)
	}
	return pool, dsn, f
}

func target(f *verifytest.Fixture) Target {
	return Target{Names: f.Names, Mapping: f.Mapping}
}

func mustRun(t *testing.T, pool *pgxpool.Pool, f *verifytest.Fixture, opt Options) *Result {
	t.Helper()
	res, err := Run(t.Context(), pool, target(f), opt)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// damage writes green (or blue) directly with triggers off, so nothing syncs it.
func damage(t *testing.T, dsn, sql string) {
	t.Helper()
	pgtest.Exec(t, dsn, "SET session_replication_role = replica; "+sql)
}

func findDiff(res *Result, key ...string) *Difference {
	for i := range res.Differences {
		if slices.Equal(res.Differences[i].Key, key) {
			return &res.Differences[i]
		}
	}
	return nil
}

func describe(res *Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "ok=%v rows=%d/%d chunks=%d mismatched=%d diffs=%d", res.OK, res.SourceRows, res.TargetRows, res.Chunks, res.MismatchedChunks, res.DifferenceCount)
	for _, d := range res.Differences {
		fmt.Fprintf(&b, "\n  %s %v %v blue=%s green=%s", d.Kind, d.Key, d.Columns, d.Source, d.Target)
	}
	return b.String()
}

const ordersSeedSQL = `
CREATE TABLE orders (id serial PRIMARY KEY, email text, amount int NOT NULL, note text,
	score float8, at timestamptz NOT NULL, meta json);
INSERT INTO orders (email, amount, note, score, at, meta)
SELECT CASE WHEN g % 7 = 0 THEN NULL ELSE 'u' || g || '@x' END, g % 1000,
       CASE WHEN g % 3 = 0 THEN NULL ELSE md5(g::text) END, (g % 5)::float8,
       '2024-01-01 00:00:00+00'::timestamptz + g * interval '1.234567 seconds', json_build_object('g', g)
FROM generate_series(1, {N}) g;`

func ordersSeed(n int) string { return strings.ReplaceAll(ordersSeedSQL, "{N}", fmt.Sprint(n)) }

const ordersSpec = `
name: o2
table: public.orders
target:
  ddl: |
    CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL, amount numeric(12,2) NOT NULL,
      note text, score float8, at timestamptz(0) NOT NULL, meta json)
forward:
  email: coalesce(email, 'unknown@invalid')
reverse:
  amount: round(amount)::int
`

func TestEqualTablesPass(t *testing.T) {
	t.Parallel()
	pool, _, f := fixture(t, ordersSeed(5000), ordersSpec)
	for _, workers := range []int{1, 2, 3} {
		var calls atomic.Int32
		res := mustRun(t, pool, f, Options{Workers: workers, ChunkRows: 700, Progress: func(Progress) { calls.Add(1) }})
		if !res.OK || res.DifferenceCount != 0 {
			t.Fatalf("workers=%d: %s", workers, describe(res))
		}
		if res.SourceRows != 5000 || res.TargetRows != 5000 || res.Rows != 5000 {
			t.Fatalf("rows = %d/%d, want 5000", res.SourceRows, res.TargetRows)
		}
		if res.Chunks < 5 || len(res.ChunkStats) != res.Chunks {
			t.Fatalf("chunks = %d (%d stats), want several", res.Chunks, len(res.ChunkStats))
		}
		if !res.SourceIndex || !res.TargetIndex {
			t.Fatalf("expected index range reads on both sides: %+v", res)
		}
		if int(calls.Load()) != res.Chunks {
			t.Fatalf("progress called %d times for %d chunks", calls.Load(), res.Chunks)
		}
		// Chunks tile the key space: first open below, last open above, each
		// starting where the previous ended.
		cs := res.ChunkStats
		if cs[0].From != nil || cs[len(cs)-1].To != nil {
			t.Fatalf("first/last chunk bounds: %v %v", cs[0].From, cs[len(cs)-1].To)
		}
		for i := 1; i < len(cs); i++ {
			if !slices.Equal(cs[i].From, cs[i-1].To) {
				t.Fatalf("chunk %d starts at %v, previous ends at %v", i, cs[i].From, cs[i-1].To)
			}
		}
		if !slices.Equal(res.Compared, []string{"id", "email", "amount", "note", "score", "at", "meta"}) {
			t.Fatalf("compared = %v", res.Compared)
		}
	}
}

func TestSmallTableOneChunk(t *testing.T) {
	t.Parallel()
	pool, _, f := fixture(t, ordersSeed(10), ordersSpec)
	res := mustRun(t, pool, f, Options{})
	if !res.OK || res.Chunks != 1 || res.SourceRows != 10 {
		t.Fatal(describe(res))
	}
	// Empty tables are equal too.
	pool2, _, f2 := fixture(t, ordersSeed(0), ordersSpec)
	if res := mustRun(t, pool2, f2, Options{}); !res.OK || res.SourceRows != 0 {
		t.Fatal(describe(res))
	}
}

// TestDivergences damages green in every way the issue lists and checks
// that each key is reported with its kind, its columns and both images.
func TestDivergences(t *testing.T) {
	t.Parallel()
	pool, dsn, f := fixture(t, ordersSeed(3000), ordersSpec)
	// Blue keeps microseconds; green is timestamptz(0). The cast to green's
	// type rounds blue's value the same way the trigger did: no difference.
	if res := mustRun(t, pool, f, Options{ChunkRows: 500}); !res.OK {
		t.Fatalf("before damage: %s", describe(res))
	}
	damage(t, dsn, `
		DELETE FROM gs_o2_green.orders WHERE id = 10;                         -- missing
		INSERT INTO gs_o2_green.orders VALUES (100000, 'ghost@x', 1, NULL, 0, now(), NULL); -- extra
		INSERT INTO gs_o2_green.orders VALUES (-5, 'ghost@x', 1, NULL, 0, now(), NULL); -- extra, below every chunk
		UPDATE gs_o2_green.orders SET amount = amount + 1 WHERE id = 20;      -- one changed column
		UPDATE gs_o2_green.orders SET note = '' WHERE id = 30;                -- NULL in blue, '' in green
		UPDATE gs_o2_green.orders SET score = '-0' WHERE id = 40;             -- 0 in blue, -0 in green
		UPDATE gs_o2_green.orders g SET at = date_trunc('second', b.at)       -- truncated instead of rounded
			FROM gs_o2_blue.orders b WHERE b.id = 50 AND g.id = 50;
		UPDATE gs_o2_green.orders SET meta = '{"g":60}' WHERE id = 60;     -- json has no equality: compared as text
	`)
	cases := []struct {
		name, key, kind string
		cols            []string
		srcHas, dstHas  string
		exactOnly       bool
	}{
		{"missing row", "10", "missing", nil, "u10@x", "", false},
		{"extra row", "100000", "extra", nil, "", "ghost@x", false},
		{"extra row before the first chunk", "-5", "extra", nil, "", "ghost@x", false},
		{"changed column", "20", "different", []string{"amount"}, "20.00", "21.00", false},
		{"NULL vs empty string", "30", "different", []string{"note"}, "u30@x,30.00,,", `u30@x,30.00,"",`, false},
		{"timestamp precision", "50", "different", []string{"at"}, "00:01:02", "00:01:01", false},
		{"json text", "60", "different", []string{"meta"}, `{""g"" : 60}`, `{""g"":60}`, false},
		// -0 = 0 in PostgreSQL (and they hash alike): by default verify
		// compares with each type's equality, so only exact mode reports it.
		{"0 vs -0", "40", "different", []string{"score"}, ",0,", ",-0,", true},
	}
	for _, exact := range []bool{false, true} {
		res := mustRun(t, pool, f, Options{ChunkRows: 500, Exact: exact})
		var want []string
		for _, c := range cases {
			if !c.exactOnly || exact {
				want = append(want, c.key)
			}
		}
		if res.OK || res.DifferenceCount != len(want) || res.Exact != exact {
			t.Fatalf("exact=%v: want %d differences: %s", exact, len(want), describe(res))
		}
		if res.MismatchedChunks == 0 || res.MismatchedChunks > 6 {
			t.Fatalf("mismatched chunks = %d", res.MismatchedChunks)
		}
		for _, c := range cases {
			t.Run(fmt.Sprintf("%s/exact=%v", c.name, exact), func(t *testing.T) {
				d := findDiff(res, c.key)
				if c.exactOnly && !exact {
					if d != nil {
						t.Fatalf("key %s reported without exact mode: %+v", c.key, d)
					}
					return
				}
				if d == nil {
					t.Fatalf("key %s not reported: %s", c.key, describe(res))
				}
				if d.Kind != c.kind || !slices.Equal(d.Columns, c.cols) {
					t.Fatalf("key %s: kind %s columns %v, want %s %v", c.key, d.Kind, d.Columns, c.kind, c.cols)
				}
				if (c.srcHas == "") != (d.Source == "") || !strings.Contains(d.Source, c.srcHas) {
					t.Fatalf("key %s: blue image %q, want it to contain %q", c.key, d.Source, c.srcHas)
				}
				if (c.dstHas == "") != (d.Target == "") || !strings.Contains(d.Target, c.dstHas) {
					t.Fatalf("key %s: green image %q, want it to contain %q", c.key, d.Target, c.dstHas)
				}
			})
		}
		// Reported in key order.
		var keys []string
		for _, d := range res.Differences {
			keys = append(keys, d.Key[0])
		}
		slices.SortFunc(want, func(a, b string) int {
			if lessKey([]string{a}, []string{b}) {
				return -1
			}
			return 1
		})
		if !slices.Equal(keys, want) {
			t.Fatalf("keys %v, want %v", keys, want)
		}
	}
	// MaxReported bounds the list, not the count.
	res := mustRun(t, pool, f, Options{ChunkRows: 500, MaxReported: 2})
	if res.DifferenceCount != 7 || len(res.Differences) != 2 {
		t.Fatalf("MaxReported: %d differences, %d listed", res.DifferenceCount, len(res.Differences))
	}
}

func TestImagesAreCut(t *testing.T) {
	t.Parallel()
	pool, dsn, f := fixture(t, ordersSeed(100), ordersSpec)
	damage(t, dsn, `UPDATE gs_o2_green.orders SET note = repeat('é', 5000) WHERE id = 1`)
	res := mustRun(t, pool, f, Options{ImageWidth: 50})
	d := findDiff(res, "1")
	if d == nil || len([]rune(d.Target)) != 51 || !strings.HasSuffix(d.Target, "…") {
		t.Fatalf("image not cut to 50 characters: %s", describe(res))
	}
}

func TestCompositeKey(t *testing.T) {
	t.Parallel()
	pool, dsn, f := fixture(t, `
		CREATE TABLE items (tenant int NOT NULL, id int NOT NULL, name text NOT NULL, qty int,
			PRIMARY KEY (tenant, id));
		INSERT INTO items SELECT g % 7, g, 'item ' || g, g % 13 FROM generate_series(1, 4000) g;`, `
name: it2
table: public.items
key: [id, tenant]
target:
  ddl: |
    CREATE TABLE items (id int NOT NULL, tenant bigint NOT NULL, qty bigint, name text NOT NULL,
      PRIMARY KEY (tenant, id))
`)
	res := mustRun(t, pool, f, Options{ChunkRows: 300})
	if !res.OK || res.Chunks < 10 || !slices.Equal(res.KeyColumns, []string{"tenant", "id"}) {
		t.Fatalf("%v %s", res.KeyColumns, describe(res))
	}
	if !res.TargetIndex || !res.SourceIndex {
		t.Fatalf("composite key ranges should use the primary keys")
	}
	damage(t, dsn, `
		DELETE FROM gs_it2_green.items WHERE tenant = 2 AND id = 2998;
		UPDATE gs_it2_green.items SET qty = -1 WHERE tenant = 0 AND id = 7;
		INSERT INTO gs_it2_green.items VALUES (1, 6, 99, 'wrong tenant');`)
	res = mustRun(t, pool, f, Options{ChunkRows: 300})
	if res.DifferenceCount != 3 {
		t.Fatalf("want 3: %s", describe(res))
	}
	if d := findDiff(res, "2", "2998"); d == nil || d.Kind != "missing" {
		t.Fatalf("(2, 2998) missing not reported: %s", describe(res))
	}
	if d := findDiff(res, "0", "7"); d == nil || d.Kind != "different" || !slices.Equal(d.Columns, []string{"qty"}) {
		t.Fatalf("(0, 7) qty not reported: %s", describe(res))
	}
	if d := findDiff(res, "6", "1"); d == nil || d.Kind != "extra" {
		t.Fatalf("(6, 1) extra not reported: %s", describe(res))
	}
	// The row only green has may be a write that reached only green: a
	// plain repair fixes the rest, names it and leaves it.
	res = mustRun(t, pool, f, Options{ChunkRows: 300, Repair: true})
	if res.OK || res.Repair == nil || res.Repair.Keys != 2 || res.Repair.Deleted != 0 || res.Repair.ExtraLeft != 1 ||
		len(res.Repair.ExtraKeys) != 1 || !slices.Equal(res.Repair.ExtraKeys[0], []string{"6", "1"}) {
		t.Fatalf("repair without DeleteExtra: %+v %s", res.Repair, describe(res))
	}
	if res.Repair.Recheck.DifferenceCount != 1 || findDiff(&Result{Pass: *res.Repair.Recheck}, "6", "1") == nil {
		t.Fatalf("the recheck does not show the extra row left: %+v", res.Repair.Recheck)
	}
	if res := mustRun(t, pool, f, Options{ChunkRows: 300, Repair: true, DeleteExtra: true}); !res.OK || res.Repair == nil || res.Repair.Keys != 1 || res.Repair.Deleted != 1 {
		t.Fatalf("repair with DeleteExtra: %s", describe(res))
	}
	if res := mustRun(t, pool, f, Options{ChunkRows: 300}); !res.OK {
		t.Fatalf("after repair: %s", describe(res))
	}
}

// TestTargetWithoutKeyIndex: green's primary key is a new column, and
// nothing indexes blue's key in green, so green is read once grouped by
// chunk instead of once per chunk.
func TestTargetWithoutKeyIndex(t *testing.T) {
	t.Parallel()
	pool, dsn, f := fixture(t, `
		CREATE TABLE acct (id int PRIMARY KEY, name text NOT NULL);
		INSERT INTO acct SELECT g, 'n' || g FROM generate_series(1, 3000) g;`, `
name: a2
table: public.acct
target:
  ddl: |
    CREATE TABLE acct (gid bigint PRIMARY KEY, id int NOT NULL, name text NOT NULL)
forward:
  gid: id * 10
`)
	res := mustRun(t, pool, f, Options{ChunkRows: 400})
	if !res.OK || res.TargetIndex || !res.SourceIndex || len(res.Scans) != 1 || res.Chunks < 5 {
		t.Fatalf("%+v\n%s", res.Scans, describe(res))
	}
	damage(t, dsn, `UPDATE gs_a2_green.acct SET name = 'x' WHERE id IN (5, 2500);
		INSERT INTO gs_a2_green.acct VALUES (1, 99999, 'ghost')`)
	res = mustRun(t, pool, f, Options{ChunkRows: 400})
	if res.DifferenceCount != 3 || findDiff(res, "2500") == nil || findDiff(res, "99999") == nil {
		t.Fatalf("%s", describe(res))
	}
	res = mustRun(t, pool, f, Options{ChunkRows: 400, Repair: true, DeleteExtra: true})
	if !res.OK || res.Repair.Deleted != 1 || res.Repair.Upserted != 2 {
		t.Fatalf("repair: %+v %s", res.Repair, describe(res))
	}
	// Green's grouped scan and blue's chunk reads run in different
	// transactions: only the shared snapshot keeps them consistent under writes.
	ctx, cancel := context.WithCancel(t.Context())
	app, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; ctx.Err() == nil; i += 3 {
				_, _ = app.Exec(ctx, `UPDATE acct SET name = name || 'x' WHERE id = $1`, 1+i%3000)
				_, _ = app.Exec(ctx, `INSERT INTO acct VALUES ($1, 'new')`, 10000+i)
			}
		}()
	}
	for i := range 3 {
		res := mustRun(t, pool, f, Options{ChunkRows: 400, Workers: 2 + i%2})
		if !res.OK || res.MismatchedChunks != 0 {
			t.Errorf("grouped scan under writes, run %d: %s", i, describe(res))
		}
	}
	cancel()
	wg.Wait()
}

func TestVolatileColumnsExcluded(t *testing.T) {
	t.Parallel()
	pool, _, f := fixture(t, `
		CREATE TABLE ev (id int PRIMARY KEY, body text);
		INSERT INTO ev SELECT g, 'b' || g FROM generate_series(1, 500) g;`, `
name: ev2
table: public.ev
target:
  ddl: |
    CREATE TABLE ev (id int PRIMARY KEY, body text, copied_at timestamptz NOT NULL, token uuid NOT NULL,
      jitter float8, at_tx timestamptz, label text NOT NULL DEFAULT 'new', safe text, body_len int GENERATED ALWAYS AS (length(body)) STORED,
      port int, depth int, app text)
forward:
  copied_at: clock_timestamp()
  token: gen_random_uuid()
  jitter: random()
  at_tx: CURRENT_TIMESTAMP
  safe: coalesce(body, 'random()')
  port: inet_client_port()
  depth: pg_trigger_depth()
  app: current_setting('application_name')
`)
	res := mustRun(t, pool, f, Options{})
	if !res.OK {
		t.Fatalf("volatile columns must not fail verify: %s", describe(res))
	}
	reasons := map[string]string{}
	for _, e := range res.Excluded {
		reasons[e.Column] = e.Reason
	}
	want := map[string]string{"copied_at": "volatile", "token": "volatile", "jitter": "volatile", "at_tx": "volatile",
		"label": "not mapped", "body_len": "generated", "port": "volatile", "depth": "volatile", "app": "volatile"}
	for c, r := range want {
		if reasons[c] != r {
			t.Errorf("column %s: excluded as %q, want %q (all: %+v)", c, reasons[c], r, res.Excluded)
		}
	}
	if !slices.Equal(res.Compared, []string{"id", "body", "safe"}) {
		t.Errorf("compared %v", res.Compared)
	}
	if len(res.Warnings) < 4 || !strings.Contains(strings.Join(res.Warnings, "\n"), "clock_timestamp") {
		t.Errorf("warnings %v", res.Warnings)
	}
	// now() through a plan-flagged column too.
	m := *f.Mapping
	m.Forward.Columns = slices.Clone(m.Forward.Columns)
	for i := range m.Forward.Columns {
		if m.Forward.Columns[i].Target == "safe" {
			m.Forward.Columns[i].Volatile = true
		}
	}
	res, err := Run(t.Context(), pool, Target{Names: f.Names, Mapping: &m}, Options{})
	if err != nil || slices.Contains(res.Compared, "safe") {
		t.Fatalf("plan's Volatile flag ignored: %v %v", err, res.Compared)
	}
}

// TestConcurrentWorkloadNoFalseAlarm writes through the app-name view from
// several goroutines (inserts, updates, key updates, deletes, multi-row
// transactions) while verify runs again and again: the shared snapshot
// sees both sides consistent, so no run may report a difference.
func TestConcurrentWorkloadNoFalseAlarm(t *testing.T) {
	t.Parallel()
	pool, dsn, f := fixture(t, ordersSeed(20000), ordersSpec)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	app, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	var writes atomic.Int64
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 42))
			for ctx.Err() == nil {
				id := 1 + r.IntN(25000)
				var err error
				switch op := r.IntN(10); {
				case op < 4:
					_, err = app.Exec(ctx, `UPDATE orders SET amount = amount + 1, note = md5(random()::text), at = clock_timestamp() WHERE id = $1`, id)
				case op < 6:
					_, err = app.Exec(ctx, `INSERT INTO orders (email, amount, note, score, at) VALUES (NULL, 7, NULL, random(), clock_timestamp())`)
				case op < 7:
					_, err = app.Exec(ctx, `DELETE FROM orders WHERE id = $1`, id)
				case op < 8:
					_, err = app.Exec(ctx, `UPDATE orders SET id = id + 1000000 WHERE id = $1`, id)
				default:
					tx, e := app.Begin(ctx)
					if e != nil {
						err = e
						break
					}
					_, err = tx.Exec(ctx, `UPDATE orders SET score = score * -1 WHERE id BETWEEN $1 AND $1 + 20`, id)
					if err == nil {
						_, err = tx.Exec(ctx, `DELETE FROM orders WHERE id = $1 + 30`, id)
					}
					if err == nil {
						err = tx.Commit(ctx)
					} else {
						_ = tx.Rollback(ctx)
					}
				}
				if err != nil && ctx.Err() == nil && !strings.Contains(err.Error(), "deadlock") && !strings.Contains(err.Error(), "duplicate key") {
					t.Errorf("workload: %v", err)
					return
				}
				writes.Add(1)
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	for i := range 5 {
		res := mustRun(t, pool, f, Options{ChunkRows: 2000, Workers: 1 + i%2})
		if !res.OK {
			t.Errorf("run %d: false alarm under concurrent writes: %s", i, describe(res))
		}
		// Under one shared snapshot every chunk's hashes agree at once; a
		// mismatch that the drill-down then explains away would mean the
		// two sides were read at different moments.
		if res.MismatchedChunks != 0 {
			t.Errorf("run %d: %d chunks mismatched under the shared snapshot", i, res.MismatchedChunks)
		}
		if res.Chunks < 5 {
			t.Errorf("run %d: %d chunks", i, res.Chunks)
		}
	}
	before := writes.Load()
	cancel()
	wg.Wait()
	if before < 100 {
		t.Fatalf("the workload made only %d writes", before)
	}
	t.Logf("%d concurrent writes during 5 verifies", before)
	// And once quiet, the tables are still equal.
	if res := mustRun(t, pool, f, Options{ChunkRows: 2000}); !res.OK {
		t.Fatalf("after workload: %s", describe(res))
	}
}

// TestRepair damages green with triggers off, repairs, and checks that the
// next verify passes and that the repair's writes did not echo back to
// blue through the (enabled) reverse trigger.
func TestRepair(t *testing.T) {
	t.Parallel()
	pool, dsn, f := fixture(t, ordersSeed(6000), ordersSpec)
	for _, s := range trigger.SetReverseSQL(f.Names, true) {
		pgtest.Exec(t, dsn, s)
	}
	var blueBefore string
	blueHash := `SELECT count(*) || ':' || sum(hashtextextended(t::text, 0)) FROM gs_o2_blue.orders t`
	if err := pool.QueryRow(t.Context(), blueHash).Scan(&blueBefore); err != nil {
		t.Fatal(err)
	}
	damage(t, dsn, `
		DELETE FROM gs_o2_green.orders WHERE id BETWEEN 100 AND 1600;   -- a whole chunk and more
		DELETE FROM gs_o2_green.orders WHERE id = 5000;
		INSERT INTO gs_o2_green.orders VALUES (700000, 'ghost@x', 1, NULL, 0, now(), NULL);
		UPDATE gs_o2_green.orders SET email = 'wrong', score = 'NaN' WHERE id % 500 = 1;`)
	res := mustRun(t, pool, f, Options{ChunkRows: 500, Repair: true, DeleteExtra: true})
	if res.DifferenceCount != 1501+1+1+12-3 {
		t.Fatalf("found %d differences", res.DifferenceCount)
	}
	if !res.OK || res.Repair == nil || res.Repair.Recheck == nil || res.Repair.Recheck.DifferenceCount != 0 {
		t.Fatalf("repair did not pass its recheck: %+v", res.Repair)
	}
	if res.Repair.Keys != res.DifferenceCount || res.Repair.Deleted != 1 || res.Repair.Upserted != int64(res.DifferenceCount-1) {
		t.Fatalf("repair counts: %+v (differences %d)", res.Repair, res.DifferenceCount)
	}
	if res.Repair.Recheck.Chunks != res.MismatchedChunks {
		t.Fatalf("recheck read %d chunks, want the %d that mismatched", res.Repair.Recheck.Chunks, res.MismatchedChunks)
	}
	if res := mustRun(t, pool, f, Options{ChunkRows: 500}); !res.OK {
		t.Fatalf("verify after repair: %s", describe(res))
	}
	var blueAfter string
	if err := pool.QueryRow(t.Context(), blueHash).Scan(&blueAfter); err != nil {
		t.Fatal(err)
	}
	if blueAfter != blueBefore {
		t.Fatalf("repair echoed into blue: %s -> %s", blueBefore, blueAfter)
	}
}

// TestRepairUnderConcurrentWrites repairs while the app keeps writing the
// damaged rows: the repair must not overwrite a newer value with an older one.
func TestRepairUnderConcurrentWrites(t *testing.T) {
	t.Parallel()
	pool, dsn, f := fixture(t, ordersSeed(3000), ordersSpec)
	damage(t, dsn, `UPDATE gs_o2_green.orders SET amount = -1 WHERE id <= 1000; DELETE FROM gs_o2_green.orders WHERE id > 2500`)
	ctx, cancel := context.WithCancel(t.Context())
	app, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for ctx.Err() == nil {
				id := 1 + r.IntN(3000)
				if _, err := app.Exec(ctx, `UPDATE orders SET amount = amount + 1 WHERE id = $1`, id); err != nil && ctx.Err() == nil && !strings.Contains(err.Error(), "deadlock") {
					t.Errorf("workload: %v", err)
					return
				}
			}
		}()
	}
	res := mustRun(t, pool, f, Options{ChunkRows: 500, Repair: true})
	cancel()
	wg.Wait()
	if !res.OK {
		t.Fatalf("repair under writes: recheck %s", describe(res))
	}
	if res := mustRun(t, pool, f, Options{ChunkRows: 500}); !res.OK {
		t.Fatalf("after: %s", describe(res))
	}
}

// TestBidirectional: once reverse sync is on, a write on green through a
// lossy mapping (amount 1.60 → blue 2 → forward 2.00) leaves green unequal
// to forward(blue) but equal under reverse; Bidirectional accepts it.
func TestBidirectional(t *testing.T) {
	t.Parallel()
	pool, dsn, f := fixture(t, ordersSeed(1000), ordersSpec)
	for _, s := range trigger.SetReverseSQL(f.Names, true) {
		pgtest.Exec(t, dsn, s)
	}
	pgtest.Exec(t, dsn, `UPDATE gs_o2_green.orders SET amount = 1.60 WHERE id = 5`)
	res := mustRun(t, pool, f, Options{ChunkRows: 200})
	if d := findDiff(res, "5"); res.OK || d == nil || !slices.Equal(d.Columns, []string{"amount"}) {
		t.Fatalf("forward only: %s", describe(res))
	}
	res = mustRun(t, pool, f, Options{ChunkRows: 200, Bidirectional: true})
	if !res.OK || res.Accepted != 1 {
		t.Fatalf("bidirectional: accepted %d: %s", res.Accepted, describe(res))
	}
	// Reverse: green mapped back to blue's shape. The forward mapping is
	// lossy (coalesce, rounding to timestamptz(0)), so rows written on blue
	// only match through the forward direction: without Bidirectional
	// they are all reported, with it they are accepted.
	res = mustRun(t, pool, f, Options{ChunkRows: 200, Direction: Reverse})
	if res.OK || res.SourceSide != "green" || res.TargetSide != "blue" || res.SourceRows != 1000 {
		t.Fatalf("reverse without bidirectional: %s", describe(res))
	}
	res = mustRun(t, pool, f, Options{ChunkRows: 200, Direction: Reverse, Bidirectional: true})
	if !res.OK || res.Accepted < 900 {
		t.Fatalf("reverse: accepted %d %s", res.Accepted, describe(res))
	}
	// A real difference is still one.
	damage(t, dsn, `UPDATE gs_o2_green.orders SET amount = 7 WHERE id = 6`)
	res = mustRun(t, pool, f, Options{ChunkRows: 200, Bidirectional: true})
	if res.OK || findDiff(res, "6") == nil || res.DifferenceCount != 1 {
		t.Fatalf("bidirectional hides a real difference: %s", describe(res))
	}
	res = mustRun(t, pool, f, Options{ChunkRows: 200, Direction: Reverse, Bidirectional: true, Repair: true})
	if !res.OK || res.Repair.Upserted != 1 {
		t.Fatalf("reverse repair: %s", describe(res))
	}
	if res := mustRun(t, pool, f, Options{ChunkRows: 200, Bidirectional: true}); !res.OK {
		t.Fatalf("after reverse repair: %s", describe(res))
	}
}

func TestStreamWaiterHook(t *testing.T) {
	t.Parallel()
	pool, _, f := fixture(t, ordersSeed(100), ordersSpec)
	var got string
	res := mustRun(t, pool, f, Options{Stream: StreamWaiterFunc(func(_ context.Context, lsn string) error { got = lsn; return nil })})
	if !res.OK || got == "" || got != res.SnapshotLSN {
		t.Fatalf("waiter got %q, snapshot LSN %q", got, res.SnapshotLSN)
	}
	_, err := Run(t.Context(), pool, target(f), Options{Stream: StreamWaiterFunc(func(context.Context, string) error { return fmt.Errorf("stream stopped") })})
	if err == nil || !strings.Contains(err.Error(), "stream stopped") {
		t.Fatalf("waiter error not returned: %v", err)
	}
}

func TestHashScan(t *testing.T) {
	t.Parallel()
	pool, _, f := fixture(t, ordersSeed(100), ordersSpec)
	if _, err := HashScan(t.Context(), pool, f.Names.Green); err != nil {
		t.Fatal(err)
	}
	if _, err := HashScan(t.Context(), pool, spec.QualifiedName{Schema: "public", Name: "nope"}); err == nil {
		t.Fatal("no error for a missing table")
	}
}

// A green row left under a stale green key (green's key reads a blue column
// outside blue's key) is deleted by repair even though blue still has its
// blue key.
func TestRepairDeletesRowUnderStaleGreenKey(t *testing.T) {
	t.Parallel()
	pool, dsn, f := fixture(t, `
		CREATE TABLE acct (id int PRIMARY KEY, tenant int NOT NULL, name text NOT NULL);
		INSERT INTO acct SELECT g, g % 3, 'n' || g FROM generate_series(1, 500) g;`, `
name: a3
table: public.acct
target:
  ddl: |
    CREATE TABLE acct (id int NOT NULL, tenant int NOT NULL, name text NOT NULL, PRIMARY KEY (tenant, id))
`)
	damage(t, dsn, `INSERT INTO gs_a3_green.acct VALUES (5, 9, 'n5')`)
	res := mustRun(t, pool, f, Options{})
	if res.OK {
		t.Fatalf("ghost under a stale green key not found: %s", describe(res))
	}
	res = mustRun(t, pool, f, Options{Repair: true})
	if !res.OK || res.Repair == nil || res.Repair.Deleted != 1 {
		t.Fatalf("repair: %+v %s", res.Repair, describe(res))
	}
	var n int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM gs_a3_green.acct WHERE id = 5`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("green rows with id 5 = %d, %v; want 1", n, err)
	}
}

// TestOppositeDirectionNeverAcceptsAnUncheckedColumn (break4 finding 05):
// with a volatile reverse mapping for v, the reverse re-check leaves v out,
// so it must not accept a row whose v differs forward: green's v tampered
// behind the triggers' back is reported, with and without a write on green
// synced back (as after cutover), and the report says v is one-way.
func TestOppositeDirectionNeverAcceptsAnUncheckedColumn(t *testing.T) {
	t.Parallel()
	pool, dsn, f := fixture(t, `
		CREATE TABLE t (id int PRIMARY KEY, v text, n numeric(12,2));
		INSERT INTO t SELECT g, 'x', g FROM generate_series(1, 500) g;`, `
name: f05
table: public.t
target:
  ddl: |
    CREATE TABLE t (id bigint PRIMARY KEY, v text, n numeric(12,2))
reverse:
  v: "v || '@' || clock_timestamp()::text"
  n: round(n)
`)
	for _, s := range trigger.SetReverseSQL(f.Names, true) {
		pgtest.Exec(t, dsn, s)
	}
	damage(t, dsn, `UPDATE gs_f05_green.t SET v = 'tampered' WHERE id = 10`)
	res := mustRun(t, pool, f, Options{ChunkRows: 100, Bidirectional: true})
	if d := findDiff(res, "10"); res.OK || d == nil || !slices.Equal(d.Columns, []string{"v"}) || res.Accepted != 0 {
		t.Fatalf("tampered v accepted through a reverse check that skips it: %s", describe(res))
	}
	if !slices.Contains(res.Compared, "v") || !slices.Equal(res.OneWay, []string{"v"}) ||
		len(res.OppositeExcluded) != 1 || res.OppositeExcluded[0].Column != "v" || slices.Contains(res.OppositeCompared, "v") {
		t.Fatalf("report: compared %v one-way %v opposite compared %v excluded %+v", res.Compared, res.OneWay, res.OppositeCompared, res.OppositeExcluded)
	}
	if !strings.Contains(strings.Join(res.Warnings, "\n"), "v compared blue → green only") {
		t.Errorf("warnings %v", res.Warnings)
	}
	// Writes on green, synced back (as after cutover): the reverse trigger
	// writes blue's v through clock_timestamp(), so those rows cannot be
	// checked on v either way and are reported with the tampered one,
	// none accepted.
	pgtest.Exec(t, dsn, `UPDATE gs_f05_green.t SET n = 1.60 WHERE id = 20; UPDATE gs_f05_green.t SET v = 'y' WHERE id <= 3`)
	res = mustRun(t, pool, f, Options{ChunkRows: 100, Bidirectional: true})
	if res.OK || res.Accepted != 0 || res.DifferenceCount != 5 || findDiff(res, "10") == nil || findDiff(res, "20") == nil || findDiff(res, "2") == nil {
		t.Fatalf("after writes on green: accepted %d: %s", res.Accepted, describe(res))
	}
}

// TestOppositeDirectionReadsRenamedColumns: coverage follows what the
// opposite expression reads, not column names: a lossy write on green's
// renamed amount_n is accepted because reverse.amount reads amount_n.
func TestOppositeDirectionReadsRenamedColumns(t *testing.T) {
	t.Parallel()
	pool, dsn, f := fixture(t, `
		CREATE TABLE r (id int PRIMARY KEY, amount int NOT NULL);
		INSERT INTO r SELECT g, g FROM generate_series(1, 300) g;`, `
name: rn
table: public.r
target:
  ddl: |
    CREATE TABLE r (id bigint PRIMARY KEY, amount_n numeric(12,2) NOT NULL)
forward:
  amount_n: amount
reverse:
  amount: round(amount_n)::int
`)
	for _, s := range trigger.SetReverseSQL(f.Names, true) {
		pgtest.Exec(t, dsn, s)
	}
	pgtest.Exec(t, dsn, `UPDATE gs_rn_green.r SET amount_n = 1.60 WHERE id = 7`)
	res := mustRun(t, pool, f, Options{ChunkRows: 100, Bidirectional: true})
	if !res.OK || res.Accepted != 1 || len(res.OneWay) != 0 {
		t.Fatalf("renamed lossy column: accepted %d one-way %v: %s", res.Accepted, res.OneWay, describe(res))
	}
	damage(t, dsn, `UPDATE gs_rn_green.r SET amount_n = 5.55 WHERE id = 8`)
	if res := mustRun(t, pool, f, Options{ChunkRows: 100, Bidirectional: true}); res.OK || findDiff(res, "8") == nil {
		t.Fatalf("tampered amount_n accepted: %s", describe(res))
	}
}
