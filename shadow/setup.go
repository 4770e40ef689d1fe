package shadow

import (
	"fmt"
	"slices"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/spec"
)

// AdoptStep moves blue into its version schema and puts a view with blue's
// exact row type under the app name, in one transaction. Clients notice
// nothing: the view is auto-updatable, omitted columns take the base table's
// defaults (identity included), and prepared statements re-plan to the same
// result type.
//
// Blue's serial sequences stay in the app schema under their own names, so
// nextval('orders_id_seq') and ORMs keep finding them (trap 14): SET SCHEMA
// moves an owned sequence with the table, PostgreSQL refuses SET SCHEMA on
// an owned sequence and allows OWNED BY only within the table's schema, so
// each, once moved, is detached (OWNED BY NONE), moved back and recorded in
// SequenceRecord, from which finalize gives it to green's column and
// rollback before cutover back to blue's. The table is moved first: its
// ACCESS EXCLUSIVE lock comes before the sequence's, the order in which
// writers take them (an insert locks the table, then nextval the
// sequence), so adopt never waits on a sequence while holding writers up.
// Identity sequences cannot be detached and move with blue.
func AdoptStep(n Names, blue *Table, serverMajor int) Step {
	sql := []string{"CREATE SCHEMA " + db.Ident(n.BlueSchema)}
	var serial []Sequence
	for _, seq := range blue.OwnedSequences {
		if !seq.Identity {
			serial = append(serial, seq)
		}
	}
	sql = append(sql, "ALTER TABLE "+db.Ident(n.App.Schema, n.App.Name)+" SET SCHEMA "+db.Ident(n.BlueSchema))
	rec := db.Ident(SequenceRecord(n).Schema, SequenceRecord(n).Name)
	if len(serial) > 0 {
		sql = append(sql, "CREATE TABLE "+rec+" (seq pg_catalog.oid PRIMARY KEY, col pg_catalog.text NOT NULL)")
	}
	for _, seq := range serial {
		moved := db.Ident(n.BlueSchema, seq.Name.Name)
		sql = append(sql,
			"ALTER SEQUENCE "+moved+" OWNED BY NONE",
			"ALTER SEQUENCE "+moved+" SET SCHEMA "+db.Ident(seq.Name.Schema),
			"INSERT INTO "+rec+" (seq, col) VALUES ("+db.Literal(db.Ident(seq.Name.Schema, seq.Name.Name))+"::pg_catalog.regclass, "+db.Literal(seq.Column)+")")
	}
	sql = append(sql, viewSQL(n.App, n.Blue, blue, serverMajor)...)
	sql = append(sql, schemaUsageSQL(n.BlueSchema, blue)...)
	return Step{
		Name:          "adopt",
		Description:   fmt.Sprintf("move %s to schema %s and create the view %s over it", n.App, n.BlueSchema, n.App),
		SQL:           sql,
		Lock:          "ACCESS EXCLUSIVE on " + n.App.String(),
		LockHold:      "milliseconds (catalog changes only; no rows are touched)",
		Transactional: true,
	}
}

// ViewSQL (re)creates the app-name view over base with t's columns, owner,
// grants and comments. It is shared by adopt, cutover and rollback so the
// app name always looks the same whichever table it reads.
func ViewSQL(app, base spec.QualifiedName, t *Table, serverMajor int) []string {
	return viewSQL(app, base, t, serverMajor)
}

