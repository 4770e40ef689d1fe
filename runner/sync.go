package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/guard"
	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/logx"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	gssync "github.com/greenswap/greenswap/sync"
	"github.com/greenswap/greenswap/trigger"
)

// Sync phases, in order. The migrations row's phase column names the next
// one to run, and is written in the same transaction as the work of the
// phase before it, so a re-run resumes exactly there. Adopt and green
// creation are also recognised from the catalog.
const (
	PhaseAdopt         = "adopt"
	PhaseCreateGreen   = "create-green"
	PhaseBackfill      = "backfill"
	PhaseIndexes       = "indexes"
	PhaseAnalyze       = "analyze"
	PhaseEnableReverse = "enable-reverse"
	PhaseNone          = "" // synced: nothing left to do
)

var syncPhases = []string{PhaseAdopt, PhaseCreateGreen, PhaseBackfill, PhaseIndexes, PhaseSettle, PhaseAnalyze, PhaseEnableReverse}

// phaseAfter reports whether the recorded phase p is later than phase.
func phaseAfter(p, phase string) bool {
	return slices.Index(syncPhases, p) > slices.Index(syncPhases, phase)
}

// SyncOptions tune one sync run. Zero values fall back to the spec's sync:
// section, then to the shadow.Default* values.
type SyncOptions struct {
	BatchSize       int               // > 0: every batch has this many rows (no adaptive sizing)
	TargetBatchTime time.Duration     // adaptive sizing aims each batch at this
	MaxReplicaLag   time.Duration     // hold the backfill while a standby lags more
	LockTimeout     time.Duration     // per attempt, for every lock-taking step
	NiceRatio       float64           // > 0: after each batch, sleep this many times its duration
	Workers         int               // > 0: sessions copying key ranges at once (over sync.workers)
	Guard           spec.GuardOptions // the circuit breaker's bounds, over the spec's guard: (sync_guard.go)

	// Progress, when set, is called every ProgressEvery (default 1s) while
	// Sync runs, and once more before it returns, with the figures the
	// migrations row holds (what `greenswap status` shows).
	Progress      func(SyncProgress)
	ProgressEvery time.Duration

	// SkipSettle leaves the freshly filled green to autovacuum instead of
	// vacuuming it (PhaseSettle) before synced: synced sooner, and the
	// application pays for the vacuum, the hint bits and the visibility
	// map after it (the bench's aftermath rows measure both).
	SkipSettle bool

	// KeepStreaming (logical mode): the sync's streamer is not stopped
	// once caught up after synced but handed to the WatchSync that the
	// caller runs next on the same Env (sync --watch). A new streamer would
	// start a new walsender, which decodes the slot's WAL again from its
	// restart position, up to the copy's WAL while the server had no
	// reason to move it on: seconds to tens of seconds in which green falls
	// behind, then a backlog applied under the application's writes.
	// Env.Close stops a streamer nobody took over.
	KeepStreaming bool

	// StopAfterSetup makes Sync return once blue is adopted and green exists
	// with its sync triggers on, before the backfill (for tests and tools).
	StopAfterSetup bool
}

// SyncStats is what one Sync call did; the bench reads it.
type SyncStats struct {
	Migration     string
	State         state.State
	AlreadySynced bool          // nothing was left to do
	Rows          int64         // rows the backfill inserted into green in this run
	RowsInAll     int64         // rows copied over every run of the migration (the state row)
	Scanned       int64         // rows of blue the backfill read in this run
	Batches       int           // backfill batches committed in this run
	Retries       int           // batches rolled back on a lock timeout or deadlock and retried
	Redone        int           // plain batches redone with ON CONFLICT (a key was in green already)
	Backfill      time.Duration // wall time of the backfill in this run (throttling included)
	Total         time.Duration // wall time of Sync
	RowsPerSec    float64       // Rows / Backfill

	Stream *StreamStats // logical mode: the stream's figures (feed_logical.go)
}

// syncRun is one invocation of Sync.
type syncRun struct {
	env   *Env
	opts  SyncOptions
	log   zerolog.Logger
	spec  *spec.Spec
	names shadow.Names
	row   *state.Migration
	phase string
	lock  shadow.LockOptions
	build *Build
	stats SyncStats

	feed changeFeed     // carries blue → green: trigger or logical (feed.go)
	brk  *guard.Breaker // the circuit breaker, made on first use (sync_guard.go)

	members []*member // a migration of several tables (sync_tables.go); nil for one
}

