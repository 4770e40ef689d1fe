package shadow

// Table splits (issue 15): how the one blue row and the rows of several
// greens correspond. The one source of truth for the split's backfill, its
// trigger bodies and the rebuild of the old shape that verify compares.

import (
	"fmt"
	"slices"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/sqllex"
	"github.com/greenswap/greenswap/spec"
)

// SplitGreen is one green of a split and how blue rows reach it.
type SplitGreen struct {
	Spec int    `json:"spec"` // index in spec.Split
	Name string `json:"name"` // bare; the table is Forward.Target, the alias in the rebuild
	// Forward maps a blue row to this green's row; TargetKey is the
	// green's key.
	Forward Direction `json:"forward"`
	// Where is the blue rows this green holds ("" = all), over the blue row.
	Where string `json:"where,omitempty"`
	// KeyOf[i] is the green column that holds blue key column Key[i].
	KeyOf []string `json:"key_of"`
	// Root: references no other green of the split. A blue row exists
	// exactly when some root holds its key.
	Root bool `json:"root"`
}

// SplitMapping is a split's mapping: blue's key, every green in write order
// (parents first), and how the blue row is rebuilt from the greens.
type SplitMapping struct {
	Blue     spec.QualifiedName `json:"blue"`
	Key      []string           `json:"key"`       // blue's sync key
	KeyTypes []string           `json:"key_types"` // blue's types of Key
	Greens   []SplitGreen       `json:"greens"`
	// Reverse computes each written blue column from the joined greens
	// (RebuildFrom): Expr names green columns as <green>.<column>, and
	// blue's key columns as gs_key.<column>.
	Reverse []ColumnMap `json:"reverse"`
	// Dropped are blue's columns no green carries (spec drop:); the rebuild
	// leaves them to blue's default.
	Dropped []string `json:"dropped,omitempty"`
}

// RebuildKeyAlias is the rebuild's row of blue keys, one per root row.
const RebuildKeyAlias = "gs_key"

// BuildSplitMapping derives a split's mapping from the spec, blue and the
// greens as they exist (greens[i] is spec.Split[i]'s table). Errors are
// *SpecError naming the spec field: a blue column no green carries and not
// in drop:, a dropped column that blue requires, a green without a key or
// whose key does not derive from blue's, a blue column without a reverse.
func BuildSplitMapping(s *spec.Spec, blue *Table, greens []*Table) (*SplitMapping, error) {
	key, err := chooseKey(s, blue)
	if err != nil {
		return nil, err
	}
	m := &SplitMapping{Blue: blue.Name, Key: key}
	for _, k := range key {
		m.KeyTypes = append(m.KeyTypes, QualifiedType(blue.Column(k).Type))
	}
	roots := s.SplitRoots()
	for _, i := range s.SplitOrder() {
		mem := s.SplitMember(i)
		g := greens[i]
		fwd, err := buildDirection(mem, "forward", s.Split[i].Forward, blue, g)
		if err != nil {
			return nil, err
		}
		gk := TableKey(g)
		if gk == nil {
			return nil, mem.Errorf("target.ddl", "add a PRIMARY KEY (or a UNIQUE index on NOT NULL columns), not DEFERRABLE",
				"green %s has no primary key or unique NOT NULL key: the split writes each green by blue's key", g.Name.Name)
		}
		fwd.TargetKey = gk
		keyOf, err := splitKeyOf(mem, fwd, key)
		if err != nil {
			return nil, err
		}
		m.Greens = append(m.Greens, SplitGreen{Spec: i, Name: g.Name.Name, Forward: *fwd, Where: s.Split[i].Where,
			KeyOf: keyOf, Root: slices.Contains(roots, i)})
	}
	for i, c := range s.Drop {
		bc := blue.Column(c)
		if bc == nil {
			return nil, s.Errorf(fmt.Sprintf("drop[%d]", i), "name a column of blue", "%s has no column %s", blue.Name, c)
		}
		if bc.NotNull && bc.Default == "" && bc.Identity == "" && bc.Generated == "" {
			return nil, s.Errorf(fmt.Sprintf("drop[%d]", i), fmt.Sprintf("carry %s in a green, or make it nullable or give it a default in blue first", c),
				"blue column %s is NOT NULL without a default: a write through a green could not rebuild the blue row without it", c)
		}
		m.Dropped = append(m.Dropped, c)
	}
	for name := range s.Reverse {
		if c := blue.Column(name); c == nil || c.Generated != "" {
			return nil, s.Errorf("reverse."+name, "keys under reverse name written columns of blue", "%s has no writable column %s", blue.Name, name)
		}
	}
	for _, c := range blue.Columns {
		if c.Generated != "" || slices.Contains(m.Dropped, c.Name) {
			continue
		}
		if !m.carried(c.Name) {
			return nil, s.Errorf("drop", fmt.Sprintf("map %s in some split[i].forward (or a green column of that name), or list it under drop:", c.Name),
				"blue column %s reaches no green", c.Name)
		}
		cm := ColumnMap{Target: c.Name, Type: QualifiedType(c.Type), Identity: c.Identity}
		switch e, ok := s.Reverse[c.Name]; {
		case ok:
			cm.Expr, cm.Explicit = e, true
		case slices.Contains(key, c.Name):
			cm.Expr = RebuildKeyAlias + "." + db.Ident(c.Name)
		default:
			var from []string
			for _, g := range m.Greens {
				if gc := g.Forward.Column(c.Name); gc != nil && !gc.Explicit {
					from = append(from, db.Ident(g.Name, c.Name))
				}
			}
			switch len(from) {
			case 0:
				return nil, s.Errorf("reverse", fmt.Sprintf("add reverse.%s: <expression over the greens, e.g. green.column>", c.Name),
					"blue column %s has no green column of that name to be rebuilt from", c.Name)
			case 1:
				cm.Expr = from[0]
			default:
				cm.Expr = "COALESCE(" + strings.Join(from, ", ") + ")"
			}
		}
		m.Reverse = append(m.Reverse, cm)
	}
	return m, nil
}

