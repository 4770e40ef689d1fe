package shadow

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/spec"
)

// ColumnMap is how one target column gets its value from a source row.
type ColumnMap struct {
	Target   string `json:"target"`
	Expr     string `json:"expr"`     // SQL over the source row's columns, referenced by bare name
	Type     string `json:"type"`     // the target column's type; values are cast to it
	Explicit bool   `json:"explicit"` // written in the spec (forward/reverse), not mapped by name
	Identity string `json:"identity,omitempty"`
	Volatile bool   `json:"volatile,omitempty"` // set by plan: the expression is not immutable/stable
}

// Direction is one way of the mapping: every writable column of Target with
// the expression that computes it from a Source row.
type Direction struct {
	Source  spec.QualifiedName `json:"source"`
	Target  spec.QualifiedName `json:"target"`
	Columns []ColumnMap        `json:"columns"`
	// TargetKey is the unique key of Target that upserts conflict on; every
	// one of its columns is in Columns, so it can be computed from a source row.
	TargetKey []string `json:"target_key"`
}

// Mapping is the single source of truth for how blue and green rows
// correspond. Backfill, trigger bodies and checksums are all generated from
// it, so they cannot disagree.
type Mapping struct {
	// Key is blue's unique key used for keyed batches and checksum chunks.
	// Every key column exists in green under the same name, mapped by name.
	Key     []string  `json:"key"`
	Forward Direction `json:"forward"` // blue → green
	Reverse Direction `json:"reverse"` // green → blue
}

// BuildMapping derives the mapping from the spec and the two tables as they
// exist in the database. Errors are *SpecError pointing at the spec line.
func BuildMapping(s *spec.Spec, blue, green *Table) (*Mapping, error) {
	key, err := chooseKey(s, blue)
	if err != nil {
		return nil, err
	}
	fwd, err := buildDirection(s, "forward", s.Forward, blue, green)
	if err != nil {
		return nil, err
	}
	rev, err := buildDirection(s, "reverse", s.Reverse, green, blue)
	if err != nil {
		return nil, err
	}
	m := &Mapping{Key: key, Forward: *fwd, Reverse: *rev}
	for _, k := range key {
		gc := green.Column(k)
		if gc == nil {
			return nil, s.Errorf("key", "keep the key columns in target.ddl under the same names, or choose another key",
				"key column %s is missing from the green table", k)
		}
		if _, ok := s.Forward[k]; ok {
			return nil, s.Errorf("forward."+k, "key columns are matched between blue and green by value; remove this forward mapping",
				"key column %s cannot have a forward expression", k)
		}
	}
	gk := TableKey(green)
	if gk == nil {
		return nil, s.Errorf("target.ddl", "add a PRIMARY KEY (or a UNIQUE index on NOT NULL columns), not DEFERRABLE, to the green table",
			"green table has no primary key or unique NOT NULL key, so changes cannot be applied to it by key")
	}
	for _, c := range gk {
		if m.Forward.Column(c) == nil {
			return nil, s.Errorf("target.ddl", fmt.Sprintf("add forward.%s, or map it by name from a blue column", c),
				"green key column %s is not computed from blue rows", c)
		}
	}
	m.Forward.TargetKey = gk
	m.Reverse.TargetKey = key
	for _, c := range key {
		if m.Reverse.Column(c) == nil {
			return nil, s.Errorf("key", "keep the key column in the green table", "blue key column %s is not computed from green rows", c)
		}
	}
	return m, nil
}

// chooseKey returns the spec's key if given (it must be exactly the columns
// of a unique index), else the primary key, else the first unique index whose
// columns are all NOT NULL.
func chooseKey(s *spec.Spec, blue *Table) ([]string, error) {
	if len(s.Key) > 0 {
		for _, k := range s.Key {
			c := blue.Column(k)
			if c == nil {
				return nil, s.Errorf("key", "name columns of the table", "column %s does not exist in %s", k, blue.Name)
			}
			if !c.NotNull {
				return nil, s.Errorf("key", "key columns must be NOT NULL", "column %s is nullable", k)
			}
		}
		for _, ix := range blue.Indexes {
			if usableKey(ix) && SameColumns(ix.Columns, s.Key) {
				return slices.Clone(s.Key), nil
			}
		}
		for _, ix := range blue.Indexes {
			if ix.Unique && ix.Deferrable && SameColumns(ix.Columns, s.Key) {
				return nil, s.Errorf("key", "make the constraint NOT DEFERRABLE, or name another unique key",
					"(%s) is unique only at commit (DEFERRABLE): sync upserts need an immediate unique key", strings.Join(s.Key, ", "))
			}
		}
		return nil, s.Errorf("key", "name the columns of a primary key or unique index", "(%s) is not unique in %s: no primary key or unique index on exactly these columns",
			strings.Join(s.Key, ", "), blue.Name)
	}
	if k := TableKey(blue); k != nil {
		return k, nil
	}
	return nil, s.Errorf("table", "add a primary key or a unique index on NOT NULL columns (not DEFERRABLE), or set key:", "%s has no usable key", blue.Name)
}

