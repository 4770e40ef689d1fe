package stream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	gosync "sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/rowsql"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/trigger"
)

// ErrRetired: the stream has nothing left to do for this migration: its
// forward triggers are on (the stream was retired before cutover), green
// is gone (rolled back), or the slot was dropped by one of those. A
// streamer stops cleanly with it.
var ErrRetired = errors.New("the logical stream of this migration is retired")

// applySQL is the SQL the applier runs, generated once from the mapping.
type applySQL struct {
	keyCols  []string // blue's sync key
	upsert   string   // re-copy the keys' rows from blue through the mapping
	stale    string   // delete green rows of the keys that blue no longer has (under that green key); $k+1 = gone flags
	all      string   // delete every green row of the keys (replace mode)
	truncate string   // delete every green row blue no longer has (after a TRUNCATE of blue)
	live     string   // is the stream still the way blue → green?
	// begin is live plus the apply transaction's settings (rowsql.CopySettings)
	// and the sync flag, in one statement: $1..$3 as live, $4 the flag's
	// name, $5 search_path, $6 lock_timeout.
	begin string
	// move re-keys green rows in place (trap 13): $1..$k the old sync key,
	// $k+1..$2k the new one; "" when green's key cannot be updated (a
	// GENERATED ALWAYS identity column). moveKey is the same for the rows
	// blue no longer has under the new key: only the key moves.
	move, moveKey string
	// combined is stale and upsert in one statement reading blue once,
	// when green's key is the sync key (then the rows it deletes and those
	// it upserts are disjoint); "" otherwise.
	combined string
}

