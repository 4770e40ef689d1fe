package cutover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// Catalog reads specific to the swap. Every definition that is printed here
// to be executed again later (views, triggers, constraints) is printed under
// the transaction's search_path, which the swap sets to pg_catalog alone
// (catalogPath) so every user object comes out schema-qualified and means the
// same thing when it is run again.

// catalogPath is the search_path definitions are printed and replayed under.
const catalogPath = "pg_catalog"

// setPath sets the transaction-local search_path.
func setPath(ctx context.Context, q db.Querier, path string) error {
	_, err := q.Exec(ctx, "SELECT pg_catalog.set_config('search_path', $1, true)", path)
	return err
}

// pathSQL is the statement form of setPath, for step listings.
func pathSQL(path string) string { return "SET LOCAL search_path TO " + path }

// relation is one pg_class entry.
type relation struct {
	OID  uint32
	Name spec.QualifiedName
	Kind string // relkind
}

// findMigrationRelations looks up the app name, blue and green of a
// migration; each is nil when it does not exist.
func findMigrationRelations(ctx context.Context, q db.Querier, n shadow.Names) (app, blue, green *relation, err error) {
	if app, err = findRelation(ctx, q, n.App); err != nil {
		return nil, nil, nil, err
	}
	if blue, err = findRelation(ctx, q, n.Blue); err != nil {
		return nil, nil, nil, err
	}
	if green, err = findRelation(ctx, q, n.Green); err != nil {
		return nil, nil, nil, err
	}
	return app, blue, green, nil
}

// findRelation returns the relation called name, or nil when there is none.
func findRelation(ctx context.Context, q db.Querier, name spec.QualifiedName) (*relation, error) {
	r := relation{Name: name}
	err := q.QueryRow(ctx, `SELECT c.oid, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2`, name.Schema, name.Name).Scan(&r.OID, &r.Kind)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// schemaExists reports whether a schema of that name exists.
func schemaExists(ctx context.Context, q db.Querier, name string) (bool, error) {
	var ok bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, name).Scan(&ok)
	return ok, err
}

// column is a relation's column as far as its row type goes.
type column struct {
	Name      string
	Type      string // format_type, typmod included
	Collation uint32
}

