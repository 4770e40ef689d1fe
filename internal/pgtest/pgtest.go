//go:build unix

// Package pgtest gives every integration test in this repository a real
// PostgreSQL: one server per test package (a throwaway cluster, or the server
// named by GREENSWAP_TEST_DSN) and a fresh database per test.
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
//	func TestSomething(t *testing.T) {
//		t.Parallel()
//		pool, dsn := pgtest.NewPool(t)
//		pgtest.Exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)`)
//		...
//	}
//
// See README.md in this directory.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pkgState is the server of this test binary, set up on first use.
type pkgState struct {
	cluster   *Cluster         // a throwaway cluster from local binaries, or nil
	container *containerServer // a container started through Docker, or nil
	external  string           // the admin DSN of a server we did not start (GREENSWAP_TEST_DSN) or of the container
	admin     *pgxpool.Pool
	major     int
}

var (
	mu         sync.Mutex
	mainCalled bool
	started    bool
	state      *pkgState
	startErr   error
	dbCounter  atomic.Int64
)

// Main runs the package's tests and then stops the package's cluster (if one
// was started) and removes its data dir. It returns the exit code for os.Exit.
// The cluster is started lazily by the first NewDB/NewPool/ServerMajor call,
// so `go test -run NONE` or a package whose tests all skip costs nothing.
// SIGINT/SIGTERM during the run also stop the cluster before exiting.
// After a passing run it checks that no goroutine is left running (leak.go)
// and fails the package, naming each one's stack, if any is.
func Main(m *testing.M) int {
	mu.Lock()
	mainCalled = true
	mu.Unlock()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-sigs:
			fmt.Fprintf(os.Stderr, "pgtest: got %v, stopping the test cluster\n", s)
			_ = shutdown()
			code := 128 + int(syscall.SIGINT)
			if sig, ok := s.(syscall.Signal); ok {
				code = 128 + int(sig)
			}
			os.Exit(code)
		case <-done:
		}
	}()

	code := m.Run()

	close(done)
	signal.Stop(sigs)
	if err := shutdown(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: stopping the test cluster: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	// Only after a green run: a failed test often leaves its goroutines
	// blocked, and their stacks would bury the failure itself.
	if code == 0 {
		if err := findLeaks(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
			code = 1
		}
	}
	return code
}

func shutdown() error {
	mu.Lock()
	defer mu.Unlock()
	s := state
	state, started, startErr = nil, false, nil
	if s == nil {
		return nil
	}
	if s.admin != nil {
		s.admin.Close()
	}
	if s.cluster != nil {
		return s.cluster.Stop()
	}
	return s.container.Stop()
}

// ensure returns the package's server, starting it on first use.
func ensure(t testing.TB) *pkgState {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if !mainCalled {
		t.Fatal("pgtest: this package has no TestMain calling pgtest.Main; add:\n\tfunc TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }")
	}
	if !started {
		started = true
		state, startErr = setup(os.Getenv)
	}
	if startErr != nil {
		t.Fatalf("pgtest: no PostgreSQL for this test: %v", startErr)
	}
	return state
}

// setup starts (or connects to) the package's server, chosen by choose, and
// says on stderr which one it is, so a run's output names the path it took.
func setup(getenv func(string) string) (*pkgState, error) {
	// Long enough for a first pull of the postgres image.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sel, err := choose(gatherSelection(ctx, getenv))
	if err != nil {
		return nil, err
	}
	s := &pkgState{}
	var adminDSN, from string
	switch sel.Source {
	case fromDSN:
		s.external, adminDSN, from = sel.DSN, sel.DSN, EnvDSN
	case fromBinaries:
		c, err := StartCluster(ctx, Options{BinDir: sel.BinDir, LogFile: getenv(EnvLog)})
		if err != nil {
			return nil, err
		}
		s.cluster, adminDSN, from = c, c.DSN("postgres"), c.BinDir
	case fromContainer:
		cs, err := startContainer(ctx, sel.DockerHost, sel.Major)
		if err != nil {
			return nil, err
		}
		s.container, s.external, adminDSN, from = cs, cs.DSN, cs.DSN, "container "+cs.Image+" (testcontainers)"
	}
	cfg, err := pgxpool.ParseConfig(adminDSN)
	if err == nil {
		cfg.MaxConns = 4
		s.admin, err = pgxpool.NewWithConfig(ctx, cfg)
	}
	var release string
	if err == nil {
		var num int
		err = s.admin.QueryRow(ctx, "SELECT current_setting('server_version_num')::int, split_part(current_setting('server_version'), ' ', 1)").Scan(&num, &release)
		s.major = num / 10000
	}
	if want, _ := wantMajor(getenv); err == nil && want != 0 && s.major != want {
		err = fmt.Errorf("the server is PostgreSQL %d, and %s=%d asks for %d", s.major, EnvPGMajor, want, want)
	}
	if err != nil {
		if s.admin != nil {
			s.admin.Close()
		}
		if s.cluster != nil {
			_ = s.cluster.Stop()
		}
		_ = s.container.Stop()
		if sel.Source == fromDSN {
			return nil, fmt.Errorf("%s: %w", EnvDSN, err)
		}
		return nil, fmt.Errorf("pgtest: the server from %s: %w", from, err)
	}
	fmt.Fprintf(os.Stderr, "pgtest: PostgreSQL %s from %s\n", release, from)
	return s, nil
}

