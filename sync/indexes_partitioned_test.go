package sync_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/spec"
	gssync "github.com/greenswap/greenswap/sync"
)

// partTable is a plain blue table; partSpec makes green range-partitioned
// on at, its 2024 partition sub-partitioned by half-year, with a default partition.
const partTable = `
	CREATE TABLE ev (id bigserial PRIMARY KEY, at date NOT NULL, kind text, n int NOT NULL);
	INSERT INTO ev (at, kind, n)
	SELECT date '2024-01-01' + (g % 900), CASE WHEN g % 7 = 0 THEN NULL ELSE 'k' || (g % 5) END, g
	FROM generate_series(1, 20000) g;
	ANALYZE ev;`

const partSpec = `
name: pe
table: public.ev
target:
  ddl: |
    CREATE TABLE ev (id bigint NOT NULL, at date NOT NULL, kind text, n bigint NOT NULL, PRIMARY KEY (id, at))
    PARTITION BY RANGE (at)
  partitions:
    - CREATE TABLE ev_2024 PARTITION OF ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY RANGE (at)
    - CREATE TABLE ev_2024_h1 PARTITION OF ev_2024 FOR VALUES FROM ('2024-01-01') TO ('2024-07-01')
    - CREATE TABLE ev_2024_h2 PARTITION OF ev_2024 DEFAULT
    - CREATE TABLE ev_2025 PARTITION OF ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')
    - CREATE TABLE ev_rest PARTITION OF ev DEFAULT
  indexes:
    - CREATE INDEX ev_kind_idx ON ev (kind) WHERE kind IS NOT NULL
    - CREATE UNIQUE INDEX ev_n_at_key ON ev USING btree (n, at)
`

var partLeaves = []string{"ev_2024_h1", "ev_2024_h2", "ev_2025", "ev_rest"}

// indexBuild is an IndexBuild of partSpec's indexes (or stmts) that
// records its events.
func (f *fixture) indexBuild(t *testing.T, events *[]gssync.IndexEvent, stmts ...string) *gssync.IndexBuild {
	t.Helper()
	cfg, err := pgx.ParseConfig(f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	if len(stmts) == 0 {
		stmts = []string{"CREATE INDEX ev_kind_idx ON ev (kind) WHERE kind IS NOT NULL", "CREATE UNIQUE INDEX ev_n_at_key ON ev USING btree (n, at)"}
	}
	var mu gosync.Mutex
	return &gssync.IndexBuild{
		ConnConfig: cfg, Migration: "pe", Names: f.names, Statements: stmts,
		Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel),
		OnEvent: func(_ context.Context, ev gssync.IndexEvent) error {
			mu.Lock()
			defer mu.Unlock()
			*events = append(*events, ev)
			return nil
		},
	}
}

// assertPartitionIndexes checks that index (on green) is valid and that
// every partition of the tree has its own valid index, named by
// PartitionIndexName, attached to its parent's index (pg_inherits), and
// no other index but the primary key's.
func (f *fixture) assertPartitionIndexes(t *testing.T, index string) {
	t.Helper()
	g := f.names.GreenSchema
	if n := f.count(t, `SELECT count(*) FROM pg_index WHERE indexrelid = to_regclass($1) AND indisvalid AND indrelid = to_regclass($2)`,
		g+"."+index, g+".ev"); n != 1 {
		t.Fatalf("%s is not a valid index of green", index)
	}
	parentIndex := map[string]string{"ev_2024": index, "ev_2025": index, "ev_rest": index,
		"ev_2024_h1": gssync.PartitionIndexName(index, "ev_2024"), "ev_2024_h2": gssync.PartitionIndexName(index, "ev_2024")}
	for part, parent := range parentIndex {
		name := gssync.PartitionIndexName(index, part)
		if n := f.count(t, `SELECT count(*) FROM pg_index i JOIN pg_inherits h ON h.inhrelid = i.indexrelid
			WHERE i.indexrelid = to_regclass($1) AND i.indrelid = to_regclass($2) AND i.indisvalid AND h.inhparent = to_regclass($3)`,
			g+"."+name, g+"."+part, g+"."+parent); n != 1 {
			t.Errorf("partition %s: no valid index %s attached to %s", part, name, parent)
		}
	}
}

