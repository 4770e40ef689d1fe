package shadow

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/spec"
)

// FingerprintVersion changes when the fingerprint's content changes
// meaning; a recorded one of another version is replaced, not compared,
// except version 1 (before indexes were part of it): see Comparable.
const FingerprintVersion = 2

// fingerprintIndexesSince is the first version that records indexes.
const fingerprintIndexesSince = 2

// Fingerprint describes what an app deploy may change on the three objects
// of a migration (the app-name view, blue, green), so a change made outside
// greenswap during the migration can be named before cutover or finalize
// acts on a shape that is no longer the one it built (design trap 16).
// greenswap's own triggers are left out. It is plain data: recorded as
// JSON in greenswap.migrations and compared with DiffFingerprints. A
// migration of several tables has the three objects of every table, each
// tagged with its table (ObjectPrint.Table).
type Fingerprint struct {
	Version int           `json:"version"`
	Objects []ObjectPrint `json:"objects"`
}

// ObjectPrint is one relation of the fingerprint. Role is "app", "blue" or
// "green". A missing relation has Exists false and nothing else. Table is
// the app table the object belongs to in a migration of several tables
// (empty for one table, so a one-table fingerprint reads as before).
type ObjectPrint struct {
	Table       string        `json:"table,omitempty"`
	Role        string        `json:"role"`
	Name        string        `json:"name"`
	Exists      bool          `json:"exists"`
	Kind        string        `json:"kind,omitempty"`
	Owner       string        `json:"owner,omitempty"`
	Columns     []ColumnPrint `json:"columns,omitempty"`
	Constraints []NamedDef    `json:"constraints,omitempty"`
	// Indexes are the ones no constraint owns (a primary key's or unique
	// constraint's index is its constraint): one added to blue alone is
	// not on green, so the app loses it at cutover and for good at
	// finalize. Recorded from version 2 on.
	Indexes  []NamedDef `json:"indexes,omitempty"`
	ViewDef  string     `json:"view_def,omitempty"`
	Options  []string   `json:"options,omitempty"`
	Triggers []NamedDef `json:"triggers,omitempty"`
	Rules    []NamedDef `json:"rules,omitempty"`
	RLS      bool       `json:"rls,omitempty"`
	ForceRLS bool       `json:"force_rls,omitempty"`
	Policies []NamedDef `json:"policies,omitempty"`
	ACL      []ACLItem  `json:"acl,omitempty"`
	Parents  []string   `json:"parents,omitempty"`
	Children []string   `json:"children,omitempty"`
}

// ColumnPrint is one column. Num (attnum) survives RENAME COLUMN, so a
// rename reads as one.
type ColumnPrint struct {
	Num       int       `json:"num"`
	Name      string    `json:"name"`
	Type      string    `json:"type"`
	NotNull   bool      `json:"not_null,omitempty"`
	Default   string    `json:"default,omitempty"`
	Generated string    `json:"generated,omitempty"`
	Identity  string    `json:"identity,omitempty"`
	Collation string    `json:"collation,omitempty"`
	ACL       []ACLItem `json:"acl,omitempty"`
}

// NamedDef is a named object and its definition text.
type NamedDef struct {
	Name string `json:"name"`
	Def  string `json:"def"`
}

// ACLItem is one normalized ACL entry: the grantor is left out, since
// the same grant made by another role means the same to the grantee.
type ACLItem struct {
	Grantee   string `json:"grantee"` // role name, or PUBLIC
	Privilege string `json:"privilege"`
	Grantable bool   `json:"grantable,omitempty"`
}

func (p ACLItem) String() string {
	s := p.Privilege + " TO " + p.Grantee
	if p.Grantable {
		s += " WITH GRANT OPTION"
	}
	return s
}

// Object returns the print of role ("app", "blue", "green"), or nil; for
// several tables, the first table's (see ObjectOf).
func (f *Fingerprint) Object(role string) *ObjectPrint {
	if f == nil || len(f.Objects) == 0 {
		return nil
	}
	return f.ObjectOf(f.Objects[0].Table, role)
}

// ObjectOf returns the print of role for the app table table ("" for a
// migration of one table), or nil.
func (f *Fingerprint) ObjectOf(table, role string) *ObjectPrint {
	if f == nil {
		return nil
	}
	for i := range f.Objects {
		if f.Objects[i].Table == table && f.Objects[i].Role == role {
			return &f.Objects[i]
		}
	}
	return nil
}

