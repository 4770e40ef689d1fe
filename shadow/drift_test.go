package shadow

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/spec"
)

// driftFixture lays out a migration's three objects by hand (the view
// over blue, green beside it, greenswap's own sync trigger on blue) and
// returns their names.
func driftFixture(t *testing.T) (*pgxpool.Pool, string, Names) {
	t.Helper()
	pool, dsn := pgtest.NewPool(t)
	n := NamesFor("dr", spec.QualifiedName{Schema: "public", Name: "orders"})
	pgtest.Exec(t, dsn, `
		CREATE SCHEMA gs_dr_blue; CREATE SCHEMA gs_dr_green;
		CREATE TABLE gs_dr_blue.orders (id int PRIMARY KEY, note text, amount int NOT NULL DEFAULT 0);
		CREATE TABLE gs_dr_green.orders (id bigint PRIMARY KEY, note text, amount numeric(12,2) NOT NULL DEFAULT 0);
		CREATE VIEW public.orders WITH (security_barrier = true) AS SELECT id, note, amount FROM gs_dr_blue.orders;
		CREATE FUNCTION gs_dr_green.gs_forward() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;
		CREATE TRIGGER gs_sync_dr AFTER INSERT ON gs_dr_blue.orders FOR EACH ROW EXECUTE FUNCTION gs_dr_green.gs_forward();
		CREATE FUNCTION public.audit() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;`)
	return pool, dsn, n
}

func takeFP(t *testing.T, pool *pgxpool.Pool, n Names) *Fingerprint {
	t.Helper()
	fp, err := TakeFingerprint(context.Background(), pool, n)
	if err != nil {
		t.Fatal(err)
	}
	// It is recorded as JSON: the comparison must survive the round trip.
	js, err := json.Marshal(fp)
	if err != nil {
		t.Fatal(err)
	}
	var back Fingerprint
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	return &back
}

// TestFingerprintNamesEachDrift: each kind of change an app deploy may make
// to the view, blue or green is named in one line, and undoing it leaves no
// difference; greenswap's own triggers and a session's search_path do not
// count.
func TestFingerprintNamesEachDrift(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, change, undo string
		want               []string // substrings of the one-line drifts
	}{
		{"view add column", `CREATE OR REPLACE VIEW public.orders AS SELECT id, note, amount, 1::numeric AS discount FROM gs_dr_blue.orders`,
			`DROP VIEW public.orders; CREATE VIEW public.orders WITH (security_barrier = true) AS SELECT id, note, amount FROM gs_dr_blue.orders`,
			[]string{"public.orders (the app view): column discount numeric added", "view definition changed"}},
		{"view rename column", `ALTER VIEW public.orders RENAME COLUMN note TO memo`, `ALTER VIEW public.orders RENAME COLUMN memo TO note`,
			[]string{"public.orders (the app view): column note renamed to memo"}},
		{"view set default", `ALTER VIEW public.orders ALTER COLUMN note SET DEFAULT 'x'`, `ALTER VIEW public.orders ALTER COLUMN note DROP DEFAULT`,
			[]string{"public.orders (the app view): column note default changed from none to 'x'::text"}},
		{"blue add column", `ALTER TABLE gs_dr_blue.orders ADD COLUMN memo text`, `ALTER TABLE gs_dr_blue.orders DROP COLUMN memo`,
			[]string{"gs_dr_blue.orders (blue): column memo text added"}},
		{"blue drop not null", `ALTER TABLE gs_dr_blue.orders ALTER COLUMN amount DROP NOT NULL`, `ALTER TABLE gs_dr_blue.orders ALTER COLUMN amount SET NOT NULL`,
			[]string{"gs_dr_blue.orders (blue): column amount no longer NOT NULL"}},
		{"blue add check", `ALTER TABLE gs_dr_blue.orders ADD CONSTRAINT pos CHECK (amount >= 0)`, `ALTER TABLE gs_dr_blue.orders DROP CONSTRAINT pos`,
			[]string{"gs_dr_blue.orders (blue): constraint pos added (CHECK ((amount >= 0)))"}},
		{"green type", `ALTER TABLE gs_dr_green.orders ALTER COLUMN note TYPE varchar(10)`, `ALTER TABLE gs_dr_green.orders ALTER COLUMN note TYPE text`,
			[]string{"gs_dr_green.orders (green): column note type changed from text to character varying(10)"}},
		{"blue user trigger", `CREATE TRIGGER audit BEFORE INSERT ON gs_dr_blue.orders FOR EACH ROW EXECUTE FUNCTION public.audit()`,
			`DROP TRIGGER audit ON gs_dr_blue.orders`, []string{"gs_dr_blue.orders (blue): trigger audit added"}},
		{"blue policy", `CREATE POLICY p ON gs_dr_blue.orders USING (amount > 0)`, `DROP POLICY p ON gs_dr_blue.orders`,
			[]string{"gs_dr_blue.orders (blue): policy p added (AS PERMISSIVE FOR ALL TO PUBLIC USING ((amount > 0)))"}},
		{"view rule", `CREATE RULE audit_ins AS ON INSERT TO public.orders DO ALSO NOTIFY orders_changed`, `DROP RULE audit_ins ON public.orders`,
			[]string{"public.orders (the app view): rule audit_ins added"}},
		{"blue rule", `CREATE RULE no_del AS ON DELETE TO gs_dr_blue.orders DO INSTEAD NOTHING`, `DROP RULE no_del ON gs_dr_blue.orders`,
			[]string{"gs_dr_blue.orders (blue): rule no_del added"}},
		{"blue rls", `ALTER TABLE gs_dr_blue.orders ENABLE ROW LEVEL SECURITY`, `ALTER TABLE gs_dr_blue.orders DISABLE ROW LEVEL SECURITY`,
			[]string{"gs_dr_blue.orders (blue): row level security enabled"}},
		{"blue inheritance child", `CREATE TABLE public.orders_old () INHERITS (gs_dr_blue.orders)`, `DROP TABLE public.orders_old`,
			[]string{"gs_dr_blue.orders (blue): inheritance child (or partition) public.orders_old added"}},
		{"blue index", `CREATE INDEX orders_note_idx ON gs_dr_blue.orders (note)`, `DROP INDEX gs_dr_blue.orders_note_idx`,
			[]string{"gs_dr_blue.orders (blue): index orders_note_idx added (CREATE INDEX orders_note_idx ON gs_dr_blue.orders USING btree (note))"}},
		{"view options", `ALTER VIEW public.orders RESET (security_barrier)`, `ALTER VIEW public.orders SET (security_barrier = true)`,
			[]string{"public.orders (the app view): options changed from [security_barrier=true] to []"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			pool, dsn, n := driftFixture(t)
			before := takeFP(t, pool, n)
			// greenswap's own trigger work is not drift.
			pgtest.Exec(t, dsn, `ALTER TABLE gs_dr_blue.orders DISABLE TRIGGER gs_sync_dr`)
			if d := DiffFingerprints(before, takeFP(t, pool, n)); len(d) != 0 {
				t.Fatalf("greenswap's own trigger counted as drift: %v", d)
			}
			pgtest.Exec(t, dsn, c.change)
			got := DiffFingerprints(before, takeFP(t, pool, n))
			var lines []string
			for _, d := range got {
				lines = append(lines, d.String())
				if d.Fix == "" {
					t.Errorf("drift %q says nothing about what to do", d)
				}
			}
			all := strings.Join(lines, "\n")
			for _, w := range c.want {
				if !strings.Contains(all, w) {
					t.Errorf("after %s the drift does not say %q; got:\n%s", c.change, w, all)
				}
			}
			pgtest.Exec(t, dsn, c.undo)
			if d := DiffFingerprints(before, takeFP(t, pool, n)); len(d) != 0 {
				t.Errorf("undone, still drift: %v", d)
			}
		})
	}
}