func TestIndexBuildPartitioned(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := setup(t, partTable, partSpec)
	if _, err := f.backfiller(t, gssync.Options{BatchSize: 3000, Fixed: true}).Run(ctx, nil); err != nil {
		t.Fatal(err)
	}
	// Writers keep going through the app name (blue → green by trigger)
	// while the indexes are built: ON ONLY and ATTACH take their short
	// locks between their statements.
	wctx, stop := context.WithCancel(ctx)
	var writes atomic.Int64
	var werr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; wctx.Err() == nil; i++ {
			var err error
			switch i % 3 {
			case 0:
				_, err = f.pool.Exec(wctx, `INSERT INTO ev (at, kind, n) VALUES (date '2024-06-01' + $1::int % 700, 'w', 100000 + $1::int)`, i)
			case 1:
				_, err = f.pool.Exec(wctx, `UPDATE ev SET kind = 'u' || $1::text WHERE id = $1::int % 20000 + 1`, i)
			default:
				_, err = f.pool.Exec(wctx, `UPDATE ev SET at = at + 400 WHERE id = $1::int % 20000 + 1 AND at < date '2025-06-01'`, i) // moves a row to another partition
			}
			if err != nil && wctx.Err() == nil {
				var pe *pgconn.PgError
				if errors.As(err, &pe) {
					err = fmt.Errorf("%w: %s", err, pe.Detail)
				}
				werr = err
				return
			}
			writes.Add(1)
		}
	}()
	var events []gssync.IndexEvent
	err := f.indexBuild(t, &events).Run(ctx)
	stop()
	<-done
	if err != nil {
		t.Fatal(err)
	}
	if werr != nil {
		rows, _ := f.pool.Query(ctx, `SELECT oid::text || '=' || relname FROM pg_class WHERE relnamespace::regnamespace::text LIKE 'gs_%'`)
		names, _ := pgx.CollectRows(rows, pgx.RowTo[string])
		t.Fatalf("a writer failed during the index build: %v %v", werr, names)
	}
	if writes.Load() == 0 {
		t.Fatal("no write ran during the index build")
	}
	// Independent of greenswap: blue and green hold the same rows.
	if d := f.diff(t, "id, at, kind, n::bigint", "id, at, kind, n"); d != 0 {
		t.Fatalf("%d rows differ between blue and green", d)
	}
	for _, ix := range []string{"ev_kind_idx", "ev_n_at_key"} {
		f.assertPartitionIndexes(t, ix)
	}
	// One index per statement and the primary key's on each leaf, nothing else.
	for _, leaf := range partLeaves {
		if n := f.count(t, `SELECT count(*) FROM pg_index WHERE indrelid = to_regclass($1)`, f.names.GreenSchema+"."+leaf); n != 3 {
			t.Errorf("%s has %d indexes, want 3", leaf, n)
		}
	}
	// The unique index works across partitions through the parent.
	// (With the sync flag, as greenswap's own writes set it: green's write gate is on until synced.)
	if _, err := f.pool.Exec(ctx, `SELECT set_config('`+f.names.SyncFlag+`', '0', true); INSERT INTO `+f.names.GreenSchema+`.ev (id, at, kind, n) SELECT -1, at, kind, n FROM `+f.names.GreenSchema+`.ev LIMIT 1`); db23505(err) == false {
		t.Errorf("a duplicate (n, at) was accepted: %v", err)
	}
	actions := map[string]int{}
	for _, e := range events {
		actions[e.Action]++
	}
	// Per statement: ON ONLY on ev and ev_2024, 4 leaves built, 5 attached.
	if actions["create-parent"] != 4 || actions["build-partition"] != 8 || actions["attach"] != 10 || actions["build"] != 2 || actions["drop-invalid"] != 0 {
		t.Errorf("events: %v", actions)
	}
	for _, e := range events {
		if e.Action == "build-partition" && !strings.Contains(e.SQL, "CONCURRENTLY") {
			t.Errorf("a partition's index was not built CONCURRENTLY: %s", e.SQL)
		}
		if e.Action == "create-parent" && !strings.Contains(e.SQL, " ON ONLY ") {
			t.Errorf("a parent index was not created ON ONLY: %s", e.SQL)
		}
	}
	// A second run has nothing to do.
	var again []gssync.IndexEvent
	if err := f.indexBuild(t, &again).Run(ctx); err != nil || len(again) != 0 {
		t.Fatalf("second run: %v, events %+v", err, again)
	}
}

