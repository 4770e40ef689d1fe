package spec

// Several tables in one migration (issue 14): the tables: form, its members
// and the dependency graph their target DDLs declare.

import (
	"fmt"
	"slices"
	"strings"

	"unicode/utf8"

	"github.com/greenswap/greenswap/internal/sqllex"
)

// TableSpec is one table of a multi-table spec: the single-table fields of
// Spec, for that table.
type TableSpec struct {
	Table   string            `yaml:"table" json:"table"`
	Key     []string          `yaml:"key" json:"key,omitempty"`
	Target  Target            `yaml:"target" json:"target"`
	Forward map[string]string `yaml:"forward" json:"forward,omitempty"`
	Reverse map[string]string `yaml:"reverse" json:"reverse,omitempty"`
}

// tableFields are the fields of one tables[i] entry, and the top-level
// fields a tables: spec must not also give.
var tableFields = []string{"table", "key", "target", "forward", "reverse"}

// MultiTable reports whether the spec uses the tables: form.
func (s *Spec) MultiTable() bool { return len(s.Tables) > 0 }

// Members is one single-table spec per table, referenced tables first, so
// every caller that walks them creates a referenced green before the green
// whose foreign key points at it. Each member shares Name, Mode, Sync and
// File with s; its Lines are re-keyed so that its own field paths
// ("target.ddl", "forward.x") give the line of tables[i].target.ddl..., and
// its errors name the field as tables[i].target.ddl. For a single-table spec
// it is []*Spec{s}. A spec with a dependency cycle (which Validate rejects)
// gets its members in file order.
func (s *Spec) Members() []*Spec {
	if !s.MultiTable() {
		return []*Spec{s}
	}
	order := s.Order()
	out := make([]*Spec, 0, len(order))
	for _, i := range order {
		out = append(out, s.member(i))
	}
	return out
}

// Order is the indexes of Tables in dependency order (Members' order).
func (s *Spec) Order() []int {
	order, _ := s.dependencyOrder()
	return order
}

// Member is the single-table spec of Tables[i] (see Members).
func (s *Spec) Member(i int) *Spec { return s.member(i) }

// ResolveReference is the index in Tables of the table a REFERENCES in
// Tables[i]'s target DDL names, or -1 when it names none of them.
func (s *Spec) ResolveReference(i int, name QualifiedName) int {
	apps := make([]QualifiedName, len(s.Tables))
	for j, t := range s.Tables {
		apps[j], _ = parseQualifiedName(t.Table)
	}
	return resolveMember(apps, i, name)
}

// member builds the single-table spec of tables[i].
func (s *Spec) member(i int) *Spec {
	t := s.Tables[i]
	m := &Spec{
		Name:    s.Name,
		Table:   t.Table,
		Mode:    s.Mode,
		Key:     slices.Clone(t.Key),
		Target:  Target{DDL: t.Target.DDL, Indexes: slices.Clone(t.Target.Indexes), Partitions: slices.Clone(t.Target.Partitions)},
		Forward: t.Forward,
		Reverse: t.Reverse,
		Sync:    s.Sync,
		File:    s.File,
		prefix:  fmt.Sprintf("tables[%d].", i),
	}
	if s.Lines != nil {
		m.Lines = map[string]int{}
		for k, v := range s.Lines {
			if rest, ok := strings.CutPrefix(k, m.prefix); ok {
				m.Lines[rest] = v
			} else if !strings.HasPrefix(k, "tables") && !isTableField(k) {
				m.Lines[k] = v // name, mode, sync...: shared
			}
		}
		// A member field with no line of its own (key left out) falls back
		// to its entry's line, not the first line of the file.
		if l := s.Lines[fmt.Sprintf("tables[%d]", i)]; l > 0 {
			for _, f := range tableFields {
				if _, ok := m.Lines[f]; !ok {
					m.Lines[f] = l
				}
			}
		}
	}
	return m
}

// isTableField reports whether field path f lies under one of tableFields:
// the fields a member takes from its entry, whose errors carry the
// member's tables[i]. prefix.
func isTableField(f string) bool {
	for _, t := range tableFields {
		if f == t || strings.HasPrefix(f, t+".") || strings.HasPrefix(f, t+"[") {
			return true
		}
	}
	return false
}

// FieldPath is where field is in the file, for errors built outside this
// package: a member's own fields sit under its tables[i].
func (s *Spec) FieldPath(field string) string { return s.fieldPath(field) }

func (s *Spec) fieldPath(field string) string {
	if s.splitItem {
		return s.splitFieldPath(field)
	}
	if s.prefix != "" && isTableField(field) {
		return s.prefix + field
	}
	return field
}

