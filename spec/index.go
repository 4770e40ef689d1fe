package spec

import (
	"fmt"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/sqllex"
)

// IndexStmt is one target.indexes statement, parsed just enough to build it
// concurrently, to build it partition by partition on a partitioned table,
// and to find it again after a crash. Validate parses every item, so a spec
// that loaded has only statements that parse; plan and sync read them
// through Target.IndexStatements.
type IndexStmt struct {
	Source string // as written in the spec
	Name   string // the index name ("" when the statement names none)
	SQL    string // the statement with CONCURRENTLY, without a trailing ';'
	Unique bool
	// Table is the relation after ON [ONLY], as written: one part, or
	// schema and name (identifier rules applied).
	Table []string
	// Tail is the rest of the statement after the relation: [USING method]
	// (columns) [INCLUDE ...] [NULLS ...] [WITH ...] [TABLESPACE ...]
	// [WHERE ...]. Every partition's index repeats it, so it matches the
	// parent's and can be attached.
	Tail string
}

// IndexStatements is target.indexes parsed, in order. The error names the
// first statement that does not parse (none does in a validated spec).
func (t Target) IndexStatements() ([]IndexStmt, error) {
	out := make([]IndexStmt, 0, len(t.Indexes))
	for _, src := range t.Indexes {
		st, err := ParseIndexStmt(src)
		if err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// ParseIndexStmt reads "CREATE [UNIQUE] INDEX [IF NOT EXISTS] [name] ON
// [ONLY] table ..." (comments and quoted identifiers allowed), adds
// CONCURRENTLY after INDEX and extracts the name (folded to lower case
// unless quoted), the table and what follows it.
func ParseIndexStmt(src string) (IndexStmt, error) {
	l := sqllex.New(src)
	bad := func(what string) (IndexStmt, error) {
		if e := l.Err(); e != "" {
			what = e
		}
		return IndexStmt{}, fmt.Errorf("index statement %q: %s", oneLineStmt(src), what)
	}
	next := func() sqllex.Token { t, _ := l.Next(); return t }
	t := next()
	if !t.Is("create") {
		return bad("expected CREATE")
	}
	t = next()
	unique := t.Is("unique")
	if unique {
		t = next()
	}
	if !t.Is("index") {
		return bad("expected CREATE [UNIQUE] INDEX")
	}
	insertAt := t.End()
	t = next()
	if t.Is("concurrently") {
		return bad("remove CONCURRENTLY: greenswap adds it")
	}
	if t.Is("if") {
		if !next().Is("not") || !next().Is("exists") {
			return bad("expected IF NOT EXISTS")
		}
		t = next()
	}
	var name string
	if !t.Is("on") {
		n, ok := t.Ident()
		if !ok {
			return bad("expected an index name or ON")
		}
		name = n
		if !next().Is("on") {
			return bad("expected ON after the index name")
		}
	}
	t = next()
	if t.Is("only") {
		t = next()
	}
	part, ok := t.Ident()
	if !ok {
		return bad("expected the table after ON")
	}
	table := []string{part}
	rest, more := l.Next()
	if more && rest.IsPunct(".") {
		if part, ok = next().Ident(); !ok {
			return bad("expected the table's name after its schema")
		}
		table = append(table, part)
		rest, more = l.Next()
	}
	// Offsets are into src: trim its end only.
	body := strings.TrimRight(src, "; \t\r\n\f")
	tail := ""
	if more && rest.Pos < len(body) {
		tail = strings.TrimSpace(body[rest.Pos:])
	}
	if tail == "" {
		return bad("expected the index's columns after the table")
	}
	return IndexStmt{Source: src, Name: name, SQL: strings.TrimLeft(body[:insertAt]+" CONCURRENTLY"+body[insertAt:], " \t\r\n\f"),
		Unique: unique, Table: table, Tail: tail}, nil
}

// Create is "CREATE [UNIQUE] INDEX [CONCURRENTLY] name ON [ONLY] rel tail",
// rel already quoted: the statement rebuilt for one relation of a
// partition tree.
func (st IndexStmt) Create(name, rel string, only, concurrently bool) string {
	s := "CREATE "
	if st.Unique {
		s += "UNIQUE "
	}
	s += "INDEX "
	if concurrently {
		s += "CONCURRENTLY "
	}
	s += db.Ident(name) + " ON "
	if only {
		s += "ONLY "
	}
	return s + rel + " " + st.Tail
}

// checkIndexTable: a target.indexes statement may index only green, or one
// of green's own partitions, because sync builds it beside green and
// rollback drops only what lies in green's schema; an index on any other
// table would be built on a live table and outlive the migration. The
// names resolve as sync resolves them (green's schema first): bare, or
// qualified with green's schema. The app schema is refused too, since
// during sync the app name there is a view and any other table in it is
// not green. msg says what is wrong, fix what to do ("" when it is fine).
func (s *Spec) checkIndexTable(st IndexStmt) (msg, fix string) {
	green := ddlTableName(s.Target.DDL)
	if green == "" {
		green = s.AppTable().Name
	}
	greenSchema := "gs_" + s.Name + "_green"
	ok := map[string]bool{green: true}
	for _, src := range s.Target.Partitions {
		if p, m, _ := parsePartitionStmt(src); m == "" {
			ok[p.name] = true
		}
	}
	name := st.Table[len(st.Table)-1]
	qualifiedOK := len(st.Table) == 1 || st.Table[0] == greenSchema
	if ok[name] && qualifiedOK {
		return "", ""
	}
	return fmt.Sprintf("ON %s is not green (%s, the table of target.ddl)", db.Ident(st.Table...), db.Ident(green)),
		fmt.Sprintf("write ON %s, unqualified: greenswap builds target.indexes on green only (or on one of target.partitions)", db.Ident(green))
}

// ddlTableName is the name target.ddl's CREATE TABLE gives (its last part
// when qualified), "" when it does not read as one.
func ddlTableName(ddl string) string {
	l := sqllex.New(ddl)
	next := func() sqllex.Token { t, _ := l.Next(); return t }
	if !next().Is("create") {
		return ""
	}
	t := next()
	for t.Is("temp") || t.Is("temporary") || t.Is("unlogged") || t.Is("global") || t.Is("local") {
		t = next()
	}
	if !t.Is("table") {
		return ""
	}
	t = next()
	if t.Is("if") {
		if !next().Is("not") || !next().Is("exists") {
			return ""
		}
		t = next()
	}
	name, ok := t.Ident()
	if !ok {
		return ""
	}
	if dot, more := l.Next(); more && dot.IsPunct(".") {
		if name, ok = next().Ident(); !ok {
			return ""
		}
	}
	return name
}

func oneLineStmt(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return s
}
