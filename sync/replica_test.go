package sync_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/pgtest"
	gssync "github.com/greenswap/greenswap/sync"
)

// replicaSet is a primary of our own (the package's shared cluster cannot
// be given a standby without disturbing the other tests) and one streaming
// standby.
type replicaSet struct {
	primary, standby *pgtest.Cluster
	name             string // the standby's application_name
	dsn              string // a database on the primary
	pool             *pgxpool.Pool
	standbyConn      *pgx.Conn
}

func startReplicaSet(t *testing.T, name string) *replicaSet {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	primary, err := pgtest.StartCluster(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := primary.Stop(); err != nil { // stops the standby too
			t.Errorf("stop primary: %v", err)
		}
	})
	standby, err := primary.StartStandby(ctx, name, pgtest.StandbyOptions{})
	if errors.Is(err, pgtest.ErrNoBaseBackup) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	rs := &replicaSet{primary: primary, standby: standby, name: name}
	if rs.dsn, err = primary.CreateDatabase(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	if rs.pool, err = pgxpool.New(ctx, rs.dsn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.pool.Close)
	if rs.standbyConn, err = pgx.Connect(ctx, standby.DSN("postgres")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.standbyConn.Close(context.Background()) })
	pgtest.Exec(t, rs.dsn, `CREATE TABLE churn (id bigserial PRIMARY KEY, payload text NOT NULL)`)
	return rs
}

// standbyExec runs sql (pg_wal_replay_pause() and the like) on the standby.
func (rs *replicaSet) standbyExec(t *testing.T, sql string) {
	t.Helper()
	if _, err := rs.standbyConn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("standby: %s: %v", sql, err)
	}
}

