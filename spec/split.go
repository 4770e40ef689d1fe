package spec

// Table splits (issue 15): one blue table becomes several green tables,
// vertically (columns spread over greens that share blue's key) or
// horizontally (rows spread by a where over the blue row), or both.

import (
	"fmt"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// SplitTable is one green of a split: its table, as the DBA would write it,
// the forward mapping of its columns from the blue row, and which blue rows
// reach it.
type SplitTable struct {
	// Table is the green's name, bare: it lives in the green version
	// schema during the migration and takes this name in the app schema at
	// finalize.
	Table   string   `yaml:"table" json:"table"`
	DDL     string   `yaml:"ddl" json:"ddl"`
	Indexes []string `yaml:"indexes" json:"indexes,omitempty"`
	// Forward maps a green column to an expression over the blue row;
	// columns not listed take the blue column of the same name.
	Forward map[string]string `yaml:"forward" json:"forward,omitempty"`
	// Where is a boolean expression over the blue row: the blue rows this
	// green holds ("" = every row). It makes a split horizontal.
	Where string `yaml:"where" json:"where,omitempty"`
}

// splitFields are the fields of one split[i] entry.
var splitFields = []string{"table", "ddl", "indexes", "forward", "where"}

// IsSplit reports whether the spec splits one blue into several greens.
func (s *Spec) IsSplit() bool { return len(s.Split) > 0 }

// SplitMember is the single-table view of green i of a split: blue's table
// and key, the green's DDL, indexes and forward mapping. Its errors about
// the green's own fields name them where they are (split[i].ddl,
// split[i].forward.x); about blue's (table, key) at the top level.
func (s *Spec) SplitMember(i int) *Spec {
	t := s.Split[i]
	m := &Spec{
		Name:      s.Name,
		Table:     s.Table,
		Mode:      s.Mode,
		Key:       slices.Clone(s.Key),
		Target:    Target{DDL: t.DDL, Indexes: slices.Clone(t.Indexes)},
		Forward:   t.Forward,
		Sync:      s.Sync,
		File:      s.File,
		prefix:    fmt.Sprintf("split[%d].", i),
		splitItem: true,
	}
	if s.Lines != nil {
		m.Lines = map[string]int{}
		for k, v := range s.Lines {
			if rest, ok := strings.CutPrefix(k, m.prefix); ok {
				if rest == "table" {
					continue // the green's name; the member's table is blue
				}
				if rest == "ddl" || strings.HasPrefix(rest, "indexes") {
					rest = "target." + rest
				}
				m.Lines[rest] = v
			} else if !strings.HasPrefix(k, "split") && !strings.HasPrefix(k, "forward") && !strings.HasPrefix(k, "reverse") {
				m.Lines[k] = v // name, table, key, mode, sync...: blue's and the migration's
			}
		}
		if l := s.Lines[fmt.Sprintf("split[%d]", i)]; l > 0 {
			for _, f := range []string{"target.ddl", "forward"} {
				if _, ok := m.Lines[f]; !ok {
					m.Lines[f] = l
				}
			}
		}
	}
	return m
}

// splitFieldPath is fieldPath on a split member: the green's fields
// (target.ddl is written split[i].ddl) under split[i].; blue's at the top.
func (s *Spec) splitFieldPath(field string) string {
	switch {
	case strings.HasPrefix(field, "target."):
		return s.prefix + strings.TrimPrefix(field, "target.")
	case field == "forward" || strings.HasPrefix(field, "forward."):
		return s.prefix + field
	}
	return field
}

// SplitGreenName is green i's name as the DDL gives it (split[i].table,
// which Validate checks they agree on).
func (s *Spec) SplitGreenName(i int) string {
	q, msg := parseQualifiedName(s.Split[i].Table)
	if msg != "" {
		return strings.TrimSpace(s.Split[i].Table)
	}
	return q.Name
}

// splitGraph is the split's greens as graph nodes: their names in the green
// schema and their DDLs.
func (s *Spec) splitGraph() ([]QualifiedName, []string) {
	names := make([]QualifiedName, len(s.Split))
	ddls := make([]string, len(s.Split))
	for i := range s.Split {
		names[i] = QualifiedName{Schema: "gs_" + s.Name + "_green", Name: s.SplitGreenName(i)}
		ddls[i] = s.Split[i].DDL
	}
	return names, ddls
}

// SplitDependencies are the foreign keys among the greens of a split
// (From's DDL references To), resolved as among several tables' greens: an
// unqualified name is a green of the split.
func (s *Spec) SplitDependencies() []Dependency {
	return graphDependencies(s.splitGraph())
}

// SplitOrder is the indexes of Split in dependency order: a green after
// every green its DDL references (parents are written first, deleted last).
func (s *Spec) SplitOrder() []int {
	order, _ := graphOrder(len(s.Split), s.SplitDependencies())
	return order
}

// SplitRoots are the greens (indexes into Split, in SplitOrder) that
// reference no other green of the split: a blue row exists exactly when
// some root holds its key.
func (s *Spec) SplitRoots() []int {
	child := make([]bool, len(s.Split))
	for _, d := range s.SplitDependencies() {
		child[d.From] = true
	}
	var out []int
	for _, i := range s.SplitOrder() {
		if !child[i] {
			out = append(out, i)
		}
	}
	return out
}

// SplitFuncNames are the trigger functions of a split: one forward function
// on blue (and, after cutover, INSTEAD OF on the old-shape view) writing
// every green, and one reverse function per green rebuilding the blue row.
func SplitFuncNames(green string) (reverse string) {
	_, rev := MemberFuncNames(green)
	return rev
}

// validateSplit checks the split form without a database: no single-green
// or several-tables field beside it, trigger mode, two or more greens, each
// a valid green of blue (its DDL one CREATE TABLE of the table it names,
// its forward and where expressions), no green twice, no two whose sync
// functions collide, no cycle among their foreign keys; drop a list of
// distinct column names; reverse expressions. What needs the catalog
// (every blue column reaches a green or is dropped, each green's key
// derives from blue's) is shadow's (SplitMapping).
func (s *Spec) validateSplit() error {
	if len(s.Tables) > 0 {
		return s.specErr("tables", "split one table per migration, or migrate several tables without split:",
			"a spec gives split: (one blue into several greens) or tables: (several tables), not both")
	}
	if s.Target.DDL != "" || len(s.Target.Indexes) > 0 || len(s.Target.Partitions) > 0 {
		return s.specErr("target", "write each green's CREATE TABLE under split[i].ddl and remove target:",
			"a split has no single target: each green of split: has its own ddl")
	}
	if len(s.Forward) > 0 {
		return s.specErr("forward", "move each green's forward expressions into its entry under split:",
			"a split maps forward per green (split[i].forward), not at the top level")
	}
	if s.Mode == ModeLogical {
		return s.specErr("mode", "write mode: trigger (or leave it out): splits sync by triggers only for now",
			"mode: logical does not support split: yet")
	}
	if len(s.Split) < 2 {
		return s.specErr("split", "list two or more greens, or write a one-table spec with target: for one",
			"lists %d green: split: is for several", len(s.Split))
	}
	byName := map[string]int{}
	byFunc := map[string]int{}
	for i, t := range s.Split {
		f := fmt.Sprintf("split[%d].table", i)
		if strings.TrimSpace(t.Table) == "" {
			return s.specErr(f, "name the green table, e.g. table: user_profiles", "required")
		}
		q, msg := parseQualifiedName(t.Table)
		if msg != "" {
			return s.specErr(f, `write a bare table name; quote it with "" to keep case or special characters`,
				"invalid table name %s: %s", oneLineQuote(t.Table), msg)
		}
		if _, qualified := parseQualifiedName("public." + t.Table); qualified != "" {
			return s.specErr(f, "write the green's name without a schema: greens live in the green version schema, then in blue's app schema",
				"%s is schema-qualified", oneLineQuote(t.Table))
		}
		m := s.SplitMember(i)
		if err := m.validateTable(); err != nil {
			return err
		}
		if got := ddlTableName(t.DDL); got != q.Name {
			return s.specErr(fmt.Sprintf("split[%d].ddl", i), fmt.Sprintf("write CREATE TABLE %s (...), or change split[%d].table", oneLineQuote(q.Name), i),
				"creates table %s, but split[%d].table is %s", oneLineQuote(got), i, oneLineQuote(q.Name))
		}
		if ddlPartitioned(t.DDL) {
			return s.specErr(fmt.Sprintf("split[%d].ddl", i), "write a plain CREATE TABLE: a split's greens are not partitioned yet",
				"a partitioned green is not supported in a split")
		}
		if t.Where != "" {
			if msg, fix := checkExpression(t.Where); msg != "" {
				return s.specErr(fmt.Sprintf("split[%d].where", i), fix, "%s", msg)
			}
		}
		if j, dup := byName[q.Name]; dup {
			return s.specErr(f, "give each green its own name", "%s is already split[%d]", oneLineQuote(q.Name), j)
		}
		byName[q.Name] = i
		rev := SplitFuncNames(q.Name)
		if j, dup := byFunc[rev]; dup {
			return s.specErr(f, "shorten one of the green names: greenswap names each green's sync function after it",
				"the sync functions of %s and split[%d] would have the same name %s once cut to %d bytes",
				oneLineQuote(q.Name), j, oneLineQuote(rev), MaxIdentLen)
		}
		byFunc[rev] = i
	}
	if _, cycle := graphOrder(len(s.Split), s.SplitDependencies()); cycle != nil {
		names := make([]string, len(cycle))
		for k, i := range cycle {
			names[k] = s.SplitGreenName(i)
		}
		return s.specErr(fmt.Sprintf("split[%d].ddl", cycle[0]),
			"break the cycle: drop one of these REFERENCES (greenswap writes a referenced green first)",
			"the foreign keys among the greens form a cycle: %s", strings.Join(names, " → "))
	}
	if err := s.checkColumnList("drop", s.Drop, "write a column name of blue, or remove the item", "list each dropped column once"); err != nil {
		return err
	}
	for _, c := range sortedByLine(s, "reverse", s.Reverse) {
		f := "reverse." + c
		if strings.TrimSpace(c) == "" {
			return s.specErr(f, "write the blue column name before the ':'", "empty column name")
		}
		if slices.Contains(s.Drop, c) {
			return s.specErr(f, fmt.Sprintf("remove reverse.%s or drop[%d]", c, slices.Index(s.Drop, c)),
				"column %s is dropped, yet has a reverse expression", oneLineQuote(c))
		}
		if msg, fix := checkExpression(s.Reverse[c]); msg != "" {
			return s.specErr(f, fix, "%s", msg)
		}
	}
	return nil
}

// sortedByLine is the keys of m in file order (field path side.key), ties
// by name: the first problem reported is the first in the file.
func sortedByLine(s *Spec, side string, m map[string]string) []string {
	cols := make([]string, 0, len(m))
	for c := range m {
		cols = append(cols, c)
	}
	slices.SortFunc(cols, func(a, b string) int {
		la, lb := s.Lines[side+"."+a], s.Lines[side+"."+b]
		if la != lb {
			return la - lb
		}
		return strings.Compare(a, b)
	})
	return cols
}

// split decodes the split: list; lines go under split[i].
func (d *specDecoder) split(n *yaml.Node, path string, line int) ([]SplitTable, *SpecError) {
	var out []SplitTable
	err := d.mappings(n, path, line, "write one '- table: ...' item per green, each with its ddl and optional forward, where and indexes",
		"a list of green tables", "a mapping with table, ddl and so on", splitFields, func() fieldFunc {
			out = append(out, SplitTable{})
			t := &out[len(out)-1]
			return func(field, fpath string, fline int, v *yaml.Node) *SpecError {
				var err *SpecError
				switch field {
				case "table":
					t.Table, err = d.str(v, fpath, fline)
				case "ddl":
					t.DDL, err = d.str(v, fpath, fline)
				case "indexes":
					t.Indexes, err = d.strList(v, fpath, fline, "a list of CREATE INDEX statements", "write one '- CREATE INDEX ...' per index")
				case "forward":
					t.Forward, err = d.strMap(v, fpath, fline)
				case "where":
					t.Where, err = d.str(v, fpath, fline)
				}
				return err
			}
		})
	return out, err
}

// refuseMerge answers a merge: (several blues into one green) with what is
// supported instead of "unknown field": the inverse of a split is not built
// yet.
func (d *specDecoder) refuseMerge(root *yaml.Node) *SpecError {
	for i := 0; i+1 < len(root.Content); i += 2 {
		if k := resolveAlias(root.Content[i]); k.Kind == yaml.ScalarNode && k.Value == "merge" {
			return d.errf(k.Line, "merge", "migrate each table on its own for now; split: turns one table into several",
				"merging several tables into one is not supported yet")
		}
	}
	return nil
}
