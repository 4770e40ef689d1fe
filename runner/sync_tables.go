package runner

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/logx"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	gssync "github.com/greenswap/greenswap/sync"
)

// A migration of several tables (issue 14) runs each sync phase over its
// members, in dependency order (referenced tables first), with the
// single-table code of each phase: adopt every table in one transaction,
// create every green (the foreign keys among them dropped until the copy
// is done) with its sync triggers in one transaction, in logical mode
// create the one slot and publication of every blue and start the one
// stream that carries all of them (feed_logical.go), backfill each table
// with its own checkpointed copy (state.TableProgress), build each table's
// indexes, add the foreign keys among the greens NOT VALID and validate
// them, analyze, switch on green → blue for every table in one
// transaction, and in logical mode wait for the stream to catch up.

// PhaseForeignKeys adds the foreign keys among the greens of a migration
// of several tables (NOT VALID, then VALIDATE); a one-table sync never
// records it.
const PhaseForeignKeys = "foreign-keys"

// member is one table of a migration of several tables.
type member struct {
	spec  *spec.Spec
	names shadow.Names
	build *Build
}

func (m *member) table() string { return m.names.App.String() }

// membersOf are the members of sp, with the names they use.
func membersOf(sp *spec.Spec) []*member {
	var out []*member
	for _, s := range sp.Members() {
		out = append(out, &member{spec: s, names: shadow.MemberNamesFor(sp.Name, s.AppTable(), sp.MultiTable())})
	}
	return out
}

// appTableOf is what the migrations row's app_table says: the app table,
// or every member's, in dependency order.
func appTableOf(sp *spec.Spec) string {
	if !sp.MultiTable() {
		return sp.AppTable().String()
	}
	var apps []string
	for _, m := range sp.Members() {
		apps = append(apps, m.AppTable().String())
	}
	return strings.Join(apps, ", ")
}

// MemberNames are the names of every table of a stored migration, in
// dependency order (one for a one-table migration).
func MemberNames(sp *spec.Spec) []shadow.Names {
	var out []shadow.Names
	for _, m := range membersOf(sp) {
		out = append(out, m.names)
	}
	return out
}

// syncTables runs Sync's phases for a migration of several tables.
func (r *syncRun) syncTables(ctx context.Context) error {
	r.members = membersOf(r.spec)
	return r.runPhases(ctx, []syncPhase{
		{PhaseAdopt, inTx(r.adoptTables)},
		{PhaseCreateGreen, inTx(r.createGreens)},
		{PhaseCreateSlot, inTx(func(ctx context.Context) error { return r.feed.start(ctx, r) })},
		{PhaseBackfill, r.backfillTables},
		{PhaseIndexes, inTx(r.indexesTables)},
		{PhaseForeignKeys, inTx(r.foreignKeys)},
		{PhaseSettle, inTx(func(ctx context.Context) error { return r.settle(ctx, r.memberNames()) })},
		{PhaseAnalyze, inTx(r.analyzeTables)},
		{PhaseEnableReverse, inTx(r.enableReverse)},
		{PhaseStreamCatchUp, inTx(func(ctx context.Context) error { return r.feed.catchUp(ctx, r) })},
	})
}

// syncPhase is one phase of a sync of several tables or of a split.
type syncPhase struct {
	name string
	fn   func(context.Context, *phaseEvent) error
}

// runPhases runs phases in order through runPhase, stopping before the
// backfill when the run sets up only.
func (r *syncRun) runPhases(ctx context.Context, phases []syncPhase) error {
	for _, ph := range phases {
		if r.opts.StopAfterSetup && ph.name == PhaseBackfill {
			break
		}
		if err := runPhase(ctx, r.env, r.log, r.spec.Name, ph.name, ph.fn); err != nil {
			return err
		}
	}
	return nil
}

