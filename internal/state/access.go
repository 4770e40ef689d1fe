package state

import (
	"context"
	"fmt"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
)

// AccessError: the state schema exists but the connecting role may not
// read it (no USAGE on schema greenswap, or no SELECT on
// greenswap.migrations), which every command does first. Exit 2, before
// anything is changed; without it the command failed with a bare
// "permission denied for schema greenswap" (issue 19).
type AccessError struct {
	Role    string
	Owner   string // of schema greenswap
	Missing string // e.g. "USAGE on schema greenswap"
	Err     error  // the server's refusal of the read (42501), when it gave one
}

// Unwrap gives callers the server's SQLSTATE (db.SQLState).
func (e *AccessError) Unwrap() error { return e.Err }

func (e *AccessError) Error() string {
	r := db.Ident(e.Role)
	state := ""
	if c := db.SQLState(e.Err); c != "" {
		state = " (SQLSTATE " + c + ")"
	}
	return fmt.Sprintf("role %s lacks %s%s, which every greenswap command needs to read and record the migrations' state, so nothing was changed: "+
		"connect as %s (the schema's owner), or, connected as %s, GRANT USAGE ON SCHEMA greenswap TO %[6]s; GRANT SELECT, INSERT, UPDATE ON greenswap.migrations TO %[6]s; "+
		"GRANT SELECT, INSERT ON greenswap.events TO %[6]s; GRANT USAGE ON SEQUENCE greenswap.events_id_seq TO %[6]s (status needs only the first and SELECT)",
		e.Role, e.Missing, state, e.Owner, e.Owner, r)
}

func (e *AccessError) ExitCode() exitcode.Code { return exitcode.BadInput }

// checkAccess returns an *AccessError when schema greenswap exists and the
// connecting role cannot read greenswap.migrations.
func checkAccess(ctx context.Context, q db.Querier) error {
	var exists, usage, sel bool
	var role, owner string
	err := q.QueryRow(ctx, `
SELECT n.oid IS NOT NULL, coalesce(pg_catalog.has_schema_privilege(n.oid, 'USAGE'), false),
       coalesce((SELECT pg_catalog.has_table_privilege(c.oid, 'SELECT') FROM pg_catalog.pg_class c
                  WHERE c.relnamespace OPERATOR(pg_catalog.=) n.oid AND c.relname OPERATOR(pg_catalog.=) 'migrations'), true),
       CURRENT_USER::pg_catalog.text, coalesce(pg_catalog.pg_get_userbyid(n.nspowner)::pg_catalog.text, '')
  FROM (SELECT NULL) x LEFT JOIN pg_catalog.pg_namespace n ON n.nspname OPERATOR(pg_catalog.=) 'greenswap'`).Scan(&exists, &usage, &sel, &role, &owner)
	if err != nil {
		return fmt.Errorf("read the privileges on schema greenswap: %w", err)
	}
	var missing string
	switch {
	case !exists:
		return nil
	case !usage:
		missing = "USAGE on schema greenswap"
	case !sel:
		missing = "SELECT on greenswap.migrations"
	default:
		return nil
	}
	// The read itself, for the server's own error and SQLSTATE: callers
	// that leave a 42501 for plan's privilege check to name keep doing so.
	_, rerr := q.Exec(ctx, `SELECT FROM greenswap.migrations LIMIT 0`)
	return &AccessError{Role: role, Owner: owner, Missing: missing, Err: rerr}
}
