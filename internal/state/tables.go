package state

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/greenswap/greenswap/internal/db"
)

// TableProgress is one member's backfill in a migration of several
// tables: the row's own cursor and counters cannot hold more than one
// copy, so each member's are kept in the tables column under its app
// table's name. The row's rows_copied and rows_estimate hold the totals.
type TableProgress struct {
	Order        int               `json:"order"` // position in the dependency order (referenced tables first)
	Cursor       []string          `json:"cursor"`
	RowsCopied   int64             `json:"rows_copied"`
	RowsEstimate int64             `json:"rows_estimate"`
	BatchSize    int               `json:"batch_size"`
	RowsPerSec   float64           `json:"rows_per_sec"`
	Done         bool              `json:"done"`
	IndexesBuilt map[string]string `json:"indexes_built,omitempty"` // statement position → index
}

// GreenFK is a foreign key among the greens of a migration of several
// tables: created with green from target.ddl, dropped in the same
// transaction (enforced during the copy it would fail the app's own
// writes whose parent row is not copied yet), added back NOT VALID and
// validated once every table is copied.
type GreenFK struct {
	Table     string `json:"table"` // the referencing member's app table
	Name      string `json:"name"`  // the constraint's name
	Def       string `json:"def"`   // pg_get_constraintdef, schema-qualified
	Added     bool   `json:"added"`
	Validated bool   `json:"validated"`
}

// Tables decodes TablesJSON: app table → its progress (empty for a
// one-table migration, or a row written before the column existed).
func (m *Migration) Tables() (map[string]TableProgress, error) {
	out := map[string]TableProgress{}
	if len(m.TablesJSON) == 0 || string(m.TablesJSON) == "null" {
		return out, nil
	}
	if err := json.Unmarshal(m.TablesJSON, &out); err != nil {
		return nil, fmt.Errorf("decode the per-table progress of %s (%s): %w", m.Name, m.TablesJSON, err)
	}
	return out, nil
}

// GreenFKs decodes GreenFKsJSON.
func (m *Migration) GreenFKs() ([]GreenFK, error) {
	var out []GreenFK
	if len(m.GreenFKsJSON) == 0 || string(m.GreenFKsJSON) == "null" {
		return nil, nil
	}
	if err := json.Unmarshal(m.GreenFKsJSON, &out); err != nil {
		return nil, fmt.Errorf("decode the foreign keys among the greens of %s (%s): %w", m.Name, m.GreenFKsJSON, err)
	}
	return out, nil
}

// StartTables rewinds the backfill of a migration of several tables to
// its start, with phase next, in the create-green transaction: one entry
// per member (estimates, in dependency order), the row's totals, the
// foreign keys among the greens to add after the copy.
func StartTables(ctx context.Context, q db.Querier, name, next string, estimates []TableEstimate, fks []GreenFK) error {
	tables := map[string]TableProgress{}
	var total int64
	for i, e := range estimates {
		tables[e.Table] = TableProgress{Order: i, RowsEstimate: e.Rows}
		total += e.Rows
	}
	if fks == nil {
		fks = []GreenFK{}
	}
	return Update(ctx, q, name, map[string]any{
		"phase": next, "backfill_started_at": time.Now(), "backfill_done_at": nil, "cursor": nil, "rows_copied": 0,
		"rows_estimate": total, "batch_size": 0, "rows_per_sec": 0, "indexes_built": map[string]string{},
		"tables": tables, "green_fks": fks,
	})
}

// TableEstimate is one member's row estimate, for StartTables.
type TableEstimate struct {
	Table string
	Rows  int64
}

// TableCheckpoint is what one committed batch of a member's backfill
// records (SetTableCheckpoint).
type TableCheckpoint struct {
	Table      string
	Cursor     []string
	RowsCopied int64 // the member's, all runs together
	BatchSize  int
	RowsPerSec float64
	Done       bool // the member's copy is complete
	// Last: Done, and every other member is done too: the phase moves to
	// Next and the backfill's end is stamped.
	Last bool
	Next string
}

// SetTableCheckpoint records a member's backfill batch, in that batch's
// transaction, and keeps the row's totals (rows copied, the current batch
// size and rate) the sum over the members.
func SetTableCheckpoint(ctx context.Context, q db.Querier, name string, cp TableCheckpoint) error {
	cursor, err := json.Marshal(cp.Cursor)
	if err != nil {
		return err
	}
	tag, err := q.Exec(ctx, `UPDATE greenswap.migrations m
		SET tables = pg_catalog.jsonb_set(m.tables, ARRAY[$2::text],
		        coalesce(m.tables -> $2::text, '{}'::jsonb) || pg_catalog.jsonb_build_object(
		            'cursor', $3::jsonb, 'rows_copied', $4::bigint, 'batch_size', $5::int,
		            'rows_per_sec', $6::float8, 'done', $7::boolean)),
		    batch_size = $5::int, rows_per_sec = $6::float8, updated_at = pg_catalog.now()
		WHERE name = $1`, name, cp.Table, string(cursor), cp.RowsCopied, cp.BatchSize, cp.RowsPerSec, cp.Done)
	if err != nil {
		return fmt.Errorf("record the backfill checkpoint of %s in %s: %w", cp.Table, name, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("record the backfill checkpoint of %s: %w: %q", cp.Table, ErrNotFound, name)
	}
	if _, err := q.Exec(ctx, `UPDATE greenswap.migrations m SET rows_copied = coalesce((
		SELECT sum((v ->> 'rows_copied')::bigint) FROM pg_catalog.jsonb_each(m.tables) AS t(k, v)), 0)::bigint
		WHERE name = $1`, name); err != nil {
		return fmt.Errorf("total the rows copied of %s: %w", name, err)
	}
	if cp.Last {
		return Update(ctx, q, name, map[string]any{"phase": cp.Next, "backfill_done_at": time.Now(), "throttle": ""})
	}
	return nil
}

// AddTableBuiltIndex is AddBuiltIndex for a member of a migration of
// several tables: statement stmt of that member's target.indexes built
// index.
func AddTableBuiltIndex(ctx context.Context, q db.Querier, name, table string, stmt int, index string) error {
	tag, err := q.Exec(ctx, `UPDATE greenswap.migrations m
		SET tables = pg_catalog.jsonb_set(m.tables, ARRAY[$2::text, 'indexes_built'],
		        coalesce(m.tables -> $2::text -> 'indexes_built', '{}'::jsonb) || pg_catalog.jsonb_build_object($3::text, $4::text)),
		    updated_at = pg_catalog.now()
		WHERE name = $1 AND m.tables ? $2::text`, name, table, strconv.Itoa(stmt), index)
	if err != nil {
		return fmt.Errorf("record index %s of %s in %s as built: %w", index, table, name, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("record index %s of %s as built: %w: %q (or no such member)", index, table, ErrNotFound, name)
	}
	return nil
}

// SetGreenFKs records the foreign keys among the greens as they stand
// (added, validated), in the transaction that changed them.
func SetGreenFKs(ctx context.Context, q db.Querier, name string, fks []GreenFK) error {
	if fks == nil {
		fks = []GreenFK{}
	}
	return Update(ctx, q, name, map[string]any{"green_fks": fks})
}

// BuiltIndexesOf decodes a member's indexes built: statement position → index.
func (p TableProgress) BuiltIndexesOf() (map[int]string, error) {
	out := map[int]string{}
	for k, v := range p.IndexesBuilt {
		i, err := strconv.Atoi(k)
		if err != nil {
			return nil, fmt.Errorf("decode the indexes built: statement %q is not a number", k)
		}
		out[i] = v
	}
	return out, nil
}
