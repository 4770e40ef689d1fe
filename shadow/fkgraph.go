package shadow

// The foreign keys among the tables of one migration (issue 14): the checks
// that need the catalog (a referenced table that exists, matching types
// once the greens exist) and the SQL that links the greens.

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/spec"
)

// GreenForeignKey is a foreign key between two greens of a multi-table
// migration: the greens are created without it (spec.WithoutForeignKeys)
// and it is added NOT VALID once every green exists, then validated.
type GreenForeignKey struct {
	From, To int // indexes in spec.Tables: From's DDL references To
	FK       spec.ForeignKey
	Name     string             // the constraint's name
	Child    spec.QualifiedName // From's green
	Parent   spec.QualifiedName // To's green
	Field    string             // tables[From].target.ddl
	Add      string             // ALTER TABLE child ADD CONSTRAINT ... NOT VALID
	Validate string             // ALTER TABLE child VALIDATE CONSTRAINT ...
}

// GreenForeignKeys are the foreign keys among the greens of s, in the order
// of s.Order() (a self-reference is one of them: it cannot be created
// inline once its column list is cut out, and costs nothing added later).
func GreenForeignKeys(s *spec.Spec) []GreenForeignKey {
	var out []GreenForeignKey
	for _, i := range s.Order() {
		m := s.Member(i)
		child := MemberNamesFor(s.Name, m.AppTable(), true).Green
		for _, fk := range spec.ForeignKeys(m.Target.DDL) {
			j := s.ResolveReference(i, fk.Table)
			if j < 0 {
				continue
			}
			parent := MemberNamesFor(s.Name, s.Member(j).AppTable(), true).Green
			name := fk.Name
			if name == "" {
				name = spec.TruncateIdent(child.Name + "_" + strings.Join(fk.Columns, "_") + "_fkey")
			}
			ref := db.Ident(parent.Schema, parent.Name)
			if len(fk.RefColumns) > 0 {
				ref += " (" + db.IdentList(fk.RefColumns) + ")"
			}
			add := "ALTER TABLE " + db.Ident(child.Schema, child.Name) + " ADD CONSTRAINT " + db.Ident(name) +
				" FOREIGN KEY (" + db.IdentList(fk.Columns) + ") REFERENCES " + ref
			if fk.Options != "" {
				add += " " + fk.Options
			}
			out = append(out, GreenForeignKey{
				From: i, To: j, FK: fk, Name: name, Child: child, Parent: parent,
				Field:    fmt.Sprintf("tables[%d].target.ddl", i),
				Add:      add + " NOT VALID",
				Validate: "ALTER TABLE " + db.Ident(child.Schema, child.Name) + " VALIDATE CONSTRAINT " + db.Ident(name),
			})
		}
	}
	return out
}

// MemberGreenDDL is the target DDL of Tables[i] as the green is created in
// a multi-table migration: without its foreign keys to migrated tables.
func MemberGreenDDL(s *spec.Spec, i int) string {
	ddl := s.Tables[i].Target.DDL
	var cut []spec.ForeignKey
	for _, fk := range spec.ForeignKeys(ddl) {
		if s.ResolveReference(i, fk.Table) >= 0 {
			cut = append(cut, fk)
		}
	}
	return spec.WithoutForeignKeys(ddl, cut)
}

// CheckForeignKeyTargets: every REFERENCES in the target DDLs of a
// multi-table spec names a migrated table or a table that exists (an
// unqualified name is looked up in the member's app schema, where green's
// DDL resolves it after green's own schema). Otherwise a *spec.SpecError
// naming tables[i].target.ddl.
func CheckForeignKeyTargets(ctx context.Context, q db.Querier, s *spec.Spec) error {
	for i := range s.Tables {
		m := s.Member(i)
		for _, fk := range spec.ForeignKeys(m.Target.DDL) {
			if j := s.ResolveReference(i, fk.Table); j >= 0 {
				// Sync creates the greens with the app schemas on its
				// search path, where a qualified name is the app's view
				// (after adopt), not the green: plan passed such a spec
				// and sync failed on it (an outside test).
				if fk.Table.Schema != "" {
					return m.Errorf("target.ddl", fmt.Sprintf("write REFERENCES %s unqualified: every green of a migration is in its one green schema", db.Ident(fk.Table.Name)),
						"REFERENCES %s: a table this migration migrates is referenced by its schema-qualified name", fk.Table)
				}
				continue
			}
			ref := fk.Table
			if ref.Schema == "" {
				ref.Schema = m.AppTable().Schema
			}
			var kind string
			err := q.QueryRow(ctx, `
SELECT c.relkind::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2`, ref.Schema, ref.Name).Scan(&kind)
			if errors.Is(err, pgx.ErrNoRows) {
				return m.Errorf("target.ddl", "migrate that table too (add it under tables:), create it first, or fix the name",
					"REFERENCES %s: no such table, and it is not one of the tables this migration migrates", ref)
			}
			if err != nil {
				return fmt.Errorf("look up the table %s that %s references: %w", ref, m.AppTable(), err)
			}
			if kind != "r" && kind != "p" {
				return m.Errorf("target.ddl", "reference a table",
					"REFERENCES %s: it is not a table (pg_class.relkind %q)", ref, kind)
			}
		}
	}
	return nil
}

