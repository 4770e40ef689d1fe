// Package rowsql builds the statements that move rows between blue and
// green through a shadow.Mapping: the backfill's copy batch, the upsert and
// delete of given keys (stream apply, verify repair), the key predicates
// they share, and the transaction settings they run under. Every caller
// that writes one side from the other takes its SQL from here, so the
// backfill, the stream, the repair, plan's preview and the test fixtures
// cannot drift apart (issue 13).
package rowsql

import (
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
)

// Param is one placeholder a statement expects, in the order they are
// numbered: $N is the Role value ("cursor", "upper": one key value as
// text; "keys": every key's value of one column as text[]) of Column.
type Param struct {
	N      int
	Role   string
	Column string
	Type   string // what the caller binds: "text" or "text[]"
}

// Stmt is a statement and the parameters it expects.
type Stmt struct {
	SQL    string
	Params []Param
}

// Conflict is what an insert does with a row whose target key is there.
type Conflict int

const (
	// Plain: no ON CONFLICT clause (a conflict is an error).
	Plain Conflict = iota
	// DoNothing keeps the target's row: it is newer than the copy.
	DoNothing
	// DoUpdate overwrites it from the mapping (Direction.UpdateSet); DO
	// NOTHING when every written column is the key or GENERATED ALWAYS.
	DoUpdate
)

// Builder writes the statements of one direction of the mapping.
type Builder struct {
	Dir  *shadow.Direction
	From string // the quoted source relation
	Into string // the quoted target relation
	// Premapped: the source rows hold the target columns' values already
	// (plan's mapped sample), selected by name instead of through the mapping.
	Premapped bool
	// Overriding writes OVERRIDING SYSTEM VALUE whether or not the mapping
	// writes a GENERATED ALWAYS column (plan: green as target.ddl declares
	// it, before sync turns an identity into a plain default).
	Overriding bool
	// Filter, when set, is a boolean expression over the source row that
	// the rows a copy reads must also satisfy (a split's green takes the
	// blue rows its where holds for; NULL is false).
	Filter string
}

// For is the Builder of d between its own Source and Target.
func For(d *shadow.Direction) Builder {
	return Builder{Dir: d, From: db.Ident(d.Source.Schema, d.Source.Name), Into: db.Ident(d.Target.Schema, d.Target.Name)}
}

// Insert is INSERT INTO the target's written columns (never a generated
// one: the mapping leaves them out), OVERRIDING SYSTEM VALUE when a
// GENERATED ALWAYS identity is written, SELECT the mapped values FROM from
// (one FROM item: the source row), then the ON CONFLICT clause on the
// target's key. Lines after the first are indented by indent.
func (b Builder) Insert(from string, c Conflict, indent string) string {
	overriding := ""
	if b.Overriding || b.Dir.NeedsOverriding() {
		overriding = " OVERRIDING SYSTEM VALUE"
	}
	sel := b.Dir.SelectList()
	if b.Premapped {
		sel = b.Dir.TargetList()
	}
	lines := []string{
		"INSERT INTO " + b.Into + " (" + b.Dir.TargetList() + ")" + overriding,
		"SELECT " + sel + " FROM " + from,
	}
	switch c {
	case DoNothing:
		lines = append(lines, "ON CONFLICT ("+db.IdentList(b.Dir.TargetKey)+") DO NOTHING")
	case DoUpdate:
		action := "DO NOTHING"
		if set := b.Dir.UpdateSet(); set != "" {
			action = "DO UPDATE SET " + set
		}
		lines = append(lines, "ON CONFLICT ("+db.IdentList(b.Dir.TargetKey)+") "+action)
	}
	return strings.Join(lines, "\n"+indent)
}

// Rows selects the source rows matching where ("" = all) in k's order,
// locked with lock ("" = not locked): the rows a copy reads, locked in
// key order so that two copies wait for each other rather than deadlock.
func (b Builder) Rows(where string, k Key, lock string) string {
	s := "SELECT * FROM " + b.From
	if b.Filter != "" {
		f := "COALESCE((" + b.Filter + ")::pg_catalog.bool, false)"
		if where != "" {
			where = "(" + where + ") AND " + f
		} else {
			where = f
		}
	}
	if where != "" {
		s += " WHERE " + where
	}
	s += " ORDER BY " + k.List()
	if lock != "" {
		s += " " + lock
	}
	return s
}

