package state

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
)

// Why the state schema is checked before greenswap uses it: every command
// writes greenswap.migrations and greenswap.events, so whatever fires on
// those writes (a trigger, a rule, a policy, a column default calling a
// function) runs as greenswap's role, a superuser often enough. A role with
// only CREATE on the database can make a schema named greenswap before
// greenswap's first run, with tables of the right shape and triggers of its
// own. The schema is therefore used only if
//
//   - it and everything in it is owned by a role the connecting role
//     trusts: itself, a role it is a member of through pg_auth_members
//     (not pg_has_role, which is true of every role for a superuser), or a
//     superuser;
//   - it holds only what greenswap creates (the two tables, their indexes,
//     the events sequence, the events_append_only function and trigger, the
//     tables' row types), with no rule, no policy, no row level security;
//   - nothing in it is granted to PUBLIC, and no role outside that trust
//     holds CREATE on it or a table privilege beyond those greenswap
//     documents for an operator (SELECT, INSERT, UPDATE on the tables;
//     USAGE, SELECT on the sequence).

// trustSQL lists what makes the state schema untrustworthy, one row per
// finding: the object, the role owning (or granted) it, and what is wrong.
// No row: the schema is missing or greenswap may use it.
const trustSQL = `
WITH RECURSIVE mine(oid) AS (
    SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER
    UNION
    SELECT m.roleid FROM pg_catalog.pg_auth_members m JOIN mine ON m.member OPERATOR(pg_catalog.=) mine.oid
),
trusted(oid) AS (
    SELECT oid FROM mine
    UNION SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolsuper
),
s AS (SELECT n.oid, n.nspowner, n.nspacl FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) 'greenswap'),
rels AS (
    SELECT c.oid, c.relname::pg_catalog.text AS name, c.relkind::pg_catalog.text AS kind, c.relowner, c.relacl, c.relrowsecurity,
           CASE c.relkind WHEN 'r' THEN 'table' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view'
                          WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table'
                          WHEN 'c' THEN 'type' ELSE 'relation' END AS what
      FROM pg_catalog.pg_class c JOIN s ON c.relnamespace OPERATOR(pg_catalog.=) s.oid
),
ours(name, kind) AS (VALUES ('migrations', 'r'), ('events', 'r'), ('migrations_pkey', 'i'), ('events_pkey', 'i'),
                            ('events_migration_idx', 'i'), ('events_id_seq', 'S')),
append_only AS (
    SELECT p.oid FROM pg_catalog.pg_proc p JOIN s ON p.pronamespace OPERATOR(pg_catalog.=) s.oid
     WHERE p.proname OPERATOR(pg_catalog.=) 'events_append_only' AND p.pronargs OPERATOR(pg_catalog.=) 0
),
acl AS (
    SELECT 'schema greenswap' AS obj, 'schema' AS kind, s.nspowner AS owner, (pg_catalog.aclexplode(s.nspacl)).* FROM s
    UNION ALL
    SELECT rels.what || ' greenswap.' || rels.name, rels.kind, rels.relowner, (pg_catalog.aclexplode(rels.relacl)).* FROM rels
)
SELECT 'schema greenswap', pg_catalog.pg_get_userbyid(s.nspowner), 'is owned by a role you neither are, are a member of, nor is a superuser'
  FROM s WHERE s.nspowner NOT IN (SELECT oid FROM trusted)
UNION ALL
SELECT rels.what || ' greenswap.' || rels.name, pg_catalog.pg_get_userbyid(rels.relowner),
       'is owned by a role you neither are, are a member of, nor is a superuser'
  FROM rels WHERE rels.relowner NOT IN (SELECT oid FROM trusted)
UNION ALL
SELECT rels.what || ' greenswap.' || rels.name, pg_catalog.pg_get_userbyid(rels.relowner), 'is not one greenswap creates'
  FROM rels WHERE (rels.name, rels.kind) NOT IN (SELECT name, kind FROM ours)
UNION ALL
SELECT rels.what || ' greenswap.' || rels.name, pg_catalog.pg_get_userbyid(rels.relowner), 'has row level security enabled'
  FROM rels WHERE rels.relrowsecurity
UNION ALL
SELECT 'trigger ' || pg_catalog.quote_ident(t.tgname::pg_catalog.text) || ' on greenswap.' || rels.name,
       pg_catalog.pg_get_userbyid(p.proowner), 'is not greenswap''s (it runs ' || t.tgfoid::pg_catalog.regprocedure::pg_catalog.text || ')'
  FROM pg_catalog.pg_trigger t JOIN rels ON rels.oid OPERATOR(pg_catalog.=) t.tgrelid
  JOIN pg_catalog.pg_proc p ON p.oid OPERATOR(pg_catalog.=) t.tgfoid
 WHERE NOT t.tgisinternal
   AND NOT (rels.name OPERATOR(pg_catalog.=) 'events' AND t.tgname OPERATOR(pg_catalog.=) 'events_append_only'
            AND t.tgfoid IN (SELECT oid FROM append_only))
UNION ALL
SELECT 'rule ' || pg_catalog.quote_ident(r.rulename::pg_catalog.text) || ' on greenswap.' || rels.name,
       pg_catalog.pg_get_userbyid(rels.relowner), 'is not greenswap''s'
  FROM pg_catalog.pg_rewrite r JOIN rels ON rels.oid OPERATOR(pg_catalog.=) r.ev_class
UNION ALL
SELECT 'policy ' || pg_catalog.quote_ident(p.polname::pg_catalog.text) || ' on greenswap.' || rels.name,
       pg_catalog.pg_get_userbyid(rels.relowner), 'is not greenswap''s'
  FROM pg_catalog.pg_policy p JOIN rels ON rels.oid OPERATOR(pg_catalog.=) p.polrelid
UNION ALL
SELECT 'function ' || p.oid::pg_catalog.regprocedure::pg_catalog.text, pg_catalog.pg_get_userbyid(p.proowner),
       CASE WHEN p.oid IN (SELECT oid FROM append_only) THEN 'is owned by a role you neither are, are a member of, nor is a superuser'
            ELSE 'is not one greenswap creates' END
  FROM pg_catalog.pg_proc p JOIN s ON p.pronamespace OPERATOR(pg_catalog.=) s.oid
 WHERE p.oid NOT IN (SELECT oid FROM append_only) OR p.proowner NOT IN (SELECT oid FROM trusted)
UNION ALL
SELECT 'type ' || ty.oid::pg_catalog.regtype::pg_catalog.text, pg_catalog.pg_get_userbyid(ty.typowner), 'is not one greenswap creates'
  FROM pg_catalog.pg_type ty JOIN s ON ty.typnamespace OPERATOR(pg_catalog.=) s.oid
 WHERE ty.typrelid NOT IN (SELECT oid FROM rels)
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.oid OPERATOR(pg_catalog.=) ty.typelem AND e.typrelid IN (SELECT oid FROM rels))
UNION ALL
SELECT 'operator ' || o.oid::pg_catalog.regoperator::pg_catalog.text, pg_catalog.pg_get_userbyid(o.oprowner), 'is not one greenswap creates'
  FROM pg_catalog.pg_operator o JOIN s ON o.oprnamespace OPERATOR(pg_catalog.=) s.oid
UNION ALL
SELECT 'collation ' || c.collname::pg_catalog.text, pg_catalog.pg_get_userbyid(c.collowner), 'is not one greenswap creates'
  FROM pg_catalog.pg_collation c JOIN s ON c.collnamespace OPERATOR(pg_catalog.=) s.oid
UNION ALL
SELECT 'conversion ' || c.conname::pg_catalog.text, pg_catalog.pg_get_userbyid(c.conowner), 'is not one greenswap creates'
  FROM pg_catalog.pg_conversion c JOIN s ON c.connamespace OPERATOR(pg_catalog.=) s.oid
UNION ALL
SELECT 'operator family ' || f.opfname::pg_catalog.text, pg_catalog.pg_get_userbyid(f.opfowner), 'is not one greenswap creates'
  FROM pg_catalog.pg_opfamily f JOIN s ON f.opfnamespace OPERATOR(pg_catalog.=) s.oid
UNION ALL
SELECT 'text search configuration ' || c.cfgname::pg_catalog.text, pg_catalog.pg_get_userbyid(c.cfgowner), 'is not one greenswap creates'
  FROM pg_catalog.pg_ts_config c JOIN s ON c.cfgnamespace OPERATOR(pg_catalog.=) s.oid
UNION ALL
SELECT 'text search dictionary ' || d.dictname::pg_catalog.text, pg_catalog.pg_get_userbyid(d.dictowner), 'is not one greenswap creates'
  FROM pg_catalog.pg_ts_dict d JOIN s ON d.dictnamespace OPERATOR(pg_catalog.=) s.oid
UNION ALL
SELECT 'statistics object ' || x.stxname::pg_catalog.text, pg_catalog.pg_get_userbyid(x.stxowner), 'is not one greenswap creates'
  FROM pg_catalog.pg_statistic_ext x JOIN s ON x.stxnamespace OPERATOR(pg_catalog.=) s.oid
UNION ALL
SELECT 'extension ' || e.extname::pg_catalog.text, pg_catalog.pg_get_userbyid(e.extowner), 'has its objects in schema greenswap'
  FROM pg_catalog.pg_extension e JOIN s ON e.extnamespace OPERATOR(pg_catalog.=) s.oid
UNION ALL
SELECT acl.obj, CASE WHEN acl.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(acl.grantee) END,
       'grants ' || acl.privilege_type || ' to ' || CASE WHEN acl.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' ELSE 'a role you do not trust' END
  FROM acl
 WHERE acl.grantee OPERATOR(pg_catalog.=) 0
    OR (acl.grantee NOT IN (SELECT oid FROM trusted) AND acl.grantee OPERATOR(pg_catalog.<>) acl.owner
        AND NOT (acl.kind OPERATOR(pg_catalog.=) 'schema' AND acl.privilege_type OPERATOR(pg_catalog.=) 'USAGE')
        AND NOT (acl.kind OPERATOR(pg_catalog.=) 'r' AND acl.privilege_type IN ('SELECT', 'INSERT', 'UPDATE'))
        AND NOT (acl.kind OPERATOR(pg_catalog.=) 'S' AND acl.privilege_type IN ('SELECT', 'USAGE')))`