// Sync takes a migration from planned (or wherever an earlier run stopped)
// to synced in trigger mode: adopt, create green with the sync triggers,
// backfill, build target.indexes, analyze, and switch on the green → blue
// direction. It holds the migration's advisory lock throughout and records
// an event per step. Interrupted (ctx cancelled), it stops after the batch
// in flight with everything checkpointed; the error maps to exit 130 and a
// re-run resumes.
func Sync(ctx context.Context, env *Env, spec *spec.Spec, opts SyncOptions) (*SyncStats, error) {
	start := time.Now()
	spec, err := syncAlterSpec(ctx, env, spec) // alter: → the derived target (runner/plan_alter.go)
	if err != nil {
		return nil, err
	}
	r := &syncRun{env: env, opts: opts, log: env.Log.With().Str("migration", spec.Name).Logger()}
	r.stats.Migration = spec.Name
	lock, err := env.Lock(ctx, spec.Name)
	if err != nil {
		return nil, err
	}
	defer lock.Release(context.WithoutCancel(ctx))
	if err := gateNewSync(ctx, env, spec); err != nil {
		return nil, interrupted(ctx, err)
	}
	// A migration under way (no plan gate): its privileges, before Ensure
	// re-applies the state schema's DDL (a bare 42501 otherwise).
	if m, err := env.LoadMigration(ctx, spec.Name); err == nil {
		if err := checkCommandPrivileges(ctx, env, m, shadow.StepSync); err != nil {
			return nil, err
		}
	}
	if err := state.Ensure(ctx, env.Pool); err != nil {
		return nil, interrupted(ctx, err)
	}
	if err := r.open(ctx, spec); err != nil {
		return nil, interrupted(ctx, err)
	}
	r.stats.State = r.row.State
	if r.row.State == state.Synced {
		r.log.Info().Msg("already synced: the sync triggers keep blue and green equal")
		r.stats.AlreadySynced = true
		r.stats.Total = time.Since(start)
		r.report(ctx)
		return &r.stats, nil
	}
	r.clearStaleGuardReason(ctx) // sync_guard.go
	stop := r.startProgress(ctx)
	defer stop()
	r.feed = feedFor(env, r.spec.Mode)
	defer r.feed.stop(r) // every way out stops what the feed started
	if r.spec.MultiTable() || r.spec.IsSplit() {
		run := r.syncTables
		if r.spec.IsSplit() {
			run = r.syncSplit // runner/sync_split.go
		}
		err := run(ctx)
		r.stats.Total = time.Since(start)
		stop()
		r.report(context.WithoutCancel(ctx))
		if err != nil {
			return &r.stats, interrupted(ctx, err)
		}
		r.readTotals(ctx)
		return &r.stats, nil
	}
	// Each phase but the backfill records its success in the transaction
	// that does its work (inTx); runPhase records every failure.
	phases := []struct {
		name string
		fn   func(context.Context, *phaseEvent) error
	}{
		{PhaseAdopt, inTx(r.adopt)},
		{PhaseCreateGreen, inTx(r.createGreen)},
		{PhaseCreateSlot, inTx(func(ctx context.Context) error { return r.feed.start(ctx, r) })},
		{PhaseBackfill, r.backfill},
		{PhaseIndexes, inTx(r.indexes)},
		{PhaseSettle, inTx(func(ctx context.Context) error { return r.settle(ctx, []shadow.Names{r.names}) })},
		{PhaseAnalyze, inTx(r.analyze)},
		{PhaseEnableReverse, inTx(r.enableReverse)},
		{PhaseStreamCatchUp, inTx(func(ctx context.Context) error { return r.feed.catchUp(ctx, r) })},
	}
	for _, ph := range phases {
		if opts.StopAfterSetup && ph.name == PhaseBackfill {
			break
		}
		if err := runPhase(ctx, env, r.log, r.spec.Name, ph.name, ph.fn); err != nil {
			stop()
			r.report(context.WithoutCancel(ctx))
			return &r.stats, interrupted(ctx, err)
		}
	}
	r.stats.Total = time.Since(start)
	stop()
	r.report(ctx)
	r.readTotals(ctx)
	return &r.stats, nil
}

// readTotals fills what the migration's row says over every run: a sync
// that resumed after the copy copied nothing itself.
func (r *syncRun) readTotals(ctx context.Context) {
	if row, err := state.Get(ctx, r.env.Pool, r.spec.Name); err == nil {
		r.stats.RowsInAll = row.RowsCopied
	}
}

