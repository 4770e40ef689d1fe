package sync

import (
	"fmt"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/rowsql"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	"github.com/greenswap/greenswap/trigger"
)

// keyFor is the sync key as the backfill walks it: blue's key columns in
// the order of the unique index that backs them (so ORDER BY and the
// row-value range predicates are index scans), with blue's column types
// for the casts that turn the text cursor back into exact values.
func keyFor(m *shadow.Mapping, blue *shadow.Table) (rowsql.Key, error) {
	return rowsql.WalkKey(blue, m.Key)
}

// sessionSQL are the transaction-local settings of every batch
// (rowsql.CopySettings). Args: $1 search_path, $2 lock_timeout.
var sessionSQL = rowsql.SelectSettings(rowsql.CopySettings("$1", "$2")...)

// boundSQL finds the key of the limit-th row after the cursor (after is
// false for the first batch): the inclusive upper end of the next batch's
// range. No row means fewer than limit rows are left: the last batch.
// The OFFSET walks the key index (an index-only scan); the key is cast to
// text outside it, so only the one row returned is converted, not every row
// skipped (about half the query's time at 50,000 rows).
// Args: the cursor values (when after), then the offset (limit-1).
func boundSQL(k rowsql.Key, blue spec.QualifiedName, after bool) string {
	return boundSQLWithin(k, blue, after, false)
}

// boundSQLWithin is boundSQL inside a parallel copy's range: with upper,
// only keys up to the range's end (bound after the cursor) count, and no
// row means the rest of the range is the last batch.
func boundSQLWithin(k rowsql.Key, blue spec.QualifiedName, after, upper bool) string {
	where, ps := k.Range(after, upper, 1)
	if where != "" {
		where = " WHERE " + where
	}
	return fmt.Sprintf("SELECT %s FROM (SELECT %s FROM %s%s ORDER BY %s OFFSET $%d LIMIT 1) s",
		k.AsText(), k.List(), db.Ident(blue.Schema, blue.Name), where, k.List(), len(ps)+1)
}

// batchSQL copies one key range of blue into green in one statement.
//
// The range is (cursor, upper] — open below when after is false, open above
// when upper is false — rather than "the next N rows": under READ COMMITTED a
// locked row that a concurrent transaction has just updated is re-read in
// its newest version (EvalPlanQual), so "the last key of the batch" could be
// a key updated far ahead, and a cursor moved there would skip the rows in
// between. A fixed range cannot skip: rows whose key left it are filtered out
// (and reached green through the trigger), rows that never changed keep their key.
//
// Source rows are locked FOR KEY SHARE (trap 1): a concurrent DELETE or key
// UPDATE of a row the batch copies waits until the batch commits, then its
// trigger deletes the copy; a row whose DELETE is in flight is waited for
// and then skipped. The insert is ON CONFLICT (green's key) DO NOTHING: a
// row already written by the trigger is newer than anything the batch read.
// A conflict on another unique index of green is an error, never a silently
// dropped row. When green's key reads a blue column outside blue's key, the
// lock is FOR SHARE instead (Mapping.SourceRowLock): a plain UPDATE of that
// column moves the row in green, so it must wait for the batch too.
//
// Without onConflict the insert is plain: about twice as fast (no
// speculative insertion), and exactly as safe as long as no key of the range
// is in green yet; when one is, the batch fails with a unique violation and
// is redone with the ON CONFLICT form (see Backfiller.Run). The plain form is
// also one INSERT … SELECT over a locking subquery rather than the CTE: the
// CTE is read twice (by the insert and by count(*)), so PostgreSQL
// materializes every row of the batch in a tuplestore and scans it again,
// which made a batch cost about 1.8× a bare INSERT … SELECT; the subquery
// streams. The rows are locked exactly as in the CTE (the same LockRows node
// over the same ordered range scan; a subquery with a locking clause is never
// pulled up into the outer query), and since a plain insert either inserts
// every row it reads or fails, its command tag counts both.
//
// Args: the cursor values (when after), then the upper values (when upper).
// With onConflict it returns (rows inserted, rows read); without, nothing:
// the command tag's row count is both.
func batchSQL(k rowsql.Key, n shadow.Names, m *shadow.Mapping, after, upper, onConflict bool) rowsql.Stmt {
	return batchSQLWhere(k, n, m, "", after, upper, onConflict)
}

