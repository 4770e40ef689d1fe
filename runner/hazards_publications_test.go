package runner

import (
	"context"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/shadow"
)

// Trap 15 / issue 11.4: a table in a publication (by name, by schema on
// PostgreSQL 15+, or FOR ALL TABLES) is a blocking hazard: plan says what
// breaks and names the publication; sync refuses with exit 3 and the
// database is exactly as before. Inheritance children block the same way.
func TestHazardsBlockPlanAndSync(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, sql, code, want string
		minMajor              int
	}{
		{"for table", `CREATE PUBLICATION sub_feed FOR TABLE accounts`, shadow.HazardPublications, "sub_feed (FOR TABLE)", 0},
		{"for tables in schema", `CREATE PUBLICATION sub_feed FOR TABLES IN SCHEMA public`, shadow.HazardPublications, "sub_feed (FOR TABLES IN SCHEMA)", 15},
		{"for all tables", `CREATE PUBLICATION sub_feed FOR ALL TABLES`, shadow.HazardPublications, "sub_feed (FOR ALL TABLES)", 0},
		{"inheritance child", `CREATE TABLE accounts_archive (archived_at timestamptz) INHERITS (accounts)`, shadow.HazardInheritanceChildren, "public.accounts_archive", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if pgtest.ServerMajor(t) < tc.minMajor {
				t.Skipf("needs PostgreSQL %d", tc.minMajor)
			}
			ctx := context.Background()
			dsn := pgtest.NewDB(t)
			pgtest.Exec(t, dsn, wlSchema)
			pgtest.Exec(t, dsn, tc.sql)
			env := testEnv(t, dsn)
			spec := parseSpec(t, "name: hzp\ntable: public.accounts\ntarget:\n  ddl: CREATE TABLE accounts (id bigint PRIMARY KEY, value bigint NOT NULL, note text)\n")
			before := catalogSnapshot(t, dsn, "public.accounts") + coCatalog(t, env.Pool)
			res, err := Plan(ctx, env, spec, PlanOptions{})
			if err != nil {
				t.Fatal(err)
			}
			h := hazard(res, tc.code)
			if h == nil || h.Severity != shadow.Blocking || !strings.Contains(strings.Join(h.Objects, "\n"), tc.want) {
				t.Fatalf("%s hazard = %+v, want blocking naming %q", tc.code, h, tc.want)
			}
			if res.Blocking == 0 {
				t.Fatal("plan counts no blocking hazard")
			}
			_, err = Sync(ctx, env, spec, SyncOptions{})
			if exitcode.Of(err) != exitcode.Blocked || !strings.Contains(err.Error(), tc.code) || !strings.Contains(err.Error(), "nothing was changed") {
				t.Fatalf("sync: want exit 3 naming %s, got exit %d: %v", tc.code, exitcode.Of(err), err)
			}
			if after := catalogSnapshot(t, dsn, "public.accounts") + coCatalog(t, env.Pool); after != before {
				t.Fatalf("plan + sync changed the database:\n%s", coDiff(before, after))
			}
		})
	}
}