// inTx adapts a sync phase that records its own success, in the
// transaction that does its work, to runPhase.
func inTx(fn func(context.Context) error) func(context.Context, *phaseEvent) error {
	return func(ctx context.Context, ev *phaseEvent) error {
		ev.Recorded = true
		return fn(ctx)
	}
}

// interrupted makes an error caused by ctx's cancellation exit 130.
func interrupted(ctx context.Context, err error) error {
	if err == nil || ctx.Err() == nil || exitcode.Of(err) == exitcode.Interrupted {
		return err
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return exitcode.With(exitcode.Interrupted, fmt.Errorf("%w (interrupted)", err))
	}
	return err
}

// open finds or creates the migration's row and settles which spec rules:
// a migration already under way keeps the spec it started with, and a file
// that differs from it (sync: options aside) is refused.
func (r *syncRun) open(ctx context.Context, sp *spec.Spec) error {
	pool := r.env.Pool
	r.spec = sp
	r.names = namesOf(sp)
	row, err := state.Get(ctx, pool, sp.Name)
	switch {
	case errors.Is(err, state.ErrNotFound):
		row = nil
	case err != nil:
		return err
	}
	if row == nil || row.State == state.RolledBack {
		if row, err = state.Create(ctx, pool, sp.Name, appTableOf(sp), string(sp.Mode), sp); err != nil {
			return err
		}
		r.row, r.phase = row, PhaseAdopt
		return state.Record(ctx, pool, sp.Name, "create", "ok", 0, "", map[string]string{"file": sp.File})
	}
	var stored spec.Spec
	if err := json.Unmarshal(row.Spec, &stored); err != nil {
		return fmt.Errorf("decode the stored spec of %s: %w", sp.Name, err)
	}
	diff := specDiff(&stored, sp)
	switch row.State {
	case state.Planned:
		// Nothing is built yet: the file is the spec.
		if len(diff) > 0 {
			js, err := json.Marshal(sp)
			if err != nil {
				return err
			}
			if err := state.SetSpec(ctx, pool, sp.Name, js, appTableOf(sp)); err != nil {
				return err
			}
		}
	case state.Syncing, state.Synced:
		if len(diff) > 0 {
			return exitcode.Errorf(exitcode.BadInput,
				"%s: differs from the spec migration %s was started with (%s); sync resumes with the stored spec only: "+
					"run it with the original file, or roll it back first (`greenswap rollback %s`) and sync again",
				fileOr(sp.File), sp.Name, strings.Join(diff, ", "), sp.Name)
		}
		// The stored spec rules; the file's lines still point at the same fields.
		stored.File, stored.Lines, stored.Sync, stored.Guard = sp.File, sp.Lines, sp.Sync, sp.Guard
		r.spec = &stored
		r.names = namesOf(&stored)
	default:
		return exitcode.Errorf(exitcode.BadInput, "migration %s is %s: there is nothing to sync (see `greenswap status %s`)",
			sp.Name, row.State, sp.Name)
	}
	r.row = row
	r.phase = row.Phase
	if r.phase == PhaseNone && row.State != state.Synced {
		r.phase = PhaseAdopt
	}
	r.log.Info().Str("state", string(row.State)).Str("phase", r.phase).Msg("resuming migration")
	return nil
}

func fileOr(f string) string {
	if f == "" {
		return "spec"
	}
	return f
}

// specDiff names the fields in which two specs differ, sync options aside.
func specDiff(a, b *spec.Spec) []string {
	var d []string
	if a.Name != b.Name {
		d = append(d, "name")
	}
	if a.AppTable() != b.AppTable() {
		d = append(d, "table")
	}
	mode := func(m spec.Mode) spec.Mode {
		if m == "" {
			return spec.ModeTrigger
		}
		return m
	}
	if mode(a.Mode) != mode(b.Mode) {
		d = append(d, "mode")
	}
	if !slices.Equal(a.Key, b.Key) {
		d = append(d, "key")
	}
	if strings.TrimSpace(a.Target.DDL) != strings.TrimSpace(b.Target.DDL) {
		d = append(d, "target.ddl")
	}
	if !slices.Equal(a.Target.Indexes, b.Target.Indexes) {
		d = append(d, "target.indexes")
	}
	if !slices.Equal(a.Target.Partitions, b.Target.Partitions) {
		d = append(d, "target.partitions")
	}
	if !maps.Equal(a.Forward, b.Forward) {
		d = append(d, "forward")
	}
	if !maps.Equal(a.Reverse, b.Reverse) {
		d = append(d, "reverse")
	}
	if !reflect.DeepEqual(a.Tables, b.Tables) {
		d = append(d, "tables")
	}
	return d
}