// buildSQL generates the apply statements. Every statement takes the keys
// as one text[] per key column ($1, $2, ...), in blue's text form, and casts
// them to blue's column types (and through the mapping to green's).
func buildSQL(n shadow.Names, m *shadow.Mapping, blue *shadow.Table) (*applySQL, error) {
	s := &applySQL{keyCols: m.Key}
	bt := make([]string, len(m.Key))
	gt := make([]string, len(m.Key))
	for i, k := range m.Key {
		c := blue.Column(k)
		if c == nil {
			return nil, fmt.Errorf("key column %s is missing from blue %s", k, blue.Name)
		}
		bt[i] = c.Type
		g := m.Forward.Column(k)
		if g == nil {
			return nil, fmt.Errorf("key column %s is not mapped to green", k)
		}
		gt[i] = g.Type
	}
	blueRel := db.Ident(n.Blue.Schema, n.Blue.Name)
	greenRel := db.Ident(n.Green.Schema, n.Green.Name)
	// The keys arrive in the mapping's key order (the decoder's), so the
	// statements take them in that order, cast to blue's types.
	key := rowsql.Key{Cols: m.Key, Types: bt}
	b := rowsql.For(&m.Forward)
	b.From, b.Into = blueRel, greenRel

	// unnest($1::text[], $2::text[]) AS u(gs_k0, gs_k1)
	params := make([]string, len(m.Key))
	ucols := make([]string, len(m.Key))
	for i := range m.Key {
		params[i] = fmt.Sprintf("$%d::text[]", i+1)
		ucols[i] = fmt.Sprintf("gs_k%d", i)
	}
	// The keys with each key's gone flag (entry.gone) as the last parameter.
	fromGone := rowsql.RowsFromUnnest(append(slices.Clone(params), fmt.Sprintf("$%d::boolean[]", len(m.Key)+1))) +
		" AS u(" + strings.Join(ucols, ", ") + ", gs_gone)"
	row := func(alias string) string { return key.Row(alias) }
	// FOR KEY SHARE: at REPEATABLE READ, a source row deleted (or re-keyed)
	// since the snapshot — by a client writing through green, whose echo the
	// stream skips, or after the stream's retirement by a blue writer whose
	// trigger already deleted the green row — fails the transaction with a
	// serialization error instead of bringing the deleted row back into
	// green. Key order, like the backfill; a lock wait is bounded by the
	// apply transaction's lock_timeout, so the application never waits long.
	s.upsert = b.UpsertKeys(key, "FOR KEY SHARE").SQL

	// A green row of one of the keys stays only if blue has the key and the
	// green key computed from blue's row is the row's own: otherwise the row
	// was deleted in blue, or its green key changed (trap 3).
	var sCols, match []string
	for i, k := range m.Key {
		sCols = append(sCols, db.Ident(k)+" AS "+db.Ident(fmt.Sprintf("gs_s%d", i)))
		match = append(match, "s."+db.Ident(fmt.Sprintf("gs_s%d", i))+" = CAST(g."+db.Ident(k)+" AS "+bt[i]+")")
	}
	for i, k := range m.Forward.TargetKey {
		sCols = append(sCols, m.Forward.ValueExpr(k)+" AS "+db.Ident(fmt.Sprintf("gs_t%d", i)))
		match = append(match, "s."+db.Ident(fmt.Sprintf("gs_t%d", i))+" "+rowsql.Op("=")+" g."+db.Ident(k))
	}
	// A key blue lacks although the batch did not remove it is left alone
	// (entry.gone): a later change in the stream removed it.
	var dk, dmatch, bhas []string
	for i, k := range m.Key {
		dk = append(dk, "CAST(CAST(u."+ucols[i]+" AS "+bt[i]+") AS "+gt[i]+") AS "+ucols[i])
		dmatch = append(dmatch, "g."+db.Ident(k)+" "+rowsql.Op("=")+" d."+ucols[i])
		bhas = append(bhas, "b."+db.Ident(k)+" "+rowsql.Op("=")+" CAST(g."+db.Ident(k)+" AS "+bt[i]+")")
	}
	s.stale = fmt.Sprintf(`DELETE FROM %s AS g
USING (SELECT %s, u.gs_gone FROM %s) AS d
WHERE %s
  AND NOT EXISTS (SELECT 1 FROM (SELECT %s FROM %s) AS s WHERE %s)
  AND (d.gs_gone OR EXISTS (SELECT 1 FROM %s AS b WHERE %s))`,
		greenRel, strings.Join(dk, ", "), fromGone, strings.Join(dmatch, " AND "),
		strings.Join(sCols, ", "), blueRel, strings.Join(match, " AND "),
		blueRel, strings.Join(bhas, " AND "))
	s.all = b.DeleteKeys(key, [][]string{bt, gt}, false, nil).SQL

	if shadow.SameColumns(m.Key, m.Forward.TargetKey) {
		// One statement: the keys' blue rows are read (and locked) once;
		// green rows of keys blue does not have are deleted (a hash anti
		// join against those rows), the others upserted.
		var gk, eq []string
		for i, k := range m.Key {
			gk = append(gk, "CAST(k."+ucols[i]+" AS "+gt[i]+")")
			eq = append(eq, "s."+db.Ident(k)+" "+rowsql.Op("=")+" CAST(g."+db.Ident(k)+" AS "+bt[i]+")")
		}
		kcols := make([]string, len(m.Key))
		for i := range m.Key {
			kcols[i] = "CAST(u." + ucols[i] + " AS " + bt[i] + ") AS " + ucols[i]
		}
		kcols = append(kcols, "u.gs_gone")
		s.combined = fmt.Sprintf(`WITH k AS MATERIALIZED (
	SELECT %s FROM %s
), src AS MATERIALIZED (
	%s
), del AS (
	DELETE FROM %s AS g WHERE %s OPERATOR(pg_catalog.=) ANY (SELECT %s FROM k WHERE k.gs_gone)
	AND NOT EXISTS (SELECT 1 FROM src AS s WHERE %s)
	RETURNING 1
), ins AS (
	%s
	RETURNING 1
)
SELECT (SELECT pg_catalog.count(*) FROM del), (SELECT pg_catalog.count(*) FROM ins)`,
			strings.Join(kcols, ", "), fromGone,
			b.Rows(row("")+" "+rowsql.Op("=")+" ANY (SELECT "+strings.Join(ucols, ", ")+" FROM k)", key, "FOR KEY SHARE"),
			greenRel, row("g."), strings.Join(gk, ", "), strings.Join(eq, " AND "),
			b.Insert("src", rowsql.DoUpdate, "\t"))
	}

	var bmatch []string
	for i, k := range m.Key {
		bmatch = append(bmatch, "b."+db.Ident(k)+" "+rowsql.Op("=")+" CAST(g."+db.Ident(k)+" AS "+bt[i]+")")
	}
	s.truncate = fmt.Sprintf(`DELETE FROM %s AS g WHERE NOT EXISTS (SELECT 1 FROM %s AS b WHERE %s)`,
		greenRel, blueRel, strings.Join(bmatch, " AND "))

	s.move, s.moveKey = buildMoveSQL(m, blueRel, greenRel, bt, gt)

	live := `coalesce((SELECT t.tgenabled::text FROM pg_catalog.pg_trigger t
	                   WHERE t.tgrelid = pg_catalog.to_regclass($1) AND t.tgname = $2), ''),
	       pg_catalog.to_regclass($3) IS NOT NULL`
	s.live = "SELECT " + live
	// One round trip for what each apply transaction sets up: on a server
	// short of CPU every round trip waits for the backend and then
	// greenswap to be scheduled again, and a small apply transaction
	// spent most of its time in four of them.
	s.begin = "SELECT " + live + ",\n\t" + trigger.SyncFlagExpr("$4") + " IS NOT NULL,\n\t" +
		rowsql.SettingsList(rowsql.CopySettings("$5", "$6")...)
	return s, nil
}