func viewSQL(app, base spec.QualifiedName, t *Table, serverMajor int) []string {
	cols := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		cols[i] = db.Ident(c.Name)
	}
	with := ""
	if viewInvoker(t, serverMajor) {
		// The caller's privileges and RLS policies apply through the view.
		with = " WITH (security_invoker = true)"
	}
	view := db.Ident(app.Schema, app.Name)
	sql := []string{
		"CREATE VIEW " + view + with + " AS SELECT " + strings.Join(cols, ", ") + " FROM " + db.Ident(base.Schema, base.Name),
		"ALTER VIEW " + view + " OWNER TO " + db.Ident(t.Owner),
	}
	sql = append(sql, GrantSQL(view, t.Grants)...)
	sql = append(sql, ColumnGrantSQL(view, t.ColumnGrants, nil)...)
	if t.Comment != "" {
		sql = append(sql, "COMMENT ON VIEW "+view+" IS "+db.Literal(t.Comment))
	}
	for _, c := range t.Columns {
		if c.Comment != "" {
			sql = append(sql, "COMMENT ON COLUMN "+view+"."+db.Ident(c.Name)+" IS "+db.Literal(c.Comment))
		}
	}
	return sql
}

// viewInvoker says whether the app-name view over t is security_invoker.
// It must be for row-level security (PostgreSQL < 15 cannot: a blocking
// hazard). Without RLS the view's own ACL, a copy of the table's, is the
// gate either way, with one difference: a security_invoker view checks the
// caller's privileges on the table for every column the view reads, so a
// role holding column privileges only (SELECT (id, email)) would be denied
// everything through the app name. So a table with column grants and no
// RLS gets a plain view, which checks the caller against the view's column
// grants and reads the table as its owner. (A table with both RLS and
// column grants keeps security_invoker: the column-privileged roles then
// reach their columns through the version schemas only.)
func viewInvoker(t *Table, serverMajor int) bool {
	return ViewInvoker(t, serverMajor)
}

// ViewInvoker is viewInvoker for the other views greenswap puts over a
// table's rows (a split's old-shape view and its greens' views).
func ViewInvoker(t *Table, serverMajor int) bool {
	return serverMajor >= 15 && (t.RLSEnabled || len(t.ColumnGrants) == 0)
}

// GrantSQL re-grants each privilege of grants on rel (a quoted relation name).
func GrantSQL(rel string, grants []Grant) []string {
	var sql []string
	for _, g := range grants {
		to := "PUBLIC"
		if g.Grantee != "PUBLIC" {
			to = db.Ident(g.Grantee)
		}
		s := "GRANT " + g.Privilege + " ON " + rel + " TO " + to
		if g.Grantable {
			s += " WITH GRANT OPTION"
		}
		sql = append(sql, s)
	}
	return sql
}

// ColumnGrantSQL re-grants column privileges on rel (a quoted relation
// name), one GRANT per grantee, privilege and grant option, for the columns
// has accepts (nil: all).
func ColumnGrantSQL(rel string, grants []ColumnGrant, has func(column string) bool) []string {
	type key struct {
		grantee, privilege string
		grantable          bool
	}
	var order []key
	cols := map[key][]string{}
	for _, g := range grants {
		if has != nil && !has(g.Column) {
			continue
		}
		k := key{g.Grantee, g.Privilege, g.Grantable}
		if _, ok := cols[k]; !ok {
			order = append(order, k)
		}
		cols[k] = append(cols[k], db.Ident(g.Column))
	}
	var sql []string
	for _, k := range order {
		to := "PUBLIC"
		if k.grantee != "PUBLIC" {
			to = db.Ident(k.grantee)
		}
		s := "GRANT " + k.privilege + " (" + strings.Join(cols[k], ", ") + ") ON " + rel + " TO " + to
		if k.grantable {
			s += " WITH GRANT OPTION"
		}
		sql = append(sql, s)
	}
	return sql
}

// schemaUsageSQL lets every role that holds a privilege on blue, on the
// table or on one of its columns, also reach a version schema (clients
// pinned to a shape set search_path to it); no other role gets USAGE.
func schemaUsageSQL(schema string, t *Table) []string {
	seen := map[string]bool{}
	var sql []string
	usage := func(grantee string) {
		if seen[grantee] {
			return
		}
		seen[grantee] = true
		to := "PUBLIC"
		if grantee != "PUBLIC" {
			to = db.Ident(grantee)
		}
		sql = append(sql, "GRANT USAGE ON SCHEMA "+db.Ident(schema)+" TO "+to)
	}
	for _, g := range t.Grants {
		usage(g.Grantee)
	}
	for _, g := range t.ColumnGrants {
		usage(g.Grantee)
	}
	if t.Owner != "" {
		sql = append(sql, "ALTER SCHEMA "+db.Ident(schema)+" OWNER TO "+db.Ident(t.Owner))
	}
	return sql
}

