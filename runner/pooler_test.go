package runner

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
)

// greenswap pointed at pgbouncer in transaction mode (often the only
// address a DBA can reach) refuses at once, exit 2, saying to connect
// directly or through a session-mode pool, and leaves nothing behind:
// no schema, no lock, no setting on a pooled backend (issue 19). Before,
// Connect failed with pgbouncer's raw "unsupported startup parameter:
// search_path"; with that parameter ignored by the pooler, sync ran and
// left its advisory lock on a pooled backend.
func TestPgbouncerTransactionPoolRefused(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		settings map[string]string
		dsnExtra string
	}{
		{name: "default"},
		{name: "simple_protocol", dsnExtra: "&default_query_exec_mode=simple_protocol"},
		// The pooler accepts search_path and drops it: only the backend
		// probe can tell.
		{name: "search_path_ignored", settings: map[string]string{"ignore_startup_parameters": "search_path"}},
		// One server connection: the probe's second read waits for it.
		{name: "pool_size_1", settings: map[string]string{"ignore_startup_parameters": "search_path", "default_pool_size": "1"}},
		{name: "statement_mode", settings: map[string]string{"ignore_startup_parameters": "search_path", "pool_mode": "statement"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool, dsn := syncNewDB(t)
			coExec(t, pool, syncOrdersTable(200, false))
			before := coCatalog(t, pool)
			pb := pgtest.StartPgbouncer(t, dsn, pgtest.PgbouncerOptions{Settings: c.settings})
			log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
			env, err := Connect(ctx, pb.DSN(pb.DBName, pgtest.SuperUser)+c.dsnExtra, log)
			if err == nil {
				env.Close()
				t.Fatal("Connect through a transaction pooler succeeded")
			}
			var pe *PoolerError
			if !errors.As(err, &pe) {
				t.Fatalf("Connect = %v, want a *PoolerError", err)
			}
			if got := exitcode.Of(err); got != exitcode.BadInput {
				t.Fatalf("exit code %d, want 2: %v", got, err)
			}
			msg := err.Error()
			for _, want := range []string{"connect directly", "session mode", "nothing was changed"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error lacks %q: %s", want, msg)
				}
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			if after := coCatalog(t, pool); after != before {
				t.Fatalf("the catalog changed:\n%s", coDiff(before, after))
			}
			if n := coInt(t, pool, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`); n != 0 {
				t.Fatalf("%d advisory locks left behind", n)
			}
			if n := coInt(t, pool, `SELECT count(*) FROM pg_namespace WHERE nspname = 'greenswap' OR nspname LIKE 'gs\_%'`); n != 0 {
				t.Fatalf("%d greenswap schemas created", n)
			}
			// A fresh client of the pool gets the default path, not ours.
			if c.settings["pool_mode"] == "" {
				app := coConn(t, pb.DSN(pb.DBName, pgtest.SuperUser), nil)
				for range 5 {
					var path string
					if err := app.QueryRow(ctx, "SHOW search_path", pgx.QueryExecModeSimpleProtocol).Scan(&path); err != nil {
						t.Fatal(err)
					}
					if path != `"$user", public` {
						t.Fatalf("a pooled backend has search_path %q", path)
					}
				}
			}
		})
	}
}

// Through pgbouncer in session mode (what the refusal advises) the
// trigger-mode lifecycle runs: each connection keeps its backend, the
// session path is set per session although pgbouncer refuses it as a
// startup parameter, and the lock's PID is the server's (finalize's own
// sessions are known by it), not the proxy's made-up one.
func TestPgbouncerSessionPoolLifecycle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	coExec(t, pool, syncOrdersTable(2000, false))
	pb := pgtest.StartPgbouncer(t, dsn, pgtest.PgbouncerOptions{PoolMode: "session"})
	env := coEnv(t, pb.DSN(pb.DBName, pgtest.SuperUser))
	if !env.Proxied {
		t.Error("Env.Proxied is false behind pgbouncer")
	}
	if p := coStr(t, env.Pool, `SELECT current_setting('search_path')`); p != SessionSearchPath {
		t.Fatalf("session search_path %q, want %q", p, SessionSearchPath)
	}
	lock, err := env.Lock(ctx, "sess")
	if err != nil {
		t.Fatal(err)
	}
	if n := coInt(t, pool, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1`, int32(lock.PID())); n != 1 {
		t.Fatalf("lock.PID() %d holds %d advisory locks, want 1 (the server's pid)", lock.PID(), n)
	}
	if err := lock.Release(ctx); err != nil {
		t.Fatalf("release: %v", err)
	}
	spec := coSync(t, env, syncOrdersSpec("sess", false))
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
		t.Fatalf("cutover: %v", err)
	}
	if _, err := Finalize(ctx, env, spec.Name, FinalizeOptions{QuietPeriod: time.Second, SampleEvery: 100 * time.Millisecond, Yes: true}); err != nil {
		t.Fatalf("finalize: %v", err)
	}
	m, err := state.Get(ctx, pool, spec.Name)
	if err != nil || m.State != state.Finalized {
		t.Fatalf("after finalize: %+v, %v", m, err)
	}
	if n := coInt(t, pool, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`); n != 0 {
		t.Fatalf("%d advisory locks left behind", n)
	}
}
