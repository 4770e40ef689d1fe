package runner

// logicalFeed: the changeFeed (feed.go) of a migration whose blue → green
// changes travel through a logical replication slot (package sync/stream)
// instead of the forward trigger. The lifecycle, phases and state are
// trigger mode's (runner/sync.go); this feed adds the slot before the
// backfill, the streamer alongside it, the settling before verify, the
// handover to the forward trigger before cutover, and the slot's removal
// on every exit path (trap 9).

import (
	"context"
	"errors"
	"fmt"
	"strings"
	gosync "sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/logx"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	"github.com/greenswap/greenswap/sync/stream"
	"github.com/greenswap/greenswap/trigger"
	"github.com/greenswap/greenswap/verify"
)

// PhaseCreateSlot names the slot's creation in events (it runs at the
// start of the backfill phase; the recorded phase stays "backfill").
const PhaseCreateSlot = "create-slot"

// logicalFeed is one command's logical feed: for a sync, the streamer
// it runs alongside the backfill (live), which it owns and stops.
type logicalFeed struct {
	env  *Env
	live *logicalSync
}

// installStep: the forward triggers are created disabled (the stream
// carries blue → green) and the reverse functions mark their writes to
// blue as echoes.
func (*logicalFeed) installStep(n shadow.Names, m *shadow.Mapping, owner string) shadow.Step {
	return trigger.LogicalInstallStep(n, m, owner)
}

// StreamStats are the logical stream's figures in a SyncStats.
type StreamStats = stream.Stats

// PhaseStreamCatchUp names, in events, the wait at the end of a logical
// sync for the stream to apply everything committed until then.
const PhaseStreamCatchUp = "stream-catch-up"

// start is Sync's phase between create-green and the backfill (a no-op
// once a cutover retired the stream): make sure the publication and the
// slot exist, then start a streamer that applies blue's changes to green
// while the backfill, the index builds and the rest run. The slot must exist before the
// backfill's first batch: whatever committed before it is seen by the
// backfill's snapshots, whatever commits after it is in the stream, and
// where both copy a row the result converges (the stream re-reads the row
// from blue; the backfill never overwrites).
func (f *logicalFeed) start(ctx context.Context, r *syncRun) error {
	retired, err := streamRetired(ctx, f.env, r.names)
	if err != nil || retired {
		return err
	}
	if err := r.ensureSlot(ctx); err != nil {
		return err
	}
	if r.opts.StopAfterSetup {
		return nil // nothing streams: the slot keeps the changes until a sync runs
	}
	f.live, err = r.startStream(ctx)
	return err
}

// catchUp is Sync's last phase: once synced, wait until the stream has
// applied everything committed so far (bounded by Env.StreamCatchUp),
// then stop streaming. `greenswap sync --watch`
// (WatchSync) keeps the stream going until cutover; without it the slot
// retains the WAL of blue's changes and green falls behind.
func (f *logicalFeed) catchUp(ctx context.Context, r *syncRun) error {
	ls := f.live
	if ls == nil {
		return nil
	}
	t0 := time.Now()
	timeout := r.env.StreamCatchUp
	if timeout <= 0 {
		timeout = DefaultStreamCatchUp
	}
	err := ls.catchUp(ctx, timeout)
	kept := false
	if err == nil && ctx.Err() == nil && r.opts.KeepStreaming && ls.failed() == nil {
		// Handed to WatchSync, which streams on with it: no new walsender
		// decoding the slot again from its restart position. The sync's
		// circuit breaker stops holding it, as a watch's own streamer is not.
		ls.detached.Store(true)
		r.stats.Stream = ls.stats()
		r.env.kept.put(r.spec.Name, ls)
		f.live, kept = nil, true
	}
	f.stop(r)
	if err != nil && ctx.Err() == nil {
		return err
	}
	// Interrupted (Ctrl-C) while catching up is no failure: the migration
	// is synced all the same, and the slot keeps what was not applied yet.
	st := r.stats.Stream
	if kept {
		r.log.Info().Int64("keys_applied", st.Keys).Int64("transactions", st.Txns).
			Msg("synced; the stream caught up and goes on applying blue's changes until cutover (sync --watch)")
	} else {
		msg := "synced; the stream is paused"
		if err != nil {
			msg = "synced; the stream was stopped before it had applied everything"
		}
		r.log.Info().Int64("keys_applied", st.Keys).Int64("transactions", st.Txns).
			Msg(msg + ": run `greenswap sync -f FILE --watch` to keep applying blue's changes until cutover (the slot retains WAL meanwhile)")
	}
	// Recorded even when ctx has just been cancelled: it says what was done.
	return state.Record(context.WithoutCancel(ctx), r.env.Pool, r.spec.Name, "stream", "ok", time.Since(t0), "", map[string]any{
		"transactions": st.Txns, "changes": st.Changes, "keys_applied": st.Keys, "echoes_skipped": st.Echoes,
		"batches": st.Batches, "keys_per_sec": st.KeysPerSec, "applied_lsn": st.Applied.String(), "reconnects": st.Reconnects,
		"kept_streaming": kept,
	})
}