func loadColumns(ctx context.Context, q db.Querier, oid uint32) ([]column, error) {
	rows, err := q.Query(ctx, `SELECT attname::text, pg_catalog.format_type(atttypid, atttypmod), attcollation::int8
		FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, oid)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (column, error) {
		var c column
		var coll int64
		err := r.Scan(&c.Name, &c.Type, &coll)
		c.Collation = uint32(coll)
		return c, err
	})
}

// sameRowType reports whether a view over b would have exactly a's columns
// (names, types with typmods, collations, in order): CREATE OR REPLACE VIEW
// accepts it and prepared statements re-plan to the same result type.
func sameRowType(a, b []column) bool { return slices.Equal(a, b) }

// ---------------------------------------------------------------------------
// Views

// viewMeta is everything needed to drop a view and create it again as it
// was: its definition, options, owner, grants, comments, column defaults,
// triggers, rules, and for a materialized view its indexes and whether it
// was populated.
type viewMeta struct {
	OID          uint32             `json:"-"`
	Name         spec.QualifiedName `json:"name"`
	Materialized bool               `json:"materialized,omitempty"`
	Depth        int                `json:"depth"`
	// Repoint: the view read the side being left directly (a view that
	// existed before adopt still names blue); it is created again over the
	// app name instead, so it follows the app name from now on.
	Repoint bool `json:"repointed,omitempty"`
	// Def is the SELECT, printed under PrintPath; it is executed under ParsePath.
	Def        string         `json:"definition"`
	PrintPath  string         `json:"-"`
	ParsePath  string         `json:"-"`
	Options    []string       `json:"options,omitempty"`
	Owner      string         `json:"owner"`
	Grants     []shadow.Grant `json:"grants,omitempty"`
	Comment    string         `json:"comment,omitempty"`
	ColComment [][2]string    `json:"-"` // column, comment
	ColDefault [][2]string    `json:"-"` // column, default expression
	Triggers   []string       `json:"-"`
	Rules      []string       `json:"-"`
	Indexes    []string       `json:"-"`
	Populated  bool           `json:"-"`
}

func (v *viewMeta) ident() string { return db.Ident(v.Name.Schema, v.Name.Name) }

func (v *viewMeta) kind() string {
	if v.Materialized {
		return "MATERIALIZED VIEW"
	}
	return "VIEW"
}

// dropSQL drops the view (RESTRICT: an unexpected dependent stops the swap).
func (v *viewMeta) dropSQL() string { return "DROP " + v.kind() + " " + v.ident() }

// createSQL creates the view again as it was.
func (v *viewMeta) createSQL() []string {
	var sql []string
	if v.ParsePath != catalogPath {
		sql = append(sql, pathSQL(v.ParsePath))
	}
	s := "CREATE " + v.kind() + " " + v.ident()
	if len(v.Options) > 0 {
		s += " WITH (" + strings.Join(v.Options, ", ") + ")"
	}
	s += " AS " + v.Def
	if v.Materialized && !v.Populated {
		s += " WITH NO DATA"
	}
	sql = append(sql, s)
	if v.ParsePath != catalogPath {
		sql = append(sql, pathSQL(catalogPath))
	}
	return append(sql, v.extrasSQL(nil, true)...)
}

// extrasSQL is everything but the CREATE: with basics, owner, grants and
// comments; then column defaults, triggers, rules, indexes. keep, when not
// nil, limits column comments and defaults to the columns it holds.
func (v *viewMeta) extrasSQL(keep map[string]bool, basics bool) []string {
	id := v.ident()
	var sql []string
	if basics {
		if v.Owner != "" {
			sql = append(sql, "ALTER "+v.kind()+" "+id+" OWNER TO "+db.Ident(v.Owner))
		}
		sql = append(sql, shadow.GrantSQL(id, v.Grants)...)
		if v.Comment != "" {
			sql = append(sql, "COMMENT ON "+v.kind()+" "+id+" IS "+db.Literal(v.Comment))
		}
		for _, c := range v.ColComment {
			if keep == nil || keep[c[0]] {
				sql = append(sql, "COMMENT ON COLUMN "+id+"."+db.Ident(c[0])+" IS "+db.Literal(c[1]))
			}
		}
	}
	for _, c := range v.ColDefault {
		if keep == nil || keep[c[0]] {
			sql = append(sql, "ALTER VIEW "+id+" ALTER COLUMN "+db.Ident(c[0])+" SET DEFAULT "+c[1])
		}
	}
	sql = append(sql, v.Triggers...)
	sql = append(sql, v.Rules...)
	sql = append(sql, v.Indexes...)
	return sql
}

// dependentsSQL finds the views and materialized views that read any of the
// roots, directly or through other views, with the longest path length as
// depth (creating them in ascending depth is always valid) and whether they
// read $2 directly.
const dependentsSQL = `
WITH RECURSIVE deps(oid, depth, direct) AS (
    SELECT DISTINCT r.ev_class, 1, d.refobjid = $2
      FROM pg_depend d
      JOIN pg_rewrite r ON r.oid = d.objid
     WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
       AND d.refobjid = ANY ($1) AND r.ev_class <> d.refobjid AND r.ev_class <> ALL ($1)
  UNION
    SELECT r.ev_class, deps.depth + 1, false
      FROM deps
      JOIN pg_depend d ON d.refobjid = deps.oid AND d.refclassid = 'pg_class'::regclass
                      AND d.classid = 'pg_rewrite'::regclass
      JOIN pg_rewrite r ON r.oid = d.objid
     WHERE r.ev_class <> deps.oid AND r.ev_class <> ALL ($1) AND deps.depth < 100
)
SELECT d.oid, n.nspname::text, c.relname::text, c.relkind = 'm', pg_catalog.max(d.depth), pg_catalog.bool_or(d.direct)
  FROM deps d
  JOIN pg_class c ON c.oid = d.oid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('v', 'm')
 GROUP BY d.oid, n.nspname, c.relname, c.relkind
 ORDER BY pg_catalog.max(d.depth), n.nspname, c.relname`

// loadDependents returns the views over roots in creation order. A view that
// reads repointFrom directly (0: none) is marked Repoint: its definition is
// printed with repointFrom's schema alone on the search_path (so the table
// comes out unqualified) and will be parsed with appSchema alone, where the
// same name is the app-name view.
func loadDependents(ctx context.Context, q db.Querier, roots []uint32, repointFrom uint32, repointSchema, appSchema string) ([]*viewMeta, error) {
	rows, err := q.Query(ctx, dependentsSQL, roots, repointFrom)
	if err != nil {
		return nil, err
	}
	views, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*viewMeta, error) {
		v := &viewMeta{}
		err := r.Scan(&v.OID, &v.Name.Schema, &v.Name.Name, &v.Materialized, &v.Depth, &v.Repoint)
		return v, err
	})
	if err != nil {
		return nil, err
	}
	for _, v := range views {
		v.PrintPath, v.ParsePath = catalogPath, catalogPath
		if v.Repoint && repointFrom != 0 {
			v.PrintPath, v.ParsePath = db.Ident(repointSchema), db.Ident(appSchema)
		} else {
			v.Repoint = false
		}
		if err := loadViewMeta(ctx, q, v); err != nil {
			return nil, fmt.Errorf("read view %s: %w", v.Name, err)
		}
	}
	return views, nil
}

// loadViewMeta fills v (OID, Name, PrintPath set) from the catalog.
func loadViewMeta(ctx context.Context, q db.Querier, v *viewMeta) error {
	if v.PrintPath == "" {
		v.PrintPath, v.ParsePath = catalogPath, catalogPath
	}
	if v.PrintPath != catalogPath {
		if err := setPath(ctx, q, v.PrintPath); err != nil {
			return err
		}
	}
	err := q.QueryRow(ctx, `SELECT pg_catalog.pg_get_viewdef($1::oid), coalesce(c.reloptions, '{}'), pg_catalog.pg_get_userbyid(c.relowner)::text,
			coalesce(pg_catalog.obj_description(c.oid, 'pg_class'), ''), c.relispopulated, c.relkind = 'm'
		FROM pg_class c WHERE c.oid = $1`, v.OID).Scan(&v.Def, &v.Options, &v.Owner, &v.Comment, &v.Populated, &v.Materialized)
	if v.PrintPath != catalogPath {
		if perr := setPath(ctx, q, catalogPath); err == nil {
			err = perr
		}
	}
	if err != nil {
		return err
	}
	v.Def = strings.TrimRight(strings.TrimSpace(v.Def), ";")
	rows, err := q.Query(ctx, `
		SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END, a.privilege_type, a.is_grantable
		  FROM pg_class c, pg_catalog.aclexplode(c.relacl) a WHERE c.oid = $1 ORDER BY 1, 2`, v.OID)
	if err != nil {
		return err
	}
	if v.Grants, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (shadow.Grant, error) {
		var g shadow.Grant
		err := r.Scan(&g.Grantee, &g.Privilege, &g.Grantable)
		return g, err
	}); err != nil {
		return err
	}
	pairs := func(sql string) ([][2]string, error) {
		rows, err := q.Query(ctx, sql, v.OID)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
			var p [2]string
			err := r.Scan(&p[0], &p[1])
			return p, err
		})
	}
	if v.ColComment, err = pairs(`SELECT a.attname::text, d.description FROM pg_attribute a
		JOIN pg_description d ON d.objoid = a.attrelid AND d.classoid = 'pg_class'::regclass AND d.objsubid = a.attnum
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`); err != nil {
		return err
	}
	if v.ColDefault, err = pairs(`SELECT a.attname::text, pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
		JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = $1 ORDER BY a.attnum`); err != nil {
		return err
	}
	list := func(sql string) ([]string, error) {
		rows, err := q.Query(ctx, sql, v.OID)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if v.Triggers, err = list(`SELECT pg_catalog.pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal ORDER BY tgname`); err != nil {
		return err
	}
	if v.Rules, err = list(`SELECT pg_catalog.pg_get_ruledef(oid) FROM pg_rewrite WHERE ev_class = $1 AND rulename <> '_RETURN' ORDER BY rulename`); err != nil {
		return err
	}
	for i := range v.Rules {
		v.Rules[i] = strings.TrimRight(strings.TrimSpace(v.Rules[i]), ";")
	}
	if v.Indexes, err = list(`SELECT pg_catalog.pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = $1 ORDER BY indexrelid`); err != nil {
		return err
	}
	return nil
}

// ---------------------------------------------------------------------------
// Foreign keys

// foreignKey is one FK constraint with everything needed to re-create it
// against another referenced table.
type foreignKey struct {
	OID        uint32             `json:"-"`
	Name       string             `json:"name"`
	Table      spec.QualifiedName `json:"table"` // the referencing table
	TableOID   uint32             `json:"-"`
	Columns    []string           `json:"columns"`
	RefTable   spec.QualifiedName `json:"ref_table"`
	RefOID     uint32             `json:"-"`
	RefColumns []string           `json:"ref_columns"`
	Match      string             `json:"-"` // f, p, s
	OnUpdate   string             `json:"-"` // a, r, c, n, d
	OnDelete   string             `json:"-"`
	SetCols    []string           `json:"-"` // ON DELETE SET NULL/DEFAULT (cols), PG 15+
	Deferrable bool               `json:"-"`
	Deferred   bool               `json:"-"`
	Validated  bool               `json:"validated"`
}

var fkActions = map[string]string{"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}

// addSQL adds the constraint to its table referencing ref, NOT VALID: the
// existing rows are checked later by VALIDATE CONSTRAINT under a light lock.
func (f *foreignKey) addSQL(ref spec.QualifiedName) string {
	var b strings.Builder
	b.WriteString("ALTER TABLE " + db.Ident(f.Table.Schema, f.Table.Name) + " ADD CONSTRAINT " + db.Ident(f.Name) +
		" FOREIGN KEY (" + db.IdentList(f.Columns) + ") REFERENCES " + db.Ident(ref.Schema, ref.Name) +
		" (" + db.IdentList(f.RefColumns) + ")")
	if f.Match == "f" {
		b.WriteString(" MATCH FULL")
	}
	b.WriteString(" ON UPDATE " + fkActions[f.OnUpdate] + " ON DELETE " + fkActions[f.OnDelete])
	if len(f.SetCols) > 0 {
		b.WriteString(" (" + db.IdentList(f.SetCols) + ")")
	}
	if f.Deferrable {
		b.WriteString(" DEFERRABLE")
		if f.Deferred {
			b.WriteString(" INITIALLY DEFERRED")
		}
	}
	b.WriteString(" NOT VALID")
	return b.String()
}

func (f *foreignKey) dropSQL() string {
	return "ALTER TABLE " + db.Ident(f.Table.Schema, f.Table.Name) + " DROP CONSTRAINT " + db.Ident(f.Name)
}

func (f *foreignKey) validateSQL() string {
	return "ALTER TABLE " + db.Ident(f.Table.Schema, f.Table.Name) + " VALIDATE CONSTRAINT " + db.Ident(f.Name)
}

func fkQuery(major int) string {
	setCols := `'{}'::text[]`
	if major >= 15 {
		setCols = `ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(con.confdelsetcols) WITH ORDINALITY k(n, o)
			JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o)`
	}
	return `
SELECT con.oid, con.conname::text, rn.nspname::text, rc.relname::text, rc.oid,
       ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(con.conkey) WITH ORDINALITY k(n, o)
               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
       fn.nspname::text, fc.relname::text, fc.oid,
       ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(con.confkey) WITH ORDINALITY k(n, o)
               JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o),
       con.confmatchtype::text, con.confupdtype::text, con.confdeltype::text, ` + setCols + `,
       con.condeferrable, con.condeferred, con.convalidated
  FROM pg_constraint con
  JOIN pg_class rc ON rc.oid = con.conrelid
  JOIN pg_namespace rn ON rn.oid = rc.relnamespace
  JOIN pg_class fc ON fc.oid = con.confrelid
  JOIN pg_namespace fn ON fn.oid = fc.relnamespace
 WHERE con.contype = 'f' AND con.conparentid = 0 AND `
}

func scanFKs(rows pgx.Rows) ([]*foreignKey, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (*foreignKey, error) {
		f := &foreignKey{}
		err := r.Scan(&f.OID, &f.Name, &f.Table.Schema, &f.Table.Name, &f.TableOID, &f.Columns,
			&f.RefTable.Schema, &f.RefTable.Name, &f.RefOID, &f.RefColumns,
			&f.Match, &f.OnUpdate, &f.OnDelete, &f.SetCols, &f.Deferrable, &f.Deferred, &f.Validated)
		return f, err
	})
}

// incomingFKs lists the FKs of other tables that reference oid (self
// references stay with their table).
func incomingFKs(ctx context.Context, q db.Querier, oid uint32, major int) ([]*foreignKey, error) {
	rows, err := q.Query(ctx, fkQuery(major)+`con.confrelid = $1 AND con.conrelid <> $1
		ORDER BY rn.nspname, rc.relname, con.conname`, oid)
	if err != nil {
		return nil, err
	}
	return scanFKs(rows)
}

// outgoingFKs lists oid's FKs to other tables.
func outgoingFKs(ctx context.Context, q db.Querier, oid uint32, major int) ([]*foreignKey, error) {
	rows, err := q.Query(ctx, fkQuery(major)+`con.conrelid = $1 AND con.confrelid <> $1 ORDER BY con.conname`, oid)
	if err != nil {
		return nil, err
	}
	return scanFKs(rows)
}

// hasUniqueOn reports whether oid has a valid, non-partial unique index (or
// primary key) on exactly the columns cols, which a foreign key needs.
func hasUniqueOn(ctx context.Context, q db.Querier, oid uint32, cols []string) (bool, error) {
	rows, err := q.Query(ctx, `
		SELECT ARRAY(SELECT a.attname::text FROM pg_catalog.generate_series(0, i.indnkeyatts - 1) s
		             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[s])
		  FROM pg_index i
		 WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
		   AND i.indimmediate`, oid)
	if err != nil {
		return false, err
	}
	sets, err := pgx.CollectRows(rows, pgx.RowTo[[]string])
	if err != nil {
		return false, err
	}
	want := slices.Sorted(slices.Values(cols))
	for _, s := range sets {
		slices.Sort(s)
		if slices.Equal(s, want) {
			return true, nil
		}
	}
	return false, nil
}

// ---------------------------------------------------------------------------
// User triggers

// userTrigger is a trigger of the user's on blue or green (greenswap's own
// gs_sync_* triggers excluded).
type userTrigger struct {
	Name    string `json:"name"`
	Enabled string `json:"enabled"` // pg_trigger.tgenabled: O, D, R, A
	Def     string `json:"-"`
}

// loadTriggers returns rel's user triggers and rel as the catalog prints it
// under the current search_path (to find it in the definitions).
func loadTriggers(ctx context.Context, q db.Querier, oid uint32) ([]userTrigger, string, error) {
	var printed string
	if err := q.QueryRow(ctx, `SELECT $1::oid::regclass::text`, oid).Scan(&printed); err != nil {
		return nil, "", err
	}
	rows, err := q.Query(ctx, `SELECT tgname::text, tgenabled::text, pg_catalog.pg_get_triggerdef(oid) FROM pg_trigger
		WHERE tgrelid = $1 AND NOT tgisinternal AND pg_catalog.left(tgname::text, 8) <> 'gs_sync_' ORDER BY tgname`, oid)
	if err != nil {
		return nil, "", err
	}
	trs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (userTrigger, error) {
		var t userTrigger
		err := r.Scan(&t.Name, &t.Enabled, &t.Def)
		return t, err
	})
	return trs, printed, err
}

// retarget rewrites a pg_get_triggerdef statement for another table: the
// relation follows " ON " right after the event list, printed as from.
func retarget(def, from string, to spec.QualifiedName) (string, bool) {
	marker := " ON " + from + " "
	i := strings.Index(def, marker)
	if i < 0 {
		return "", false
	}
	return def[:i] + " ON " + db.Ident(to.Schema, to.Name) + " " + def[i+len(marker):], true
}

// triggerModeSQL sets trigger name on rel to mode (a tgenabled value).
func triggerModeSQL(rel spec.QualifiedName, name, mode string) string {
	verb := map[string]string{"O": "ENABLE", "D": "DISABLE", "R": "ENABLE REPLICA", "A": "ENABLE ALWAYS"}[mode]
	if verb == "" {
		verb = "ENABLE"
	}
	return "ALTER TABLE " + db.Ident(rel.Schema, rel.Name) + " " + verb + " TRIGGER " + db.Ident(name)
}

// syncTriggerState returns tgenabled of greenswap's row sync trigger on
// oid ("" when it is missing).
func syncTriggerState(ctx context.Context, q db.Querier, oid uint32, name string) (string, error) {
	var st string
	err := q.QueryRow(ctx, `SELECT tgenabled::text FROM pg_trigger WHERE tgrelid = $1 AND tgname = $2`, oid, name).Scan(&st)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return st, err
}

// ---------------------------------------------------------------------------
// Fingerprint

// fingerprintSQL summarises what the swap was planned from: the pg_class
// rows of every relation it touches (any ALTER rewrites them), their
// triggers, constraints, policies and the views over them. Read again under
// the locks, a different value means the plan is stale.
const fingerprintSQL = `
SELECT coalesce(pg_catalog.md5(pg_catalog.string_agg(x, ',' ORDER BY x)), '') FROM (
    SELECT 'c' || c.oid || ':' || c.xmin::text || ':' || c.relname || ':' || c.relnamespace AS x FROM pg_class c WHERE c.oid = ANY ($1)
    UNION ALL SELECT 't' || t.oid || t.tgenabled::text FROM pg_trigger t WHERE t.tgrelid = ANY ($1)
    UNION ALL SELECT 'k' || k.oid FROM pg_constraint k WHERE k.conrelid = ANY ($1) OR k.confrelid = ANY ($1)
    UNION ALL SELECT 'p' || p.oid FROM pg_policy p WHERE p.polrelid = ANY ($1)
    UNION ALL SELECT 'v' || r.ev_class FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
               WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = ANY ($1)
) s`

func fingerprint(ctx context.Context, q db.Querier, oids []uint32) (string, error) {
	var fp string
	err := q.QueryRow(ctx, fingerprintSQL, oids).Scan(&fp)
	return fp, err
}

// serverMajor reads the server's major version.
func serverMajor(ctx context.Context, q db.Querier) (int, error) {
	var v int
	err := q.QueryRow(ctx, `SELECT pg_catalog.current_setting('server_version_num')::int / 10000`).Scan(&v)
	return v, err
}