// lockOptions: flags over the spec over the defaults.
func (r *syncRun) lockOptions() shadow.LockOptions {
	lo := shadow.DefaultLockOptions()
	if r.spec.Sync.LockTimeout.Duration > 0 {
		lo.Timeout = r.spec.Sync.LockTimeout.Duration
	}
	if r.opts.LockTimeout > 0 {
		lo.Timeout = r.opts.LockTimeout
	}
	return lo
}

func (r *syncRun) onRetry(step string) func(int, []shadow.Blocker, time.Duration) {
	return lockRetry(r.log, step, r.lockOptions().Timeout, nil)
}

// setPhase records the next phase in q (the phase's own transaction).
func (r *syncRun) setPhase(ctx context.Context, q db.Querier, phase string) error {
	if err := state.SetPhase(ctx, q, r.spec.Name, phase); err != nil {
		return err
	}
	r.phase = phase
	return nil
}

// catalogState says how far adopt and green creation got, from the catalog.
type catalogState struct {
	blueSchema bool
	blue       bool   // the blue table exists in its version schema
	appKind    string // relkind of the app name ("" when missing)
	green      bool
}

const catalogStateSQL = `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
	pg_catalog.to_regclass($2) IS NOT NULL,
	coalesce((SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	          WHERE n.nspname = $3 AND c.relname = $4), ''),
	pg_catalog.to_regclass($5) IS NOT NULL`

func (r *syncRun) catalog(ctx context.Context) (catalogState, error) {
	n := r.names
	var c catalogState
	err := r.env.Pool.QueryRow(ctx, catalogStateSQL, n.BlueSchema, db.Ident(n.Blue.Schema, n.Blue.Name),
		n.App.Schema, n.App.Name, db.Ident(n.Green.Schema, n.Green.Name)).Scan(&c.blueSchema, &c.blue, &c.appKind, &c.green)
	return c, err
}

func (c catalogState) adopted() bool { return c.blue && c.appKind == "v" }

func stepSQL(steps ...shadow.Step) string {
	var all []string
	for _, s := range steps {
		all = append(all, s.SQL...)
	}
	return strings.Join(all, ";\n")
}

// adopt moves blue to its version schema and puts the view under the app
// name, in one transaction with the state change; skipped when the catalog
// shows it done.
func (r *syncRun) adopt(ctx context.Context) error {
	c, err := r.catalog(ctx)
	if err != nil {
		return err
	}
	if c.adopted() {
		return r.adoptedAlready(ctx)
	}
	if c.blue || c.green {
		return exitcode.Errorf(exitcode.Failed, "%s is not a view but %s exists: the migration's objects are inconsistent; "+
			"inspect them, or roll the migration back", r.names.App, r.names.Blue)
	}
	if c.appKind != "" && c.appKind != "r" && c.appKind != "p" {
		return r.spec.Errorf("table", "name a table", "%s is not a table (relkind %s)", r.names.App, c.appKind)
	}
	r.log.Info().Str("table", r.names.App.String()).Str("schema", r.names.BlueSchema).Msg("adopting the table")
	t0 := time.Now()
	var step shadow.Step
	app := db.Ident(r.names.App.Schema, r.names.App.Name)
	err = shadow.RunWithLockRetry(ctx, r.env.Pool, "adopt", r.lockOptions(), r.onRetry("adopt"), func(tx pgx.Tx) error {
		// Lock first, read the catalog under the lock: what adopt copies
		// (columns, grants, comments) cannot change before it commits.
		if _, err := tx.Exec(ctx, "LOCK TABLE "+app+" IN ACCESS EXCLUSIVE MODE"); err != nil {
			if db.SQLState(err) == db.UndefinedTable {
				return r.spec.Errorf("table", "check the name and the database you are connected to", "table %s does not exist", r.names.App)
			}
			return err
		}
		var err error
		if step, err = adoptTx(ctx, tx, r.spec, r.names, r.env.ServerMajor); err != nil {
			return err
		}
		if err := state.Transition(ctx, tx, r.spec.Name, state.Syncing); err != nil {
			return err
		}
		if err := state.SetPhase(ctx, tx, r.spec.Name, PhaseCreateGreen); err != nil {
			return err
		}
		if err := recordFingerprint(ctx, tx, r.spec, nil); err != nil {
			return err
		}
		return state.Record(ctx, tx, r.spec.Name, "adopt", "ok", time.Since(t0), stepSQL(step), nil)
	})
	if err != nil {
		return err
	}
	r.phase, r.row.State = PhaseCreateGreen, state.Syncing
	r.log.Info().Float64("took_ms", logx.Ms(time.Since(t0))).Msgf("adopted: %s is now a view over %s", r.names.App, r.names.Blue)
	return nil
}

