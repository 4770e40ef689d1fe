package testkit

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
)

// RoleName is base suffixed with dsn's database name: roles are
// cluster-wide and tests run in parallel, while pgtest gives each test a
// database of its own, so the name is unique to the test.
func RoleName(t testing.TB, dsn, base string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return base + "_" + strings.TrimPrefix(u.Path, "/")
}

// CreateRole creates name as a LOGIN role (no other attribute: the plain
// application or attacker role), runs each of grants with {role} replaced
// by the quoted name, and drops the role when the test ends. The drop runs
// in dsn's database (DROP OWNED there first) and is registered before any
// connection the caller then opens as the role, so those close first
// (cleanups run last-in first-out) and the database is dropped after.
func CreateRole(t testing.TB, dsn, name string, grants ...string) {
	t.Helper()
	r := db.Ident(name)
	pgtest.Exec(t, dsn, "CREATE ROLE "+r+" LOGIN")
	t.Cleanup(func() {
		if err := DropRole(dsn, name); err != nil {
			t.Log(err)
		}
	})
	for _, g := range grants {
		pgtest.Exec(t, dsn, strings.ReplaceAll(g, "{role}", r))
	}
}

// DropRole drops what name owns in dsn's database, then the role. It is
// meant for cleanups, where the test's verdict is in: callers log its
// error rather than fail on it.
func DropRole(dsn, name string) error {
	ctx := context.Background()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("drop role %s: %w", name, err)
	}
	defer c.Close(ctx)
	r := db.Ident(name)
	if _, err := c.Exec(ctx, "DROP OWNED BY "+r+" CASCADE; DROP ROLE "+r); err != nil {
		return fmt.Errorf("drop role %s: %w", name, err)
	}
	return nil
}

// DSNAs is dsn with its user replaced by role (the test cluster trusts
// every role, so no password is needed).
func DSNAs(t testing.TB, dsn, role string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	return u.String()
}

// ConnectAs opens a connection to dsn's database as role, closed when the
// test ends.
func ConnectAs(t testing.TB, dsn, role string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), DSNAs(t, dsn, role))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// PoolAs opens a pool on dsn's database as role, closed when the test ends.
func PoolAs(t testing.TB, dsn, role string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), DSNAs(t, dsn, role))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}
