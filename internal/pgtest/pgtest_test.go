//go:build unix

package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func queryString(t *testing.T, dsn, sql string, args ...any) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(context.Background())
	var s string
	if err := conn.QueryRow(ctx, sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func databaseExists(t *testing.T, name string) bool {
	t.Helper()
	s := ensure(t)
	var n int
	if err := s.admin.QueryRow(context.Background(), "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n == 1
}

func TestNewDBSettings(t *testing.T) {
	t.Parallel()
	pool, dsn := NewPool(t)
	ctx := context.Background()
	var db, user, walLevel string
	if err := pool.QueryRow(ctx, "SELECT current_database(), current_user, current_setting('wal_level')").Scan(&db, &user, &walLevel); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("gs_test_%d_", os.Getpid()); !strings.HasPrefix(db, want) {
		t.Errorf("database %q, want prefix %q", db, want)
	}
	if got := queryString(t, dsn, "SHOW wal_level"); got != "logical" {
		t.Errorf("wal_level = %q, want logical", got)
	}
	if os.Getenv(EnvDSN) == "" {
		if !strings.HasPrefix(dsn, "postgres://") {
			t.Errorf("dsn %q is not a postgres:// URL", dsn)
		}
		if user != SuperUser {
			t.Errorf("current_user = %q, want %q", user, SuperUser)
		}
		if ensure(t).cluster != nil && !strings.Contains(dsn, "127.0.0.1") {
			t.Errorf("dsn %q does not use 127.0.0.1", dsn)
		}
		for name, want := range map[string]string{
			"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
			"max_connections": "200", "max_replication_slots": "20", "max_wal_senders": "20",
			"shared_buffers": "128MB", "server_encoding": "UTF8", "lc_collate": "C",
		} {
			if name == "lc_collate" && ServerMajor(t) >= 16 {
				continue // no longer a GUC
			}
			if got := queryString(t, dsn, "SELECT current_setting($1)", name); got != want {
				t.Errorf("%s = %q, want %q", name, got, want)
			}
		}
	}
	if m := ServerMajor(t); m < 13 {
		t.Errorf("ServerMajor = %d; the harness needs 13+ (DROP DATABASE WITH (FORCE))", m)
	}
	t.Logf("server major %d, dsn %s", ServerMajor(t), dsn)
}

func TestDatabasesAreIsolated(t *testing.T) {
	t.Parallel()
	a, b := NewDB(t), NewDB(t)
	if a == b {
		t.Fatalf("NewDB returned the same dsn twice: %s", a)
	}
	Exec(t, a, `CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b');`)
	Exec(t, b, `CREATE TABLE t (id int PRIMARY KEY, v text)`)
	Exec(t, b, `INSERT INTO t VALUES ($1, $2)`, 7, "it's")
	if got := queryString(t, a, "SELECT string_agg(v, ',' ORDER BY id) FROM t"); got != "a,b" {
		t.Errorf("db a: %q", got)
	}
	if got := queryString(t, b, "SELECT string_agg(id || ':' || v, ',') FROM t"); got != "7:it's" {
		t.Errorf("db b: %q", got)
	}
	if da, db := queryString(t, a, "SELECT current_database()"), queryString(t, b, "SELECT current_database()"); da == db {
		t.Errorf("both dsns reach database %s", da)
	}
}

func TestDropOnCleanup(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("inner", func(t *testing.T) {
		dsn := NewDB(t)
		name = queryString(t, dsn, "SELECT current_database()")
		if !databaseExists(t, name) {
			t.Fatalf("database %s not found after NewDB", name)
		}
		// A session the test forgot to close, and a logical replication slot:
		// cleanup must still drop the database.
		conn, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn // deliberately left open
		Exec(t, dsn, `SELECT pg_create_logical_replication_slot('pgtest_idle_'||pg_backend_pid(), 'pgoutput')`)
		// And an active one: a walsender streaming from a slot, never closed.
		ctx := context.Background()
		rconn, err := pgconn.Connect(ctx, replicationDSN(dsn))
		if err != nil {
			t.Fatal(err)
		}
		slot := fmt.Sprintf("pgtest_active_%d", time.Now().UnixNano())
		res, err := pglogrepl.CreateReplicationSlot(ctx, rconn, slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{})
		if err != nil {
			t.Fatal(err)
		}
		Exec(t, dsn, `CREATE PUBLICATION pub FOR ALL TABLES`)
		lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
		if err != nil {
			t.Fatal(err)
		}
		if err := pglogrepl.StartReplication(ctx, rconn, slot, lsn, pglogrepl.StartReplicationOptions{
			PluginArgs: []string{"proto_version '1'", "publication_names 'pub'"},
		}); err != nil {
			t.Fatal(err)
		}
		// The walsender marks the slot active once it has processed
		// START_REPLICATION, a moment after the command was sent.
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) { // a loaded machine: minutes are a bound, not a wait
			got := queryString(t, dsn, "SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = $1 AND active", slot)
			if got == "1" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("slot %s not active (%s)", slot, got)
			}
		}
	})
	if name == "" {
		t.Fatal("inner test did not run")
	}
	if databaseExists(t, name) {
		t.Fatalf("database %s still exists after its test finished", name)
	}
	var slots int
	if err := ensure(t).admin.QueryRow(context.Background(), "SELECT count(*) FROM pg_replication_slots WHERE database = $1", name).Scan(&slots); err != nil {
		t.Fatal(err)
	}
	if slots != 0 {
		t.Errorf("%d replication slots of %s left", slots, name)
	}
}

