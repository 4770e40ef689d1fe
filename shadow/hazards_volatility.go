package shadow

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/spec"
	"github.com/jackc/pgx/v5"
)

// Hazards: the mapping's volatility: the one detector plan and verify share.

// volatility: the mapping's volatility (DetectVolatility).
func (h *hazardScan) volatility() {
	for _, v := range h.in.Volatility {
		if len(v.Volatile) > 0 {
			// verify hashes the forward direction; a reverse expression
			// only enters its opposite-direction check (Bidirectional).
			excluded := "column excluded from verify"
			if strings.HasPrefix(v.Field, "reverse.") {
				excluded = "verify leaves it out of the reverse check, so a row written on green that differs from blue mapped forward in a green column only this expression reads is reported, not accepted"
			}
			h.add(Hazard{Code: HazardVolatileMapping, Severity: Warning,
				Message: fmt.Sprintf("%s calls %s: its value differs each time it is computed (backfill, trigger, verify), so checksums cannot match; %s",
					v.Field, strings.Join(v.Volatile, ", "), excluded),
				Fix:     "use an immutable expression if the value must be checked; otherwise accept that verify skips this column",
				Objects: []string{v.Field}})
		} else if len(v.Stable) > 0 {
			h.add(Hazard{Code: HazardStableMapping, Severity: Info,
				Message: fmt.Sprintf("%s calls %s (STABLE): its value depends on the writing session's settings (TimeZone, DateStyle, IntervalStyle, lc_monetary, extra_float_digits, search_path); the triggers compute it under each writer's settings and verify under its own, so rows written under other settings are reported different", v.Field, strings.Join(v.Stable, ", ")),
				Fix:     "keep the type, or convert under fixed settings (e.g. to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')); otherwise make sure every writer and greenswap itself run with the same settings",
				Objects: []string{v.Field}})
		}
	}
}

// sessionDependent are built-in functions (and SQL value keywords, which
// take no parentheses) whose value is not a function of the row: the time,
// the writing session, its transaction or its settings. Most are STABLE, not
// VOLATILE, in pg_proc, so the catalog alone would not flag them; recomputed
// by verify in its own session they differ from what the trigger or the
// backfill wrote. Read by the one detector (DirectionVolatility) that plan
// and verify both call.
var sessionDependent = map[string]bool{
	"now": true, "transaction_timestamp": true, "statement_timestamp": true,
	"clock_timestamp": true, "timeofday": true,
	"current_timestamp": true, "current_time": true, "current_date": true,
	"localtime": true, "localtimestamp": true,
	"current_user": true, "session_user": true, "user": true, "current_role": true,
	"current_setting": true, "pg_backend_pid": true, "pg_trigger_depth": true,
	"inet_client_addr": true, "inet_client_port": true, "inet_server_addr": true, "inet_server_port": true,
	"txid_current": true, "txid_current_if_assigned": true, "pg_current_xact_id": true,
	"pg_current_xact_id_if_assigned": true, "pg_postmaster_start_time": true, "pg_conf_load_time": true,
}

// isSessionDependent reports whether the function or SQL value keyword name
// (lower case, unqualified) is one whose value depends on the session, its
// transaction, its settings or the time (see sessionDependent).
func isSessionDependent(name string) bool { return sessionDependent[name] }

var (
	funcIDRE   = regexp.MustCompile(`:(?:funcid|opfuncid|aggfnoid|winfnoid) (\d+)`)
	sqlValueRE = regexp.MustCompile(`\{SQLVALUEFUNCTION :op (\d+)`)
)

// sqlValueFunctions names SQLValueFunction ops (PostgreSQL's enum
// SQLValueFunctionOp, stable since 10) for messages.
var sqlValueFunctions = []string{"CURRENT_DATE", "CURRENT_TIME", "CURRENT_TIME", "CURRENT_TIMESTAMP", "CURRENT_TIMESTAMP",
	"LOCALTIME", "LOCALTIME", "LOCALTIMESTAMP", "LOCALTIMESTAMP", "CURRENT_ROLE", "CURRENT_USER", "USER",
	"SESSION_USER", "CURRENT_CATALOG", "CURRENT_SCHEMA"}