// Tables are the tables of the fingerprint in the order recorded: one ""
// for a migration of one table.
func (f *Fingerprint) Tables() []string {
	var out []string
	for _, o := range f.Objects {
		if !slices.Contains(out, o.Table) {
			out = append(out, o.Table)
		}
	}
	return out
}

// Comparable reports whether a recorded fingerprint can be compared with
// one taken now: this version, or version 1, whose objects lack only
// their indexes (compared from version 2 on; Upgrade fills them in).
func (f *Fingerprint) Comparable() bool {
	return f.Version >= 1 && f.Version <= FingerprintVersion
}

// Upgrade makes a comparable recorded fingerprint of an older version
// current: the parts it lacks (version 1: the indexes) are taken from
// current, so indexes made before the upgrade become the baseline.
func (f *Fingerprint) Upgrade(current *Fingerprint) {
	if f.Version >= fingerprintIndexesSince {
		return
	}
	for i := range f.Objects {
		if o := current.ObjectOf(f.Objects[i].Table, f.Objects[i].Role); o != nil {
			f.Objects[i].Indexes = o.Indexes
		}
	}
	f.Version = FingerprintVersion
}

// Label names the object in a drift line: "public.orders (the app view)".
func (o *ObjectPrint) Label() string {
	switch o.Role {
	case "app":
		return o.Name + " (the app view)"
	default:
		return o.Name + " (" + o.Role + ")"
	}
}

func (o *ObjectPrint) column(name string) *ColumnPrint {
	for i := range o.Columns {
		if o.Columns[i].Name == name {
			return &o.Columns[i]
		}
	}
	return nil
}

// Drift is one change found. Object is the label of the relation, Change
// what changed, Fix what to do (SQL where it is simple). Table is the app
// table of a migration of several tables the object belongs to (empty for
// one table; the label names the object either way).
type Drift struct {
	Table  string `json:"table,omitempty"`
	Role   string `json:"role"` // "app", "blue", "green"
	Object string `json:"object"`
	Kind   string `json:"kind"` // "column", "constraint", "index", "view", "trigger", "rls", "policy", "owner", "privilege", "inheritance", "relation"
	Change string `json:"change"`
	Fix    string `json:"fix,omitempty"`
	// Uncarried: greenswap cannot go ahead with this change even once
	// accepted, because it changes what the mapping reads or writes (a
	// column added, renamed, dropped or retyped, a relation gone) or what
	// the sync writes may land on (see CarryDrift): verify --accept-drift
	// refuses it.
	Uncarried bool `json:"uncarried,omitempty"`
	// Column, Name, Op and Def say what changed, for CarryDrift: the
	// column (its name now), the index, constraint or trigger, "added",
	// "removed", "changed" or "not_null", and the definition (now; the
	// recorded one when removed).
	Column string `json:"column,omitempty"`
	Name   string `json:"name,omitempty"`
	Op     string `json:"op,omitempty"`
	Def    string `json:"def,omitempty"`
}

func (d Drift) String() string { return d.Object + ": " + d.Change }

// TakeFingerprint reads the fingerprint of n's three objects through q
// (a pool, a connection or the caller's transaction). It reads under
// search_path = pg_catalog in its own (sub)transaction, so definitions
// come out qualified the same way whatever the session's path.
func TakeFingerprint(ctx context.Context, q TxBeginner, n Names) (*Fingerprint, error) {
	return TakeFingerprints(ctx, q, []Names{n}, false)
}

// TakeFingerprints is TakeFingerprint of every table of a migration,
// members in order, in the same two round trips; with several, each
// object is tagged with its app table.
func TakeFingerprints(ctx context.Context, q TxBeginner, members []Names, several bool) (*Fingerprint, error) {
	if len(members) == 0 {
		return nil, fmt.Errorf("fingerprint: no table")
	}
	n := members[0]
	tx, err := q.Begin(ctx)
	if err != nil {
		return nil, err
	}
	// A rollback (of the savepoint, inside a caller's transaction) also
	// undoes the SET LOCAL.
	defer tx.Rollback(ctx)
	// Two round trips in all (cutover takes it while holding its locks):
	// the relations, then everything about the ones that exist.
	fp := &Fingerprint{Version: FingerprintVersion}
	type rel struct {
		table, role string
		name        spec.QualifiedName
		names       Names
	}
	var roles []rel
	for _, m := range members {
		table := ""
		if several {
			table = m.App.String()
		}
		roles = append(roles, rel{table, "app", m.App, m}, rel{table, "blue", m.Blue, m}, rel{table, "green", m.Green, m})
	}
	fp.Objects = make([]ObjectPrint, len(roles))
	oids := make([]uint32, len(roles))
	b := &pgx.Batch{}
	b.Queue("SET LOCAL search_path = pg_catalog")
	for i, r := range roles {
		o := &fp.Objects[i]
		o.Table, o.Role, o.Name = r.table, r.role, r.name.String()
		b.Queue(driftRelSQL, r.name.Schema, r.name.Name).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				o.Exists = true
				if err := rows.Scan(&oids[i], &o.Kind, &o.Owner, &o.RLS, &o.ForceRLS, &o.Options, &o.ViewDef); err != nil {
					return err
				}
			}
			return rows.Err()
		})
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("fingerprint of %s: %w", n.App, err)
	}
	b = &pgx.Batch{}
	for i := range fp.Objects {
		if fp.Objects[i].Exists {
			driftQueueObject(b, roles[i].names, &fp.Objects[i], oids[i])
		}
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("fingerprint of %s: %w", n.App, err)
	}
	return fp, nil
}

