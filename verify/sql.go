package verify

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/rowsql"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// side is one of the two tables as the comparison queries see it.
type side struct {
	label string // "blue" or "green"
	name  spec.QualifiedName
	rel   string // quoted relation
	// keyRef is how a predicate names each key column: the quoted column,
	// or a cast/collation wrapper when it cannot be compared with the
	// source's key type directly (then indexed is false).
	keyRef []string
	// keyType is this table's own type of each key column.
	keyType []string
	// indexed: a valid btree index leads with the key columns in chunk
	// order, so one chunk is an index range scan. Without one the side is
	// read once, grouped by chunk (width_bucket), instead of once per chunk.
	indexed bool
	hash    string // order-independent hash term of one row, over compared columns
}

// chunk is a key range [Lo, Hi): nil Lo = from the start, nil Hi = to the end.
// Values are text in the source's key types.
type chunk struct {
	idx    int
	lo, hi []string
}

// plan is everything Run needs to generate its SQL, computed once.
type plan struct {
	dir       *shadow.Direction
	other     *shadow.Direction // the opposite direction (bidirectional acceptance)
	src, dst  side
	key       []string // key columns, in chunk (index) order
	srcType   []string // source types of the key columns: the type of boundary values
	compared  []string // target columns hashed and compared
	otherCols []string // source columns checked through the opposite direction
	// covered[i]: some otherCols expression reads compared[i], so a
	// difference there may be accepted through the opposite direction.
	covered   []bool
	appSchema string
	castKeys  bool // key types are not directly comparable: compare through casts
	// asText[i]: compared[i] is compared by its text output (exact mode,
	// or its type has no equality/extended hash support); else by the
	// type's own equality and hash (-0 = 0, 1.0 = 1.00).
	asText []bool
	// textRow: hash the whole row's text output (exact mode, or a server
	// before PostgreSQL 14 without hash_record_extended).
	textRow bool
}

// cmpTerm is how compared column i of a row (its value written as v) enters
// hashes and comparisons.
func (p *plan) cmpTerm(i int, v string) string {
	if p.asText[i] {
		return "(" + v + ")::text"
	}
	return v
}

// rowHash is the order-independent hash term of one row whose compared
// column i is vals[i]: one 64-bit hash; chunks compare count and sum.
func (p *plan) rowHash(vals []string) string {
	if p.textRow {
		return "pg_catalog.hashtextextended(ROW(" + strings.Join(vals, ", ") + ")::pg_catalog.text, 0::pg_catalog.int8)"
	}
	terms := make([]string, len(vals))
	for i, v := range vals {
		terms[i] = p.cmpTerm(i, v)
	}
	return "pg_catalog.hash_record_extended(ROW(" + strings.Join(terms, ", ") + "), 0::pg_catalog.int8)"
}

// rangePred is the WHERE clause selecting chunk c on s; args are appended
// to *args and numbered after them. The bounds are bound as text and cast
// to the source's key types (rowsql.Key.Bind), compared as row values with
// s's key references.
func (p *plan) rangePred(s *side, c chunk, args *[]any) string {
	if c.lo == nil && c.hi == nil {
		return "true"
	}
	lhs := rowsql.RowOf(s.keyRef)
	k := p.srcKey()
	param := func(vals []string) string {
		first := len(*args) + 1
		for _, v := range vals {
			*args = append(*args, v)
		}
		return k.Bind(first)
	}
	var conds []string
	if c.lo != nil {
		conds = append(conds, lhs+" "+rowsql.Op(">=")+" "+param(c.lo))
	}
	if c.hi != nil {
		conds = append(conds, lhs+" "+rowsql.Op("<")+" "+param(c.hi))
	}
	return strings.Join(conds, " AND ")
}

// srcKey is the chunk key (in chunk order) with the source's types: the
// type of boundary values and of the keys a repair is given.
func (p *plan) srcKey() rowsql.Key { return rowsql.Key{Cols: p.key, Types: p.srcType} }

// chunkSQL counts and hashes one chunk of s.
func (p *plan) chunkSQL(s *side, c chunk) (string, []any) {
	var args []any
	where := p.rangePred(s, c, &args)
	return "SELECT pg_catalog.count(*), coalesce(pg_catalog.sum(" + s.hash + "), 0)::text FROM " + s.rel + " WHERE " + where, args
}