// Finding is one reason the state schema is not used.
type Finding struct {
	Object string // e.g. `trigger zz_audit on greenswap.events`
	Role   string // its owner, or the role granted a privilege
	Why    string
}

func (f Finding) String() string {
	if strings.HasPrefix(f.Why, "grants ") {
		return f.Object + " " + f.Why + " (" + f.Role + ")"
	}
	return fmt.Sprintf("%s (owner %s) %s", f.Object, f.Role, f.Why)
}

// UntrustedError is greenswap refusing a state schema it cannot trust
// (exit 2). Nothing was written to it.
type UntrustedError struct {
	User     string // the connecting role
	Findings []Finding
}

func (e *UntrustedError) Error() string {
	// The first few say enough to go and look; a planted schema has
	// dozens (every object of it owned by the wrong role).
	const shown = 4
	var parts []string
	for i, f := range e.Findings {
		if i == shown {
			parts = append(parts, fmt.Sprintf("and %d more", len(e.Findings)-shown))
			break
		}
		parts = append(parts, f.String())
	}
	// Two readers: a DBA who ran the migration as the table owner and now
	// connects as a superuser (connect as the owner again), and one facing
	// a planted schema (drop it). Dropping a real state schema loses every
	// migration's state, so that is said too.
	return fmt.Sprintf("refusing to use the state schema greenswap: %s; whatever fires on greenswap's writes there would run as %s. "+
		"If its migrations were run as its owner, run greenswap as that role (or a member of it); otherwise inspect schema greenswap "+
		"and drop it (DROP SCHEMA greenswap CASCADE, which deletes the state of every migration in it) so that greenswap creates its own; "+
		"do not grant its owner's role to anyone", strings.Join(parts, "; "), db.Ident(e.User))
}

func (e *UntrustedError) ExitCode() exitcode.Code { return exitcode.BadInput }

// Check returns an *UntrustedError if the state schema exists and greenswap
// must not use it (see trustSQL); nil if it is missing or may be used.
func Check(ctx context.Context, q db.Querier) error {
	rows, err := q.Query(ctx, trustSQL)
	if err != nil {
		return fmt.Errorf("check who owns the state schema greenswap: %w", err)
	}
	fs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Finding, error) {
		var f Finding
		err := r.Scan(&f.Object, &f.Role, &f.Why)
		return f, err
	})
	if err != nil {
		return fmt.Errorf("check who owns the state schema greenswap: %w", err)
	}
	if len(fs) == 0 {
		return nil
	}
	var user string
	if err := q.QueryRow(ctx, `SELECT CURRENT_USER::pg_catalog.text`).Scan(&user); err != nil {
		return fmt.Errorf("read the connecting role: %w", err)
	}
	return &UntrustedError{User: user, Findings: fs}
}