// ForeignKey is one REFERENCES clause of a target DDL (a column constraint
// or a FOREIGN KEY table constraint).
type ForeignKey struct {
	// Name is the constraint's name when CONSTRAINT name precedes it.
	Name string
	// Columns are the referencing columns in green (for a column
	// constraint, the column it is written on).
	Columns []string
	// Table is the referenced table as written: Schema is "" when it was
	// not qualified.
	Table QualifiedName
	// RefColumns are the referenced columns; nil means the referenced
	// table's primary key.
	RefColumns []string
	// Options are the clause's MATCH / ON DELETE / ON UPDATE /
	// DEFERRABLE / INITIALLY words, as written.
	Options string
	// Start and End are the clause's bytes in the DDL: for a table
	// constraint the whole element with the comma before it, for a column
	// constraint [CONSTRAINT name] REFERENCES ... options.
	Start, End int
}

// fkOptionWords may follow a REFERENCES clause's column list.
var fkOptionWords = []string{"match", "full", "partial", "simple", "on", "delete", "update", "cascade", "restrict",
	"no", "action", "deferrable", "initially", "deferred", "immediate"}

// ForeignKeys reads the REFERENCES clauses of a CREATE TABLE statement with
// the one SQL tokenizer. It reads what it can: text it cannot follow gives
// fewer foreign keys, and the server, rehearsing the DDL, has the last word.
func ForeignKeys(ddl string) []ForeignKey {
	toks, _ := sqllex.Tokens(ddl)
	// The column list starts at the first '(' after CREATE TABLE name.
	start := -1
	for i, t := range toks {
		if t.IsPunct("(") {
			start = i
			break
		}
	}
	if start < 0 {
		return nil
	}
	var out []ForeignKey
	depth := 0
	elemStart := start + 1
	for i := start; i < len(toks); i++ {
		t := toks[i]
		switch {
		case t.IsPunct("("), t.IsPunct("["):
			depth++
			continue
		case t.IsPunct(")"), t.IsPunct("]"):
			depth--
			if depth == 0 {
				return out
			}
			continue
		case t.IsPunct(",") && depth == 1:
			elemStart = i + 1
			continue
		}
		if depth != 1 || !t.Is("references") {
			continue
		}
		fk, end, ok := parseReferences(toks, i+1)
		if !ok {
			continue
		}
		fk.End = toks[end-1].End()
		clause := i
		if i >= 2 && toks[i-2].Is("constraint") {
			clause = i - 2
			fk.Name, _ = toks[i-1].Ident()
		}
		if cols, cstart, isTable := elementColumns(toks, elemStart, i); isTable {
			fk.Columns = cols
			// The whole element goes, with the comma that separates it.
			clause = cstart
			if cstart > start+1 && toks[cstart-1].IsPunct(",") {
				clause = cstart - 1
			}
			if cstart+1 < len(toks) && toks[cstart].Is("constraint") {
				fk.Name, _ = toks[cstart+1].Ident()
			}
		} else {
			fk.Columns = cols
		}
		fk.Start = toks[clause].Pos
		if end > i {
			fk.Options = strings.TrimSpace(ddl[optionsStart(toks, i+1, end):fk.End])
		}
		out = append(out, fk)
		i = end - 1
	}
	return out
}

// optionsStart is the offset where a clause's options begin: after the
// referenced name and its column list.
func optionsStart(toks []sqllex.Token, i, end int) int {
	for i < end && !toks[i].IsPunct("(") && slices.IndexFunc(fkOptionWords, toks[i].Is) < 0 {
		i++
	}
	if i < end && toks[i].IsPunct("(") {
		for i < end && !toks[i].IsPunct(")") {
			i++
		}
		i++
	}
	if i >= end {
		return toks[end-1].End()
	}
	return toks[i].Pos
}

// parseReferences reads "name [ (cols) ] [options]" after REFERENCES; end
// is the index after the clause.
func parseReferences(toks []sqllex.Token, i int) (fk ForeignKey, end int, ok bool) {
	var parts []string
	for i < len(toks) {
		name, ok := toks[i].Ident()
		if !ok {
			return ForeignKey{}, 0, false
		}
		parts = append(parts, name)
		i++
		if i < len(toks) && toks[i].IsPunct(".") {
			i++
			continue
		}
		break
	}
	switch len(parts) {
	case 1:
		fk.Table = QualifiedName{Name: parts[0]}
	case 2:
		fk.Table = QualifiedName{Schema: parts[0], Name: parts[1]}
	default:
		return ForeignKey{}, 0, false
	}
	if i < len(toks) && toks[i].IsPunct("(") {
		fk.RefColumns, i = identList(toks, i)
	}
	for i < len(toks) {
		t := toks[i]
		switch {
		case t.Is("not") && i+1 < len(toks) && toks[i+1].Is("deferrable"):
			i += 2
		case t.Is("set") && i+1 < len(toks) && (toks[i+1].Is("null") || toks[i+1].Is("default")):
			i += 2
			if i < len(toks) && toks[i].IsPunct("(") { // ON DELETE SET NULL (cols), PostgreSQL 15
				_, i = identList(toks, i)
			}
		case slices.IndexFunc(fkOptionWords, t.Is) >= 0:
			i++
		default:
			return fk, i, true
		}
	}
	return fk, i, true
}

