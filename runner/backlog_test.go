package runner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
)

// The estimate from samples, the figures status and the progress lines
// print: trend, rates, age, ETA; and the warning once per episode.
func TestBacklogEstimate(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	const mb = 1 << 20
	sample := func(sec float64, wal, confirmed int64, active bool) backlogSample {
		return backlogSample{at: at(sec), wal: pglogrepl.LSN(wal), confirmed: pglogrepl.LSN(confirmed), active: active}
	}
	window := 30 * time.Second
	est := func(s ...backlogSample) *StreamBacklog { return estimateBacklog(s, window/backlogRateShare) }

	if b := est(sample(0, 100*mb, 10*mb, true)); b.Bytes != 90*mb || b.Trend != TrendUnknown || b.ETASeconds != nil || b.Never ||
		!strings.Contains(b.CatchUp(), "unknown") {
		t.Errorf("one sample: %+v", b)
	}
	// Nobody streams, the WAL grows 4 MB/s: growing, never, ~behind by
	// the backlog at that rate.
	b := est(sample(0, 100*mb, 20*mb, false), sample(2, 108*mb, 20*mb, false))
	if b.Trend != TrendGrowing || !b.Never || b.ETASeconds != nil || b.GrowthBytesPerSec != 4*mb || b.WALBytesPerSec != 4*mb ||
		b.ApplyBytesPerSec != 0 || b.Seconds == nil || *b.Seconds != 22 || !strings.Contains(b.CatchUp(), "nothing streams") {
		t.Errorf("stalled: %+v (age %v)", b, b.Seconds)
	}
	// Applying 6 MB/s against 4 MB/s of WAL: shrinking by 2 MB/s, 60 MB left → 30 s.
	b = est(sample(0, 100*mb, 20*mb, true), sample(2, 108*mb, 32*mb, true))
	if b.Trend != TrendShrinking || b.Never || b.ETASeconds == nil || *b.ETASeconds != 38 || b.GrowthBytesPerSec != -2*mb {
		t.Errorf("shrinking: %+v (eta %v)", b, b.ETASeconds)
	}
	if s := b.Summary(); !strings.Contains(s, "76.0 MB") || !strings.Contains(s, "shrinking -2.0 MB/s") || !strings.Contains(s, "in 38s") {
		t.Errorf("summary %q", s)
	}
	// Age within the samples: the WAL went past the confirmed position
	// (104 MB) between the samples at 0 and 2 s: behind for at least 2 s.
	b = est(sample(0, 100*mb, 90*mb, true), sample(2, 108*mb, 95*mb, true), sample(4, 116*mb, 104*mb, true))
	if b.Seconds == nil || *b.Seconds != 2 {
		t.Errorf("age: %v, want 2 s", b.Seconds)
	}
	// A moment's lull right after the start gives no absurd age: before
	// the oldest sample it needs samples spanning 2 s.
	b = est(sample(0, 100*mb, 88*mb, true), sample(1.2, 100*mb+4096, 88*mb, true))
	if b.Seconds != nil {
		t.Errorf("age from 1.2 s of samples: %v, want unknown", *b.Seconds)
	}
	// An idle WAL: a small backlog does not look old.
	b = est(sample(0, 100*mb, 100*mb-100, true), sample(5, 100*mb+7840, 100*mb, true))
	if b.Seconds == nil || *b.Seconds != 0 || b.Trend != TrendCaughtUp {
		t.Errorf("idle: age %v, trend %s", b.Seconds, b.Trend)
	}
	// A slot nobody streams does not shrink, whatever the window saw.
	b = est(sample(0, 100*mb, 50*mb, true), sample(5, 100*mb, 70*mb, false))
	if b.Trend != TrendSteady || !b.Never || !strings.Contains(b.CatchUp(), "nothing streams") {
		t.Errorf("detached after applying: %+v", b)
	}
	// A streamer within a status interval's worth of WAL: caught up, ETA 0.
	b = est(sample(0, 100*mb, 99*mb, true), sample(2, 101*mb, 100*mb+512<<10, true))
	if b.Trend != TrendCaughtUp || b.ETASeconds == nil || *b.ETASeconds != 0 || b.CatchUp() != "caught up" {
		t.Errorf("caught up: %+v", b)
	}
	// Standing still above the caught-up bound: steady, never.
	b = est(sample(0, 100*mb, 50*mb, true), sample(2, 100*mb+1000, 50*mb+1000, true))
	if b.Trend != TrendSteady || !b.Never || b.CatchUp() != "never at this rate" {
		t.Errorf("steady: %+v", b)
	}
	// The rates follow the last third of the window: a burst being
	// drained reads as shrinking, though the backlog is larger than at
	// the window's start.
	b = est(sample(0, 100*mb, 100*mb, true), sample(15, 140*mb, 101*mb, true), sample(25, 141*mb, 121*mb, true))
	if b.Trend != TrendShrinking || b.Samples != 2 {
		t.Errorf("burst being drained: %+v", b)
	}

	// The warning: once after growing for a whole window, not again in the
	// same episode, "recovered" once it shrinks, again in a new episode.
	w := &backlogWindow{span: 3 * time.Second}
	ws := func(sec float64, wal, confirmed int64) (bool, bool) {
		w.add(sample(sec, wal, confirmed, true))
		return w.warning()
	}
	var warns, recovers int
	step := func(sec float64, wal, confirmed int64) {
		warn, rec := ws(sec, wal, confirmed)
		if warn {
			warns++
		}
		if rec {
			recovers++
		}
	}
	for i := range 20 { // 10 s of growth: 4 MB/s of WAL, 2 applied
		s := float64(i) / 2
		step(s, 100*mb+int64(s*4*mb), 50*mb+int64(s*2*mb))
		if s < 3.5 && warns > 0 {
			t.Fatalf("warned after %v s of growth, window 3 s", s)
		}
	}
	if warns != 1 || recovers != 0 {
		t.Fatalf("growth for 10 s: %d warnings, %d recoveries; want 1, 0", warns, recovers)
	}
	for i := range 10 { // the stream catches up: 4 MB/s of WAL, 10 applied
		s := 10 + float64(i)/2
		step(s, 140*mb+int64((s-10)*4*mb), 70*mb+int64((s-10)*10*mb))
	}
	if warns != 1 || recovers != 1 {
		t.Fatalf("after shrinking: %d warnings, %d recoveries; want 1, 1", warns, recovers)
	}
	for i := range 20 { // a new episode
		s := 15 + float64(i)/2
		step(s, 200*mb+int64((s-15)*4*mb), 150*mb)
	}
	if warns != 2 {
		t.Fatalf("second episode: %d warnings, want 2", warns)
	}
}