const driftRelSQL = `
SELECT c.oid, c.relkind::text, pg_catalog.pg_get_userbyid(c.relowner), c.relrowsecurity, c.relforcerowsecurity,
       COALESCE((SELECT pg_catalog.array_agg(o ORDER BY o) FROM pg_catalog.unnest(c.reloptions) o), '{}'),
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) ELSE '' END
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace
 WHERE s.nspname = $1 AND c.relname = $2`

// driftAclSQL explodes an ACL, the owner's implicit default when it is NULL.
const driftAclSQL = `
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee) END, a.privilege_type, a.is_grantable
  FROM pg_catalog.pg_class c,
       pg_catalog.aclexplode(COALESCE(c.relacl, pg_catalog.acldefault('r', c.relowner))) a
 WHERE c.oid = $1`

const driftColSQL = `
SELECT a.attnum, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
       COALESCE(pg_catalog.pg_get_expr(d.adbin, d.adrelid), ''), a.attgenerated::text, a.attidentity::text,
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
            THEN (SELECT cn.nspname || '.' || co.collname FROM pg_catalog.pg_collation co
                    JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation)
            ELSE '' END,
       COALESCE((SELECT pg_catalog.array_agg(
                   (CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(x.grantee) END)
                   || '|' || x.privilege_type || '|' || x.is_grantable::text ORDER BY 1)
                   FROM pg_catalog.aclexplode(a.attacl) x), '{}')
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum`

// A constraint's NOT VALID suffix is left out: cutover adds foreign keys
// NOT VALID and validates them after its commit.
const driftConSQL = `
SELECT k.conname, pg_catalog.regexp_replace(pg_catalog.pg_get_constraintdef(k.oid), ' NOT VALID$', '')
  FROM pg_catalog.pg_constraint k WHERE k.conrelid = $1 ORDER BY k.conname`

// greenswap's own triggers (the sync, truncate, usage and gate triggers)
// are named after the migration's trigger or run a gs_ function kept in
// one of its version schemas; every other trigger is the user's.
const driftTrgSQL = `
SELECT g.tgname, pg_catalog.pg_get_triggerdef(g.oid) || ' [' || g.tgenabled::text || ']'
  FROM pg_catalog.pg_trigger g
  JOIN pg_catalog.pg_proc p ON p.oid = g.tgfoid
  JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
 WHERE g.tgrelid = $1 AND NOT g.tgisinternal
   AND pg_catalog.left(g.tgname, pg_catalog.length($2)) <> $2
   AND NOT (pn.nspname IN ($3, $4) AND pg_catalog.left(p.proname, 3) = 'gs_')
 ORDER BY g.tgname`

// Rules: a view's own _RETURN rule is its definition (ViewDef); any other
// rule is the user's, and greenswap re-creates neither the view's at
// cutover nor blue's at finalize, so one added mid-migration would vanish.
// driftIdxSQL: the indexes no constraint owns, with their validity (a
// failed CREATE INDEX CONCURRENTLY leaves an invalid one behind).
const driftIdxSQL = `
SELECT c.relname::pg_catalog.text,
       pg_catalog.pg_get_indexdef(i.indexrelid) || CASE WHEN i.indisvalid THEN '' ELSE ' [invalid]' END
  FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = $1
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)
 ORDER BY c.relname`