func TestReplicationConnection(t *testing.T) {
	t.Parallel()
	dsn := NewDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, replicationDSN(dsn))
	if err != nil {
		t.Fatalf("replication connection: %v", err)
	}
	defer conn.Close(context.Background())
	res := conn.PgConn().Exec(ctx, "IDENTIFY_SYSTEM")
	if _, err := res.ReadAll(); err != nil {
		t.Fatalf("IDENTIFY_SYSTEM: %v", err)
	}
}

func TestParallelNewDB(t *testing.T) {
	t.Parallel()
	const n = 8
	var wg sync.WaitGroup
	dsns := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dsns[i] = NewDB(t)
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, d := range dsns {
		if d == "" || seen[d] {
			t.Fatalf("duplicate or empty dsn %q in %v", d, dsns)
		}
		seen[d] = true
	}
}

func TestExecFailureIsReported(t *testing.T) {
	t.Parallel()
	dsn := NewDB(t)
	ft := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Exec(ft, dsn, "SELECT * FROM no_such_table")
	}()
	<-done
	if !ft.failed || !strings.Contains(ft.msg, "no_such_table") {
		t.Errorf("Exec on a bad statement: failed=%v msg=%q", ft.failed, ft.msg)
	}
}

// fakeTB records Fatalf instead of failing the real test.
type fakeTB struct {
	testing.TB
	failed bool
	msg    string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = true
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestWithDatabase(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://u:p@h:5433/postgres?sslmode=disable", "postgres://u:p@h:5433/db1?sslmode=disable"},
		{"postgresql://u@h", "postgresql://u@h/db1"},
		{"host=h user=u dbname=postgres", "host=h user=u dbname=postgres dbname='db1'"},
	} {
		if got := withDatabase(tc.in, "db1"); got != tc.want {
			t.Errorf("withDatabase(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestStartClusterDirect(t *testing.T) {
	if os.Getenv(EnvDSN) != "" {
		t.Skip("external server in use")
	}
	if testing.Short() {
		t.Skip("starts a second cluster")
	}
	t.Parallel()
	ctx := context.Background()
	c, err := StartCluster(ctx, Options{Settings: map[string]string{"application_name": "pgtest it's"}})
	if errors.Is(err, ErrNoServerBinaries) {
		t.Skip(err) // a machine with only Docker: the package's server is a container
	}
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = c.Stop()
		}
	}()
	if c.Version < 13 || c.Port == 0 || c.Host != "127.0.0.1" {
		t.Errorf("cluster %+v", c)
	}
	dsn, err := c.CreateDatabase(ctx, "direct")
	if err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, dsn, "SELECT current_setting('application_name')"); got != "pgtest it's" {
		t.Errorf("application_name = %q", got)
	}
	if err := c.DropDatabase(ctx, "direct"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.DataDir); err != nil {
		t.Fatalf("data dir: %v", err)
	}
	stopped = true
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if _, err := os.Stat(c.DataDir); !os.IsNotExist(err) {
		t.Errorf("data dir %s still there after Stop (%v)", c.DataDir, err)
	}
	ctx2, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if conn, err := pgx.Connect(ctx2, c.DSN("postgres")); err == nil {
		conn.Close(ctx)
		t.Error("server still accepts connections after Stop")
	}
}

// replicationDSN adds replication=database to a URL or keyword/value DSN.
func replicationDSN(dsn string) string {
	switch {
	case !strings.Contains(dsn, "://"):
		return dsn + " replication=database"
	case strings.Contains(dsn, "?"):
		return dsn + "&replication=database"
	default:
		return dsn + "?replication=database"
	}
}
