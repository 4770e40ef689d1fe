package runner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	gssync "github.com/greenswap/greenswap/sync"
)

// A plain events table becomes range-partitioned (by quarter; the second
// quarter sub-partitioned by month) through target.partitions, with
// target.indexes built partition by partition.

const ptTable = `
CREATE TABLE events (
    id         bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL,
    kind       text NOT NULL,
    account_id int NOT NULL,
    amount     int NOT NULL DEFAULT 0
);
INSERT INTO public.events (created_at, kind, account_id, amount)
SELECT timestamptz '2024-01-01 00:00+00' + g * interval '7 minutes', (ARRAY['a', 'b', 'c'])[1 + g % 3], g % 500, g % 1000
FROM generate_series(1, 30000) g;
ANALYZE events;`

const ptPartitions = `
  partitions:
    - CREATE TABLE events_2024q1 PARTITION OF events FOR VALUES FROM ('2024-01-01 00:00+00') TO ('2024-04-01 00:00+00')
    - >-
      CREATE TABLE events_2024q2 PARTITION OF events FOR VALUES FROM ('2024-04-01 00:00+00') TO ('2024-07-01 00:00+00')
      PARTITION BY RANGE (created_at)
    - CREATE TABLE events_2024q2_a PARTITION OF events_2024q2 FOR VALUES FROM ('2024-04-01 00:00+00') TO ('2024-05-01 00:00+00')
    - CREATE TABLE events_2024q2_b PARTITION OF events_2024q2 DEFAULT
`

const ptDefault = `    - CREATE TABLE events_rest PARTITION OF events DEFAULT
`

func ptSpec(name string) string {
	return `
name: ` + name + `
table: public.events
target:
  ddl: |
    CREATE TABLE events (
      id         bigint NOT NULL,
      created_at timestamptz NOT NULL,
      kind       text NOT NULL,
      account_id int NOT NULL,
      amount     bigint NOT NULL DEFAULT 0,
      PRIMARY KEY (id, created_at)
    ) PARTITION BY RANGE (created_at)` + ptPartitions + ptDefault + `
  indexes:
    - CREATE INDEX events_account_idx ON events (account_id)
    - CREATE UNIQUE INDEX events_kind_id_key ON events (kind, id, created_at)
`
}

var (
	ptIndexes = []string{"events_account_idx", "events_kind_id_key"}
	ptParts   = []string{"events_2024q1", "events_2024q2", "events_2024q2_a", "events_2024q2_b", "events_rest"}
	ptLeaves  = []string{"events_2024q1", "events_2024q2_a", "events_2024q2_b", "events_rest"}
)

// ptAssertIndexes checks, in schema, that each of ptIndexes is a valid
// index of events and that every partition (every level) has its own valid
// index, named by gssync.PartitionIndexName, attached (pg_inherits) to its
// parent's, and that nothing in schema is invalid.
func ptAssertIndexes(t *testing.T, env *Env, schema string) {
	t.Helper()
	parent := map[string]string{"events_2024q1": "events", "events_2024q2": "events", "events_rest": "events",
		"events_2024q2_a": "events_2024q2", "events_2024q2_b": "events_2024q2"}
	for _, ix := range ptIndexes {
		if n := coInt(t, env.Pool, `SELECT count(*) FROM pg_index WHERE indexrelid = to_regclass($1) AND indrelid = to_regclass($2) AND indisvalid`,
			schema+"."+ix, schema+".events"); n != 1 {
			t.Errorf("%s.%s is not a valid index of the partitioned table", schema, ix)
		}
		for part, up := range parent {
			upIndex := ix
			if up != "events" {
				upIndex = gssync.PartitionIndexName(ix, up)
			}
			name := gssync.PartitionIndexName(ix, part)
			if n := coInt(t, env.Pool, `SELECT count(*) FROM pg_index i JOIN pg_inherits h ON h.inhrelid = i.indexrelid
				WHERE i.indexrelid = to_regclass($1) AND i.indrelid = to_regclass($2) AND i.indisvalid AND h.inhparent = to_regclass($3)`,
				schema+"."+name, schema+"."+part, schema+"."+upIndex); n != 1 {
				t.Errorf("partition %s.%s: no valid index %s attached to %s", schema, part, name, upIndex)
			}
		}
	}
	if n := coInt(t, env.Pool, `SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
		WHERE c.relnamespace = $1::regnamespace AND NOT i.indisvalid`, schema); n != 0 {
		t.Errorf("%d invalid indexes in %s", n, schema)
	}
	// The primary key's and one per statement on each leaf: no duplicates.
	for _, leaf := range ptLeaves {
		if n := coInt(t, env.Pool, `SELECT count(*) FROM pg_index WHERE indrelid = to_regclass($1)`, schema+"."+leaf); n != 3 {
			t.Errorf("%s.%s has %d indexes, want 3", schema, leaf, n)
		}
	}
}

