// Package sync copies blue's existing rows into green (the keyed backfill),
// throttles itself, checkpoints its cursor, and builds green's secondary
// indexes once the copy is done. Changes made while it runs reach green
// through the sync triggers (package trigger). See README.md for the
// invariants. Import it as gssync where it meets the standard library's sync.
package sync

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	gosync "sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/logx"
	"github.com/greenswap/greenswap/internal/rate"
	"github.com/greenswap/greenswap/rowsql"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	"github.com/greenswap/greenswap/trigger"
)

// Cursor is the key of the last row the backfill has covered, one text value
// per key column in the order of blue's unique index on the key (see
// Backfiller.KeyColumns). Stored as a JSON array of strings; nil means "from
// the start". Values are the columns' text forms and are cast back to the
// column types in SQL, so they round-trip exactly.
type Cursor []string

// Options tune the batches. Zero fields take the shadow.Default* values.
type Options struct {
	BatchSize       int           // first batch size; with Fixed, every batch's
	Fixed           bool          // keep BatchSize (the --batch-size flag)
	MinBatchSize    int           // adaptive bounds
	MaxBatchSize    int           //
	TargetBatchTime time.Duration // adaptive sizing aims every batch transaction at this
	LockTimeout     time.Duration // upper bound on a batch's wait for one row lock
	// NiceRatio makes the copy yield: after each batch it sleeps this many
	// times the batch's duration (0.5: a third of the wall time idle). On a
	// server short of cores this is what gives the application its CPU
	// back; the copy takes (1+NiceRatio)× as long.
	NiceRatio float64
	// PollInterval is how often a held (throttled) backfill re-checks its
	// throttles; default 250ms, so `greenswap resume` acts within a second.
	PollInterval time.Duration
	// Workers is how many sessions copy key ranges at once (0 or 1: one
	// cursor, no split). See RunRanges.
	Workers int
	// RangeRows is the fewest rows (by blue's estimate) a range of a
	// parallel copy is cut to hold; default DefaultRangeRows. Fewer rows
	// than two ranges' worth left: the copy stays one cursor.
	RangeRows int64
}

func (o Options) withDefaults() Options {
	d := spec.SyncOptions{BatchSize: o.BatchSize, MinBatchSize: o.MinBatchSize, MaxBatchSize: o.MaxBatchSize}.WithDefaults()
	o.BatchSize, o.MinBatchSize, o.MaxBatchSize = d.BatchSize, d.MinBatchSize, d.MaxBatchSize
	if o.MaxBatchSize < o.MinBatchSize {
		o.MaxBatchSize = o.MinBatchSize
	}
	if !o.Fixed {
		o.BatchSize = min(max(o.BatchSize, o.MinBatchSize), o.MaxBatchSize)
	}
	if o.TargetBatchTime <= 0 {
		o.TargetBatchTime = spec.DefaultTargetBatchTime
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = spec.DefaultLockTimeout
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 250 * time.Millisecond
	}
	if o.RangeRows <= 0 {
		o.RangeRows = DefaultRangeRows
	}
	return o
}

// Checkpoint is the backfill's progress after one batch, handed to
// Backfiller.Checkpoint inside that batch's transaction.
type Checkpoint struct {
	Cursor     Cursor  // resume after this key; unchanged by the last batch
	RowsCopied int64   // rows inserted into green by the backfill, all runs together
	BatchSize  int     // the size of this batch
	RowsPerSec float64 // recent copy rate
	Done       bool    // this was the last batch: every row of blue is covered
	Added      int64   // rows this batch inserted into green

	// A parallel copy's checkpoints carry no Cursor. Ranges is the whole
	// split: recorded once before any worker copies (Done false), and
	// once more, every range done, with Done set (in a transaction of its
	// own, no batch). Part is one batch's: range Part.Index is now
	// Part.Range, and the migration's count of rows copied grows by Added
	// (workers commit in any order, so RowsCopied is only near: add Added
	// to the stored count rather than store RowsCopied).
	Ranges []Range
	Part   *RangeCheckpoint
}