// carried reports whether blue column c reaches some green: mapped by name,
// or named in a green's forward expression.
func (m *SplitMapping) carried(c string) bool {
	for _, g := range m.Greens {
		for _, gc := range g.Forward.Columns {
			if !gc.Explicit && gc.Target == c {
				return true
			}
			if gc.Explicit && mentions(gc.Expr, c) {
				return true
			}
		}
	}
	return false
}

// mentions reports whether expression expr names identifier c.
func mentions(expr, c string) bool {
	toks, _ := sqllex.Tokens(expr)
	for _, t := range toks {
		if name, ok := t.Ident(); ok && name == c {
			return true
		}
	}
	return false
}

// splitKeyOf checks that every green key column is a blue key column,
// possibly cast (forward user_id: id, or id::bigint), each blue key column
// exactly once, and returns the green column of each blue key column.
func splitKeyOf(mem *spec.Spec, fwd *Direction, key []string) ([]string, error) {
	const fix = "make the green's key the blue key's columns, each mapped by name or as forward.<column>: <blue key column>[::type]"
	if len(fwd.TargetKey) != len(key) {
		return nil, mem.Errorf("target.ddl", fix, "green %s's key (%s) has %d columns, blue's (%s) %d",
			fwd.Target.Name, strings.Join(fwd.TargetKey, ", "), len(fwd.TargetKey), strings.Join(key, ", "), len(key))
	}
	keyOf := make([]string, len(key))
	for _, gk := range fwd.TargetKey {
		c := fwd.Column(gk)
		src := c.Target
		if c.Explicit {
			src = castOperand(c.Expr)
		}
		i := slices.Index(key, src)
		if i < 0 || keyOf[i] != "" {
			field := "target.ddl"
			if c.Explicit {
				field = "forward." + gk
			}
			return nil, mem.Errorf(field, fix, "green key column %s is not computed from one blue key column (blue's key is %s)", gk, strings.Join(key, ", "))
		}
		keyOf[i] = gk
	}
	return keyOf, nil
}

// castOperand is the column an expression of the form col, "col",
// col::type, (col)::type or CAST(col AS type) reads, "" for anything else.
func castOperand(expr string) string {
	toks, _ := sqllex.Tokens(expr)
	for len(toks) >= 2 && toks[0].IsPunct("(") && toks[len(toks)-1].IsPunct(")") {
		toks = toks[1 : len(toks)-1]
	}
	if len(toks) >= 4 && toks[0].Is("cast") && toks[1].IsPunct("(") && toks[3].Is("as") {
		toks = toks[2:3]
	}
	if len(toks) >= 3 && toks[0].IsPunct("(") && toks[2].IsPunct(")") {
		toks = append(toks[1:2:2], toks[3:]...)
	}
	if len(toks) == 0 {
		return ""
	}
	name, ok := toks[0].Ident()
	if !ok {
		return ""
	}
	if len(toks) == 1 || toks[1].IsPunct("::") {
		return name
	}
	return ""
}

