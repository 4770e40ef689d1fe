package runner

// Table splits (issue 15): one blue, several greens. Plan rehearses the
// split (adopt, every green, the split's triggers, a sample copied into
// every green and rebuilt back) and shows the data flow per green.

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/rowsql"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	gssync "github.com/greenswap/greenswap/sync"
	"github.com/greenswap/greenswap/trigger"
)

// refuseSplit is the answer of a command that does not handle a split yet:
// a spec error (exit 2) before anything is touched.
func refuseSplit(sp *spec.Spec, command string) error {
	return sp.Errorf("split", "wait for the release that completes table splits, or migrate the table without split:",
		"%s does not handle a table split yet", command)
}

// SplitPlan is plan's account of a split: where each green's rows come from
// and how the blue row is rebuilt from them.
type SplitPlan struct {
	Greens []SplitPlanGreen `json:"greens"`
	// Rebuild is blue's written columns, each with the expression over the
	// joined greens that rebuilds it ("bio ← user_profiles.bio").
	Rebuild []string `json:"rebuild"`
	// RebuildSQL is the old shape rebuilt from the greens (what verify
	// compares with blue, what each green's reverse trigger upserts).
	RebuildSQL string               `json:"rebuild_sql"`
	Dropped    []string             `json:"dropped,omitempty"`
	Sample     shadow.SplitSample   `json:"sample"`
	Mapping    *shadow.SplitMapping `json:"mapping"`
}

// SplitPlanGreen is one green's data flow.
type SplitPlanGreen struct {
	Table      string   `json:"table"` // in green's schema
	Where      string   `json:"where,omitempty"`
	Root       bool     `json:"root"`
	References []string `json:"references,omitempty"` // the greens it references
	Columns    []string `json:"columns"`              // "user_id ← id"
	Key        []string `json:"key"`
	SampleRows int64    `json:"sample_rows"` // of the sample, the rows it received
}

// splitSampleRows is how many of blue's rows plan copies into the greens
// and rebuilds back.
const splitSampleRows = 1000

// planSplit is Plan for a split: everything in one rolled-back
// transaction, as for one table.
func planSplit(ctx context.Context, env *Env, s *spec.Spec, opts PlanOptions) (*PlanResult, error) {
	opts = opts.withDefaults(s)
	res, err := rehearseRolledBack(ctx, env, opts, s.AppTable().String(), func(tx pgx.Tx) (*PlanResult, error) {
		return rehearseSplit(ctx, env, s, opts, tx)
	})
	if err != nil {
		return nil, err
	}
	res.countHazards()
	return res, nil
}

