package shadow

// Catalog facts behind the hazards that stop a migration before it can lose
// data (publications, inheritance, schemas others can create in) and the
// privileges each command needs, read up front so that a missing one fails
// before anything is changed.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/spec"
)

// Publication kinds, as PublicationRef.Via says them.
const (
	PubForTable    = "FOR TABLE"
	PubForSchema   = "FOR TABLES IN SCHEMA"
	PubForAllTable = "FOR ALL TABLES"
)

// PublicationRef is one publication that publishes blue, and how.
type PublicationRef struct {
	Name string `json:"name"`
	Via  string `json:"via"` // PubForTable, PubForSchema or PubForAllTable
	// Slots are the logical slots of this database that stream pgoutput:
	// the publisher cannot tell which publication a subscriber reads, so
	// these are the subscribers that may be affected.
	Slots []string `json:"slots,omitempty"`
}

// loadPublicationRefs lists the publications that publish blue (by name, by
// its schema on PostgreSQL 15+, or FOR ALL TABLES), except own: the
// migration's own publication of a logical migration.
func loadPublicationRefs(ctx context.Context, q db.Querier, blue *Table, major int, own string) ([]PublicationRef, error) {
	query := `
SELECT p.pubname::text,
       CASE WHEN p.puballtables THEN 'FOR ALL TABLES'
            WHEN EXISTS (SELECT 1 FROM pg_publication_rel pr WHERE pr.prpubid = p.oid AND pr.prrelid = $1) THEN 'FOR TABLE'
            ELSE 'FOR TABLES IN SCHEMA' END
  FROM pg_publication p
 WHERE p.pubname <> $2
   AND (p.puballtables
        OR EXISTS (SELECT 1 FROM pg_publication_rel pr WHERE pr.prpubid = p.oid AND pr.prrelid = $1)`
	if major >= 15 {
		query += `
        OR EXISTS (SELECT 1 FROM pg_publication_namespace pn JOIN pg_class c ON c.relnamespace = pn.pnnspid
                    WHERE pn.pnpubid = p.oid AND c.oid = $1)`
	}
	query += `)
 ORDER BY 1`
	rows, err := q.Query(ctx, query, blue.OID, own)
	if err != nil {
		return nil, fmt.Errorf("read the publications of %s: %w", blue.Name, err)
	}
	pubs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (PublicationRef, error) {
		var p PublicationRef
		err := r.Scan(&p.Name, &p.Via)
		return p, err
	})
	if err != nil || len(pubs) == 0 {
		return pubs, err
	}
	rows, err = q.Query(ctx, `
SELECT slot_name::text || CASE WHEN active THEN ' (active)' ELSE ' (inactive)' END
  FROM pg_replication_slots
 WHERE slot_type = 'logical' AND plugin = 'pgoutput' AND database = pg_catalog.current_database() AND slot_name <> $1
 ORDER BY 1`, own)
	if err != nil {
		return nil, fmt.Errorf("read the logical replication slots: %w", err)
	}
	slots, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	for i := range pubs {
		pubs[i].Slots = slots
	}
	return pubs, nil
}

