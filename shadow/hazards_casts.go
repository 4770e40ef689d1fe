package shadow

import (
	"context"
	"strconv"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
)

// Casts through I/O (CoerceViaIO: ts::text, 'x'::date) call the source
// type's output function and the target type's input function, which the
// parse tree does not name as a funcid. timestamptz_out, date_in,
// interval_out, cash_out and friends are STABLE: their text depends on the
// session's TimeZone, DateStyle, IntervalStyle, lc_monetary. These are
// found here from the parse tree's text (nodeToString's format).

// ioSessionDependent are I/O functions marked IMMUTABLE whose text still
// depends on a session setting.
var ioSessionDependent = map[string]string{
	"float4out": "extra_float_digits", "float8out": "extra_float_digits", "byteaout": "bytea_output",
}

// ioCatalogOnly are STABLE I/O functions whose text depends on the catalog
// (enum labels), not on the session: they are not a mapping hazard. Arrays'
// functions are resolved through their element type instead.
var ioCatalogOnly = map[string]bool{"enum_in": true, "enum_out": true}

// ioCast is one CoerceViaIO: from type (0: not known) to type.
type ioCast struct{ from, to uint32 }

// ioCasts lists the CoerceViaIO nodes of tree with their argument's type.
func ioCasts(tree string) []ioCast {
	var out []ioCast
	for i := 0; ; {
		j := strings.Index(tree[i:], "{COERCEVIAIO ")
		if j < 0 {
			return out
		}
		start := i + j
		end := nodeEnd(tree, start)
		node := tree[start:end]
		c := ioCast{to: topField(node, "resulttype")}
		if k := strings.Index(node, ":arg {"); k >= 0 {
			arg := node[k+len(":arg "):]
			arg = arg[:nodeEnd(arg, 0)]
			c.from = exprType(arg)
		}
		out = append(out, c)
		i = start + len("{COERCEVIAIO ")
	}
}

// nodeEnd is the index just past the node that opens at s[start] ('{'),
// honouring nodeToString's backslash escapes.
func nodeEnd(s string, start int) int {
	depth := 0
	for i := start; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '{':
			depth++
		case '}':
			depth--
			if depth == 0 {
				return i + 1
			}
		}
	}
	return len(s)
}

// topField is the numeric value of field name at the top level of node
// (not inside a nested node), 0 when absent.
func topField(node, name string) uint32 {
	depth := 0
	tok := ":" + name + " "
	for i := 0; i < len(node); i++ {
		switch node[i] {
		case '\\':
			i++
		case '{':
			depth++
		case '}':
			depth--
		case ':':
			if depth == 1 && strings.HasPrefix(node[i:], tok) {
				v := node[i+len(tok):]
				if k := strings.IndexAny(v, " }"); k >= 0 {
					v = v[:k]
				}
				n, err := strconv.ParseUint(v, 10, 32)
				if err != nil {
					return 0
				}
				return uint32(n)
			}
		}
	}
	return 0
}

// typeFields name each expression node's result type in nodeToString.
var typeFields = map[string]string{
	"VAR": "vartype", "CONST": "consttype", "PARAM": "paramtype", "AGGREF": "aggtype", "WINDOWFUNC": "wintype",
	"SUBSCRIPTINGREF": "refrestype", "FUNCEXPR": "funcresulttype", "OPEXPR": "opresulttype",
	"DISTINCTEXPR": "opresulttype", "NULLIFEXPR": "opresulttype", "FIELDSELECT": "resulttype",
	"FIELDSTORE": "resulttype", "RELABELTYPE": "resulttype", "COERCEVIAIO": "resulttype",
	"ARRAYCOERCEEXPR": "resulttype", "CONVERTROWTYPEEXPR": "resulttype", "CASEEXPR": "casetype",
	"CASETESTEXPR": "typeId", "ARRAYEXPR": "array_typeid", "ROWEXPR": "row_typeid",
	"COALESCEEXPR": "coalescetype", "MINMAXEXPR": "minmaxtype", "SQLVALUEFUNCTION": "type",
	"COERCETODOMAIN": "resulttype", "COERCETODOMAINVALUE": "typeId", "SETTODEFAULT": "typeId",
	"NEXTVALUEEXPR": "typeId",
}