// ptEqual diffs blue (mapped by hand: amount widens to bigint) and green.
func ptEqual(t *testing.T, env *Env, name string) {
	t.Helper()
	b := fmt.Sprintf(`SELECT id, created_at, kind, account_id, amount::bigint FROM gs_%s_blue.events`, name)
	g := fmt.Sprintf(`SELECT id, created_at, kind, account_id, amount FROM gs_%s_green.events`, name)
	if n := coInt(t, env.Pool, fmt.Sprintf(`SELECT count(*) FROM ((%s EXCEPT ALL %s) UNION ALL (%s EXCEPT ALL %s)) d`, b, g, g, b)); n != 0 {
		t.Fatalf("%d rows differ between blue and green", n)
	}
	if nb, ng := coInt(t, env.Pool, "SELECT count(*) FROM gs_"+name+"_blue.events"), coInt(t, env.Pool, "SELECT count(*) FROM gs_"+name+"_green.events"); nb != ng || nb == 0 {
		t.Fatalf("blue has %d rows, green %d", nb, ng)
	}
}

func ptSteps(t *testing.T, env *Env, name string) []string {
	t.Helper()
	evs, err := state.Events(context.Background(), env.Pool, name, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for _, e := range evs {
		steps = append(steps, e.Step)
	}
	return steps
}

func TestSyncPartitionedGreen(t *testing.T) {
	t.Parallel()
	_, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, ptTable)
	env := coEnv(t, dsn)
	ctx := context.Background()
	st, err := Sync(ctx, env, syncSpec(t, ptSpec("pt")), SyncOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.State != state.Synced || st.Rows != 30000 {
		t.Fatalf("sync: %+v", st)
	}
	ptEqual(t, env, "pt")
	ptAssertIndexes(t, env, "gs_pt_green")
	// The rows are where the partition bounds put them.
	if n := coInt(t, env.Pool, `SELECT count(*) FROM gs_pt_green.events_2024q2_a`); n != coInt(t, env.Pool,
		`SELECT count(*) FROM gs_pt_blue.events WHERE created_at >= '2024-04-01 00:00+00' AND created_at < '2024-05-01 00:00+00'`) || n == 0 {
		t.Errorf("events_2024q2_a has %d rows", n)
	}
	// Writes through the app name, one moving a row to another partition,
	// and through green's version schema, keep both sides equal.
	coExec(t, env.Pool, `INSERT INTO public.events (created_at, kind, account_id) VALUES ('2031-01-01', 'z', 1)`)
	coExec(t, env.Pool, `UPDATE public.events SET created_at = created_at + interval '100 days' WHERE id % 50 = 0`)
	coExec(t, env.Pool, `DELETE FROM public.events WHERE id % 77 = 0`)
	coExec(t, env.Pool, `INSERT INTO gs_pt_green.events (id, created_at, kind, account_id) VALUES (-5, '2024-04-02', 'g', 2)`)
	ptEqual(t, env, "pt")
	if n := coInt(t, env.Pool, `SELECT count(*) FROM gs_pt_green.events_rest WHERE kind = 'z'`); n != 1 {
		t.Errorf("the 2031 row is not in the default partition")
	}
	steps := strings.Join(ptSteps(t, env, "pt"), " ")
	for _, w := range []string{"create-parent-index", "build-partition-index", "attach-index", "build-index"} {
		if !strings.Contains(steps, w) {
			t.Errorf("no %s event: %s", w, steps)
		}
	}
	if strings.Count(steps, "build-index") != 2 || strings.Count(steps, "build-partition-index") != 2*len(ptLeaves) {
		t.Errorf("events: %s", steps)
	}
	// A changed partition list after the start is refused, not ignored.
	changed := strings.Replace(ptSpec("pt"), "events_2024q2 DEFAULT", "events_2024q2 FOR VALUES FROM ('2024-05-01 00:00+00') TO ('2024-07-01 00:00+00')", 1)
	if changed == ptSpec("pt") {
		t.Fatal("the test's spec edit did not apply")
	}
	if _, err := Sync(ctx, env, syncSpec(t, changed), SyncOptions{}); exitcode.Of(err) != exitcode.BadInput || !strings.Contains(err.Error(), "target.partitions") {
		t.Errorf("sync with changed partitions: %v", err)
	}
}

// A crash in the index phase: sync stopped after setup, and the index
// build of an earlier run died with the ON ONLY parent index created
// (INVALID on purpose), the sub-partitioned partition's ON ONLY index, one
// leaf's index built and attached, one built but not attached, and one
// INVALID from a crashed CREATE INDEX CONCURRENTLY. Sync again finishes:
// what was good is kept, the INVALID one is rebuilt, the parent is valid,
// and no index exists twice.
func TestSyncPartitionedIndexResume(t *testing.T) {
	t.Parallel()
	_, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, ptTable)
	env := coEnv(t, dsn)
	ctx := context.Background()
	if _, err := Sync(ctx, env, syncSpec(t, ptSpec("pr")), SyncOptions{StopAfterSetup: true}); err != nil {
		t.Fatal(err)
	}
	ix := "events_account_idx"
	name := func(p string) string { return gssync.PartitionIndexName(ix, p) }
	pgtest.Exec(t, dsn, fmt.Sprintf(`SET search_path TO gs_pr_green;
		CREATE INDEX %[1]s ON ONLY events (account_id);
		CREATE INDEX %[2]s ON ONLY events_2024q2 (account_id);
		CREATE INDEX %[3]s ON events_2024q1 (account_id);
		ALTER INDEX %[1]s ATTACH PARTITION %[3]s;
		CREATE INDEX %[4]s ON events_2024q2_a (account_id);
		CREATE INDEX %[5]s ON events_rest (account_id);
		UPDATE pg_index SET indisvalid = false WHERE indexrelid = '%[5]s'::regclass;`,
		ix, name("events_2024q2"), name("events_2024q1"), name("events_2024q2_a"), name("events_rest")))
	oid := func(n string) int64 {
		return coInt(t, env.Pool, `SELECT coalesce(to_regclass($1)::oid::bigint, 0)`, "gs_pr_green."+n)
	}
	kept := map[string]int64{}
	for _, n := range []string{ix, name("events_2024q2"), name("events_2024q1"), name("events_2024q2_a")} {
		kept[n] = oid(n)
	}
	invalid := oid(name("events_rest"))
	if n := coInt(t, env.Pool, `SELECT count(*) FROM pg_index WHERE indexrelid = to_regclass('gs_pr_green.events_account_idx') AND NOT indisvalid`); n != 1 {
		t.Fatal("the crashed state must have an INVALID parent index")
	}

	if _, err := Sync(ctx, env, syncSpec(t, ptSpec("pr")), SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	ptEqual(t, env, "pr")
	ptAssertIndexes(t, env, "gs_pr_green")
	for n, o := range kept {
		if got := oid(n); got != o {
			t.Errorf("%s was rebuilt (oid %d → %d)", n, o, got)
		}
	}
	if got := oid(name("events_rest")); got == invalid || got == 0 {
		t.Errorf("the INVALID partition index was not rebuilt (oid %d → %d)", invalid, got)
	}
	steps := ptSteps(t, env, "pr")
	if !slices.Contains(steps, "drop-invalid-index") {
		t.Errorf("events: %v", steps)
	}
	// Nothing dropped the parent index, which was INVALID on purpose.
	if n := coInt(t, env.Pool, `SELECT count(*) FROM greenswap.events WHERE migration = 'pr' AND step = 'drop-invalid-index' AND sql LIKE '%' || $1 || '"'`, ix); n != 0 {
		t.Errorf("the ON ONLY parent index was dropped")
	}
}

// finalize moves the whole partition tree (and every index with it) into
// the app schema; nothing is left in the version schemas.
func TestFinalizePartitioned(t *testing.T) {
	t.Parallel()
	_, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, ptTable)
	env := coEnv(t, dsn)
	ctx := context.Background()
	spec := coSync(t, env, ptSpec("pf"))
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
		t.Fatal(err)
	}
	coExec(t, env.Pool, `INSERT INTO public.events (created_at, kind, account_id) VALUES ('2024-04-15', 'after-cutover', 3)`)
	rows := coInt(t, env.Pool, `SELECT count(*) FROM public.events`)
	res, err := Finalize(ctx, env, spec.Name, FinalizeOptions{QuietPeriod: -1, Yes: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.State != state.Finalized || res.Plan == nil || len(res.Plan.Partitions) != len(ptParts) {
		t.Fatalf("finalize: %+v", res)
	}
	if k := coStr(t, env.Pool, `SELECT relkind::text FROM pg_class WHERE oid = 'public.events'::regclass`); k != "p" {
		t.Fatalf("public.events is relkind %s", k)
	}
	got := coStr(t, env.Pool, `SELECT string_agg(n.nspname || '.' || c.relname, ',' ORDER BY c.relname)
		FROM pg_partition_tree('public.events') t JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.level > 0`)
	var want []string
	for _, p := range ptParts {
		want = append(want, "public."+p)
	}
	if got != strings.Join(want, ",") {
		t.Errorf("partitions after finalize: %s", got)
	}
	if n := coInt(t, env.Pool, `SELECT count(*) FROM pg_namespace WHERE nspname IN ('gs_pf_blue', 'gs_pf_green')`); n != 0 {
		t.Errorf("%d version schemas left", n)
	}
	ptAssertIndexes(t, env, "public") // the indexes moved with their tables
	if n := coInt(t, env.Pool, `SELECT count(*) FROM public.events`); n != rows {
		t.Errorf("%d rows after finalize, want %d", n, rows)
	}
	if p := coStr(t, env.Pool, `WITH i AS (INSERT INTO public.events (id, created_at, kind, account_id) VALUES (-1, '2024-04-20', 'x', 1) RETURNING tableoid)
		SELECT tableoid::regclass::text FROM i`); p != "public.events_2024q2_a" {
		t.Errorf("a new row went to %s", p)
	}
}

// A name finalize needs in the app schema is taken: plan warns before
// anything starts, and finalize refuses with nothing changed, naming the
// clash and what to do; once the name is free, finalize goes through.
func TestFinalizePartitionNameClash(t *testing.T) {
	t.Parallel()
	_, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, ptTable+`
		CREATE TABLE events_2024q2_b (note text);                                  -- a partition's name
		CREATE TABLE other (k int); CREATE INDEX events_account_idx_events_rest ON other (k); -- a partition index's`)
	env := coEnv(t, dsn)
	ctx := context.Background()
	spec := syncSpec(t, ptSpec("pc"))
	res, err := Plan(ctx, env, spec, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h := hazard(res, shadow.HazardFinalizeNameClash)
	if h == nil || h.Severity != shadow.Warning || len(h.Objects) != 2 ||
		!strings.Contains(strings.Join(h.Objects, "\n"), `partition "gs_pc_green"."events_2024q2_b" would become "public"."events_2024q2_b", but a table of that name exists there`) ||
		!strings.Contains(strings.Join(h.Objects, "\n"), `index "gs_pc_green"."events_account_idx_events_rest" would become "public"."events_account_idx_events_rest", but an index`) {
		t.Fatalf("plan's hazard: %+v", h)
	}

	coSync(t, env, ptSpec("pc"))
	if _, err := Cutover(ctx, env, "pc", CutoverOptions{}); err != nil {
		t.Fatal(err)
	}
	before := coCatalog(t, env.Pool)
	_, err = Finalize(ctx, env, "pc", FinalizeOptions{QuietPeriod: -1, Yes: true})
	if err == nil || exitcode.Of(err) != exitcode.BadInput {
		t.Fatalf("finalize with a name taken: %v (exit %d), want exit 2", err, exitcode.Of(err))
	}
	for _, w := range []string{`"public"."events_2024q2_b"`, `"public"."events_account_idx_events_rest"`, "rename", "nothing was changed"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("the refusal does not say %q: %v", w, err)
		}
	}
	if after := coCatalog(t, env.Pool); after != before {
		t.Fatalf("a refused finalize changed the catalog:\n%s", coDiff(before, after))
	}
	if st := coStr(t, env.Pool, `SELECT state FROM greenswap.migrations WHERE name = 'pc'`); st != "cut_over" {
		t.Fatalf("state %s after the refusal", st)
	}

	coExec(t, env.Pool, `DROP TABLE public.events_2024q2_b; DROP INDEX public.events_account_idx_events_rest`)
	if _, err := Finalize(ctx, env, "pc", FinalizeOptions{QuietPeriod: -1, Yes: true}); err != nil {
		t.Fatalf("finalize once the names are free: %v", err)
	}
	if n := coInt(t, env.Pool, `SELECT count(*) FROM pg_partition_tree('public.events') t JOIN pg_class c ON c.oid = t.relid
		WHERE t.level > 0 AND c.relnamespace = 'public'::regnamespace`); n != int64(len(ptParts)) {
		t.Errorf("%d partitions in public", n)
	}
}