// adoptedAlready is adopt when the catalog shows it done (a crash between
// adopt's commit and the next phase, or a state row behind the catalog):
// the state catches up, nothing else runs.
func (r *syncRun) adoptedAlready(ctx context.Context) error {
	if r.row.State != state.Planned && r.phase != PhaseAdopt {
		return nil
	}
	tx, err := r.env.Pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if err := state.Transition(ctx, tx, r.spec.Name, state.Syncing); err != nil {
		return err
	}
	if err := r.setPhase(ctx, tx, PhaseCreateGreen); err != nil {
		return err
	}
	r.row.State = state.Syncing
	return tx.Commit(ctx)
}

// createGreen creates green from target.ddl with the sync triggers, in one
// transaction that holds blue's writers off for milliseconds; or, when green
// exists, reads the build back.
func (r *syncRun) createGreen(ctx context.Context) error {
	c, err := r.catalog(ctx)
	if err != nil {
		return err
	}
	if c.green {
		if r.build, err = loadBuild(ctx, r.env.Pool, r.spec, r.names); err != nil {
			return err
		}
		if r.phase == PhaseCreateGreen {
			// Green exists but the phase was not moved on: only possible if
			// it was made by hand; carry on from the backfill.
			if err := state.SetRowsEstimate(ctx, r.env.Pool, r.spec.Name, PhaseBackfill, r.build.Blue.RowEstimate); err != nil {
				return err
			}
			r.phase = PhaseBackfill
			return nil
		}
		return r.checkGreen()
	}
	if !c.adopted() {
		return exitcode.Errorf(exitcode.Failed, "%s is not adopted yet; re-run sync", r.names.App)
	}
	t0 := time.Now()
	blue := db.Ident(r.names.Blue.Schema, r.names.Blue.Name)
	err = shadow.RunWithLockRetry(ctx, r.env.Pool, "create-green", r.lockOptions(), r.onRetry("create-green"), func(tx pgx.Tx) error {
		// The lock CREATE TRIGGER needs, taken first so a timeout is a
		// retryable lock error and the catalog is read under it.
		if _, err := tx.Exec(ctx, "LOCK TABLE "+blue+" IN SHARE ROW EXCLUSIVE MODE"); err != nil {
			return err
		}
		b, err := createGreenTx(ctx, tx, r.spec, r.names)
		if err != nil {
			return err
		}
		r.build = b
		if err := state.StartBackfill(ctx, tx, r.spec.Name, PhaseBackfill, b.Blue.RowEstimate, false); err != nil {
			return err
		}
		if err := recordFingerprintOf(ctx, tx, r.spec, "blue", "green"); err != nil {
			return err
		}
		return state.Record(ctx, tx, r.spec.Name, "create-green", "ok", time.Since(t0), stepSQL(b.Steps...), nil)
	})
	if err != nil {
		return err
	}
	r.phase = PhaseBackfill
	r.row.RowsEstimate, r.row.RowsCopied, r.row.Cursor = r.build.Blue.RowEstimate, 0, nil
	r.log.Info().Float64("took_ms", logx.Ms(time.Since(t0))).Msgf("created %s; sync triggers on (blue → green)", r.names.Green)
	return r.checkGreen()
}

// checkGreen refuses, before the backfill, what the index phase could not
// build: on a partitioned green every target.indexes statement needs a name,
// because the index of each partition is named after it (the spec loader
// says so too; a spec stored by an older greenswap was not checked).
func (r *syncRun) checkGreen() error {
	if r.build.Green.Kind != "p" {
		return nil
	}
	for i, src := range r.spec.Target.Indexes {
		if st, err := spec.ParseIndexStmt(src); err == nil && st.Name == "" {
			f := fmt.Sprintf("target.indexes[%d]", i)
			return r.spec.Errorf(f, "write CREATE INDEX <name> ON ...: greenswap names each partition's index after it",
				"green is partitioned: every index needs a name")
		}
	}
	return nil
}