const boolOID = 16

// exprType is the result type of the expression node, 0 when not known.
func exprType(node string) uint32 {
	name := strings.TrimPrefix(node, "{")
	if k := strings.IndexAny(name, " }"); k >= 0 {
		name = name[:k]
	}
	switch name {
	case "BOOLEXPR", "NULLTEST", "BOOLEANTEST", "SCALARARRAYOPEXPR", "ROWCOMPAREEXPR", "CURRENTOFEXPR":
		return boolOID
	case "COLLATEEXPR", "NAMEDARGEXPR":
		if k := strings.Index(node, ":arg {"); k >= 0 {
			arg := node[k+len(":arg "):]
			return exprType(arg[:nodeEnd(arg, 0)])
		}
		return 0
	}
	if f, ok := typeFields[name]; ok {
		return topField(node, f)
	}
	return 0
}

// ioFunction is an I/O function a cast calls.
type ioFunction struct {
	name string // proname
	vol  string // provolatile, or "s" for a session-dependent one marked immutable
}

// ioFunctions returns the I/O function of typ (output when out, else
// input) that decides its text, resolving domains to their base type and
// arrays to their element type.
func ioFunctions(ctx context.Context, q db.Querier, typ uint32, out bool) (ioFunction, error) {
	var f ioFunction
	col := "typinput"
	if out {
		col = "typoutput"
	}
	err := q.QueryRow(ctx, `
WITH RECURSIVE base(oid, depth) AS (
  SELECT $1::oid, 0
  UNION ALL
  SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END, b.depth + 1
    FROM base b JOIN pg_type t ON t.oid = b.oid
   WHERE b.depth < 8 AND (t.typtype = 'd' OR (t.typelem <> 0 AND t.typsubscript = 'pg_catalog.array_subscript_handler'::regproc)))
SELECT p.proname::text, p.provolatile::text
  FROM base b JOIN pg_type t ON t.oid = b.oid JOIN pg_proc p ON p.oid = t.`+col+`
 ORDER BY b.depth DESC LIMIT 1`, typ).Scan(&f.name, &f.vol)
	if _, ok := ioSessionDependent[f.name]; ok {
		f.vol = "s"
	}
	if ioCatalogOnly[f.name] {
		f.vol = "i"
	}
	return f, err
}

// castVolatility adds to v the casts through I/O of tree whose output or
// input function is not immutable, named like "cast timestamp with time
// zone → text (timestamptz_out())"; seen dedups.
func castVolatility(ctx context.Context, q db.Querier, tree string, v *Volatility, seen map[string]bool) error {
	for _, c := range ioCasts(tree) {
		var from, to string
		if err := q.QueryRow(ctx, `SELECT coalesce(pg_catalog.format_type($1::oid, NULL), 'an expression'), pg_catalog.format_type($2::oid, NULL)`,
			c.from, c.to).Scan(&from, &to); err != nil {
			return err
		}
		var fns []ioFunction
		if c.from != 0 {
			f, err := ioFunctions(ctx, q, c.from, true)
			if err != nil {
				return err
			}
			fns = append(fns, f)
		} else {
			// The argument's type is not known here: be conservative.
			fns = append(fns, ioFunction{name: "its output function", vol: "s"})
		}
		f, err := ioFunctions(ctx, q, c.to, false)
		if err != nil {
			return err
		}
		fns = append(fns, f)
		for _, f := range fns {
			if f.vol == "i" {
				continue
			}
			name := "cast " + from + " → " + to + " (" + f.name + "())"
			if seen[name] {
				continue
			}
			seen[name] = true
			if f.vol == "v" {
				v.Volatile = append(v.Volatile, name)
			} else {
				v.Stable = append(v.Stable, name)
			}
		}
	}
	return nil
}