const driftRuleSQL = `
SELECT r.rulename::pg_catalog.text, pg_catalog.pg_get_ruledef(r.oid)
  FROM pg_catalog.pg_rewrite r WHERE r.ev_class = $1 AND r.rulename <> '_RETURN' ORDER BY r.rulename`

const driftPolSQL = `
SELECT p.polname,
       CASE WHEN p.polpermissive THEN 'AS PERMISSIVE' ELSE 'AS RESTRICTIVE' END
       || ' FOR ' || CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                                   WHEN 'd' THEN 'DELETE' ELSE 'ALL' END
       || ' TO ' || COALESCE((SELECT pg_catalog.string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(r) END, ', ' ORDER BY 1)
                                FROM pg_catalog.unnest(p.polroles) r), 'PUBLIC')
       || COALESCE(' USING (' || pg_catalog.pg_get_expr(p.polqual, p.polrelid) || ')', '')
       || COALESCE(' WITH CHECK (' || pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) || ')', '')
  FROM pg_catalog.pg_policy p WHERE p.polrelid = $1 ORDER BY p.polname`

const driftInhSQL = `
SELECT 'parent', pg_catalog.format('%I.%I', n.nspname, c.relname)
  FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhparent
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE i.inhrelid = $1
UNION ALL
SELECT 'child', pg_catalog.format('%I.%I', n.nspname, c.relname)
  FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE i.inhparent = $1
ORDER BY 1, 2`

// driftQueueObject queues the queries of one existing relation into b,
// each filling its part of o.
func driftQueueObject(b *pgx.Batch, n Names, o *ObjectPrint, oid uint32) {
	b.Queue(driftAclSQL, oid).Query(func(rows pgx.Rows) error {
		ps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ACLItem, error) {
			var p ACLItem
			err := r.Scan(&p.Grantee, &p.Privilege, &p.Grantable)
			return p, err
		})
		driftSortPrivileges(ps)
		o.ACL = slices.Compact(ps)
		return err
	})
	b.Queue(driftColSQL, oid).Query(func(rows pgx.Rows) error {
		var err error
		o.Columns, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (ColumnPrint, error) {
			var c ColumnPrint
			var acl []string
			err := r.Scan(&c.Num, &c.Name, &c.Type, &c.NotNull, &c.Default, &c.Generated, &c.Identity, &c.Collation, &acl)
			for _, a := range acl {
				f := strings.SplitN(a, "|", 3)
				c.ACL = append(c.ACL, ACLItem{Grantee: f[0], Privilege: f[1], Grantable: f[2] == "true"})
			}
			return c, err
		})
		return err
	})
	defs := func(dst *[]NamedDef) func(pgx.Rows) error {
		return func(rows pgx.Rows) error {
			var err error
			*dst, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (NamedDef, error) {
				var d NamedDef
				err := r.Scan(&d.Name, &d.Def)
				return d, err
			})
			return err
		}
	}
	b.Queue(driftConSQL, oid).Query(defs(&o.Constraints))
	b.Queue(driftIdxSQL, oid).Query(defs(&o.Indexes))
	b.Queue(driftTrgSQL, oid, n.Trigger, n.BlueSchema, n.GreenSchema).Query(defs(&o.Triggers))
	b.Queue(driftPolSQL, oid).Query(defs(&o.Policies))
	b.Queue(driftRuleSQL, oid).Query(defs(&o.Rules))
	var inh []NamedDef
	b.Queue(driftInhSQL, oid).Query(func(rows pgx.Rows) error {
		if err := defs(&inh)(rows); err != nil {
			return err
		}
		for _, i := range inh {
			if i.Name == "parent" {
				o.Parents = append(o.Parents, i.Def)
			} else {
				o.Children = append(o.Children, i.Def)
			}
		}
		return nil
	})
}

func driftSortPrivileges(ps []ACLItem) {
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].Grantee != ps[j].Grantee {
			return ps[i].Grantee < ps[j].Grantee
		}
		if ps[i].Privilege != ps[j].Privilege {
			return ps[i].Privilege < ps[j].Privilege
		}
		return !ps[i].Grantable && ps[j].Grantable
	})
}