// batchSQLWhere is batchSQL copying only the blue rows where holds for
// ("" = all; a split's green), locked FOR SHARE when where is set.
func batchSQLWhere(k rowsql.Key, n shadow.Names, m *shadow.Mapping, where string, after, upper, onConflict bool) rowsql.Stmt {
	b := rowsql.For(&m.Forward)
	b.From, b.Into = db.Ident(n.Blue.Schema, n.Blue.Name), db.Ident(n.Green.Schema, n.Green.Name)
	b.Filter = where
	lock := m.SourceRowLock()
	if where != "" {
		lock = "FOR SHARE"
	}
	return b.CopyBatch(k, lock, after, upper, onConflict)
}

// BatchPreview is every statement the Backfiller sends, for plan to show
// the very statements sync will run (issue 13), in this order: the sync
// flag, the session settings (both with their parameters filled in as sync
// binds them; lock timeout lockTimeout), the query finding the upper end of
// the first range and of every later one, then the batch in the plain form
// each batch runs in (first, middle, last, and the only batch of a table
// smaller than one batch), then the same four in the ON CONFLICT form a
// batch is redone with after a unique violation (a key of its range is in
// green already, written by the trigger), which the next batches keep for
// a while; last, what a parallel copy sends besides (the sample its key
// ranges are cut from, and the upper-end queries bounded by a range's
// end; its batches are the forms above). BatchPreviewLabels names them. In a batch, $1.. are the last key
// copied (not in a first batch), then the range's upper key (not in a last
// one); in a bound query, the last key copied, then the offset.
func BatchPreview(n shadow.Names, m *shadow.Mapping, blue *shadow.Table, lockTimeout string) ([]string, error) {
	k, err := keyFor(m, blue)
	if err != nil {
		return nil, err
	}
	flag, _ := trigger.SyncFlagSQL(n)
	settings := strings.NewReplacer("$1", db.Literal(n.SearchPath()), "$2", db.Literal(lockTimeout)).Replace(sessionSQL)
	out := []string{
		strings.Replace(flag, "$1", db.Literal(n.SyncFlag), 1),
		settings,
		boundSQL(k, n.Blue, false),
		boundSQL(k, n.Blue, true),
	}
	for _, onConflict := range []bool{false, true} {
		for _, r := range batchRanges() {
			out = append(out, batchSQL(k, n, m, r.after, r.upper, onConflict).SQL)
		}
	}
	out = append(out,
		relPagesSQL,
		splitSQL(k, n.Blue, false),
		splitSQL(k, n.Blue, true),
		boundSQLWithin(k, n.Blue, false, true),
		boundSQLWithin(k, n.Blue, true, true),
	)
	return out, nil
}

// batchRanges are the four ranges a batch can cover, in BatchPreview's
// order: (after, upper] has a lower end unless it is the first batch and
// an upper end unless it is the last.
type batchRange struct {
	after, upper bool
	what         string
}

func batchRanges() []batchRange {
	return []batchRange{
		{false, true, "first batch: up to the upper key"},
		{true, true, "middle batch: after the last key copied, up to the upper key"},
		{true, false, "last batch: after the last key copied"},
		{false, false, "only batch (blue holds fewer rows than one batch): every row"},
	}
}

// BatchPreviewLabels says what each statement of BatchPreview is, in its order.
func BatchPreviewLabels() []string {
	out := []string{"sync flag", "session settings", "upper end of the first range", "upper end of a later range"}
	for _, form := range []string{"plain", "ON CONFLICT DO NOTHING (redo)"} {
		for _, r := range batchRanges() {
			out = append(out, form+" "+r.what)
		}
	}
	return append(out,
		"parallel copy (sync.workers > 1): blue's size in pages, which sizes the sample",
		"parallel copy (sync.workers > 1): block sample of blue's keys, cut into key ranges",
		"parallel copy: the same sample after the cursor of a resumed one-cursor copy",
		"parallel copy: upper end of a range's first batch, within the range",
		"parallel copy: upper end of a later batch of a range, within the range",
	)
}

// ConflictSpell is how many batches after a redo keep the ON CONFLICT form
// (plan says it).
const ConflictSpell = conflictSpell