func db23505(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// A crash in the middle of the index phase leaves: the ON ONLY parent
// index (INVALID, on purpose), the sub-partitioned ev_2024's ON ONLY index
// (INVALID too, not attached yet), one leaf's index built and attached to
// it, one built but not attached, and one INVALID from a CREATE INDEX
// CONCURRENTLY that died. A re-run keeps the first four (same OIDs),
// attaches the fifth, drops and rebuilds the INVALID one, builds the last
// leaf's and attaches ev_2024's: the parent ends valid, no index twice.
func TestIndexBuildPartitionedResume(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := setup(t, partTable, partSpec)
	if _, err := f.backfiller(t, gssync.Options{BatchSize: 5000, Fixed: true}).Run(ctx, nil); err != nil {
		t.Fatal(err)
	}
	const ix = "ev_kind_idx"
	name := func(part string) string { return gssync.PartitionIndexName(ix, part) }
	g := f.names.GreenSchema
	q := func(n string) string { return spec.QualifiedName{Schema: g, Name: n}.String() }
	f.exec(t, fmt.Sprintf(`SET search_path TO %[1]s;
		CREATE INDEX %[2]s ON ONLY ev (kind) WHERE kind IS NOT NULL;
		CREATE INDEX %[3]s ON ONLY ev_2024 (kind) WHERE kind IS NOT NULL;
		CREATE INDEX %[4]s ON ev_2024_h1 (kind) WHERE kind IS NOT NULL;
		ALTER INDEX %[3]s ATTACH PARTITION %[4]s;
		CREATE INDEX %[5]s ON ev_2025 (kind) WHERE kind IS NOT NULL;
		CREATE INDEX %[6]s ON ev_rest (kind) WHERE kind IS NOT NULL;
		UPDATE pg_index SET indisvalid = false WHERE indexrelid = '%[6]s'::regclass;`,
		g, ix, name("ev_2024"), name("ev_2024_h1"), name("ev_2025"), name("ev_rest")))
	oid := func(n string) int64 {
		return f.count(t, `SELECT coalesce(to_regclass($1)::oid::bigint, 0)`, q(n))
	}
	if n := f.count(t, `SELECT count(*) FROM pg_index WHERE indexrelid IN (to_regclass($1), to_regclass($2)) AND NOT indisvalid`,
		q(ix), q(name("ev_2024"))); n != 2 {
		t.Fatal("the crashed state should have INVALID partitioned indexes")
	}
	kept := map[string]int64{}
	for _, n := range []string{ix, name("ev_2024"), name("ev_2024_h1"), name("ev_2025")} {
		kept[n] = oid(n)
	}
	invalid := oid(name("ev_rest"))

	var events []gssync.IndexEvent
	if err := f.indexBuild(t, &events, "CREATE INDEX ev_kind_idx ON ev (kind) WHERE kind IS NOT NULL").Run(ctx); err != nil {
		t.Fatal(err)
	}
	f.assertPartitionIndexes(t, ix)
	for n, o := range kept {
		if got := oid(n); got != o {
			t.Errorf("%s was rebuilt (oid %d → %d); it was fine", n, o, got)
		}
	}
	if got := oid(name("ev_rest")); got == invalid || got == 0 {
		t.Errorf("the INVALID index of ev_rest was not rebuilt (oid %d → %d)", invalid, got)
	}
	if n := f.count(t, `SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
		WHERE c.relnamespace = $1::regnamespace AND NOT i.indisvalid`, g); n != 0 {
		t.Errorf("%d invalid indexes left", n)
	}
	for _, leaf := range partLeaves {
		if n := f.count(t, `SELECT count(*) FROM pg_index WHERE indrelid = to_regclass($1)`, q(leaf)); n != 2 {
			t.Errorf("%s has %d indexes, want 2 (primary key and %s's)", leaf, n, ix)
		}
	}
	var got []string
	for _, e := range events {
		got = append(got, e.Action+":"+e.Index)
	}
	want := []string{"attach:" + name("ev_2025"), "drop-invalid:" + name("ev_rest"), "build-partition:" + name("ev_rest"),
		"attach:" + name("ev_rest"), "build-partition:" + name("ev_2024_h2"), "attach:" + name("ev_2024_h2"),
		"attach:" + name("ev_2024"), "build:" + ix}
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || g == w
		}
		if !found {
			t.Errorf("no event %s in %v", w, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("events %v, want %v (in any order)", got, want)
	}
}

// A unique index on a partitioned green must include the partition key:
// PostgreSQL's refusal is surfaced with what to do.
func TestIndexBuildPartitionedUniqueWithoutKey(t *testing.T) {
	t.Parallel()
	f := setup(t, partTable, partSpec)
	var events []gssync.IndexEvent
	err := f.indexBuild(t, &events, "CREATE UNIQUE INDEX ev_n_key ON ev (n)").Run(context.Background())
	var pe *pgconn.PgError
	if err == nil || !errors.As(err, &pe) || pe.Code != "0A000" ||
		!strings.Contains(err.Error(), "target.indexes[0]") || !strings.Contains(err.Error(), "must include every column of its partition key") {
		t.Fatalf("err = %v", err)
	}
	if n := f.count(t, `SELECT count(*) FROM pg_class WHERE relname LIKE 'ev_n_key%'`); n != 0 {
		t.Errorf("%d indexes left behind", n)
	}
	// Unnamed statements cannot be built partition by partition.
	err = f.indexBuild(t, &events, "CREATE INDEX ON ev (n)").Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "name the index") {
		t.Fatalf("unnamed: %v", err)
	}
}

func TestPartitionIndexName(t *testing.T) {
	if got := gssync.PartitionIndexName("ev_kind_idx", "ev_2024"); got != "ev_kind_idx_ev_2024" {
		t.Errorf("short name: %q", got)
	}
	long := strings.Repeat("i", 40)
	a := gssync.PartitionIndexName(long, strings.Repeat("p", 30)+"_a")
	b := gssync.PartitionIndexName(long, strings.Repeat("p", 30)+"_b")
	if len(a) != 63 || len(b) != 63 || a == b || a[:54] != b[:54] {
		t.Errorf("long names: %q %q", a, b)
	}
	if again := gssync.PartitionIndexName(long, strings.Repeat("p", 30)+"_a"); again != a {
		t.Errorf("not deterministic: %q %q", a, again)
	}
	// Cut on a character boundary.
	u := gssync.PartitionIndexName(strings.Repeat("é", 20), strings.Repeat("ü", 20))
	if !utf8.ValidString(u) || len(u) > 63 {
		t.Errorf("utf-8 name: %q (%d bytes)", u, len(u))
	}
}
