package shadow

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/spec"
)

// ErrTableNotFound is wrapped by LoadTable's error when no relation of that
// name exists.
var ErrTableNotFound = errors.New("table not found")

// ErrNotATable is wrapped by LoadTable's error when the name exists but is
// not an ordinary or partitioned table (a view, a materialized view, a
// sequence, ...). The message says what the relation is.
var ErrNotATable = errors.New("not a table")

// exactCountMaxBytes is the heap size under which a never-analyzed table is
// counted exactly for RowEstimate.
const exactCountMaxBytes = 64 << 20

// relkindNames describes pg_class.relkind values for error messages.
var relkindNames = map[string]string{
	"r": "a table",
	"p": "a partitioned table",
	"v": "a view",
	"m": "a materialized view",
	"i": "an index",
	"I": "a partitioned index",
	"S": "a sequence",
	"t": "a TOAST table",
	"f": "a foreign table",
	"c": "a composite type",
}

// LoadTable reads the full catalog description of the table name. Every
// query runs through q; run it inside a REPEATABLE READ transaction to get
// one consistent snapshot. The error wraps ErrTableNotFound when the
// relation does not exist and ErrNotATable when it is not a table.
func LoadTable(ctx context.Context, q db.Querier, name spec.QualifiedName) (*Table, error) {
	var version int
	if err := q.QueryRow(ctx, `SELECT pg_catalog.current_setting('server_version_num')::int`).Scan(&version); err != nil {
		return nil, fmt.Errorf("load %s: server version: %w", name, err)
	}

	t := &Table{Name: name}
	var (
		isPartition bool
		hasACL      bool
	)
	err := q.QueryRow(ctx, `
SELECT c.oid, c.relkind::text, pg_catalog.pg_get_userbyid(c.relowner)::text,
       coalesce(pg_catalog.obj_description(c.oid, 'pg_class'), ''),
       c.relrowsecurity, c.relforcerowsecurity, c.relreplident::text,
       c.relispartition, c.relacl IS NOT NULL
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2`, name.Schema, name.Name).Scan(
		&t.OID, &t.Kind, &t.Owner, &t.Comment,
		&t.RLSEnabled, &t.RLSForced, &t.ReplicaIdentity,
		&isPartition, &hasACL)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("load %s: %w", name, ErrTableNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", name, err)
	}
	if t.Kind != "r" && t.Kind != "p" {
		what := relkindNames[t.Kind]
		if what == "" {
			what = fmt.Sprintf("a relation of kind %q", t.Kind)
		}
		return nil, fmt.Errorf("load %s: %s is %s, not a table: %w", name, name, what, ErrNotATable)
	}

	steps := []struct {
		what string
		fn   func() error
	}{
		{"columns", func() error { return loadColumns(ctx, q, t) }},
		{"indexes", func() error { return loadIndexes(ctx, q, t) }},
		{"constraints", func() error { return loadConstraints(ctx, q, t) }},
		{"foreign keys", func() error { return loadForeignKeys(ctx, q, t) }},
		{"triggers", func() error { return loadTriggers(ctx, q, t) }},
		{"dependent views", func() error { return loadViews(ctx, q, t) }},
		{"policies", func() error { return loadPolicies(ctx, q, t) }},
		{"grants", func() error {
			if !hasACL {
				return nil // relacl NULL: only the owner's implicit privileges
			}
			return loadGrants(ctx, q, t)
		}},
		{"column grants", func() error {
			var err error
			t.ColumnGrants, err = LoadColumnGrants(ctx, q, t.OID)
			return err
		}},
		{"owned sequences", func() error { return loadSequences(ctx, q, t) }},
		{"free sequences", func() error { return loadFreeSequences(ctx, q, t) }},
		{"publications", func() error { return loadPublications(ctx, q, t, version) }},
		{"partitioning", func() error { return loadPartitioning(ctx, q, t, isPartition) }},
		{"size", func() error { return loadSize(ctx, q, t) }},
	}
	for _, s := range steps {
		if err := s.fn(); err != nil {
			return nil, fmt.Errorf("load %s: %s: %w", name, s.what, err)
		}
	}
	sortCatalog(t)
	return t, nil
}