// waitReplayPaused waits until the standby's replay is paused, not just
// asked to pause.
func (rs *replicaSet) waitReplayPaused(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var paused bool
		if err := rs.standbyConn.QueryRow(context.Background(), `SELECT pg_is_wal_replay_paused()`).Scan(&paused); err != nil {
			t.Fatal(err)
		}
		if paused {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("standby replay never paused")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// churn inserts a row on the primary every 10ms until the test ends or stop
// is called; stop waits for it.
func (rs *replicaSet) churn(t *testing.T) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				done <- nil
				return
			case <-tick.C:
			}
			if _, err := rs.pool.Exec(ctx, `INSERT INTO churn (payload) VALUES ($1)`, strings.Repeat("w", 200)); err != nil && ctx.Err() == nil {
				done <- err
				return
			}
		}
	}()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("churn: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

// observe logs what the primary's pg_stat_replication says of the standby.
func (rs *replicaSet) observe(t *testing.T, when string) {
	t.Helper()
	var state, lag, bytes, apply string
	err := rs.pool.QueryRow(context.Background(), `SELECT state, coalesce(replay_lag::text, 'NULL'),
		coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::text, 'NULL'), coalesce(replay_lsn::text, 'NULL')
		FROM pg_stat_replication WHERE application_name = $1`, rs.name).Scan(&state, &lag, &bytes, &apply)
	if err != nil {
		t.Fatalf("pg_stat_replication: %v", err)
	}
	t.Logf("%s: state %s, replay_lag %s, replay_lsn %s, %s bytes behind", when, state, lag, apply, bytes)
}

// pollHold asks th until ok(reason) or the deadline, logging pg_stat_replication about once a second.
func (rs *replicaSet) pollHold(t *testing.T, th gssync.Throttle, within time.Duration, what string, ok func(string) bool) string {
	t.Helper()
	start := time.Now()
	last := start
	for {
		reason, err := th.Hold(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if ok(reason) {
			rs.observe(t, fmt.Sprintf("%s after %s (reason %q)", what, time.Since(start).Round(time.Millisecond), reason))
			return reason
		}
		if time.Since(last) >= time.Second {
			last = time.Now()
			rs.observe(t, fmt.Sprintf("waiting for %s, %s in (reason %q)", what, time.Since(start).Round(time.Second), reason))
		}
		if time.Since(start) > within {
			t.Fatalf("no %s within %s; last reason %q", what, within, reason)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lagState is what the primary's pg_stat_replication says of the standby.
type lagState struct {
	lag             float64 // replay_lag in seconds, -1 = NULL
	replay, current string  // replay_lsn, and the primary's pg_current_wal_lsn()
	behind          int64   // bytes between them
}

func (rs *replicaSet) state(t *testing.T) lagState {
	t.Helper()
	var s lagState
	err := rs.pool.QueryRow(context.Background(), `SELECT coalesce(extract(epoch FROM replay_lag)::float8, -1),
		coalesce(replay_lsn::text, ''), pg_current_wal_lsn()::text, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), -1)::int8
		FROM pg_stat_replication WHERE application_name = $1`, rs.name).Scan(&s.lag, &s.replay, &s.current, &s.behind)
	if err != nil {
		t.Fatalf("pg_stat_replication: %v", err)
	}
	return s
}

// ReplicaLag against a real standby: quiet while it replays; holding, and
// naming it, while its replay is paused, the primary writing or not; quiet
// again as soon as it has replayed everything after replay resumes.
func TestReplicaLagRealStandby(t *testing.T) {
	t.Parallel()
	rs := startReplicaSet(t, "lagging standby 1")
	const max = 300 * time.Millisecond
	th := &gssync.ReplicaLag{Q: rs.pool, Max: max, Every: 10 * time.Millisecond}
	held := func(r string) bool {
		return strings.HasPrefix(r, "replica "+rs.name+" replay lag ") && strings.HasSuffix(r, " > 300ms")
	}

	// Replaying, the primary writing: the lag is measured (not NULL), and
	// small enough.
	stop := rs.churn(t)
	deadline := time.Now().Add(20 * time.Second)
	for rs.state(t).lag < 0 {
		if time.Now().After(deadline) {
			t.Fatal("replay_lag stayed NULL while the primary wrote")
		}
		time.Sleep(20 * time.Millisecond)
	}
	rs.pollHold(t, th, 20*time.Second, "go while replaying", func(r string) bool { return r == "" })

	// Paused, the primary writing: held, naming the standby.
	rs.standbyExec(t, `SELECT pg_wal_replay_pause()`)
	rs.waitReplayPaused(t)
	rs.observe(t, "replay paused")
	rs.pollHold(t, th, 20*time.Second, "hold while paused", held)

	// Paused, the primary idle (as when the backfill is the only writer
	// and is held): replay_lag keeps growing, so the hold lasts.
	stop()
	rs.observe(t, "primary idle")
	deadline = time.Now().Add(20 * time.Second)
	for {
		r, err := th.Hold(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if !held(r) {
			rs.observe(t, "released")
			t.Fatalf("replay paused, the primary idle: reason %q", r)
		}
		if st := rs.state(t); st.lag > 3 {
			rs.observe(t, fmt.Sprintf("still held (%q)", r))
			break
		}
		if time.Now().After(deadline) {
			rs.observe(t, "timeout")
			t.Fatal("replay_lag did not grow past 3s while replay was paused")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Resumed, the primary still idle: as soon as the primary sees the
	// standby's replay_lsn at its own WAL position, go, even while
	// replay_lag still shows the last lag it measured.
	rs.standbyExec(t, `SELECT pg_wal_replay_resume()`)
	deadline = time.Now().Add(30 * time.Second)
	for {
		before := rs.state(t)
		r, err := (&gssync.ReplicaLag{Q: rs.pool, Max: max}).Hold(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		after := rs.state(t)
		if before.behind == 0 && after.behind == 0 && before.replay == after.replay {
			// Hold read the caught-up standby.
			t.Logf("caught up at %s: replay_lag %.3fs, reason %q", after.replay, before.lag, r)
			if r != "" {
				t.Fatalf("the standby has replayed all WAL, yet: %q", r)
			}
			break
		}
		if time.Now().After(deadline) {
			rs.observe(t, "timeout")
			t.Fatal("the standby never caught up after replay resumed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	rs.pollHold(t, th, 20*time.Second, "go after resume", func(r string) bool { return r == "" })

	// Resumed, the primary writing again: go, with the lag measured anew.
	caughtUp := rs.state(t).replay
	rs.churn(t)
	deadline = time.Now().Add(20 * time.Second)
	for st := rs.state(t); st.replay == caughtUp || st.lag < 0; st = rs.state(t) {
		if time.Now().After(deadline) {
			rs.observe(t, "timeout")
			t.Fatal("the standby's replay did not move on after replay resumed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	rs.pollHold(t, th, 20*time.Second, "go after resume, the primary writing", func(r string) bool { return r == "" })
}

// A backfill started while a standby's replay is paused copies nothing and
// says why; once replay resumes it runs to the end, and green equals blue.
func TestBackfillHeldByRealStandby(t *testing.T) {
	t.Parallel()
	rs := startReplicaSet(t, "lagging standby 2")
	f := setupOn(t, rs.pool, rs.dsn, ordersTable, ordersSpec)
	const max = time.Second
	replicaHeld := func(r string) bool {
		return strings.HasPrefix(r, "replica "+rs.name+" replay lag ") && strings.HasSuffix(r, " > 1s")
	}

	// The standby stops replaying while the application writes, until the
	// throttle holds.
	rs.standbyExec(t, `SELECT pg_wal_replay_pause()`)
	rs.waitReplayPaused(t)
	stop := rs.churn(t)
	rs.pollHold(t, &gssync.ReplicaLag{Q: rs.pool, Max: max, Every: 10 * time.Millisecond}, 20*time.Second, "hold while paused", replicaHeld)

	bf := f.backfiller(t, gssync.Options{BatchSize: 100, Fixed: true, PollInterval: 10 * time.Millisecond})
	bf.Throttles = []gssync.Throttle{&gssync.ReplicaLag{Q: rs.pool, Max: max, Every: 10 * time.Millisecond}}
	type out struct {
		res gssync.Result
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := bf.Run(context.Background(), nil)
		done <- out{res, err}
	}()
	throttles := func() []string {
		f.mu.Lock()
		defer f.mu.Unlock()
		return append([]string(nil), f.throttles...)
	}
	checkpoints := func() int {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.checkpoints)
	}
	deadline := time.Now().Add(20 * time.Second)
	for r := throttles(); len(r) == 0; r = throttles() {
		if time.Now().After(deadline) {
			t.Fatal("the backfill never reported a throttle")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r := throttles(); !replicaHeld(r[0]) {
		t.Fatalf("first throttle reason %q; want the paused standby's replay lag", r[0])
	}
	// Held for a good while (a hundred throttle polls and more, the
	// application still writing, the standby falling further behind):
	// nothing copied, nothing checkpointed.
	time.Sleep(2 * time.Second)
	rs.observe(t, "backfill held")
	// (The reason changes as the lag grows; every one is the standby's.)
	for _, r := range throttles() {
		if !replicaHeld(r) {
			t.Fatalf("throttle reasons while replay is paused: %q", throttles())
		}
	}
	if n := checkpoints(); n != 0 {
		t.Fatalf("%d batches checkpointed while the standby's replay was paused", n)
	}
	if n := f.count(t, `SELECT count(*) FROM gs_o_green.orders`); n != 0 {
		t.Fatalf("green has %d rows while the backfill is held", n)
	}
	select {
	case o := <-done:
		t.Fatalf("the backfill returned while held: %+v, %v", o.res, o.err)
	default:
	}

	// Replay resumes, the application stops: the backfill runs to the end.
	stop()
	rs.standbyExec(t, `SELECT pg_wal_replay_resume()`)
	var o out
	select {
	case o = <-done:
	case <-time.After(2 * time.Minute):
		rs.observe(t, "timeout")
		t.Fatalf("the backfill did not finish after replay resumed; throttle reasons %q", throttles())
	}
	if o.err != nil {
		t.Fatal(o.err)
	}
	r := throttles()
	t.Logf("backfill %+v; throttle reasons %q", o.res, r)
	if !o.res.Done || o.res.Rows != 2000 || r[len(r)-1] != "" {
		t.Fatalf("result %+v, throttle reasons %q", o.res, r)
	}
	f.mu.Lock()
	first, last := f.checkpoints[0], f.checkpoints[len(f.checkpoints)-1]
	f.mu.Unlock()
	if first.RowsCopied != 100 || last.RowsCopied != 2000 || !last.Done {
		t.Fatalf("checkpoints from %+v to %+v", first, last)
	}
	if d := f.diff(t, ordersBlue, "*"); d != 0 {
		t.Fatalf("%d rows differ between blue and green", d)
	}
}