// CheckForeignKeyTypes compares, once every green exists, each foreign key
// column among the greens with the green key column it references: a
// different type (int → bigint on the key alone, say) is a *spec.SpecError
// naming both columns and types. It runs before the keys are added, so a
// mismatch PostgreSQL would accept (int referencing bigint) is caught too.
func CheckForeignKeyTypes(ctx context.Context, q db.Querier, s *spec.Spec, fks []GreenForeignKey) error {
	for _, g := range fks {
		refCols := g.FK.RefColumns
		if len(refCols) == 0 {
			pk, err := primaryKeyColumns(ctx, q, g.Parent)
			if err != nil {
				return err
			}
			if len(pk) == 0 {
				return s.Errorf(g.Field, "name the referenced columns, or give the referenced table's target DDL a PRIMARY KEY",
					"REFERENCES %s names no columns and its green has no primary key", g.FK.Table.Name)
			}
			refCols = pk
		}
		if len(refCols) != len(g.FK.Columns) {
			return s.Errorf(g.Field, "list as many referenced columns as referencing ones",
				"FOREIGN KEY (%s) REFERENCES %s (%s): the column counts differ",
				strings.Join(g.FK.Columns, ", "), g.Parent.Name, strings.Join(refCols, ", "))
		}
		for k, col := range g.FK.Columns {
			ct, err := columnType(ctx, q, g.Child, col)
			if err != nil {
				return err
			}
			pt, err := columnType(ctx, q, g.Parent, refCols[k])
			if err != nil {
				return err
			}
			switch {
			case ct == "":
				return s.Errorf(g.Field, "reference from a column of this table", "FOREIGN KEY column %s is not a column of %s", col, g.Child.Name)
			case pt == "":
				return s.Errorf(g.Field, "reference a column of the referenced table's target DDL", "REFERENCES %s (%s): no such column in its green", g.Parent.Name, refCols[k])
			case ct != pt:
				return s.Errorf(g.Field, fmt.Sprintf("give %s.%s the type %s in this target DDL (or change the key back): a key and the columns referencing it change type together", g.Child.Name, col, pt),
					"%s.%s is %s but the key it references, %s.%s, is %s", g.Child.Name, col, ct, g.Parent.Name, refCols[k], pt)
			}
		}
	}
	return nil
}

// columnType is format_type of rel.col without its modifier ("" when there
// is no such column): varchar(10) may reference varchar(20).
func columnType(ctx context.Context, q db.Querier, rel spec.QualifiedName, col string) (string, error) {
	var t string
	err := q.QueryRow(ctx, `
SELECT pg_catalog.format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped`,
		db.Ident(rel.Schema, rel.Name), col).Scan(&t)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read the type of %s.%s: %w", rel, col, err)
	}
	return t, nil
}

func primaryKeyColumns(ctx context.Context, q db.Querier, rel spec.QualifiedName) ([]string, error) {
	rows, err := q.Query(ctx, `
SELECT a.attname FROM pg_catalog.pg_index i
  CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
 WHERE i.indrelid = pg_catalog.to_regclass($1) AND i.indisprimary ORDER BY k.ord`, db.Ident(rel.Schema, rel.Name))
	if err != nil {
		return nil, fmt.Errorf("read the primary key of %s: %w", rel, err)
	}
	cols, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read the primary key of %s: %w", rel, err)
	}
	return cols, nil
}

// onUpdateActs matches an ON UPDATE action that writes the referencing row.
var onUpdateActs = regexp.MustCompile(`(?i)\bON\s+UPDATE\s+(CASCADE|SET\s+NULL|SET\s+DEFAULT)\b`)

// CheckForeignKeyActions refuses, among the migration's tables, a foreign
// key whose ON UPDATE action writes the child (CASCADE, SET NULL, SET
// DEFAULT) when a key column it references is GENERATED ALWAYS AS IDENTITY
// in the live table. After cutover the key is updatable through green
// (green has no identity before finalize), blue's identity column is not,
// and replaying such a key update into blue lost green's cascaded child row
// (an outside test, break5/findings/03). Until the reverse direction
// handles it, the spec is refused before anything is touched.
func CheckForeignKeyActions(ctx context.Context, q db.Querier, s *spec.Spec, fks []GreenForeignKey) error {
	for _, g := range fks {
		if !onUpdateActs.MatchString(g.FK.Options) {
			continue
		}
		refCols := g.FK.RefColumns
		if len(refCols) == 0 {
			pk, err := primaryKeyColumns(ctx, q, g.Parent)
			if err != nil {
				return err
			}
			refCols = pk
		}
		app := s.Member(g.To).AppTable()
		var always []string
		err := q.QueryRow(ctx, `SELECT coalesce(pg_catalog.array_agg(a.attname::text ORDER BY a.attnum), '{}')
			FROM pg_catalog.pg_attribute a
			WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attname = ANY($2::text[]) AND a.attidentity = 'a'`,
			db.Ident(app.Schema, app.Name), refCols).Scan(&always)
		if err != nil {
			return fmt.Errorf("read the identity columns of %s: %w", app, err)
		}
		if len(always) > 0 {
			return s.Errorf(g.Field, "write ON UPDATE NO ACTION (or RESTRICT) for this key, or migrate the two tables in separate migrations",
				"FOREIGN KEY (%s) REFERENCES %s %s: %s.%s is GENERATED ALWAYS AS IDENTITY, and a key update through green with this action is not carried back to blue safely yet",
				strings.Join(g.FK.Columns, ", "), g.FK.Table.Name, onUpdateActs.FindString(g.FK.Options), app, strings.Join(always, ", "))
		}
	}
	return nil
}
