package alter

// A type change on the blue-green path is not run by PostgreSQL's ALTER:
// the backfill and the triggers compute green's value from the mapping.
// The mapping must then do what the ALTER would have done, no more lossy
// and no more session-dependent:
//
//   - ALTER … TYPE coerces the old value (or the USING result) to the new
//     type with assignment semantics: a varchar(20) value too long for
//     varchar(5) is an error (22001). The mapping's CAST((expr) AS type) is
//     an explicit cast, which silently truncates varchar, char, bit and
//     varbit. The forward expression derived here calls the type's length
//     coercion function with isExplicit = false (read from pg_cast, not a
//     list of types), so what the ALTER refuses the backfill and triggers
//     refuse too.
//   - The ALTER converts every row in one session; the mapping converts in
//     the backfill's session and in each writer's trigger, each with its
//     own TimeZone, DateStyle, IntervalStyle, lc_monetary. A conversion
//     whose functions are STABLE (timestamp ↔ timestamptz, text → date,
//     timestamptz → text, money ↔ text, …) would give green different
//     values for the same blue value: it is a blocking hazard, found by
//     compiling the conversion and reading its functions' provolatile
//     (shadow.DirectionVolatility, the detector plan and verify share).
//     to_char, to_date and to_timestamp are STABLE (lc_time, TimeZone):
//     the catalog says so and it is believed; a spec's own forward for
//     the column is the way to use one (Plan.Overridden).

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// Hazard codes of the ALTER front door (part of plan's JSON: never rename).
const (
	// HazardSessionDependentConversion: a type change's conversion depends
	// on the session's settings (blocking for forward, a warning for the
	// derived reverse).
	HazardSessionDependentConversion = "alter_session_dependent_conversion"
	// HazardLengthCheckUnreproducible: the ALTER's length check cannot be
	// reproduced by the mapping (an array of a length-limited type, a key
	// column), so green could hold truncated values.
	HazardLengthCheckUnreproducible = "alter_length_check_unreproducible"
)

// stableConversion compiles the conversion sub (an AlterType) implies,
// CAST((USING or the column) AS new type), over the scratch as the earlier
// subcommands left it, and returns the STABLE functions it calls. A
// conversion that does not compile returns nothing: the rehearsal that
// follows reports it.
func (s *scratch) stableConversion(ctx context.Context, tempSchema string, sub Subcommand) ([]string, error) {
	src := sub.Using
	if src == "" {
		src = db.Ident(sub.Column)
	}
	d := &shadow.Direction{
		Source:  spec.QualifiedName{Schema: tempSchema, Name: s.blue.Name.Name},
		Columns: []shadow.ColumnMap{{Target: sub.Column, Expr: src, Type: sub.TypeName, Explicit: true}},
	}
	return s.stableIn(ctx, tempSchema, d, "forward")
}

// stableIn runs the shared volatility detector on d with the app's
// search_path (the expression's names resolve as the ALTER's would).
func (s *scratch) stableIn(ctx context.Context, tempSchema string, d *shadow.Direction, field string) ([]string, error) {
	if _, err := s.q.Exec(ctx, "SET LOCAL search_path TO "+shadow.SearchPathFor(s.blue.Name.Schema)); err != nil {
		return nil, err
	}
	vs, err := shadow.DirectionVolatility(ctx, s.q, tempSchema, d, field)
	if _, rerr := s.q.Exec(ctx, "SET LOCAL search_path TO pg_catalog, pg_temp"); rerr != nil && err == nil {
		err = rerr
	}
	var se *spec.SpecError
	if errors.As(err, &se) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("alter: rehearsal: the conversion of %s: %w", d.Columns[0].Target, err)
	}
	return vs[d.Columns[0].Target].Stable, nil
}

// sessionHazard is the blocking hazard of a forward conversion that
// depends on session settings.
func sessionHazard(blue *shadow.Table, sub Subcommand, stable []string) shadow.Hazard {
	old := "the old type"
	if c := blue.Column(sub.Column); c != nil {
		old = c.Type
	}
	what := "the conversion " + old + " → " + sub.TypeName
	if sub.Using != "" {
		what = "USING " + oneLine(sub.Using)
	}
	return shadow.Hazard{
		Code: HazardSessionDependentConversion, Severity: shadow.Blocking,
		Message: fmt.Sprintf("column %s: %s calls %s (STABLE): its result depends on the session's TimeZone, DateStyle, IntervalStyle or lc_monetary; the backfill and every writer's trigger would each convert under their own settings, so green would hold inconsistent values",
			sub.Column, what, strings.Join(stable, ", ")),
		Fix:     sessionFix(sub, old),
		Objects: []string{"forward." + sub.Column},
	}
}