// sortCatalog puts every list in a deterministic byte-wise order, whatever
// the database's collation: indexes primary first then by name; constraints,
// triggers, policies and publications by name; outgoing FKs by name,
// incoming ones by referencing table then name; views by Depth then name;
// grants by grantee then privilege. Columns and owned sequences stay in
// attnum order.
func sortCatalog(t *Table) {
	slices.SortStableFunc(t.Indexes, func(a, b Index) int {
		if a.Primary != b.Primary {
			if a.Primary {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.Name, b.Name)
	})
	slices.SortStableFunc(t.Constraints, func(a, b Constraint) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortStableFunc(t.ForeignKeys, func(a, b ForeignKey) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortStableFunc(t.ReferencedBy, func(a, b ForeignKey) int {
		return cmp.Or(cmp.Compare(a.Table.Schema, b.Table.Schema), cmp.Compare(a.Table.Name, b.Table.Name),
			cmp.Compare(a.Name, b.Name))
	})
	slices.SortStableFunc(t.Triggers, func(a, b Trigger) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortStableFunc(t.DependentViews, func(a, b View) int {
		return cmp.Or(cmp.Compare(a.Depth, b.Depth), cmp.Compare(a.Name.Schema, b.Name.Schema),
			cmp.Compare(a.Name.Name, b.Name.Name))
	})
	slices.SortStableFunc(t.Policies, func(a, b Policy) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortStableFunc(t.Grants, func(a, b Grant) int {
		return cmp.Or(cmp.Compare(a.Grantee, b.Grantee), cmp.Compare(a.Privilege, b.Privilege))
	})
	slices.Sort(t.Publications)
	sortColumnGrants(t.ColumnGrants)

	t.Constraints = nilIfEmpty(t.Constraints)
	t.ForeignKeys = nilIfEmpty(t.ForeignKeys)
	t.ReferencedBy = nilIfEmpty(t.ReferencedBy)
	t.Triggers = nilIfEmpty(t.Triggers)
	t.DependentViews = nilIfEmpty(t.DependentViews)
	t.Policies = nilIfEmpty(t.Policies)
	t.Grants = nilIfEmpty(t.Grants)
	t.OwnedSequences = nilIfEmpty(t.OwnedSequences)
	t.FreeSequences = nilIfEmpty(t.FreeSequences)
	t.ColumnGrants = nilIfEmpty(t.ColumnGrants)
	t.Publications = nilIfEmpty(t.Publications)
}

// nilIfEmpty makes the optional lists nil when empty (Columns and Indexes
// stay non-nil), so a Table compares equal however it was built.
func nilIfEmpty[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}

func loadColumns(ctx context.Context, q db.Querier, t *Table) error {
	rows, err := q.Query(ctx, `
SELECT a.attnum, a.attname::text,
       -- Qualify types outside pg_catalog that the caller's search_path
       -- happens to see: mapping casts run under a fixed search_path.
       CASE WHEN ty.typnamespace = 'pg_catalog'::regnamespace OR NOT pg_catalog.pg_type_is_visible(a.atttypid)
            THEN pg_catalog.format_type(a.atttypid, a.atttypmod)
            ELSE pg_catalog.quote_ident(tn.nspname) || '.' || pg_catalog.format_type(a.atttypid, a.atttypmod) END,
       a.atttypid, a.attnotnull,
       CASE WHEN a.attgenerated = '' THEN coalesce(pg_catalog.pg_get_expr(d.adbin, d.adrelid), '') ELSE '' END,
       a.attidentity::text, a.attgenerated::text,
       CASE WHEN a.attgenerated <> '' THEN coalesce(pg_catalog.pg_get_expr(d.adbin, d.adrelid), '') ELSE '' END,
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> ty.typcollation THEN
            CASE WHEN coll.collnamespace = 'pg_catalog'::regnamespace THEN coll.collname::text
                 ELSE cn.nspname || '.' || coll.collname END
            ELSE '' END,
       coalesce(pg_catalog.col_description(a.attrelid, a.attnum), '')
  FROM pg_attribute a
  JOIN pg_type ty ON ty.oid = a.atttypid
  JOIN pg_namespace tn ON tn.oid = ty.typnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  LEFT JOIN pg_collation coll ON coll.oid = a.attcollation
  LEFT JOIN pg_namespace cn ON cn.oid = coll.collnamespace
 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum`, t.OID)
	if err != nil {
		return err
	}
	t.Columns, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Column, error) {
		var c Column
		err := r.Scan(&c.Num, &c.Name, &c.Type, &c.TypeOID, &c.NotNull, &c.Default,
			&c.Identity, &c.Generated, &c.GenerationExpr, &c.Collation, &c.Comment)
		return c, err
	})
	return err
}

func loadIndexes(ctx context.Context, q db.Querier, t *Table) error {
	rows, err := q.Query(ctx, `
SELECT ic.relname::text, i.indisprimary, i.indisunique, i.indisvalid, NOT i.indimmediate, i.indpred IS NOT NULL,
       EXISTS (SELECT 1 FROM pg_catalog.generate_series(0, i.indnkeyatts - 1) s WHERE i.indkey[s] = 0),
       ARRAY(SELECT a.attname::text
               FROM pg_catalog.generate_series(0, i.indnkeyatts - 1) s
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[s]
              ORDER BY s),
       pg_catalog.pg_get_indexdef(i.indexrelid),
       coalesce((SELECT con.conname::text FROM pg_constraint con
                  WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid
                    AND con.contype IN ('p', 'u', 'x')
                  LIMIT 1), '')
  FROM pg_index i
  JOIN pg_class ic ON ic.oid = i.indexrelid
 WHERE i.indrelid = $1
 ORDER BY i.indisprimary DESC, ic.relname`, t.OID)
	if err != nil {
		return err
	}
	t.Indexes, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Index, error) {
		var x Index
		err := r.Scan(&x.Name, &x.Primary, &x.Unique, &x.Valid, &x.Deferrable, &x.Partial, &x.Expression,
			&x.Columns, &x.Def, &x.Constraint)
		if x.Columns == nil {
			x.Columns = []string{}
		}
		return x, err
	})
	if err != nil {
		return err
	}
	for i := range t.Indexes {
		if t.Indexes[i].Primary {
			pk := t.Indexes[i]
			pk.Columns = append([]string(nil), pk.Columns...)
			t.PrimaryKey = &pk
			break
		}
	}
	return nil
}

func loadConstraints(ctx context.Context, q db.Querier, t *Table) error {
	rows, err := q.Query(ctx, `
SELECT conname::text, contype::text, pg_catalog.pg_get_constraintdef(oid), convalidated
  FROM pg_constraint
 WHERE conrelid = $1 AND contype IN ('c', 'u', 'x')
 ORDER BY conname`, t.OID)
	if err != nil {
		return err
	}
	t.Constraints, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Constraint, error) {
		var c Constraint
		err := r.Scan(&c.Name, &c.Type, &c.Def, &c.Validated)
		return c, err
	})
	return err
}

