package runner

// status: where every migration stands. Read-only; it never creates the
// state schema (a database without one simply has no migrations).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/cutover"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// StatusSchemaVersion is the version of status's JSON document. Fields are
// only ever added; a rename or a removal bumps it.
const StatusSchemaVersion = 1

// StatusReport is every migration (or the one asked for).
type StatusReport struct {
	SchemaVersion int               `json:"schema_version"`
	Migrations    []MigrationStatus `json:"migrations"`
}

// MigrationStatus is one migration as status shows it.
type MigrationStatus struct {
	Name        string       `json:"name"`
	Table       string       `json:"table"`
	Mode        string       `json:"mode"`
	State       state.State  `json:"state"`
	Phase       string       `json:"phase"`
	PrimarySide string       `json:"primary_side"` // the side clients of the app name write to: blue or green
	Progress    Progress     `json:"progress"`
	Verify      VerifyInfo   `json:"verify"`
	Timestamps  Timestamps   `json:"timestamps"`
	LastEvent   *state.Event `json:"last_event,omitempty"`
	Slot        *SlotInfo    `json:"slot,omitempty"` // logical mode, once a slot is recorded
	// StreamBacklog is the logical stream's backlog, trend and catch-up ETA
	// (backlog.go), from two readings StatusOptions.Sample apart: present
	// while a slot exists and the stream is not retired.
	StreamBacklog *StreamBacklog `json:"stream_backlog,omitempty"`
	// Tables: a migration of several tables, each table's backfill in
	// dependency order (Progress holds the totals); absent for one table,
	// so a one-table migration's document is unchanged.
	Tables []TableProgress `json:"tables,omitempty"`
	// GuardWindow: cutover --guard is watching (cutover_guard.go).
	GuardWindow *GuardWindowStatus `json:"guard_window,omitempty"`
	// Shapes: which clients used the app name, blue and green of each
	// table over the sampling window, and each shape's share of the
	// writes (cutover.ShapeReport); present once green exists and until
	// finalize.
	Shapes *cutover.ShapeReport `json:"shapes,omitempty"`
	// ShapesUnavailable says why Shapes is absent where it would be there
	// (a role that cannot see other roles' sessions).
	ShapesUnavailable string `json:"shapes_unavailable,omitempty"`
	// NotValidForeignKeys are foreign keys a swap moved NOT VALID and a
	// greenswap killed before validating them left so (revalidate.go):
	// new rows are checked, the old ones never were. The next cutover,
	// rollback or finalize of the migration validates them.
	NotValidForeignKeys []cutover.PendingFK `json:"not_valid_foreign_keys,omitempty"`
}

// StatusOptions tune Status.
type StatusOptions struct {
	// Sample is the time between the two readings of each logical
	// migration's slot that give its backlog a rate (0: one reading, no
	// rate unless this process has sampled before; negative: none at all).
	// The CLI passes DefaultStatusSample.
	Sample time.Duration
	// ShapeWindow is how long the sessions on each migration's shapes are
	// sampled (0: Sample, one sample when that is not positive; negative:
	// not at all). ShapeEvery is the interval (default 100ms). The CLI
	// passes --sample.
	ShapeWindow, ShapeEvery time.Duration
}

// Progress is the backfill's.
type Progress struct {
	RowsCopied   int64   `json:"rows_copied"`
	RowsEstimate int64   `json:"rows_estimate"`
	Percent      float64 `json:"percent"` // 0–100; 100 once the backfill is done
	RowsPerSec   float64 `json:"rows_per_sec"`
	BatchSize    int     `json:"batch_size"`
	Throttle     string  `json:"throttle,omitempty"` // why the backfill is held back right now
	Paused       bool    `json:"paused"`
	Done         bool    `json:"done"`
	// ETASeconds is the remaining rows at the current rate (an estimate);
	// null when unknown.
	ETASeconds *float64 `json:"eta_seconds"`
}

// VerifyInfo is the last verify result.
type VerifyInfo struct {
	Run bool       `json:"run"`
	OK  *bool      `json:"ok"`
	At  *time.Time `json:"at,omitempty"`
}

// Timestamps of a migration.
type Timestamps struct {
	Created         time.Time  `json:"created"`
	StateChanged    time.Time  `json:"state_changed"`
	Updated         time.Time  `json:"updated"`
	BackfillStarted *time.Time `json:"backfill_started,omitempty"`
	BackfillDone    *time.Time `json:"backfill_done,omitempty"`
}

// SlotInfo is the migration's logical replication slot (trap 9: a slot
// retains WAL until it is dropped).
type SlotInfo struct {
	Name   string `json:"name"`
	Exists bool   `json:"exists"`
	Active bool   `json:"active"`
	// RetainedBytes is the WAL the slot holds back: current WAL position
	// minus the slot's restart_lsn.
	RetainedBytes     int64   `json:"retained_bytes"`
	RestartLSN        *string `json:"restart_lsn,omitempty"`
	ConfirmedFlushLSN *string `json:"confirmed_flush_lsn,omitempty"`
	WALStatus         *string `json:"wal_status,omitempty"` // reserved, extended, unreserved, lost
	// HandedOver: the slot is gone because a cutover handed blue → green
	// to the sync triggers and dropped it (trap 9), not lost.
	HandedOver bool `json:"handed_over,omitempty"`
}

