package runner

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	gosync "sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/spec"
)

// Helpers of the cutover, rollback and finalize tests (prefixed co to stay
// clear of the other runner tests' helpers).

// coEnv connects a runner Env to dsn, logging warnings to the test log.
func coEnv(t *testing.T, dsn string) *Env {
	t.Helper()
	return syncTestEnv(t, dsn)
}

// coSync takes spec to synced with runner.Sync, then verifies it (as
// `greenswap verify` would, recording the result) so cutover accepts it.
func coSync(t *testing.T, env *Env, specYAML string) *spec.Spec {
	t.Helper()
	ctx := context.Background()
	spec, err := spec.ParseSpec([]byte(specYAML), "test.yaml", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	st, err := Sync(ctx, env, spec, SyncOptions{})
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	if st.State != state.Synced {
		t.Fatalf("sync ended in %s", st.State)
	}
	coVerify(t, env, spec)
	return spec
}

// coVerify runs the verify command (runner.Verify, which records the
// result cutover checks) and wants no difference.
func coVerify(t *testing.T, env *Env, spec *spec.Spec) {
	t.Helper()
	res, err := Verify(context.Background(), env, spec.Name, VerifyOptions{})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if !res.OK {
		t.Fatalf("verify found %d differences: %+v", res.DifferenceCount, res.Differences)
	}
}

func coExec(t *testing.T, q db.Querier, sql string, args ...any) {
	t.Helper()
	if _, err := q.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func coInt(t *testing.T, q db.Querier, sql string, args ...any) int64 {
	t.Helper()
	return testkit.Count(t, q, sql, args...)
}

func coStr(t *testing.T, q db.Querier, sql string, args ...any) string {
	t.Helper()
	var s string
	if err := q.QueryRow(context.Background(), sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// coConn opens a connection with extra runtime parameters (search_path,
// application_name, role).
func coConn(t *testing.T, dsn string, params map[string]string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	c, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// coPool opens a pool with extra runtime parameters and a query mode.
func coPool(t *testing.T, dsn string, params map[string]string, mode pgx.QueryExecMode, size int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range params {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	cfg.ConnConfig.DefaultQueryExecMode = mode
	cfg.MaxConns = size
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// coCatalog is a text snapshot of everything a migration may touch outside
// greenswap's own schemas: relations with their kinds, columns, defaults,
// identity, constraints, triggers, policies, grants, comments, view
// definitions and sequences. Two snapshots compare equal when the catalog is
// "as it was".
func coCatalog(t *testing.T, q db.Querier) string {
	t.Helper()
	rows, err := q.Query(context.Background(), `
WITH rels AS (
    SELECT c.oid, n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'greenswap') AND n.nspname NOT LIKE 'pg_toast%'
       AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
)
SELECT x FROM (
    SELECT format('rel %s.%s %s owner=%s acl=%s rls=%s/%s comment=%s', r.nspname, r.relname, r.relkind,
                  pg_get_userbyid(c.relowner), c.relacl, c.relrowsecurity, c.relforcerowsecurity,
                  obj_description(r.oid, 'pg_class')) AS x
      FROM rels r JOIN pg_class c ON c.oid = r.oid
    UNION ALL
    SELECT format('col %s.%s.%s %s notnull=%s default=%s identity=%s comment=%s', r.nspname, r.relname, a.attname,
                  format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity,
                  col_description(r.oid, a.attnum))
      FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef d ON d.adrelid = r.oid AND d.adnum = a.attnum
     WHERE r.relkind <> 'S'
    UNION ALL
    SELECT format('con %s.%s %s %s %s', r.nspname, r.relname, k.conname, pg_get_constraintdef(k.oid), k.convalidated)
      FROM rels r JOIN pg_constraint k ON k.conrelid = r.oid
    UNION ALL
    SELECT format('trg %s.%s %s %s', r.nspname, r.relname, g.tgenabled, pg_get_triggerdef(g.oid))
      FROM rels r JOIN pg_trigger g ON g.tgrelid = r.oid AND NOT g.tgisinternal
    UNION ALL
    SELECT format('pol %s.%s %s %s %s', r.nspname, r.relname, p.polname, pg_get_expr(p.polqual, p.polrelid), p.polroles)
      FROM rels r JOIN pg_policy p ON p.polrelid = r.oid
    UNION ALL
    SELECT format('view %s.%s %s %s', r.nspname, r.relname, c.reloptions, pg_get_viewdef(r.oid))
      FROM rels r JOIN pg_class c ON c.oid = r.oid WHERE r.relkind IN ('v', 'm')
    UNION ALL
    SELECT format('idx %s.%s %s', r.nspname, r.relname, pg_get_indexdef(i.indexrelid))
      FROM rels r JOIN pg_index i ON i.indrelid = r.oid
    UNION ALL
    SELECT format('seqowner %s.%s -> %s', r.nspname, r.relname, (SELECT d.refobjid::regclass::text || '.' || d.refobjsubid || d.deptype::text
        FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = r.oid AND d.deptype IN ('a', 'i')))
      FROM rels r WHERE r.relkind = 'S'
    UNION ALL
    SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg_%' AND nspname NOT IN ('information_schema', 'greenswap')
) s ORDER BY x`)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

// coDiff shows the lines two catalog snapshots do not share (as multisets).
func coDiff(a, b string) string {
	count := func(s string) map[string]int {
		m := map[string]int{}
		for _, l := range strings.Split(s, "\n") {
			m[l]++
		}
		return m
	}
	ma, mb := count(a), count(b)
	var buf bytes.Buffer
	for _, l := range strings.Split(a, "\n") {
		if ma[l] > mb[l] {
			buf.WriteString(fmt.Sprintf("- (%d×) %s\n", ma[l]-mb[l], l))
			ma[l] = mb[l]
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if mb[l] > count(a)[l] {
			buf.WriteString(fmt.Sprintf("+ (%d×) %s\n", mb[l]-count(a)[l], l))
			mb[l] = count(a)[l]
		}
	}
	if buf.Len() == 0 && a != b {
		buf.WriteString("(same lines in another order)\n")
	}
	return buf.String()
}

// coBuffer is a goroutine-safe bytes.Buffer for command output.
type coBuffer struct {
	mu  gosync.Mutex
	buf bytes.Buffer
}

func (b *coBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *coBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// coDropRole drops a role a test created (roles are cluster-wide), from
// its database, before the database itself goes.
func coDropRole(dsn, role string) { _ = testkit.DropRole(dsn, role) }