// groupedSQL counts and hashes every chunk of s in one scan: each row goes
// to its chunk by width_bucket over the chunk boundaries (the lower bounds
// of chunks 1..n-1), which is exactly the [lo, hi) assignment of rangePred.
func (p *plan) groupedSQL(s *side, chunks []chunk) (string, []any) {
	var args []any
	bucket := "0"
	if len(chunks) > 1 {
		bounds := make([]string, 0, len(chunks)-1)
		for _, c := range chunks[1:] {
			parts := make([]string, len(c.lo))
			for i, v := range c.lo {
				args = append(args, v)
				parts[i] = "$" + strconv.Itoa(len(args)) + "::" + p.srcType[i]
			}
			if len(parts) == 1 {
				bounds = append(bounds, parts[0])
			} else {
				bounds = append(bounds, "ROW("+strings.Join(parts, ", ")+")")
			}
		}
		operand := s.keyRef[0]
		if len(s.keyRef) > 1 {
			refs := make([]string, len(s.keyRef))
			for i, r := range s.keyRef {
				refs[i] = castTo(r, s.keyType[i], p.srcType[i])
			}
			operand = "ROW(" + strings.Join(refs, ", ") + ")"
		} else {
			operand = castTo(operand, s.keyType[0], p.srcType[0])
		}
		bucket = "pg_catalog.width_bucket(" + operand + ", ARRAY[" + strings.Join(bounds, ", ") + "])"
	}
	return "SELECT " + bucket + "::int AS b, pg_catalog.count(*), coalesce(pg_catalog.sum(" + s.hash + "), 0)::text FROM " + s.rel + " GROUP BY 1", args
}

// castTo casts ref to type to unless it already has it. width_bucket needs
// the operand and the thresholds of one type.
func castTo(ref, have, want string) string {
	if have == want || strings.HasPrefix(ref, "CAST(") {
		return ref
	}
	return "CAST(" + ref + " AS " + want + ")"
}

// drillSQL lists the rows of chunks [from, to] that differ: the mapped
// source rows and the target rows, full-joined on the key. Output columns:
// in source, in target, key text..., source image, target image, indexes
// (1-based into compared) of differing columns, accepted through the
// opposite direction.
func (p *plan) drillSQL(c chunk, width int) (string, []any) {
	var args []any
	sWhere := p.rangePred(&p.src, c, &args)
	tWhere := p.rangePred(&p.dst, c, &args)
	var sSel, tSel, on, keyOut, sImg, tImg, diffs []string
	for i, k := range p.key {
		ki := "k" + strconv.Itoa(i)
		sSel = append(sSel, p.dir.ValueExpr(k)+" AS "+ki)
		tSel = append(tSel, db.Ident(k)+" AS "+ki)
		on = append(on, "s."+ki+" "+rowsql.Op("=")+" t."+ki)
		keyOut = append(keyOut, "coalesce(s."+ki+", t."+ki+")::text")
	}
	var sCmp, tCmp []string
	for i, col := range p.compared {
		ci := "c" + strconv.Itoa(i)
		sSel = append(sSel, p.dir.CompareExpr(col)+" AS "+ci)
		tSel = append(tSel, db.Ident(col)+" AS "+ci)
		sImg = append(sImg, "s."+ci)
		tImg = append(tImg, "t."+ci)
		sc, tc := p.cmpTerm(i, "s."+ci), p.cmpTerm(i, "t."+ci)
		if p.textRow {
			sc, tc = "s."+ci+"::text", "t."+ci+"::text"
		}
		sCmp = append(sCmp, sc)
		tCmp = append(tCmp, tc)
		diffs = append(diffs, fmt.Sprintf("CASE WHEN %s IS DISTINCT FROM %s THEN %d END", sc, tc, i+1))
	}
	accepted := "false"
	if p.other != nil && len(p.otherCols) > 0 {
		raw := make([]string, len(p.otherCols))
		back := make([]string, len(p.otherCols))
		for i, col := range p.otherCols {
			raw[i] = db.Ident(col)
			back[i] = p.other.ValueExpr(col)
		}
		sSel = append(sSel, "ROW("+strings.Join(raw, ", ")+")::text AS raw")
		tSel = append(tSel, "ROW("+strings.Join(back, ", ")+")::text AS back")
		accepted = "(s.k0 IS NOT NULL AND t.k0 IS NOT NULL AND s.raw = t.back)"
	}
	sRow := "ROW(" + strings.Join(sImg, ", ") + ")::text"
	tRow := "ROW(" + strings.Join(tImg, ", ") + ")::text"
	w := strconv.Itoa(width + 1)
	order := make([]string, len(p.key))
	for i := range p.key {
		order[i] = strconv.Itoa(3 + i)
	}
	sql := "WITH s AS (SELECT " + strings.Join(sSel, ", ") + " FROM " + p.src.rel + " WHERE " + sWhere + "),\n" +
		" t AS (SELECT " + strings.Join(tSel, ", ") + " FROM " + p.dst.rel + " WHERE " + tWhere + ")\n" +
		"SELECT s.k0 IS NOT NULL, t.k0 IS NOT NULL, " + strings.Join(keyOut, ", ") + ",\n" +
		" pg_catalog.left(" + sRow + ", " + w + "), pg_catalog.left(" + tRow + ", " + w + "),\n" +
		" pg_catalog.array_remove(ARRAY[" + strings.Join(diffs, ", ") + "]::int[], NULL),\n" +
		" " + accepted + "\n" +
		"FROM s FULL JOIN t ON " + strings.Join(on, " AND ") + "\n" +
		"WHERE s.k0 IS NULL OR t.k0 IS NULL OR " + p.rowDistinct(sCmp, tCmp, sRow, tRow) + "\n" +
		"ORDER BY " + strings.Join(order, ", ")
	return sql, args
}