// buildMoveSQL are the statements that move green's row of a re-keyed
// blue row from the old key to the new one: an UPDATE setting every mapped
// column, the key included, from blue's row at the new key. An UPDATE and
// not a DELETE and INSERT, so that columns only green has keep their
// values and foreign keys referencing green see a key update (ON UPDATE
// actions, never ON DELETE CASCADE). It moves only where green has the old
// key and not the new one: anything else (the row not copied yet, moved
// already by an earlier apply of the same batch) is left to the re-copy
// that follows in the same transaction, as before. Blue is read as it is
// now, not as of the batch: when blue no longer has the new key, a later
// change in the stream moved or deleted the row again, and moveKey moves
// only green's key, for that later change to find the row (deleting it
// here would lose green's own columns when the later change is another
// re-key).
func buildMoveSQL(m *shadow.Mapping, blueRel, greenRel string, bt, gt []string) (move, moveKey string) {
	var cols, exprs []string
	for _, c := range m.Forward.Columns {
		if c.Identity == "a" {
			if slices.Contains(m.Key, c.Target) {
				return "", "" // PostgreSQL updates a GENERATED ALWAYS column only to DEFAULT
			}
			continue // its value never changes, as in the upsert
		}
		cols = append(cols, db.Ident(c.Target))
		exprs = append(exprs, m.Forward.ValueExpr(c.Target)+" AS "+db.Ident(c.Target))
	}
	k := len(m.Key)
	params := make([]string, 2*k)
	ucols := make([]string, 2*k)
	casts := make([]string, 2*k)
	for i := range 2 * k {
		params[i] = fmt.Sprintf("$%d::text[]", i+1)
		if i < k {
			ucols[i] = fmt.Sprintf("gs_f%d", i)
		} else {
			ucols[i] = fmt.Sprintf("gs_t%d", i-k)
		}
		casts[i] = "CAST(u." + ucols[i] + " AS " + bt[i%k] + ") AS " + ucols[i]
	}
	var gOld, gNew, bNew, keyCols, keyVals []string
	for i, kc := range m.Key {
		gOld = append(gOld, "g."+db.Ident(kc)+" = CAST(mv.gs_f"+fmt.Sprint(i)+" AS "+gt[i]+")")
		gNew = append(gNew, "g2."+db.Ident(kc)+" = CAST(mv.gs_t"+fmt.Sprint(i)+" AS "+gt[i]+")")
		bNew = append(bNew, "b."+db.Ident(kc)+" = mv.gs_t"+fmt.Sprint(i))
		keyCols = append(keyCols, db.Ident(kc))
		keyVals = append(keyVals, "CAST(mv.gs_t"+fmt.Sprint(i)+" AS "+gt[i]+")")
	}
	from := fmt.Sprintf(`FROM (SELECT %s FROM %s AS u(%s)) AS mv
WHERE %s
  AND %%s (SELECT 1 FROM %s AS b WHERE %s)
  AND NOT EXISTS (SELECT 1 FROM %s AS g2 WHERE %s)`,
		strings.Join(casts, ", "), rowsql.RowsFromUnnest(params), strings.Join(ucols, ", "),
		strings.Join(gOld, " AND "),
		blueRel, strings.Join(bNew, " AND "),
		greenRel, strings.Join(gNew, " AND "))
	// The mapped values come from a subquery whose only FROM item is blue's
	// row: the spec's expressions name blue's columns bare.
	move = fmt.Sprintf("UPDATE %s AS g SET (%s) = (SELECT %s FROM %s AS b WHERE %s)\n",
		greenRel, strings.Join(cols, ", "), strings.Join(exprs, ", "), blueRel, strings.Join(bNew, " AND ")) +
		fmt.Sprintf(from, "EXISTS")
	moveKey = fmt.Sprintf("UPDATE %s AS g SET (%s) = ROW(%s)\n", greenRel, strings.Join(keyCols, ", "), strings.Join(keyVals, ", ")) +
		fmt.Sprintf(from, "NOT EXISTS")
	return move, moveKey
}

// replicationParams are the replication session's settings: key values are
// printed by the walsender in the forms rowsql.CopySettings reads back exactly.
var replicationParams = map[string]string{
	"DateStyle": "ISO, MDY", "IntervalStyle": "postgres", "extra_float_digits": "3", "bytea_output": "hex",
}

// RetireLockSQL is the advisory lock that orders apply transactions against
// the stream's retirement, taken exclusively in the caller's transaction
// ($1 = the migration name). Every apply transaction holds it shared and
// then checks that the stream is still live (forward triggers off, green
// there); retiring takes it exclusively in the transaction that switches
// the forward triggers on, so no apply transaction that saw the stream live
// can commit after that.
const RetireLockSQL = `SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('greenswap'), pg_catalog.hashtext($1 || ':stream'))`

// foreignKeyViolation is SQLSTATE 23503.
const foreignKeyViolation = "23503"

const retireLockSharedSQL = `SELECT pg_catalog.pg_advisory_xact_lock_shared(pg_catalog.hashtext('greenswap'), pg_catalog.hashtext($1 || ':stream'))`