func (s *pkgState) dsn(dbname string) string {
	if s.cluster != nil {
		return s.cluster.DSN(dbname)
	}
	return withDatabase(s.external, dbname)
}

// withDatabase returns dsn (URL or keyword/value form) pointed at dbname.
func withDatabase(dsn, dbname string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		if u, err := url.Parse(dsn); err == nil {
			u.Path = "/" + dbname
			u.RawPath = ""
			return u.String()
		}
	}
	// keyword/value: the last occurrence of a keyword wins.
	return dsn + " dbname='" + strings.ReplaceAll(dbname, "'", `\'`) + "'"
}

// NewDB creates a fresh, empty database (from template0) named
// gs_test_<pid>_<n> and returns its connection string: a postgres:// URL for
// user postgres on 127.0.0.1 (with GREENSWAP_TEST_DSN: that DSN with the
// database replaced). The database, its sessions and its logical replication
// slots are dropped in t.Cleanup. Safe for parallel tests.
func NewDB(t testing.TB) string {
	t.Helper()
	s := ensure(t)
	name := fmt.Sprintf("gs_test_%d_%d", os.Getpid(), dbCounter.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := s.admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE template0"); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := dropDatabase(ctx, s.admin, name); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return s.dsn(name)
}

// NewPool is NewDB plus a pgxpool on the new database, closed in t.Cleanup
// (before the database is dropped).
func NewPool(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	dsn := NewDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatalf("pgtest: pool for %s: %v", dsn, err)
	}
	t.Cleanup(pool.Close)
	return pool, dsn
}

// OwnPool starts a throwaway cluster for this test alone (stopped in
// t.Cleanup), creates database dbname in it and returns a pool on it
// (closed first) and its connection string: for a test whose assertion
// depends on cluster-wide state the package's shared cluster mixes with
// other tests' (the xmin horizon, replication). Skipped when no server
// binaries are found.
func OwnPool(t testing.TB, opts Options, dbname string) (*pgxpool.Pool, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl, err := StartCluster(ctx, opts)
	if errors.Is(err, ErrNoServerBinaries) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Stop() })
	dsn, err := cl.CreateDatabase(ctx, dbname)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatalf("pgtest: pool for %s: %v", dbname, err)
	}
	t.Cleanup(pool.Close)
	return pool, dsn
}

// Exec runs sql on dsn over a new connection and fails the test on error.
// sql may hold several statements; it is sent with the simple protocol (args,
// if any, are interpolated client-side by pgx).
func Exec(t testing.TB, dsn string, sql string, args ...any) {
	t.Helper()
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("pgtest: connect %s: %v", dsn, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, append([]any{pgx.QueryExecModeSimpleProtocol}, args...)...); err != nil {
		t.Fatalf("pgtest: exec %s: %v", abbrev(sql), err)
	}
}

// ServerMajor returns the major version of the package's server (e.g. 15),
// starting it if needed. For tests that skip on old versions.
func ServerMajor(t testing.TB) int {
	t.Helper()
	return ensure(t).major
}

type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// dropDatabase removes database name even when a test left sessions or
// logical replication slots behind (DROP DATABASE ... WITH (FORCE) does not
// drop slots, and a database with slots cannot be dropped).
func dropDatabase(ctx context.Context, db execer, name string) error {
	ident := pgx.Identifier{name}.Sanitize()
	_, _ = db.Exec(ctx, "ALTER DATABASE "+ident+" ALLOW_CONNECTIONS false")
	for {
		_, _ = db.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name)
		// An active slot cannot be dropped until its walsender has exited.
		_, err := db.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1", name)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drop replication slots of database %s: %w", name, errors.Join(err, ctx.Err()))
		case <-time.After(100 * time.Millisecond):
		}
	}
	if _, err := db.Exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

func abbrev(sql string) string {
	sql = strings.Join(strings.Fields(sql), " ")
	if len(sql) > 200 {
		return sql[:200] + "..."
	}
	return sql
}
