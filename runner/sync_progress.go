package runner

import (
	"context"
	"time"

	"github.com/greenswap/greenswap/internal/state"
	gssync "github.com/greenswap/greenswap/sync"
)

// SyncProgress is where a sync stands, as recorded in the migrations row
// (so any session can read it) plus green's change counters.
type SyncProgress struct {
	Migration    string        `json:"migration"`
	AppTable     string        `json:"app_table"`
	State        state.State   `json:"state"`
	Phase        string        `json:"phase"`
	RowsCopied   int64         `json:"rows_copied"`
	RowsEstimate int64         `json:"rows_estimate"` // at least RowsCopied
	Percent      float64       `json:"percent"`       // of the backfill; 100 once it is done
	RowsPerSec   float64       `json:"rows_per_sec"`
	ETA          time.Duration `json:"eta"` // 0 when unknown or done
	BatchSize    int           `json:"batch_size"`
	Throttle     string        `json:"throttle,omitempty"`
	Paused       bool          `json:"paused"`
	// Captured estimates the changes the sync triggers have applied to
	// green: its insert+update+delete counters minus the backfill's rows.
	Captured    int64         `json:"captured"`
	BackfillFor time.Duration `json:"backfill_for"` // since the backfill started (to its end once done)
	Done        bool          `json:"backfill_done"`

	// Tables: a migration of several tables, each table's backfill in
	// dependency order (the totals are the fields above); absent for one.
	Tables []TableProgress `json:"tables,omitempty"`

	Stream *StreamProgress `json:"stream,omitempty"` // logical mode (feed_logical.go)
	// StreamBacklog is the logical stream's backlog, its trend and catch-up
	// ETA (backlog.go), from the samples this process took: absent in
	// trigger mode, without a slot, and once the stream is retired.
	StreamBacklog *StreamBacklog `json:"stream_backlog,omitempty"`
}

// TableProgress is one table's backfill in a migration of several tables.
type TableProgress struct {
	Table        string  `json:"table"`
	RowsCopied   int64   `json:"rows_copied"`
	RowsEstimate int64   `json:"rows_estimate"` // at least RowsCopied
	Percent      float64 `json:"percent"`
	RowsPerSec   float64 `json:"rows_per_sec"`
	Done         bool    `json:"backfill_done"`
	Copying      bool    `json:"copying"` // the table the backfill is copying now
}

// tablesProgress reads each member's figures, in dependency order; the
// first not done is the one copying while the backfill runs.
func tablesProgress(m *Migration) ([]TableProgress, error) {
	recorded, err := m.Row.Tables()
	if err != nil {
		return nil, err
	}
	var out []TableProgress
	copying := m.Row.State == state.Syncing && m.Row.Phase == PhaseBackfill
	for _, n := range MemberNames(m.Spec) {
		rp := recorded[n.App.String()]
		tp := TableProgress{Table: n.App.String(), RowsCopied: rp.RowsCopied, RowsEstimate: max(rp.RowsEstimate, rp.RowsCopied),
			Done: rp.Done || (m.Row.State != state.Planned && m.Row.State != state.Syncing)}
		switch {
		case tp.Done:
			tp.Percent = 100
		case tp.RowsEstimate > 0:
			tp.Percent = 100 * float64(tp.RowsCopied) / float64(tp.RowsEstimate)
		}
		if !tp.Done && copying {
			tp.Copying, tp.RowsPerSec, copying = true, rp.RowsPerSec, false
		}
		out = append(out, tp)
	}
	return out, nil
}

// ReadSyncProgress reads migration name's figures.
func ReadSyncProgress(ctx context.Context, env *Env, name string) (*SyncProgress, error) {
	m, err := env.LoadMigration(ctx, name)
	if err != nil {
		return nil, err
	}
	row := m.Row
	p := &SyncProgress{
		Migration: row.Name, AppTable: row.AppTable, State: row.State, Phase: row.Phase,
		RowsCopied: row.RowsCopied, RowsEstimate: max(row.RowsEstimate, row.RowsCopied),
		RowsPerSec: row.RowsPerSec, BatchSize: row.BatchSize, Throttle: row.Throttle, Paused: row.Paused,
		Done: row.BackfillDoneAt != nil,
	}
	switch {
	case p.Done || (row.State != state.Planned && row.State != state.Syncing):
		p.Percent = 100
	case p.RowsEstimate > 0:
		p.Percent = 100 * float64(p.RowsCopied) / float64(p.RowsEstimate)
		if p.RowsPerSec > 0 {
			p.ETA = time.Duration(float64(p.RowsEstimate-p.RowsCopied) / p.RowsPerSec * float64(time.Second)).Round(time.Second)
		}
	}
	if row.BackfillStartedAt != nil {
		end := time.Now()
		if row.BackfillDoneAt != nil {
			end = *row.BackfillDoneAt
		}
		p.BackfillFor = end.Sub(*row.BackfillStartedAt)
	}
	if row.State != state.Planned && row.State != state.RolledBack {
		var all int64
		for _, n := range MemberNames(m.Spec) {
			if ch, err := gssync.GreenChanges(ctx, env.Pool, n); err == nil {
				all += ch
			}
		}
		p.Captured = max(all-row.RowsCopied, 0)
	}
	if m.Spec.MultiTable() {
		if p.Tables, err = tablesProgress(m); err != nil {
			return nil, err
		}
	}
	if p.Stream, err = env.feedOf(m).progress(ctx, m); err != nil {
		return nil, err
	}
	if p.Stream != nil && p.Stream.Exists && !p.Stream.Retired {
		if p.StreamBacklog, err = sampleBacklog(ctx, env, row.Name, m.Names.Slot); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// startProgress calls opts.Progress every ProgressEvery until the returned
// stop is called (idempotent; it waits for the reporter to end).
func (r *syncRun) startProgress(ctx context.Context) (stop func()) {
	if r.opts.Progress == nil {
		return func() {}
	}
	every := r.opts.ProgressEvery
	if every <= 0 {
		every = time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				r.report(ctx)
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// report hands the current figures to opts.Progress (errors are skipped:
// progress is best effort).
func (r *syncRun) report(ctx context.Context) {
	if r.opts.Progress == nil {
		return
	}
	if p, err := ReadSyncProgress(ctx, r.env, r.spec.Name); err == nil {
		logBacklogWarning(r.env, p)
		r.opts.Progress(*p)
	}
}

// WatchSync calls fn with migration name's figures every `every` until ctx
// ends, then returns nil: watching is not an operation that can fail half
// way. It takes no lock, so verify and cutover can run meanwhile.
func WatchSync(ctx context.Context, env *Env, name string, every time.Duration, fn func(SyncProgress)) error {
	if every <= 0 {
		every = time.Second
	}
	// The stream's backlog growing for longer than a window is logged once
	// per episode, whoever streams.
	show := fn
	fn = func(p SyncProgress) {
		logBacklogWarning(env, &p)
		show(p)
	}
	// The feed's own work while watching: the logical one streams blue's
	// changes to green (feed_logical.go).
	if m, err := env.LoadMigration(ctx, name); err == nil {
		if handled, err := env.feedOf(m).watch(ctx, m, every, fn); handled || err != nil {
			return err
		}
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if p, err := ReadSyncProgress(ctx, env, name); err == nil {
			fn(*p)
		} else if ctx.Err() == nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