// drain waits for the sync's streamer to apply everything committed until
// now (changeFeed.drain), for at most Env.StreamCatchUp.
func (f *logicalFeed) drain(ctx context.Context, r *syncRun) (map[string]any, error) {
	ls := f.live
	if ls == nil {
		return nil, nil
	}
	timeout := r.env.StreamCatchUp
	if timeout <= 0 {
		timeout = DefaultStreamCatchUp
	}
	lsn, err := stream.CurrentLSN(ctx, r.env.Pool)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	err = ls.catchUpTo(ctx, lsn, timeout)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	d := map[string]any{"stream_applied_to": lsn.String(), "stream_wait_ms": logx.Ms(time.Since(t0))}
	if err != nil {
		if ferr := ls.failed(); ferr != nil {
			return nil, fmt.Errorf("the logical stream stopped: %w", ferr)
		}
		delete(d, "stream_applied_to")
		d["stream_behind"] = err.Error()
		r.log.Warn().Err(err).Msg("the logical stream did not catch up in time; going on (green's pages its backlog writes stay unsettled until autovacuum)")
	}
	return d, nil
}

// consistent runs fn with blue's writers held off (the blues locked IN
// SHARE MODE, bounded and retried, as for verify: stream.Settle) once the
// stream has applied everything committed before the lock: only then is
// green an exact copy of blue. Caught up to a position while writers
// write, the greens of several tables are each only eventually blue's:
// the stream re-reads a key's row as of its apply, later than the change
// it applies, and leaves a key whose row has gone since to the later
// change that removed it. A child row copied by the backfill whose
// parent was inserted after the parents' copy and deleted (the child
// cascading) before the stream applied the insert stays on green without
// that parent until the stream reaches the delete, which may lie past
// any position caught up to (found as 23503 at the VALIDATE of the
// foreign key among the greens). The stream goes on afterwards.
func (f *logicalFeed) consistent(ctx context.Context, r *syncRun, fn func(context.Context) error) error {
	timeout := r.env.StreamCatchUp
	if timeout <= 0 {
		timeout = DefaultStreamCatchUp
	}
	if f.live != nil {
		// Most of the backlog is applied without holding anybody.
		if err := f.live.catchUp(ctx, timeout); err != nil {
			return fmt.Errorf("wait for the stream to bring every green up to date before adding the foreign keys among them: %w", err)
		}
	}
	cfg, err := streamConfig(ctx, f.env, &Migration{Row: r.row, Spec: r.spec, Names: r.names}, r.build)
	if err != nil {
		return err
	}
	t0 := time.Now()
	release, err := stream.Settle(ctx, cfg, stream.SettleOptions{Lock: r.lockOptions(), CatchUp: timeout})
	if err != nil {
		var lag *stream.LagError
		if errors.As(err, &lag) {
			err = exitcode.With(exitcode.LockTimeout, err)
		}
		return fmt.Errorf("logical mode: bring every green up to date with blue's writers held before adding the foreign keys among them: %w", err)
	}
	held := time.Now()
	defer func() {
		release()
		// settle_ms: caught up, blue locked, the rest applied under the lock.
		r.log.Info().Float64("settle_ms", logx.Ms(held.Sub(t0))).Float64("adds_ms", logx.Ms(time.Since(held))).
			Msg("the greens were exact copies of the blues while the foreign keys among them were added")
	}()
	return fn(ctx)
}

