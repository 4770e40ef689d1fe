package state

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/greenswap/greenswap/internal/db"
)

// The typed setters below are how the runner writes the migrations row:
// each names what a step records, so a misspelt column or a value of the
// wrong type is a compile error rather than an UPDATE that fails (or, for
// a jsonb column, succeeds with the wrong JSON) at run time. Each runs
// through q, so the caller makes it part of its step's transaction. Update
// stays for tests and tools that set up a row by hand.

// SetSpec replaces the stored spec and app table of a migration that has
// not started (planned): the file rules until sync adopts the table.
func SetSpec(ctx context.Context, q db.Querier, name string, spec any, appTable string) error {
	return Update(ctx, q, name, map[string]any{"spec": spec, "app_table": appTable})
}

// SetPhase records the next sync phase to run.
func SetPhase(ctx context.Context, q db.Querier, name, phase string) error {
	return Update(ctx, q, name, map[string]any{"phase": phase})
}

// SetRowsEstimate records the next phase and the backfill's row estimate.
func SetRowsEstimate(ctx context.Context, q db.Querier, name, phase string, estimate int64) error {
	return Update(ctx, q, name, map[string]any{"phase": phase, "rows_estimate": estimate})
}

// StartBackfill rewinds the backfill to its start, with phase next: cursor,
// counters and the indexes built are cleared, the start time set. With
// dropSlot the logical stream's slot and confirmed position are forgotten
// too, and the backfill's end (a backfill started over after its slot was
// lost).
func StartBackfill(ctx context.Context, q db.Querier, name, next string, estimate int64, dropSlot bool) error {
	cols := map[string]any{
		"phase": next, "backfill_started_at": time.Now(), "cursor": nil, "rows_copied": 0,
		"batch_size": 0, "rows_per_sec": 0, "indexes_built": map[string]string{},
	}
	if estimate >= 0 {
		cols["rows_estimate"] = estimate
	}
	if dropSlot {
		cols["backfill_done_at"], cols["slot_name"], cols["confirmed_lsn"] = nil, nil, nil
	}
	return Update(ctx, q, name, cols)
}

// BackfillCheckpoint is what one committed backfill batch records.
type BackfillCheckpoint struct {
	Cursor []string
	// Ranges, when not nil, is a parallel copy's split, stored in the
	// cursor column in Cursor's place as {"ranges": Ranges} (see
	// SetRangeCheckpoint); any JSON-encodable value.
	Ranges     any
	RowsCopied int64
	BatchSize  int
	RowsPerSec float64
	// Done: the batch was the last one; the phase moves to Next, the
	// backfill's end is stamped and its throttle reason cleared.
	Done bool
	Next string
}

// SetCheckpoint records a backfill batch, in that batch's transaction.
func SetCheckpoint(ctx context.Context, q db.Querier, name string, cp BackfillCheckpoint) error {
	cols := map[string]any{"cursor": cp.Cursor, "rows_copied": cp.RowsCopied,
		"batch_size": cp.BatchSize, "rows_per_sec": cp.RowsPerSec}
	if cp.Ranges != nil {
		cols["cursor"] = map[string]any{"ranges": cp.Ranges}
	}
	if cp.Done {
		cols["phase"], cols["backfill_done_at"], cols["throttle"] = cp.Next, time.Now(), ""
	}
	return Update(ctx, q, name, cols)
}

// SetRangeCheckpoint records one batch of a parallel copy, in that
// batch's transaction: element i of the stored ranges (SetCheckpoint with
// Ranges wrote them) becomes rng, and rows_copied grows by added. Each
// worker writes only its own element, and the UPDATE computes both from
// the row as the last committed checkpoint left it (under READ COMMITTED
// an UPDATE that waited for another worker's re-reads the newest row), so
// workers committing in any order lose nothing.
func SetRangeCheckpoint(ctx context.Context, q db.Querier, name string, i int, rng any, added int64, batchSize int, rowsPerSec float64) error {
	js, err := json.Marshal(rng)
	if err != nil {
		return fmt.Errorf("encode backfill range %d of %s: %w", i, name, err)
	}
	tag, err := q.Exec(ctx, `UPDATE greenswap.migrations
		SET cursor = pg_catalog.jsonb_set(cursor, ARRAY['ranges', $2::int::text], $3::jsonb, false),
		    rows_copied = rows_copied + $4::bigint, batch_size = $5::int, rows_per_sec = $6::float8,
		    updated_at = pg_catalog.now()
		WHERE name = $1 AND pg_catalog.jsonb_typeof(cursor -> 'ranges') = 'array'
		  AND pg_catalog.jsonb_array_length(cursor -> 'ranges') > $2::int`,
		name, i, string(js), added, batchSize, rowsPerSec)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("backfill range %d of %s: the migration records no such range (the copy was restarted meanwhile?)", i, name)
	}
	return nil
}