// DetectVolatility checks every explicit expression of m (forward and
// reverse) for functions whose value is not a pure function of the row.
// It compiles each one into a throwaway view in schema (which must be
// disposable: plan passes the green schema of its rolled-back rehearsal),
// reads the functions the parse tree calls (pg_rewrite.ev_action: built-in
// functions are not recorded in pg_depend) and looks up their volatility.
// Volatile (or time/session-varying STABLE) expressions get
// ColumnMap.Volatile set. q must be a transaction: each probe runs in a
// savepoint that is rolled back. An expression that does not compile is a
// *SpecError pointing at its spec line.
func DetectVolatility(ctx context.Context, q db.Querier, s *spec.Spec, schema string, m *Mapping) ([]Volatility, error) {
	var out []Volatility
	for _, d := range []struct {
		field string
		dir   *Direction
	}{{"forward", &m.Forward}, {"reverse", &m.Reverse}} {
		vs, err := DirectionVolatility(ctx, q, schema, d.dir, d.field)
		if err != nil {
			var se *spec.SpecError
			if errors.As(err, &se) {
				se.File, se.Line = s.File, s.Line(se.Field)
				return nil, se
			}
			return nil, err
		}
		for i := range d.dir.Columns {
			c := &d.dir.Columns[i]
			v, ok := vs[c.Target]
			if !ok {
				continue
			}
			c.Volatile = len(v.Volatile) > 0
			if len(v.Volatile)+len(v.Stable)+len(v.Schemas) > 0 {
				out = append(out, v)
			}
		}
	}
	return out, nil
}

// DirectionVolatility is the one volatility detector: plan's hazards
// (through DetectVolatility) and verify's choice of the columns it compares
// both call it, so what plan says verify skips is what verify skips. It
// probes every explicit expression of d (field is "forward" or "reverse")
// and returns what it found per target column, Volatility.Field set; a
// column whose expression calls only IMMUTABLE functions has an entry with
// no names. q must be a transaction whose search_path is the one the
// expressions are evaluated under (Names.SearchPath); schema is where the
// throwaway view is created (each probe runs in a savepoint that is rolled
// back). An expression that does not compile is a *spec.SpecError naming
// its field (the caller adds file and line).
func DirectionVolatility(ctx context.Context, q db.Querier, schema string, d *Direction, field string) (map[string]Volatility, error) {
	out := map[string]Volatility{}
	for _, c := range d.Columns {
		if !c.Explicit {
			continue
		}
		f := field + "." + c.Target
		v, err := probeVolatility(ctx, q, schema, d, c.Target, sourceSide(field))
		if err != nil {
			var se *spec.SpecError
			if errors.As(err, &se) {
				se.Field = f
				return nil, se
			}
			return nil, fmt.Errorf("check volatility of %s: %w", f, err)
		}
		v.Field = f
		out[c.Target] = v
	}
	return out, nil
}

// withProbeView compiles the value expression of col into a throwaway
// view in schema, calls fn with the view's quoted name, and rolls the view
// back (a savepoint of q, which must be a transaction).
func withProbeView(ctx context.Context, q db.Querier, schema string, d *Direction, col, side string, fn func(view string) error) (err error) {
	if _, err := q.Exec(ctx, `SAVEPOINT gs_probe`); err != nil {
		return err
	}
	defer func() {
		if _, rerr := q.Exec(ctx, `ROLLBACK TO SAVEPOINT gs_probe`); rerr != nil && err == nil {
			err = rerr
		}
	}()
	view := db.Ident(schema, "gs_probe_volatility")
	_, err = q.Exec(ctx, "CREATE VIEW "+view+" AS SELECT "+d.ValueExpr(col)+" AS v FROM "+db.Ident(d.Source.Schema, d.Source.Name))
	if err != nil {
		return spec.NewError("", 0, "", "the expression does not compile: "+ErrText(err),
			"write one SQL expression over the "+side+" row's columns, named bare")
	}
	return fn(view)
}

