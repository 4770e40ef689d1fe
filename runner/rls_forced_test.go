package runner

import (
	"context"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/shadow"
)

// A table with FORCE ROW LEVEL SECURITY, owned and migrated by a role that
// is neither superuser nor BYPASSRLS (managed PostgreSQL): the policies
// filter greenswap's own copy, triggers and checksums, so green would miss
// every row they hide while verify, comparing the same subset, said equal,
// and finalize would drop the hidden rows with blue. plan and sync refuse
// (exit 3, nothing changed); with NO FORCE the owner is exempt and the
// whole table is copied.
func TestRLSForcedOnGreenswapBlocks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	owner, ownerDSN := privRole(t, dsn, "rlsowner")
	pgtest.Exec(t, dsn, `
CREATE TABLE orders (id int PRIMARY KEY, tenant_id int NOT NULL, note text);
INSERT INTO orders SELECT g, g % 2 + 1, 'n' || g FROM generate_series(1, 40) g;
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE orders FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON orders USING (tenant_id = current_setting('app.tenant', true)::int);
ALTER TABLE orders OWNER TO `+db.Ident(owner)+`;
GRANT CREATE, TEMPORARY ON DATABASE `+db.Ident(coStr(t, pool, `SELECT current_database()`))+` TO `+db.Ident(owner)+`;
GRANT CREATE ON SCHEMA public TO `+db.Ident(owner))
	env := testEnv(t, ownerDSN)
	spec := parseSpec(t, "name: rlf\ntable: public.orders\ntarget:\n  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, tenant_id int NOT NULL, note text)\n")
	before := catalogSnapshot(t, dsn, "public.orders") + coCatalog(t, pool)
	res, err := Plan(ctx, env, spec, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h := hazard(res, shadow.HazardRLSForcedOnGreenswap)
	if h == nil || h.Severity != shadow.Blocking || !strings.Contains(strings.Join(h.Objects, " "), "the table owner "+owner) {
		t.Fatalf("%s hazard = %+v, want blocking naming the owner", shadow.HazardRLSForcedOnGreenswap, h)
	}
	_, err = Sync(ctx, env, spec, SyncOptions{})
	if exitcode.Of(err) != exitcode.Blocked || !strings.Contains(err.Error(), shadow.HazardRLSForcedOnGreenswap) {
		t.Fatalf("sync: want exit 3 naming %s, got exit %d: %v", shadow.HazardRLSForcedOnGreenswap, exitcode.Of(err), err)
	}
	if after := catalogSnapshot(t, dsn, "public.orders") + coCatalog(t, pool); after != before {
		t.Fatalf("plan + sync changed the database:\n%s", coDiff(before, after))
	}

	if pgtest.ServerMajor(t) < 15 {
		return // RLS is blocking there anyway (rls_without_security_invoker)
	}
	// The hazard's fix: the owner is exempt, every row is copied.
	pgtest.Exec(t, dsn, `ALTER TABLE orders NO FORCE ROW LEVEL SECURITY`)
	if _, err := Sync(ctx, env, spec, SyncOptions{}); err != nil {
		t.Fatalf("sync after NO FORCE: %v", err)
	}
	if n := coInt(t, pool, `SELECT count(*) FROM gs_rlf_green.orders`); n != 40 {
		t.Fatalf("green has %d rows, want all 40", n)
	}
}
