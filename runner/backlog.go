package runner

// The logical stream's backlog: how much WAL the slot's consumer has not
// confirmed yet (green is current only up to its confirmed position), how
// far behind that is in time, whether it grows or shrinks, and when it
// will have caught up. A single reading gives the bytes; everything else
// needs a rate, so each reading is kept as a sample in a window of this
// process (Env.backlogs): `sync`, `sync --watch` and the metrics endpoint
// read the figures every second or scrape and so fill it as they run;
// `status`, a process of its own, takes two readings over a short interval
// (StatusOptions.Sample). Nothing is written to the database for this.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	gosync "sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/spec"
)

// DefaultBacklogWindow is Env.BacklogWindow's default: how long the
// backlog must grow before sync and sync --watch warn, and the samples
// kept (the rates run over its last third).
const DefaultBacklogWindow = 30 * time.Second

// DefaultMaxStreamBacklog is CutoverOptions.MaxStreamBacklog's default.
// Cutover drains the backlog itself (stream.Retire) before and after the
// switch to triggers. Measured on the 2-core development machine under
// pgbench with 8 clients (about 0.35 MB/s of WAL), a stream caught up on
// 16 MB in about 15 s, some 1.4 MB/s of WAL: this much then takes about a
// minute, inside Retire's 5-minute bound with room for heavier writes.
const DefaultMaxStreamBacklog int64 = 64 << 20

// DefaultStatusSample is how long `greenswap status` waits between its two
// readings of a logical migration's slot: the server learns the stream's
// position from a status update at least once a second, so a shorter
// interval could see no progress where there is some.
const DefaultStatusSample = 2 * time.Second

const (
	// The rates (and so the trend and the ETA) run over the last
	// 1/backlogRateShare of the window; the warning needs growth for the
	// whole window.
	backlogRateShare = 3
	// backlogMinSpan is the least time between the first and the last
	// sample for a rate: below it the trend is "unknown".
	backlogMinSpan = time.Second
	// A backlog of at most this much (or of backlogCaughtUpWAL of the
	// current WAL rate, if more) with a streamer attached is caught up:
	// the server only learns the streamer's position once per status
	// interval, so a stream that keeps up still trails by that much.
	backlogCaughtUpBytes = 1 << 20
	backlogCaughtUpWAL   = 2 * time.Second
	// A change of the backlog slower than this (or than backlogSteadyShare
	// of the WAL rate, if more) is "steady": WAL from checkpoints and other
	// databases makes an idle backlog wobble.
	backlogSteadyBytesPerSec = 16 << 10
	backlogSteadyShare       = 0.02
)

// BacklogTrend is which way the backlog moves.
type BacklogTrend string

const (
	TrendUnknown   BacklogTrend = "unknown"   // one sample, or samples too close together
	TrendCaughtUp  BacklogTrend = "caught_up" // a streamer is attached and the backlog is what a status interval accounts for
	TrendShrinking BacklogTrend = "shrinking"
	TrendSteady    BacklogTrend = "steady" // neither grows nor shrinks noticeably
	TrendGrowing   BacklogTrend = "growing"
)

// StreamBacklog is the logical stream's backlog as status, the progress
// lines and the metrics show it. Rates are in WAL bytes per second over
// the samples of the last third of the window (WindowSeconds says how long
// that was; Samples how many there were).
type StreamBacklog struct {
	// Bytes is the WAL between the stream's confirmed position (green is
	// current up to it) and the server's WAL insert position.
	Bytes int64 `json:"bytes"`
	// Seconds estimates how far behind green is in time: since the server's
	// WAL went past the stream's confirmed position, from the WAL positions
	// sampled (before the oldest sample, extrapolated at their WAL rate);
	// null when unknown.
	Seconds *float64     `json:"seconds"`
	Trend   BacklogTrend `json:"trend"`
	// GrowthBytesPerSec is the backlog's change: WALBytesPerSec −
	// ApplyBytesPerSec; positive while it grows.
	GrowthBytesPerSec float64 `json:"growth_bytes_per_sec"`
	WALBytesPerSec    float64 `json:"wal_bytes_per_sec"`   // the server's WAL rate
	ApplyBytesPerSec  float64 `json:"apply_bytes_per_sec"` // how fast the confirmed position advances
	// ETASeconds is when the backlog will have caught up at these rates:
	// 0 when it has, null when it will not (Never) or the trend is unknown.
	ETASeconds *float64 `json:"eta_seconds"`
	// Never: at these rates the stream does not catch up (the backlog grows
	// or stands still above the caught-up bound).
	Never         bool    `json:"never"`
	WindowSeconds float64 `json:"window_seconds"`
	Samples       int     `json:"samples"`
	// Streaming: a walsender streamed the slot at the last sample.
	Streaming bool `json:"streaming"`
	// GrowingSince is when the current episode of growth began (in this
	// process's samples); absent when it does not grow.
	GrowingSince *time.Time `json:"growing_since,omitempty"`
}