// identList reads "(a, b, ...)" at toks[i]; it returns the names and the
// index after the ')'.
func identList(toks []sqllex.Token, i int) ([]string, int) {
	var out []string
	for i++; i < len(toks); i++ {
		t := toks[i]
		if t.IsPunct(")") {
			return out, i + 1
		}
		if t.IsPunct(",") {
			continue
		}
		if name, ok := t.Ident(); ok {
			out = append(out, name)
			continue
		}
		return nil, i
	}
	return nil, i
}

// elementColumns: the referencing columns of the table element
// toks[from:ref]. [CONSTRAINT name] FOREIGN KEY (a, b) is a table
// constraint (isTable) and gives a, b; a column definition gives its name.
func elementColumns(toks []sqllex.Token, from, ref int) (cols []string, start int, isTable bool) {
	for j := from; j+2 < ref; j++ {
		if toks[j].Is("foreign") && toks[j+1].Is("key") && toks[j+2].IsPunct("(") {
			cols, _ := identList(toks, j+2)
			return cols, from, true
		}
	}
	if from < ref && !toks[from].Is("constraint") {
		if name, ok := toks[from].Ident(); ok {
			return []string{name}, from, false
		}
	}
	return nil, from, false
}

// WithoutForeignKeys is ddl with the clauses of fks (from ForeignKeys of
// the same ddl) cut out: greens are created without the foreign keys among
// them, which are added NOT VALID once every green exists.
func WithoutForeignKeys(ddl string, fks []ForeignKey) string {
	sorted := slices.Clone(fks)
	slices.SortFunc(sorted, func(a, b ForeignKey) int { return b.Start - a.Start })
	for _, fk := range sorted {
		if fk.Start < 0 || fk.End > len(ddl) || fk.Start > fk.End {
			continue
		}
		ddl = ddl[:fk.Start] + " " + ddl[fk.End:]
	}
	return ddl
}

// Dependency is one edge of the graph: tables[From]'s target DDL references
// tables[To].
type Dependency struct {
	From, To int
	FK       ForeignKey
}

// Dependencies are the foreign keys among the migrated tables: an
// unqualified referenced name is resolved against the migrated tables'
// names (green's DDL runs in green's schema, where the migrated greens
// are), a qualified one against their app schemas. Self-references are
// left out: a tree in one table orders nothing.
func (s *Spec) Dependencies() []Dependency {
	apps := make([]QualifiedName, len(s.Tables))
	ddls := make([]string, len(s.Tables))
	for i, t := range s.Tables {
		apps[i], _ = parseQualifiedName(t.Table)
		ddls[i] = t.Target.DDL
	}
	return graphDependencies(apps, ddls)
}

// graphDependencies are the REFERENCES among the tables named apps whose
// DDLs are ddls (one graph for several tables and for a split's greens).
func graphDependencies(apps []QualifiedName, ddls []string) []Dependency {
	var out []Dependency
	for i, ddl := range ddls {
		for _, fk := range ForeignKeys(ddl) {
			j := resolveMember(apps, i, fk.Table)
			if j < 0 || j == i {
				continue
			}
			out = append(out, Dependency{From: i, To: j, FK: fk})
		}
	}
	return out
}

// resolveMember finds the migrated table name refers to, preferring table
// self for an unqualified name; -1 when it is none of them.
func resolveMember(apps []QualifiedName, self int, name QualifiedName) int {
	if name.Schema == "" {
		if apps[self].Name == name.Name {
			return self
		}
		for j, a := range apps {
			if a.Name == name.Name {
				return j
			}
		}
		return -1
	}
	for j, a := range apps {
		if a == name {
			return j
		}
	}
	return -1
}

// dependencyOrder is a topological order of the tables, referenced first,
// ties kept in file order; on a cycle it returns file order and the cycle
// (indexes, first repeated at the end).
func (s *Spec) dependencyOrder() ([]int, []int) {
	return graphOrder(len(s.Tables), s.Dependencies())
}