// TestFingerprintSeveralTables (issue 14): the fingerprint of a
// migration of two tables tags each object with its table; a change to
// one table's blue, and a GRANT on its view alone, are named on that
// table only, and a column added is marked as one accept cannot carry. A
// version 1 fingerprint (no indexes) compares without indexes, and
// Upgrade takes today's as its baseline.
func TestFingerprintSeveralTables(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn, orders := driftFixture(t)
	pgtest.Exec(t, dsn, `
		CREATE TABLE gs_dr_blue.items (id int PRIMARY KEY, sku text);
		CREATE TABLE gs_dr_green.items (id bigint PRIMARY KEY, sku text);
		CREATE INDEX items_sku_idx ON gs_dr_blue.items (sku);
		CREATE VIEW public.items AS SELECT id, sku FROM gs_dr_blue.items;`)
	items := MemberNamesFor("dr", spec.QualifiedName{Schema: "public", Name: "items"}, true)
	members := []Names{orders, items}
	take := func() *Fingerprint {
		t.Helper()
		fp, err := TakeFingerprints(ctx, pool, members, true)
		if err != nil {
			t.Fatal(err)
		}
		js, _ := json.Marshal(fp)
		var back Fingerprint
		if err := json.Unmarshal(js, &back); err != nil {
			t.Fatal(err)
		}
		return &back
	}
	before := take()
	if got := before.Tables(); len(got) != 2 || got[0] != "public.orders" || got[1] != "public.items" || len(before.Objects) != 6 {
		t.Fatalf("tables %v, %d objects; want public.orders, public.items and 6", got, len(before.Objects))
	}
	if o := before.ObjectOf("public.items", "blue"); o == nil || len(o.Indexes) != 1 || o.Indexes[0].Name != "items_sku_idx" {
		t.Fatalf("items' blue indexes: %+v", o)
	}
	pgtest.Exec(t, dsn, `ALTER TABLE gs_dr_blue.items ADD COLUMN memo text; GRANT SELECT ON public.items TO PUBLIC`)
	now := take()
	d := DiffFingerprints(before, now)
	if len(d) != 1 || d[0].Table != "public.items" || d[0].String() != "gs_dr_blue.items (blue): column memo text added" || !d[0].Uncarried {
		t.Fatalf("drift %+v; want the column on items' blue alone, uncarried", d)
	}
	p := PrivilegeDrift(now)
	if len(p) != 2 || p[0].Table != "public.items" || p[1].Table != "public.items" {
		t.Fatalf("privilege drift %+v; want items' blue and green", p)
	}

	// As version 1 recorded it: no indexes. A new index is not compared
	// until Upgrade makes today's the baseline; then one more is.
	v1 := take()
	v1.Version = 1
	for i := range v1.Objects {
		v1.Objects[i].Indexes = nil
	}
	if !v1.Comparable() || len(DiffFingerprints(v1, now)) != 0 {
		t.Fatalf("a version 1 fingerprint: comparable %v, drift %v", v1.Comparable(), DiffFingerprints(v1, now))
	}
	v1.Upgrade(now)
	pgtest.Exec(t, dsn, `CREATE INDEX items_memo_idx ON gs_dr_blue.items (memo)`)
	d = DiffFingerprints(v1, take())
	if v1.Version != FingerprintVersion || len(d) != 1 || d[0].Kind != "index" || d[0].Table != "public.items" {
		t.Fatalf("after Upgrade: version %d, drift %+v; want the new index on items alone", v1.Version, d)
	}
	if (&Fingerprint{Version: FingerprintVersion + 1}).Comparable() {
		t.Fatal("a fingerprint of a later version reads as comparable")
	}
}