// Status reports every migration, or only name when it is not "". A
// database without greenswap's state schema has no migrations; an unknown
// name is bad input (exit 2).
func Status(ctx context.Context, env *Env, name string, opts ...StatusOptions) (*StatusReport, error) {
	var opt StatusOptions
	if len(opts) > 0 {
		opt = opts[0]
	}
	rep := &StatusReport{SchemaVersion: StatusSchemaVersion, Migrations: []MigrationStatus{}}
	var rows []*state.Migration
	if name != "" {
		m, err := state.Get(ctx, env.Pool, name)
		if err != nil {
			return nil, err
		}
		rows = []*state.Migration{m}
	} else {
		var err error
		if rows, err = state.List(ctx, env.Pool); err != nil {
			return nil, err
		}
	}
	for _, m := range rows {
		st, err := migrationStatus(ctx, env, m)
		if err != nil {
			return nil, err
		}
		rep.Migrations = append(rep.Migrations, st)
	}
	if opt.Sample >= 0 {
		if err := statusBacklogs(ctx, env, rep, rows, opt.Sample); err != nil {
			return nil, err
		}
	}
	if err := statusShapes(ctx, env, rep, rows, opt); err != nil {
		return nil, err
	}
	return rep, nil
}

// statusShapes samples, in one watch, the sessions on the shapes of every
// migration whose green exists and that is not finalized, and gives each
// its part. Without the statistics of other roles' sessions nothing is
// sampled and each says why.
func statusShapes(ctx context.Context, env *Env, rep *StatusReport, rows []*state.Migration, opt StatusOptions) error {
	window := opt.ShapeWindow
	if window < 0 {
		return nil
	}
	if window == 0 {
		window = max(opt.Sample, 0) // 0: one sample
	}
	var members []cutover.ShapeMember
	tables := map[int][]string{}
	for i, m := range rows {
		if m.State != state.Syncing && m.State != state.Synced && m.State != state.CutOver {
			continue
		}
		for _, sm := range shapeMembers(m) {
			members = append(members, sm)
			tables[i] = append(tables[i], sm.Names.App.String())
		}
	}
	if len(members) == 0 {
		return nil
	}
	if err := shadow.RequireStatsVisibility(ctx, env.Pool, "status's shape telemetry"); err != nil {
		// The other figures stand; the shapes would be a lie by omission.
		for i := range tables {
			rep.Migrations[i].ShapesUnavailable = err.Error()
		}
		return nil
	}
	w, err := cutover.WatchShapes(ctx, env.Pool, members, cutover.OwnSessions(ctx, env.Pool), window, opt.ShapeEvery)
	if err != nil {
		return fmt.Errorf("sample the shapes: %w", err)
	}
	for i, t := range tables {
		r := w.Only(t).Report()
		rep.Migrations[i].Shapes = &r
	}
	return nil
}

// statusBacklogs fills in the backlog of each logical migration with a live
// stream: one reading each, then, if that gives no rate yet, one more each
// after sample (a single wait for all of them).
func statusBacklogs(ctx context.Context, env *Env, rep *StatusReport, rows []*state.Migration, sample time.Duration) error {
	type live struct {
		st   *MigrationStatus
		slot string
	}
	var todo []live
	for i, m := range rows {
		st := &rep.Migrations[i]
		if st.Slot == nil || !st.Slot.Exists || (m.State != state.Syncing && m.State != state.Synced) {
			continue
		}
		var stored spec.Spec
		if err := json.Unmarshal(m.Spec, &stored); err != nil {
			return fmt.Errorf("decode stored spec of %s: %w", m.Name, err)
		}
		if live, err := feedFor(env, spec.Mode(m.Mode)).streaming(ctx, shadow.NamesFor(stored.Name, stored.AppTable())); err != nil {
			return err
		} else if !live {
			continue
		}
		todo = append(todo, live{st, st.Slot.Name})
	}
	again := false
	for _, l := range todo {
		b, err := sampleBacklog(ctx, env, l.st.Name, l.slot)
		if err != nil {
			return err
		}
		l.st.StreamBacklog = b
		again = again || (b != nil && b.Trend == TrendUnknown)
	}
	if !again || sample <= 0 {
		return nil
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(sample):
	}
	for _, l := range todo {
		b, err := sampleBacklog(ctx, env, l.st.Name, l.slot)
		if err != nil {
			return err
		}
		l.st.StreamBacklog = b
	}
	return nil
}