// sessionFix says what to write instead: a USING that reads no session
// setting.
func sessionFix(sub Subcommand, old string) string {
	col := db.Ident(sub.Column)
	from, to := strings.ToLower(old), strings.ToLower(sub.TypeName)
	textual := func(t string) bool { return strings.Contains(t, "text") || strings.Contains(t, "char") }
	spec := fmt.Sprintf(" (to_date, to_char and to_timestamp are STABLE too: they read lc_time and TimeZone; if you need one, give it as forward.%s of a spec with alter:, after making sure every writer runs with the same settings)", sub.Column)
	timeish := func(t string) bool {
		return strings.Contains(t, "time") || strings.Contains(t, "date") || strings.Contains(t, "interval")
	}
	switch {
	case textual(from) && timeish(to):
		return fmt.Sprintf("parse without a session setting: ALTER COLUMN %s TYPE %s USING make_date(substr(%s, 1, 4)::int, substr(%s, 6, 2)::int, substr(%s, 9, 2)::int) (or make_timestamp / make_interval from its parts)", col, sub.TypeName, col, col, col) + spec
	case textual(to) && timeish(from):
		return fmt.Sprintf("format without a session setting: ALTER COLUMN %s TYPE %s USING an expression over extract(… FROM %s AT TIME ZONE 'UTC') parts", col, sub.TypeName, col) + spec
	case timeish(from) && timeish(to):
		return fmt.Sprintf("name the zone: ALTER COLUMN %s TYPE %s USING %s AT TIME ZONE 'UTC' (the zone the stored values mean)", col, sub.TypeName, col) + spec
	}
	return fmt.Sprintf("write ALTER COLUMN %s TYPE %s USING <an expression that reads no session setting>", col, sub.TypeName) + spec
}

// assignExpr is src coerced to green's column col the way the ALTER would
// (assignment semantics): when the column's type, or the base type of its
// domain, has a length coercion with an isExplicit argument and a typmod,
// that function with false; ok is false when no such check applies (the
// mapping's CAST behaves as the ALTER). unreproducible is set for an
// array whose elements have one: no expression applies it per element.
func assignExpr(ctx context.Context, q db.Querier, green *shadow.Table, col, src string) (expr string, ok, unreproducible bool, err error) {
	var (
		base    uint32
		mod     int32
		elem    uint32
		isArray bool
		typNsp  string
		typName string
	)
	err = q.QueryRow(ctx, `
WITH RECURSIVE t(oid, mod, depth) AS (
  SELECT a.atttypid, a.atttypmod, 0 FROM pg_catalog.pg_attribute a
   WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT ty.typbasetype, ty.typtypmod, t.depth + 1 FROM t JOIN pg_catalog.pg_type ty ON ty.oid = t.oid
   WHERE ty.typtype = 'd' AND t.depth < 8
)
SELECT t.oid, t.mod, ty.typelem, ty.typelem <> 0 AND ty.typsubscript = 'pg_catalog.array_subscript_handler'::pg_catalog.regproc,
       tn.nspname::text, ty.typname::text
  FROM t JOIN pg_catalog.pg_type ty ON ty.oid = t.oid JOIN pg_catalog.pg_namespace tn ON tn.oid = ty.typnamespace
 ORDER BY t.depth DESC LIMIT 1`, green.OID, col).Scan(&base, &mod, &elem, &isArray, &typNsp, &typName)
	if err != nil {
		return "", false, false, fmt.Errorf("alter: the type of green's %s: %w", col, err)
	}
	if mod < 0 {
		return "", false, false, nil
	}
	typ := base
	if isArray {
		typ = elem
	}
	var nsp, fn string
	err = q.QueryRow(ctx, `
SELECT n.nspname::text, p.proname::text
  FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE c.castsource = $1 AND c.casttarget = $1 AND c.castmethod = 'f' AND p.pronargs = 3
   AND p.proargtypes[2] = 'pg_catalog.bool'::pg_catalog.regtype`, typ).Scan(&nsp, &fn)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, false, nil
	}
	if err != nil {
		return "", false, false, fmt.Errorf("alter: the length coercion of green's %s: %w", col, err)
	}
	if isArray {
		return "", false, true, nil
	}
	// The type by its quoted catalog name: bare char or bit would mean
	// char(1), bit(1); a quoted name carries no typmod.
	return fmt.Sprintf("%s(CAST((%s) AS %s), %d, false)", db.Ident(nsp, fn), src, db.Ident(typNsp, typName), mod), true, false, nil
}
