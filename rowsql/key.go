package rowsql

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
)

// Key is a sync key as a statement walks or selects it: the key columns in
// the order the statement uses (ORDER BY, row values, the positions of the
// bound values) with one table's type of each, the type bound values are
// cast to.
type Key struct {
	Cols  []string
	Types []string
}

// KeyOrder puts key's columns in the order of an index of t, so that ORDER
// BY and row-value range predicates over them are index scans: the valid,
// non-partial unique index on exactly those columns (the primary key
// first: t.Indexes lists it first), else the first valid, non-partial
// btree index that leads with exactly those columns (on green, verify's
// source after cutover, blue's key need not be unique), else key as given.
func KeyOrder(t *shadow.Table, key []string) []string {
	usable := func(ix shadow.Index) bool { return ix.Valid && !ix.Partial && !ix.Expression }
	for _, ix := range t.Indexes {
		if usable(ix) && ix.Unique && len(ix.Columns) == len(key) && shadow.SameColumns(ix.Columns, key) {
			return slices.Clone(ix.Columns)
		}
	}
	for _, ix := range t.Indexes {
		if usable(ix) && isBtree(ix) && len(ix.Columns) >= len(key) && shadow.SameColumns(ix.Columns[:len(key)], key) {
			return slices.Clone(ix.Columns[:len(key)])
		}
	}
	return slices.Clone(key)
}

// HasIndexOn reports whether t has a valid, non-partial btree index leading
// with cols in that order.
func HasIndexOn(t *shadow.Table, cols []string) bool {
	for _, ix := range t.Indexes {
		if ix.Valid && !ix.Partial && !ix.Expression && isBtree(ix) && len(ix.Columns) >= len(cols) && slices.Equal(ix.Columns[:len(cols)], cols) {
			return true
		}
	}
	return false
}

func isBtree(ix shadow.Index) bool { return strings.Contains(ix.Def, " USING btree ") }

// WalkKey is key in t's index order (KeyOrder) with t's column types.
func WalkKey(t *shadow.Table, key []string) (Key, error) {
	return KeyAsGiven(t, KeyOrder(t, key))
}

// KeyAsGiven is cols in the order given with t's column types: for a caller
// whose bound values arrive in that order (the stream decodes keys in the
// mapping's key order).
func KeyAsGiven(t *shadow.Table, cols []string) (Key, error) {
	k := Key{Cols: slices.Clone(cols)}
	for _, c := range cols {
		col := t.Column(c)
		if col == nil {
			return Key{}, fmt.Errorf("key column %s is missing from %s", c, t.Name)
		}
		k.Types = append(k.Types, col.Type)
	}
	return k, nil
}

// List is the quoted column list: "a", "b" (ORDER BY, column lists).
func (k Key) List() string { return db.IdentList(k.Cols) }

// Row is the key as a row value over alias ("g." or ""), or the bare column
// for a one-column key (a one-element row constructor does not compare with
// a scalar, nor use the index the same way).
func (k Key) Row(alias string) string {
	p := make([]string, len(k.Cols))
	for i, c := range k.Cols {
		p[i] = alias + db.Ident(c)
	}
	return RowOf(p)
}

// RowOf is (a, b) for several parts and a bare a for one.
func RowOf(parts []string) string {
	if len(parts) == 1 {
		return parts[0]
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// Bind is one key value bound as text from $first on and cast to the key
// types, as a row value like Row's.
func (k Key) Bind(first int) string {
	p := make([]string, len(k.Types))
	for i, t := range k.Types {
		p[i] = "CAST($" + strconv.Itoa(first+i) + " AS " + t + ")"
	}
	return RowOf(p)
}

// Op names pg_catalog's operator op. A bare operator resolves through the
// search_path, and an operator planted for a key's exact type (varchar,
// where pg_catalog has only text's) wins over pg_catalog's reached through
// a cast: on a single-column key it would run in greenswap's session. A
// row comparison takes the qualified name too and keeps its index scan.
func Op(op string) string { return "OPERATOR(pg_catalog." + op + ")" }

// Range is the predicate lhs > lo AND lhs <= hi of a keyed batch, each end
// present only when asked for: lo bound from $first, then hi. Key order
// under row-value comparison is the index's order (Row over KeyOrder).
func (k Key) Range(after, upper bool, first int) (string, []Param) {
	var conds []string
	var ps []Param
	next := first
	if after {
		conds = append(conds, k.Row("")+" "+Op(">")+" "+k.Bind(next))
		ps = append(ps, k.params("cursor", next, "text")...)
		next += len(k.Cols)
	}
	if upper {
		conds = append(conds, k.Row("")+" "+Op("<=")+" "+k.Bind(next))
		ps = append(ps, k.params("upper", next, "text")...)
	}
	return strings.Join(conds, " AND "), ps
}

// AsText selects the key columns as text, aliased gs_k<i>: left with the
// column's own name, an "ORDER BY id" beside it would sort by the text.
func (k Key) AsText() string {
	p := make([]string, len(k.Cols))
	for i, c := range k.Cols {
		p[i] = fmt.Sprintf("CAST(%s AS text) AS gs_k%d", db.Ident(c), i)
	}
	return strings.Join(p, ", ")
}

// Set is a subquery of the keys bound as one text[] per key column from
// $first on, each value cast through casts in turn (none: to k.Types):
// (SELECT CAST(u.gs_k0 AS t) … FROM ROWS FROM (pg_catalog.unnest($1::text[]) …) AS u(gs_k0 …)).
func (k Key) Set(first int, casts ...[]string) (string, []Param) {
	if len(casts) == 0 {
		casts = [][]string{k.Types}
	}
	arrays := make([]string, len(k.Cols))
	names := make([]string, len(k.Cols))
	sel := make([]string, len(k.Cols))
	for i := range k.Cols {
		arrays[i] = "$" + strconv.Itoa(first+i) + "::text[]"
		names[i] = "gs_k" + strconv.Itoa(i)
		sel[i] = "u." + names[i]
		for _, c := range casts {
			sel[i] = "CAST(" + sel[i] + " AS " + c[i] + ")"
		}
	}
	return "(SELECT " + strings.Join(sel, ", ") + " FROM " + RowsFromUnnest(arrays) + " AS u(" + strings.Join(names, ", ") + "))",
		k.params("keys", first, "text[]")
}

// RowsFromUnnest zips arrays into rows: ROWS FROM (pg_catalog.unnest(a), …).
// The multi-argument unnest(a, b) is syntax that exists only unqualified,
// and an unqualified unnest can resolve to an overload in the app schema,
// which is on the copying session's search_path.
func RowsFromUnnest(arrays []string) string {
	calls := make([]string, len(arrays))
	for i, a := range arrays {
		calls[i] = "pg_catalog.unnest(" + a + ")"
	}
	return "ROWS FROM (" + strings.Join(calls, ", ") + ")"
}

func (k Key) params(role string, first int, typ string) []Param {
	ps := make([]Param, len(k.Cols))
	for i, c := range k.Cols {
		ps[i] = Param{N: first + i, Role: role, Column: c, Type: typ}
	}
	return ps
}

// KeyArgs are keys (each one value per key column, as text) as Set's
// parameters: one text[] per key column.
func KeyArgs(keys [][]string, ncols int) []any {
	args := make([]any, ncols)
	for i := range args {
		col := make([]string, len(keys))
		for j, k := range keys {
			col[j] = k[i]
		}
		args[i] = col
	}
	return args
}