// CatchUp is the ETA as a person reads it.
func (b *StreamBacklog) CatchUp() string {
	switch {
	case b == nil || b.Trend == TrendUnknown:
		return "unknown (too few samples)"
	case b.Trend == TrendCaughtUp:
		return "caught up"
	case b.Never && !b.Streaming:
		return "never: nothing streams the slot (run greenswap sync -f FILE --watch)"
	case b.Never:
		return "never at this rate"
	case b.ETASeconds != nil:
		return "in " + secondsText(*b.ETASeconds)
	}
	return "unknown"
}

// Summary is the backlog in one phrase: "270.0 MB (~34s behind), growing
// +2.7 MB/s, catch-up never at this rate".
func (b *StreamBacklog) Summary() string {
	if b == nil {
		return "unknown"
	}
	s := HumanBytes(b.Bytes)
	if b.Seconds != nil {
		s += " (~" + secondsText(*b.Seconds) + " behind)"
	}
	switch b.Trend {
	case TrendGrowing, TrendShrinking, TrendSteady:
		sign := "+"
		if b.GrowthBytesPerSec < 0 {
			sign = "-"
		}
		s += fmt.Sprintf(", %s %s%s/s", b.Trend, sign, HumanBytes(int64(math.Abs(b.GrowthBytesPerSec))))
	case TrendCaughtUp:
		s += ", caught up"
	}
	if b.Trend != TrendCaughtUp {
		s += ", catch-up " + b.CatchUp()
	}
	return s
}

func secondsText(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Second).String()
}

// backlogSample is one reading of the slot against the server's WAL.
type backlogSample struct {
	at        time.Time
	wal       pglogrepl.LSN // the WAL insert position
	confirmed pglogrepl.LSN // the slot's confirmed_flush_lsn
	active    bool
}

func (s backlogSample) bytes() int64 { return max(int64(s.wal)-int64(s.confirmed), 0) }

// readBacklogSample reads the slot of this database named slot; ok is
// false when there is no such slot (or it has never confirmed anything).
func readBacklogSample(ctx context.Context, q db.Querier, slot string) (s backlogSample, ok bool, err error) {
	var confirmed *string
	var wal string
	t0 := time.Now()
	// The insert position, not the write position: a committed
	// asynchronous transaction can end beyond the latter (see
	// stream.CurrentLSN). A standby has neither; its replay position is
	// what it has.
	err = q.QueryRow(ctx, `
SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_insert_lsn() END::text,
       confirmed_flush_lsn::text, active
  FROM pg_replication_slots WHERE slot_name = $1 AND database = pg_catalog.current_database()`, slot).Scan(&wal, &confirmed, &s.active)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, false, nil
	}
	if err != nil {
		return s, false, fmt.Errorf("read the backlog of replication slot %s: %w", slot, err)
	}
	s.at = t0.Add(time.Since(t0) / 2)
	if s.wal, err = pglogrepl.ParseLSN(wal); err != nil {
		return s, false, err
	}
	if confirmed == nil {
		return s, false, nil
	}
	if s.confirmed, err = pglogrepl.ParseLSN(*confirmed); err != nil {
		return s, false, err
	}
	return s, true, nil
}

// backlogWindow is one migration's samples of the last span (plus the
// newest older one, the window's start) and its episode of growth.
type backlogWindow struct {
	span time.Duration

	mu      gosync.Mutex
	samples []backlogSample
	// growingSince is the first sample of the current episode of growth;
	// zero outside one. An episode ends when the backlog shrinks or has
	// caught up (a steady or unknown reading does not end it).
	growingSince time.Time
	warned       bool // the episode's warning was handed out
	ended        bool // a warned episode ended and that was not handed out yet
}

// backlogWindow returns the window of migration name in this Env.
func (e *Env) backlogWindow(name string) *backlogWindow {
	span := e.BacklogWindow
	if span <= 0 {
		span = DefaultBacklogWindow
	}
	v, _ := e.backlogs.LoadOrStore(name, &backlogWindow{span: span})
	return v.(*backlogWindow)
}