// fkQuery selects foreign keys; the WHERE clause is appended by the caller.
const fkQuery = `
SELECT con.conname::text,
       rn.nspname::text, rc.relname::text,
       ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(con.conkey) WITH ORDINALITY k(n, o)
               JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o),
       fn.nspname::text, fc.relname::text,
       ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(con.confkey) WITH ORDINALITY k(n, o)
               JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o),
       pg_catalog.pg_get_constraintdef(con.oid), con.convalidated
  FROM pg_constraint con
  JOIN pg_class rc ON rc.oid = con.conrelid
  JOIN pg_namespace rn ON rn.oid = rc.relnamespace
  JOIN pg_class fc ON fc.oid = con.confrelid
  JOIN pg_namespace fn ON fn.oid = fc.relnamespace
 WHERE con.contype = 'f' AND `

func scanFKs(rows pgx.Rows) ([]ForeignKey, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (ForeignKey, error) {
		var fk ForeignKey
		err := r.Scan(&fk.Name, &fk.Table.Schema, &fk.Table.Name, &fk.Columns,
			&fk.RefTable.Schema, &fk.RefTable.Name, &fk.RefColumns, &fk.Def, &fk.Validated)
		return fk, err
	})
}

func loadForeignKeys(ctx context.Context, q db.Querier, t *Table) error {
	rows, err := q.Query(ctx, fkQuery+`con.conrelid = $1 ORDER BY con.conname`, t.OID)
	if err != nil {
		return err
	}
	if t.ForeignKeys, err = scanFKs(rows); err != nil {
		return err
	}
	// Incoming: only top-level constraints. PostgreSQL clones an FK into
	// every partition of a partitioned referencing table and, for a
	// partitioned referenced table, once per referenced partition; the clones
	// (conparentid <> 0) follow their parent and cannot be dropped alone.
	rows, err = q.Query(ctx, fkQuery+`con.confrelid = $1 AND con.conparentid = 0
 ORDER BY rn.nspname, rc.relname, con.conname`, t.OID)
	if err != nil {
		return err
	}
	t.ReferencedBy, err = scanFKs(rows)
	return err
}

