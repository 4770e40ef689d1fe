package sync_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
	gssync "github.com/greenswap/greenswap/sync"
)

// svRole creates a plain LOGIN role unique to the database (roles are
// cluster-wide), dropped after the test, and returns a pool connected as it.
func svRole(t *testing.T, dsn, prefix string, grants ...string) (string, *pgxpool.Pool) {
	t.Helper()
	role := testkit.RoleName(t, dsn, prefix)
	testkit.CreateRole(t, dsn, role, grants...)
	return role, testkit.PoolAs(t, dsn, role)
}

// The replica-lag throttle as a role without pg_read_all_stats reads NULL
// lags and could never hold: it says so, once, naming the privilege
// (issue 19); with the privilege it is not blind.
func TestReplicaLagWarnsWhenBlind(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	role, plain := svRole(t, dsn, "svplain")
	var warnings []string
	r := &gssync.ReplicaLag{Q: plain, Max: time.Second, Every: time.Millisecond, Warn: func(m string) { warnings = append(warnings, m) }}
	for range 3 {
		if reason, err := r.Hold(ctx); err != nil || reason != "" {
			t.Fatalf("Hold = %q, %v", reason, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if !r.Blind() {
		t.Fatal("Blind() is false for a role without pg_read_all_stats")
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "pg_read_all_stats") || !strings.Contains(warnings[0], role) {
		t.Fatalf("warnings %q, want one naming pg_read_all_stats and %s", warnings, role)
	}

	_, stats := svRole(t, dsn, "svstats", "GRANT pg_read_all_stats TO {role}")
	warnings = nil
	r = &gssync.ReplicaLag{Q: stats, Max: time.Second, Warn: func(m string) { warnings = append(warnings, m) }}
	if _, err := r.Hold(ctx); err != nil {
		t.Fatal(err)
	}
	if r.Blind() || len(warnings) != 0 {
		t.Fatalf("with pg_read_all_stats: blind %v, warnings %q", r.Blind(), warnings)
	}
	// A disabled throttle checks nothing and warns about nothing.
	r = &gssync.ReplicaLag{Q: plain, Warn: func(m string) { warnings = append(warnings, m) }}
	if _, err := r.Hold(ctx); err != nil || len(warnings) != 0 {
		t.Fatalf("disabled throttle: %v, %q", err, warnings)
	}
}

// The lock-wait throttle reads pg_locks and pg_blocking_pids(), which every
// role sees: as a role without pg_read_all_stats it still counts a session
// of another role waiting on its locks.
func TestLockWaitersSeenWithoutReadAllStats(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)`)
	_, plain := svRole(t, dsn, "svlock", "GRANT SELECT, UPDATE ON t TO {role}")
	holder, err := plain.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	if _, err := holder.Exec(ctx, `UPDATE t SET id = id WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	pid := holder.Conn().PgConn().PID()
	other, err := pgx.Connect(ctx, dsn) // the superuser: another role
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	waited := make(chan struct{})
	go func() { defer close(waited); _, _ = other.Exec(ctx, `UPDATE t SET id = id WHERE id = 1`) }()
	defer func() { _ = holder.Rollback(ctx); <-waited }() // before other is closed
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := gssync.LockWaiters(ctx, plain, pid)
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("LockWaiters as a plain role = %d, want 1", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