// backfill copies blue into green from the recorded cursor.
func (r *syncRun) backfill(ctx context.Context, ev *phaseEvent) error {
	if phaseAfter(r.phase, PhaseBackfill) {
		ev.Recorded = true // nothing to do, nothing to record
		return nil
	}
	// The cursor column holds one cursor (a JSON array, as every
	// greenswap before parallel copies wrote it) or a parallel copy's
	// ranges: either resumes where it stopped.
	cursor, ranges, err := gssync.ParseCursor(r.row.Cursor)
	if err != nil {
		return err
	}
	bo := r.backfillOptions(r.row.BatchSize)
	bo.Workers = r.workers()
	name := r.spec.Name
	bf := r.backfiller(ctx, r.names, r.build, bo, r.row.RowsCopied, func(ctx context.Context, tx pgx.Tx, cp gssync.Checkpoint) error {
		if cp.Part != nil {
			return state.SetRangeCheckpoint(ctx, tx, name, cp.Part.Index, cp.Part.Range, cp.Added, cp.BatchSize, cp.RowsPerSec)
		}
		bc := state.BackfillCheckpoint{Cursor: cp.Cursor, RowsCopied: cp.RowsCopied,
			BatchSize: cp.BatchSize, RowsPerSec: cp.RowsPerSec, Done: cp.Done, Next: PhaseIndexes}
		if cp.Ranges != nil {
			bc.Ranges = cp.Ranges
		}
		return state.SetCheckpoint(ctx, tx, name, bc)
	})
	keyCols, err := bf.KeyColumns()
	if err != nil {
		return err
	}
	r.log.Info().Strs("key", keyCols).Strs("cursor", cursor).Int("ranges", len(ranges)).Int64("rows_estimate", r.row.RowsEstimate).
		Int("batch_size", bo.BatchSize).Bool("fixed", bo.Fixed).Float64("nice_ratio", bo.NiceRatio).Int("workers", bo.Workers).Msg("backfill")
	res, err := bf.RunRanges(ctx, cursor, ranges)
	r.stats.Rows, r.stats.Scanned, r.stats.Batches, r.stats.Retries, r.stats.Redone, r.stats.Backfill =
		res.Rows, res.Scanned, res.Batches, res.Retries, res.Redone, res.Duration
	if s := res.Duration.Seconds(); s > 0 {
		r.stats.RowsPerSec = float64(res.Rows) / s
	}
	ev.Took = res.Duration
	ev.Detail = map[string]any{"rows": res.Rows, "scanned": res.Scanned, "batches": res.Batches, "retries": res.Retries, "redone": res.Redone,
		"rows_per_sec": r.stats.RowsPerSec, "from": cursor, "to": res.Cursor, "done": res.Done, "workers": bo.Workers, "ranges": len(res.Ranges)}
	if err != nil {
		return err
	}
	r.phase = PhaseIndexes
	r.log.Info().Int64("rows", res.Rows).Int("batches", res.Batches).Float64("took_ms", logx.Ms(res.Duration)).
		Float64("rows_per_sec", r.stats.RowsPerSec).Msg("backfill done")
	return nil
}

// workers is how many sessions copy blue's key ranges at once: the flag
// over sync.workers over spec.DefaultWorkers, and never more than half the
// pool (each batch's session, plus its lock-waiter watch and the
// throttles' queries, comes from it).
func (r *syncRun) workers() int {
	w := r.spec.Sync.WithDefaults().Workers
	if r.opts.Workers > 0 {
		w = r.opts.Workers
	}
	return max(1, min(w, int(r.env.Pool.Config().MaxConns)/2))
}

// backfillOptions: flags over the spec over the defaults; batchSize > 0
// is the size the last run had reached.
func (r *syncRun) backfillOptions(batchSize int) gssync.Options {
	so := r.spec.Sync.WithDefaults()
	bo := gssync.Options{
		BatchSize:       so.BatchSize,
		MinBatchSize:    so.MinBatchSize,
		MaxBatchSize:    so.MaxBatchSize,
		TargetBatchTime: so.TargetBatchTime.Duration,
		LockTimeout:     r.lockOptions().Timeout,
	}
	if batchSize > 0 {
		bo.BatchSize = batchSize // resume at the size the last run had reached
	}
	if r.opts.BatchSize > 0 {
		bo.BatchSize, bo.Fixed = r.opts.BatchSize, true
	}
	if r.opts.TargetBatchTime > 0 {
		bo.TargetBatchTime = r.opts.TargetBatchTime
	}
	bo.NiceRatio = so.NiceRatio
	if r.opts.NiceRatio > 0 {
		bo.NiceRatio = r.opts.NiceRatio
	}
	return bo
}