func migrationStatus(ctx context.Context, env *Env, m *state.Migration) (MigrationStatus, error) {
	st := MigrationStatus{
		Name: m.Name, Table: m.AppTable, Mode: m.Mode, State: m.State, Phase: m.Phase, PrimarySide: m.PrimarySide,
		Progress: Progress{
			RowsCopied: m.RowsCopied, RowsEstimate: m.RowsEstimate, RowsPerSec: m.RowsPerSec,
			BatchSize: m.BatchSize, Throttle: m.Throttle, Paused: m.Paused, Done: m.BackfillDoneAt != nil,
		},
		Verify: VerifyInfo{Run: m.VerifiedAt != nil, OK: m.VerifyOK, At: m.VerifiedAt},
		Timestamps: Timestamps{Created: m.CreatedAt, StateChanged: m.StateChangedAt, Updated: m.UpdatedAt,
			BackfillStarted: m.BackfillStartedAt, BackfillDone: m.BackfillDoneAt},
	}
	p := &st.Progress
	switch {
	case p.Done:
		p.Percent = 100
	case p.RowsEstimate > 0:
		p.Percent = min(100, 100*float64(p.RowsCopied)/float64(p.RowsEstimate))
	}
	if !p.Done && p.RowsPerSec > 0 && p.RowsEstimate > p.RowsCopied && m.State == state.Syncing {
		eta := float64(p.RowsEstimate-p.RowsCopied) / p.RowsPerSec
		p.ETASeconds = &eta
	}
	if sp := storedSpec(m); sp != nil && sp.MultiTable() {
		var err error
		if st.Tables, err = tablesProgress(&Migration{Row: m, Spec: sp}); err != nil {
			return st, err
		}
	}
	evs, err := state.Events(ctx, env.Pool, m.Name, 1)
	if err != nil {
		return st, err
	}
	if len(evs) > 0 {
		st.LastEvent = &evs[0]
		st.GuardWindow = guardWindowStatus(st.LastEvent, m.State, time.Now())
		if st.GuardWindow != nil {
			alive, err := state.GuardAlive(ctx, env.Pool, m.Name)
			if err != nil {
				return st, err
			}
			st.GuardWindow.Gone = !alive
		}
	}
	if st.NotValidForeignKeys, err = notValidFKs(ctx, env.Pool, m.Name); err != nil {
		return st, err
	}
	if m.SlotName != nil && *m.SlotName != "" {
		if st.Slot, err = slotInfo(ctx, env, *m.SlotName); err != nil {
			return st, err
		}
		// A slot a lost one (syncing, synced with the stream on) is an
		// alarm; one the cutover's handover dropped is not (break7 10b).
		if !st.Slot.Exists && m.State == state.Finalized {
			st.Slot.HandedOver = true
		} else if !st.Slot.Exists && (m.State == state.CutOver || m.State == state.Synced) {
			if sp := storedSpec(m); sp != nil {
				if st.Slot.HandedOver, err = streamRetired(ctx, env, namesOf(sp)); err != nil {
					return st, err
				}
			}
		}
	}
	return st, nil
}

func slotInfo(ctx context.Context, env *Env, name string) (*SlotInfo, error) {
	s := &SlotInfo{Name: name}
	err := env.Pool.QueryRow(ctx, `
SELECT active, restart_lsn::text, confirmed_flush_lsn::text, wal_status,
       coalesce(pg_catalog.pg_wal_lsn_diff(CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END,
                                restart_lsn), 0)::int8
  FROM pg_replication_slots WHERE slot_name = $1`, name).Scan(
		&s.Active, &s.RestartLSN, &s.ConfirmedFlushLSN, &s.WALStatus, &s.RetainedBytes)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, nil
	}
	if err != nil {
		return nil, err
	}
	s.Exists = true
	return s, nil
}

// shapeMembers are migration m's tables to sample the shapes of.
func shapeMembers(m *state.Migration) []cutover.ShapeMember {
	sp := storedSpec(m)
	if sp == nil {
		return nil
	}
	var out []cutover.ShapeMember
	for _, n := range MemberNames(sp) {
		out = append(out, cutover.ShapeMember{Names: n, CutOver: m.State == state.CutOver})
	}
	return out
}

// ReadShapes samples the sessions on migration name's shapes for window
// (0: one sample), as status does: nil while there is no green to sample
// (planned, finalized). The metrics endpoint takes one sample per scrape.
func ReadShapes(ctx context.Context, env *Env, name string, window, every time.Duration) (*cutover.ShapeWatch, error) {
	m, err := state.Get(ctx, env.Pool, name)
	if err != nil {
		return nil, err
	}
	if m.State != state.Syncing && m.State != state.Synced && m.State != state.CutOver {
		return nil, nil
	}
	members := shapeMembers(m)
	if len(members) == 0 {
		return nil, nil
	}
	if err := shadow.RequireStatsVisibility(ctx, env.Pool, "the shape telemetry"); err != nil {
		return nil, err
	}
	return cutover.WatchShapes(ctx, env.Pool, members, cutover.OwnSessions(ctx, env.Pool), window, every)
}
