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
	order, _ := s.dependencyOrder()
	out := make([]*Spec, 0, len(order))
	for _, i := range order {
		out = append(out, s.member(i))
	}
	return out
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

// fieldPath is the path an error about field names in the file: a member's
// own fields sit under its tables[i].
func (s *Spec) fieldPath(field string) string {
	if s.prefix != "" && isTableField(field) {
		return s.prefix + field
	}
	return field
}

// ForeignKey is one REFERENCES clause of a target DDL (a column constraint
// or a FOREIGN KEY table constraint).
type ForeignKey struct {
	// Columns are the referencing columns in green (for a column
	// constraint, the column it is written on).
	Columns []string
	// Table is the referenced table as written: Schema is "" when it was
	// not qualified.
	Table QualifiedName
	// RefColumns are the referenced columns; nil means the referenced
	// table's primary key.
	RefColumns []string
}

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
		fk, ok := parseReferences(toks, i+1)
		if !ok {
			continue
		}
		fk.Columns = elementColumns(toks, elemStart, i)
		out = append(out, fk)
	}
	return out
}

// parseReferences reads "name [ (cols) ]" after REFERENCES.
func parseReferences(toks []sqllex.Token, i int) (ForeignKey, bool) {
	var parts []string
	for i < len(toks) {
		name, ok := toks[i].Ident()
		if !ok {
			return ForeignKey{}, false
		}
		parts = append(parts, name)
		i++
		if i < len(toks) && toks[i].IsPunct(".") {
			i++
			continue
		}
		break
	}
	var fk ForeignKey
	switch len(parts) {
	case 1:
		fk.Table = QualifiedName{Name: parts[0]}
	case 2:
		fk.Table = QualifiedName{Schema: parts[0], Name: parts[1]}
	default:
		return ForeignKey{}, false
	}
	if i < len(toks) && toks[i].IsPunct("(") {
		fk.RefColumns, _ = identList(toks, i)
	}
	return fk, true
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
// toks[from:ref]: FOREIGN KEY (a, b) ... gives a, b; a column definition
// gives its name.
func elementColumns(toks []sqllex.Token, from, ref int) []string {
	for j := from; j+1 < ref; j++ {
		if toks[j].Is("foreign") && toks[j+1].Is("key") && j+2 < ref && toks[j+2].IsPunct("(") {
			cols, _ := identList(toks, j+2)
			return cols
		}
	}
	if from < ref && !toks[from].Is("constraint") {
		if name, ok := toks[from].Ident(); ok {
			return []string{name}
		}
	}
	return nil
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
	for i, t := range s.Tables {
		q, _ := parseQualifiedName(t.Table)
		apps[i] = q
	}
	var out []Dependency
	for i, t := range s.Tables {
		for _, fk := range ForeignKeys(t.Target.DDL) {
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
	n := len(s.Tables)
	deps := make([][]int, n) // deps[i]: the tables i references
	for _, d := range s.Dependencies() {
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
		if single[f] || s.Lines[f] > 0 {
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