func loadTriggers(ctx context.Context, q db.Querier, t *Table) error {
	rows, err := q.Query(ctx, `
SELECT tgname::text, tgenabled::text, pg_catalog.pg_get_triggerdef(oid)
  FROM pg_trigger
 WHERE tgrelid = $1 AND NOT tgisinternal AND pg_catalog.left(tgname::text, 8) <> 'gs_sync_'
 ORDER BY tgname`, t.OID)
	if err != nil {
		return err
	}
	t.Triggers, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Trigger, error) {
		var tg Trigger
		err := r.Scan(&tg.Name, &tg.Enabled, &tg.Def)
		return tg, err
	})
	return err
}

// loadViews finds views and materialized views that read the table, directly
// or through other views. Depth is the longest dependency path from the
// table, so re-creating views in ascending Depth order is always valid.
func loadViews(ctx context.Context, q db.Querier, t *Table) error {
	rows, err := q.Query(ctx, `
WITH RECURSIVE deps(oid, depth) AS (
    SELECT DISTINCT r.ev_class, 1
      FROM pg_depend d
      JOIN pg_rewrite r ON r.oid = d.objid
     WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
       AND d.refobjid = $1 AND r.ev_class <> $1
  UNION
    SELECT r.ev_class, deps.depth + 1
      FROM deps
      JOIN pg_depend d ON d.refobjid = deps.oid
                      AND d.refclassid = 'pg_class'::regclass
                      AND d.classid = 'pg_rewrite'::regclass
      JOIN pg_rewrite r ON r.oid = d.objid
     WHERE r.ev_class <> deps.oid AND deps.depth < 100
), v AS (
    SELECT oid, pg_catalog.max(depth) AS depth FROM deps GROUP BY oid
)
SELECT n.nspname::text, c.relname::text, c.relkind = 'm', pg_catalog.pg_get_viewdef(c.oid), v.depth
  FROM v
  JOIN pg_class c ON c.oid = v.oid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('v', 'm')
 ORDER BY v.depth, n.nspname, c.relname`, t.OID)
	if err != nil {
		return err
	}
	t.DependentViews, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (View, error) {
		var v View
		err := r.Scan(&v.Name.Schema, &v.Name.Name, &v.Materialized, &v.Def, &v.Depth)
		return v, err
	})
	return err
}

var policyCmds = map[string]string{"*": "ALL", "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}

func loadPolicies(ctx context.Context, q db.Querier, t *Table) error {
	rows, err := q.Query(ctx, `
SELECT p.polname::text, p.polcmd::text, p.polpermissive,
       ARRAY(SELECT CASE WHEN u.r = 0 THEN '' ELSE pg_catalog.pg_get_userbyid(u.r)::text END
               FROM pg_catalog.unnest(p.polroles) WITH ORDINALITY u(r, o) ORDER BY u.o),
       coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), ''),
       coalesce(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), ''),
       ARRAY(SELECT a.attname::text
               FROM pg_depend d
               JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
              WHERE d.classid = 'pg_policy'::regclass AND d.objid = p.oid
                AND d.refclassid = 'pg_class'::regclass AND d.refobjid = p.polrelid AND d.refobjsubid > 0
              GROUP BY a.attnum, a.attname ORDER BY a.attnum)
  FROM pg_policy p
 WHERE p.polrelid = $1
 ORDER BY p.polname`, t.OID)
	if err != nil {
		return err
	}
	t.Policies, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Policy, error) {
		var (
			p                 Policy
			cmd, using, check string
			permissive        bool
			roles             []string
		)
		if err := r.Scan(&p.Name, &cmd, &permissive, &roles, &using, &check, &p.Columns); err != nil {
			return p, err
		}
		p.Cmd = policyCmds[cmd]
		if p.Cmd == "" {
			p.Cmd = cmd
		}
		if len(p.Columns) == 0 {
			p.Columns = nil
		}
		if roles == nil {
			roles = []string{}
		}
		p.Permissive, p.Roles, p.Using, p.Check = permissive, roles, using, check
		p.Def = policyDef(p.Name, t.Name, permissive, p.Cmd, roles, using, check)
		return p, nil
	})
	return err
}