// DiffFingerprints names every difference between a recorded fingerprint
// and the current one, one Drift per change, in a stable order. Privileges
// are not compared here: a GRANT mirrored on every shape is no drift, and
// PrivilegeDrift checks that the shapes agree.
//
// For several tables it compares each table's objects with the same
// table's, in the recorded order; recorded must be Comparable (a version 1
// one is compared without indexes).
func DiffFingerprints(recorded, current *Fingerprint) []Drift {
	var out []Drift
	indexes := recorded.Version >= fingerprintIndexesSince
	for _, table := range recorded.Tables() {
		for _, role := range []string{"app", "blue", "green"} {
			a, b := recorded.ObjectOf(table, role), current.ObjectOf(table, role)
			if a == nil || b == nil {
				continue
			}
			for _, d := range driftDiffObject(a, b, indexes) {
				d.Table, d.Role = table, role
				out = append(out, d)
			}
		}
	}
	return out
}

// KeepDrifted returns current with the parts of blue and green that drift
// names (columns, constraints, policies, RLS, owner, inheritance) taken from
// recorded: what a step that goes ahead despite drift (rollback) records,
// so its own changes become the baseline but the drift stays reported.
// The view, and triggers (whose enabled state the swap itself changes), are
// taken as they are now.
func KeepDrifted(recorded, current *Fingerprint, drift []Drift) *Fingerprint {
	out := &Fingerprint{Version: current.Version, Objects: slices.Clone(current.Objects)}
	for i := range out.Objects {
		o := &out.Objects[i]
		old := recorded.ObjectOf(o.Table, o.Role)
		if o.Role == "app" || old == nil || !old.Exists || !o.Exists {
			continue
		}
		for _, d := range drift {
			if d.Table != o.Table || d.Role != o.Role {
				continue
			}
			switch d.Kind {
			case "column":
				o.Columns = old.Columns
			case "constraint":
				o.Constraints = old.Constraints
			case "index":
				o.Indexes = old.Indexes
			case "policy":
				o.Policies = old.Policies
			case "rls":
				o.RLS, o.ForceRLS = old.RLS, old.ForceRLS
			case "owner":
				o.Owner = old.Owner
			case "inheritance":
				o.Parents, o.Children = old.Parents, old.Children
			}
		}
	}
	return out
}