// add records s (kept in time order: several readers sample at once) and
// returns the estimate that includes it.
func (w *backlogWindow) add(s backlogSample) *StreamBacklog {
	w.mu.Lock()
	defer w.mu.Unlock()
	i, _ := slices.BinarySearchFunc(w.samples, s.at, func(a backlogSample, t time.Time) int { return a.at.Compare(t) })
	w.samples = slices.Insert(w.samples, i, s)
	newest := w.samples[len(w.samples)-1].at
	drop := 0
	for drop < len(w.samples)-1 && newest.Sub(w.samples[drop+1].at) >= w.span {
		drop++
	}
	w.samples = w.samples[drop:]
	b := estimateBacklog(w.samples, max(w.span/backlogRateShare, 2*backlogMinSpan))
	switch b.Trend {
	case TrendGrowing:
		if w.growingSince.IsZero() {
			w.growingSince = newest
		}
	case TrendShrinking, TrendCaughtUp:
		if !w.growingSince.IsZero() && w.warned {
			w.ended = true
		}
		w.growingSince, w.warned = time.Time{}, false
	}
	if !w.growingSince.IsZero() {
		since := w.growingSince
		b.GrowingSince = &since
	}
	return b
}

// warning says, once per episode, that the backlog has grown for longer
// than the window (warn), or that an episode it warned about has ended
// (recovered).
func (w *backlogWindow) warning() (warn, recovered bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ended {
		w.ended = false
		return false, true
	}
	if w.growingSince.IsZero() || w.warned || len(w.samples) == 0 {
		return false, false
	}
	if w.samples[len(w.samples)-1].at.Sub(w.growingSince) < w.span {
		return false, false
	}
	w.warned = true
	return true, false
}

// estimateBacklog computes the figures from samples in time order (at
// least one). The rates run over the last rateSpan (from the newest sample
// at least that old, else the oldest), so that the trend follows what the
// stream does now: a burst the stream is draining reads as shrinking at
// once, not as growth for a whole window.
func estimateBacklog(samples []backlogSample, rateSpan time.Duration) *StreamBacklog {
	last := samples[len(samples)-1]
	b := &StreamBacklog{Bytes: last.bytes(), Trend: TrendUnknown, Samples: len(samples), Streaming: last.active}
	from := 0
	for from+1 < len(samples) && last.at.Sub(samples[from+1].at) >= rateSpan {
		from++
	}
	first := samples[from]
	b.Samples = len(samples) - from
	span := last.at.Sub(first.at)
	b.WindowSeconds = span.Seconds()
	if span < backlogMinSpan {
		return b
	}
	secs := span.Seconds()
	b.WALBytesPerSec = float64(int64(last.wal)-int64(first.wal)) / secs
	b.ApplyBytesPerSec = float64(int64(last.confirmed)-int64(first.confirmed)) / secs
	b.GrowthBytesPerSec = float64(last.bytes()-first.bytes()) / secs
	b.Seconds = backlogAge(samples)

	caughtUp := max(float64(backlogCaughtUpBytes), b.WALBytesPerSec*backlogCaughtUpWAL.Seconds())
	steady := max(float64(backlogSteadyBytesPerSec), backlogSteadyShare*b.WALBytesPerSec)
	switch {
	case last.active && float64(b.Bytes) <= caughtUp:
		b.Trend = TrendCaughtUp
	case b.GrowthBytesPerSec > steady:
		b.Trend = TrendGrowing
	case b.GrowthBytesPerSec < -steady && last.active:
		// Without a streamer attached now nothing shrinks it, whatever
		// one did earlier in the window.
		b.Trend = TrendShrinking
	default:
		b.Trend = TrendSteady
	}
	switch b.Trend {
	case TrendCaughtUp:
		zero := 0.0
		b.ETASeconds = &zero
	case TrendShrinking:
		eta := float64(b.Bytes) / -b.GrowthBytesPerSec
		b.ETASeconds = &eta
	default:
		b.Never = true
	}
	return b
}

// backlogAge estimates how long green has been behind: since the WAL first
// went past the newest sample's confirmed position. Within the samples that
// is the first sample beyond it (so at least this long, to within one
// sampling interval: an idle WAL does not make a small backlog look old);
// before the oldest sample it is extrapolated at the WAL rate over all the
// samples, when they span at least 2 s (a shorter span gives absurd ages
// from a moment's lull). nil when unknown.
func backlogAge(samples []backlogSample) *float64 {
	last := samples[len(samples)-1]
	c := last.confirmed
	age := func(t time.Time) *float64 {
		a := max(last.at.Sub(t).Seconds(), 0)
		return &a
	}
	if c >= last.wal {
		return age(last.at)
	}
	first := samples[0]
	if c >= first.wal {
		i, _ := slices.BinarySearchFunc(samples, c, func(s backlogSample, c pglogrepl.LSN) int {
			if s.wal <= c {
				return -1
			}
			return 1
		})
		return age(samples[i].at)
	}
	span := last.at.Sub(first.at)
	if span < 2*backlogMinSpan || last.wal <= first.wal {
		return nil
	}
	rate := float64(last.wal-first.wal) / span.Seconds()
	back := float64(first.wal-c) / rate
	return age(first.at.Add(-time.Duration(back * float64(time.Second))))
}