// SetThrottle records why the backfill is held ("" once it runs again);
// a held backfill copies nothing, so its rate reads 0.
func SetThrottle(ctx context.Context, q db.Querier, name, reason string) error {
	cols := map[string]any{"throttle": reason}
	if reason != "" {
		cols["rows_per_sec"] = 0.0
	}
	return Update(ctx, q, name, cols)
}

// SetSynced clears the phase and the throttle reason: nothing is left to
// sync. Call it with Transition(…, Synced) in the same transaction.
func SetSynced(ctx context.Context, q db.Querier, name string) error {
	return Update(ctx, q, name, map[string]any{"phase": "", "throttle": ""})
}

// SetPaused sets the paused flag greenswap pause and resume toggle.
func SetPaused(ctx context.Context, q db.Querier, name string, paused bool) error {
	return Update(ctx, q, name, map[string]any{"paused": paused})
}

// SetSlot records the logical stream's replication slot and the position
// green is current up to (its consistent point when just created).
func SetSlot(ctx context.Context, q db.Querier, name, slot, lsn string) error {
	return Update(ctx, q, name, map[string]any{"slot_name": slot, "confirmed_lsn": lsn})
}

// SetPrimarySide records which shape the app name reads ("blue" or
// "green"), in the swap's transaction.
func SetPrimarySide(ctx context.Context, q db.Querier, name, side string) error {
	return Update(ctx, q, name, map[string]any{"primary_side": side})
}

// SetTornDown records a teardown: blue is the app's table again, no phase.
func SetTornDown(ctx context.Context, q db.Querier, name string) error {
	return Update(ctx, q, name, map[string]any{"primary_side": "blue", "phase": ""})
}

// SetVerified records a verify result: at is the compared snapshot's time.
func SetVerified(ctx context.Context, q db.Querier, name string, at time.Time, ok bool) error {
	return Update(ctx, q, name, map[string]any{"verified_at": at, "verify_ok": ok})
}

// SetVerifyFailed marks the last verify failed (drift found), so cutover
// needs a new one.
func SetVerifyFailed(ctx context.Context, q db.Querier, name string) error {
	return Update(ctx, q, name, map[string]any{"verify_ok": false})
}

// AddBuiltIndex records that target.indexes statement number stmt built
// index (its name in green's schema), in the state row, so a sync resumed
// after a crash skips it. Run it right after the build commits.
func AddBuiltIndex(ctx context.Context, q db.Querier, name string, stmt int, index string) error {
	tag, err := q.Exec(ctx, `UPDATE greenswap.migrations
		SET indexes_built = coalesce(indexes_built, '{}'::jsonb) || pg_catalog.jsonb_build_object($2::text, $3::text),
		    updated_at = pg_catalog.now()
		WHERE name = $1`, name, strconv.Itoa(stmt), index)
	if err != nil {
		return fmt.Errorf("record index %s of %s as built: %w", index, name, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("record index %s as built: %w: %q", index, ErrNotFound, name)
	}
	return nil
}

// BuiltIndexes decodes Migration.IndexesBuilt: statement position → index.
func (m *Migration) BuiltIndexes() (map[int]string, error) {
	out := map[int]string{}
	if len(m.IndexesBuilt) == 0 || string(m.IndexesBuilt) == "null" {
		return out, nil
	}
	var raw map[string]string
	if err := json.Unmarshal(m.IndexesBuilt, &raw); err != nil {
		return nil, fmt.Errorf("decode the indexes built of %s (%s): %w", m.Name, m.IndexesBuilt, err)
	}
	for k, v := range raw {
		i, err := strconv.Atoi(k)
		if err != nil {
			return nil, fmt.Errorf("decode the indexes built of %s: statement %q is not a number", m.Name, k)
		}
		out[i] = v
	}
	return out, nil
}