// backfiller is the copy of one table (names, build) with the migration's
// throttles (pause, replica lag); checkpoint records each batch in its
// own transaction.
func (r *syncRun) backfiller(ctx context.Context, n shadow.Names, b *Build, bo gssync.Options, startRows int64,
	checkpoint func(context.Context, pgx.Tx, gssync.Checkpoint) error) *gssync.Backfiller {
	return &gssync.Backfiller{
		Pool:       r.env.Pool,
		Names:      n,
		Mapping:    b.Mapping,
		Blue:       b.Blue,
		Options:    bo,
		StartRows:  startRows,
		Log:        r.log,
		Throttles:  r.throttles(ctx),
		Checkpoint: checkpoint,
		OnThrottle: r.recordThrottle(ctx),
	}
}

// throttles are what holds the migration's own work on the database (the
// backfill's batches, the settle's vacuums): pause, replica lag and the
// circuit breaker.
func (r *syncRun) throttles(ctx context.Context) []gssync.Throttle {
	maxLag := r.spec.Sync.WithDefaults().MaxReplicaLag.Duration
	if r.opts.MaxReplicaLag > 0 {
		maxLag = r.opts.MaxReplicaLag
	}
	return []gssync.Throttle{
		pausedThrottle(r.env.Pool, r.spec.Name),
		&gssync.ReplicaLag{Q: r.env.Pool, Max: maxLag, Warn: func(msg string) { r.log.Warn().Msg(msg) }},
		r.breaker(ctx), // sync_guard.go
	}
}

// recordThrottle writes the reason the work is held ("" = running) into the
// migration's row, where status shows it.
func (r *syncRun) recordThrottle(ctx context.Context) func(string) {
	return func(reason string) {
		if err := state.SetThrottle(context.WithoutCancel(ctx), r.env.Pool, r.spec.Name, reason); err != nil {
			r.log.Warn().Err(err).Msg("record the throttle reason")
		}
	}
}