// stop stops the sync's streamer, if any, keeping its figures in
// SyncStats.Stream. Sync defers it: every way out stops the streamer (the
// batch in flight is applied and confirmed first).
func (f *logicalFeed) stop(r *syncRun) {
	if f.live == nil {
		return
	}
	f.live.stop()
	r.stats.Stream = f.live.stats()
	if err := f.live.failed(); err != nil && !errors.Is(err, stream.ErrRetired) {
		r.log.Warn().Err(err).Msg("the logical stream stopped on an error")
	}
	f.live = nil
}

// streamRetired reports whether the forward triggers are on: the stream was
// retired (a cutover started) and blue → green runs by trigger.
func streamRetired(ctx context.Context, env *Env, n shadow.Names) (bool, error) {
	var st string
	err := env.Pool.QueryRow(ctx, `SELECT coalesce((SELECT tgenabled::text FROM pg_trigger
		WHERE tgrelid = pg_catalog.to_regclass($1) AND tgname = $2), '')`, db.Ident(n.Blue.Schema, n.Blue.Name), n.Trigger).Scan(&st)
	if err != nil {
		return false, err
	}
	return st != "" && st != "D", nil
}

// ensureSlot makes sure the slot exists before the backfill copies
// anything: created (with the publication) on the first run, found again
// on later ones. A recorded slot that is gone lost changes: while syncing,
// the backfill starts over with a new slot; once synced that is not
// possible (green takes writes), and the error says to roll back.
func (r *syncRun) ensureSlot(ctx context.Context) error {
	pool, n := r.env.Pool, r.names
	exists, _, _, err := stream.SlotInfo(ctx, pool, n.Slot)
	if err != nil {
		return err
	}
	recorded := r.row.SlotName != nil && *r.row.SlotName != ""
	if recorded && exists {
		return nil
	}
	if recorded || r.row.RowsCopied > 0 || len(r.row.Cursor) > 0 || phaseAfter(r.phase, PhaseBackfill) {
		if r.row.State != state.Syncing {
			return exitcode.Errorf(exitcode.Failed, "%s: replication slot %s is gone, so changes to blue since %s may be missing from green; "+
				"green takes writes now, so it cannot be refilled: roll the migration back (greenswap rollback %s) and sync again",
				r.spec.Name, n.Slot, orNone(r.row.ConfirmedLSN), r.spec.Name)
		}
		r.log.Warn().Str("slot", n.Slot).Msg("the replication slot is gone: changes may be missing from green; emptying green and copying again")
		if err := r.restartBackfill(ctx); err != nil {
			return err
		}
	}
	t0 := time.Now()
	lsn, err := stream.SetupTables(ctx, pool, r.streamTables(), true, r.log)
	if err != nil {
		return exitcode.With(exitcode.Failed, fmt.Errorf("logical mode setup: %w", err))
	}
	if err := state.SetSlot(ctx, pool, r.spec.Name, n.Slot, lsn.String()); err != nil {
		_ = stream.DropSlotAndPublication(context.WithoutCancel(ctx), pool, n)
		return err
	}
	slotName, lsnText := n.Slot, lsn.String()
	r.row.SlotName, r.row.ConfirmedLSN = &slotName, &lsnText
	sql := stream.SlotSQL(n)
	r.log.Info().Str("slot", n.Slot).Stringer("consistent_point", lsn).Float64("took_ms", logx.Ms(time.Since(t0))).Msg("created the publication and the replication slot")
	return state.Record(ctx, pool, r.spec.Name, PhaseCreateSlot, "ok", time.Since(t0), sql, map[string]string{"slot": n.Slot, "lsn": lsn.String()})
}

func orNone(s *string) string {
	if s == nil {
		return "the start"
	}
	return *s
}