// A logical migration whose stream has a backlog (nothing streams, the
// application writes): status says it grows and will never catch up at this
// rate; cutover refuses with exit 2, naming the backlog and the bound, and
// changes nothing; once `sync --watch` has drained it, status says caught
// up and the same cutover proceeds.
func TestLogicalBacklogRefusesCutover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := logicalName("bk")
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(3000, false))
	env := syncTestEnv(t, dsn)
	coSync(t, env, logicalSpec(name, false)) // synced and verified; its streamer stopped

	// ~100k rows through the app name: tens of MB of WAL nobody applies.
	pgtest.Exec(t, dsn, `INSERT INTO orders (tenant, email, amount, note) SELECT g % 7, 'b' || g || '@x', g, 'n' FROM generate_series(1, 100000) g`)
	app := startSyncWorkloadOpt(t, dsn, "orders", false, true, 2, 41)
	rep, err := Status(ctx, env, name, StatusOptions{Sample: DefaultStatusSample})
	if errs := app.stop(); len(errs) > 0 {
		t.Fatalf("workload: %v", errs[0])
	}
	if err != nil {
		t.Fatal(err)
	}
	const bound = 8 << 20
	b := rep.Migrations[0].StreamBacklog
	if b == nil || b.Bytes <= bound || b.Trend != TrendGrowing || !b.Never || b.ETASeconds != nil || b.Streaming ||
		b.WALBytesPerSec <= 0 || b.ApplyBytesPerSec != 0 || b.GrowthBytesPerSec <= 0 || b.Seconds == nil || *b.Seconds <= 0 {
		t.Fatalf("status backlog with nothing streaming: %+v", b)
	}
	t.Logf("backlog while nothing streams: %s", b.Summary())

	before := coCatalog(t, pool)
	events := syncCount(t, pool, `SELECT count(*) FROM greenswap.events WHERE migration = $1`, name)
	// A cutover process of its own (no samples yet): it reads twice
	// before refusing, so that it can say which way the backlog goes.
	var out coBuffer
	_, err = Cutover(ctx, syncTestEnv(t, dsn), name, CutoverOptions{MaxStreamBacklog: bound, SwapCommandOptions: SwapCommandOptions{Out: &out}})
	var be *BacklogError
	if exitcode.Of(err) != exitcode.BadInput || !errors.As(err, &be) {
		t.Fatalf("cutover with a %s backlog: %v (exit %d), want a BacklogError, exit 2", HumanBytes(b.Bytes), err, exitcode.Of(err))
	}
	msg := err.Error()
	for _, want := range []string{name, "--max-stream-backlog 8.0 MB", "greenswap sync -f FILE --watch", "never", "nothing was changed"} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal %q lacks %q", msg, want)
		}
	}
	if strings.Contains(msg, "\n") || be.Bound != bound || be.Backlog.Bytes <= bound {
		t.Errorf("refusal: %+v", be)
	}
	if d := coDiff(before, coCatalog(t, pool)); d != "" {
		t.Errorf("the refused cutover changed the catalog:\n%s", d)
	}
	m, err := state.Get(ctx, pool, name)
	if err != nil {
		t.Fatal(err)
	}
	if m.State != state.Synced || !slotExists(t, env, "gs_"+name) || out.String() != "" ||
		syncCount(t, pool, `SELECT count(*) FROM greenswap.events WHERE migration = $1`, name) != events {
		t.Fatalf("after the refusal: state %s, slot %v, output %q, events %d → %d", m.State, slotExists(t, env, "gs_"+name), out.String(),
			events, syncCount(t, pool, `SELECT count(*) FROM greenswap.events WHERE migration = $1`, name))
	}
	mig, err := env.LoadMigration(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if retired, err := streamRetired(ctx, env, mig.Names); err != nil || retired {
		t.Fatalf("the refused cutover retired the stream (%v, %v)", retired, err)
	}

	// sync --watch drains it: status follows it down to caught up.
	stopWatch, _ := startWatch(t, env, name)
	logicalWait(t, env, name)
	var last *StreamBacklog
	syncWaitFor(t, 60*time.Second, "status to say caught up", func() bool {
		rep, err := Status(ctx, env, name, StatusOptions{Sample: 1100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		last = rep.Migrations[0].StreamBacklog
		return last != nil && last.Trend == TrendCaughtUp && last.Streaming && last.ETASeconds != nil && *last.ETASeconds == 0
	})
	t.Logf("backlog once drained: %s", last.Summary())
	res, err := Cutover(ctx, env, name, CutoverOptions{MaxStreamBacklog: bound})
	if err != nil {
		t.Fatalf("cutover once caught up: %v", err)
	}
	if err := stopWatch(); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if res.State != state.CutOver || slotExists(t, env, "gs_"+name) {
		t.Fatalf("cutover result %+v, slot left %v", res, slotExists(t, env, "gs_"+name))
	}
	if d := syncOrdersDiff(t, pool, name); d != 0 {
		t.Fatalf("green differs from blue in %d rows", d)
	}
	// Retired: status and progress no longer report a backlog.
	rep, err = Status(ctx, env, name, StatusOptions{Sample: 100 * time.Millisecond})
	if err != nil || rep.Migrations[0].StreamBacklog != nil {
		t.Fatalf("status after cutover: %v, backlog %+v", err, rep.Migrations[0].StreamBacklog)
	}
}

// A stream that cannot keep up (its apply is held off: a session holds a
// lock on green that the apply's writes need) while `sync --watch` runs:
// the watch logs one warning once the backlog has grown for a whole
// window, none more while it keeps growing, and says so once it keeps up
// again.
func TestLogicalBacklogWarnsOncePerEpisode(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := logicalName("bw")
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(2000, false))
	var logs coBuffer
	env, err := Connect(ctx, dsn, zerolog.New(&logs).Level(zerolog.InfoLevel))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Close)
	tuneForTests(env)
	env.BacklogWindow = 3 * time.Second
	if _, err := Sync(ctx, env, syncSpec(t, logicalSpec(name, false)), SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	stopWatch, last := startWatch(t, env, name)
	logicalWait(t, env, name)
	warnings := func() int { return strings.Count(logs.String(), "the logical stream cannot keep up") }

	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	coExec(t, tx, `LOCK TABLE `+fmt.Sprintf("gs_%s_green.orders", name)+` IN EXCLUSIVE MODE`)
	app := startSyncWorkload(t, dsn, "orders", false, 2, 43)
	syncWaitFor(t, 20*time.Second, "the warning", func() bool { return warnings() > 0 })
	if p := last(); p.StreamBacklog == nil || p.StreamBacklog.Trend != TrendGrowing || p.StreamBacklog.GrowingSince == nil {
		t.Errorf("progress while held off: %+v", p.StreamBacklog)
	}
	time.Sleep(2 * time.Second) // still growing: no second warning
	if n := warnings(); n != 1 {
		t.Fatalf("%d warnings in one episode, want 1:\n%s", n, logs.String())
	}
	line := logs.String()[strings.Index(logs.String(), "the logical stream cannot keep up"):]
	line = line[:strings.IndexByte(line, '\n')]
	t.Logf("warning: %s", line)
	for _, want := range []string{"of WAL", "--max-stream-backlog", "reduce the write load"} {
		if !strings.Contains(line, want) {
			t.Errorf("warning %q lacks %q", line, want)
		}
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if errs := app.stop(); len(errs) > 0 {
		t.Fatalf("workload: %v", errs[0])
	}
	syncWaitFor(t, 60*time.Second, "the stream to keep up again", func() bool {
		return strings.Contains(logs.String(), "the logical stream keeps up again")
	})
	if n := warnings(); n != 1 {
		t.Fatalf("%d warnings, want 1", n)
	}
	if err := stopWatch(); err != nil {
		t.Fatal(err)
	}
	if d := syncOrdersDiff(t, pool, name); d != 0 {
		t.Fatalf("green differs from blue in %d rows", d)
	}
}
