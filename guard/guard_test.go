package guard_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/guard"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/spec"
	gssync "github.com/greenswap/greenswap/sync"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// only switches every default-on signal off and sets those of o.
func only(o spec.GuardOptions) spec.GuardOptions {
	if o.LockWaitTime.Duration == 0 {
		o.LockWaitTime.Duration = spec.GuardOff
	}
	if o.ReplicaLag.Duration == 0 {
		o.ReplicaLag.Duration = spec.GuardOff
	}
	if o.Every.Duration == 0 {
		o.Every.Duration = 50 * time.Millisecond
	}
	return o.WithDefaults()
}

// waitReason polls b until its reason satisfies ok (up to 20s).
func waitReason(t *testing.T, b *guard.Breaker, what string, ok func(string) bool) string {
	t.Helper()
	var last string
	testkit.WaitFor(t, 20*time.Second, what, func() bool {
		r, err := b.Hold(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		last = r
		return ok(r)
	})
	return last
}

func has(sub string) func(string) bool {
	return func(r string) bool { return strings.Contains(r, sub) }
}
func closed(r string) bool { return r == "" }

// connAs opens a connection with the application_name of a client.
func connAs(t *testing.T, dsn, app string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = app
	c, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// TestErrorStormOpensAndCloses: sessions failing statements in a loop
// (every one a rolled-back transaction) push the rollback share past the
// baseline's plus the bound; the storm over, the breaker closes.
func TestErrorStormOpensAndCloses(t *testing.T) {
	t.Parallel()
	pool, dsn := pgtest.NewPool(t)
	b := &guard.Breaker{S: &guard.Sampler{Q: pool, Opts: only(spec.GuardOptions{RollbackRate: 0.3, Every: spec.Duration{Duration: 300 * time.Millisecond}})}}
	if r, err := b.Hold(context.Background()); err != nil || r != "" {
		t.Fatalf("quiet database: Hold = %q, %v; want closed", r, err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	app := connAs(t, dsn, "app")
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			_, _ = app.Exec(ctx, "SELECT 1 / 0")
		}
	}()
	r := waitReason(t, b, "the breaker to open on the error storm", has("guard: rollback_rate="))
	if trips := guard.ParseReason(r); len(trips) != 1 || trips[0].Signal != guard.SigRollbackRate || trips[0].Value <= trips[0].Bound {
		t.Fatalf("reason %q parsed as %+v: want rollback_rate with value above bound", r, trips)
	}
	stop()
	<-done
	waitReason(t, b, "the breaker to close after the storm", closed)
}

// TestLockWaitsOnTheTablesOpen: a session holding a lock on the table
// queues the application's writes behind it: lock_waits opens. A
// greenswap session waiting the same way is not counted.
func TestLockWaitsOnTheTablesOpen(t *testing.T) {
	t.Parallel()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE TABLE blue (id int PRIMARY KEY); INSERT INTO blue VALUES (1)`)
	b := &guard.Breaker{S: &guard.Sampler{Q: pool, Relations: []string{`public.blue`, `public.absent_green`},
		Opts: only(spec.GuardOptions{LockWaits: 1})}}
	holder := connAs(t, dsn, "deploy")
	tx, err := holder.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(context.Background(), "LOCK TABLE blue IN SHARE MODE"); err != nil {
		t.Fatal(err)
	}
	own := connAs(t, dsn, "greenswap:test")
	ownDone := make(chan error, 1)
	go func() { _, err := own.Exec(context.Background(), "UPDATE blue SET id = id"); ownDone <- err }()
	testkit.WaitLockWait(t, pool, own.PgConn().PID())
	time.Sleep(100 * time.Millisecond)
	if r, err := b.Hold(context.Background()); err != nil || r != "" {
		t.Fatalf("only greenswap's own session waits: Hold = %q, %v; want closed", r, err)
	}
	app := connAs(t, dsn, "app")
	appDone := make(chan error, 1)
	go func() { _, err := app.Exec(context.Background(), "INSERT INTO blue VALUES (2)"); appDone <- err }()
	testkit.WaitLockWait(t, pool, app.PgConn().PID())
	r := waitReason(t, b, "lock_waits to open", has("guard: lock_waits=1 > 0"))
	if !strings.Contains(r, "public.blue") {
		t.Errorf("reason %q does not name the table", r)
	}
	var n13 int
	var longest13 float64
	if err := pool.QueryRow(context.Background(), guard.LockWaitSQL13, []string{"public.blue"}).Scan(&n13, &longest13); err != nil || n13 != 1 || longest13 <= 0 {
		t.Errorf("the pre-14 form: %d waiting, longest %gs, %v; want 1 and > 0", n13, longest13, err)
	}
	if err := tx.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []chan error{ownDone, appDone} {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	waitReason(t, b, "lock_waits to close once the lock is gone", closed)
}

// TestSQLProbeOpensAndCloses: a probe returning false (then failing with
// an error) opens the breaker; returning true closes it.
func TestSQLProbeOpensAndCloses(t *testing.T) {
	t.Parallel()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE TABLE health (ok bool); INSERT INTO health VALUES (false)`)
	b := &guard.Breaker{S: &guard.Sampler{Q: pool, Opts: only(spec.GuardOptions{ProbeSQL: "SELECT ok FROM health"})}}
	waitReason(t, b, "the probe returning false to open it", has("probe_sql=1 > 0 (baseline 0): the probe returned false"))
	pgtest.Exec(t, dsn, `UPDATE health SET ok = true`)
	waitReason(t, b, "the probe returning true to close it", closed)
	pgtest.Exec(t, dsn, `DROP TABLE health`)
	waitReason(t, b, "the probe's error to open it", has("the probe failed (SQLSTATE 42P01)"))

	slow := &guard.Breaker{S: &guard.Sampler{Q: pool, Opts: only(spec.GuardOptions{ProbeSQL: "SELECT pg_sleep(5) IS NULL",
		ProbeTimeout: spec.Duration{Duration: 200 * time.Millisecond}})}}
	t0 := time.Now()
	waitReason(t, slow, "a slow probe to fail", has("did not answer within 200ms"))
	if d := time.Since(t0); d > 3*time.Second {
		t.Errorf("the probe's timeout did not cut it short: %s", d)
	}
}

// TestCommandProbeOpensAndCloses: `false` opens the breaker, `true`
// closes it; a failing command's last stderr line is in the reason.
func TestCommandProbeOpensAndCloses(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "probe")
	set := func(body string) {
		if err := os.WriteFile(script, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	set("echo checking >&2; echo 'upstream 503' >&2; false\n")
	b := &guard.Breaker{S: &guard.Sampler{Q: pool, Opts: only(spec.GuardOptions{ProbeCmd: "sh " + script})}}
	r := waitReason(t, b, "a failing command to open it", has("probe_cmd=1 > 0"))
	if !strings.HasSuffix(r, "exited 1: upstream 503") {
		t.Errorf("reason %q does not end with the exit status and stderr's last line", r)
	}
	set("true\n")
	waitReason(t, b, "a succeeding command to close it", closed)
}

// TestLatencyUnavailableWithoutPgStatStatements: without the extension,
// and with it created but not preloaded, latency is "unavailable": never
// tripped, never an error.
func TestLatencyUnavailableWithoutPgStatStatements(t *testing.T) {
	t.Parallel()
	pool, dsn := pgtest.NewPool(t)
	s := &guard.Sampler{Q: pool, AppTable: "orders", Opts: only(spec.GuardOptions{LatencyRatio: 2})}
	ctx := context.Background()
	check := func(want string) {
		t.Helper()
		bl, err := s.TakeBaseline(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sigs, err := s.Sample(ctx, bl)
		if err != nil {
			t.Fatal(err)
		}
		if len(sigs) != 1 || !sigs[0].Unavailable || sigs[0].Tripped || !strings.Contains(sigs[0].Reason, want) {
			t.Fatalf("signals %+v: want latency unavailable, %q", sigs, want)
		}
	}
	check("not installed")
	pgtest.Exec(t, dsn, `CREATE EXTENSION pg_stat_statements`)
	check("SQLSTATE 55000")
}

// TestReplicaLagSignalReadsSync: the replica-lag signal is sync's reading
// (no standby here: 0, closed) and its bound is the guard's.
func TestReplicaLagSignalReadsSync(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	s := &guard.Sampler{Q: pool, ReplicaLag: gssync.ReadReplicaLag, Opts: only(spec.GuardOptions{ReplicaLag: spec.Duration{Duration: time.Second}})}
	bl, err := s.TakeBaseline(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sigs, err := s.Sample(context.Background(), bl)
	if err != nil {
		t.Fatal(err)
	}
	if len(sigs) != 1 || sigs[0].Name != guard.SigReplicaLag || sigs[0].Tripped || sigs[0].Bound != 1 {
		t.Fatalf("signals %+v: want replica_lag 0 <= 1s", sigs)
	}
}

// TestOpenTooLong: a breaker open past MaxOpen fails with exit code 6,
// naming the signal, its value and bound.
func TestOpenTooLong(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	b := &guard.Breaker{S: &guard.Sampler{Q: pool, Opts: only(spec.GuardOptions{ProbeSQL: "SELECT false",
		MaxOpen: spec.Duration{Duration: 300 * time.Millisecond}})}}
	var err error
	testkit.WaitFor(t, 10*time.Second, "the breaker to give up", func() bool {
		_, err = b.Hold(context.Background())
		return err != nil
	})
	var long *guard.OpenTooLong
	if !errors.As(err, &long) || long.ExitCode() != 6 || !strings.Contains(err.Error(), "probe_sql=1 > 0") {
		t.Fatalf("error %v: want OpenTooLong, exit 6, naming probe_sql", err)
	}
}

func TestParseReason(t *testing.T) {
	t.Parallel()
	got := guard.ParseReason("guard: lock_wait_time=31.5s > 30s (baseline 0s): 2 sessions wait; deadlocks=2/s > 0.5/s (baseline 0/s): 4 deadlocks in 2s")
	if len(got) != 2 || got[0] != (guard.Trip{Signal: "lock_wait_time", Value: 31.5, Bound: 30}) || got[1] != (guard.Trip{Signal: "deadlocks", Value: 2, Bound: 0.5}) {
		t.Fatalf("ParseReason = %+v", got)
	}
	if guard.ParseReason("paused (greenswap resume m)") != nil {
		t.Fatal("a reason not the guard's must parse as nothing")
	}
}

// TestFirstHoldSamples (break5 finding 04): the very first Hold, before
// the first batch, samples the signals, so a failing probe holds the copy
// from its start; Every is an hour here, so only that first sample can
// have seen the probe (before, the first sample came Every after the
// baseline and the copy ran meanwhile).
func TestFirstHoldSamples(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	o := only(spec.GuardOptions{ProbeCmd: "false"})
	o.Every.Duration = time.Hour
	b := &guard.Breaker{S: &guard.Sampler{Q: pool, Opts: o}}
	r, err := b.Hold(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(r, guard.ReasonPrefix+"probe_cmd=1 > 0") {
		t.Fatalf("first Hold returned %q, want the failing probe's reason", r)
	}
}
