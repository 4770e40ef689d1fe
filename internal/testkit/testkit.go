// Package testkit holds the helpers that the integration tests of runner,
// sync, sync/stream, trigger, verify and cutover used to write each for
// itself: scalar queries, the hand-written EXCEPT oracle, waiting, specs,
// roles an attacker or an application would log in as, the orders fixture
// and its concurrent workload, and the workload seeds.
//
// It is a test helper package: every function takes a testing.TB and fails
// the test on error. It imports nothing from the lifecycle below shadow
// (no runner, sync, trigger), so that each of those packages' own tests,
// internal or external, can import it without a cycle.
package testkit

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// Count runs a query returning one integer (count(*), a sum) and returns it.
func Count(t testing.TB, q db.Querier, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := q.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// ExceptBothWays is the query counting the rows of a EXCEPT b plus those of
// b EXCEPT a: 0 exactly when the two queries return the same set of rows.
// It is the tests' own oracle, written here by hand and never built from
// greenswap's mapping or checksum code.
func ExceptBothWays(a, b string) string {
	return fmt.Sprintf("SELECT count(*) FROM ((%s EXCEPT %s) UNION ALL (%s EXCEPT %s)) d", a, b, b, a)
}

// Diff counts the rows that differ between the queries a and b, both ways
// (ExceptBothWays).
func Diff(t testing.TB, q db.Querier, a, b string) int64 {
	t.Helper()
	return Count(t, q, ExceptBothWays(a, b))
}

// WaitFor polls cond every 20ms until it is true, failing the test after d.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitLockWait waits (up to 10 s) until backend pid is waiting on a
// heavyweight lock: the point at which a test knows a statement it started
// in another session is queued behind the lock it holds.
func WaitLockWait(t testing.TB, pool *pgxpool.Pool, pid uint32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'`, int32(pid)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %d never waited on a lock", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ParseSpec parses a YAML spec as the CLI would a file named test.yaml.
func ParseSpec(t testing.TB, yaml string) *spec.Spec {
	t.Helper()
	return ParseSpecAs(t, yaml, "test.yaml")
}

// ParseSpecAs is ParseSpec for a file of another name (what a spec error
// then names).
func ParseSpecAs(t testing.TB, yaml, file string) *spec.Spec {
	t.Helper()
	s, err := spec.ParseSpec([]byte(yaml), file, "yaml")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Logger logs warnings and errors to the test's log (what the tests want
// to see of greenswap's own logging without drowning in progress lines).
func Logger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
}

// Seeds are the workload seeds of a randomized test: GREENSWAP_SEEDS is
// either a count ("20": seeds 1 to 20) or a list ("3,17"); unset, 1 to def.
func Seeds(t testing.TB, def int) []uint64 {
	t.Helper()
	v := os.Getenv("GREENSWAP_SEEDS")
	if v == "" {
		v = strconv.Itoa(def)
	}
	if n, err := strconv.Atoi(v); err == nil {
		seeds := make([]uint64, n)
		for i := range seeds {
			seeds[i] = uint64(i + 1)
		}
		return seeds
	}
	var seeds []uint64
	for _, f := range strings.Split(v, ",") {
		s, err := strconv.ParseUint(strings.TrimSpace(f), 10, 64)
		if err != nil {
			t.Fatalf("GREENSWAP_SEEDS: %v", err)
		}
		seeds = append(seeds, s)
	}
	return seeds
}

// LoadMapping loads spec's blue and green tables as they are now and builds
// the mapping between them (what sync, verify and the triggers use).
func LoadMapping(t testing.TB, q db.Querier, spec *spec.Spec) (blue, green *shadow.Table, m *shadow.Mapping) {
	t.Helper()
	ctx := context.Background()
	n := shadow.NamesFor(spec.Name, spec.AppTable())
	var err error
	if blue, err = shadow.LoadTable(ctx, q, n.Blue); err != nil {
		t.Fatal(err)
	}
	if green, err = shadow.LoadTable(ctx, q, n.Green); err != nil {
		t.Fatal(err)
	}
	if m, err = shadow.BuildMapping(spec, blue, green); err != nil {
		t.Fatal(err)
	}
	return blue, green, m
}