// streamTables are the tables the sync's stream carries: every member of
// a migration of several tables (dependency order), else the one table.
func (r *syncRun) streamTables() []stream.Table {
	if r.members == nil {
		return []stream.Table{{Names: r.names, Mapping: r.build.Mapping, Blue: r.build.Blue}}
	}
	var out []stream.Table
	for _, m := range r.members {
		out = append(out, stream.Table{Names: m.names, Mapping: m.build.Mapping, Blue: m.build.Blue})
	}
	return out
}

// restartBackfill empties green and rewinds the backfill, in one
// transaction (syncing only: the reverse triggers are off, nobody writes
// green but greenswap). With several tables every green is emptied and
// every member's copy rewound, and the foreign keys among the greens are
// dropped again until the new copy is done (the stream is then ahead of
// the copy, as on the first run).
func (r *syncRun) restartBackfill(ctx context.Context) error {
	tx, err := r.env.Pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	flag, args := trigger.SyncFlagSQL(r.names)
	if _, err := tx.Exec(ctx, flag, args...); err != nil {
		return err
	}
	if r.members != nil {
		if err := r.restartTablesBackfill(ctx, tx); err != nil {
			return err
		}
	} else {
		if _, err := tx.Exec(ctx, "TRUNCATE "+db.Ident(r.names.Green.Schema, r.names.Green.Name)); err != nil {
			return err
		}
		if err := state.StartBackfill(ctx, tx, r.spec.Name, PhaseBackfill, -1, true); err != nil {
			return err
		}
	}
	if err := state.Record(ctx, tx, r.spec.Name, "restart-backfill", "ok", 0, "", map[string]string{"reason": "replication slot lost"}); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	r.phase, r.row.RowsCopied, r.row.Cursor, r.row.BatchSize = PhaseBackfill, 0, nil, 0
	r.row.SlotName, r.row.ConfirmedLSN = nil, nil
	return nil
}

// restartTablesBackfill is restartBackfill's work on a migration of
// several tables, in tx: drop the foreign keys among the greens that are
// there (the recorded list is kept, to be added again), empty every green,
// rewind every member's copy and drop the slot's record.
func (r *syncRun) restartTablesBackfill(ctx context.Context, tx pgx.Tx) error {
	row, err := state.Get(ctx, tx, r.spec.Name)
	if err != nil {
		return err
	}
	fks, err := row.GreenFKs()
	if err != nil {
		return err
	}
	if _, err := dropGreenFKs(ctx, tx, r.names.GreenSchema, r.members); err != nil {
		return err
	}
	for i := range fks {
		fks[i].Added, fks[i].Validated = false, false
	}
	var greens []string
	var est []state.TableEstimate
	for _, m := range r.members {
		greens = append(greens, db.Ident(m.names.Green.Schema, m.names.Green.Name))
		est = append(est, state.TableEstimate{Table: m.table(), Rows: m.build.Blue.RowEstimate})
	}
	if _, err := tx.Exec(ctx, "TRUNCATE "+strings.Join(greens, ", ")); err != nil {
		return err
	}
	if err := state.StartTables(ctx, tx, r.spec.Name, PhaseBackfill, est, fks); err != nil {
		return err
	}
	return state.Update(ctx, tx, r.spec.Name, map[string]any{"slot_name": nil, "confirmed_lsn": nil})
}

// newStreamer builds the migration's streamer, checkpointing into the
// migrations row.
func newStreamer(ctx context.Context, env *Env, m *Migration, b *Build, opt stream.Options) (*stream.Streamer, error) {
	cfg, err := streamConfig(ctx, env, m, b)
	if err != nil {
		return nil, err
	}
	cfg.Options = withSpecStreamOptions(opt, m.Spec)
	return stream.New(cfg)
}

// logicalSync is a streamer running alongside a sync.
type logicalSync struct {
	s *stream.Streamer
	// detached: handed over to WatchSync (SyncOptions.KeepStreaming); the
	// sync's circuit breaker no longer holds the apply.
	detached atomic.Bool
	env      *Env
	names    shadow.Names
	name     string
	cancel   context.CancelFunc
	done     chan struct{}
	mu       gosync.Mutex
	err      error
}

