package shadow

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/spec"
)

// hazardEnv is one database shared by the subtests of a hazard test: each
// scenario has its own tables, so one CREATE DATABASE serves them all.
type hazardEnv struct {
	pool *pgxpool.Pool
	dsn  string
}

func newHazardEnv(t *testing.T) *hazardEnv {
	t.Helper()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE TABLE customers (id int PRIMARY KEY, name text)`)
	return &hazardEnv{pool: pool, dsn: dsn}
}

// scenario is a spec and how plan would see it: the app table loaded, green
// created from target.ddl (when rehearse) in a transaction rolled back
// before it returns, the mapping and its volatility.
type scenario struct {
	spec  *spec.Spec
	blue  *Table
	green *Table
	m     *Mapping
	vols  []Volatility
	facts HazardFacts
	tx    pgx.Tx
}

func (e *hazardEnv) load(t *testing.T, specYAML string, rehearse bool) *scenario {
	t.Helper()
	ctx := context.Background()
	spec, err := spec.ParseSpec([]byte(specYAML), "h.yaml", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) // everything Hazards needs is read by then
	sc := &scenario{spec: spec}
	if sc.blue, err = LoadTable(ctx, tx, spec.AppTable()); err != nil {
		t.Fatal(err)
	}
	if sc.facts, err = LoadHazardFacts(ctx, tx, spec, sc.blue); err != nil {
		t.Fatal(err)
	}
	if !rehearse {
		return sc
	}
	n := NamesFor(spec.Name, spec.AppTable())
	for _, q := range CreateGreenSQL(n, spec) {
		if _, err := tx.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for _, ix := range spec.Target.Indexes {
		if _, err := tx.Exec(ctx, "SET LOCAL search_path TO "+n.GreenSchema+", "+n.App.Schema+"; "+ix+"; RESET search_path"); err != nil {
			t.Fatal(err)
		}
	}
	if sc.green, err = LoadTable(ctx, tx, n.Green); err != nil {
		t.Fatal(err)
	}
	if sc.facts.NameClashes, err = LoadNameClashes(ctx, tx, sc.green.OID, n.App.Schema, sc.blue.OID); err != nil {
		t.Fatal(err)
	}
	if sc.m, err = BuildMapping(spec, sc.blue, sc.green); err != nil {
		t.Fatal(err)
	}
	if sc.vols, err = DetectVolatility(ctx, tx, spec, n.GreenSchema, sc.m); err != nil {
		t.Fatal(err)
	}
	return sc
}

func (sc *scenario) hazards() []Hazard {
	return Hazards(HazardInput{Spec: sc.spec, Blue: sc.blue, Green: sc.green, Mapping: sc.m, Volatility: sc.vols, Facts: sc.facts})
}

// want asserts that hs has code with severity and returns it.
func want(t *testing.T, hs []Hazard, code string, sev Severity) Hazard {
	t.Helper()
	for _, h := range hs {
		if h.Code == code {
			if h.Severity != sev {
				t.Errorf("%s: severity %s, want %s", code, h.Severity, sev)
			}
			if h.Message == "" || h.Fix == "" {
				t.Errorf("%s: message or fix empty: %+v", code, h)
			}
			return h
		}
	}
	t.Errorf("no %s hazard in %s", code, codes(hs))
	return Hazard{}
}

func none(t *testing.T, hs []Hazard, code string) {
	t.Helper()
	for _, h := range hs {
		if h.Code == code {
			t.Errorf("unexpected %s hazard: %+v", code, h)
		}
	}
}

func codes(hs []Hazard) string {
	var c []string
	for _, h := range hs {
		c = append(c, h.Code+"/"+string(h.Severity))
	}
	return "[" + strings.Join(c, " ") + "]"
}

func hasObject(t *testing.T, h Hazard, substr string) {
	t.Helper()
	for _, o := range h.Objects {
		if strings.Contains(o, substr) {
			return
		}
	}
	t.Errorf("%s: no object containing %q in %q", h.Code, substr, h.Objects)
}

func specFor(name, table, ddl, extra string) string {
	return fmt.Sprintf("name: %s\ntable: %s\ntarget:\n  ddl: |\n    %s\n%s", name, table, ddl, extra)
}

func TestHazardsCatalog(t *testing.T) {
	t.Parallel()
	e := newHazardEnv(t)
	major := pgtest.ServerMajor(t)

	t.Run("plain table has only the view limitations and the cross-shape deadlock note", func(t *testing.T) {
		// REVOKE: PostgreSQL ≤ 14 lets PUBLIC create in public (writable_schema_on_path).
		pgtest.Exec(t, e.dsn, `REVOKE CREATE ON SCHEMA public FROM PUBLIC; CREATE TABLE plain (id int PRIMARY KEY, v text)`)
		sc := e.load(t, specFor("plain_v2", "plain", "CREATE TABLE plain (id int PRIMARY KEY, v text)", ""), true)
		hs := sc.hazards()
		want(t, hs, HazardViewLimitations, Warning)
		h := want(t, hs, HazardCrossShapeDeadlock, Info)
		if !strings.Contains(h.Message, "40P01") || !strings.Contains(h.Fix, "retry") {
			t.Errorf("the deadlock note must name 40P01 and the retry: %+v", h)
		}
		if len(hs) != 2 {
			t.Errorf("hazards = %s, want only view_limitations and cross_shape_deadlock", codes(hs))
		}
		if HasBlocking(hs) {
			t.Error("HasBlocking = true")
		}
	})

	t.Run("no key", func(t *testing.T) {
		pgtest.Exec(t, e.dsn, `CREATE TABLE nokey (a int, b text); CREATE UNIQUE INDEX nokey_a ON nokey (a)`) // nullable: not a key
		sc := e.load(t, specFor("nokey_v2", "nokey", "CREATE TABLE nokey (a int PRIMARY KEY, b text)", ""), false)
		hs := sc.hazards()
		want(t, hs, HazardNoKey, Blocking)
		if !HasBlocking(hs) || hs[0].Severity != Blocking {
			t.Errorf("blocking hazards must come first: %s", codes(hs))
		}
	})

	t.Run("row-level security", func(t *testing.T) {
		pgtest.Exec(t, e.dsn, `CREATE TABLE secret (id int PRIMARY KEY, owner text);
			ALTER TABLE secret ENABLE ROW LEVEL SECURITY;
			CREATE POLICY mine ON secret USING (owner = current_user)`)
		sc := e.load(t, specFor("secret_v2", "secret", "CREATE TABLE secret (id int PRIMARY KEY, owner text)", ""), true)
		hs := sc.hazards()
		if major >= 15 {
			none(t, hs, HazardRLSNeedsInvoker)
		}
		h := want(t, hs, HazardRLSNotOnGreen, Warning)
		hasObject(t, h, `CREATE POLICY "mine"`)
		// The same table on a server without security_invoker views.
		sc.facts.ServerMajor = 14
		want(t, sc.hazards(), HazardRLSNeedsInvoker, Blocking)
	})

	t.Run("foreign keys", func(t *testing.T) {
		pgtest.Exec(t, e.dsn, `
			CREATE TABLE parent (id int PRIMARY KEY, code text NOT NULL UNIQUE, customer_id int REFERENCES customers);
			CREATE TABLE child (parent_id int REFERENCES parent, parent_code text REFERENCES parent (code))`)
		sc := e.load(t, specFor("parent_v2", "parent", "CREATE TABLE parent (id bigint PRIMARY KEY, code text NOT NULL, customer_id int)", ""), true)
		hs := sc.hazards()
		h := want(t, hs, HazardReferencedByFKs, Warning)
		hasObject(t, h, "public.child.child_parent_id_fkey")
		hasObject(t, h, "child_parent_code_fkey")
		h = want(t, hs, HazardReferencedKeyMissing, Blocking)
		hasObject(t, h, "(code)")
		if len(h.Objects) != 1 {
			t.Errorf("only code lacks a unique key on green: %q", h.Objects)
		}
		h = want(t, hs, HazardForeignKeysMissing, Warning)
		hasObject(t, h, "parent_customer_id_fkey")

		// With the FK and the unique key in green, both go away.
		sc = e.load(t, specFor("parent_v3", "parent",
			"CREATE TABLE parent (id bigint PRIMARY KEY, code text NOT NULL, customer_id int REFERENCES customers)",
			"  indexes:\n    - CREATE UNIQUE INDEX parent_code_key ON parent (code)\n"), true)
		hs = sc.hazards()
		none(t, hs, HazardReferencedKeyMissing)
		none(t, hs, HazardForeignKeysMissing)
		want(t, hs, HazardReferencedByFKs, Warning)
	})

	t.Run("self-referencing foreign key kept in green", func(t *testing.T) {
		pgtest.Exec(t, e.dsn, `CREATE TABLE node (id int PRIMARY KEY, parent int REFERENCES node)`)
		sc := e.load(t, specFor("node_v2", "node", "CREATE TABLE node (id int PRIMARY KEY, parent int REFERENCES node)", ""), true)
		none(t, sc.hazards(), HazardForeignKeysMissing)
	})

	t.Run("views, triggers, publications", func(t *testing.T) {
		pgtest.Exec(t, e.dsn, `
			CREATE TABLE busy (id int PRIMARY KEY, v text);
			CREATE VIEW busy_v AS SELECT id FROM busy;
			CREATE MATERIALIZED VIEW busy_mv AS SELECT count(*) FROM busy;
			CREATE FUNCTION busy_touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
			CREATE TRIGGER busy_audit BEFORE UPDATE ON busy FOR EACH ROW EXECUTE FUNCTION busy_touch();
			CREATE PUBLICATION busy_pub FOR TABLE busy`)
		sc := e.load(t, specFor("busy_v2", "busy", "CREATE TABLE busy (id int PRIMARY KEY, v text)", ""), true)
		hs := sc.hazards()
		h := want(t, hs, HazardDependentViews, Warning)
		hasObject(t, h, "public.busy_v")
		hasObject(t, h, "public.busy_mv (materialized)")
		h = want(t, hs, HazardUserTriggers, Warning)
		hasObject(t, h, "busy_audit")
		h = want(t, hs, HazardPublications, Blocking)
		hasObject(t, h, "busy_pub (FOR TABLE)")
	})

	t.Run("identity and generated columns", func(t *testing.T) {
		pgtest.Exec(t, e.dsn, `CREATE TABLE gen (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, a int,
			twice int GENERATED ALWAYS AS (a * 2) STORED)`)
		sc := e.load(t, specFor("gen_v2", "gen",
			"CREATE TABLE gen (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) STORED)", ""), true)
		hs := sc.hazards()
		h := want(t, hs, HazardIdentityColumns, Info)
		hasObject(t, h, "id (GENERATED ALWAYS AS IDENTITY)")
		h = want(t, hs, HazardGeneratedColumns, Info)
		hasObject(t, h, "blue.twice")
		hasObject(t, h, "green.twice")
	})

	t.Run("row type change and green stricter", func(t *testing.T) {
		pgtest.Exec(t, e.dsn, `CREATE TABLE shape (id int PRIMARY KEY, email text, big bigint, name varchar(10),
			amount int, code text, note text)`)
		sc := e.load(t, specFor("shape_v2", "shape", "CREATE TABLE shape (id bigint PRIMARY KEY, email text NOT NULL, big int, "+
			"name varchar(20), amount numeric(12,2), code text UNIQUE, region text NOT NULL, CHECK (amount >= 0))",
			"forward:\n  email: coalesce(email, 'none')\n  region: \"'eu'\"\n"), true)
		hs := sc.hazards()
		h := want(t, hs, HazardRowTypeChange, Warning)
		for _, o := range []string{"id: integer → bigint", "note: dropped", "region: added", "amount: integer → numeric(12,2)"} {
			hasObject(t, h, o)
		}
		if !strings.Contains(h.Message, "cached plan must not change result type") || !strings.Contains(h.Fix, "search_path") ||
			!strings.Contains(h.Fix, "gs_shape_v2_blue") {
			t.Errorf("row type hazard must name the cached-plan error and version schemas: %+v", h)
		}
		h = want(t, hs, HazardGreenStricter, Warning)
		for _, o := range []string{"email: NOT NULL on green", "forward.email: coalesce", "big: bigint → integer",
			"UNIQUE (code)", "CHECK ((amount >= (0)::numeric))", "region: new NOT NULL column"} {
			hasObject(t, h, o)
		}
		for _, o := range h.Objects {
			if strings.HasPrefix(o, "name:") || strings.HasPrefix(o, "amount:") || strings.HasPrefix(o, "id:") {
				t.Errorf("a widening change reported as stricter: %q", o)
			}
		}
	})

	t.Run("partitioned table and partition", func(t *testing.T) {
		pgtest.Exec(t, e.dsn, `CREATE TABLE ev (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
			CREATE TABLE ev_2024 PARTITION OF ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')`)
		sc := e.load(t, specFor("ev_v2", "ev", "CREATE TABLE ev (id int, at date, PRIMARY KEY (id, at))", ""), false)
		want(t, sc.hazards(), HazardPartitioned, Blocking)
		sc = e.load(t, specFor("ev24_v2", "ev_2024", "CREATE TABLE ev_2024 (id int, at date, PRIMARY KEY (id, at))", ""), false)
		want(t, sc.hazards(), HazardPartition, Blocking)
	})

	t.Run("partitioned green: names finalize would move", func(t *testing.T) {
		pgtest.Exec(t, e.dsn, `CREATE TABLE pev (id int PRIMARY KEY, at date NOT NULL, kind text);
			CREATE INDEX pev_kind ON pev (kind);
			CREATE TABLE pev_2024 (x int);           -- a partition's name
			CREATE TYPE pev_rest AS ENUM ('a');      -- a type a partition's row type would clash with
			CREATE TABLE other (k text); CREATE INDEX pev_at_idx ON other (k); -- green's index name`)
		spec := specFor("pev_v2", "pev", "CREATE TABLE pev (id int, at date NOT NULL, kind text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)",
			"  partitions:\n"+
				"    - CREATE TABLE pev_2024 PARTITION OF pev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')\n"+
				"    - CREATE TABLE pev_2025 PARTITION OF pev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')\n"+
				"    - CREATE TABLE pev_rest PARTITION OF pev DEFAULT\n"+
				"  indexes:\n    - CREATE INDEX pev_at_idx ON pev (at)\n    - CREATE INDEX pev_kind ON pev (kind)\n")
		sc := e.load(t, spec, true)
		h := want(t, sc.hazards(), HazardFinalizeNameClash, Warning)
		hasObject(t, h, `partition "gs_pev_v2_green"."pev_2024" would become "public"."pev_2024", but a table of that name exists there`)
		hasObject(t, h, `partition "gs_pev_v2_green"."pev_rest" would become "public"."pev_rest", but a type of that name exists there`)
		hasObject(t, h, `index "gs_pev_v2_green"."pev_at_idx" would become "public"."pev_at_idx", but an index of that name exists there`)
		if len(h.Objects) != 3 {
			// pev_2025 and its indexes are free; blue's own pev_pkey and
			// pev_kind leave the app schema at adopt and do not count.
			t.Errorf("clashes: %q", h.Objects)
		}
		if !strings.Contains(h.Fix, "target.partitions") || !strings.Contains(h.Message, "finalize") {
			t.Errorf("hazard: %+v", h)
		}
		pgtest.Exec(t, e.dsn, `DROP TABLE pev_2024; DROP TYPE pev_rest; DROP INDEX pev_at_idx`)
		none(t, e.load(t, spec, true).hazards(), HazardFinalizeNameClash)
	})

	t.Run("unlogged", func(t *testing.T) {
		pgtest.Exec(t, e.dsn, `CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY)`)
		sc := e.load(t, specFor("scratch_v2", "scratch", "CREATE TABLE scratch (id int PRIMARY KEY)", ""), false)
		want(t, sc.hazards(), HazardUnlogged, Blocking)
	})
}