// Green is the green of spec.Split[i].
func (m *SplitMapping) Green(i int) *SplitGreen {
	for k := range m.Greens {
		if m.Greens[k].Spec == i {
			return &m.Greens[k]
		}
	}
	return nil
}

// Roots are the root greens, in write order.
func (m *SplitMapping) Roots() []*SplitGreen {
	var out []*SplitGreen
	for k := range m.Greens {
		if m.Greens[k].Root {
			out = append(out, &m.Greens[k])
		}
	}
	return out
}

// RebuildFrom is the FROM clause that rebuilds blue rows from the greens
// in green schema greenSchema: the keys of every root (UNION ALL, as blue's
// key column names), filtered by keyFilter (a predicate over each root's
// alias r and its key columns, "" = all; see KeyFilter), then each green
// LEFT JOINed on them by its key, aliased by its name so that Reverse's
// expressions read it. Select Reverse's columns (ReverseSelectList) from it.
func (m *SplitMapping) RebuildFrom(greenSchema string, keyFilter func(g *SplitGreen) string) string {
	var roots []string
	for _, r := range m.Roots() {
		cols := make([]string, len(m.Key))
		for i, k := range m.Key {
			cols[i] = "r." + db.Ident(r.KeyOf[i]) + " AS " + db.Ident(k)
		}
		q := "SELECT " + strings.Join(cols, ", ") + " FROM " + db.Ident(greenSchema, r.Name) + " AS r"
		if keyFilter != nil {
			if f := keyFilter(r); f != "" {
				q += " WHERE " + f
			}
		}
		roots = append(roots, q)
	}
	from := "(" + strings.Join(roots, " UNION ALL ") + ") AS " + RebuildKeyAlias
	for _, g := range m.Greens {
		on := make([]string, len(m.Key))
		for i, k := range m.Key {
			on[i] = db.Ident(g.Name, g.KeyOf[i]) + " = " + db.Ident(RebuildKeyAlias, k)
		}
		from += " LEFT JOIN " + db.Ident(greenSchema, g.Name) + " AS " + db.Ident(g.Name) + " ON " + strings.Join(on, " AND ")
	}
	return from
}

// ReverseSelectList computes every written blue column from RebuildFrom's
// row: "CAST((expr) AS type) AS col, ...".
func (m *SplitMapping) ReverseSelectList() string {
	parts := make([]string, len(m.Reverse))
	for i, c := range m.Reverse {
		parts[i] = c.Cast(c.Expr) + " AS " + db.Ident(c.Target)
	}
	return strings.Join(parts, ", ")
}

// ReverseTargetList is the quoted list of the blue columns Reverse writes.
func (m *SplitMapping) ReverseTargetList() string {
	names := make([]string, len(m.Reverse))
	for i, c := range m.Reverse {
		names[i] = c.Target
	}
	return db.IdentList(names)
}

// RebuildSQL is the old shape rebuilt from the greens: every blue row as the
// greens say it is, blue's written columns in Reverse's order (verify's
// source of the rebuilt old shape; keyFilter as in RebuildFrom).
func (m *SplitMapping) RebuildSQL(greenSchema string, keyFilter func(g *SplitGreen) string) string {
	return "SELECT " + m.ReverseSelectList() + " FROM " + m.RebuildFrom(greenSchema, keyFilter)
}

// KeyFilter is a RebuildFrom key filter matching the blue key values vals
// (SQL expressions, one per Key column, e.g. a record's fields): each root's
// key columns, cast to blue's key types, equal to them.
func (m *SplitMapping) KeyFilter(vals []string) func(g *SplitGreen) string {
	return func(g *SplitGreen) string {
		parts := make([]string, len(m.Key))
		for i := range m.Key {
			parts[i] = "CAST(r." + db.Ident(g.KeyOf[i]) + " AS " + m.KeyTypes[i] + ") = " + vals[i]
		}
		return strings.Join(parts, " AND ")
	}
}

// NeedsOverriding reports whether rebuilt blue rows write a GENERATED
// ALWAYS identity column.
func (m *SplitMapping) NeedsOverriding() bool {
	for _, c := range m.Reverse {
		if c.Identity == "a" {
			return true
		}
	}
	return false
}

// GreenMapping is the one-table Mapping of green g (blue's key, g's forward
// direction): what the keyed backfill copies through, with g.Where as its
// filter. Its Reverse is empty: a green alone does not make a blue row.
func (m *SplitMapping) GreenMapping(g *SplitGreen) *Mapping {
	return &Mapping{Key: slices.Clone(m.Key), Forward: g.Forward}
}
