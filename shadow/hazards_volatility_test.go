package shadow

import (
	"slices"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/spec"
)

// TestDirectionVolatilityCasts (break4 finding 02): a cast through I/O
// (ts::text: timestamptz_out) or through a STABLE function (ts::date)
// depends on the session's TimeZone/DateStyle and is reported STABLE; so
// are bytea/float output (bytea_output, extra_float_digits); now()::text is
// volatile. Casts whose functions are immutable are not reported, nor an
// enum's text (its labels are catalog, not session, state), nor an int
// array's (resolved through its element type).
func TestDirectionVolatilityCasts(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `
CREATE TYPE mood AS ENUM ('ok', 'sad');
CREATE DOMAIN stamp AS timestamptz;
CREATE TABLE c (id int PRIMARY KEY, ts timestamptz, amount int, n numeric(12,2), f float8, b bytea, m mood, tags int[], st stamp, s text)`)
	cols := []struct {
		name, expr, typ string
		stable          string // a substring of the Stable names; "" = none
		volatile        bool
	}{
		{"ts_text", "ts::text", "pg_catalog.text", "timestamptz_out", false},
		{"ts_date", "ts::date", "pg_catalog.date", "date()", false},
		{"now_text", "now()::text", "pg_catalog.text", "", true},
		{"coalesced", "coalesce(ts, 'epoch')::varchar", "pg_catalog.text", "timestamptz_out", false},
		{"parsed", "s::timestamptz", "pg_catalog.timestamptz", "timestamptz_in", false},
		{"domain_text", "st::text", "pg_catalog.text", "timestamptz_out", false},
		{"float_text", "f::text", "pg_catalog.text", "float8out", false},
		{"bytea_text", "b::text", "pg_catalog.text", "byteaout", false},
		{"id_text", "id::text", "pg_catalog.text", "", false},
		{"amount_numeric", "amount::numeric", "pg_catalog.numeric", "", false},
		{"n_numeric", "n::numeric", "pg_catalog.numeric", "", false},
		{"ts_ts", "ts::timestamptz", "pg_catalog.timestamptz", "", false},
		{"mood_text", "m::text", "pg_catalog.text", "", false},
		{"tags_text", "tags::text", "pg_catalog.text", "", false},
	}
	d := &Direction{Source: spec.QualifiedName{Schema: "public", Name: "c"}}
	for _, c := range cols {
		d.Columns = append(d.Columns, ColumnMap{Target: c.name, Expr: c.expr, Type: c.typ, Explicit: true})
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	vs, err := DirectionVolatility(ctx, tx, "public", d, "forward")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cols {
		v := vs[c.name]
		if got := len(v.Volatile) > 0; got != c.volatile {
			t.Errorf("%s (%s): volatile %v, want %v (%+v)", c.name, c.expr, v.Volatile, c.volatile, v)
		}
		stable := strings.Join(v.Stable, ", ")
		if c.stable == "" && !c.volatile && len(v.Stable) > 0 {
			t.Errorf("%s (%s): reported stable %q, want nothing", c.name, c.expr, stable)
		}
		if c.stable != "" && !strings.Contains(stable, c.stable) {
			t.Errorf("%s (%s): stable %q, want it to name %s", c.name, c.expr, stable, c.stable)
		}
	}
	if got := vs["ts_text"].Stable; !slices.Contains(got, "cast timestamp with time zone → text (timestamptz_out())") {
		t.Errorf("ts_text named %q", got)
	}
	reads, err := DirectionReads(ctx, tx, "public", d, "forward")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(reads["coalesced"], []string{"ts"}) || len(reads["now_text"]) != 0 {
		t.Errorf("reads: %v", reads)
	}
}