// CreateGreenSQL creates the green version schema and runs the target DDL in
// it, then target.partitions. search_path puts the green schema first so the
// DDL's unqualified CREATE TABLE lands there, and the app schema second so
// the DDL can name the app's own types and functions. The partitions follow
// the same rule: their bare names land in green's schema, and PARTITION OF
// <green's name> finds green there first (the spec loader refuses qualified
// names, which could reach the live table). They run in the same
// transaction as the DDL because a partitioned green without partitions
// rejects every row the sync triggers would write. PartitionStatement gives
// the position of target.partitions[i] in the result.
func CreateGreenSQL(n Names, s *spec.Spec) []string {
	sql := []string{
		"CREATE SCHEMA " + db.Ident(n.GreenSchema),
		"SET LOCAL search_path TO " + db.Ident(n.GreenSchema) + ", " + db.Ident(n.App.Schema),
		strings.TrimRight(strings.TrimSpace(s.Target.DDL), ";"),
	}
	for _, p := range s.Target.Partitions {
		sql = append(sql, strings.TrimRight(strings.TrimSpace(p), ";"))
	}
	return append(sql, "RESET search_path")
}

// PartitionStatement maps the position of a statement of CreateGreenSQL to
// the target.partitions item it runs, or -1 (the schema, the DDL, ...).
func PartitionStatement(s *spec.Spec, stmt int) int {
	const first = 3 // CREATE SCHEMA, SET LOCAL search_path, target.ddl
	if i := stmt - first; i >= 0 && i < len(s.Target.Partitions) {
		return i
	}
	return -1
}

// GreenFixupSQL runs after the DDL, once green's catalog entry can be read:
// green takes blue's owner, grants (column grants for the columns green has
// by name), schema usage and row-level security (ENABLE, FORCE and every
// policy, in the same transaction that creates green, so green's version
// schema never shows a row blue's policies hide; CheckPolicies first), and
// green columns that share a blue column fed by a sequence draw from that
// same sequence, so ids written through either shape never collide (trap
// 4). A green identity column is turned into a plain default for the
// duration of the migration (finalize restores it).
func GreenFixupSQL(n Names, blue, green *Table, m *Mapping) []string {
	rel := db.Ident(n.Green.Schema, n.Green.Name)
	sql := []string{"ALTER TABLE " + rel + " OWNER TO " + db.Ident(blue.Owner)}
	sql = append(sql, GreenGrantSQL(n.Green, blue, green)...)
	sql = append(sql, schemaUsageSQL(n.GreenSchema, blue)...)
	sql = append(sql, rlsSQL(n.Green, blue, green)...)
	for _, seq := range SharedSequences(blue, green, m) {
		col := db.Ident(seq.Column)
		if gc := green.Column(seq.Column); gc != nil && gc.Identity != "" {
			sql = append(sql, "ALTER TABLE "+rel+" ALTER COLUMN "+col+" DROP IDENTITY")
		}
		sql = append(sql, "ALTER TABLE "+rel+" ALTER COLUMN "+col+" SET DEFAULT pg_catalog.nextval("+
			db.Literal(db.Ident(seq.Name.Schema, seq.Name.Name))+"::regclass)")
	}
	return sql
}