// RangeCheckpoint is one range of a parallel copy after a batch.
type RangeCheckpoint struct {
	Index int
	Range Range
}

// Backfiller copies blue into green in key-ordered batches, each its own
// short transaction that also records the checkpoint, so a crash at any
// instant loses at most the batch in flight.
type Backfiller struct {
	Pool    *pgxpool.Pool
	Names   shadow.Names
	Mapping *shadow.Mapping
	Blue    *shadow.Table // blue as it is now (key column types, key index)
	Options Options
	// Where, for a split's green (shadow.SplitGreen.Where), is the blue
	// rows that green holds: the batches copy only those. Blue's rows are
	// then locked FOR SHARE whatever the key (a plain UPDATE can move a row
	// into or out of the green, so it must wait for the batch: trap 1).
	Where string

	// Throttles are asked before every batch; the first non-empty reason
	// holds the backfill until all of them say go.
	Throttles []Throttle
	// Checkpoint persists cp in tx, the batch's own transaction (required).
	Checkpoint func(ctx context.Context, tx pgx.Tx, cp Checkpoint) error
	// OnThrottle is told when the reason the backfill is held changes ("" = running).
	OnThrottle func(reason string)
	// StartRows is RowsCopied as recorded by earlier runs.
	StartRows int64
	Log       zerolog.Logger

	key      rowsql.Key
	mu       gosync.Mutex // throttle, and OnThrottle's calls
	throttle string
	rate     rate.Window // under the run's runState.mu
}

// Result sums up one Run.
type Result struct {
	Rows     int64         // rows inserted into green by this run
	Scanned  int64         // rows of blue this run read
	Batches  int           // committed batches
	Retries  int           // batches rolled back on a lock timeout or deadlock and retried
	Redone   int           // plain batches redone with ON CONFLICT DO NOTHING (a key was in green already)
	Duration time.Duration // wall time of Run, throttled time included
	Yielded  time.Duration // of Duration, slept to honour Options.NiceRatio
	Cursor   Cursor        // where a later run would resume (one cursor)
	Ranges   []Range       // a parallel copy's ranges as they stand (nil: one cursor)
	Done     bool          // the copy is complete
}

// Batch is what one CopyBatch did.
type Batch struct {
	Inserted int64  // rows inserted into green
	Scanned  int64  // rows of blue read (and locked) in the range
	Next     Cursor // the range's upper end: resume after it
	Last     bool   // the range was open above: nothing is left after it
}

// KeyColumns is the order of the cursor's values.
func (b *Backfiller) KeyColumns() ([]string, error) {
	if err := b.init(); err != nil {
		return nil, err
	}
	return b.key.Cols, nil
}

func (b *Backfiller) init() error {
	if b.key.Cols != nil {
		return nil
	}
	k, err := keyFor(b.Mapping, b.Blue)
	if err != nil {
		return err
	}
	b.key = k
	return nil
}

// CopyBatch copies the next range after cursor after (nil: from the start)
// of at most limit rows of blue into green, in tx. It sets the sync flag
// first, so green's reverse trigger (when on) does not echo the rows back to
// blue. The caller commits (and checkpoints) — Run does both.
func (b *Backfiller) CopyBatch(ctx context.Context, tx pgx.Tx, after Cursor, limit int) (Batch, error) {
	return b.copyBatch(ctx, tx, after, nil, limit, true)
}

