package sync

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/rowsql"
	"github.com/greenswap/greenswap/spec"
)

// DefaultRangeRows is Options.RangeRows' default: a range smaller than
// this is a few batches, and its split and extra checkpoints would cost
// more than its worker saves.
const DefaultRangeRows = 5000

// rangesPerWorker: the split cuts this many ranges per worker, so that a
// worker whose ranges were small (the sample is not exact, and writers
// change the table) takes the next one instead of the copy waiting for
// one worker's long range.
const rangesPerWorker = 4

// sampleRowsPerRange is about how many sampled keys each range's bounds
// are read from.
const sampleRowsPerRange = 64

// samplePagesPerRange is about how many of blue's pages the sample reads a
// range: keys on one page are often neighbours (a table filled in key
// order), so bounds picked from few pages bunch together.
const samplePagesPerRange = 8

const relPagesSQL = `SELECT pg_catalog.pg_relation_size(CAST($1 AS pg_catalog.regclass)) / CAST(pg_catalog.current_setting('block_size') AS bigint)`

// Range is one key range of a parallel copy: the keys (At, Hi], At nil
// meaning from blue's first key and Hi nil meaning to its last. At moves
// forward with every batch the range commits; Done means every key up to
// Hi is covered. Ranges are disjoint and together cover every key after
// the cursor the split started from, so a row is copied by the range its
// key is in, once.
type Range struct {
	At   Cursor `json:"at"`
	Hi   Cursor `json:"hi"`
	Rows int64  `json:"rows"` // rows this range inserted into green
	Done bool   `json:"done,omitempty"`
}

// Progress is how a parallel copy's state is stored in place of a
// one-cursor backfill's cursor (a JSON array): {"ranges": [...]}.
type Progress struct {
	Ranges []Range `json:"ranges"`
}

// ParseCursor reads a stored backfill position: null (from the start), a
// JSON array (one cursor: a one-worker copy, or one recorded before
// parallel copies existed), or a Progress object (a parallel copy's ranges).
func ParseCursor(raw []byte) (Cursor, []Range, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil, nil
	}
	if raw[0] == '{' {
		var p Progress
		if err := json.Unmarshal(raw, &p); err != nil {
			return nil, nil, fmt.Errorf("decode the backfill ranges %s: %w", raw, err)
		}
		if len(p.Ranges) == 0 {
			return nil, nil, fmt.Errorf("decode the backfill ranges %s: no range", raw)
		}
		return nil, p.Ranges, nil
	}
	var c Cursor
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, nil, fmt.Errorf("decode the backfill cursor %s: %w", raw, err)
	}
	return c, nil, nil
}

// splitSQL reads a block sample of blue's keys after the cursor (after),
// in key order, as text: the bounds of the ranges are picked from it.
// TABLESAMPLE SYSTEM reads only the sampled pages, so the split costs a
// small fraction of one scan of blue. Args: the cursor values (when
// after), then the sample's percentage.
func splitSQL(k rowsql.Key, blue spec.QualifiedName, after bool) string {
	where, ps := k.Range(after, false, 1)
	if where != "" {
		where = " WHERE " + where
	}
	return fmt.Sprintf("SELECT %s FROM (SELECT %s FROM %s TABLESAMPLE SYSTEM (CAST($%d AS float4))%s) s ORDER BY %s",
		k.AsText(), k.List(), db.Ident(blue.Schema, blue.Name), len(ps)+1, where, k.List())
}

// split cuts the keys after cursor into ranges for opt.Workers workers:
// nil when blue's estimate leaves fewer than two ranges of opt.RangeRows
// (or the sample found too few keys), and the copy stays one cursor.
func (b *Backfiller) split(ctx context.Context, cursor Cursor, opt Options) ([]Range, error) {
	est := b.Blue.RowEstimate
	left := est
	if cursor != nil {
		left = est - b.StartRows
	}
	n := min(int64(opt.Workers*rangesPerWorker), left/opt.RangeRows)
	if n < 2 || est <= 0 {
		return nil, nil
	}
	dbctx := context.WithoutCancel(ctx)
	tx, err := b.Pool.BeginTx(dbctx, txReadOnly)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(dbctx)
	lt := opt.LockTimeout
	if _, err := tx.Exec(dbctx, sessionSQL, b.Names.SearchPath(), fmt.Sprintf("%dms", lt.Milliseconds())); err != nil {
		return nil, err
	}
	// SYSTEM sampling takes whole pages, so a sample sized in rows alone
	// can be one or two pages of neighbouring keys, and every bound but the
	// last falls inside them (one range left with nearly every row). The
	// sample spans at least samplePagesPerRange pages a range.
	var pages int64
	if err := tx.QueryRow(dbctx, relPagesSQL, db.Ident(b.Names.Blue.Schema, b.Names.Blue.Name)).Scan(&pages); err != nil {
		return nil, fmt.Errorf("backfill: read blue's size for the ranges: %w", err)
	}
	pct := 100 * float64(n*sampleRowsPerRange) / float64(est)
	if pages > 0 {
		pct = max(pct, 100*float64(n*samplePagesPerRange)/float64(pages))
	}
	pct = min(100, max(0.001, pct))
	args := make([]any, 0, len(cursor)+1)
	for _, v := range cursor {
		args = append(args, v)
	}
	sample, err := b.sampleKeys(dbctx, tx, cursor, args, pct)
	if err != nil {
		return nil, err
	}
	if int64(len(sample)) < n && pct < 100 {
		// SYSTEM sampling picks whole pages at random: a small table can
		// come back with too few keys. Once more, with 16 times the pages.
		if sample, err = b.sampleKeys(dbctx, tx, cursor, args, min(100, 16*pct)); err != nil {
			return nil, err
		}
	}
	m := int64(len(sample))
	n = min(n, m)
	if n < 2 {
		return nil, nil
	}
	out := make([]Range, 0, n)
	lo := cursor
	for i := int64(1); i < n; i++ {
		hi := sample[i*m/n]
		out = append(out, Range{At: lo, Hi: hi})
		lo = hi
	}
	out = append(out, Range{At: lo})
	b.Log.Info().Int("ranges", len(out)).Int("sampled", len(sample)).Float64("sample_pct", pct).Msg("backfill split into key ranges")
	return out, nil
}

var txReadOnly = pgx.TxOptions{AccessMode: pgx.ReadOnly}

// sampleKeys reads the sampled keys of blue after cursor (args: the
// cursor's values), pct percent of its pages, in key order.
func (b *Backfiller) sampleKeys(ctx context.Context, tx pgx.Tx, cursor Cursor, args []any, pct float64) ([]Cursor, error) {
	rows, err := tx.Query(ctx, splitSQL(b.key, b.Names.Blue, cursor != nil), append(slices.Clone(args), pct)...)
	if err != nil {
		return nil, fmt.Errorf("backfill: sample blue's keys for the ranges: %w", err)
	}
	var sample []Cursor
	for rows.Next() {
		vals := make([]*string, len(b.key.Cols))
		dest := make([]any, len(vals))
		for i := range vals {
			dest[i] = &vals[i]
		}
		if err := rows.Scan(dest...); err != nil {
			rows.Close()
			return nil, err
		}
		c := make(Cursor, len(vals))
		for i, v := range vals {
			if v == nil {
				rows.Close()
				return nil, fmt.Errorf("backfill: key column %s is NULL in blue", b.key.Cols[i])
			}
			c[i] = *v
		}
		sample = append(sample, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("backfill: sample blue's keys for the ranges: %w", err)
	}
	return sample, nil
}