// DirectionReads returns, for every column of d, the source columns its
// expression reads: the column of the same name for one mapped by name;
// for an explicit one, the columns its compiled parse tree depends on
// (pg_depend of a throwaway view; a whole-row reference reads them all).
// verify uses it to know which target columns an opposite-direction check
// actually looks at. q and schema as for DirectionVolatility.
func DirectionReads(ctx context.Context, q db.Querier, schema string, d *Direction, field string) (map[string][]string, error) {
	out := map[string][]string{}
	for _, c := range d.Columns {
		if !c.Explicit {
			out[c.Target] = []string{c.Target}
			continue
		}
		err := withProbeView(ctx, q, schema, d, c.Target, sourceSide(field), func(view string) error {
			var cols []string
			err := q.QueryRow(ctx, `
SELECT coalesce(array_agg(DISTINCT a.attname::text ORDER BY a.attname::text) FILTER (WHERE
         a.attnum = d.refobjsubid OR r.ev_action::text ~ '\{VAR :varno \d+ :varattno 0 [^}]*:varlevelsup 0 '), '{}')
  FROM pg_rewrite r
  JOIN pg_attribute a ON a.attrelid = $2::regclass AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
       AND d.refclassid = 'pg_class'::regclass AND d.refobjid = a.attrelid AND d.refobjsubid = a.attnum
 WHERE r.ev_class = $1::regclass`, view, db.Ident(d.Source.Schema, d.Source.Name)).Scan(&cols)
			out[c.Target] = cols
			return err
		})
		if err != nil {
			var se *spec.SpecError
			if errors.As(err, &se) {
				se.Field = field + "." + c.Target
				return nil, se
			}
			return nil, fmt.Errorf("read the columns of %s.%s: %w", field, c.Target, err)
		}
	}
	return out, nil
}

func probeVolatility(ctx context.Context, q db.Querier, schema string, d *Direction, col, side string) (v Volatility, err error) {
	var tree string
	err = withProbeView(ctx, q, schema, d, col, side, func(view string) error {
		if err := q.QueryRow(ctx, `SELECT ev_action::text FROM pg_rewrite WHERE ev_class = $1::regclass`, view).Scan(&tree); err != nil {
			return err
		}
		v, err = volatilityOfTree(ctx, q, tree)
		return err
	})
	return v, err
}

// volatilityOfTree classifies the functions a view's parse tree calls.
func volatilityOfTree(ctx context.Context, q db.Querier, tree string) (v Volatility, err error) {
	seen := map[string]bool{}
	for _, m := range sqlValueRE.FindAllStringSubmatch(tree, -1) {
		op, _ := strconv.Atoi(m[1])
		name := "SQL value function"
		if op >= 0 && op < len(sqlValueFunctions) {
			name = sqlValueFunctions[op]
		}
		if !seen[name] {
			seen[name] = true
			v.Volatile = append(v.Volatile, name)
		}
	}
	var oids []uint32
	for _, m := range funcIDRE.FindAllStringSubmatch(tree, -1) {
		id, _ := strconv.ParseUint(m[1], 10, 32)
		if id != 0 {
			oids = append(oids, uint32(id))
		}
	}
	if err := castVolatility(ctx, q, tree, &v, seen); err != nil {
		return v, err
	}
	if len(oids) == 0 {
		return v, nil
	}
	rows, err := q.Query(ctx, `
SELECT DISTINCT n.nspname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.oid = ANY ($1::oid[]) AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`, oids)
	if err != nil {
		return v, err
	}
	if v.Schemas, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return v, err
	}
	rows, err = q.Query(ctx, `
SELECT CASE WHEN n.nspname = 'pg_catalog' THEN p.proname::text ELSE n.nspname || '.' || p.proname END,
       p.proname::text, p.provolatile::text
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.oid = ANY ($1::oid[]) AND p.provolatile <> 'i'
 ORDER BY 1`, oids)
	if err != nil {
		return v, err
	}
	type fn struct{ display, name, vol string }
	fns, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (fn, error) {
		var f fn
		err := r.Scan(&f.display, &f.name, &f.vol)
		return f, err
	})
	if err != nil {
		return v, err
	}
	for _, f := range fns {
		name := f.display + "()"
		if seen[name] {
			continue
		}
		seen[name] = true
		if f.vol == "v" || isSessionDependent(f.name) {
			v.Volatile = append(v.Volatile, name)
		} else {
			v.Stable = append(v.Stable, name)
		}
	}
	return v, nil
}
