package sync

import (
	"fmt"
	"slices"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	"github.com/greenswap/greenswap/trigger"
)

// keySpec is the sync key as the backfill walks it: blue's key columns in the
// order of the unique index that backs them (so ORDER BY and the row-value
// range predicates are index scans), with blue's column types for the casts
// that turn the text cursor back into exact values.
type keySpec struct {
	Cols  []string
	Types []string
}

// keyFor orders m.Key like the valid, non-partial unique index on exactly
// those columns (the primary key first), falling back to m.Key's order.
func keyFor(m *shadow.Mapping, blue *shadow.Table) (keySpec, error) {
	cols := slices.Clone(m.Key)
	var ixs []shadow.Index
	if blue.PrimaryKey != nil {
		ixs = append(ixs, *blue.PrimaryKey)
	}
	ixs = append(ixs, blue.Indexes...)
	for _, ix := range ixs {
		if !ix.Unique || !ix.Valid || ix.Partial || ix.Expression || len(ix.Columns) != len(cols) {
			continue
		}
		same := true
		for _, c := range ix.Columns {
			if !slices.Contains(cols, c) {
				same = false
				break
			}
		}
		if same {
			cols = slices.Clone(ix.Columns)
			break
		}
	}
	k := keySpec{Cols: cols}
	for _, c := range cols {
		col := blue.Column(c)
		if col == nil {
			return keySpec{}, fmt.Errorf("key column %s is missing from blue %s", c, blue.Name)
		}
		k.Types = append(k.Types, col.Type)
	}
	return k, nil
}

// list is the quoted key column list: "a", "b".
func (k keySpec) list() string { return db.IdentList(k.Cols) }

// row is the key as a row value, or the bare column for a one-column key
// (a one-element row constructor would not use the index the same way).
func (k keySpec) row() string {
	if len(k.Cols) == 1 {
		return db.Ident(k.Cols[0])
	}
	return "(" + k.list() + ")"
}

// params is the cursor bound as text and cast to the key types, starting at $first.
func (k keySpec) params(first int) string {
	p := make([]string, len(k.Cols))
	for i, t := range k.Types {
		p[i] = fmt.Sprintf("CAST($%d AS %s)", first+i, t)
	}
	if len(p) == 1 {
		return p[0]
	}
	return "(" + strings.Join(p, ", ") + ")"
}

// asText selects the key columns as text. The outputs are aliased gs_k<i>:
// left with the column's own name, an "ORDER BY id" beside it would sort by the text.
func (k keySpec) asText() string {
	p := make([]string, len(k.Cols))
	for i, c := range k.Cols {
		p[i] = fmt.Sprintf("CAST(%s AS text) AS gs_k%d", db.Ident(c), i)
	}
	return strings.Join(p, ", ")
}

// sessionSQL are the transaction-local settings of every batch: key values
// travel as text, so their text form must read back as the same value
// whatever the role's defaults (ISO dates, exact floats, hex bytea); the
// mapping's expressions resolve through the same search_path as in the
// trigger functions; a batch waits at most lockTimeout for a row lock; and
// row_security is off, so a policy that would filter the copy (FORCE ROW
// LEVEL SECURITY turned on mid-migration) fails the batch instead of
// silently leaving the rows it hides out of green.
// Args: $1 search_path, $2 lock_timeout.
const sessionSQL = `SELECT pg_catalog.set_config('search_path', $1, true), pg_catalog.set_config('lock_timeout', $2, true),
	pg_catalog.set_config('datestyle', 'ISO, MDY', true), pg_catalog.set_config('intervalstyle', 'postgres', true),
	pg_catalog.set_config('extra_float_digits', '3', true), pg_catalog.set_config('bytea_output', 'hex', true),
	pg_catalog.set_config('row_security', 'off', true)`

// boundSQL finds the key of the limit-th row after the cursor (after is
// false for the first batch): the inclusive upper end of the next batch's
// range. No row means fewer than limit rows are left: the last batch.
// The OFFSET walks the key index (an index-only scan); the key is cast to
// text outside it, so only the one row returned is converted, not every row
// skipped (about half the query's time at 50,000 rows).
// Args: the cursor values (when after), then the offset (limit-1).
func boundSQL(k keySpec, blue spec.QualifiedName, after bool) string {
	where := ""
	next := 1
	if after {
		where = " WHERE " + k.row() + " > " + k.params(1)
		next = len(k.Cols) + 1
	}
	return fmt.Sprintf("SELECT %s FROM (SELECT %s FROM %s%s ORDER BY %s OFFSET $%d LIMIT 1) s",
		k.asText(), k.list(), db.Ident(blue.Schema, blue.Name), where, k.list(), next)
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
func batchSQL(k keySpec, n shadow.Names, m *shadow.Mapping, after, upper, onConflict bool) string {
	var conds []string
	next := 1
	if after {
		conds = append(conds, k.row()+" > "+k.params(next))
		next += len(k.Cols)
	}
	if upper {
		conds = append(conds, k.row()+" <= "+k.params(next))
	}
	where := ""
	if len(conds) > 0 {
		where = " WHERE " + strings.Join(conds, " AND ")
	}
	overriding := ""
	if m.Forward.NeedsOverriding() {
		overriding = " OVERRIDING SYSTEM VALUE"
	}
	blue := db.Ident(n.Blue.Schema, n.Blue.Name)
	green := db.Ident(n.Green.Schema, n.Green.Name)
	if !onConflict {
		return fmt.Sprintf(`INSERT INTO %s (%s)%s
	SELECT %s FROM (
		SELECT * FROM %s%s ORDER BY %s %s
	) src`,
			green, m.Forward.TargetList(), overriding,
			m.Forward.SelectList(),
			blue, where, k.list(), m.SourceRowLock())
	}
	return fmt.Sprintf(`WITH src AS (
	SELECT * FROM %s%s ORDER BY %s %s
), ins AS (
	INSERT INTO %s (%s)%s
	SELECT %s FROM src
	ON CONFLICT (%s) DO NOTHING
	RETURNING 1
)
SELECT (SELECT pg_catalog.count(*) FROM ins), (SELECT pg_catalog.count(*) FROM src)`,
		blue, where, k.list(), m.SourceRowLock(),
		green, m.Forward.TargetList(), overriding,
		m.Forward.SelectList(), db.IdentList(m.Forward.TargetKey))
}

// BatchPreview is one backfill batch as Backfiller runs it, for plan to
// show the very statements sync will send (issue 13): the sync flag, the
// session settings, and a middle batch over (cursor, upper] in the ON
// CONFLICT form, keyed in the order the copy walks. In the batch, $1.. are
// the cursor's values, then the upper end's; the flag's and the settings'
// parameters are filled in as sync binds them (lock timeout lockTimeout).
func BatchPreview(n shadow.Names, m *shadow.Mapping, blue *shadow.Table, lockTimeout string) ([]string, error) {
	k, err := keyFor(m, blue)
	if err != nil {
		return nil, err
	}
	flag, _ := trigger.SyncFlagSQL(n)
	settings := strings.NewReplacer("$1", db.Literal(n.SearchPath()), "$2", db.Literal(lockTimeout)).Replace(sessionSQL)
	return []string{
		strings.Replace(flag, "$1", db.Literal(n.SyncFlag), 1),
		settings,
		batchSQL(k, n, m, true, true, true),
	}, nil
}