// tableSQL is one table's apply statements, and the statements that copy
// the rows it references in the migration's other tables (references).
type tableSQL struct {
	names   shadow.Names
	mapping *shadow.Mapping
	blue    *shadow.Table
	sql     *applySQL
	// parents are the upserts that copy, before this table's rows are
	// written, the rows they reference in a table earlier in dependency
	// order (loadReferences).
	parents []parentSQL
}

// parentSQL copies the rows of table parent that the bound keys' blue rows
// of the referencing table reference (rowsql.UpsertReferenced).
type parentSQL struct {
	parent int
	sql    string
}

// applier writes batches to green.
type applier struct {
	pool       *pgxpool.Pool
	names      shadow.Names
	migration  string
	sql        *applySQL   // tables[0]'s
	tables     []*tableSQL // the migration's tables, referenced ones first
	searchPath string
	opt        Options
	checkpoint func(ctx context.Context, tx pgx.Tx, lsn pglogrepl.LSN) error
}

// apply writes batch b to green and checkpoints b.endLSN in the last
// transaction. It returns the number of keys written and skipped as echoes.
func (a *applier) apply(ctx context.Context, b *batch) (written, echoes int, err error) {
	chunks, echoes := b.work(a.opt.MaxBatchKeys)
	if err := a.waitVisible(ctx, b.xids); err != nil {
		return 0, echoes, err
	}
	if b.truncate {
		// First, alone: delete the green rows blue no longer has.
		if err := a.applyChunk(ctx, nil, true, 0); err != nil {
			return 0, echoes, err
		}
	}
	if len(chunks) == 0 {
		chunks = []chunk{nil} // checkpoint and liveness check: one transaction anyway
	}
	// Every chunk but the last on up to ApplyWorkers sessions at once (they
	// touch different keys); the last one, with the checkpoint, once all
	// the others have committed.
	last := len(chunks) - 1
	var (
		wg   gosync.WaitGroup
		mu   gosync.Mutex
		ferr error
		sem  = make(chan struct{}, a.opt.ApplyWorkers)
	)
	for _, keys := range chunks[:last] {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := a.applyChunk(ctx, keys, false, 0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && ferr == nil {
				ferr = err
			}
			if err == nil {
				written += keys.size()
			}
		}()
	}
	wg.Wait()
	if ferr != nil {
		return written, echoes, ferr
	}
	if err := a.applyChunk(ctx, chunks[last], false, b.endLSN); err != nil {
		return written, echoes, err
	}
	return written + chunks[last].size(), echoes, nil
}

// waitVisible waits until every transaction of xids is visible to new
// snapshots (trap 8): the stream can deliver a commit before the committing
// backend has left the proc array (it flushes WAL first; with synchronous
// replication it then waits for the standbys), and a re-read of blue under
// a snapshot taken in between would miss the transaction's rows.
// pg_xact_status consults the proc array before the commit log, so
// 'committed' means visible to every snapshot taken from now on.
func (a *applier) waitVisible(ctx context.Context, xids []uint32) error {
	if len(xids) == 0 {
		return nil
	}
	return WaitVisible(ctx, a.pool, xids, a.opt.VisibilityTimeout)
}

// WaitVisible waits until none of the (32-bit) transactions xids is still
// in progress, for at most timeout (0: no bound). See the applier's use:
// trap 8. It reads one snapshot per round (pg_current_snapshot: its xmax
// and the in-progress list come from the proc array, as pg_xact_status's
// answer does) and checks the transactions here, so a batch of 100k
// transactions costs one small query instead of 100k status lookups.
func WaitVisible(ctx context.Context, q db.Querier, xids []uint32, timeout time.Duration) error {
	waiting := slices.Clone(xids)
	slices.Sort(waiting)
	waiting = slices.Compact(waiting)
	start := time.Now()
	sleep := 500 * time.Microsecond
	for {
		var text string
		if err := q.QueryRow(ctx, `SELECT pg_catalog.pg_current_snapshot()::text`).Scan(&text); err != nil {
			return fmt.Errorf("wait for committed transactions to become visible: %w", err)
		}
		snap, err := parseSnapshot(text)
		if err != nil {
			return err
		}
		waiting = slices.DeleteFunc(waiting, func(x uint32) bool { return !snap.inProgress(FullXid(x, snap.xmax)) })
		if len(waiting) == 0 {
			return nil
		}
		if timeout > 0 && time.Since(start) > timeout {
			full := make([]string, len(waiting))
			for i, x := range waiting {
				full[i] = strconv.FormatUint(FullXid(x, snap.xmax), 10)
			}
			return fmt.Errorf("transaction(s) %s reached the stream committed but are still in progress after %s "+
				"(a commit waiting for a synchronous standby?); retrying later", strings.Join(full, ", "), timeout.Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(sleep):
		}
		sleep = min(2*sleep, 20*time.Millisecond)
	}
}

// snapshot is pg_snapshot's text form xmin:xmax:xip,... parsed.
type snapshot struct {
	xmin, xmax uint64
	xip        map[uint64]bool
}

func parseSnapshot(text string) (snapshot, error) {
	parts := strings.Split(text, ":")
	bad := fmt.Errorf("unexpected pg_current_snapshot() %q", text)
	if len(parts) != 3 {
		return snapshot{}, bad
	}
	var s snapshot
	var err1, err2 error
	s.xmin, err1 = strconv.ParseUint(parts[0], 10, 64)
	s.xmax, err2 = strconv.ParseUint(parts[1], 10, 64)
	if err1 != nil || err2 != nil {
		return snapshot{}, bad
	}
	s.xip = map[uint64]bool{}
	if parts[2] != "" {
		for _, f := range strings.Split(parts[2], ",") {
			x, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				return snapshot{}, bad
			}
			s.xip[x] = true
		}
	}
	return s, nil
}