func driftDiffObject(a, b *ObjectPrint, indexes bool) []Drift {
	label := b.Label()
	var out []Drift
	add := func(kind, change, fix string) {
		out = append(out, Drift{Object: label, Kind: kind, Change: change, Fix: fix})
	}
	if a.Exists != b.Exists {
		if b.Exists {
			add("relation", "created outside greenswap", "drop it, or roll the migration back")
		} else {
			add("relation", "dropped outside greenswap", "roll the migration back (`greenswap rollback`) and start again")
		}
		out[0].Uncarried = true
		return out
	}
	if !a.Exists {
		return nil
	}
	rel := driftRelKind(b)
	if a.Kind != b.Kind {
		add("relation", fmt.Sprintf("relation kind changed from %s to %s", a.Kind, b.Kind), "roll the migration back and start again")
		out[len(out)-1].Uncarried = true
	}
	if a.Owner != b.Owner {
		add("owner", fmt.Sprintf("owner changed from %s to %s", a.Owner, b.Owner),
			fmt.Sprintf("ALTER %s %s OWNER TO %s", rel, driftQuoted(b.Name), db.Ident(a.Owner)))
	}
	out = append(out, driftDiffColumns(label, rel, b.Name, a.Columns, b.Columns)...)
	out = append(out, driftDiffDefs(label, "constraint", a.Constraints, b.Constraints, func(d NamedDef, added bool) string {
		if added {
			return fmt.Sprintf("ALTER TABLE %s DROP CONSTRAINT %s (or add it to the other shapes and accept it)", driftQuoted(b.Name), db.Ident(d.Name))
		}
		return fmt.Sprintf("ALTER TABLE %s ADD CONSTRAINT %s %s", driftQuoted(b.Name), db.Ident(d.Name), d.Def)
	})...)
	if indexes {
		out = append(out, driftDiffDefs(label, "index", a.Indexes, b.Indexes, func(d NamedDef, added bool) string {
			if added {
				return fmt.Sprintf("build it on the other shape too (CREATE INDEX CONCURRENTLY) and accept it: blue and its indexes are dropped at finalize; or DROP INDEX CONCURRENTLY %s",
					driftQuoted(driftSchemaOf(b.Name)+"."+d.Name))
			}
			return "create it again: " + strings.TrimSuffix(d.Def, " [invalid]")
		})...)
	}
	if a.ViewDef != b.ViewDef {
		add("view", "view definition changed to: "+driftLine(b.ViewDef), "restore the definition, or roll the migration back")
	}
	if !slices.Equal(a.Options, b.Options) {
		add("view", fmt.Sprintf("options changed from [%s] to [%s]", strings.Join(a.Options, ", "), strings.Join(b.Options, ", ")),
			fmt.Sprintf("ALTER %s %s SET (%s)", rel, driftQuoted(b.Name), strings.Join(a.Options, ", ")))
	}
	out = append(out, driftDiffDefs(label, "trigger", a.Triggers, b.Triggers, func(d NamedDef, added bool) string {
		if added {
			return fmt.Sprintf("DROP TRIGGER %s ON %s (a user trigger must exist on both shapes, enabled on the primary side only: add it to the other shape and accept it)",
				db.Ident(d.Name), driftQuoted(b.Name))
		}
		return "create it again: " + d.Def
	})...)
	out = append(out, driftDiffDefs(label, "rule", a.Rules, b.Rules, func(d NamedDef, added bool) string {
		if added {
			return fmt.Sprintf("DROP RULE %s ON %s (greenswap re-creates the app-name view at cutover and drops blue at finalize, so the rule would silently vanish; re-create it on the final table after finalize)",
				db.Ident(d.Name), driftQuoted(b.Name))
		}
		return "create it again: " + d.Def
	})...)
	if a.RLS != b.RLS {
		add("rls", fmt.Sprintf("row level security %s", driftOnOff(b.RLS, "enabled", "disabled")),
			fmt.Sprintf("ALTER TABLE %s %s ROW LEVEL SECURITY", driftQuoted(b.Name), driftOnOff(a.RLS, "ENABLE", "DISABLE")))
	}
	if a.ForceRLS != b.ForceRLS {
		add("rls", fmt.Sprintf("FORCE row level security %s", driftOnOff(b.ForceRLS, "set", "cleared")),
			fmt.Sprintf("ALTER TABLE %s %s ROW LEVEL SECURITY", driftQuoted(b.Name), driftOnOff(a.ForceRLS, "FORCE", "NO FORCE")))
	}
	out = append(out, driftDiffDefs(label, "policy", a.Policies, b.Policies, func(d NamedDef, added bool) string {
		if added {
			return fmt.Sprintf("DROP POLICY %s ON %s (or create it on the other shapes too and accept it)", db.Ident(d.Name), driftQuoted(b.Name))
		}
		return fmt.Sprintf("CREATE POLICY %s ON %s %s", db.Ident(d.Name), driftQuoted(b.Name), d.Def)
	})...)
	for _, s := range driftSetDiff(a.Parents, b.Parents) {
		add("inheritance", "now inherits from "+s, fmt.Sprintf("ALTER TABLE %s NO INHERIT %s", driftQuoted(b.Name), s))
	}
	for _, s := range driftSetDiff(b.Parents, a.Parents) {
		add("inheritance", "no longer inherits from "+s, fmt.Sprintf("ALTER TABLE %s INHERIT %s", driftQuoted(b.Name), s))
	}
	for _, s := range driftSetDiff(a.Children, b.Children) {
		add("inheritance", "inheritance child (or partition) "+s+" added: its rows are not synced", "detach it (ALTER TABLE "+s+" NO INHERIT "+driftQuoted(b.Name)+"), or roll back")
	}
	for _, s := range driftSetDiff(b.Children, a.Children) {
		add("inheritance", "inheritance child (or partition) "+s+" removed", "attach it again, or roll back")
	}
	return out
}