// TableKey is the primary key's columns, else those of the first valid,
// non-partial unique index on NOT NULL columns, else nil.
//
// A DEFERRABLE key is never usable: ON CONFLICT cannot use it as an arbiter,
// and with row triggers firing after a whole statement, a key swap inside one
// UPDATE (1→2, 2→1) would delete the row just written.
func TableKey(t *Table) []string {
	if t.PrimaryKey != nil && usableKey(*t.PrimaryKey) {
		return slices.Clone(t.PrimaryKey.Columns)
	}
	for _, ix := range t.Indexes {
		if !usableKey(ix) {
			continue
		}
		ok := true
		for _, c := range ix.Columns {
			if col := t.Column(c); col == nil || !col.NotNull {
				ok = false
			}
		}
		if ok {
			return slices.Clone(ix.Columns)
		}
	}
	return nil
}

func usableKey(ix Index) bool {
	return ix.Unique && ix.Valid && !ix.Deferrable && !ix.Partial && !ix.Expression
}

func buildDirection(s *spec.Spec, field string, exprs map[string]string, src, dst *Table) (*Direction, error) {
	d := &Direction{Source: src.Name, Target: dst.Name}
	for name := range exprs {
		c := dst.Column(name)
		if c == nil {
			return nil, s.Errorf(field+"."+name, "keys under "+field+" name columns of the "+targetSide(field)+" table",
				"%s has no column %s", dst.Name, name)
		}
		if c.Generated != "" {
			return nil, s.Errorf(field+"."+name, "remove it: generated columns compute themselves", "column %s is generated", name)
		}
	}
	for _, c := range dst.Columns {
		if c.Generated != "" {
			continue // stored generated columns are never written
		}
		cm := ColumnMap{Target: c.Name, Type: QualifiedType(c.Type), Identity: c.Identity}
		if e, ok := exprs[c.Name]; ok {
			cm.Expr, cm.Explicit = e, true
		} else if src.Column(c.Name) != nil {
			cm.Expr = db.Ident(c.Name)
		} else if c.NotNull && c.Default == "" && c.Identity == "" {
			return nil, s.Errorf(field, fmt.Sprintf("add %s.%s: <SQL expression over a %s row>", field, c.Name, sourceSide(field)),
				"%s column %s is NOT NULL, has no default and no %s column of that name", targetSide(field), c.Name, sourceSide(field))
		} else {
			continue // left to the target's default (or NULL)
		}
		d.Columns = append(d.Columns, cm)
	}
	return d, nil
}

func targetSide(field string) string {
	if field == "forward" {
		return "green"
	}
	return "blue"
}

func sourceSide(field string) string {
	if field == "forward" {
		return "blue"
	}
	return "green"
}