// GreenGrantSQL gives green (to) blue's privileges: every table-level
// grant, and the column grants for the columns green has by name. A client
// must be allowed the same through every shape (PrivilegeDrift checks it);
// a table split gives each of its greens the same (runner's createGreens).
func GreenGrantSQL(to spec.QualifiedName, blue, green *Table) []string {
	rel := db.Ident(to.Schema, to.Name)
	sql := GrantSQL(rel, blue.Grants)
	return append(sql, ColumnGrantSQL(rel, blue.ColumnGrants, func(c string) bool { return green.Column(c) != nil })...)
}

// SchemaUsageSQL lets every role holding a privilege on blue (t) reach
// version schema schema, and hands it to blue's owner (schemaUsageSQL).
func SchemaUsageSQL(schema string, t *Table) []string { return schemaUsageSQL(schema, t) }

// rlsSQL gives the table to (green) blue's row-level security: enabled and
// forced as on blue, with each of blue's policies to lacks by name.
func rlsSQL(to spec.QualifiedName, blue, green *Table) []string {
	rel := db.Ident(to.Schema, to.Name)
	var sql []string
	if blue.RLSEnabled && !green.RLSEnabled {
		sql = append(sql, "ALTER TABLE "+rel+" ENABLE ROW LEVEL SECURITY")
	}
	if blue.RLSForced && !green.RLSForced {
		sql = append(sql, "ALTER TABLE "+rel+" FORCE ROW LEVEL SECURITY")
	}
	for _, p := range blue.Policies {
		if slices.ContainsFunc(green.Policies, func(g Policy) bool { return g.Name == p.Name }) {
			continue
		}
		sql = append(sql, PolicySQL(p, to))
	}
	return sql
}

// PolicySQL is the CREATE POLICY statement of p on the table on. The
// expressions name columns bare, so they read on's columns of those names.
func PolicySQL(p Policy, on spec.QualifiedName) string {
	return policyDef(p.Name, on, p.Permissive, p.Cmd, p.Roles, p.Using, p.Check)
}

// CheckPolicies refuses, as a spec error on target.ddl, a green that lacks
// (or renamed) a column one of blue's row-level security policies reads:
// the policy could not be created on green, and green's version schema
// would show or accept rows blue's policy keeps from its caller.
func CheckPolicies(s *spec.Spec, blue, green *Table) error {
	for _, p := range blue.Policies {
		var missing []string
		for _, c := range p.Columns {
			if green.Column(c) == nil {
				missing = append(missing, c)
			}
		}
		if len(missing) > 0 {
			return s.Errorf("target.ddl", "keep those columns, under the same names, in target.ddl, or change the policy on "+blue.Name.String()+" first",
				"row-level security policy %q of %s reads column(s) %s, which green lacks: it cannot be created on green",
				p.Name, blue.Name, strings.Join(missing, ", "))
		}
	}
	return nil
}

// SequenceRecord is the table, in blue's schema, that lists the serial
// sequences adopt detached from blue's columns (seq oid, col text). Only
// adopt writes it; finalize and rollback before cutover read it and drop it.
func SequenceRecord(n Names) spec.QualifiedName {
	if n.ForwardFunc.Name != "gs_forward" {
		// A table of a migration of several tables (MemberNamesFor): the
		// blue schema is shared, and each table's record lists its own
		// sequences, so a teardown gives each column back its own.
		return spec.QualifiedName{Schema: n.BlueSchema, Name: spec.TruncateIdent("gs_sequences_" + n.App.Name)}
	}
	return spec.QualifiedName{Schema: n.BlueSchema, Name: "gs_sequences"}
}

// SharedSequences lists blue's sequences whose column green maps by name;
// green's column of the same name must draw from them. After adopt blue's
// serial sequences are free (detached), before it owned: both count.
func SharedSequences(blue, green *Table, m *Mapping) []Sequence {
	var out []Sequence
	for _, seq := range slices.Concat(blue.OwnedSequences, blue.FreeSequences) {
		cm := m.Forward.Column(seq.Column)
		if cm == nil || cm.Explicit || green.Column(seq.Column) == nil {
			continue
		}
		out = append(out, seq)
	}
	return out
}