// rollback before cutover leaves no partition (nor index of one) behind:
// the catalog is as it was before sync.
func TestRollbackPartitionedBeforeCutover(t *testing.T) {
	t.Parallel()
	_, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, ptTable)
	env := coEnv(t, dsn)
	ctx := context.Background()
	before := coCatalog(t, env.Pool)
	if _, err := Sync(ctx, env, syncSpec(t, ptSpec("pb")), SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := coInt(t, env.Pool, `SELECT count(*) FROM pg_class WHERE relispartition AND relnamespace = 'gs_pb_green'::regnamespace AND relkind IN ('r', 'p')`); n != int64(len(ptParts)) {
		t.Fatalf("%d partitions in green before rollback", n)
	}
	res, err := Rollback(ctx, env, "pb", SwapCommandOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Kind != "teardown" || res.State != state.RolledBack {
		t.Fatalf("rollback: %+v", res)
	}
	if n := coInt(t, env.Pool, `SELECT count(*) FROM pg_class WHERE relispartition OR relkind IN ('p', 'I')`); n != 0 {
		t.Errorf("%d partitions or partitioned relations left", n)
	}
	if n := coInt(t, env.Pool, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'gs_pb_%'`); n != 0 {
		t.Errorf("%d version schemas left", n)
	}
	if after := coCatalog(t, env.Pool); after != before {
		t.Errorf("the catalog differs from before sync:\n%s", coDiff(before, after))
	}
	if n := coInt(t, env.Pool, `SELECT count(*) FROM public.events`); n != 30000 {
		t.Errorf("%d rows in events", n)
	}
}

// plan shows the partitions among its steps, rehearses the partitioned
// index build and the partition moves of finalize, and changes nothing; a
// row that fits no partition is reported with its key.
func TestPlanPartitioned(t *testing.T) {
	t.Parallel()
	_, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, ptTable)
	env := coEnv(t, dsn)
	ctx := context.Background()
	before := catalogSnapshot(t, dsn, "public.events")
	res, err := Plan(ctx, env, syncSpec(t, ptSpec("pp")), PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if after := catalogSnapshot(t, dsn, "public.events"); after != before {
		t.Fatalf("plan changed the database")
	}
	if res.Blocking != 0 || !res.Sample.Inserted || hazard(res, shadow.HazardFinalizeNameClash) != nil {
		t.Errorf("plan: blocking %d, sample %+v, hazards %+v", res.Blocking, res.Sample, res.Hazards)
	}
	step := func(name string) string {
		for _, s := range res.Steps {
			if s.Name == name {
				return strings.Join(s.SQL, "\n")
			}
		}
		t.Fatalf("no step %s", name)
		return ""
	}
	create := step("create-green")
	for _, p := range ptParts {
		if !strings.Contains(create, "CREATE TABLE "+p+" PARTITION OF ") {
			t.Errorf("create-green does not create %s:\n%s", p, create)
		}
	}
	ix := step("build-indexes")
	for _, w := range []string{
		`CREATE INDEX "events_account_idx" ON ONLY "gs_pp_green"."events" (account_id)`,
		`CREATE INDEX "events_account_idx_events_2024q2" ON ONLY "gs_pp_green"."events_2024q2" (account_id)`,
		`CREATE UNIQUE INDEX CONCURRENTLY "events_kind_id_key_events_rest" ON "gs_pp_green"."events_rest" (kind, id, created_at)`,
		`ALTER INDEX "gs_pp_green"."events_account_idx_events_2024q2" ATTACH PARTITION "gs_pp_green"."events_account_idx_events_2024q2_a"`,
		`ALTER INDEX "gs_pp_green"."events_account_idx" ATTACH PARTITION "gs_pp_green"."events_account_idx_events_2024q2"`,
	} {
		if !strings.Contains(ix, w) {
			t.Errorf("build-indexes lacks %s:\n%s", w, ix)
		}
	}
	fin := step("finalize")
	if !strings.Contains(fin, `ALTER TABLE "gs_pp_green"."events_2024q2_a" SET SCHEMA "public"`) {
		t.Errorf("finalize does not move the partitions:\n%s", fin)
	}

	// Without the DEFAULT partition a 2031 row fits nowhere: reported with
	// its key, before anything is touched.
	coExec(t, env.Pool, `INSERT INTO public.events (created_at, kind, account_id) VALUES ('2031-06-01', 'late', 1)`)
	late := coInt(t, env.Pool, `SELECT id FROM public.events WHERE kind = 'late'`)
	before = catalogSnapshot(t, dsn, "public.events")
	_, err = Plan(ctx, env, syncSpec(t, strings.Replace(ptSpec("pp"), ptDefault, "", 1)), PlanOptions{})
	var se *spec.SpecError
	if !errors.As(err, &se) || se.Field != "target.partitions" || exitcode.Of(err) != exitcode.BadInput ||
		!strings.Contains(err.Error(), fmt.Sprintf("(id)=(%d)", late)) || !strings.Contains(err.Error(), "no partition of relation") {
		t.Fatalf("plan with a row that fits no partition: %v", err)
	}
	if after := catalogSnapshot(t, dsn, "public.events"); after != before {
		t.Fatalf("the refused plan changed the database")
	}
	// A unique index without the partition key: PostgreSQL refuses it on a
	// partitioned table; plan says so at the index's line.
	noKey := strings.Replace(ptSpec("pp"), "ON events (kind, id, created_at)", "ON events (kind, id)", 1)
	_, err = Plan(ctx, env, syncSpec(t, noKey), PlanOptions{})
	if !errors.As(err, &se) || se.Field != "target.indexes[1]" || se.Line == 0 ||
		!strings.Contains(err.Error(), "must include every column of the partition key") || !strings.Contains(err.Error(), "partitioning columns") {
		t.Fatalf("plan with a unique index without the partition key: %v", err)
	}
	// A partition that does not fit is target.partitions[i], by line.
	bad := strings.Replace(ptSpec("pp"), "TO ('2024-04-01 00:00+00')\n", "TO ('2024-05-01 00:00+00')\n", 1) // overlaps q2
	_, err = Plan(ctx, env, syncSpec(t, bad), PlanOptions{})
	if !errors.As(err, &se) || se.Field != "target.partitions[1]" || se.Line == 0 || !strings.Contains(err.Error(), "overlap") {
		t.Fatalf("plan with overlapping partitions: %v", err)
	}
}