func driftDiffColumns(label, rel, name string, a, b []ColumnPrint) []Drift {
	var out []Drift
	col := ""
	add := func(change, fix string) {
		out = append(out, Drift{Object: label, Kind: "column", Change: change, Fix: fix, Column: col})
	}
	// uncarried marks the last change as one the mapping cannot survive:
	// the sync triggers, the backfill and the checksums were generated for
	// blue's and green's columns as planned, by name and type. The app
	// view is not what they read or write (the swaps build it again from
	// the table it reads), so its changes are carried, bar a column added.
	uncarried := func() {
		if rel != "VIEW" {
			out[len(out)-1].Uncarried = true
		}
	}
	byName := func(cs []ColumnPrint, n string) *ColumnPrint {
		for i := range cs {
			if cs[i].Name == n {
				return &cs[i]
			}
		}
		return nil
	}
	byNum := func(cs []ColumnPrint, n int) *ColumnPrint {
		for i := range cs {
			if cs[i].Num == n {
				return &cs[i]
			}
		}
		return nil
	}
	alter := "ALTER TABLE "
	if rel == "VIEW" {
		alter = "ALTER VIEW "
	}
	for _, oc := range a {
		col = oc.Name
		nc := byName(b, oc.Name)
		if nc == nil {
			if r := byNum(b, oc.Num); r != nil && byName(a, r.Name) == nil {
				col = r.Name
				add(fmt.Sprintf("column %s renamed to %s", oc.Name, r.Name),
					fmt.Sprintf("%s%s RENAME COLUMN %s TO %s", alter, driftQuoted(name), db.Ident(r.Name), db.Ident(oc.Name)))
				uncarried()
				nc = r
			} else {
				add(fmt.Sprintf("column %s %s removed", oc.Name, oc.Type), "roll the migration back (`greenswap rollback`): the sync triggers still write it")
				uncarried()
				continue
			}
		}
		if oc.Type != nc.Type {
			add(fmt.Sprintf("column %s type changed from %s to %s", nc.Name, oc.Type, nc.Type),
				fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s TYPE %s", driftQuoted(name), db.Ident(nc.Name), oc.Type))
			uncarried()
		}
		if oc.NotNull != nc.NotNull {
			add(fmt.Sprintf("column %s %s", nc.Name, driftOnOff(nc.NotNull, "is now NOT NULL", "no longer NOT NULL")),
				fmt.Sprintf("ALTER TABLE %s ALTER COLUMN %s %s NOT NULL", driftQuoted(name), db.Ident(nc.Name), driftOnOff(oc.NotNull, "SET", "DROP")))
			if nc.NotNull {
				out[len(out)-1].Op = "not_null"
			}
		}
		if oc.Default != nc.Default {
			fix := fmt.Sprintf("%s%s ALTER COLUMN %s DROP DEFAULT", alter, driftQuoted(name), db.Ident(nc.Name))
			if oc.Default != "" {
				fix = fmt.Sprintf("%s%s ALTER COLUMN %s SET DEFAULT %s", alter, driftQuoted(name), db.Ident(nc.Name), oc.Default)
			}
			add(fmt.Sprintf("column %s default changed from %s to %s", nc.Name, driftOrNone(oc.Default), driftOrNone(nc.Default)), fix)
		}
		if oc.Generated != nc.Generated {
			add(fmt.Sprintf("column %s generated changed from %q to %q", nc.Name, oc.Generated, nc.Generated), "roll the migration back")
			uncarried() // a stored generated column is never written; any other is
		}
		if oc.Identity != nc.Identity {
			add(fmt.Sprintf("column %s identity changed from %q to %q", nc.Name, oc.Identity, nc.Identity), "restore it, or roll the migration back")
			uncarried() // GENERATED ALWAYS needs OVERRIDING SYSTEM VALUE in the sync writes
		}
		if oc.Collation != nc.Collation {
			add(fmt.Sprintf("column %s collation changed from %s to %s", nc.Name, driftOrNone(oc.Collation), driftOrNone(nc.Collation)), "restore it, or roll the migration back")
			uncarried() // equality of keys and checksummed text may change with it
		}
	}
	col = ""
	for _, nc := range b {
		if byName(a, nc.Name) != nil {
			continue
		}
		if oc := byNum(a, nc.Num); oc != nil && byName(b, oc.Name) == nil {
			continue // the rename, reported above
		}
		col = nc.Name
		add(fmt.Sprintf("column %s %s added", nc.Name, nc.Type),
			fmt.Sprintf("the sync triggers do not carry it: %s%s DROP COLUMN %s, or roll back and start again with it in target.ddl", alter, driftQuoted(name), db.Ident(nc.Name)))
		// Accepted, its values would be lost both ways: the sync triggers
		// and the swap are built for the columns sync knew.
		out[len(out)-1].Uncarried = true
	}
	return out
}

func driftDiffDefs(label, kind string, a, b []NamedDef, fix func(d NamedDef, added bool) string) []Drift {
	var out []Drift
	find := func(ds []NamedDef, n string) *NamedDef {
		for i := range ds {
			if ds[i].Name == n {
				return &ds[i]
			}
		}
		return nil
	}
	for _, d := range a {
		nd := find(b, d.Name)
		switch {
		case nd == nil:
			out = append(out, Drift{Object: label, Kind: kind, Change: fmt.Sprintf("%s %s removed (%s)", kind, d.Name, driftLine(d.Def)), Fix: fix(d, false),
				Name: d.Name, Op: "removed", Def: d.Def})
		case nd.Def != d.Def:
			out = append(out, Drift{Object: label, Kind: kind, Change: fmt.Sprintf("%s %s changed from %s to %s", kind, d.Name, driftLine(d.Def), driftLine(nd.Def)),
				Fix: "restore it, or roll the migration back", Name: d.Name, Op: "changed", Def: nd.Def})
		}
	}
	for _, d := range b {
		if find(a, d.Name) == nil {
			out = append(out, Drift{Object: label, Kind: kind, Change: fmt.Sprintf("%s %s added (%s)", kind, d.Name, driftLine(d.Def)), Fix: fix(d, true),
				Name: d.Name, Op: "added", Def: d.Def})
		}
	}
	return out
}

// PrivilegeDrift compares the privileges of blue and green with the app
// view's, table-level and, for the columns they share by name, column-level:
// a client must be allowed the same through every shape, so a GRANT or
// REVOKE on one of them alone is drift. The app view is the reference (it
// is where the app's deploys grant); the fix brings the other one in line.
//
// For several tables each table's shapes are compared with its own view.
func PrivilegeDrift(current *Fingerprint) []Drift {
	var out []Drift
	for _, table := range current.Tables() {
		out = append(out, driftTablePrivileges(current, table)...)
	}
	return out
}

func driftTablePrivileges(current *Fingerprint, table string) []Drift {
	app := current.ObjectOf(table, "app")
	if app == nil || !app.Exists {
		return nil
	}
	var out []Drift
	for _, role := range []string{"blue", "green"} {
		o := current.ObjectOf(table, role)
		if o == nil || !o.Exists {
			continue
		}
		d := driftAclDrift(app, o, "", app.ACL, o.ACL)
		for _, ac := range app.Columns {
			if oc := o.column(ac.Name); oc != nil {
				d = append(d, driftAclDrift(app, o, ac.Name, ac.ACL, oc.ACL)...)
			}
		}
		for i := range d {
			d[i].Table, d[i].Role = table, role
		}
		out = append(out, d...)
	}
	return out
}

func driftAclDrift(app, o *ObjectPrint, col string, ref, got []ACLItem) []Drift {
	var out []Drift
	on := func(name string) string {
		if col == "" {
			return " ON " + name
		}
		return " (" + col + ") ON " + name
	}
	grant := func(p ACLItem, name string) string {
		s := "GRANT " + p.Privilege + on(driftQuoted(name)) + " TO " + driftGrantee(p.Grantee)
		if p.Grantable {
			s += " WITH GRANT OPTION"
		}
		return s
	}
	revoke := func(p ACLItem, name string) string {
		return "REVOKE " + p.Privilege + on(driftQuoted(name)) + " FROM " + driftGrantee(p.Grantee)
	}
	for _, p := range ref {
		if !slices.Contains(got, p) {
			out = append(out, Drift{Object: o.Label(), Kind: "privilege",
				Change: fmt.Sprintf("GRANT %s%s TO %s is not on %s", p.Privilege, on(app.Name), p.Grantee, o.Name),
				Fix:    grant(p, o.Name) + " (or " + revoke(p, app.Name) + ")"})
		}
	}
	for _, p := range got {
		if !slices.Contains(ref, p) {
			out = append(out, Drift{Object: o.Label(), Kind: "privilege",
				Change: fmt.Sprintf("GRANT %s%s TO %s is not on %s", p.Privilege, on(o.Name), p.Grantee, app.Name),
				Fix:    revoke(p, o.Name) + " (or " + grant(p, app.Name) + ")"})
		}
	}
	return out
}

func driftGrantee(g string) string {
	if g == "PUBLIC" {
		return g
	}
	return db.Ident(g)
}

// quoted quotes a "schema.name" label (names with a dot inside are
// rare enough that the first dot is the separator).
func driftQuoted(name string) string {
	s, n, ok := strings.Cut(name, ".")
	if !ok {
		return db.Ident(name)
	}
	return db.Ident(s, n)
}

// driftSchemaOf is the schema of a "schema.name" label.
func driftSchemaOf(name string) string {
	s, _, _ := strings.Cut(name, ".")
	return s
}

func driftRelKind(o *ObjectPrint) string {
	if o.Kind == "v" {
		return "VIEW"
	}
	return "TABLE"
}

func driftSetDiff(a, b []string) []string {
	var out []string
	for _, s := range b {
		if !slices.Contains(a, s) {
			out = append(out, s)
		}
	}
	return out
}

func driftOnOff(b bool, yes, no string) string {
	if b {
		return yes
	}
	return no
}

func driftOrNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func driftLine(s string) string { return strings.Join(strings.Fields(s), " ") }
