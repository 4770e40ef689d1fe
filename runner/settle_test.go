package runner

import (
	"context"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/spec"
)

// TestSyncSettlesBeforeSynced: sync's settle phase vacuums green (its
// visibility map set, the event with the VACUUM it ran, recorded before
// analyze and synced); with SkipSettle the event says it was skipped and
// green's visibility map is still empty (autovacuum is off on that green,
// so nothing else vacuumed it).
func TestSyncSettlesBeforeSynced(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A cluster of its own: the xmin horizon is cluster-wide, and another
	// test's logical slot in creation, standby or long transaction holds
	// it without showing in this database (seen in CI: 0 all-visible
	// pages after the settle, nothing holding the horizon here).
	pool, dsn := pgtest.OwnPool(t, pgtest.Options{}, "app")
	pgtest.Exec(t, dsn, `CREATE TABLE st1 (id int PRIMARY KEY, v int NOT NULL);
		INSERT INTO st1 SELECT g, g FROM generate_series(1, 20000) g;
		CREATE TABLE st2 (id int PRIMARY KEY, v int NOT NULL);
		INSERT INTO st2 SELECT g, g FROM generate_series(1, 20000) g;`)
	env := coEnv(t, dsn)
	for _, tc := range []struct {
		table string
		skip  bool
	}{{"st1", false}, {"st2", true}} {
		sp, err := spec.ParseSpec([]byte(`
name: `+tc.table+`_v2
table: public.`+tc.table+`
target:
  ddl: CREATE TABLE `+tc.table+` (id bigint PRIMARY KEY, v bigint NOT NULL) WITH (autovacuum_enabled = false)
`), "test.yaml", "yaml")
		if err != nil {
			t.Fatal(err)
		}
		st, err := Sync(ctx, env, sp, SyncOptions{SkipSettle: tc.skip})
		if err != nil || st.State != state.Synced {
			t.Fatalf("sync %s: %v (%+v)", tc.table, err, st)
		}
		order := coStr(t, pool, `SELECT string_agg(step, ',' ORDER BY id) FROM greenswap.events
			WHERE migration = $1 AND step IN ('build-index', 'settle', 'analyze', 'synced') AND outcome = 'ok'`, sp.Name)
		if order != "settle,analyze,synced" {
			t.Errorf("%s: events %q, want settle,analyze,synced", tc.table, order)
		}
		visible := coInt(t, pool, `SELECT relallvisible FROM pg_class WHERE oid = $1::regclass`, "gs_"+tc.table+"_v2_green."+tc.table)
		sql := coStr(t, pool, `SELECT coalesce(sql, '') || ' ' || coalesce(detail::text, '') FROM greenswap.events WHERE migration = $1 AND step = 'settle'`, sp.Name)
		if !tc.skip && (visible == 0 || !strings.Contains(sql, `VACUUM (FREEZE, TRUNCATE false) "gs_st1_v2_green"."st1"`)) {
			t.Errorf("settled: %d all-visible pages, event %q", visible, sql)
		}
		if tc.skip && (visible != 0 || !strings.Contains(sql, "skipped")) {
			t.Errorf("--no-settle: %d all-visible pages, event %q; want 0 and skipped", visible, sql)
		}
	}
}
