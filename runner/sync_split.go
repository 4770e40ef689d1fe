package runner

// Sync of a table split (issue 15): adopt blue as for one table, create
// every green with the split's triggers in one transaction, backfill each
// green (parents first) with its where and its own checkpoint, build each
// green's indexes, analyze, switch on every green → blue trigger.

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
	gssync "github.com/greenswap/greenswap/sync"
	"github.com/greenswap/greenswap/trigger"
)

// splitRun is what a split's sync phases share.
type splitRun struct {
	*syncRun
	names   []shadow.Names // per spec.Split entry
	blue    *shadow.Table
	mapping *shadow.SplitMapping
}

// syncSplit runs Sync's phases for a split.
func (r *syncRun) syncSplit(ctx context.Context) error {
	sr := &splitRun{syncRun: r, names: shadow.SplitNames(r.spec)}
	return r.runPhases(ctx, []syncPhase{
		{PhaseAdopt, inTx(r.adopt)},
		{PhaseCreateGreen, inTx(sr.createGreens)},
		{PhaseBackfill, sr.backfill},
		{PhaseIndexes, inTx(sr.indexes)},
		{PhaseSettle, inTx(func(ctx context.Context) error { return r.settle(ctx, sr.names) })},
		{PhaseAnalyze, inTx(sr.analyze)},
		{PhaseEnableReverse, inTx(sr.enableReverse)},
	})
}

// greenTable is green g's key in the state's per-table progress.
func (sr *splitRun) greenTable(g *shadow.SplitGreen) string { return sr.names[g.Spec].Green.String() }

// load reads blue and the greens as they are and builds the split's mapping.
func (sr *splitRun) load(ctx context.Context, q db.Querier) error {
	blue, err := shadow.LoadTable(ctx, q, sr.names[0].Blue)
	if err != nil {
		return err
	}
	greens := make([]*shadow.Table, len(sr.names))
	for i, n := range sr.names {
		if greens[i], err = shadow.LoadTable(ctx, q, n.Green); err != nil {
			return err
		}
	}
	m, err := shadow.BuildSplitMapping(sr.spec, blue, greens)
	if err != nil {
		return err
	}
	sr.blue, sr.mapping = blue, m
	return nil
}