// copyBatch is CopyBatch; without onConflict the insert is plain and fails
// with a unique violation when a key of the range is already in green.
// hi, when set, is the inclusive upper end of the range being copied (a
// parallel copy's range): the batch stops there, and the batch reaching it
// is the range's last.
func (b *Backfiller) copyBatch(ctx context.Context, tx pgx.Tx, after, hi Cursor, limit int, onConflict bool) (Batch, error) {
	if err := b.init(); err != nil {
		return Batch{}, err
	}
	if after != nil && len(after) != len(b.key.Cols) {
		return Batch{}, fmt.Errorf("backfill cursor %q does not match the key (%s)", after, b.key.List())
	}
	if hi != nil && len(hi) != len(b.key.Cols) {
		return Batch{}, fmt.Errorf("backfill range end %q does not match the key (%s)", hi, b.key.List())
	}
	flagSQL, flagArgs := trigger.SyncFlagSQL(b.Names)
	if _, err := tx.Exec(ctx, flagSQL, flagArgs...); err != nil {
		return Batch{}, err
	}
	lt := b.Options.withDefaults().LockTimeout
	if _, err := tx.Exec(ctx, sessionSQL, b.Names.SearchPath(), fmt.Sprintf("%dms", lt.Milliseconds())); err != nil {
		return Batch{}, err
	}
	args := make([]any, 0, 3*len(b.key.Cols)+1)
	for _, v := range after {
		args = append(args, v)
	}
	boundArgs := append([]any(nil), args...)
	for _, v := range hi {
		boundArgs = append(boundArgs, v)
	}
	upper := make([]*string, len(b.key.Cols))
	dest := make([]any, len(upper))
	for i := range upper {
		dest[i] = &upper[i]
	}
	err := tx.QueryRow(ctx, boundSQLWithin(b.key, b.Names.Blue, after != nil, hi != nil), append(boundArgs, max(limit, 1)-1)...).Scan(dest...)
	last := errors.Is(err, pgx.ErrNoRows)
	if err != nil && !last {
		return Batch{}, fmt.Errorf("backfill: find the batch's upper key: %w", err)
	}
	out := Batch{Next: after, Last: last}
	if last && hi != nil {
		// The rest of the range is fewer than limit rows: copy up to its end.
		for _, v := range hi {
			args = append(args, v)
		}
	}
	if !last {
		out.Next = make(Cursor, len(upper))
		for i, v := range upper {
			if v == nil {
				return Batch{}, fmt.Errorf("backfill: key column %s is NULL in blue", b.key.Cols[i])
			}
			out.Next[i] = *v
			args = append(args, *v)
		}
	}
	sql := batchSQLWhere(b.key, b.Names, b.Mapping, b.Where, after != nil, !last || hi != nil, onConflict).SQL
	if onConflict {
		err = tx.QueryRow(ctx, sql, args...).Scan(&out.Inserted, &out.Scanned)
	} else {
		var tag pgconn.CommandTag
		tag, err = tx.Exec(ctx, sql, args...)
		out.Inserted = tag.RowsAffected()
		out.Scanned = out.Inserted // a plain insert inserts every row it reads, or fails
	}
	if err != nil {
		return Batch{}, fmt.Errorf("backfill batch after %q: %w", after, err)
	}
	return out, nil
}

// Run copies batches from cursor until blue is covered, ctx is cancelled, or
// a batch fails. Cancellation is checked between batches: the batch in
// flight finishes and is checkpointed, then Run returns an error wrapping
// ctx.Err() (exit 130 at the CLI) with Result.Cursor saying where it stopped.
// With Options.Workers > 1 it splits what is left after cursor into key
// ranges and copies them in parallel (RunRanges).
func (b *Backfiller) Run(ctx context.Context, cursor Cursor) (Result, error) {
	return b.RunRanges(ctx, cursor, nil)
}

// RunRanges is Run resuming a parallel copy: ranges, when not nil, is the
// split as its checkpoints left it (Checkpoint.Ranges, then each
// Checkpoint.Part applied), and every range not done goes on from its own
// cursor, whatever Options.Workers is now. With ranges nil it is Run: with
// Options.Workers > 1 and enough rows left after cursor, what is left is
// split into ranges, recorded (one Checkpoint with Ranges set, in its own
// transaction) before any worker copies, and copied by up to Workers
// sessions at once; else the copy is one cursor, as it always was.
func (b *Backfiller) RunRanges(ctx context.Context, cursor Cursor, ranges []Range) (res Result, err error) {
	start := time.Now()
	res.Cursor = cursor
	defer func() { res.Duration = time.Since(start) }()
	if b.Checkpoint == nil {
		return res, errors.New("backfill: Checkpoint is required")
	}
	if err := b.init(); err != nil {
		return res, err
	}
	opt := b.Options.withDefaults()
	st := &runState{opt: opt, total: b.StartRows, res: &res}
	b.rate = rate.Window{}
	b.rate.Add(time.Now(), st.total)
	if ranges == nil && opt.Workers > 1 {
		ranges, err = b.split(ctx, cursor, opt)
		if err != nil {
			return res, err
		}
		if len(ranges) > 1 {
			if err := b.recordRanges(ctx, st, ranges, false); err != nil {
				return res, err
			}
		} else {
			ranges = nil
		}
	}
	if ranges == nil {
		r := Range{At: cursor}
		err := b.copyRange(ctx, st, -1, &r)
		res.Cursor = r.At
		res.Done = r.Done
		return res, err
	}
	return res, b.runRanges(ctx, st, ranges)
}

