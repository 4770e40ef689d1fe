package runner

import (
	"context"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/alter"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/shadow"
)

const sessionSchema = `
CREATE TABLE public.ev (
    id      int PRIMARY KEY,
    ts      timestamp,
    tstz    timestamptz,
    d       date,
    s       text,
    cash    money,
    n       int
);
INSERT INTO public.ev VALUES (1, '2024-01-02 03:04:05', '2024-01-02 03:04:05+00', '2024-01-02', '2024-01-02', '12.50', 7);
CREATE TABLE public.nokey (id int, v int);
INSERT INTO public.nokey VALUES (1, 1);
`

// TestPlanAlterRefusesSessionDependentConversion: a blue-green type change
// whose conversion calls a STABLE function (read from the catalog by the
// shared volatility detector: a cast function, or the I/O function of a
// cast through text) is a blocking hazard of plan --alter naming the
// column and what to write instead; the same conversion written with an
// explicit zone or format, and conversions that read no setting, are not.
// A spec's alter: is refused the same way, unless its own forward
// replaces the conversion.
func TestPlanAlterRefusesSessionDependentConversion(t *testing.T) {
	_, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, sessionSchema)
	env := syncTestEnv(t, dsn)
	ctx := context.Background()
	cases := []struct {
		change  string
		col     string
		refused bool
	}{
		{"ALTER COLUMN d TYPE timestamptz", "d", true},
		{"ALTER COLUMN tstz TYPE date", "tstz", true},
		{"ALTER COLUMN tstz TYPE text", "tstz", true},
		{"ALTER COLUMN s TYPE date USING s::date", "s", true},
		{"ALTER COLUMN s TYPE timestamp USING s::timestamp", "s", true},
		{"ALTER COLUMN s TYPE interval USING (length(s) || ' days')::interval", "s", true},
		{"ALTER COLUMN cash TYPE text", "cash", true},
		// (timestamp → timestamptz without USING, or with USING ts::timestamptz,
		// rewrites nothing when the session's TimeZone is UTC: in place.)
		// session-independent: accepted
		{"ALTER COLUMN ts TYPE timestamptz USING ts AT TIME ZONE 'UTC'", "ts", false},
		{"ALTER COLUMN s TYPE date USING make_date(substr(s, 1, 4)::int, substr(s, 6, 2)::int, substr(s, 9, 2)::int)", "s", false},
		{"ALTER COLUMN tstz TYPE timestamp USING tstz AT TIME ZONE 'UTC'", "tstz", false},
		// to_char / to_date read lc_time (and TimeZone): STABLE in the catalog
		{"ALTER COLUMN s TYPE date USING to_date(s, 'YYYY-MM-DD')", "s", true},
		{"ALTER COLUMN tstz TYPE text USING to_char(tstz AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')", "tstz", true},
		{"ALTER COLUMN n TYPE bigint", "n", false},
		{"ALTER COLUMN n TYPE text", "n", false},
		{"ALTER COLUMN s TYPE varchar(5) USING left(s, 5)", "s", false},
	}
	for _, tc := range cases {
		res, err := PlanAlter(ctx, env, "ALTER TABLE public.ev "+tc.change, nil, "", PlanOptions{})
		if err != nil {
			t.Fatalf("%s: %v", tc.change, err)
		}
		if res.Alter.Order == alter.InPlaceOnly {
			t.Fatalf("%s: runs in place: the case does not test the blue-green path", tc.change)
		}
		var found *shadow.Hazard
		for i, h := range res.BlueGreen.Hazards {
			if h.Code == alter.HazardSessionDependentConversion && h.Severity == shadow.Blocking {
				found = &res.BlueGreen.Hazards[i]
			}
		}
		switch {
		case tc.refused && (found == nil || res.BlueGreen.Blocking == 0):
			t.Errorf("%s: no blocking %s (hazards %+v)", tc.change, alter.HazardSessionDependentConversion, res.BlueGreen.Hazards)
		case !tc.refused && found != nil:
			t.Errorf("%s: refused: %s", tc.change, found.Message)
		case tc.refused:
			if !strings.Contains(found.Message, "column "+tc.col) || !strings.Contains(found.Message, "STABLE") || !strings.Contains(found.Fix, "USING") {
				t.Errorf("%s: the hazard does not name the column and the fix: %s / %s", tc.change, found.Message, found.Fix)
			}
		}
	}
	// A spec's alter: is planned with the same hazard; its own forward
	// for the column replaces the conversion.
	yaml := "name: ev_v2\ntable: public.ev\nalter: ALTER TABLE ev ALTER COLUMN d TYPE timestamptz\n"
	res, err := Plan(ctx, env, testkit.ParseSpec(t, yaml), PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Blocking == 0 || res.Hazards[0].Code != alter.HazardSessionDependentConversion {
		t.Fatalf("spec alter: hazards %+v", res.Hazards)
	}
	yaml = "name: ev_v3\ntable: public.ev\nalter: ALTER TABLE ev ALTER COLUMN s TYPE date USING to_date(s, 'YYYY-MM-DD')\n"
	res, err = Plan(ctx, env, testkit.ParseSpec(t, yaml+"forward:\n  s: to_date(s, 'YYYY-MM-DD')\nreverse:\n  s: to_char(s, 'YYYY-MM-DD')\n"), PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range res.Hazards {
		if h.Code == alter.HazardSessionDependentConversion {
			t.Fatalf("the spec's own forward did not replace the conversion: %+v", h)
		}
	}
}

// TestRunAlterAppliesPlanGate: run --alter refuses, with plan's exit code
// (3) and before anything changes (no in-place step run, no state schema,
// the table as it was), what plan --alter reports blocking: the ALTER's
// own hazard (a session-dependent conversion) and one of the derived
// spec's (a table without a key). sync of a spec with alter: is refused
// the same way.
func TestRunAlterAppliesPlanGate(t *testing.T) {
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, sessionSchema)
	env := syncTestEnv(t, dsn)
	ctx := context.Background()
	catalog := func() string {
		var s string
		if err := pool.QueryRow(ctx, `SELECT string_agg(c.relname || '.' || a.attname || ':' || format_type(a.atttypid, a.atttypmod) || ':' || c.relfilenode, ',' ORDER BY 1)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := catalog()
	for _, sql := range []string{
		"ALTER TABLE public.ev ADD COLUMN tag text, ALTER COLUMN d TYPE timestamptz",
		"ALTER TABLE public.nokey ADD COLUMN tag text, ALTER COLUMN v TYPE bigint",
	} {
		_, err := RunAlter(ctx, env, sql, AlterRunOptions{UntilSynced: true})
		if exitcode.Of(err) != exitcode.Blocked {
			t.Fatalf("%s: exit %d (%v), want %d", sql, exitcode.Of(err), err, exitcode.Blocked)
		}
		if !strings.Contains(err.Error(), "nothing was changed") {
			t.Errorf("%s: %v", sql, err)
		}
		if after := catalog(); after != before {
			t.Fatalf("%s changed the database:\n before %s\n after  %s", sql, before, after)
		}
	}
	var ns int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'greenswap%' OR nspname LIKE 'gs\_%'`).Scan(&ns); err != nil {
		t.Fatal(err)
	}
	if ns != 0 {
		t.Fatalf("%d greenswap schemas created by refused runs", ns)
	}
	// sync of the spec form.
	s := testkit.ParseSpec(t, "name: ev_v2\ntable: public.ev\nalter: ALTER TABLE ev ALTER COLUMN d TYPE timestamptz\n")
	_, err := Sync(ctx, env, s, SyncOptions{})
	if exitcode.Of(err) != exitcode.Blocked {
		t.Fatalf("sync of alter: exit %d (%v)", exitcode.Of(err), err)
	}
	if after := catalog(); after != before {
		t.Fatalf("sync changed the database:\n before %s\n after  %s", before, after)
	}
}