// SameColumns reports whether a and b name the same columns, in any order.
func SameColumns(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// Column returns the mapping of target column name, or nil.
func (d *Direction) Column(name string) *ColumnMap {
	for i := range d.Columns {
		if d.Columns[i].Target == name {
			return &d.Columns[i]
		}
	}
	return nil
}

// TargetList is the quoted, comma-separated list of written target columns.
func (d *Direction) TargetList() string {
	names := make([]string, len(d.Columns))
	for i, c := range d.Columns {
		names[i] = c.Target
	}
	return db.IdentList(names)
}

// SelectList computes every written target column from one source row:
// "CAST((expr) AS type) AS col, ...". The expressions name source columns
// bare, so the FROM clause it goes with must have exactly one item: the source row.
func (d *Direction) SelectList() string {
	parts := make([]string, len(d.Columns))
	for i, c := range d.Columns {
		parts[i] = d.ValueExpr(c.Target) + " AS " + db.Ident(c.Target)
	}
	return strings.Join(parts, ", ")
}

// ValueExpr is the cast expression computing target column name from a source row.
func (d *Direction) ValueExpr(name string) string {
	c := d.Column(name)
	return c.Cast(c.Expr)
}

// CompareExpr is what verify compares target column name with: the value
// ValueExpr would write, except that a by-name column of a length-limited
// type is taken at the source's full length (cast to the unconstrained
// type), so a row cut short in the target differs instead of comparing
// equal through the same cut, and verify never fails on it as the write
// would.
func (d *Direction) CompareExpr(name string) string {
	c := d.Column(name)
	if _, base, _, ok := lengthCheck(c); ok {
		return "CAST((" + c.Expr + ") AS " + base + ")"
	}
	return c.Cast(c.Expr)
}

// Cast is expr (over a source row) converted to the column's type. A column
// mapped by name is converted as ALTER TABLE … TYPE would (assignment
// semantics): a value too long for varchar(n), char(n) or bit varying(n),
// or of the wrong length for bit(n), fails with 22001/22026 where the
// explicit CAST would silently cut (or pad) it. numeric(p,s) and the
// time types' precision round under either, as the ALTER does, so they
// keep the plain CAST. A written (forward/reverse) expression keeps the
// explicit CAST: what it computes is its author's choice.
func (c ColumnMap) Cast(expr string) string {
	if fn, base, mod, ok := lengthCheck(&c); ok {
		return "CAST(" + fn + "(CAST((" + expr + ") AS " + base + "), " + strconv.Itoa(mod) + ", false) AS " + c.Type + ")"
	}
	return "CAST((" + expr + ") AS " + c.Type + ")"
}

// NarrowingKind names the length-limited type family of a by-name column
// whose value is length-checked on write ("" for none): plan warns when the
// source column is wider.
func (c ColumnMap) NarrowingKind() string {
	fn, _, _, ok := lengthCheck(&c)
	if !ok {
		return ""
	}
	return fn
}

// lengthCheck is, for a by-name column whose type format_type spells as a
// length-limited character or bit type, the length coercion function
// (whose third argument false gives assignment semantics), the type
// without typmod (by its quoted catalog name: bare char or bit would mean
// char(1), bit(1)) and the typmod. Arrays and domains are not covered: no
// single expression checks every element, and a domain's base type is not
// in the spelling.
func lengthCheck(c *ColumnMap) (fn, base string, mod int, ok bool) {
	if c.Explicit {
		return "", "", 0, false
	}
	for _, k := range []struct {
		prefix, fn string
		header     int
	}{
		{"character varying(", `pg_catalog."varchar"`, 4},
		{"character(", "pg_catalog.bpchar", 4},
		{"bit varying(", "pg_catalog.varbit", 0},
		{"bit(", `pg_catalog."bit"`, 0},
	} {
		rest, found := strings.CutPrefix(c.Type, k.prefix)
		if !found {
			continue
		}
		num, found := strings.CutSuffix(rest, ")")
		if !found {
			return "", "", 0, false
		}
		n, err := strconv.Atoi(num)
		if err != nil || n <= 0 {
			return "", "", 0, false
		}
		return k.fn, k.fn, n + k.header, true
	}
	return "", "", 0, false
}

// NeedsOverriding reports whether inserts need OVERRIDING SYSTEM VALUE
// because a GENERATED ALWAYS identity column is written.
func (d *Direction) NeedsOverriding() bool {
	for _, c := range d.Columns {
		if c.Identity == "a" {
			return true
		}
	}
	return false
}

// UpdateSet is the DO UPDATE SET list for an upsert: every written column but
// the conflict key and GENERATED ALWAYS identity columns (PostgreSQL lets
// those be updated only to DEFAULT, so their values never change).
func (d *Direction) UpdateSet() string {
	var parts []string
	for _, c := range d.Columns {
		if slices.Contains(d.TargetKey, c.Target) || c.Identity == "a" {
			continue
		}
		parts = append(parts, db.Ident(c.Target)+" = EXCLUDED."+db.Ident(c.Target))
	}
	return strings.Join(parts, ", ")
}

// SourceRowLock is the row lock a batch that copies blue rows into green
// takes on them (trap 1: a concurrent DELETE must wait for the batch, so its
// trigger finds the copied row). FOR KEY SHARE suffices when green's key is
// blue's key columns mapped by name: only deletes and key updates can then
// move a row in green. When green's key reads any other blue column (a new
// primary key such as (tenant, id) over blue's (id)), a plain UPDATE of that
// column moves the green row too, so the batch must block it: FOR SHARE.
func (m *Mapping) SourceRowLock() string {
	for _, k := range m.Forward.TargetKey {
		c := m.Forward.Column(k)
		if c == nil || c.Explicit || !slices.Contains(m.Key, k) {
			return "FOR SHARE"
		}
	}
	return "FOR KEY SHARE"
}

// QualifiedType is a column type as loadColumns spells it (format_type,
// other schemas' types already qualified) with pg_catalog's types that are
// looked up by name qualified too: text → pg_catalog.text, uuid[] →
// pg_catalog.uuid[], "char" → pg_catalog."char". The cast then names the same
// type under any search_path, in particular not a pg_temp.text that a
// client created (trap 11; the sync functions also put pg_temp last, so this
// is the second line of defence). The SQL-standard spellings (integer,
// numeric(12,2), character varying(20), timestamp with time zone, ...) are
// grammar keywords that resolve to pg_catalog without a lookup, and cannot
// be qualified: they are left as they are.
func QualifiedType(t string) string {
	if t == "" || strings.Contains(t, ".") {
		return t // another schema's type (or a qualified name already)
	}
	base := strings.TrimRight(t, "[]")
	if i := strings.IndexByte(base, '('); i >= 0 {
		base = base[:i]
	}
	if sqlKeywordType(base) {
		return t
	}
	return "pg_catalog." + t
}

// sqlKeywordType reports whether format_type's spelling starts with one of
// the type names the SQL grammar resolves itself (time(3) with time zone
// and interval year to month included).
func sqlKeywordType(base string) bool {
	first := base
	if i := strings.IndexByte(base, ' '); i >= 0 {
		first = base[:i]
	}
	switch first {
	case "bigint", "bit", "boolean", "character", "double", "integer", "interval", "numeric",
		"real", "smallint", "time", "timestamp", "decimal", "float", "int", "char", "varchar", "dec", "national", "nchar":
		return true
	}
	return false
}