// policyDef builds the CREATE POLICY statement for one policy on table.
// An empty role name stands for PUBLIC.
func policyDef(name string, table spec.QualifiedName, permissive bool, cmd string, roles []string, using, check string) string {
	var b strings.Builder
	b.WriteString("CREATE POLICY ")
	b.WriteString(db.Ident(name))
	b.WriteString(" ON ")
	b.WriteString(db.Ident(table.Schema, table.Name))
	if permissive {
		b.WriteString(" AS PERMISSIVE")
	} else {
		b.WriteString(" AS RESTRICTIVE")
	}
	b.WriteString(" FOR ")
	b.WriteString(cmd)
	b.WriteString(" TO ")
	if len(roles) == 0 {
		b.WriteString("PUBLIC")
	}
	for i, r := range roles {
		if i > 0 {
			b.WriteString(", ")
		}
		if r == "" {
			b.WriteString("PUBLIC")
		} else {
			b.WriteString(db.Ident(r))
		}
	}
	if using != "" {
		b.WriteString(" USING (")
		b.WriteString(using)
		b.WriteString(")")
	}
	if check != "" {
		b.WriteString(" WITH CHECK (")
		b.WriteString(check)
		b.WriteString(")")
	}
	return b.String()
}

func loadGrants(ctx context.Context, q db.Querier, t *Table) error {
	rows, err := q.Query(ctx, `
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END,
       a.privilege_type, a.is_grantable
  FROM pg_class c, pg_catalog.aclexplode(c.relacl) a
 WHERE c.oid = $1
 ORDER BY 1, 2`, t.OID)
	if err != nil {
		return err
	}
	t.Grants, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Grant, error) {
		var g Grant
		err := r.Scan(&g.Grantee, &g.Privilege, &g.Grantable)
		return g, err
	})
	return err
}

// LoadColumnGrants reads the column-level privileges of relation rel
// (pg_attribute.attacl), sorted by column number, grantee, privilege.
func LoadColumnGrants(ctx context.Context, q db.Querier, rel uint32) ([]ColumnGrant, error) {
	rows, err := q.Query(ctx, `
SELECT a.attname::text,
       CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(x.grantee)::text END,
       x.privilege_type, x.is_grantable
  FROM pg_attribute a, pg_catalog.aclexplode(a.attacl) x
 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attacl IS NOT NULL
 ORDER BY a.attnum, 2, 3`, rel)
	if err != nil {
		return nil, err
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ColumnGrant, error) {
		var g ColumnGrant
		err := r.Scan(&g.Column, &g.Grantee, &g.Privilege, &g.Grantable)
		return g, err
	})
	if err != nil {
		return nil, err
	}
	// The query orders columns by attnum; only grantee and privilege need
	// a byte-wise order independent of the collation.
	sortColumnGrants(out)
	return nilIfEmpty(out), nil
}

// sortColumnGrants keeps the columns in the order they come (attnum) and
// sorts each column's grants by grantee, then privilege, byte-wise.
func sortColumnGrants(g []ColumnGrant) {
	pos := map[string]int{}
	for _, x := range g {
		if _, ok := pos[x.Column]; !ok {
			pos[x.Column] = len(pos)
		}
	}
	slices.SortStableFunc(g, func(a, b ColumnGrant) int {
		return cmp.Or(cmp.Compare(pos[a.Column], pos[b.Column]), cmp.Compare(a.Grantee, b.Grantee),
			cmp.Compare(a.Privilege, b.Privilege))
	})
}

func loadSequences(ctx context.Context, q db.Querier, t *Table) error {
	rows, err := q.Query(ctx, `
SELECT n.nspname::text, s.relname::text, a.attname::text, d.deptype = 'i'
  FROM pg_depend d
  JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
  JOIN pg_namespace n ON n.oid = s.relnamespace
  JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
   AND d.refobjid = $1 AND d.deptype IN ('a', 'i')
 ORDER BY a.attnum, s.relname`, t.OID)
	if err != nil {
		return err
	}
	t.OwnedSequences, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Sequence, error) {
		var s Sequence
		err := r.Scan(&s.Name.Schema, &s.Name.Name, &s.Column, &s.Identity)
		return s, err
	})
	return err
}

// loadFreeSequences finds the sequences the table's column defaults call
// nextval on that no column of any table owns.
func loadFreeSequences(ctx context.Context, q db.Querier, t *Table) error {
	rows, err := q.Query(ctx, `
SELECT DISTINCT n.nspname::text, s.relname::text, a.attname::text, a.attnum
  FROM pg_attrdef ad
  JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
  JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.refclassid = 'pg_class'::regclass
  JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
  JOIN pg_namespace n ON n.oid = s.relnamespace
 WHERE ad.adrelid = $1
   AND NOT EXISTS (SELECT 1 FROM pg_depend o
                    WHERE o.classid = 'pg_class'::regclass AND o.objid = s.oid
                      AND o.refclassid = 'pg_class'::regclass AND o.deptype IN ('a', 'i'))
 ORDER BY a.attnum, 2`, t.OID)
	if err != nil {
		return err
	}
	t.FreeSequences, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Sequence, error) {
		var (
			s   Sequence
			num int16
		)
		err := r.Scan(&s.Name.Schema, &s.Name.Name, &s.Column, &num)
		return s, err
	})
	return err
}

