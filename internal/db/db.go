// Package db holds the small database helpers every greenswap package shares:
// the Querier interface, identifier quoting and SQLSTATE-aware error helpers.
package db

import (
	"context"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier is satisfied by *pgx.Conn, *pgxpool.Pool, *pgxpool.Conn and pgx.Tx,
// so catalog reads and generated SQL run the same inside or outside a transaction.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Ident quotes one or more name parts as a (possibly qualified) identifier.
func Ident(parts ...string) string { return pgx.Identifier(parts).Sanitize() }

// IdentList quotes each name and joins them with ", ".
func IdentList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = Ident(n)
	}
	return strings.Join(q, ", ")
}

// SQLState returns the SQLSTATE of err if it (or anything it wraps) is a
// PostgreSQL error, else "".
func SQLState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// Well-known SQLSTATEs greenswap reacts to.
const (
	LockNotAvailable     = "55P03"
	QueryCanceled        = "57014"
	DeadlockDetected     = "40P01"
	SerializationFailure = "40001"
	UniqueViolation      = "23505"
	UndefinedTable       = "42P01"
	DuplicateSchema      = "42P06"
	ObjectInUse          = "55006"
)

// Literal quotes s as a SQL string literal, for the few DDL positions that
// cannot take a bound parameter (COMMENT ON, DEFAULT nextval('...')).
// It assumes standard_conforming_strings (the default since 9.1) and uses
// E” syntax when s has a backslash so it is right either way.
func Literal(s string) string {
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		return "E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return q
}