func rehearseSplit(ctx context.Context, env *Env, s *spec.Spec, opts PlanOptions, tx pgx.Tx) (*PlanResult, error) {
	names := shadow.SplitNames(s)
	n0 := names[0]
	var greenNames []string
	for _, i := range s.SplitOrder() {
		greenNames = append(greenNames, names[i].Green.String())
	}
	res := &PlanResult{
		SchemaVersion: PlanSchemaVersion, Migration: s.Name, SpecFile: s.File, Table: s.AppTable().String(), Mode: s.Mode,
		BlueSchema: n0.BlueSchema, GreenSchema: n0.GreenSchema, GreenTable: strings.Join(greenNames, ", "),
		Steps: []PlanStep{}, Hazards: []shadow.Hazard{}, Key: []string{}, Privileges: []shadow.Privilege{},
	}
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.set_config('statement_timeout', $1, true)`,
		fmt.Sprintf("%dms", opts.StatementTimeout.Milliseconds())); err != nil {
		return nil, err
	}
	if err := tx.QueryRow(ctx, `SELECT pg_catalog.current_setting('server_version')`).Scan(&res.Server.Version); err != nil {
		return nil, err
	}
	res.Server.Major = env.ServerMajor
	app, err := loadApp(ctx, tx, s)
	if err != nil {
		return nil, err
	}
	if app.Kind != "r" {
		return nil, specErr(s, "table", "split a plain table: a partitioned or otherwise special blue is not supported in a split yet",
			"%s is not a plain table (pg_class.relkind %q)", app.Name, app.Kind)
	}
	res.Estimate.Rows = app.RowEstimate
	if err := tx.QueryRow(ctx, `SELECT pg_catalog.pg_table_size($1::oid), pg_catalog.pg_indexes_size($1::oid)`, app.OID).
		Scan(&res.Estimate.BlueTableBytes, &res.Estimate.BlueIndexBytes); err != nil {
		return nil, err
	}
	lockFrom := time.Now()
	n := 0
	step := func(st shadow.Step, command string, exact bool, note string) {
		n++
		res.Steps = append(res.Steps, PlanStep{N: n, Step: st, Command: command, Exact: exact, Note: note})
	}

	adopt := shadow.AdoptStep(n0, app, env.ServerMajor)
	if err := execStep(ctx, tx, adopt); err != nil {
		return nil, err
	}
	step(adopt, "sync", true, "")

	create := shadow.Step{Name: "create-greens", Description: "create every green in the green version schema, referenced greens first",
		Lock: "none on blue (new tables)", LockHold: "milliseconds", Transactional: true}
	for k, i := range s.SplitOrder() {
		sql := shadow.CreateGreenSQL(names[i], s.SplitMember(i))
		if k > 0 {
			sql = sql[1:] // the schema is made once
		}
		for _, q := range sql {
			if _, err := tx.Exec(ctx, q); err != nil {
				return nil, specErr(s.SplitMember(i), "target.ddl", "fix the green's CREATE TABLE", "%s", shadow.ErrText(err))
			}
		}
		create.SQL = append(create.SQL, sql...)
	}
	blue, err := shadow.LoadTable(ctx, tx, n0.Blue)
	if err != nil {
		return nil, err
	}
	greens := make([]*shadow.Table, len(s.Split))
	for i, nm := range names {
		if greens[i], err = shadow.LoadTable(ctx, tx, nm.Green); err != nil {
			return nil, err
		}
		create.SQL = append(create.SQL, "ALTER TABLE "+db.Ident(nm.Green.Schema, nm.Green.Name)+" OWNER TO "+db.Ident(blue.Owner))
		if _, err := tx.Exec(ctx, create.SQL[len(create.SQL)-1]); err != nil {
			return nil, err
		}
	}
	m, err := shadow.BuildSplitMapping(s, blue, greens)
	if err != nil {
		return nil, err
	}
	res.Key = m.Key
	install := trigger.SplitInstallStep(names, m, blue.Owner)
	if err := execStep(ctx, tx, install); err != nil {
		return nil, err
	}
	create.SQL = append(create.SQL, install.SQL...)
	create.Name, create.Description = "create-greens-and-triggers", create.Description+", with the split's sync triggers in the same transaction"
	step(create, "sync", true, "")

	sp := &SplitPlan{Mapping: m, Dropped: m.Dropped, RebuildSQL: m.RebuildSQL(n0.GreenSchema, nil)}
	sample, err := sampleSplit(ctx, tx, s, names, m, sp)
	if err != nil {
		return nil, err
	}
	sp.Sample = sample
	for _, c := range m.Reverse {
		sp.Rebuild = append(sp.Rebuild, c.Target+" ← "+c.Expr)
	}
	for _, g := range m.Greens {
		key, err := rowsql.WalkKey(blue, m.Key)
		if err != nil {
			return nil, err
		}
		b := rowsql.For(&g.Forward)
		b.From = db.Ident(n0.Blue.Schema, n0.Blue.Name)
		b.Filter = g.Where
		lock := m.GreenMapping(&g).SourceRowLock()
		if g.Where != "" {
			lock = "FOR SHARE"
		}
		st := b.CopyBatch(key, lock, true, true, true)
		step(shadow.Step{Name: "backfill " + g.Name, Description: fmt.Sprintf("copy blue's rows%s into %s in keyed batches (parents before children)", whereText(g.Where), g.Forward.Target),
			SQL: []string{st.SQL}, Lock: "blue's rows of a batch " + lock + " while it runs", LockHold: "one batch", Transactional: true}, "sync", false, "$1..: the last key copied, then the batch's upper key")
	}
	var settle []string
	for _, n := range names {
		settle = append(settle, gssync.VacuumSQL(db.Ident(n.Green.Schema, n.Green.Name)))
	}
	step(shadow.Step{Name: "settle", Description: "vacuum every filled green before synced, one at a time between the backfill's throttles, at autovacuum's pace " +
		"(as for one table: see that plan's settle step); sync --no-settle skips it",
		SQL: settle, Lock: "SHARE UPDATE EXCLUSIVE on each green in turn (reads and writes continue; lock_timeout, retried)",
		LockHold: "while it vacuums (scales with the greens' size)"}, "sync", true, "")
	step(shadow.Step{Name: "analyze", Description: "collect planner statistics on every green",
		SQL: analyzeSQL(names), Lock: "SHARE UPDATE EXCLUSIVE on each green in turn (reads and writes continue)", LockHold: "seconds (a sample scan)"}, "sync", true, "")
	step(shadow.Step{Name: "enable-reverse", Description: "switch on every green → blue trigger and off every green's write gate, in one transaction, once every green is copied",
		SQL: trigger.SplitSetReverseSQL(names, true), Lock: "SHARE ROW EXCLUSIVE on blue and every green", LockHold: "milliseconds", Transactional: true}, "sync", true, "")
	res.Rehearsal.LockHeldMS = float64(time.Since(lockFrom).Microseconds()) / 1000
	res.Rehearsal.Done = true
	res.Split = sp
	res.Hazards = shadow.SplitHazards(s, m, greens, sample)
	if h := shadow.SplitInboundFKHazard(blue); h != nil {
		res.Hazards = append(res.Hazards, *h)
	}
	res.Estimate.GreenTableBytes = res.Estimate.BlueTableBytes
	res.Estimate.GreenIndexBytes = res.Estimate.BlueIndexBytes
	res.Estimate.GreenTotalBytes = res.Estimate.GreenTableBytes + res.Estimate.GreenIndexBytes
	res.Estimate.DiskNeededBytes = 2 * res.Estimate.GreenTotalBytes
	res.Estimate.RowsPerSecond = opts.RowsPerSecond
	res.Estimate.BackfillSeconds = float64(res.Estimate.Rows*int64(len(m.Greens))) / opts.RowsPerSecond
	res.Estimate.Note = "the greens together estimated at blue's size; each green is copied in its own pass over blue"
	return res, nil
}

func whereText(w string) string {
	if w == "" {
		return ""
	}
	return " where " + w
}

// sampleSplit copies the first splitSampleRows of blue (by key) into every
// green through the mapping, parents first (a failing expression, cast or
// constraint is a spec error naming the green), counts the sampled rows in
// no root and in several, and rebuilds the sample from the greens to count
// the rows that do not come back equal.
func sampleSplit(ctx context.Context, tx pgx.Tx, s *spec.Spec, names []shadow.Names, m *shadow.SplitMapping, sp *SplitPlan) (shadow.SplitSample, error) {
	var out shadow.SplitSample
	n0 := names[0]
	blue := db.Ident(n0.Blue.Schema, n0.Blue.Name)
	keyList := db.IdentList(m.Key)
	sample := "(SELECT * FROM " + blue + " ORDER BY " + keyList + " LIMIT " + fmt.Sprint(splitSampleRows) + ")"
	if _, err := tx.Exec(ctx, "SELECT "+trigger.SyncFlagExpr("$1"), n0.SyncFlag); err != nil {
		return out, err
	}
	if _, err := tx.Exec(ctx, "SET LOCAL search_path TO "+shadow.SearchPathFor(n0.App.Schema)); err != nil {
		return out, err
	}
	for _, g := range m.Greens {
		b := rowsql.Builder{Dir: &g.Forward, Into: db.Ident(n0.GreenSchema, g.Name)}
		from := sample + " AS s0"
		if g.Where != "" {
			from = "(SELECT * FROM " + sample + " AS s1 WHERE COALESCE((" + g.Where + ")::pg_catalog.bool, false)) AS s0"
		}
		if g.Where != "" {
			if _, err := tx.Exec(ctx, "SAVEPOINT gs_split_where; SELECT pg_catalog.count(*) FROM "+from+"; RELEASE SAVEPOINT gs_split_where"); err != nil {
				return out, s.Errorf(fmt.Sprintf("split[%d].where", g.Spec), "fix the expression: it reads blue's row, its columns by name",
					"evaluating it on sampled blue rows: %s", shadow.ErrText(err))
			}
		}
		ct, err := tx.Exec(ctx, b.Insert(from, rowsql.DoNothing, ""))
		if err != nil {
			field, fix := "forward", "fix the green's forward mapping so that it computes every green column from blue's row"
			if strings.HasPrefix(db.SQLState(err), "23") {
				field, fix = "target.ddl", "blue's rows break a constraint of the green: relax it, or map the values so they fit (forward)"
			}
			return out, specErr(s.SplitMember(g.Spec), field, fix, "copying sampled blue rows into %s: %s", g.Name, shadow.ErrText(err))
		}
		var refs []string
		for _, d := range s.SplitDependencies() {
			if d.From == g.Spec {
				refs = append(refs, s.SplitGreenName(d.To))
			}
		}
		var cols []string
		for _, c := range g.Forward.Columns {
			cols = append(cols, c.Target+" ← "+c.Expr)
		}
		sp.Greens = append(sp.Greens, SplitPlanGreen{Table: g.Forward.Target.String(), Where: g.Where, Root: g.Root, References: refs,
			Columns: cols, Key: g.Forward.TargetKey, SampleRows: ct.RowsAffected()})
	}
	var cases []string
	for _, r := range m.Roots() {
		if r.Where == "" {
			cases = append(cases, "1")
		} else {
			cases = append(cases, "CASE WHEN COALESCE(("+r.Where+")::pg_catalog.bool, false) THEN 1 ELSE 0 END")
		}
	}
	if err := tx.QueryRow(ctx, "SELECT pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE n = 0), pg_catalog.count(*) FILTER (WHERE n > 1) FROM (SELECT "+
		strings.Join(cases, " + ")+" AS n FROM "+sample+" AS s) AS c").Scan(&out.Rows, &out.NoRoot, &out.ManyRoots); err != nil {
		return out, err
	}
	// The round trip, in text forms (json has no equality).
	var blueCols, rebuiltCols []string
	for _, c := range m.Reverse {
		blueCols = append(blueCols, db.Ident(c.Target)+"::pg_catalog.text")
		rebuiltCols = append(rebuiltCols, db.Ident("r", c.Target)+"::pg_catalog.text")
	}
	rebuilt := "SELECT " + strings.Join(rebuiltCols, ", ") + " FROM (" + m.RebuildSQL(n0.GreenSchema, nil) + ") AS r"
	orig := "SELECT " + strings.Join(blueCols, ", ") + " FROM " + sample + " AS s"
	if err := tx.QueryRow(ctx, "SELECT pg_catalog.count(*) FROM (("+orig+") EXCEPT ALL ("+rebuilt+")) AS d").Scan(&out.Lossy); err != nil {
		return out, s.Errorf("reverse", "fix the reverse expressions: they read the greens as <green>.<column>", "rebuilding the sample from the greens: %s", shadow.ErrText(err))
	}
	return out, nil
}

func analyzeSQL(names []shadow.Names) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = "ANALYZE " + db.Ident(n.Green.Schema, n.Green.Name)
	}
	return out
}