// graphOrder is dependencyOrder over n nodes and their edges.
func graphOrder(n int, edges []Dependency) ([]int, []int) {
	deps := make([][]int, n) // deps[i]: the nodes i references
	for _, d := range edges {
		if !slices.Contains(deps[d.From], d.To) {
			deps[d.From] = append(deps[d.From], d.To)
		}
	}
	state := make([]int, n) // 0 unvisited, 1 on the stack, 2 done
	var order, stack []int
	var cycle []int
	var visit func(i int) bool
	visit = func(i int) bool {
		state[i] = 1
		stack = append(stack, i)
		for _, j := range deps[i] {
			switch state[j] {
			case 1:
				k := slices.Index(stack, j)
				cycle = append(slices.Clone(stack[k:]), j)
				return false
			case 0:
				if !visit(j) {
					return false
				}
			}
		}
		stack = stack[:len(stack)-1]
		state[i] = 2
		order = append(order, i)
		return true
	}
	for i := range n {
		if state[i] == 0 && !visit(i) {
			file := make([]int, n)
			for k := range file {
				file[k] = k
			}
			return file, cycle
		}
	}
	return order, nil
}

// MaxIdentLen is PostgreSQL's NAMEDATALEN-1: longer names are truncated.
const MaxIdentLen = 63

// TruncateIdent cuts name to the bytes PostgreSQL keeps of an identifier,
// on a character boundary as the server does in a UTF-8 database.
func TruncateIdent(name string) string {
	if len(name) <= MaxIdentLen {
		return name
	}
	cut := MaxIdentLen
	for cut > 0 && !utf8.RuneStart(name[cut]) {
		cut--
	}
	return name[:cut]
}

// MemberFuncNames are the trigger functions of one member of a multi-table
// migration over table name: one forward and one reverse per table, since
// each maps its own columns.
func MemberFuncNames(table string) (forward, reverse string) {
	return TruncateIdent("gs_forward_" + table), TruncateIdent("gs_reverse_" + table)
}

// validateTables checks the several-tables form: no single-table field
// beside it, two or more entries, each valid as a single-table spec, no two
// whose names collide in the version schemas, and no dependency cycle.
func (s *Spec) validateTables() error {
	single := map[string]bool{
		"table": s.Table != "", "key": len(s.Key) > 0,
		"target":  s.Target.DDL != "" || len(s.Target.Indexes) > 0 || len(s.Target.Partitions) > 0,
		"forward": len(s.Forward) > 0, "reverse": len(s.Reverse) > 0,
	}
	for _, f := range tableFields {
		// By value, not by presence: the stored JSON of a tables: spec
		// carries an empty table and target.
		if single[f] {
			return s.specErr(f, "move it into its entry under tables:, or remove tables: for a one-table migration",
				"a spec with tables: names each table's fields in its entry, not at the top level")
		}
	}
	if len(s.Tables) < 2 {
		return s.specErr("tables", "list two or more tables, or write a one-table spec with table: and target: at the top level",
			"lists %d table: tables: is for several", len(s.Tables))
	}
	apps := make([]QualifiedName, len(s.Tables))
	byName := map[string]int{}
	byFunc := map[string]int{}
	for i := range s.Tables {
		m := s.member(i)
		if err := m.validateTable(); err != nil {
			return err
		}
		apps[i] = m.AppTable()
		f := fmt.Sprintf("tables[%d].table", i)
		if j, dup := byName[apps[i].Name]; dup {
			if apps[j] == apps[i] {
				return s.specErr(f, "list each table once", "%s is already tables[%d]", oneLineQuote(apps[i].String()), j)
			}
			return s.specErr(f, "migrate one of them in a migration of its own",
				"%s has the same name as tables[%d] (%s): their blues would both be %s",
				oneLineQuote(apps[i].String()), j, oneLineQuote(apps[j].String()), oneLineQuote("gs_"+s.Name+"_blue."+apps[i].Name))
		}
		byName[apps[i].Name] = i
		fwd, _ := MemberFuncNames(apps[i].Name)
		if j, dup := byFunc[fwd]; dup {
			return s.specErr(f, "shorten one of the table names: greenswap names each table's sync functions after it",
				"the sync functions of %s and tables[%d] (%s) would have the same name %s once cut to %d bytes",
				oneLineQuote(apps[i].Name), j, oneLineQuote(apps[j].Name), oneLineQuote(fwd), MaxIdentLen)
		}
		byFunc[fwd] = i
	}
	if _, cycle := s.dependencyOrder(); cycle != nil {
		names := make([]string, len(cycle))
		for k, i := range cycle {
			names[k] = apps[i].String()
		}
		return s.specErr(fmt.Sprintf("tables[%d].target.ddl", cycle[0]),
			"break the cycle: drop one of these REFERENCES from its target DDL (greenswap creates referenced greens first)",
			"the foreign keys among the migrated tables form a cycle: %s", strings.Join(names, " → "))
	}
	return nil
}