// loadInheritance lists blue's inheritance children and, when blue is not a
// partition, its inheritance parents (partitions are reported on their own).
func loadInheritance(ctx context.Context, q db.Querier, blue *Table) (children, parents []string, err error) {
	read := func(sql string) ([]string, error) {
		rows, err := q.Query(ctx, sql, blue.OID)
		if err != nil {
			return nil, fmt.Errorf("read the inheritance of %s: %w", blue.Name, err)
		}
		return pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if blue.Kind != "p" {
		if children, err = read(`
SELECT n.nspname || '.' || c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE i.inhparent = $1 ORDER BY 1`); err != nil {
			return nil, nil, err
		}
	}
	if blue.PartitionOf == nil {
		if parents, err = read(`
SELECT n.nspname || '.' || c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhparent
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE i.inhrelid = $1 AND NOT (SELECT relispartition FROM pg_class WHERE oid = $1) ORDER BY 1`); err != nil {
			return nil, nil, err
		}
	}
	return children, parents, nil
}

// WritableSchema is a schema the sync functions resolve names in (the app
// schema, on their search path, or one holding a function the spec's
// expressions call) in which roles other than the table's owner may create
// objects.
type WritableSchema struct {
	Schema    string   `json:"schema"`
	Roles     []string `json:"roles"`               // "PUBLIC" for every role
	Functions []string `json:"functions,omitempty"` // the fields calling its functions, when it is not the app schema
}

// LoadWritableSchemas reads who may CREATE in each of schemas besides the
// table owner, superusers (who can do anything anyway) and roles whose
// rights the owner already has (a superuser owner "has" every role's
// rights, but its triggers would run that role's overloads as superuser,
// so then every other creator counts). pg_database_owner counts only when the
// database's owner is such a role too. pg_catalog comes first on the path
// and only superusers create there, so it is never asked about.
func LoadWritableSchemas(ctx context.Context, q db.Querier, schemas []string, owner string) ([]WritableSchema, error) {
	rows, err := q.Query(ctx, `
WITH acl AS (
    SELECT n.nspname, (pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner)))).* FROM pg_namespace n WHERE n.nspname = ANY ($1)
), creators AS (
    SELECT DISTINCT nspname, grantee FROM acl WHERE privilege_type = 'CREATE'
)
SELECT c.nspname::text, pg_catalog.array_agg(CASE WHEN c.grantee = 0 THEN 'PUBLIC' ELSE r.rolname::text END ORDER BY 1)
  FROM creators c LEFT JOIN pg_roles r ON r.oid = c.grantee
 WHERE c.grantee = 0
    OR (r.rolname <> $2 AND NOT r.rolsuper
        AND NOT (pg_catalog.pg_has_role($2, r.oid, 'USAGE') AND NOT (SELECT s.rolsuper FROM pg_roles s WHERE s.rolname = $2))
        AND NOT (r.rolname = 'pg_database_owner'
                 AND (SELECT d.datdba = o.oid OR o.rolsuper OR pg_catalog.pg_has_role($2, d.datdba, 'USAGE')
                        FROM pg_database d, pg_roles o WHERE d.datname = pg_catalog.current_database() AND o.oid = d.datdba)))
 GROUP BY 1 ORDER BY 1`, schemas, owner)
	if err != nil {
		return nil, fmt.Errorf("read who may create in schemas %s: %w", strings.Join(schemas, ", "), err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (WritableSchema, error) {
		var w WritableSchema
		err := r.Scan(&w.Schema, &w.Roles)
		return w, err
	})
}

// FunctionSchemas adds to ws the schemas other than the app schema that
// hold functions the mapping calls (Volatility.Schemas) and in which others
// may CREATE.
func FunctionSchemas(ctx context.Context, q db.Querier, appSchema, owner string, vols []Volatility, ws []WritableSchema) ([]WritableSchema, error) {
	fields := map[string][]string{}
	var schemas []string
	for _, v := range vols {
		for _, sc := range v.Schemas {
			if sc == appSchema || sc == "pg_temp" || strings.HasPrefix(sc, "pg_temp_") {
				continue
			}
			if fields[sc] == nil {
				schemas = append(schemas, sc)
			}
			fields[sc] = append(fields[sc], v.Field)
		}
	}
	if len(schemas) == 0 {
		return ws, nil
	}
	more, err := LoadWritableSchemas(ctx, q, schemas, owner)
	if err != nil {
		return nil, err
	}
	for _, w := range more {
		w.Functions = fields[w.Schema]
		ws = append(ws, w)
	}
	return ws, nil
}

// Privilege codes. Part of plan's JSON document: never rename one.
const (
	PrivTableOwner      = "table_owner"
	PrivCreateOnDB      = "create_on_database"
	PrivTempOnDB        = "temp_on_database"
	PrivCreateOnApp     = "create_on_app_schema"
	PrivStateSchema     = "greenswap_schema"
	PrivStateWrite      = "greenswap_state_rows"
	PrivViewOwner       = "dependent_view_owner"
	PrivReferencerOwner = "referencing_table_owner"
	PrivReplication     = "replication"
	PrivOwnerCreateOnDB = "owner_create_on_database"
)

// Commands, as Privilege.Steps names them.
const (
	StepPlan     = "plan"
	StepSync     = "sync"
	StepVerify   = "verify"
	StepCutover  = "cutover"
	StepRollback = "rollback"
	StepFinalize = "finalize"
)

// Privilege is one thing the connecting role must have for some commands.
type Privilege struct {
	Code    string   `json:"code"`
	Need    string   `json:"need"`  // what, e.g. "the rights of role app_owner (owner of public.orders)"
	Why     string   `json:"why"`   // what greenswap does with it
	Steps   []string `json:"steps"` // the commands that need it
	Granted bool     `json:"granted"`
	Fix     string   `json:"fix"` // how to grant it
}

// LoadPrivileges lists what the connecting role needs to run the migration
// of table (blue: the app table before adopt, or the blue table once
// adopted) and whether it has it. They are read from the catalog, never
// tried, so a missing one is found before anything is changed.
func LoadPrivileges(ctx context.Context, q db.Querier, s *spec.Spec, table *Table) ([]Privilege, error) {
	app := s.AppTable()
	var me, dbname string
	var super, canRepl, createDB, tempDB, createApp, ownerOK, stateExists, stateOK bool
	var stateOwners []string
	err := q.QueryRow(ctx, `
SELECT current_user::text, pg_catalog.current_database()::text, r.rolsuper, r.rolsuper OR r.rolreplication,
       pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE'),
       pg_catalog.has_database_privilege(pg_catalog.current_database(), 'TEMP'),
       coalesce(pg_catalog.has_schema_privilege(a.oid, 'CREATE'), false),
       r.rolsuper OR pg_catalog.pg_has_role($2::text, 'USAGE'),
       s.oid IS NOT NULL,
       coalesce(r.rolsuper OR pg_catalog.bool_and(pg_catalog.pg_has_role(o.oid, 'USAGE')), true),
       coalesce(pg_catalog.array_agg(DISTINCT o.rolname::text) FILTER (WHERE o.oid IS NOT NULL AND NOT pg_catalog.pg_has_role(o.oid, 'USAGE')), '{}')
  FROM pg_roles r
  LEFT JOIN pg_namespace a ON a.nspname = $1
  LEFT JOIN pg_namespace s ON s.nspname = 'greenswap'
  LEFT JOIN LATERAL (
      SELECT s.nspowner AS owner
      UNION SELECT c.relowner FROM pg_class c WHERE c.relnamespace = s.oid
      UNION SELECT p.proowner FROM pg_proc p WHERE p.pronamespace = s.oid) st ON true
  LEFT JOIN pg_roles o ON o.oid = st.owner
 WHERE r.rolname = current_user
 GROUP BY r.rolsuper, r.rolreplication, a.oid, s.oid`, app.Schema, table.Owner).Scan(
		&me, &dbname, &super, &canRepl, &createDB, &tempDB, &createApp, &ownerOK, &stateExists, &stateOK, &stateOwners)
	if err != nil {
		return nil, fmt.Errorf("read the connecting role's privileges: %w", err)
	}
	role := db.Ident(me)
	all := []string{StepPlan, StepSync, StepVerify, StepCutover, StepRollback, StepFinalize}
	ps := []Privilege{
		{Code: PrivTableOwner, Granted: ownerOK, Steps: all,
			Need: fmt.Sprintf("the rights of role %s, the owner of %s", table.Owner, table.Name),
			Why:  "adopt moves the table (ALTER TABLE ... SET SCHEMA), the sync triggers are created on it, green is granted like it, finalize drops it",
			Fix:  fmt.Sprintf("GRANT %s TO %s, or connect as %s", db.Ident(table.Owner), role, table.Owner)},
		{Code: PrivCreateOnDB, Granted: createDB, Steps: []string{StepPlan, StepSync},
			Need: "CREATE on database " + dbname,
			Why:  "sync creates the version schemas " + NamesFor(s.Name, app).BlueSchema + " and " + NamesFor(s.Name, app).GreenSchema + " (plan rehearses it), the greenswap state schema on first use, and in logical mode the publication",
			Fix:  fmt.Sprintf("GRANT CREATE ON DATABASE %s TO %s", db.Ident(dbname), role)},
		{Code: PrivTempOnDB, Granted: tempDB, Steps: []string{StepPlan},
			Need: "TEMPORARY on database " + dbname,
			Why:  "plan evaluates the mapping on sampled rows in temporary tables",
			Fix:  fmt.Sprintf("GRANT TEMPORARY ON DATABASE %s TO %s", db.Ident(dbname), role)},
		{Code: PrivCreateOnApp, Granted: createApp, Steps: []string{StepPlan, StepSync, StepCutover, StepRollback, StepFinalize},
			Need: "CREATE on schema " + app.Schema,
			Why:  "adopt creates the app-name view there, cutover and rollback re-create it, finalize moves green there",
			Fix:  fmt.Sprintf("GRANT CREATE ON SCHEMA %s TO %s", db.Ident(app.Schema), role)},
	}
	if me != table.Owner && !super {
		// The version schemas are handed to the owner (ALTER SCHEMA ...
		// OWNER TO), which PostgreSQL allows only to a role with CREATE
		// on the database.
		var ok bool
		if err := q.QueryRow(ctx, `SELECT pg_catalog.has_database_privilege($1, pg_catalog.current_database(), 'CREATE')`, table.Owner).Scan(&ok); err != nil {
			return nil, fmt.Errorf("read the table owner's privileges: %w", err)
		}
		ps = append(ps, Privilege{Code: PrivOwnerCreateOnDB, Granted: ok, Steps: []string{StepPlan, StepSync},
			Need: fmt.Sprintf("CREATE on database %s for the table's owner %s", dbname, table.Owner),
			Why:  fmt.Sprintf("connected as %s, not the owner, sync hands the version schemas to the owner so that green can be the owner's and any member of the owner's role can finish the migration", me),
			Fix:  fmt.Sprintf("GRANT CREATE ON DATABASE %s TO %s, or connect as %s", db.Ident(dbname), db.Ident(table.Owner), table.Owner)})
	}
	if stateExists {
		ps = append(ps, Privilege{Code: PrivStateSchema, Granted: stateOK, Steps: []string{StepSync},
			Need: "the rights of the owner of schema greenswap and its tables (" + strings.Join(stateOwners, ", ") + ")",
			Why:  "sync re-applies the state schema's DDL (CREATE ... IF NOT EXISTS, CREATE OR REPLACE FUNCTION) before recording the migration there",
			// Never "GRANT <owner> TO <role>": a planted schema's owner would
			// then have its triggers run in this role's session (finding 02).
			Fix: fmt.Sprintf("if you did not expect %s to own schema greenswap, inspect it and drop it (DROP SCHEMA greenswap CASCADE) so that greenswap creates its own; if you did, connect as %s",
				strings.Join(stateOwners, ", "), strings.Join(stateOwners, " or "))})
		// The other commands only read and write its rows.
		var write bool
		if err := q.QueryRow(ctx, `
SELECT pg_catalog.has_schema_privilege('greenswap', 'USAGE')
       AND coalesce(pg_catalog.has_table_privilege(pg_catalog.to_regclass('greenswap.migrations'), 'SELECT, INSERT, UPDATE'), false)
       AND coalesce(pg_catalog.has_table_privilege(pg_catalog.to_regclass('greenswap.events'), 'SELECT, INSERT'), false)
       AND coalesce(pg_catalog.has_sequence_privilege(pg_catalog.to_regclass('greenswap.events_id_seq'), 'USAGE'), true)`).Scan(&write); err != nil {
			return nil, fmt.Errorf("read the privileges on schema greenswap: %w", err)
		}
		ps = append(ps, Privilege{Code: PrivStateWrite, Granted: write || stateOK, Steps: []string{StepVerify, StepCutover, StepRollback, StepFinalize},
			Need: "USAGE on schema greenswap, SELECT, INSERT, UPDATE on greenswap.migrations, SELECT, INSERT on greenswap.events and USAGE on its sequence",
			Why:  "every command records the migration's state and its events there",
			Fix: fmt.Sprintf("GRANT USAGE ON SCHEMA greenswap TO %[1]s; GRANT SELECT, INSERT, UPDATE ON greenswap.migrations TO %[1]s; GRANT SELECT, INSERT ON greenswap.events TO %[1]s; GRANT USAGE ON SEQUENCE greenswap.events_id_seq TO %[1]s, connected as %[2]s (or connect as %[2]s)",
				role, strings.Join(stateOwners, " or "))})
	}
	if s.Mode == spec.ModeLogical {
		ps = append(ps, Privilege{Code: PrivReplication, Granted: canRepl, Steps: []string{StepSync, StepVerify, StepCutover, StepRollback},
			Need: "the REPLICATION attribute (or superuser)",
			Why:  "mode: logical creates a replication slot and streams it",
			Fix:  fmt.Sprintf("ALTER ROLE %s REPLICATION (on managed services: grant the provider's replication role), or use mode: trigger", role)})
	}

	// Objects of other owners that cutover, rollback and finalize rewrite.
	type rel struct {
		what, steps, why string
		code             string
		name             spec.QualifiedName
	}
	var rels []rel
	for _, v := range table.DependentViews {
		rels = append(rels, rel{what: "view", code: PrivViewOwner, name: v.Name,
			why: "cutover and rollback re-create the views that read the table over the other shape, finalize over green"})
	}
	for _, fk := range table.ReferencedBy {
		if fk.Table == table.Name || slices.ContainsFunc(rels, func(r rel) bool { return r.name == fk.Table }) {
			continue
		}
		rels = append(rels, rel{what: "table", code: PrivReferencerOwner, name: fk.Table,
			why: "cutover and rollback re-point its foreign keys (ALTER TABLE ... ADD CONSTRAINT)"})
	}
	for _, r := range rels {
		var owner string
		var ok bool
		err := q.QueryRow(ctx, `
SELECT pg_catalog.pg_get_userbyid(c.relowner)::text, $3 OR pg_catalog.pg_has_role(c.relowner, 'USAGE')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
			r.name.Schema, r.name.Name, super).Scan(&owner, &ok)
		if err != nil {
			return nil, fmt.Errorf("read the owner of %s: %w", r.name, err)
		}
		steps := []string{StepCutover, StepRollback}
		if r.code == PrivViewOwner {
			steps = append(steps, StepFinalize)
		}
		ps = append(ps, Privilege{Code: r.code, Granted: ok, Steps: steps,
			Need: fmt.Sprintf("the rights of role %s, the owner of %s %s", owner, r.what, r.name),
			Why:  r.why,
			Fix:  fmt.Sprintf("GRANT %s TO %s, or ALTER %s %s OWNER TO %s", db.Ident(owner), role, strings.ToUpper(r.what), db.Ident(r.name.Schema, r.name.Name), db.Ident(table.Owner))})
	}
	return ps, nil
}

// PrivilegeError is what a command refuses with when the connecting role
// lacks privileges it needs: exit 2, before anything is changed.
type PrivilegeError struct {
	Role    string
	Step    string
	Missing []Privilege
}

func (e *PrivilegeError) Error() string {
	parts := make([]string, len(e.Missing))
	for i, p := range e.Missing {
		parts[i] = fmt.Sprintf("%s (%s): %s", p.Need, p.Why, p.Fix)
	}
	return fmt.Sprintf("role %s lacks what %s needs, so nothing was changed: %s", e.Role, e.Step, strings.Join(parts, "; "))
}

// ExitCode makes a missing privilege bad input: the operator fixes the
// grants and runs the command again.
func (e *PrivilegeError) ExitCode() exitcode.Code { return exitcode.BadInput }

// CheckPrivileges returns a *PrivilegeError naming what ps lacks for any of
// steps (nil when nothing is missing).
func CheckPrivileges(ctx context.Context, q db.Querier, ps []Privilege, steps ...string) error {
	var missing []Privilege
	for _, p := range ps {
		if !p.Granted && slices.ContainsFunc(steps, func(s string) bool { return slices.Contains(p.Steps, s) }) {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	var me string
	if err := q.QueryRow(ctx, `SELECT current_user::text`).Scan(&me); err != nil {
		return err
	}
	return &PrivilegeError{Role: me, Step: strings.Join(steps, " and "), Missing: missing}
}

// LoadPrivilegeSubject reads, in one query, the part of name's Table that
// LoadPrivileges looks at: its owner, the views that read it (directly or
// through other views) and the tables whose foreign keys reference it.
// Commands check their privileges with it before anything else: it must be
// cheap, as finalize's quiet period starts right after. ErrTableNotFound
// when there is no such table.
func LoadPrivilegeSubject(ctx context.Context, q db.Querier, name spec.QualifiedName) (*Table, error) {
	t := &Table{Name: name}
	var views, refs [][]string
	err := q.QueryRow(ctx, `
WITH RECURSIVE tbl AS (
    SELECT c.oid, pg_catalog.pg_get_userbyid(c.relowner)::text AS owner
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
), deps(oid, depth) AS (
    SELECT DISTINCT r.ev_class, 1
      FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid, tbl
     WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
       AND d.refobjid = tbl.oid AND r.ev_class <> tbl.oid
  UNION
    SELECT r.ev_class, deps.depth + 1
      FROM deps
      JOIN pg_depend d ON d.refobjid = deps.oid AND d.refclassid = 'pg_class'::regclass AND d.classid = 'pg_rewrite'::regclass
      JOIN pg_rewrite r ON r.oid = d.objid
     WHERE r.ev_class <> deps.oid AND deps.depth < 100
)
SELECT tbl.oid, tbl.owner,
       coalesce((SELECT pg_catalog.array_agg(ARRAY[n.nspname::text, c.relname::text] ORDER BY 1)
                   FROM (SELECT DISTINCT oid FROM deps) v JOIN pg_class c ON c.oid = v.oid
                   JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('v', 'm')), '{}'),
       coalesce((SELECT pg_catalog.array_agg(DISTINCT ARRAY[n.nspname::text, c.relname::text])
                   FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE k.contype = 'f' AND k.confrelid = tbl.oid AND k.conrelid <> tbl.oid), '{}')
  FROM tbl`, name.Schema, name.Name).Scan(&t.OID, &t.Owner, &views, &refs)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrTableNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read the owner and dependents of %s: %w", name, err)
	}
	for _, v := range views {
		t.DependentViews = append(t.DependentViews, View{Name: spec.QualifiedName{Schema: v[0], Name: v[1]}})
	}
	for _, r := range refs {
		t.ReferencedBy = append(t.ReferencedBy, ForeignKey{Table: spec.QualifiedName{Schema: r[0], Name: r[1]}, RefTable: name})
	}
	return t, nil
}