// sampleBacklog takes a sample of migration name's slot into this Env's
// window and returns the estimate; nil when the slot does not exist.
func sampleBacklog(ctx context.Context, env *Env, name, slot string) (*StreamBacklog, error) {
	s, ok, err := readBacklogSample(ctx, env.Pool, slot)
	if err != nil || !ok {
		return nil, err
	}
	return env.backlogWindow(name).add(s), nil
}

// logBacklogWarning logs, once per episode, that the stream of p's
// migration cannot keep up (its backlog has grown for longer than the
// window), and once when such an episode ends.
func logBacklogWarning(env *Env, p *SyncProgress) {
	b := p.StreamBacklog
	if b == nil {
		return
	}
	name := p.Migration
	warn, recovered := env.backlogWindow(name).warning()
	switch {
	case warn:
		what := "reduce the write load on the table; if it never catches up, roll the migration back and sync it in mode: trigger"
		if p.State == state.Syncing && !p.Done {
			what = "pause the backfill (greenswap pause " + name + "), whose WAL the stream reads too, or " + what
		}
		if !b.Streaming {
			what = "nothing streams the slot: run `greenswap sync -f FILE --watch`"
		}
		since := ""
		if b.GrowingSince != nil {
			since = " since " + b.GrowingSince.Format(time.TimeOnly)
		}
		env.Log.Warn().Str("migration", name).Int64("backlog_bytes", b.Bytes).Float64("growth_bytes_per_sec", b.GrowthBytesPerSec).
			Float64("wal_bytes_per_sec", b.WALBytesPerSec).Float64("apply_bytes_per_sec", b.ApplyBytesPerSec).
			Msgf("the logical stream cannot keep up: its backlog has grown%s to %s (the server writes %s/s of WAL, the stream gets through %s/s), "+
				"so green falls further behind and cutover refuses above --max-stream-backlog: %s",
				since, HumanBytes(b.Bytes), HumanBytes(int64(b.WALBytesPerSec)), HumanBytes(int64(max(b.ApplyBytesPerSec, 0))), what)
	case recovered:
		env.Log.Info().Str("migration", name).Int64("backlog_bytes", b.Bytes).
			Msgf("the logical stream keeps up again: backlog %s", b.Summary())
	}
}

// BacklogError: cutover refused because the logical stream's backlog is
// above the bound (exit 2, nothing changed).
type BacklogError struct {
	Migration string
	Backlog   StreamBacklog
	Bound     int64 // bytes
}

func (e *BacklogError) Error() string {
	return fmt.Sprintf("cutover of %s refused: the backlog of its logical stream (WAL not applied to green yet: %s) is above "+
		"--max-stream-backlog %s, so handing blue → green over to the triggers would take too long; run `greenswap sync -f FILE --watch` "+
		"until `greenswap status %s` shows the backlog below the bound, or raise --max-stream-backlog (nothing was changed)",
		e.Migration, e.Backlog.Summary(), HumanBytes(e.Bound), e.Migration)
}

// ExitCode: the migration is not ready for cutover, like one that is not
// synced or not verified.
func (e *BacklogError) ExitCode() exitcode.Code { return exitcode.BadInput }

// backlogRefusalSample is how long cutover waits for a second reading
// before it refuses, so that its message can say whether the backlog grows.
const backlogRefusalSample = 1500 * time.Millisecond

// checkStreamBacklog refuses a cutover of a logical migration while the
// stream's backlog exceeds bound bytes (0: DefaultMaxStreamBacklog;
// negative: no bound). It only reads. A migration in trigger mode, one
// whose stream is already retired (the forward triggers are on: what is
// left to drain is bounded), or one without a slot passes; cutover's
// retirement then decides.
func checkStreamBacklog(ctx context.Context, env *Env, m *Migration, bound int64) error {
	if bound == 0 {
		bound = DefaultMaxStreamBacklog
	}
	if bound < 0 || spec.Mode(m.Row.Mode) != spec.ModeLogical {
		return nil
	}
	if retired, err := streamRetired(ctx, env, m.Names); err != nil || retired {
		return err
	}
	b, err := sampleBacklog(ctx, env, m.Row.Name, m.Names.Slot)
	if err != nil || b == nil || b.Bytes <= bound {
		return err
	}
	if b.Trend == TrendUnknown {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backlogRefusalSample):
		}
		if again, err := sampleBacklog(ctx, env, m.Row.Name, m.Names.Slot); err != nil {
			return err
		} else if again != nil {
			b = again
		}
		if b.Bytes <= bound {
			return nil
		}
	}
	return &BacklogError{Migration: m.Row.Name, Backlog: *b, Bound: bound}
}