// greensExist counts the split's greens in the catalog.
func (sr *splitRun) greensExist(ctx context.Context) (int, error) {
	n := 0
	for _, nm := range sr.names {
		var ok bool
		if err := sr.env.Pool.QueryRow(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL`, db.Ident(nm.Green.Schema, nm.Green.Name)).Scan(&ok); err != nil {
			return 0, err
		}
		if ok {
			n++
		}
	}
	return n, nil
}

// createGreens creates every green (referenced ones first) and the split's
// sync triggers in one transaction holding blue's writers off for
// milliseconds; the foreign keys among the greens stay (parents are copied
// before children, and the triggers write parents first).
func (sr *splitRun) createGreens(ctx context.Context) error {
	have, err := sr.greensExist(ctx)
	if err != nil {
		return err
	}
	if have == len(sr.names) {
		if sr.phase == PhaseCreateGreen {
			return exitcode.Errorf(exitcode.Failed, "every green of %s exists but sync did not record creating them: made by hand? "+
				"roll the migration back and sync again", sr.spec.Name)
		}
		return sr.load(ctx, sr.env.Pool)
	}
	if have > 0 {
		return exitcode.Errorf(exitcode.Failed, "%d of the %d greens of %s exist: the migration's objects are inconsistent "+
			"(they are created in one transaction); inspect them, or roll the migration back", have, len(sr.names), sr.spec.Name)
	}
	t0 := time.Now()
	n0 := sr.names[0]
	err = shadow.RunWithLockRetry(ctx, sr.env.Pool, "create-green", sr.lockOptions(), sr.onRetry("create-green"), func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "LOCK TABLE "+db.Ident(n0.Blue.Schema, n0.Blue.Name)+" IN SHARE ROW EXCLUSIVE MODE"); err != nil {
			return err
		}
		var sql []string
		for k, i := range sr.spec.SplitOrder() {
			create := shadow.CreateGreenSQL(sr.names[i], sr.spec.SplitMember(i))
			if k > 0 {
				create = create[1:] // the green schema is made once
			}
			for _, q := range create {
				if _, err := tx.Exec(ctx, q); err != nil {
					return specErr(sr.spec.SplitMember(i), "target.ddl", "fix the green's CREATE TABLE (greenswap plan rehearses it)", "%s", shadow.ErrText(err))
				}
			}
			sql = append(sql, create...)
		}
		blue, err := shadow.LoadTable(ctx, tx, n0.Blue)
		if err != nil {
			return err
		}
		own, err := schemaOwnerSQL(ctx, tx, n0.GreenSchema, blue.Owner)
		if err != nil {
			return err
		}
		// Blue's privileges reach every green (and the green schema) as the
		// one-table green gets them: the app's roles keep what they had
		// through the app name, the greens' views and, after finalize, the
		// greens themselves, and no shape allows more (PrivilegeDrift).
		own = append(own, shadow.SchemaUsageSQL(n0.GreenSchema, blue)...)
		for _, nm := range sr.names {
			own = append(own, "ALTER TABLE "+db.Ident(nm.Green.Schema, nm.Green.Name)+" OWNER TO "+db.Ident(blue.Owner))
			green, err := shadow.LoadTable(ctx, tx, nm.Green)
			if err != nil {
				return err
			}
			own = append(own, shadow.GreenGrantSQL(nm.Green, blue, green)...)
		}
		for _, q := range own {
			if _, err := tx.Exec(ctx, q); err != nil {
				return err
			}
		}
		sql = append(sql, own...)
		if err := sr.load(ctx, tx); err != nil {
			return err
		}
		keyDefaults, err := sr.keyDefaultSQL(ctx, tx, blue)
		if err != nil {
			return err
		}
		for _, q := range keyDefaults {
			if _, err := tx.Exec(ctx, q); err != nil {
				return err
			}
		}
		sql = append(sql, keyDefaults...)
		install := trigger.SplitInstallStep(sr.names, sr.mapping, blue.Owner)
		if err := execStep(ctx, tx, install); err != nil {
			return err
		}
		sql = append(sql, install.SQL...)
		var est []state.TableEstimate
		for k := range sr.mapping.Greens {
			est = append(est, state.TableEstimate{Table: sr.greenTable(&sr.mapping.Greens[k]), Rows: blue.RowEstimate})
		}
		if err := state.StartTables(ctx, tx, sr.spec.Name, PhaseBackfill, est, nil); err != nil {
			return err
		}
		// The drift check's green is the green of the app's name, when
		// there is one (drift.go): greenswap's from here on.
		if err := recordFingerprintOf(ctx, tx, sr.spec, "blue", "green"); err != nil {
			return err
		}
		return state.Record(ctx, tx, sr.spec.Name, "create-green", "ok", time.Since(t0), stepSQL(shadow.Step{SQL: sql}),
			map[string]any{"greens": sr.spec.Split})
	})
	if err != nil {
		return err
	}
	sr.phase = PhaseBackfill
	sr.log.Info().Float64("took_ms", logx.Ms(time.Since(t0))).Msgf("created %d greens in %s; split triggers on (blue → every green)", len(sr.names), n0.GreenSchema)
	return nil
}

// backfill copies blue into each green in write order (parents first),
// each with its where and its own recorded cursor.
func (sr *splitRun) backfill(ctx context.Context, ev *phaseEvent) error {
	if phaseAfter(sr.phase, PhaseBackfill) {
		ev.Recorded = true
		return nil
	}
	if sr.mapping == nil {
		if err := sr.load(ctx, sr.env.Pool); err != nil {
			return err
		}
	}
	progress, err := sr.tableProgress(ctx)
	if err != nil {
		return err
	}
	var took time.Duration
	detail := map[string]any{}
	defer sr.backfillEvent(ev, "greens", &took, detail)
	for k := range sr.mapping.Greens {
		g := &sr.mapping.Greens[k]
		table := sr.greenTable(g)
		p, ok := progress[table]
		if !ok {
			return exitcode.Errorf(exitcode.Failed, "the state of %s has no backfill progress for %s: roll the migration back and sync again", sr.spec.Name, table)
		}
		if p.Done {
			continue
		}
		b := &Build{Spec: sr.spec.SplitMember(g.Spec), Names: sr.names[g.Spec], Blue: sr.blue, Mapping: sr.mapping.GreenMapping(g)}
		d, err := sr.backfillMember(ctx, table, b.Names, b, g.Where, p, k == len(sr.mapping.Greens)-1, detail)
		took += d
		if err != nil {
			return err
		}
	}
	sr.phase = PhaseIndexes
	return nil
}

// indexes builds each green's indexes (split[i].indexes), CONCURRENTLY.
func (sr *splitRun) indexes(ctx context.Context) error {
	if phaseAfter(sr.phase, PhaseIndexes) {
		return nil
	}
	var items []tableIndexes
	for i, t := range sr.spec.Split {
		items = append(items, tableIndexes{table: sr.names[i].Green.String(), names: sr.names[i], statements: t.Indexes})
	}
	if err := sr.buildTableIndexes(ctx, items); err != nil {
		return err
	}
	return sr.setPhase(ctx, sr.env.Pool, PhaseSettle)
}

// analyze collects statistics on every green.
func (sr *splitRun) analyze(ctx context.Context) error {
	if phaseAfter(sr.phase, PhaseAnalyze) {
		return nil
	}
	t0 := time.Now()
	var all []string
	for _, n := range sr.names {
		sql, err := gssync.Analyze(ctx, sr.env.Pool, n)
		if err != nil {
			return err
		}
		all = append(all, sql)
	}
	if err := state.Record(ctx, sr.env.Pool, sr.spec.Name, "analyze", "ok", time.Since(t0), fmt.Sprint(all), nil); err != nil {
		return err
	}
	return sr.setPhase(ctx, sr.env.Pool, PhaseEnableReverse)
}

// enableReverse switches on every green → blue trigger (and off every
// green's write gate) in the transaction that marks the split synced.
func (sr *splitRun) enableReverse(ctx context.Context) error {
	t0 := time.Now()
	sql := trigger.SplitSetReverseSQL(sr.names, true)
	err := shadow.RunWithLockRetry(ctx, sr.env.Pool, "enable-reverse", sr.lockOptions(), sr.onRetry("enable-reverse"), func(tx pgx.Tx) error {
		for _, s := range sql {
			if _, err := tx.Exec(ctx, s); err != nil {
				return err
			}
		}
		if err := state.Transition(ctx, tx, sr.spec.Name, state.Synced); err != nil {
			return err
		}
		// Its indexes, built since, are greenswap's too.
		if err := recordFingerprintOf(ctx, tx, sr.spec, "green"); err != nil {
			return err
		}
		if err := state.SetSynced(ctx, tx, sr.spec.Name); err != nil {
			return err
		}
		return state.Record(ctx, tx, sr.spec.Name, "synced", "ok", time.Since(t0), stepSQL(shadow.Step{SQL: sql}), nil)
	})
	if err != nil {
		return err
	}
	sr.phase, sr.row.State, sr.stats.State = PhaseNone, state.Synced, state.Synced
	sr.log.Info().Int("greens", len(sr.names)).Msg("synced: blue and every green are kept equal in both directions")
	return nil
}

// keyDefaultSQL gives each root green's key column blue's sequence default
// (a serial key's nextval), so a client of the new shape inserting without
// a key gets an id from the very sequence blue's inserts draw from: ids
// written through either shape never collide (trap 4, as for one table's
// green). finalize keeps the default and hands the sequence to the green
// named like the table. An identity key is not shared this way (finalize
// continues it in a new sequence).
func (sr *splitRun) keyDefaultSQL(ctx context.Context, q db.Querier, blue *shadow.Table) ([]string, error) {
	var out []string
	for k := range sr.mapping.Greens {
		g := &sr.mapping.Greens[k]
		if !g.Root {
			continue
		}
		nm := sr.names[g.Spec]
		green, err := shadow.LoadTable(ctx, q, nm.Green)
		if err != nil {
			return nil, err
		}
		for i, key := range sr.mapping.Key {
			bc, gc := blue.Column(key), green.Column(g.KeyOf[i])
			if bc == nil || gc == nil || !strings.Contains(bc.Default, "nextval(") || gc.Default != "" || gc.Identity != "" || gc.Generated != "" {
				continue
			}
			out = append(out, "ALTER TABLE "+db.Ident(nm.Green.Schema, nm.Green.Name)+" ALTER COLUMN "+db.Ident(gc.Name)+" SET DEFAULT "+bc.Default)
		}
	}
	return out, nil
}
