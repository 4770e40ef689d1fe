package shadow

import (
	"fmt"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
)

// AdoptStep moves blue into its version schema and puts a view with blue's
// exact row type under the app name, in one transaction. Clients notice
// nothing: the view is auto-updatable, omitted columns take the base table's
// defaults (identity included), and prepared statements re-plan to the same
// result type.
func AdoptStep(n Names, blue *Table, serverMajor int) Step {
	sql := []string{
		"CREATE SCHEMA " + db.Ident(n.BlueSchema),
		"ALTER TABLE " + db.Ident(n.App.Schema, n.App.Name) + " SET SCHEMA " + db.Ident(n.BlueSchema),
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
func ViewSQL(app, base QualifiedName, t *Table, serverMajor int) []string {
	return viewSQL(app, base, t, serverMajor)
}

func viewSQL(app, base QualifiedName, t *Table, serverMajor int) []string {
	cols := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		cols[i] = db.Ident(c.Name)
	}
	with := ""
	if serverMajor >= 15 {
		// The caller's privileges and RLS policies apply through the view.
		with = " WITH (security_invoker = true)"
	}
	view := db.Ident(app.Schema, app.Name)
	sql := []string{
		"CREATE VIEW " + view + with + " AS SELECT " + strings.Join(cols, ", ") + " FROM " + db.Ident(base.Schema, base.Name),
		"ALTER VIEW " + view + " OWNER TO " + db.Ident(t.Owner),
	}
	sql = append(sql, GrantSQL(view, t.Grants)...)
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

// schemaUsageSQL lets every role that may use blue also reach a version
// schema (clients pinned to a shape set search_path to it).
func schemaUsageSQL(schema string, t *Table) []string {
	seen := map[string]bool{}
	var sql []string
	for _, g := range t.Grants {
		if seen[g.Grantee] {
			continue
		}
		seen[g.Grantee] = true
		to := "PUBLIC"
		if g.Grantee != "PUBLIC" {
			to = db.Ident(g.Grantee)
		}
		sql = append(sql, "GRANT USAGE ON SCHEMA "+db.Ident(schema)+" TO "+to)
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
func CreateGreenSQL(n Names, s *Spec) []string {
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
func PartitionStatement(s *Spec, stmt int) int {
	const first = 3 // CREATE SCHEMA, SET LOCAL search_path, target.ddl
	if i := stmt - first; i >= 0 && i < len(s.Target.Partitions) {
		return i
	}
	return -1
}

// GreenFixupSQL runs after the DDL, once green's catalog entry can be read:
// green takes blue's owner, grants and schema usage, and green columns that
// share a blue column fed by a sequence draw from that same sequence, so ids
// written through either shape never collide (trap 4). A green identity
// column is turned into a plain default for the duration of the migration
// (finalize restores it).
func GreenFixupSQL(n Names, blue, green *Table, m *Mapping) []string {
	rel := db.Ident(n.Green.Schema, n.Green.Name)
	sql := []string{"ALTER TABLE " + rel + " OWNER TO " + db.Ident(blue.Owner)}
	sql = append(sql, GrantSQL(rel, blue.Grants)...)
	sql = append(sql, schemaUsageSQL(n.GreenSchema, blue)...)
	for _, seq := range SharedSequences(blue, green, m) {
		col := db.Ident(seq.Column)
		if gc := green.Column(seq.Column); gc != nil && gc.Identity != "" {
			sql = append(sql, "ALTER TABLE "+rel+" ALTER COLUMN "+col+" DROP IDENTITY")
		}
		sql = append(sql, "ALTER TABLE "+rel+" ALTER COLUMN "+col+" SET DEFAULT nextval("+
			db.Literal(db.Ident(seq.Name.Schema, seq.Name.Name))+"::regclass)")
	}
	return sql
}

// SharedSequences lists blue's sequences whose column green maps by name;
// green's column of the same name must draw from them.
func SharedSequences(blue, green *Table, m *Mapping) []Sequence {
	var out []Sequence
	for _, seq := range blue.OwnedSequences {
		cm := m.Forward.Column(seq.Column)
		if cm == nil || cm.Explicit || green.Column(seq.Column) == nil {
			continue
		}
		out = append(out, seq)
	}
	return out
}