// runState is what the workers of one Run share, under mu.
type runState struct {
	opt   Options
	mu    gosync.Mutex
	total int64 // rows copied, all runs together, as committed
	res   *Result
	hold  gosync.Mutex // the throttles are asked by one worker at a time
	// busy is the backends of the parallel copy's batches in flight: a
	// batch's lock-waiter watch does not count its siblings.
	busy map[uint32]bool
}

func (st *runState) addPID(pid uint32) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.busy == nil {
		st.busy = map[uint32]bool{}
	}
	st.busy[pid] = true
}

func (st *runState) dropPID(pid uint32) {
	st.mu.Lock()
	defer st.mu.Unlock()
	delete(st.busy, pid)
}

func (st *runState) pids() []int32 {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := make([]int32, 0, len(st.busy))
	for p := range st.busy {
		out = append(out, int32(p))
	}
	return out
}

// runRanges copies every range not done, up to opt.Workers at once (each
// worker takes the next range when it finishes one: the split has more
// ranges than workers so that none is left copying alone for long). The
// first error stops the others after their batch in flight; the last
// range done records the copy done.
func (b *Backfiller) runRanges(ctx context.Context, st *runState, ranges []Range) error {
	res := st.res
	res.Ranges = ranges
	res.Cursor = nil
	var todo []int
	for i := range ranges {
		if !ranges[i].Done {
			todo = append(todo, i)
		}
	}
	workers := max(1, min(st.opt.Workers, len(todo)))
	queue := make(chan int, len(todo))
	for _, i := range todo {
		queue <- i
	}
	close(queue)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       gosync.WaitGroup
		errMu    gosync.Mutex
		firstErr error
	)
	b.Log.Info().Int("workers", workers).Int("ranges", len(ranges)).Int("left", len(todo)).Msg("backfill in parallel key ranges")
	for range workers {
		wg.Go(func() {
			for i := range queue {
				err := b.copyRange(wctx, st, i, &ranges[i])
				if err == nil {
					continue
				}
				errMu.Lock()
				// A worker stopped by its siblings' cancel reports that, not
				// the cause: keep the first error that is not a cancellation
				// (or the caller's own).
				if firstErr == nil || (errors.Is(firstErr, context.Canceled) && ctx.Err() == nil && !errors.Is(err, context.Canceled)) {
					firstErr = err
				}
				errMu.Unlock()
				cancel()
				return
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("backfill stopped after %d batches: %w", res.Batches, err)
	}
	if err := b.recordRanges(ctx, st, ranges, true); err != nil {
		return err
	}
	res.Done = true
	b.setThrottle("")
	return nil
}

// recordRanges records the split (done false: before any worker copies)
// or the end of the copy (done: every range is), in a transaction of its own.
func (b *Backfiller) recordRanges(ctx context.Context, st *runState, ranges []Range, done bool) error {
	dbctx := context.WithoutCancel(ctx)
	tx, err := b.Pool.Begin(dbctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(dbctx)
	st.mu.Lock()
	cp := Checkpoint{RowsCopied: st.total, BatchSize: st.opt.BatchSize, Ranges: ranges, Done: done,
		RowsPerSec: b.rate.PerSec(time.Now(), st.total)}
	st.mu.Unlock()
	if err := b.Checkpoint(dbctx, tx, cp); err != nil {
		return fmt.Errorf("backfill checkpoint of the key ranges: %w", err)
	}
	return tx.Commit(dbctx)
}

// copyRange copies (r.At, r.Hi] in batches, each with its checkpoint, and
// advances r. idx < 0 is the one-cursor copy of Run: its checkpoints carry
// the cursor and its last batch is the copy's last (Checkpoint.Done);
// idx >= 0 is range idx of a parallel copy (Checkpoint.Part).
func (b *Backfiller) copyRange(ctx context.Context, st *runState, idx int, r *Range) error {
	opt := st.opt
	size := opt.BatchSize
	// Batches run to completion even when ctx is cancelled: Ctrl-C must
	// not abort a batch half-way through (it would be lost, not harmful).
	dbctx := context.WithoutCancel(ctx)
	backoff := opt.PollInterval
	conflictBatches := 0 // > 0: the next batches insert ON CONFLICT DO NOTHING
	res := st.res
	for {
		if err := ctx.Err(); err != nil {
			st.mu.Lock()
			n := res.Batches
			st.mu.Unlock()
			if idx < 0 {
				return fmt.Errorf("backfill stopped after %d batches (resume after key %q): %w", n, r.At, err)
			}
			return fmt.Errorf("backfill stopped after %d batches (range %d resumes after key %q): %w", n, idx, r.At, err)
		}
		reason, err := b.holdShared(ctx, st)
		if err != nil {
			if ctx.Err() != nil {
				continue
			}
			return err
		}
		if reason != "" {
			b.setThrottle(reason)
			b.sleep(ctx, opt.PollInterval)
			continue
		}
		t0 := time.Now()
		onConflict := conflictBatches > 0
		batch, waiters, err := b.runBatch(dbctx, st, idx, r, size, onConflict)
		took := time.Since(t0)
		if err != nil && !onConflict && db.SQLState(err) == db.UniqueViolation {
			// Some key of the range is in green already (written by the
			// trigger): redo the batch with ON CONFLICT DO NOTHING, and keep
			// that form for a while, as such keys tend to cluster.
			st.mu.Lock()
			res.Redone++
			st.mu.Unlock()
			conflictBatches = conflictSpell
			continue
		}
		if conflictBatches > 0 {
			conflictBatches--
		}
		if err != nil {
			sqlstate := db.SQLState(err)
			if sqlstate != db.LockNotAvailable && sqlstate != db.DeadlockDetected {
				return err
			}
			// A row the batch needed stayed locked (or we deadlocked with
			// the application): nothing was committed. Back off, shrink, retry.
			st.mu.Lock()
			res.Retries++
			st.mu.Unlock()
			b.setThrottle("row locks held by the application")
			b.Log.Debug().Err(err).Int("batch_size", size).Msg("backfill batch rolled back; retrying")
			if !opt.Fixed {
				size = max(opt.MinBatchSize, size/2)
			}
			b.sleep(ctx, backoff/2+rand.N(backoff/2+1))
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = opt.PollInterval
		b.Log.Debug().Int("range", idx).Int("batch_size", size).Int64("inserted", batch.Inserted).Int64("scanned", batch.Scanned).
			Float64("took_ms", logx.Ms(took)).Strs("cursor", batch.Next).Msg("backfill batch")
		if batch.Last {
			if idx < 0 {
				b.setThrottle("")
			}
			return nil
		}
		if waiters > 0 {
			// Application sessions queued behind this batch's locks: give
			// them room before the next one, and make the next one smaller.
			b.setThrottle("application sessions waited on backfill locks")
			if !opt.Fixed {
				size = max(opt.MinBatchSize, size/2)
			}
			b.sleep(ctx, min(max(took, 50*time.Millisecond), time.Second))
			continue
		}
		b.setThrottle("")
		if !opt.Fixed {
			size = nextSize(size, took, opt)
		}
		if opt.NiceRatio > 0 {
			d := time.Duration(float64(took) * opt.NiceRatio)
			b.sleep(ctx, d)
			st.mu.Lock()
			res.Yielded += d
			st.mu.Unlock()
		}
	}
}

// conflictSpell is how many batches use ON CONFLICT DO NOTHING after a
// plain batch met a key already in green.
const conflictSpell = 16

// nextSize moves the batch size toward the target batch time, by at most
// a factor of 2 down or 1.5 up per batch, within the bounds.
func nextSize(size int, took time.Duration, opt Options) int {
	ratio := 1.5
	if took > 0 {
		ratio = float64(opt.TargetBatchTime) / float64(took)
	}
	ratio = min(max(ratio, 0.5), 1.5)
	n := int(float64(size) * ratio)
	if n == size && ratio > 1 {
		n++
	}
	return min(max(n, opt.MinBatchSize), opt.MaxBatchSize)
}

// runBatch runs one batch of (r.At, r.Hi] in its own transaction with its
// checkpoint, advances r once it committed, and counts the sessions that
// waited on its locks meanwhile.
func (b *Backfiller) runBatch(ctx context.Context, st *runState, idx int, r *Range, size int, onConflict bool) (Batch, int, error) {
	tx, err := b.Pool.Begin(ctx)
	if err != nil {
		return Batch{}, 0, err
	}
	defer tx.Rollback(ctx)
	pid := tx.Conn().PgConn().PID()
	var siblings func() []int32
	if idx >= 0 {
		st.addPID(pid)
		defer st.dropPID(pid)
		siblings = st.pids
	}
	watch := startWaiterWatch(ctx, b.Pool, pid, siblings)
	batch, err := b.copyBatch(ctx, tx, r.At, r.Hi, size, onConflict)
	if err != nil {
		watch.stop()
		return Batch{}, 0, err
	}
	now := time.Now()
	st.mu.Lock()
	rows := st.total + batch.Inserted // other workers may commit first: only Added is exact
	rps := b.rate.PerSec(now, rows)
	st.mu.Unlock()
	cp := Checkpoint{Cursor: batch.Next, RowsCopied: rows, Added: batch.Inserted, BatchSize: size, RowsPerSec: rps, Done: batch.Last}
	next := Range{At: batch.Next, Hi: r.Hi, Rows: r.Rows + batch.Inserted, Done: batch.Last}
	if batch.Last && r.Hi != nil {
		next.At = r.Hi
	}
	if idx >= 0 {
		cp.Cursor, cp.Done = nil, false
		cp.Part = &RangeCheckpoint{Index: idx, Range: next}
	}
	if err := b.Checkpoint(ctx, tx, cp); err != nil {
		watch.stop()
		return Batch{}, 0, fmt.Errorf("backfill checkpoint: %w", err)
	}
	err = tx.Commit(ctx)
	waiters := watch.stop()
	if err != nil {
		return Batch{}, 0, err
	}
	*r = next
	st.mu.Lock()
	st.total += batch.Inserted
	b.rate.Add(now, st.total)
	st.res.Batches++
	st.res.Rows += batch.Inserted
	st.res.Scanned += batch.Scanned
	st.mu.Unlock()
	return batch, waiters, nil
}

// holdShared asks the throttles for one worker at a time: a Throttle need
// not be safe for concurrent use, and every worker asks before each batch.
func (b *Backfiller) holdShared(ctx context.Context, st *runState) (string, error) {
	st.hold.Lock()
	defer st.hold.Unlock()
	return b.hold(ctx)
}

func (b *Backfiller) hold(ctx context.Context) (string, error) {
	for _, t := range b.Throttles {
		reason, err := t.Hold(ctx)
		if err != nil || reason != "" {
			return reason, err
		}
	}
	return "", nil
}

func (b *Backfiller) setThrottle(reason string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if reason == b.throttle {
		return
	}
	b.throttle = reason
	if reason != "" {
		b.Log.Info().Str("reason", reason).Msg("backfill held")
	} else {
		b.Log.Info().Msg("backfill running")
	}
	if b.OnThrottle != nil {
		b.OnThrottle(reason)
	}
}

func (b *Backfiller) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