func TestHazardTemporaryTable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var schema string
	if _, err := conn.Exec(ctx, `CREATE TEMP TABLE tmp (id int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SELECT pg_my_temp_schema()::regnamespace::text`).Scan(&schema); err != nil {
		t.Fatal(err)
	}
	spec, err := spec.ParseSpec([]byte(specFor("tmp_v2", schema+".tmp", "CREATE TABLE tmp (id int PRIMARY KEY)", "")), "h.yaml", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	blue, err := LoadTable(ctx, conn, spec.AppTable())
	if err != nil {
		t.Fatal(err)
	}
	facts, err := LoadHazardFacts(ctx, conn, spec, blue)
	if err != nil {
		t.Fatal(err)
	}
	want(t, Hazards(HazardInput{Spec: spec, Blue: blue, Facts: facts}), HazardTemporary, Blocking)
}

func TestHazardsLogicalMode(t *testing.T) {
	t.Parallel()
	e := newHazardEnv(t)
	ctx := context.Background()
	pgtest.Exec(t, e.dsn, `CREATE TABLE lg (id int PRIMARY KEY, v text);
		CREATE TABLE lg_nothing (id int PRIMARY KEY, v text); ALTER TABLE lg_nothing REPLICA IDENTITY NOTHING;
		CREATE TABLE lg_uk (id int NOT NULL, v text); CREATE UNIQUE INDEX lg_uk_id ON lg_uk (id);
		CREATE TABLE lg_idx (id int NOT NULL, v text); CREATE UNIQUE INDEX lg_idx_id ON lg_idx (id);
		ALTER TABLE lg_idx REPLICA IDENTITY USING INDEX lg_idx_id;
		CREATE TABLE lg_full (id int PRIMARY KEY, v text); ALTER TABLE lg_full REPLICA IDENTITY FULL`)
	logical := func(table string) string {
		return specFor(table+"_v2", table, "CREATE TABLE "+table+" (id int PRIMARY KEY, v text)", "mode: logical\n")
	}
	logicalCodes := []string{HazardLogicalWalLevel, HazardLogicalNoSlot, HazardLogicalNoWalSender,
		HazardLogicalReplPrivilege, HazardLogicalCreatePrivilege, HazardLogicalReplicaIdentity}

	// The test cluster runs wal_level=logical with free slots, as a superuser.
	sc := e.load(t, logical("lg"), true)
	for _, c := range logicalCodes {
		none(t, sc.hazards(), c)
	}
	for _, tbl := range []string{"lg_idx", "lg_full"} {
		sc := e.load(t, logical(tbl), false)
		none(t, sc.hazards(), HazardLogicalReplicaIdentity)
	}
	// Replica identity that does not log the key.
	for _, tbl := range []string{"lg_nothing", "lg_uk"} {
		sc := e.load(t, logical(tbl), false)
		want(t, sc.hazards(), HazardLogicalReplicaIdentity, Blocking)
	}
	// A trigger-mode migration needs none of it.
	sc = e.load(t, specFor("lgn_v2", "lg_nothing", "CREATE TABLE lg_nothing (id int PRIMARY KEY, v text)", ""), false)
	none(t, sc.hazards(), HazardLogicalReplicaIdentity)

	// A role without REPLICATION and without CREATE on the database, for real.
	role := fmt.Sprintf("gs_hz_plain_%d", os.Getpid())
	pgtest.Exec(t, e.dsn, `CREATE ROLE `+role+` NOLOGIN; GRANT SELECT ON lg TO `+role)
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), e.dsn)
		if err == nil {
			c.Exec(context.Background(), `DROP OWNED BY `+role+`; DROP ROLE `+role)
			c.Close(context.Background())
		}
	})
	spec, _ := spec.ParseSpec([]byte(logical("lg")), "h.yaml", "yaml")
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	blue, err := LoadTable(ctx, tx, spec.AppTable())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SET LOCAL ROLE `+role); err != nil {
		t.Fatal(err)
	}
	facts, err := LoadHazardFacts(ctx, tx, spec, blue)
	if err != nil {
		t.Fatal(err)
	}
	hs := Hazards(HazardInput{Spec: spec, Blue: blue, Facts: facts})
	want(t, hs, HazardLogicalReplPrivilege, Blocking)
	want(t, hs, HazardLogicalCreatePrivilege, Blocking)

	// Server settings that need a restart to change are simulated.
	facts.WalLevel = "replica"
	facts.UsedReplicationSlots = facts.MaxReplicationSlots
	facts.UsedWalSenders = facts.MaxWalSenders
	hs = Hazards(HazardInput{Spec: spec, Blue: blue, Facts: facts})
	want(t, hs, HazardLogicalWalLevel, Blocking)
	want(t, hs, HazardLogicalNoSlot, Blocking)
	want(t, hs, HazardLogicalNoWalSender, Blocking)
}

func TestHazardLeftovers(t *testing.T) {
	t.Parallel()
	e := newHazardEnv(t)
	ctx := context.Background()
	name := fmt.Sprintf("left_%d", os.Getpid()) // slot names are cluster-wide
	pgtest.Exec(t, e.dsn, `CREATE TABLE lo (id int PRIMARY KEY); CREATE TABLE lo2 (id int PRIMARY KEY)`)
	spec := specFor(name, "lo", "CREATE TABLE lo (id int PRIMARY KEY)", "")

	sc := e.load(t, spec, false)
	none(t, sc.hazards(), HazardLeftover)

	pgtest.Exec(t, e.dsn, `CREATE SCHEMA gs_`+name+`_green;
		CREATE FUNCTION lo_f() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;
		CREATE TRIGGER gs_sync_`+name+` AFTER INSERT ON lo FOR EACH ROW EXECUTE FUNCTION lo_f()`)
	pgtest.Exec(t, e.dsn, `SELECT pg_create_logical_replication_slot('gs_`+name+`', 'pgoutput')`)
	if err := state.Ensure(ctx, e.pool); err != nil {
		t.Fatal(err)
	}
	if _, err := state.Create(ctx, e.pool, name, "public.lo", "trigger", map[string]string{}); err != nil {
		t.Fatal(err)
	}
	if _, err := state.Create(ctx, e.pool, "other_mig", "public.lo", "trigger", map[string]string{}); err != nil {
		t.Fatal(err)
	}
	sc = e.load(t, spec, false)
	h := want(t, sc.hazards(), HazardLeftover, Blocking)
	for _, o := range []string{"schema gs_" + name + "_green exists", "replication slot gs_" + name, "pg_drop_replication_slot",
		"migration " + name + " exists in state planned", "migration other_mig of the same table", "sync trigger gs_sync_" + name} {
		hasObject(t, h, o)
	}

	// A rolled-back migration of another table under another name is no leftover.
	spec2 := specFor("lo2_v2", "lo2", "CREATE TABLE lo2 (id int PRIMARY KEY)", "")
	if _, err := state.Create(ctx, e.pool, "lo2_v2", "public.lo2", "trigger", map[string]string{}); err != nil {
		t.Fatal(err)
	}
	if err := state.Transition(ctx, e.pool, "lo2_v2", state.RolledBack); err != nil {
		t.Fatal(err)
	}
	sc = e.load(t, spec2, false)
	none(t, sc.hazards(), HazardLeftover)
}

func TestDetectVolatility(t *testing.T) {
	t.Parallel()
	e := newHazardEnv(t)
	pgtest.Exec(t, e.dsn, `CREATE TABLE vol (id int PRIMARY KEY, email text, created_at timestamptz, n int);
		CREATE FUNCTION my_norm(text) RETURNS text LANGUAGE sql AS 'SELECT lower($1)'`)
	sc := e.load(t, specFor("vol_v2", "vol", "CREATE TABLE vol (id int PRIMARY KEY, email text, created_at timestamptz, "+
		"n int, a timestamptz, b double precision, c timestamptz, d uuid, f timestamptz, g date, h text, i text, j int, "+
		"k int, l int, o text)", `forward:
  email: lower(email)
  a: now()
  b: random()
  c: clock_timestamp()
  d: gen_random_uuid()
  f: CURRENT_TIMESTAMP
  g: date(created_at)
  h: my_norm(email)
  i: upper(email) || 'x'
  j: n + 1
  k: inet_client_port()
  l: pg_trigger_depth()
  o: current_setting('application_name')