// rowDistinct is the row-level test matching rowHash: the rows' text when
// the hash is over the row's text, else column by column.
func (p *plan) rowDistinct(sCmp, tCmp []string, sRow, tRow string) string {
	if p.textRow {
		return sRow + " IS DISTINCT FROM " + tRow
	}
	return "ROW(" + strings.Join(sCmp, ", ") + ") IS DISTINCT FROM ROW(" + strings.Join(tCmp, ", ") + ")"
}

// repairDeleteSQL deletes target rows with these keys that the source no
// longer has, or whose target key is not the one the source row now maps to
// (a row left under an old green key when green's key reads a blue column
// outside blue's key). The keys are text in the target's key types.
func (p *plan) repairDeleteSQL(keys [][]string) (string, []any) {
	var srcTypes []string
	if p.castKeys {
		srcTypes = p.srcType
	}
	st := p.repairBuilder().DeleteKeys(p.srcKey(), [][]string{p.dst.keyType}, true, srcTypes)
	return st.SQL, rowsql.KeyArgs(keys, len(p.key))
}

// repairUpsertSQL copies the source rows with these keys to the target
// through the mapping, as the backfill does, but overwriting: the source
// rows are locked FOR NO KEY UPDATE (in key order) so a concurrent update
// of one of them waits until this copy commits, and then its own trigger
// writes the newer value (with FOR KEY SHARE the concurrent update could
// commit in between and this upsert would overwrite it with the older image).
func (p *plan) repairUpsertSQL(keys [][]string) (string, []any) {
	st := p.repairBuilder().UpsertKeys(p.srcKey(), "FOR NO KEY UPDATE")
	return st.SQL, rowsql.KeyArgs(keys, len(p.key))
}

func (p *plan) repairBuilder() rowsql.Builder {
	b := rowsql.For(p.dir)
	b.From, b.Into = p.src.rel, p.dst.rel
	return b
}

// comparable reports whether dst's key columns compare with values of the
// source's key types directly (a cross-type operator exists), by planning
// a query that does it.
func comparable(ctx context.Context, q db.Querier, rel string, refs, srcTypes []string) bool {
	nulls := make([]string, len(srcTypes))
	for i, t := range srcTypes {
		nulls[i] = "NULL::" + t
	}
	_, err := q.Exec(ctx, "EXPLAIN SELECT 1 FROM "+rel+" WHERE "+rowsql.RowOf(refs)+" >= "+rowsql.RowOf(nulls))
	return err == nil
}

// hashable reports whether values of type typ have an equality and an
// extended hash function (hash_record_extended needs one for every
// field; json, xml, point and the like have none and are compared as text).
func hashable(ctx context.Context, q db.Querier, typ string) bool {
	var h int64
	return q.QueryRow(ctx, "SELECT pg_catalog.hash_record_extended(ROW(NULL::"+typ+"), 0::pg_catalog.int8)").Scan(&h) == nil
}

// catalogEquality says whether pg_catalog has an = for exactly typ. The
// listing of differing rows compares with IS DISTINCT FROM, which finds =
// by name: for a type that reaches pg_catalog's through a cast or a
// polymorphic match (varchar, arrays, enums, domains) an = planted for the
// exact type in a schema on the path would win and run in verify's
// session. Such types are compared by their text output instead.
func catalogEquality(ctx context.Context, q db.Querier, typ string) bool {
	var ok bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_catalog.pg_operator o
		WHERE o.oprname OPERATOR(pg_catalog.=) '='
		  AND o.oprleft OPERATOR(pg_catalog.=) CAST($1 AS pg_catalog.regtype)
		  AND o.oprright OPERATOR(pg_catalog.=) CAST($1 AS pg_catalog.regtype)
		  AND o.oprnamespace OPERATOR(pg_catalog.=) CAST('pg_catalog' AS pg_catalog.regnamespace))`, typ).Scan(&ok)
	return err == nil && ok
}