// loadPublications lists the publications that publish the table: those that
// name it or one of its partition ancestors, FOR ALL TABLES ones, and on
// PostgreSQL 15+ FOR TABLES IN SCHEMA ones covering its (or an ancestor's)
// schema.
func loadPublications(ctx context.Context, q db.Querier, t *Table, version int) error {
	query := `
WITH rels AS (
    SELECT $1::oid AS relid
    UNION
    SELECT relid FROM pg_catalog.pg_partition_ancestors($1::oid)
)
SELECT p.pubname::text FROM pg_publication p
 WHERE p.puballtables
    OR EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN rels ON rels.relid = pr.prrelid
                WHERE pr.prpubid = p.oid)`
	if version >= 150000 {
		query += `
    OR EXISTS (SELECT 1 FROM pg_publication_namespace pn
                 JOIN pg_class c ON c.relnamespace = pn.pnnspid
                 JOIN rels ON rels.relid = c.oid
                WHERE pn.pnpubid = p.oid)`
	}
	query += `
 ORDER BY p.pubname`
	rows, err := q.Query(ctx, query, t.OID)
	if err != nil {
		return err
	}
	t.Publications, err = pgx.CollectRows(rows, pgx.RowTo[string])
	return err
}

func loadPartitioning(ctx context.Context, q db.Querier, t *Table, isPartition bool) error {
	if t.Kind == "p" {
		if err := q.QueryRow(ctx, `SELECT pg_catalog.pg_get_partkeydef($1::oid)`, t.OID).Scan(&t.PartitionKey); err != nil {
			return err
		}
	}
	if isPartition {
		var parent spec.QualifiedName
		err := q.QueryRow(ctx, `
SELECT n.nspname::text, c.relname::text
  FROM pg_inherits i
  JOIN pg_class c ON c.oid = i.inhparent
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE i.inhrelid = $1`, t.OID).Scan(&parent.Schema, &parent.Name)
		if err != nil {
			return err
		}
		t.PartitionOf = &parent
	}
	return nil
}

// loadSize fills TotalBytes and RowEstimate. For a partitioned table both
// sum over its partition tree (the partitioned table itself stores nothing).
// RowEstimate uses pg_class.reltuples of the leaves; when a leaf was never
// analyzed (reltuples < 0) and the heap is under 64 MB, it counts exactly
// (when the caller may SELECT the table; the count sees what row-level
// security lets the caller see), else unknown leaves count as 0.
func loadSize(ctx context.Context, q db.Querier, t *Table) error {
	var (
		heapBytes int64
		tuples    float64
		unknown   bool
		canSelect bool
	)
	err := q.QueryRow(ctx, `
SELECT coalesce(pg_catalog.sum(pg_catalog.pg_total_relation_size(pt.relid)), 0)::int8,
       coalesce(pg_catalog.sum(pg_catalog.pg_relation_size(pt.relid)) FILTER (WHERE pt.isleaf), 0)::int8,
       coalesce(pg_catalog.sum(greatest(c.reltuples, 0)) FILTER (WHERE pt.isleaf), 0)::float8,
       coalesce(pg_catalog.bool_or(c.reltuples < 0) FILTER (WHERE pt.isleaf), false),
       pg_catalog.has_table_privilege($1::oid, 'SELECT')
  FROM (SELECT relid::oid AS relid, isleaf FROM pg_catalog.pg_partition_tree($1::oid)
        UNION ALL
        -- a table that is not part of a partition tree has no rows there
        SELECT $1::oid, true WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_partition_tree($1::oid))) pt
  JOIN pg_class c ON c.oid = pt.relid`, t.OID).Scan(&t.TotalBytes, &heapBytes, &tuples, &unknown, &canSelect)
	if err != nil {
		return err
	}
	t.RowEstimate = int64(tuples + 0.5)
	if unknown && heapBytes < exactCountMaxBytes && canSelect {
		return q.QueryRow(ctx, `SELECT pg_catalog.count(*) FROM `+db.Ident(t.Name.Schema, t.Name.Name)).Scan(&t.RowEstimate)
	}
	return nil
}
