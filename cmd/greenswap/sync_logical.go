package main

import (
	"fmt"
	"io"
	"time"

	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/runner"
	"github.com/greenswap/greenswap/spec"
)

// syncLogicalHelp is the part of `greenswap sync --help` about mode: logical.
const syncLogicalHelp = `
In mode: logical, blue's changes reach green through a logical replication
slot instead of the forward trigger, so the application's writes pay no
trigger cost. The slot is created before the backfill; a streamer applies
the changes while the backfill runs. Once synced, sync without --watch
waits until green is current and returns: nothing applies blue's changes
until ` + "`greenswap sync -f FILE --watch`" + ` runs again, and the slot retains
WAL meanwhile (` + "`greenswap status`" + ` shows how much). --watch keeps streaming
until Ctrl-C, showing the lag in bytes and seconds, the apply rate and the
WAL the slot retains, and the backlog: WAL not applied to green yet, about how
far behind that is in time, whether it grows or shrinks and when it will have
caught up (--metrics-addr exports them as greenswap_stream_* and
greenswap_slot_wal_retained_bytes). A backlog that grows for longer than 30 s
is logged as a warning, once until it shrinks again: the stream cannot keep up
with the writes. verify, cutover and rollback can run meanwhile; cutover
refuses while the backlog is above its --max-stream-backlog.
cutover hands blue → green over to the sync triggers before the swap; the
slot is dropped then, and by rollback and finalize.
`

// syncStreamLine is the live display's line for the logical stream ("" in
// trigger mode).
func syncStreamLine(p runner.SyncProgress) string {
	s := p.Stream
	if s == nil {
		return ""
	}
	switch {
	case s.Retired:
		return "  stream    retired: blue → green runs by trigger since the cutover began"
	case !s.Exists:
		return fmt.Sprintf("  stream    no slot %s yet", s.Slot)
	}
	who := "not streaming: run sync --watch"
	switch {
	case s.Local:
		who = fmt.Sprintf("%s keys/s, %s keys applied", thousands(int64(s.KeysPerSec)), thousands(s.Keys))
	case s.Active:
		who = "streamed by another greenswap"
	}
	lag := fmt.Sprintf("lag %s", runner.HumanBytes(s.LagBytes))
	if s.Local {
		lag += fmt.Sprintf(" / %s", (time.Duration(s.LagSeconds * float64(time.Second))).Round(100*time.Millisecond))
	}
	return fmt.Sprintf("  stream    %s   %s   slot retains %s WAL", lag, who, runner.HumanBytes(s.RetainedBytes))
}

// syncStreamFields adds the logical stream's figures to a status line.
func syncStreamFields(ev *zerolog.Event, p runner.SyncProgress) *zerolog.Event {
	s := p.Stream
	if s == nil {
		return ev
	}
	ev = ev.Bool("stream_slot_exists", s.Exists).Bool("stream_active", s.Active).Bool("stream_retired", s.Retired).
		Int64("stream_lag_bytes", s.LagBytes).Int64("slot_retained_bytes", s.RetainedBytes)
	if s.Local {
		ev = ev.Float64("stream_lag_seconds", s.LagSeconds).Int64("stream_keys_per_sec", int64(s.KeysPerSec)).Int64("stream_keys_applied", s.Keys)
	}
	if b := p.StreamBacklog; b != nil {
		ev = ev.Int64("stream_backlog_bytes", b.Bytes).Str("stream_backlog_trend", string(b.Trend)).
			Int64("stream_backlog_growth_bytes_per_sec", int64(b.GrowthBytesPerSec)).Str("stream_catch_up", b.CatchUp())
		if b.Seconds != nil {
			ev = ev.Float64("stream_backlog_seconds", float64(int(*b.Seconds*10))/10)
		}
		if b.ETASeconds != nil {
			ev = ev.Float64("stream_catch_up_eta_seconds", float64(int(*b.ETASeconds*10))/10)
		}
	}
	return ev
}

// syncBacklogLine is the live display's line for the stream's backlog.
func syncBacklogLine(p runner.SyncProgress) string {
	if p.StreamBacklog == nil {
		return "  backlog   -"
	}
	return "  backlog   " + p.StreamBacklog.Summary()
}

// syncLogicalNote tells, after a logical-mode sync, what the stream did and
// that without --watch nothing applies blue's changes from now on.
func syncLogicalNote(out io.Writer, s *spec.Spec, stats *runner.SyncStats, watch bool) {
	if s.Mode != spec.ModeLogical {
		return
	}
	if st := stats.Stream; st != nil {
		fmt.Fprintf(out, "logical stream: %s transactions, %s keys applied (%s echoes of writes through green skipped), %d reconnects\n",
			thousands(st.Txns), thousands(st.Keys), thousands(st.Echoes), st.Reconnects)
	}
	if !watch {
		fmt.Fprintf(out, "note: mode logical: nothing applies blue's changes to green until `greenswap sync -f %s --watch` runs; the slot retains WAL meanwhile\n", fileOr(s.File))
	}
}

func fileOr(f string) string {
	if f == "" {
		return "FILE"
	}
	return f
}