// CopyBatch copies one key range of the source: the rows with k in
// (cursor, upper] (after: a lower end, upper: an upper end), locked with
// lock (Mapping.SourceRowLock for the backfill). With onConflict the
// insert is ON CONFLICT DO NOTHING and the statement returns (rows
// inserted, rows read); without it the insert is plain, over a locking
// subquery that streams (a CTE read twice would be materialized), and its
// command tag counts both. Parameters: the cursor's values, then the
// upper end's, as text.
func (b Builder) CopyBatch(k Key, lock string, after, upper, onConflict bool) Stmt {
	where, ps := k.Range(after, upper, 1)
	rows := b.Rows(where, k, lock)
	if !onConflict {
		return Stmt{SQL: b.Insert("(\n\t\t"+rows+"\n\t) src", Plain, "\t"), Params: ps}
	}
	return Stmt{SQL: "WITH src AS (\n\t" + rows + "\n), ins AS (\n\t" + b.Insert("src", DoNothing, "\t") +
		"\n\tRETURNING 1\n)\nSELECT (SELECT pg_catalog.count(*) FROM ins), (SELECT pg_catalog.count(*) FROM src)", Params: ps}
}

// UpsertKeys re-copies the source rows of the bound keys (one text[] per
// column of k, cast to k.Types), locked with lock in key order,
// overwriting the target's rows (DoUpdate).
func (b Builder) UpsertKeys(k Key, lock string) Stmt {
	set, ps := k.Set(1)
	return Stmt{SQL: "WITH src AS (\n\t" + b.Rows(k.Row("")+" "+Op("=")+" ANY "+set, k, lock) + "\n)\n" + b.Insert("src", DoUpdate, ""), Params: ps}
}

// DeleteKeys deletes the target rows of the bound keys (one text[] per
// column of k, cast through casts in turn, see Key.Set). With orphans,
// only those no source row maps to any more: the source lacks the key,
// or its row now maps to another target key (a row left under an old
// green key when green's key reads a column outside blue's). srcTypes,
// when not nil, casts the target's key columns to the source's types for
// that match (types with no cross-type comparison).
func (b Builder) DeleteKeys(k Key, casts [][]string, orphans bool, srcTypes []string) Stmt {
	set, ps := k.Set(1, casts...)
	sql := "DELETE FROM " + b.Into + " AS g WHERE " + k.Row("g.") + " " + Op("=") + " ANY " + set
	if orphans {
		match := make([]string, len(k.Cols))
		for i, c := range k.Cols {
			ref := "g." + db.Ident(c)
			if srcTypes != nil {
				ref = "CAST(" + ref + " AS " + srcTypes[i] + ")"
			}
			match[i] = "s." + db.Ident(c) + " " + Op("=") + " " + ref
		}
		mapped := make([]string, len(b.Dir.TargetKey))
		target := make([]string, len(b.Dir.TargetKey))
		for i, c := range b.Dir.TargetKey {
			mapped[i] = b.Dir.ValueExpr(c) // bare source columns resolve to s, the innermost FROM item
			target[i] = "g." + db.Ident(c)
		}
		sql += " AND NOT EXISTS (SELECT 1 FROM " + b.From + " AS s WHERE " + strings.Join(match, " AND ") +
			" AND " + RowOf(mapped) + " " + Op("=") + " " + RowOf(target) + ")"
	}
	return Stmt{SQL: sql, Params: ps}
}

// UpsertReferenced re-copies the source rows that the bound keys' rows of
// another source table (child, keyed by childKey, one text[] per column)
// reference through childCols → cols, locked with lock in k's order,
// overwriting the target's rows (DoUpdate): the parents a re-read child
// row needs in the target before it can be written there (a stream that
// re-reads rows as of now can see a child whose parent's change it has not
// received yet).
func (b Builder) UpsertReferenced(k Key, cols []string, child string, childCols []string, childKey Key, lock string) Stmt {
	set, ps := childKey.Set(1)
	own := make([]string, len(cols))
	theirs := make([]string, len(childCols))
	for i := range cols {
		own[i] = db.Ident(cols[i])
		theirs[i] = "ch." + db.Ident(childCols[i])
	}
	where := RowOf(own) + " " + Op("=") + " ANY (SELECT " + RowOf(theirs) + " FROM " + child + " AS ch WHERE " + childKey.Row("ch.") + " " + Op("=") + " ANY " + set + ")"
	return Stmt{SQL: "WITH src AS (\n\t" + b.Rows(where, k, lock) + "\n)\n" + b.Insert("src", DoUpdate, ""), Params: ps}
}