func (r *syncRun) startStream(ctx context.Context) (*logicalSync, error) {
	opt := r.env.Stream
	ls := &logicalSync{env: r.env, names: r.names, name: r.spec.Name, done: make(chan struct{})}
	brk := r.breaker(ctx)
	// The circuit breaker holds the apply too (sync_guard.go), until the
	// streamer is handed to a watch.
	opt.Hold = func(ctx context.Context) (string, error) {
		if ls.detached.Load() {
			return "", nil
		}
		return brk.Hold(ctx)
	}
	s, err := newStreamer(ctx, r.env, &Migration{Row: r.row, Spec: r.spec, Names: r.names}, r.build, opt)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	ls.s, ls.cancel = s, cancel
	r.env.streams.put(r.spec.Name, s)
	go func() {
		defer close(ls.done)
		defer r.env.streams.remove(ls.name, s)
		err := s.Run(sctx)
		ls.mu.Lock()
		ls.err = err
		ls.mu.Unlock()
	}()
	return ls, nil
}

// failed returns the streamer's fatal error, if it has stopped on one.
func (ls *logicalSync) failed() error {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.err
}

func (ls *logicalSync) stop() {
	ls.cancel()
	<-ls.done
}

func (ls *logicalSync) stats() *stream.Stats {
	st := ls.s.Stats()
	return &st
}

// catchUp waits until green is current up to the WAL position now.
func (ls *logicalSync) catchUp(ctx context.Context, timeout time.Duration) error {
	lsn, err := stream.CurrentLSN(ctx, ls.env.Pool)
	if err != nil {
		return err
	}
	return ls.catchUpTo(ctx, lsn, timeout)
}

// catchUpTo waits until green is current up to lsn.
func (ls *logicalSync) catchUpTo(ctx context.Context, lsn pglogrepl.LSN, timeout time.Duration) error {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if err := ls.failed(); err != nil {
			return err
		}
		err := stream.WaitApplied(cctx, ls.env.Pool, ls.names, lsn, 500*time.Millisecond)
		var lag *stream.LagError
		if err == nil || !errors.As(err, &lag) {
			if err != nil && ctx.Err() == nil && cctx.Err() != nil {
				return fmt.Errorf("the stream did not catch up within %s: %w", timeout, err)
			}
			return err
		}
	}
}

// StreamProgress is the logical stream's part of SyncProgress: the slot as
// the server sees it, and, when this process runs the streamer, its own
// figures.
type StreamProgress struct {
	Slot          string `json:"slot"`
	Exists        bool   `json:"exists"`
	Active        bool   `json:"active"`  // a greenswap streams it now (this process or another)
	Retired       bool   `json:"retired"` // blue → green runs by trigger (a cutover began); the slot is dropped
	RetainedBytes int64  `json:"retained_bytes"`
	LagBytes      int64  `json:"lag_bytes"` // current WAL position − what green is current up to
	ConfirmedLSN  string `json:"confirmed_lsn,omitempty"`
	// Local: this process streams; the figures below are its own.
	Local      bool    `json:"local"`
	LagSeconds float64 `json:"lag_seconds"` // age of the oldest change received but not applied
	KeysPerSec float64 `json:"keys_per_sec"`
	Keys       int64   `json:"keys_applied"`
	Txns       int64   `json:"transactions"`
	Echoes     int64   `json:"echoes_skipped"`
	Reconnects int     `json:"reconnects"`
}

// progress reads the slot as the server sees it and, when this process
// streams, the streamer's own figures.
func (f *logicalFeed) progress(ctx context.Context, m *Migration) (*StreamProgress, error) {
	env := f.env
	p := &StreamProgress{Slot: m.Names.Slot}
	var confirmed *string
	err := env.Pool.QueryRow(ctx, `
SELECT active, confirmed_flush_lsn::text,
       coalesce(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn), 0)::int8,
       coalesce(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn), 0)::int8
  FROM pg_replication_slots WHERE slot_name = $1 AND database = pg_catalog.current_database()`, m.Names.Slot).Scan(
		&p.Active, &confirmed, &p.RetainedBytes, &p.LagBytes)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return nil, err
	default:
		p.Exists = true
		if confirmed != nil {
			p.ConfirmedLSN = *confirmed
		}
	}
	switch m.Row.State {
	case state.Syncing, state.Synced:
		if p.Retired, err = streamRetired(ctx, env, m.Names); err != nil {
			return nil, err
		}
	case state.CutOver, state.Finalized:
		p.Retired = true // cutover retires the stream
	}
	if s, ok := env.streams.get(m.Row.Name); ok {
		st := s.Stats()
		p.Local, p.LagSeconds, p.KeysPerSec = true, st.LagSeconds, st.KeysPerSec
		p.Keys, p.Txns, p.Echoes, p.Reconnects = st.Keys, st.Txns, st.Echoes, st.Reconnects
	}
	return p, nil
}