// inProgress: the snapshot does not see x as finished (x is running, or
// not even started as far as the snapshot knows).
func (s snapshot) inProgress(x uint64) bool {
	return x >= s.xmax || (x >= s.xmin && s.xip[x])
}

// applyChunk applies the chunk's keys and moves (and the truncate, when set) in one transaction,
// with the checkpoint when lsn is not 0. A unique violation on another
// index of green (two rows of the batch swapping a unique value, applied in
// the wrong order) retries once in replace mode: delete the keys' green
// rows first, then copy them again. A serialization failure (a concurrent
// writer of one of the green rows), lock timeout or deadlock rolls back and
// splits the keys in two halves applied one after the other, down to single
// keys retried after a jittered backoff: under heavy writes a big chunk
// would keep meeting some writer.
func (a *applier) applyChunk(ctx context.Context, keys chunk, truncate bool, lsn pglogrepl.LSN) error {
	replace := false
	backoff := 10 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := a.applyTx(ctx, keys, truncate, lsn, replace)
		if err == nil {
			return nil
		}
		st := db.SQLState(err)
		if st == db.UniqueViolation && !replace {
			replace = true
			continue
		}
		// Several tables: a parent deleted in a unit of its own while its
		// children's delete is in another chunk, applied on another session
		// and not committed yet, meets them on green (23503 under NO
		// ACTION); once that chunk commits, the retry goes through.
		fkWait := st == foreignKeyViolation && len(a.tables) > 1
		if st != db.LockNotAvailable && st != db.DeadlockDetected && st != db.SerializationFailure && !fkWait {
			return err
		}
		if len(keys) > 1 { // split between units: a move's two keys stay together
			mid := len(keys) / 2
			if err := a.applyChunk(ctx, keys[:mid], truncate, 0); err != nil {
				return err
			}
			return a.applyChunk(ctx, keys[mid:], false, lsn)
		}
		if attempt >= a.opt.ApplyAttempts {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// applyTx is one apply transaction. It runs at REPEATABLE READ, so that
// reading the keys' rows from blue and writing them to green happen as of
// one snapshot, and a concurrent writer of the same green row (a client
// writing green, whose reverse trigger then writes blue) makes it fail with
// a serialization error instead of being overwritten with what blue held
// before that writer: the retry reads blue again, past the writer. (At
// READ COMMITTED the upsert would wait for the writer, then update its row
// with the values read before; the writer's echo being skipped, green
// would keep the stale values.)
func (a *applier) applyTx(ctx context.Context, c chunk, truncate bool, lsn pglogrepl.LSN, replace bool) error {
	tx, err := a.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, retireLockSharedSQL, a.migration); err != nil {
		return err
	}
	n := a.names
	var fwd string
	var green bool
	if err := tx.QueryRow(ctx, a.sql.begin, db.Ident(n.Blue.Schema, n.Blue.Name), n.Trigger, db.Ident(n.Green.Schema, n.Green.Name),
		n.SyncFlag, a.searchPath, fmt.Sprintf("%dms", a.opt.LockTimeout.Milliseconds())).Scan(&fwd, &green, nil, nil, nil, nil, nil, nil, nil, nil); err != nil {
		return err
	}
	if !green || fwd != "D" {
		return ErrRetired
	}
	if len(a.tables) > 1 {
		return a.applyTables(ctx, tx, c, truncate, lsn, replace)
	}
	if truncate {
		if _, err := tx.Exec(ctx, a.sql.truncate); err != nil {
			return fmt.Errorf("apply a TRUNCATE of blue: %w", err)
		}
	}
	moves := c.moves()
	if replace || a.sql.move == "" {
		moves = nil
	}
	if len(moves) > 0 {
		if err := a.applyMoves(ctx, tx, a.tables[0], moves); err != nil {
			return err
		}
	}
	if fresh := c.freshKeys(); len(fresh) > 0 && !replace {
		// A new row under a key another row left in this batch: green's
		// row there is the old one's (unless moved above); the re-copy
		// then inserts the new row instead of updating the old one.
		if _, err := tx.Exec(ctx, a.sql.all, rowsql.KeyArgs(fresh, len(a.sql.keyCols))...); err != nil {
			return fmt.Errorf("apply: delete green rows of keys with a new row: %w", err)
		}
	}
	if keys, gone := c.keys(); len(keys) > 0 {
		args := rowsql.KeyArgs(keys, len(a.sql.keyCols))
		withGone := append(args[:len(args):len(args)], gone)
		if a.sql.combined != "" && !replace {
			q, qargs := a.sql.combined, withGone
			if !slices.Contains(gone, true) {
				// Nothing for the combined statement to delete: the
				// upsert alone, without the key set's CTEs, costs less.
				q, qargs = a.sql.upsert, args
			}
			if _, err := tx.Exec(ctx, q, qargs...); err != nil {
				return fmt.Errorf("apply %d keys from blue: %w", len(keys), err)
			}
			return a.commit(ctx, tx, lsn)
		}
		del, delArgs := a.sql.stale, withGone
		if replace {
			del, delArgs = a.sql.all, args
		}
		if _, err := tx.Exec(ctx, del, delArgs...); err != nil {
			return fmt.Errorf("apply: delete green rows blue no longer has: %w", err)
		}
		if _, err := tx.Exec(ctx, a.sql.upsert, args...); err != nil {
			return fmt.Errorf("apply: copy %d keys from blue: %w", len(keys), err)
		}
	}
	return a.commit(ctx, tx, lsn)
}

// applyTables is applyTx's work for a migration of several tables: every
// table the chunk touches is written in this one transaction, from blue as
// of its one snapshot, so a parent and its children written in one source
// transaction (one unit: batch.together) reach green together, and the
// foreign keys among the greens (enforced for new rows once the copy is
// done) hold after every statement: rows are written referenced tables
// first — after the rows the written ones reference as of the snapshot
// (parents: blue may hold a child whose parent's change is still in the
// stream) — and deleted referencing tables first. Moves run first, in
// dependency order (a moved parent's key is followed by ON UPDATE
// CASCADE); deletes of keys with a new row (fresh) before any upsert,
// referencing tables first.
func (a *applier) applyTables(ctx context.Context, tx pgx.Tx, c chunk, truncate bool, lsn pglogrepl.LSN, replace bool) error {
	parts := c.byTable(len(a.tables))
	exec := func(t *tableSQL, what, q string, args ...any) error {
		if _, err := tx.Exec(ctx, q, args...); err != nil {
			return fmt.Errorf("apply to %s: %s: %w", t.names.Green, what, err)
		}
		return nil
	}
	reverse := func(fn func(i int, t *tableSQL) error) error {
		for i := len(a.tables) - 1; i >= 0; i-- {
			if err := fn(i, a.tables[i]); err != nil {
				return err
			}
		}
		return nil
	}
	if truncate {
		// Which blue was truncated is not kept: every green loses the rows
		// its blue no longer has, referencing tables first.
		if err := reverse(func(_ int, t *tableSQL) error {
			return exec(t, "a TRUNCATE of blue", t.sql.truncate)
		}); err != nil {
			return err
		}
	}
	if !replace {
		for i, t := range a.tables {
			if mv := parts[i].moves; len(mv) > 0 && t.sql.move != "" {
				if err := a.applyMoves(ctx, tx, t, mv); err != nil {
					return err
				}
			}
		}
	}
	if err := reverse(func(i int, t *tableSQL) error {
		p := parts[i]
		switch {
		case replace && len(p.keys) > 0:
			return exec(t, "delete the keys' rows (replace)", t.sql.all, rowsql.KeyArgs(p.keys, len(t.sql.keyCols))...)
		case !replace && len(p.fresh) > 0:
			return exec(t, "delete green rows of keys with a new row", t.sql.all, rowsql.KeyArgs(p.fresh, len(t.sql.keyCols))...)
		}
		return nil
	}); err != nil {
		return err
	}
	for i, t := range a.tables {
		for j, ch := range a.tables {
			for _, ps := range ch.parents {
				if ps.parent == i && len(parts[j].keys) > 0 {
					if err := exec(t, "copy the rows "+ch.names.Blue.Name+" references", ps.sql, rowsql.KeyArgs(parts[j].keys, len(ch.sql.keyCols))...); err != nil {
						return err
					}
				}
			}
		}
		if keys := parts[i].keys; len(keys) > 0 {
			if err := exec(t, fmt.Sprintf("copy %d keys from blue", len(keys)), t.sql.upsert, rowsql.KeyArgs(keys, len(t.sql.keyCols))...); err != nil {
				return err
			}
		}
	}
	if !replace {
		if err := reverse(func(i int, t *tableSQL) error {
			p := parts[i]
			if !slices.Contains(p.gone, true) {
				return nil // only a key the batch removed is deleted (entry.gone)
			}
			args := append(rowsql.KeyArgs(p.keys, len(t.sql.keyCols)), p.gone)
			if err := a.deleteStaleChildren(ctx, tx, i, args); err != nil {
				return err
			}
			return exec(t, "delete green rows blue no longer has", t.sql.stale, args...)
		}); err != nil {
			return err
		}
	}
	return a.commit(ctx, tx, lsn)
}

// loadReferences finds the foreign keys among the blues of a migration of
// several tables (a table referencing one earlier in dependency order) and
// builds, for each, the upsert of the referenced rows (parentSQL). Read
// when a streamer starts: blue's constraints are the application's, and
// the plan refuses changing them meanwhile no more than it refuses any
// DDL (trap 16).
func (a *applier) loadReferences(ctx context.Context, q db.Querier) error {
	if len(a.tables) < 2 {
		return nil
	}
	for j, ch := range a.tables {
		ch.parents = nil
		refs, err := readFKRefs(ctx, q, blueReferencedSQL, db.Ident(ch.names.Blue.Schema, ch.names.Blue.Name))
		if err != nil {
			return fmt.Errorf("stream: read the foreign keys of %s: %w", ch.names.Blue, err)
		}
		for _, f := range refs {
			for i, p := range a.tables[:j] {
				if f.schema != p.names.Blue.Schema || f.rel != p.names.Blue.Name {
					continue
				}
				b := rowsql.For(&p.mapping.Forward)
				b.From, b.Into = db.Ident(p.names.Blue.Schema, p.names.Blue.Name), db.Ident(p.names.Green.Schema, p.names.Green.Name)
				st := b.UpsertReferenced(keyOf(p), f.pcols, db.Ident(ch.names.Blue.Schema, ch.names.Blue.Name), f.cols, keyOf(ch), "FOR KEY SHARE")
				ch.parents = append(ch.parents, parentSQL{parent: i, sql: st.SQL})
			}
		}
	}
	return nil
}

// keyOf is table t's sync key with blue's types.
func keyOf(t *tableSQL) rowsql.Key {
	types := make([]string, len(t.mapping.Key))
	for i, k := range t.mapping.Key {
		types[i] = t.blue.Column(k).Type
	}
	return rowsql.Key{Cols: t.mapping.Key, Types: types}
}

// applyMoves moves green's rows of re-keyed blue rows to their new keys,
// before the keys are re-copied. Run until it moves nothing: a row moved
// to a key another moved row has just left (A → B while C → A) finds its
// new key free only after the first one moved.
func (a *applier) applyMoves(ctx context.Context, tx pgx.Tx, t *tableSQL, moves []*move) error {
	for range len(moves) {
		from := make([][]string, len(moves))
		to := make([][]string, len(moves))
		for i, m := range moves {
			from[i], to[i] = m.from, m.to
		}
		args := append(rowsql.KeyArgs(from, len(t.sql.keyCols)), rowsql.KeyArgs(to, len(t.sql.keyCols))...)
		n := int64(0)
		for _, q := range []string{t.sql.move, t.sql.moveKey} {
			tag, err := tx.Exec(ctx, q, args...)
			if err != nil {
				return fmt.Errorf("apply: move %d re-keyed rows in green: %w", len(moves), err)
			}
			n += tag.RowsAffected()
		}
		if n == 0 {
			return nil
		}
	}
	return nil
}

// commit records the checkpoint (when lsn is not 0) and commits.
func (a *applier) commit(ctx context.Context, tx pgx.Tx, lsn pglogrepl.LSN) error {
	if lsn != 0 && a.checkpoint != nil {
		if err := a.checkpoint(ctx, tx, lsn); err != nil {
			return fmt.Errorf("apply: checkpoint %s: %w", lsn, err)
		}
	}
	return tx.Commit(ctx)
}

// greenReferencesSQL lists the foreign keys referencing a green ($1) from
// the migration's greens, with their columns in constraint order.
const greenReferencesSQL = `SELECT ns.nspname::text, r.relname::text,
       ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(c.conkey) WITH ORDINALITY AS k(n, o)
              JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o),
       ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(c.confkey) WITH ORDINALITY AS k(n, o)
              JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o)
  FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_class r ON r.oid = c.conrelid
  JOIN pg_catalog.pg_namespace ns ON ns.oid = r.relnamespace
 WHERE c.contype = 'f' AND c.confrelid = pg_catalog.to_regclass($1) AND c.conparentid = 0
 ORDER BY c.conname`

// deleteStaleChildren deletes, before table i's green rows that blue no
// longer has go (args: the chunk's keys of table i and their gone flags,
// as for applySQL.stale), the rows of the migration's other greens that
// reference them through a foreign key among the greens (there from the
// foreign-keys phase on). Blue holds no row referencing a row it lacks, so
// such a green row is one whose own change is still in the stream: moved
// to another parent, or deleted later with that other parent, while its
// last change applied left it (the stream leaves a key whose row has gone
// since to the change that removed it). Left there, the foreign key's
// action would delete it one trigger level down, where it is not
// greenswap's own write: green's reverse trigger would mirror it to blue,
// where the row is gone or elsewhere, and refuse it (40001) on every retry
// until the later change is applied, which waits behind this batch. Under
// NO ACTION the parent's delete would fail (23503) the same way. Deleted
// here, at the apply's own level, nothing is mirrored; the row's later
// change re-copies it from blue if blue still has it. One level: a row
// referencing a row deleted here is left to the foreign key's action.
func (a *applier) deleteStaleChildren(ctx context.Context, tx pgx.Tx, i int, args []any) error {
	parent := a.tables[i]
	green := db.Ident(parent.names.Green.Schema, parent.names.Green.Name)
	refs, err := readFKRefs(ctx, tx, greenReferencesSQL, green)
	if err != nil {
		return fmt.Errorf("apply: read the foreign keys referencing %s: %w", parent.names.Green, err)
	}
	for _, f := range refs {
		var child *tableSQL
		for _, t := range a.tables {
			if t.names.Green.Schema == f.schema && t.names.Green.Name == f.rel {
				child = t
			}
		}
		if child == nil || child == parent {
			continue // not a green of the migration, or its own parent: the action follows
		}
		q := staleChildrenSQL(parent, db.Ident(child.names.Green.Schema, child.names.Green.Name), f.cols, f.pcols)
		if _, err := tx.Exec(ctx, q, args...); err != nil {
			return fmt.Errorf("apply to %s: delete green rows referencing rows of %s that blue no longer has: %w", child.names.Green, parent.names.Green, err)
		}
	}
	return nil
}

// staleChildrenSQL deletes the rows of green child (cols, referencing
// parent's green pcols) whose referenced row of parent's green is one of
// the bound keys marked gone and blue has no row under that key. Args as
// applySQL.stale: one text[] per key column, then the gone flags.
func staleChildrenSQL(parent *tableSQL, child string, cols, pcols []string) string {
	m := parent.mapping
	params := make([]string, len(m.Key))
	ucols := make([]string, len(m.Key))
	var gmatch, bmatch []string
	for i, k := range m.Key {
		params[i] = fmt.Sprintf("$%d::text[]", i+1)
		ucols[i] = fmt.Sprintf("gs_k%d", i)
		bt := parent.blue.Column(k).Type
		gt := m.Forward.Column(k).Type
		gmatch = append(gmatch, "g."+db.Ident(k)+" "+rowsql.Op("=")+" CAST(CAST(u."+ucols[i]+" AS "+bt+") AS "+gt+")")
		bmatch = append(bmatch, "b."+db.Ident(k)+" "+rowsql.Op("=")+" CAST(u."+ucols[i]+" AS "+bt+")")
	}
	params = append(params, fmt.Sprintf("$%d::boolean[]", len(m.Key)+1))
	own := make([]string, len(cols))
	theirs := make([]string, len(pcols))
	for i := range cols {
		own[i] = "c." + db.Ident(cols[i])
		theirs[i] = "g." + db.Ident(pcols[i])
	}
	return fmt.Sprintf(`DELETE FROM %s AS c WHERE (%s) OPERATOR(pg_catalog.=) ANY (
	SELECT %s FROM %s AS g, %s AS u(%s, gs_gone)
	WHERE u.gs_gone AND %s
	  AND NOT EXISTS (SELECT 1 FROM %s AS b WHERE %s))`,
		child, strings.Join(own, ", "), strings.Join(theirs, ", "),
		db.Ident(parent.names.Green.Schema, parent.names.Green.Name), rowsql.RowsFromUnnest(params), strings.Join(ucols, ", "),
		strings.Join(gmatch, " AND "), db.Ident(parent.names.Blue.Schema, parent.names.Blue.Name), strings.Join(bmatch, " AND "))
}

// blueReferencedSQL lists the foreign keys of a blue ($1): the table each
// references, its columns and the referenced ones, in key order.
const blueReferencedSQL = `SELECT ns.nspname::text, r.relname::text,
		       ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(c.conkey) WITH ORDINALITY AS k(n, o)
		              JOIN pg_catalog.pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o),
		       ARRAY(SELECT a.attname::text FROM pg_catalog.unnest(c.confkey) WITH ORDINALITY AS k(n, o)
		              JOIN pg_catalog.pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o)
		  FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_class r ON r.oid = c.confrelid
		  JOIN pg_catalog.pg_namespace ns ON ns.oid = r.relnamespace
		 WHERE c.contype = 'f' AND c.conrelid = pg_catalog.to_regclass($1) AND c.conparentid = 0
		 ORDER BY c.conname`

// fkRef is one foreign key as blueReferencedSQL and greenReferencesSQL
// return it: the other table, this side's columns and the other side's.
type fkRef struct {
	schema, rel string
	cols, pcols []string
}

func readFKRefs(ctx context.Context, q db.Querier, sql, rel string) ([]fkRef, error) {
	rows, err := q.Query(ctx, sql, rel)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (fkRef, error) {
		var f fkRef
		err := r.Scan(&f.schema, &f.rel, &f.cols, &f.pcols)
		return f, err
	})
}