// memberCatalog says how far adopt and green creation got for every member.
func (r *syncRun) memberCatalog(ctx context.Context) ([]catalogState, error) {
	out := make([]catalogState, len(r.members))
	for i, m := range r.members {
		n := m.names
		if err := r.env.Pool.QueryRow(ctx, catalogStateSQL, n.BlueSchema, db.Ident(n.Blue.Schema, n.Blue.Name),
			n.App.Schema, n.App.Name, db.Ident(n.Green.Schema, n.Green.Name)).Scan(&out[i].blueSchema, &out[i].blue, &out[i].appKind, &out[i].green); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// lockAll locks every member's relation rel(m) in mode, in dependency
// order, all up front: the first waits under the lock timeout, the others
// NOWAIT, and when one is busy all are released and taken again
// (shadow.LockInOrder), so the step never holds one table's lock while it
// waits for another's: an app transaction touching the tables in the other
// order cannot deadlock with it. A timeout is a retryable lock error and
// nothing is half taken.
func (r *syncRun) lockAll(ctx context.Context, tx pgx.Tx, mode string, rel func(*member) spec.QualifiedName) error {
	var locks []shadow.OrderedLock
	for _, m := range r.members {
		q := rel(m)
		locks = append(locks, shadow.TableLock(db.Ident(q.Schema, q.Name), mode))
	}
	_, err := shadow.LockInOrder(ctx, tx, locks, r.lockOptions().Timeout)
	return err
}

// withoutSchema drops the version schema's CREATE SCHEMA from a member's
// step after the first: the schemas are the migration's, made once.
func withoutSchema(sql []string, schema string) []string {
	create := "CREATE SCHEMA " + db.Ident(schema)
	out := sql[:0:0]
	for _, s := range sql {
		if s != create {
			out = append(out, s)
		}
	}
	return out
}

// adoptTables adopts every table in one transaction: all or none.
func (r *syncRun) adoptTables(ctx context.Context) error {
	cs, err := r.memberCatalog(ctx)
	if err != nil {
		return err
	}
	adopted := 0
	for i, c := range cs {
		switch {
		case c.adopted():
			adopted++
		case c.blue || c.green:
			return exitcode.Errorf(exitcode.Failed, "%s is not a view but %s exists: the migration's objects are inconsistent; "+
				"inspect them, or roll the migration back", r.members[i].names.App, r.members[i].names.Blue)
		case c.appKind != "" && c.appKind != "r" && c.appKind != "p":
			return r.members[i].spec.Errorf("table", "name a table", "%s is not a table (relkind %s)", r.members[i].names.App, c.appKind)
		}
	}
	if adopted == len(cs) {
		return r.adoptedAlready(ctx)
	}
	if adopted > 0 {
		return exitcode.Errorf(exitcode.Failed, "%d of the %d tables of %s are adopted: the migration's objects are inconsistent "+
			"(adopt takes all of them in one transaction); inspect them, or roll the migration back", adopted, len(cs), r.spec.Name)
	}
	r.log.Info().Str("tables", appTableOf(r.spec)).Str("schema", r.names.BlueSchema).Msg("adopting the tables")
	t0 := time.Now()
	var steps []shadow.Step
	err = shadow.RunWithLockRetry(ctx, r.env.Pool, "adopt", r.lockOptions(), r.onRetry("adopt"), func(tx pgx.Tx) error {
		steps = nil
		// Every app table locked first, in one statement, then the catalog
		// read under the locks.
		if err := r.lockAll(ctx, tx, "ACCESS EXCLUSIVE", func(m *member) spec.QualifiedName { return m.names.App }); err != nil {
			if db.SQLState(err) == db.UndefinedTable {
				return r.spec.Errorf("tables", "check the names and the database you are connected to", "a table of %s does not exist: %s", r.spec.Name, shadow.ErrText(err))
			}
			return err
		}
		for i, m := range r.members {
			app, err := loadApp(ctx, tx, m.spec)
			if err != nil {
				return err
			}
			step := shadow.AdoptStep(m.names, app, r.env.ServerMajor)
			if i > 0 {
				step.SQL = withoutSchema(step.SQL, m.names.BlueSchema)
			}
			own, err := schemaOwnerSQL(ctx, tx, m.names.BlueSchema, app.Owner)
			if err != nil {
				return err
			}
			step.SQL = append(step.SQL, own...)
			if err := execStep(ctx, tx, step); err != nil {
				return err
			}
			steps = append(steps, step)
		}
		if err := state.Transition(ctx, tx, r.spec.Name, state.Syncing); err != nil {
			return err
		}
		if err := state.SetPhase(ctx, tx, r.spec.Name, PhaseCreateGreen); err != nil {
			return err
		}
		if err := recordFingerprint(ctx, tx, r.spec, nil); err != nil { // every table's views and blues (drift.go)
			return err
		}
		return state.Record(ctx, tx, r.spec.Name, "adopt", "ok", time.Since(t0), stepSQL(steps...), map[string]any{"tables": appTableOf(r.spec)})
	})
	if err != nil {
		return err
	}
	r.phase, r.row.State = PhaseCreateGreen, state.Syncing
	r.log.Info().Float64("took_ms", logx.Ms(time.Since(t0))).Msgf("adopted %d tables: each app name is now a view over its blue", len(r.members))
	return nil
}

// greenFKsSQL lists the foreign keys among the greens of a migration:
// referencing and referenced table both in green's schema.
const greenFKsSQL = `SELECT c.conrelid::pg_catalog.regclass::text, c.conname::text, pg_catalog.pg_get_constraintdef(c.oid), cl.relname::text
	FROM pg_catalog.pg_constraint c
	JOIN pg_catalog.pg_class cl ON cl.oid = c.conrelid
	JOIN pg_catalog.pg_class rf ON rf.oid = c.confrelid
	WHERE c.contype = 'f' AND cl.relnamespace = $1::regnamespace AND rf.relnamespace = $1::regnamespace
	  AND c.conparentid = 0
	ORDER BY cl.relname, c.conname`

// createGreens creates every green with its sync triggers in one
// transaction (blue's writers held off for milliseconds), referenced
// greens first, and drops the foreign keys among them: enforced during the
// copy, a trigger's write of a child whose parent is not copied yet would
// fail the app's own transaction. They are recorded in the state and
// added back after the copy (foreignKeys).
func (r *syncRun) createGreens(ctx context.Context) error {
	cs, err := r.memberCatalog(ctx)
	if err != nil {
		return err
	}
	greens := 0
	for _, c := range cs {
		if c.green {
			greens++
		}
	}
	if greens == len(cs) {
		for _, m := range r.members {
			if m.build, err = loadBuild(ctx, r.env.Pool, m.spec, m.names); err != nil {
				return err
			}
		}
		if r.phase == PhaseCreateGreen {
			return exitcode.Errorf(exitcode.Failed, "every green of %s exists but sync did not record creating them: made by hand? "+
				"roll the migration back and sync again", r.spec.Name)
		}
		return nil
	}
	if greens > 0 {
		return exitcode.Errorf(exitcode.Failed, "%d of the %d greens of %s exist: the migration's objects are inconsistent "+
			"(they are created in one transaction); inspect them, or roll the migration back", greens, len(cs), r.spec.Name)
	}
	for i, c := range cs {
		if !c.adopted() {
			return exitcode.Errorf(exitcode.Failed, "%s is not adopted yet; re-run sync", r.members[i].names.App)
		}
	}
	t0 := time.Now()
	var fks []state.GreenFK
	err = shadow.RunWithLockRetry(ctx, r.env.Pool, "create-green", r.lockOptions(), r.onRetry("create-green"), func(tx pgx.Tx) error {
		if err := r.lockAll(ctx, tx, "SHARE ROW EXCLUSIVE", func(m *member) spec.QualifiedName { return m.names.Blue }); err != nil {
			return err
		}
		var steps []shadow.Step
		var est []state.TableEstimate
		for i, m := range r.members {
			b, err := createMemberGreenTx(ctx, tx, m.spec, m.names, i == 0)
			if err != nil {
				return err
			}
			m.build = b
			steps = append(steps, b.Steps...)
			est = append(est, state.TableEstimate{Table: m.table(), Rows: b.Blue.RowEstimate})
		}
		var err error
		if fks, err = dropGreenFKs(ctx, tx, r.names.GreenSchema, r.members); err != nil {
			return err
		}
		var drops []string
		for _, fk := range fks {
			drops = append(drops, dropFKSQL(fk))
		}
		steps = append(steps, shadow.Step{Name: "drop-green-fks", SQL: drops})
		if err := state.StartTables(ctx, tx, r.spec.Name, PhaseBackfill, est, fks); err != nil {
			return err
		}
		if err := recordFingerprintOf(ctx, tx, r.spec, "blue", "green"); err != nil {
			return err
		}
		return state.Record(ctx, tx, r.spec.Name, "create-green", "ok", time.Since(t0), stepSQL(steps...),
			map[string]any{"tables": appTableOf(r.spec), "deferred_foreign_keys": fks})
	})
	if err != nil {
		return err
	}
	r.phase = PhaseBackfill
	r.log.Info().Float64("took_ms", logx.Ms(time.Since(t0))).Int("deferred_foreign_keys", len(fks)).
		Msgf("created %d greens in %s; sync triggers on (blue → green)", len(r.members), r.names.GreenSchema)
	return nil
}

func dropFKSQL(fk state.GreenFK) string {
	return "ALTER TABLE " + fk.Table + " DROP CONSTRAINT " + db.Ident(fk.Name)
}

// dropGreenFKs reads the foreign keys among the greens (their definitions
// qualified: greenswap's sessions search pg_catalog alone) and drops them,
// in tx. GreenFK.Table is the referencing green, quoted and qualified.
func dropGreenFKs(ctx context.Context, tx pgx.Tx, schema string, members []*member) ([]state.GreenFK, error) {
	rows, err := tx.Query(ctx, greenFKsSQL, db.Ident(schema))
	if err != nil {
		return nil, fmt.Errorf("read the foreign keys among the greens: %w", err)
	}
	var fks []state.GreenFK
	for rows.Next() {
		var fk state.GreenFK
		var rel string
		if err := rows.Scan(&fk.Table, &fk.Name, &fk.Def, &rel); err != nil {
			rows.Close()
			return nil, err
		}
		fk.Table = db.Ident(schema, rel)
		fks = append(fks, fk)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for _, fk := range fks {
		if _, err := tx.Exec(ctx, dropFKSQL(fk)); err != nil {
			return nil, fmt.Errorf("drop %s on %s until the copy is done: %w", fk.Name, fk.Table, err)
		}
	}
	return fks, nil
}

// backfillTables copies every table in dependency order, each from its own
// recorded cursor; a member done is skipped, so a resumed sync goes on
// with the table it stopped in.
func (r *syncRun) backfillTables(ctx context.Context, ev *phaseEvent) error {
	if phaseAfter(r.phase, PhaseBackfill) {
		ev.Recorded = true
		return nil
	}
	progress, err := r.tableProgress(ctx)
	if err != nil {
		return err
	}
	var took time.Duration
	detail := map[string]any{}
	defer r.backfillEvent(ev, "tables", &took, detail)
	for i, m := range r.members {
		p, ok := progress[m.table()]
		if !ok {
			return exitcode.Errorf(exitcode.Failed, "the state of %s has no backfill progress for %s: roll the migration back and sync again", r.spec.Name, m.table())
		}
		if p.Done {
			continue
		}
		if m.build == nil {
			if m.build, err = loadBuild(ctx, r.env.Pool, m.spec, m.names); err != nil {
				return err
			}
		}
		d, err := r.backfillMember(ctx, m.table(), m.names, m.build, "", p, i == len(r.members)-1, detail)
		took += d
		if err != nil {
			return err
		}
	}
	r.phase = PhaseIndexes
	return nil
}

// backfillEvent fills the backfill phase's event once the copies end: the
// time they took, each table's detail under key, the run's totals.
func (r *syncRun) backfillEvent(ev *phaseEvent, key string, took *time.Duration, detail map[string]any) {
	ev.Took, ev.Detail = *took, map[string]any{key: detail, "rows": r.stats.Rows, "batches": r.stats.Batches}
	if s := r.stats.Backfill.Seconds(); s > 0 {
		r.stats.RowsPerSec = float64(r.stats.Rows) / s
	}
}

// tableProgress is the per-table backfill progress of the migration's
// state row (several tables, or a split's greens).
func (r *syncRun) tableProgress(ctx context.Context) (map[string]state.TableProgress, error) {
	row, err := state.Get(ctx, r.env.Pool, r.spec.Name)
	if err != nil {
		return nil, err
	}
	return row.Tables()
}

// backfillMember copies one table (a member, or a split's green: where its
// filter) from its recorded progress p, checkpointing under table; last
// marks the migration's last copy. It adds to the run's stats and to
// detail, and returns the copy's duration.
func (r *syncRun) backfillMember(ctx context.Context, table string, n shadow.Names, b *Build, where string, p state.TableProgress, last bool,
	detail map[string]any) (time.Duration, error) {
	bo := r.backfillOptions(p.BatchSize)
	// One cursor per member: the tables column records one cursor each,
	// not a parallel copy's ranges (a split's greens come here too).
	bo.Workers = 1
	bf := r.backfiller(ctx, n, b, bo, p.RowsCopied, func(ctx context.Context, tx pgx.Tx, cp gssync.Checkpoint) error {
		return state.SetTableCheckpoint(ctx, tx, r.spec.Name, state.TableCheckpoint{Table: table, Cursor: cp.Cursor,
			RowsCopied: cp.RowsCopied, BatchSize: cp.BatchSize, RowsPerSec: cp.RowsPerSec, Done: cp.Done, Last: cp.Done && last, Next: PhaseIndexes})
	})
	bf.Where = where
	bf.Log = r.log.With().Str("table", table).Logger()
	r.log.Info().Str("table", table).Strs("cursor", p.Cursor).Int64("rows_estimate", p.RowsEstimate).Int("batch_size", bo.BatchSize).Msg("backfill")
	res, err := bf.Run(ctx, gssync.Cursor(p.Cursor))
	r.stats.Rows += res.Rows
	r.stats.Scanned += res.Scanned
	r.stats.Batches += res.Batches
	r.stats.Retries += res.Retries
	r.stats.Redone += res.Redone
	r.stats.Backfill += res.Duration
	detail[table] = map[string]any{"rows": res.Rows, "batches": res.Batches, "from": p.Cursor, "to": res.Cursor, "done": res.Done}
	if err != nil {
		return res.Duration, err
	}
	r.log.Info().Str("table", table).Int64("rows", res.Rows).Int("batches", res.Batches).Float64("took_ms", logx.Ms(res.Duration)).Msg("backfill of the table done")
	return res.Duration, nil
}

// indexesTables builds each member's target.indexes.
func (r *syncRun) indexesTables(ctx context.Context) error {
	if phaseAfter(r.phase, PhaseIndexes) {
		return nil
	}
	var items []tableIndexes
	for _, m := range r.members {
		items = append(items, tableIndexes{table: m.table(), names: m.names, statements: m.spec.Target.Indexes})
	}
	if err := r.buildTableIndexes(ctx, items); err != nil {
		return err
	}
	return r.setPhase(ctx, r.env.Pool, PhaseForeignKeys)
}

// tableIndexes are the index statements of one table of several (or of a
// split's green), under its key in the per-table progress.
type tableIndexes struct {
	table      string
	names      shadow.Names
	statements []string
}

// buildTableIndexes builds each table's indexes CONCURRENTLY, skipping
// those the progress records built.
func (r *syncRun) buildTableIndexes(ctx context.Context, items []tableIndexes) error {
	progress, err := r.tableProgress(ctx)
	if err != nil {
		return err
	}
	for _, it := range items {
		if len(it.statements) == 0 {
			continue
		}
		built, err := progress[it.table].BuiltIndexesOf()
		if err != nil {
			return err
		}
		table := it.table
		ib := &gssync.IndexBuild{
			ConnConfig: r.env.ConnConfig,
			Migration:  r.spec.Name,
			Names:      it.names,
			Statements: it.statements,
			Built:      built,
			Lock:       r.lockOptions(),
			// The copies are one cursor each, but the builds may still
			// sort on as many processes as a parallel copy would use.
			Participants: r.workers(),
			Log:          r.log.With().Str("table", table).Logger(),
			OnEvent: func(ctx context.Context, ev gssync.IndexEvent) error {
				return r.recordTableIndexEvent(ctx, table, ev)
			},
		}
		if err := ib.Run(ctx); err != nil {
			return err
		}
	}
	return nil
}

// recordTableIndexEvent is recordIndexEvent for a member.
func (r *syncRun) recordTableIndexEvent(ctx context.Context, table string, ev gssync.IndexEvent) error {
	ctx = context.WithoutCancel(ctx)
	tx, err := r.env.Pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if err := state.Record(ctx, tx, r.spec.Name, ev.Action+"-index", "ok", ev.Took, ev.SQL,
		map[string]any{"table": table, "statement": ev.Statement, "index": ev.Index}); err != nil {
		return err
	}
	if ev.Action == "build" && ev.Index != "" {
		if err := state.AddTableBuiltIndex(ctx, tx, r.spec.Name, table, ev.Statement, ev.Index); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// foreignKeys adds the foreign keys among the greens back, each NOT VALID
// (a SHARE ROW EXCLUSIVE lock on both greens for milliseconds, retried)
// then VALIDATEd in a transaction of its own (SHARE UPDATE EXCLUSIVE on
// the referencing green, ROW SHARE on the referenced one: the scan blocks
// no write). Each step is an event, recorded with its state change; a
// resumed sync goes on with the next one.
func (r *syncRun) foreignKeys(ctx context.Context) error {
	if phaseAfter(r.phase, PhaseForeignKeys) {
		return nil
	}
	row, err := state.Get(ctx, r.env.Pool, r.spec.Name)
	if err != nil {
		return err
	}
	fks, err := row.GreenFKs()
	if err != nil {
		return err
	}
	// Added NOT VALID while the greens are exact copies of the blues (in
	// logical mode blue's writers wait meanwhile): from then on the
	// foreign keys hold for every write to green, so the VALIDATE that
	// follows (without holding anybody) finds what they held at the add.
	var adds []int
	for i := range fks {
		if !fks[i].Added {
			adds = append(adds, i)
		}
	}
	if len(adds) > 0 {
		if err := r.feed.consistent(ctx, r, func(ctx context.Context) error {
			for _, i := range adds {
				fk := &fks[i]
				add := "ALTER TABLE " + fk.Table + " ADD CONSTRAINT " + db.Ident(fk.Name) + " " + fk.Def + " NOT VALID"
				if _, err := r.greenFKStep(ctx, "add-foreign-key", add, fks, fk, &fk.Added, "",
					fmt.Sprintf("add %s on %s NOT VALID", fk.Name, fk.Table)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
	}
	for i := range fks {
		fk := &fks[i]
		if !fk.Validated {
			validate := "ALTER TABLE " + fk.Table + " VALIDATE CONSTRAINT " + db.Ident(fk.Name)
			// The scan may take long; only the lock wait is bounded.
			took, err := r.greenFKStep(ctx, "validate-foreign-key", validate, fks, fk, &fk.Validated, "SET LOCAL statement_timeout = 0",
				fmt.Sprintf("validate %s on %s (a row of the green has no parent: compare blue and green with greenswap verify)", fk.Name, fk.Table))
			if err != nil {
				return err
			}
			r.log.Info().Str("table", fk.Table).Str("constraint", fk.Name).Float64("took_ms", logx.Ms(took)).Msg("foreign key among the greens validated")
		}
	}
	return r.setPhase(ctx, r.env.Pool, PhaseSettle)
}

// greenFKStep runs one step of a foreign key among the greens (step: add
// NOT VALID, or validate) in its own transaction with the lock retry, after
// prep when given; the step is marked done (*done) in the state row and
// recorded as an event in that same transaction, so a resumed sync skips
// exactly the steps that committed.
func (r *syncRun) greenFKStep(ctx context.Context, step, sql string, fks []state.GreenFK, fk *state.GreenFK, done *bool,
	prep, what string) (time.Duration, error) {
	t0 := time.Now()
	err := shadow.RunWithLockRetry(ctx, r.env.Pool, step, r.lockOptions(), r.onRetry(step), func(tx pgx.Tx) error {
		if prep != "" {
			if _, err := tx.Exec(ctx, prep); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		*done = true
		if err := state.SetGreenFKs(ctx, tx, r.spec.Name, fks); err != nil {
			return err
		}
		return state.Record(ctx, tx, r.spec.Name, step, "ok", time.Since(t0), sql, map[string]any{"table": fk.Table, "constraint": fk.Name})
	})
	if err != nil {
		*done = false
	}
	return time.Since(t0), err
}

// analyzeTables collects statistics on every green.
func (r *syncRun) analyzeTables(ctx context.Context) error {
	if phaseAfter(r.phase, PhaseAnalyze) {
		return nil
	}
	t0 := time.Now()
	var all []string
	for _, m := range r.members {
		sql, err := gssync.Analyze(ctx, r.env.Pool, m.names)
		if err != nil {
			return err
		}
		all = append(all, sql)
	}
	if err := state.Record(ctx, r.env.Pool, r.spec.Name, "analyze", "ok", time.Since(t0), strings.Join(all, ";\n"), nil); err != nil {
		return err
	}
	if err := r.env.atSyncPoint(ctx, "analyzed"); err != nil {
		return err
	}
	return r.setPhase(ctx, r.env.Pool, PhaseEnableReverse)
}

// namesOf are a migration's names: for several tables, the first
// member's (the schemas, trigger and flag are the migration's).
func namesOf(sp *spec.Spec) shadow.Names {
	if !sp.MultiTable() {
		return shadow.NamesFor(sp.Name, sp.AppTable())
	}
	return membersOf(sp)[0].names
}