reverse:
  n: j - 1
`), true)
	hs := sc.hazards()
	volatile := map[string]string{"forward.a": "now()", "forward.b": "random()", "forward.c": "clock_timestamp()",
		"forward.d": "gen_random_uuid()", "forward.f": "CURRENT_TIMESTAMP", "forward.h": "public.my_norm()",
		// STABLE in pg_proc but per session: verify skips them too (issue 13:
		// plan and verify had two lists and disagreed on these three).
		"forward.k": "inet_client_port()", "forward.l": "pg_trigger_depth()", "forward.o": "current_setting()"}
	for field, fn := range volatile {
		found := false
		for _, h := range hs {
			if h.Code == HazardVolatileMapping && slices.Contains(h.Objects, field) {
				found = true
				if h.Severity != Warning || !strings.Contains(h.Message, fn) || !strings.Contains(h.Message, "checksums cannot match") {
					t.Errorf("%s: %+v", field, h)
				}
			}
		}
		if !found {
			t.Errorf("%s (%s) not reported volatile: %s", field, fn, codes(hs))
		}
		col := sc.m.Forward.Column(strings.TrimPrefix(field, "forward."))
		if col == nil || !col.Volatile {
			t.Errorf("%s: ColumnMap.Volatile not set", field)
		}
	}
	stable := false
	for _, h := range hs {
		if h.Code == HazardStableMapping && slices.Contains(h.Objects, "forward.g") {
			stable = h.Severity == Info
		}
		for _, f := range []string{"forward.email", "forward.i", "forward.j", "reverse.n", "forward.g"} {
			if h.Code == HazardVolatileMapping && slices.Contains(h.Objects, f) {
				t.Errorf("%s wrongly reported volatile: %+v", f, h)
			}
		}
	}
	if !stable {
		t.Errorf("forward.g (date(timestamptz), STABLE) not reported as stable: %s", codes(hs))
	}
	for _, c := range []string{"email", "g", "i", "j"} {
		if sc.m.Forward.Column(c).Volatile {
			t.Errorf("forward.%s marked volatile", c)
		}
	}
}

func TestDetectVolatilityCompileError(t *testing.T) {
	t.Parallel()
	e := newHazardEnv(t)
	pgtest.Exec(t, e.dsn, `CREATE TABLE bad (id int PRIMARY KEY, email text)`)
	specYAML := specFor("bad_v2", "bad", "CREATE TABLE bad (id int PRIMARY KEY, email text)", "forward:\n  email: lower(emial)\n")
	ctx := context.Background()
	sp, err := spec.ParseSpec([]byte(specYAML), "bad.yaml", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	n := NamesFor(sp.Name, sp.AppTable())
	for _, q := range CreateGreenSQL(n, sp) {
		if _, err := tx.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	blue, _ := LoadTable(ctx, tx, sp.AppTable())
	green, _ := LoadTable(ctx, tx, n.Green)
	m, err := BuildMapping(sp, blue, green)
	if err != nil {
		t.Fatal(err)
	}
	_, err = DetectVolatility(ctx, tx, sp, n.GreenSchema, m)
	var se *spec.SpecError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v, want a *spec.SpecError", err)
	}
	if se.Field != "forward.email" || se.Line != sp.Lines["forward.email"] || se.Line == 0 ||
		!strings.Contains(se.Error(), `column "emial" does not exist`) || !strings.HasPrefix(se.Error(), "bad.yaml:") {
		t.Errorf("err = %v (%+v)", se, se)
	}
	// The transaction is still usable: the probe ran in a savepoint.
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		t.Errorf("transaction aborted by the probe: %v", err)
	}
}

func TestTypeWidens(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		from, to string
		want     bool
	}{
		{"integer", "bigint", true},
		{"bigint", "integer", false},
		{"smallint", "integer", true},
		{"integer", "numeric(12,2)", true},
		{"integer", "numeric(11,2)", false},
		{"bigint", "numeric", true},
		{"numeric(10,2)", "numeric(12,2)", true},
		{"numeric(12,2)", "numeric(10,2)", false},
		{"numeric", "numeric(12,2)", false},
		{"numeric(12,2)", "integer", false},
		{"character varying(10)", "character varying(20)", true},
		{"character varying(20)", "character varying(10)", false},
		{"text", "character varying(10)", false},
		{"character varying(10)", "text", true},
		{"integer", "text", true},
		{"integer", "double precision", true},
		{"timestamp without time zone", "timestamp with time zone", true},
		{"json", "jsonb", true},
		{"text", "integer", false},
		{"uuid", "uuid", true},
	} {
		if got := typeWidens(c.from, c.to); got != c.want {
			t.Errorf("typeWidens(%q, %q) = %v, want %v", c.from, c.to, got, c.want)
		}
	}
}

// A green rule no forward expression covers can fail app writes as soon as
// sync starts; one that a forward expression covers is only a cutover concern.
func TestHazardSyncWriteCanFail(t *testing.T) {
	s := &spec.Spec{Name: "m", Table: "public.t", Forward: map[string]string{"a": "coalesce(a, '')"}}
	blue := &Table{Name: spec.QualifiedName{Schema: "public", Name: "t"}, Columns: []Column{{Name: "id", Type: "integer", NotNull: true}, {Name: "a", Type: "text"}, {Name: "b", Type: "text"}}}
	green := &Table{Name: spec.QualifiedName{Schema: "g", Name: "t"}, Columns: []Column{{Name: "id", Type: "bigint", NotNull: true}, {Name: "a", Type: "text", NotNull: true}, {Name: "b", Type: "text", NotNull: true}}}
	all, uncovered := greenStricter(s, blue, green)
	if len(all) != 2 || len(uncovered) != 1 || !strings.HasPrefix(uncovered[0], "b:") {
		t.Fatalf("stricter %q, uncovered %q; want a and b, only b uncovered", all, uncovered)
	}
}

// Trap 15: every kind of publication that contains the table blocks, with
// what breaks for its subscribers and the fix naming it; greenswap's own
// publication of a logical migration does not count.
func TestHazardsPublicationKinds(t *testing.T) {
	t.Parallel()
	e := newHazardEnv(t)
	major := pgtest.ServerMajor(t)
	pgtest.Exec(t, e.dsn, `
		CREATE TABLE pt (id int PRIMARY KEY, v text);
		CREATE TABLE other (id int PRIMARY KEY);
		CREATE PUBLICATION pub_other FOR TABLE other`)
	spec := specFor("pt_v2", "pt", "CREATE TABLE pt (id int PRIMARY KEY, v text)", "")

	sc := e.load(t, spec, false)
	none(t, sc.hazards(), HazardPublications)

	// greenswap's own publication gs_<m> (a logical migration's) is not a subscriber's.
	pgtest.Exec(t, e.dsn, `CREATE PUBLICATION gs_pt_v2 FOR TABLE pt`)
	sc = e.load(t, spec, false)
	none(t, sc.hazards(), HazardPublications)
	pgtest.Exec(t, e.dsn, `DROP PUBLICATION gs_pt_v2`)

	pgtest.Exec(t, e.dsn, `CREATE PUBLICATION pub_t FOR TABLE pt, other`)
	h := want(t, e.load(t, spec, false).hazards(), HazardPublications, Blocking)
	hasObject(t, h, "pub_t (FOR TABLE)")
	for _, s := range []string{"gs_pt_v2_blue.pt", "in a loop", "retains WAL"} {
		if !strings.Contains(h.Message, s) {
			t.Errorf("FOR TABLE message lacks %q: %s", s, h.Message)
		}
	}
	for _, s := range []string{`ALTER PUBLICATION "pub_t" DROP TABLE "public"."pt"`, `ALTER PUBLICATION "pub_t" ADD TABLE "public"."pt"`, "REFRESH PUBLICATION"} {
		if !strings.Contains(h.Fix, s) {
			t.Errorf("FOR TABLE fix lacks %q: %s", s, h.Fix)
		}
	}
	pgtest.Exec(t, e.dsn, `DROP PUBLICATION pub_t`)

	if major >= 15 {
		pgtest.Exec(t, e.dsn, `CREATE PUBLICATION pub_s FOR TABLES IN SCHEMA public`)
		h := want(t, e.load(t, spec, false).hazards(), HazardPublications, Blocking)
		hasObject(t, h, "pub_s (FOR TABLES IN SCHEMA)")
		if !strings.Contains(h.Message, "silently") || !strings.Contains(h.Fix, "pub_s") {
			t.Errorf("FOR TABLES IN SCHEMA hazard: %+v", h)
		}
		pgtest.Exec(t, e.dsn, `DROP PUBLICATION pub_s`)
	}

	// With a subscriber's slot in sight, it is named too.
	pgtest.Exec(t, e.dsn, `CREATE PUBLICATION pub_all FOR ALL TABLES`)
	pgtest.Exec(t, e.dsn, `SELECT pg_create_logical_replication_slot('sub_slot_pt', 'pgoutput')`)
	h = want(t, e.load(t, spec, false).hazards(), HazardPublications, Blocking)
	hasObject(t, h, "pub_all (FOR ALL TABLES)")
	hasObject(t, h, "logical slot sub_slot_pt (inactive)")
	if !strings.Contains(h.Message, "gs_pt_v2_green.pt") || !strings.Contains(h.Fix, "DISABLE") {
		t.Errorf("FOR ALL TABLES hazard: %+v", h)
	}
}

// Issue 11.6: blue with inheritance children, or blue itself a child, blocks.
func TestHazardsInheritance(t *testing.T) {
	t.Parallel()
	e := newHazardEnv(t)
	pgtest.Exec(t, e.dsn, `
		CREATE TABLE parent_t (id int PRIMARY KEY, v text);
		CREATE TABLE child_t (extra int) INHERITS (parent_t);
		CREATE TABLE part_root (id int, PRIMARY KEY (id)) PARTITION BY RANGE (id);
		CREATE TABLE part_1 PARTITION OF part_root FOR VALUES FROM (0) TO (100)`)

	h := want(t, e.load(t, specFor("pa_v2", "parent_t", "CREATE TABLE parent_t (id int PRIMARY KEY, v text)", ""), false).hazards(),
		HazardInheritanceChildren, Blocking)
	hasObject(t, h, "public.child_t")
	if !strings.Contains(h.Message, "never reach green") || !strings.Contains(h.Fix, "NO INHERIT") {
		t.Errorf("inheritance children hazard: %+v", h)
	}
	pgtest.Exec(t, e.dsn, `ALTER TABLE child_t ADD PRIMARY KEY (id)`)
	h = want(t, e.load(t, specFor("ch_v2", "child_t", "CREATE TABLE child_t (id int PRIMARY KEY, v text, extra int)", ""), false).hazards(),
		HazardInheritanceParent, Blocking)
	hasObject(t, h, "public.parent_t")

	// Partitioning is not inheritance here: it has its own hazards.
	hs := e.load(t, specFor("pr_v2", "part_root", "CREATE TABLE part_root (id int PRIMARY KEY)", ""), false).hazards()
	none(t, hs, HazardInheritanceChildren)
	want(t, hs, HazardPartitioned, Blocking)
	pgtest.Exec(t, e.dsn, `ALTER TABLE part_1 ADD UNIQUE (id)`)
	hs = e.load(t, specFor("p1_v2", "part_1", "CREATE TABLE part_1 (id int PRIMARY KEY)", ""), false).hazards()
	none(t, hs, HazardInheritanceParent)
	want(t, hs, HazardPartition, Blocking)
}

// Issue 10.2: roles other than the owner that may CREATE in the app schema
// (on the sync functions' search path) are a warning naming them; the owner
// itself, superusers and PostgreSQL 15's default public schema are not.
func TestHazardsWritableSchema(t *testing.T) {
	t.Parallel()
	e := newHazardEnv(t)
	pgtest.Exec(t, e.dsn, `CREATE TABLE ws (id int PRIMARY KEY, v text)`)
	spec := specFor("ws_v2", "ws", "CREATE TABLE ws (id int PRIMARY KEY, v text)", "")
	if pgtest.ServerMajor(t) >= 15 {
		none(t, e.load(t, spec, false).hazards(), HazardWritableSchema)
	}
	pgtest.Exec(t, e.dsn, `GRANT CREATE ON SCHEMA public TO PUBLIC`)
	h := want(t, e.load(t, spec, false).hazards(), HazardWritableSchema, Warning)
	hasObject(t, h, "PUBLIC")
	if !strings.Contains(h.Fix, `REVOKE CREATE ON SCHEMA "public" FROM PUBLIC`) || !strings.Contains(h.Message, "greenswap's own SQL qualifies") ||
		!strings.Contains(h.Message, "round(integer)") || strings.Contains(h.Message, "cannot be shadowed") {
		t.Errorf("writable schema hazard: %+v", h)
	}
	pgtest.Exec(t, e.dsn, `REVOKE CREATE ON SCHEMA public FROM PUBLIC`)

	role := "gs_hz_creator_" + strings.TrimPrefix(e.dsn[strings.LastIndex(e.dsn, "/")+1:strings.Index(e.dsn, "?")], "gs_test_")
	owner := role + "_own"
	pgtest.Exec(t, e.dsn, fmt.Sprintf(`CREATE ROLE %[1]s; CREATE ROLE %[2]s; GRANT CREATE ON SCHEMA public TO %[1]s, %[2]s;
		ALTER TABLE ws OWNER TO %[2]s`, role, owner))
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), e.dsn)
		if err == nil {
			c.Exec(context.Background(), fmt.Sprintf(`DROP OWNED BY %[1]s, %[2]s; DROP ROLE %[1]s, %[2]s`, role, owner))
			c.Close(context.Background())
		}
	})
	h = want(t, e.load(t, spec, false).hazards(), HazardWritableSchema, Warning)
	if len(h.Objects) != 1 || h.Objects[0] != role {
		t.Errorf("roles = %q, want only %s (the owner %s may create there)", h.Objects, role, owner)
	}

	// A schema holding a function a spec expression calls, where the role
	// may create: a better-matching overload could be planted there.
	pgtest.Exec(t, e.dsn, fmt.Sprintf(`REVOKE CREATE ON SCHEMA public FROM %[1]s; CREATE SCHEMA fx;
		CREATE FUNCTION fx.norm(v text) RETURNS text IMMUTABLE LANGUAGE sql AS 'SELECT lower(v)';
		CREATE SCHEMA fy; CREATE FUNCTION fy.tidy(v text) RETURNS text IMMUTABLE LANGUAGE sql AS 'SELECT trim(v)';
		GRANT CREATE ON SCHEMA fx TO %[1]s`, role))
	sc := e.load(t, specFor("ws_v3", "ws", "CREATE TABLE ws (id int PRIMARY KEY, v text)", "forward:\n  v: fy.tidy(fx.norm(v))\n"), true)
	ws, err := FunctionSchemas(context.Background(), e.pool, "public", owner, sc.vols, sc.facts.WritableSchemas)
	if err != nil {
		t.Fatal(err)
	}
	sc.facts.WritableSchemas = ws
	h = want(t, sc.hazards(), HazardWritableSchema, Warning)
	if len(ws) != 1 || ws[0].Schema != "fx" || !slices.Equal(ws[0].Roles, []string{role}) || !slices.Equal(ws[0].Functions, []string{"forward.v"}) {
		t.Errorf("writable function schemas = %+v, want fx (not fy) for %s, called by forward.v", ws, role)
	}
	if !strings.Contains(h.Message, "functions that the spec's expressions call (forward.v)") || !strings.Contains(h.Fix, `ON SCHEMA "fx"`) {
		t.Errorf("function schema hazard: %+v", h)
	}
}

// Issue 11.3: pg_get_serial_sequence on the app name returns NULL during the
// migration; plan says so and names the sequences.
func TestHazardsSerialSequenceLookup(t *testing.T) {
	t.Parallel()
	e := newHazardEnv(t)
	pgtest.Exec(t, e.dsn, `CREATE TABLE sq (id serial PRIMARY KEY, n int GENERATED BY DEFAULT AS IDENTITY, v text);
		CREATE TABLE nosq (id int PRIMARY KEY)`)
	h := want(t, e.load(t, specFor("sq_v2", "sq", "CREATE TABLE sq (id bigint PRIMARY KEY, n int, v text)", ""), false).hazards(),
		HazardSerialSequenceLookup, Warning)
	hasObject(t, h, "public.sq.id: public.sq_id_seq (serial)")
	hasObject(t, h, "public.sq.n: public.sq_n_seq (identity, moves with blue to gs_sq_v2_blue)")
	if !strings.Contains(h.Message, "pg_get_serial_sequence") || !strings.Contains(h.Fix, `'"gs_sq_v2_blue"."sq"'`) {
		t.Errorf("sequence hazard: %+v", h)
	}
	none(t, e.load(t, specFor("nosq_v2", "nosq", "CREATE TABLE nosq (id int PRIMARY KEY)", ""), false).hazards(), HazardSerialSequenceLookup)

	// What it warns about, for real: a view has no serial sequence.
	pgtest.Exec(t, e.dsn, `CREATE VIEW sq_view AS SELECT * FROM sq`)
	var seq *string
	if err := e.pool.QueryRow(context.Background(), `SELECT pg_get_serial_sequence('public.sq_view', 'id')`).Scan(&seq); err != nil || seq != nil {
		t.Errorf("pg_get_serial_sequence on a view = %v, %v; want NULL", seq, err)
	}
}
