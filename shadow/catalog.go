package shadow

import "github.com/greenswap/greenswap/spec"

// Table is everything greenswap needs to know about one table, read from the
// catalog in a single snapshot by LoadTable.
type Table struct {
	OID        uint32             `json:"oid"`
	Name       spec.QualifiedName `json:"name"`
	Owner      string             `json:"owner"`
	Kind       string             `json:"kind"` // pg_class.relkind: "r" table, "p" partitioned
	Comment    string             `json:"comment,omitempty"`
	Columns    []Column           `json:"columns"`
	PrimaryKey *Index             `json:"primary_key,omitempty"`
	// Indexes holds every index, the primary key and unique ones included.
	Indexes        []Index       `json:"indexes"`
	Constraints    []Constraint  `json:"constraints,omitempty"`   // CHECK, UNIQUE, EXCLUDE (not FK, not PK, not NOT NULL)
	ForeignKeys    []ForeignKey  `json:"foreign_keys,omitempty"`  // this table references others
	ReferencedBy   []ForeignKey  `json:"referenced_by,omitempty"` // others reference this table
	Triggers       []Trigger     `json:"triggers,omitempty"`      // user triggers (not internal, not greenswap's own)
	DependentViews []View        `json:"dependent_views,omitempty"`
	RLSEnabled     bool          `json:"rls_enabled"`
	RLSForced      bool          `json:"rls_forced"`
	Policies       []Policy      `json:"policies,omitempty"`
	Grants         []Grant       `json:"grants,omitempty"`
	ColumnGrants   []ColumnGrant `json:"column_grants,omitempty"` // pg_attribute.attacl, by column then grantee then privilege
	OwnedSequences []Sequence    `json:"owned_sequences,omitempty"`
	// FreeSequences are sequences a column default draws from (nextval)
	// that no column owns. Adopt detaches blue's serial sequences this way
	// so they stay in the app schema (see AdoptStep): on blue they show
	// here, no longer in OwnedSequences.
	FreeSequences   []Sequence          `json:"free_sequences,omitempty"`
	Publications    []string            `json:"publications,omitempty"`
	PartitionKey    string              `json:"partition_key,omitempty"` // pg_get_partkeydef when Kind == "p"
	PartitionOf     *spec.QualifiedName `json:"partition_of,omitempty"`  // parent when this table is a partition
	ReplicaIdentity string              `json:"replica_identity"`        // d, n, f, i
	TotalBytes      int64               `json:"total_bytes"`             // pg_total_relation_size
	RowEstimate     int64               `json:"row_estimate"`            // reltuples (or a count when never analyzed and small)
}

// Column is one live (not dropped) column in attnum order.
type Column struct {
	Num            int16  `json:"num"`
	Name           string `json:"name"`
	Type           string `json:"type"` // format_type(atttypid, atttypmod), e.g. "numeric(12,2)"
	TypeOID        uint32 `json:"type_oid"`
	NotNull        bool   `json:"not_null"`
	Default        string `json:"default,omitempty"`   // pg_get_expr of the default; "" when none (and for generated columns)
	Identity       string `json:"identity,omitempty"`  // "", "a" (ALWAYS), "d" (BY DEFAULT)
	Generated      string `json:"generated,omitempty"` // "", "s" (stored)
	GenerationExpr string `json:"generation_expr,omitempty"`
	Collation      string `json:"collation,omitempty"` // non-default collation name
	Comment        string `json:"comment,omitempty"`
}

// Index is one index of the table.
type Index struct {
	Name       string   `json:"name"`
	Columns    []string `json:"columns"` // key columns in order; empty entries never: expression indexes have Expression set
	Primary    bool     `json:"primary"`
	Unique     bool     `json:"unique"`
	Valid      bool     `json:"valid"`
	Deferrable bool     `json:"deferrable,omitempty"` // uniqueness checked at commit (not indimmediate): no ON CONFLICT arbiter
	Partial    bool     `json:"partial"`
	Expression bool     `json:"expression"`           // has an expression column
	Def        string   `json:"def"`                  // pg_get_indexdef
	Constraint string   `json:"constraint,omitempty"` // backing constraint name, if any
}

// Constraint is a table constraint other than primary key, foreign key and NOT NULL.
type Constraint struct {
	Name      string `json:"name"`
	Type      string `json:"type"` // c, u, x
	Def       string `json:"def"`  // pg_get_constraintdef
	Validated bool   `json:"validated"`
}

// ForeignKey is one FK constraint in either direction.
type ForeignKey struct {
	Name       string             `json:"name"`
	Table      spec.QualifiedName `json:"table"` // the referencing table
	Columns    []string           `json:"columns"`
	RefTable   spec.QualifiedName `json:"ref_table"` // the referenced table
	RefColumns []string           `json:"ref_columns"`
	Def        string             `json:"def"` // pg_get_constraintdef
	Validated  bool               `json:"validated"`
}

// Trigger is a user trigger on the table.
type Trigger struct {
	Name    string `json:"name"`
	Enabled string `json:"enabled"` // pg_trigger.tgenabled: O, D, R, A
	Def     string `json:"def"`     // pg_get_triggerdef
}

// View is a view (or materialized view) that depends on the table, directly
// or through other views; Depth 1 = reads the table directly.
type View struct {
	Name         spec.QualifiedName `json:"name"`
	Materialized bool               `json:"materialized"`
	Def          string             `json:"def"` // pg_get_viewdef
	Depth        int                `json:"depth"`
}

// Policy is a row-level security policy.
type Policy struct {
	Name string `json:"name"`
	Cmd  string `json:"cmd"`
	Def  string `json:"def"` // a CREATE POLICY statement reconstructed from pg_policies
	// The parts of Def, so the policy can be created on another table
	// (PolicySQL).
	Permissive bool     `json:"permissive"`
	Roles      []string `json:"roles"` // "" stands for PUBLIC
	Using      string   `json:"using,omitempty"`
	Check      string   `json:"with_check,omitempty"`
	// Columns are the table's columns the expressions read (pg_depend), in
	// attnum order: the other table needs each under the same name.
	Columns []string `json:"columns,omitempty"`
}

// ColumnGrant is one privilege from a column's ACL (aclexplode of attacl).
type ColumnGrant struct {
	Column    string `json:"column"`
	Grantee   string `json:"grantee"`   // role name, "PUBLIC" for 0
	Privilege string `json:"privilege"` // SELECT, INSERT, UPDATE, REFERENCES
	Grantable bool   `json:"grantable"`
}

// Grant is one privilege from the table's ACL (aclexplode).
type Grant struct {
	Grantee   string `json:"grantee"`   // role name, "PUBLIC" for 0
	Privilege string `json:"privilege"` // SELECT, INSERT, ...
	Grantable bool   `json:"grantable"`
}

// Sequence is a sequence owned by a column of the table (serial or identity).
type Sequence struct {
	Name     spec.QualifiedName `json:"name"`
	Column   string             `json:"column"`
	Identity bool               `json:"identity"`
}

// Column returns the column named name, or nil.
func (t *Table) Column(name string) *Column {
	for i := range t.Columns {
		if t.Columns[i].Name == name {
			return &t.Columns[i]
		}
	}
	return nil
}