// recordIndexEvent writes an index build's event and, for a finished
// statement, the index it built into the state row (a resumed sync skips
// it: state.AddBuiltIndex), in one transaction.
func (r *syncRun) recordIndexEvent(ctx context.Context, ev gssync.IndexEvent) error {
	ctx = context.WithoutCancel(ctx)
	tx, err := r.env.Pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if err := state.Record(ctx, tx, r.spec.Name, ev.Action+"-index", "ok", ev.Took, ev.SQL,
		map[string]any{"statement": ev.Statement, "index": ev.Index}); err != nil {
		return err
	}
	if ev.Action == "build" && ev.Index != "" {
		if err := state.AddBuiltIndex(ctx, tx, r.spec.Name, ev.Statement, ev.Index); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// indexes builds target.indexes on green with CREATE INDEX CONCURRENTLY
// (on a partitioned green: ON ONLY the parent, CONCURRENTLY per partition,
// attached; see gssync.IndexBuild).
func (r *syncRun) indexes(ctx context.Context) error {
	if phaseAfter(r.phase, PhaseIndexes) {
		return nil
	}
	if len(r.spec.Target.Indexes) > 0 {
		// Read again: the row r.row holds was loaded before this run's builds.
		row, err := state.Get(ctx, r.env.Pool, r.spec.Name)
		if err != nil {
			return err
		}
		built, err := row.BuiltIndexes()
		if err != nil {
			return err
		}
		ib := &gssync.IndexBuild{
			ConnConfig: r.env.ConnConfig,
			Migration:  r.spec.Name,
			Names:      r.names,
			Statements: r.spec.Target.Indexes,
			Built:      built,
			Lock:       r.lockOptions(), // ON ONLY and ATTACH PARTITION on a partitioned green
			// The copy's workers are done by now: the build may sort on as
			// many processes as the copy used.
			Participants: r.workers(),
			Log:          r.log,
			OnEvent:      r.recordIndexEvent,
		}
		if err := ib.Run(ctx); err != nil {
			return err
		}
	}
	return r.setPhase(ctx, r.env.Pool, PhaseSettle)
}

// analyze collects statistics on the freshly filled green.
func (r *syncRun) analyze(ctx context.Context) error {
	if phaseAfter(r.phase, PhaseAnalyze) {
		return nil
	}
	t0 := time.Now()
	sql, err := gssync.Analyze(ctx, r.env.Pool, r.names)
	if err != nil {
		return err
	}
	if err := state.Record(ctx, r.env.Pool, r.spec.Name, "analyze", "ok", time.Since(t0), sql, nil); err != nil {
		return err
	}
	if err := r.env.atSyncPoint(ctx, "analyzed"); err != nil {
		return err
	}
	return r.setPhase(ctx, r.env.Pool, PhaseEnableReverse)
}

// enableReverse switches on green → blue, for every table of the
// migration, and marks it synced, in one transaction (a bounded wait for
// the greens' locks, retried).
func (r *syncRun) enableReverse(ctx context.Context) error {
	t0 := time.Now()
	// Logical mode: synced once the stream has applied what committed
	// until now (the settle and analyze included), not with a backlog
	// the application's writes then compete with.
	drained, err := r.feed.drain(ctx, r)
	if err != nil {
		return err
	}
	var detail any
	if drained != nil {
		detail = drained
	}
	var sql []string
	if r.members == nil {
		sql = trigger.SetReverseSQL(r.names, true)
	}
	for _, m := range r.members {
		sql = append(sql, trigger.SetReverseSQL(m.names, true)...)
	}
	err = shadow.RunWithLockRetry(ctx, r.env.Pool, "enable-reverse", r.lockOptions(), r.onRetry("enable-reverse"), func(tx pgx.Tx) error {
		if r.members != nil {
			// Every green's lock first (ALTER TABLE … ENABLE TRIGGER takes
			// SHARE ROW EXCLUSIVE): not one table after another (lockAll).
			if err := r.lockAll(ctx, tx, "SHARE ROW EXCLUSIVE", func(m *member) spec.QualifiedName { return m.names.Green }); err != nil {
				return err
			}
		}
		for _, s := range sql {
			if _, err := tx.Exec(ctx, s); err != nil {
				return err
			}
		}
		if err := state.Transition(ctx, tx, r.spec.Name, state.Synced); err != nil {
			return err
		}
		if err := state.SetSynced(ctx, tx, r.spec.Name); err != nil {
			return err
		}
		// The index (and foreign-key) phases built on green since create-green
		// recorded green (every table's, for several).
		if err := recordGreenWork(ctx, tx, r.spec); err != nil {
			return err
		}
		if err := r.env.atSyncPoint(ctx, "synced"); err != nil {
			return err
		}
		return state.Record(ctx, tx, r.spec.Name, "synced", "ok", time.Since(t0), strings.Join(sql, ";\n"), detail)
	})
	if err != nil {
		return err
	}
	r.phase, r.row.State, r.stats.State = PhaseNone, state.Synced, state.Synced
	if r.members != nil {
		r.log.Info().Int("tables", len(r.members)).Msg("synced: blue and green are kept equal in both directions, for every table")
	} else {
		r.log.Info().Msg("synced: blue and green are kept equal in both directions")
	}
	return nil
}

// Pause holds a running (or the next) backfill of migration name within a
// second, from any session: it sets the migrations row's paused flag.
func Pause(ctx context.Context, env *Env, name string) error { return setPaused(ctx, env, name, true) }

// Resume lets a paused backfill continue.
func Resume(ctx context.Context, env *Env, name string) error {
	return setPaused(ctx, env, name, false)
}

func setPaused(ctx context.Context, env *Env, name string, paused bool) error {
	m, err := state.Get(ctx, env.Pool, name)
	if err != nil {
		return err
	}
	if m.State != state.Planned && m.State != state.Syncing {
		return exitcode.Errorf(exitcode.BadInput, "migration %s is %s: it has no backfill to pause or resume", name, m.State)
	}
	tx, err := env.Pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if err := state.SetPaused(ctx, tx, name, paused); err != nil {
		return err
	}
	step := "resume"
	if paused {
		step = "pause"
	}
	if err := state.Record(ctx, tx, name, step, "ok", 0, "", nil); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// pausedThrottle holds the backfill while the migration's paused flag is
// set (greenswap pause). The row is read at most every 250ms, so a pause
// takes effect within a second and costs no query per batch.
func pausedThrottle(q db.Querier, name string) gssync.Throttle {
	var at time.Time
	var reason string
	return gssync.ThrottleFunc(func(ctx context.Context) (string, error) {
		if time.Since(at) < 250*time.Millisecond {
			return reason, nil
		}
		m, err := state.Get(ctx, q, name)
		if err != nil {
			return "", err
		}
		at, reason = time.Now(), ""
		if m.Paused {
			reason = "paused (greenswap resume " + name + ")"
		}
		return reason, nil
	})
}