// streaming: the slot's backlog counts while the stream is not retired.
func (f *logicalFeed) streaming(ctx context.Context, n shadow.Names) (bool, error) {
	retired, err := streamRetired(ctx, f.env, n)
	return !retired, err
}

// watch is WatchSync for a logical-mode migration with a live
// stream: it streams until ctx ends (exit 0), calling fn with the figures
// every `every`. It takes no migration lock, so verify, cutover and
// rollback can run meanwhile; the slot itself admits one streamer at a time
// (a second one waits for it). handled is false when there is no stream to
// run (not adopted yet, retired by a cutover, rolled back): the caller
// then watches as in trigger mode.
func (f *logicalFeed) watch(ctx context.Context, m *Migration, every time.Duration, fn func(SyncProgress)) (handled bool, err error) {
	env, name := f.env, m.Row.Name
	if ls, ok := env.kept.take(name); ok {
		return f.watchKept(ctx, ls, every, fn)
	}
	if (m.Row.State != state.Syncing && m.Row.State != state.Synced) || m.Row.SlotName == nil {
		return false, nil
	}
	if retired, err := streamRetired(ctx, env, m.Names); err != nil || retired {
		if ctx.Err() != nil {
			return true, nil
		}
		return false, err
	}
	b, err := loadFeedBuild(ctx, env, m)
	if err != nil {
		if ctx.Err() != nil {
			return true, nil // Ctrl-C while starting: watching ends cleanly
		}
		if now, gerr := env.LoadMigration(ctx, name); gerr == nil && now.Row.State != state.Syncing && now.Row.State != state.Synced {
			// A rollback or cutover took green (or the stream) away while
			// the watch was starting: there is nothing to stream, only to watch.
			return false, nil
		}
		return true, err
	}
	s, err := newStreamer(ctx, env, m, b, env.Stream)
	if err != nil {
		return true, err
	}
	env.streams.put(name, s)
	defer env.streams.remove(name, s)
	rctx, stopReports := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(max(every, 100*time.Millisecond))
		defer t.Stop()
		for {
			if p, err := ReadSyncProgress(rctx, env, name); err == nil {
				fn(*p)
			}
			select {
			case <-rctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	err = s.Run(ctx)
	stopReports()
	<-done
	if errors.Is(err, stream.ErrRetired) {
		env.Log.Info().Str("migration", name).Msg("the logical stream was retired (cutover or rollback); watching only")
		return false, nil
	}
	return true, err
}

// watchKept is watch with the streamer the sync handed over: it reports
// every `every` until ctx ends or the streamer stops on its own (retired by
// a cutover or a rollback, or an error), then stops it.
func (f *logicalFeed) watchKept(ctx context.Context, ls *logicalSync, every time.Duration, fn func(SyncProgress)) (bool, error) {
	t := time.NewTicker(max(every, 100*time.Millisecond))
	defer t.Stop()
	for {
		if p, err := ReadSyncProgress(ctx, f.env, ls.name); err == nil {
			fn(*p)
		}
		select {
		case <-ctx.Done():
		case <-ls.done:
		case <-t.C:
			continue
		}
		break
	}
	ls.stop()
	err := ls.failed()
	if errors.Is(err, stream.ErrRetired) {
		f.env.Log.Info().Str("migration", ls.name).Msg("the logical stream was retired (cutover or rollback); watching only")
		return false, nil
	}
	return true, err
}

// handOver is the step before the cutover swap: stream.Retire hands blue → green over from the stream to the forward
// triggers without losing a change (catch up, switch in one short
// transaction, drain up to the switch, drop the slot and publication). The
// swap that follows is then exactly trigger mode's, and so are rollback
// after cutover and finalize: both directions run by trigger from here on.
// Once retired it only records that it was done already (already_done).
func (f *logicalFeed) handOver(ctx context.Context, m *Migration, lock shadow.LockOptions, printf func(format string, args ...any)) error {
	env := f.env
	b, err := loadFeedBuild(ctx, env, m)
	if err != nil {
		return err
	}
	cfg, err := streamConfig(ctx, env, m, b)
	if err != nil {
		return err
	}
	printf("logical mode: blue → green moves from the stream to the sync triggers first (lock wait at most %s per attempt)\n", lock.Timeout)
	log := env.Log.With().Str("migration", m.Row.Name).Logger()
	return runPhase(ctx, env, log, m.Row.Name, "retire-stream", func(ctx context.Context, ev *phaseEvent) error {
		res, err := stream.Retire(ctx, cfg, stream.RetireOptions{Lock: lock,
			OnRetry: func(attempt int, blockers []shadow.Blocker, held bool, wait time.Duration) {
				why := "a lock was not granted in time"
				if held {
					why = fmt.Sprintf("the stream did not apply the rest within %s while blue's writers waited", lock.Timeout)
				}
				printf("  switch attempt %d: %s; rolled back, retrying in %s\n", attempt, why, wait.Round(time.Millisecond))
				for _, b := range blockers {
					printf("    blocked by %s\n", b)
				}
			}})
		if res != nil {
			ev.SQL = joinSQL(res.SQL)
			ev.Detail = map[string]any{"switch_lsn": res.SwitchLSN.String(), "pre_drain_ms": res.PreDrain.Milliseconds(),
				"drain_ms": res.Drain.Milliseconds(), "switch_ms": res.Switch.Milliseconds(), "keys": res.Keys, "already_done": res.AlreadyDone}
		}
		if err != nil {
			var lag *stream.LagError
			if errors.As(err, &lag) {
				return exitcode.With(exitcode.LockTimeout, err)
			}
			return err
		}
		if !res.AlreadyDone {
			printf("  switched at %s (caught up %s, switch %s, drained %s); the slot and publication are dropped\n",
				res.SwitchLSN, res.PreDrain.Round(time.Millisecond), res.Switch.Round(time.Millisecond), res.Drain.Round(time.Millisecond))
		}
		return nil
	})
}

func joinSQL(s []string) string { return strings.Join(s, ";\n") }

// loadFeedBuild is the build a stream of m needs: of its table, or nil
// for several tables (streamConfig reads each member's).
func loadFeedBuild(ctx context.Context, env *Env, m *Migration) (*Build, error) {
	if m.Spec.MultiTable() {
		return nil, nil
	}
	return loadBuild(ctx, env.Pool, m.Spec, m.Names)
}

// streamConfig is the stream configuration of a stored migration: of its
// table (b), or of every member of a migration of several tables, read
// from the catalog (b is then not used).
func streamConfig(ctx context.Context, env *Env, m *Migration, b *Build) (stream.Config, error) {
	var tables []stream.Table
	if m.Spec.MultiTable() {
		for _, mb := range membersOf(m.Spec) {
			bb, err := loadBuild(ctx, env.Pool, mb.spec, mb.names)
			if err != nil {
				return stream.Config{}, fmt.Errorf("table %s: %w", mb.table(), err)
			}
			tables = append(tables, stream.Table{Names: mb.names, Mapping: bb.Mapping, Blue: bb.Blue})
		}
		b = &Build{Names: tables[0].Names, Mapping: tables[0].Mapping, Blue: tables[0].Blue}
	}
	var start pglogrepl.LSN
	if m.Row.ConfirmedLSN != nil {
		var err error
		if start, err = pglogrepl.ParseLSN(*m.Row.ConfirmedLSN); err != nil {
			return stream.Config{}, err
		}
	}
	name := m.Row.Name
	return stream.Config{
		Pool: env.Pool, Conn: &env.ConnConfig.Config, Migration: name, Names: m.Names,
		Mapping: b.Mapping, Blue: b.Blue, Tables: tables, Start: start,
		Checkpoint: func(ctx context.Context, tx pgx.Tx, lsn pglogrepl.LSN) error {
			return state.SetConfirmedLSN(ctx, tx, name, lsn.String())
		},
		Log: env.Log.With().Str("migration", name).Logger(), Options: withSpecStreamOptions(env.Stream, m.Spec),
	}, nil
}

// withSpecStreamOptions fills what opt leaves at its default from the
// spec's sync section.
func withSpecStreamOptions(opt stream.Options, spec *spec.Spec) stream.Options {
	if opt.ApplyWorkers == 0 && spec != nil {
		opt.ApplyWorkers = spec.Sync.ApplyWorkers
	}
	return opt
}

// drop removes migration m's replication slot and publication if they
// exist, terminating a walsender that streams the slot (trap 9: a slot
// that outlives its migration fills the disk). Every exit path calls it:
// rollback (before or after cutover), finalize, and a rollback of an
// already rolled-back migration that left one behind. It records an event
// when it dropped something.
func (f *logicalFeed) drop(ctx context.Context, m *Migration) error {
	env := f.env
	exists, _, retained, err := stream.SlotInfo(ctx, env.Pool, m.Names.Slot)
	if err != nil {
		return err
	}
	var pub bool
	if err := env.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, m.Names.Publication).Scan(&pub); err != nil {
		return err
	}
	if !exists && !pub {
		return nil
	}
	t0 := time.Now()
	if err := stream.DropSlotAndPublication(ctx, env.Pool, m.Names); err != nil {
		return err
	}
	return state.Record(ctx, env.Pool, m.Row.Name, "drop-slot", "ok", time.Since(t0),
		fmt.Sprintf("SELECT pg_catalog.pg_drop_replication_slot(%s);\nDROP PUBLICATION IF EXISTS %s", db.Literal(m.Names.Slot), db.Ident(m.Names.Publication)),
		map[string]any{"slot": m.Names.Slot, "slot_existed": exists, "retained_bytes": retained, "publication_existed": pub})
}

// settle prepares verify: green lags blue by the
// stream, so a snapshot taken while blue's writes flow would find rows
// committed on blue and not applied yet. It catches the stream up, holds
// blue's writers off (LOCK IN SHARE MODE, bounded, retried like a lock
// timeout) until the rest is applied, and returns the verify.StreamWaiter
// that releases them: verify calls it right after exporting its snapshot,
// so writers wait only for the catching up of what committed before the
// lock plus the export. Later calls (the recheck after --repair) release
// nothing: that pass compares under a fresh snapshot without holding
// writers, and may report rows changed meanwhile (run verify again).
// A stream retired by a cutover: nil waiter.
func (f *logicalFeed) settle(ctx context.Context, m *Migration, b *Build, lock shadow.LockOptions) (verify.StreamWaiter, func(), error) {
	env := f.env
	noop := func() {}
	retired, err := streamRetired(ctx, env, m.Names)
	if err != nil || retired {
		return nil, noop, err
	}
	cfg, err := streamConfig(ctx, env, m, b)
	if err != nil {
		return nil, noop, err
	}
	t0 := time.Now()
	release, err := stream.Settle(ctx, cfg, stream.SettleOptions{Lock: lock})
	if err != nil {
		var lag *stream.LagError
		if errors.As(err, &lag) {
			err = exitcode.With(exitcode.LockTimeout, err)
		}
		return nil, noop, fmt.Errorf("logical mode: bring green up to date before the snapshot: %w", err)
	}
	held := time.Now()
	first := true
	waiter := verify.StreamWaiterFunc(func(context.Context, string) error {
		if first {
			first = false
			release()
			env.Log.Debug().Str("migration", m.Row.Name).Float64("caught_up_ms", logx.Ms(held.Sub(t0))).Float64("writers_held_ms", logx.Ms(time.Since(held))).
				Msg("verify: the stream was settled for the snapshot")
		}
		return nil
	})
	return waiter, release, nil
}