// TestFingerprintPrivilegeDrift: a GRANT or REVOKE on the app name alone
// is named, with the statement that mirrors it; mirrored on every shape,
// it is no drift (table and column privileges alike), and the grantor
// does not matter.
func TestFingerprintPrivilegeDrift(t *testing.T) {
	t.Parallel()
	pool, dsn, n := driftFixture(t)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	role := "reporting_" + cfg.Database // roles are cluster-wide
	pgtest.Exec(t, dsn, `CREATE ROLE `+db.Ident(role)+` LOGIN`)
	t.Cleanup(func() {
		// t's context is done by now: drop the role on a context of its own.
		_, _ = pool.Exec(context.Background(), `DROP OWNED BY `+db.Ident(role))
		_, _ = pool.Exec(context.Background(), `DROP ROLE `+db.Ident(role))
	})
	fp := takeFP(t, pool, n)
	if d := PrivilegeDrift(fp); len(d) != 0 {
		t.Fatalf("fresh objects: %v", d)
	}
	pgtest.Exec(t, dsn, `GRANT SELECT ON public.orders TO `+db.Ident(role))
	d := PrivilegeDrift(takeFP(t, pool, n))
	all := driftLines(d)
	for _, w := range []string{
		"GRANT SELECT ON public.orders TO " + role + " is not on gs_dr_blue.orders",
		"GRANT SELECT ON public.orders TO " + role + " is not on gs_dr_green.orders",
	} {
		if !strings.Contains(all, w) {
			t.Errorf("missing %q in:\n%s", w, all)
		}
	}
	if len(d) != 2 || !strings.Contains(d[0].Fix, `GRANT SELECT ON "gs_dr_blue"."orders" TO "`+role+`"`) {
		t.Errorf("want 2 drifts with the GRANT that mirrors it, got %d: %+v", len(d), d)
	}
	pgtest.Exec(t, dsn, `GRANT SELECT ON gs_dr_blue.orders, gs_dr_green.orders TO `+db.Ident(role))
	if d := PrivilegeDrift(takeFP(t, pool, n)); len(d) != 0 {
		t.Errorf("mirrored: %v", d)
	}

	// A column grant on blue alone.
	pgtest.Exec(t, dsn, `GRANT UPDATE (note) ON gs_dr_blue.orders TO `+db.Ident(role))
	all = driftLines(PrivilegeDrift(takeFP(t, pool, n)))
	if !strings.Contains(all, "GRANT UPDATE (note) ON gs_dr_blue.orders TO "+role+" is not on public.orders") {
		t.Errorf("column grant on blue alone not named:\n%s", all)
	}
	pgtest.Exec(t, dsn, `GRANT UPDATE (note) ON public.orders, gs_dr_green.orders TO `+db.Ident(role))
	if d := PrivilegeDrift(takeFP(t, pool, n)); len(d) != 0 {
		t.Errorf("column grant mirrored: %v", d)
	}

	// REVOKE on the app name alone.
	pgtest.Exec(t, dsn, `REVOKE SELECT ON public.orders FROM `+db.Ident(role))
	all = driftLines(PrivilegeDrift(takeFP(t, pool, n)))
	if !strings.Contains(all, "GRANT SELECT ON gs_dr_green.orders TO "+role+" is not on public.orders") {
		t.Errorf("revoke on the app name not named:\n%s", all)
	}
}

func driftLines(d []Drift) string {
	var l []string
	for _, x := range d {
		l = append(l, x.String())
	}
	return strings.Join(l, "\n")
}
