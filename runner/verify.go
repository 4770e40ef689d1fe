package runner

import (
	"context"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/logx"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/verify"
)

// VerifyOptions are the verify command's knobs; zero values take
// verify's defaults.
type VerifyOptions struct {
	Workers     int
	ChunkRows   int
	Repair      bool
	Exact       bool
	MaxReported int
	// DeleteExtra lets --repair delete rows found only on the side that
	// is not primary (by default they are reported and left alone).
	DeleteExtra bool
	// AcceptDrift records the objects' current fingerprint when they were
	// changed outside greenswap but the change is mirrored on every shape
	// (privileges must agree all the same).
	AcceptDrift bool
	Progress    func(verify.Progress)
	// OnTable, when set, is called before each table of a migration of
	// several tables is compared (i of n, in dependency order): the CLI
	// names the table on its progress line.
	OnTable func(table string, i, n int)

	// separateSnapshots gives each table of several a snapshot of its own,
	// as verify did before they shared one: only for the test that shows
	// what the shared snapshot prevents.
	separateSnapshots bool
}

// VerifyStep is the step name of verify's events.
const VerifyStep = "verify"

// VerifyReport is verify's outcome: Result for a migration of one table,
// Tables for one of several (the other nil).
type VerifyReport struct {
	Result *verify.Result
	Tables *TablesVerifyResult
}

// OK reports whether every compared table is identical (after repair, if
// one was asked for).
func (r *VerifyReport) OK() bool {
	if r.Tables != nil {
		return r.Tables.OK
	}
	return r.Result != nil && r.Result.OK
}

// TableVerify is one table's report in a verify of several tables: the
// one-table report, with the app table it is about.
type TableVerify struct {
	Table string `json:"table"`
	*verify.Result
}

// TablesVerifyResult is verify's outcome for a migration of several
// tables: every table compared under one snapshot (SnapshotAt, the one
// recorded as verified_at), in dependency order, and the totals.
type TablesVerifyResult struct {
	OK          bool          `json:"ok"`
	SnapshotAt  time.Time     `json:"snapshot_at"`
	SnapshotLSN string        `json:"snapshot_lsn,omitempty"`
	Tables      []TableVerify `json:"tables"`
	// Different names the tables that differ, in order (empty when OK).
	Different        []string      `json:"different_tables"`
	SourceRows       int64         `json:"source_rows"`
	TargetRows       int64         `json:"target_rows"`
	Chunks           int           `json:"chunks"`
	MismatchedChunks int           `json:"mismatched_chunks"`
	DifferenceCount  int           `json:"difference_count"`
	Duration         time.Duration `json:"-"`
	TotalMS          float64       `json:"total_ms"`
}

func (t *TablesVerifyResult) add(table string, r *verify.Result) {
	t.Tables = append(t.Tables, TableVerify{Table: table, Result: r})
	t.SourceRows += r.SourceRows
	t.TargetRows += r.TargetRows
	t.Chunks += r.Chunks
	t.MismatchedChunks += r.MismatchedChunks
	t.DifferenceCount += r.DifferenceCount
	if !r.OK {
		t.OK = false
		t.Different = append(t.Different, table)
	}
}

// Verify compares blue, mapped through the forward expressions, with green
// under one snapshot (see package verify), optionally repairs the
// differences, and records the result: an event (step "verify") and the
// migration row's verified_at (the time of the compared snapshot) and
// verify_ok. It holds the migration's lock throughout. It reports one
// table: a migration of several tables is VerifyMigration's (exit 2 here).
//
// A completed comparison returns its Result and a nil error whether or not
// differences were found (Result.OK); the CLI maps !OK to exit 1. Errors are
// bad input (exit 2: unknown migration, wrong state, backfill not done),
// a held lock (exit 4) or a failure.
func Verify(ctx context.Context, env *Env, name string, opts VerifyOptions) (*verify.Result, error) {
	rep, err := verifyMigration(ctx, env, name, opts, false)
	if rep == nil {
		return nil, err
	}
	return rep.Result, err
}

// VerifyMigration is Verify for a migration of one table or several. For
// several (issue 14), every table is compared under one exported snapshot
// shared by all the tables' workers, in dependency order, each repaired on
// its own with --repair; the migration's verified_at is that snapshot's
// time and verify_ok says whether every table is identical.
func VerifyMigration(ctx context.Context, env *Env, name string, opts VerifyOptions) (*VerifyReport, error) {
	return verifyMigration(ctx, env, name, opts, true)
}

func verifyMigration(ctx context.Context, env *Env, name string, opts VerifyOptions, several bool) (*VerifyReport, error) {
	lock, err := env.Lock(ctx, name)
	if err != nil {
		return nil, err
	}
	defer lock.Release(context.WithoutCancel(ctx))
	mig, err := env.LoadMigration(ctx, name)
	if err != nil {
		return nil, err
	}
	if mig.Spec.IsSplit() {
		if !several {
			return nil, exitcode.Errorf(exitcode.BadInput,
				"migration %s is a table split: runner.Verify reports one table; call runner.VerifyMigration (as `greenswap verify` does)", name)
		}
		res, err := verifySplit(ctx, env, mig, opts) // verify_split.go
		if res == nil {
			return nil, err
		}
		return &VerifyReport{Tables: res}, err
	}
	if mig.Spec.MultiTable() {
		if !several {
			return nil, exitcode.Errorf(exitcode.BadInput,
				"migration %s has several tables: runner.Verify reports one table; call runner.VerifyMigration (as `greenswap verify` does)", name)
		}
		res, err := verifyTables(ctx, env, mig, opts)
		if res == nil {
			return nil, err
		}
		return &VerifyReport{Tables: res}, err
	}
	res, err := verifyOne(ctx, env, mig, opts)
	if res == nil {
		return nil, err
	}
	return &VerifyReport{Result: res}, err
}

// verifyOne is the verify of a migration of one table.
func verifyOne(ctx context.Context, env *Env, mig *Migration, opts VerifyOptions) (*verify.Result, error) {
	name := mig.Spec.Name
	if err := verifiable(mig); err != nil {
		return nil, err
	}
	if err := checkCommandPrivileges(ctx, env, mig, shadow.StepVerify); err != nil {
		return nil, err
	}
	if err := verifyDrift(ctx, env, mig, opts.AcceptDrift); err != nil {
		return nil, err
	}
	b, err := loadBuild(ctx, env.Pool, mig.Spec, mig.Names)
	if err != nil {
		return nil, badInput(err)
	}
	// Once synced, green takes writes too (reverse triggers on): a row
	// written on green through a lossy mapping equals blue only through
	// the reverse expressions, which verify then accepts.
	bidirectional := mig.Row.State == state.Synced || mig.Row.State == state.CutOver
	log := env.Log.With().Str("migration", name).Str("step", VerifyStep).Logger()
	log.Info().Str("blue", b.Names.Blue.String()).Str("green", b.Names.Green.String()).Int("workers", opts.Workers).
		Bool("repair", opts.Repair).Msg("verify: comparing blue (mapped) with green under one snapshot")
	start := time.Now()
	// The feed brings green up to date (the logical one holds blue's
	// writers until the snapshot is taken: feed_logical.go).
	waiter, release, err := env.feedOf(mig).settle(ctx, mig, b, (SwapCommandOptions{}).lockOptions(mig.Spec))
	if err != nil {
		return nil, err
	}
	defer release()
	var res *verify.Result
	err = runPhase(ctx, env, log, name, VerifyStep, func(ctx context.Context, ev *phaseEvent) error {
		var err error
		res, err = runVerify(ctx, env, mig, b, opts, waiter, nil, bidirectional, &log)
		ev.Took = time.Since(start)
		if err != nil {
			return err
		}
		// The verify event goes with the result's columns, in one transaction.
		ev.Recorded = true
		if err := recordVerify(context.WithoutCancel(ctx), env.Pool, name, res, time.Since(start)); err != nil {
			return fmt.Errorf("verify finished (ok=%v) but recording the result failed: %w", res.OK, err)
		}
		return nil
	})
	if err != nil {
		if res != nil {
			return res, err
		}
		return nil, err
	}
	ev := log.Info()
	if !res.OK {
		ev = log.Warn()
	}
	ev.Bool("ok", res.OK).Int64("rows", res.Rows).Int("chunks", res.Chunks).Int("differences", res.DifferenceCount).
		Float64("took_ms", logx.Ms(time.Since(start))).Msg("verify finished")
	return res, nil
}

// verifyTables is the verify of a migration of several tables.
func verifyTables(ctx context.Context, env *Env, mig *Migration, opts VerifyOptions) (*TablesVerifyResult, error) {
	name := mig.Spec.Name
	if err := verifiable(mig); err != nil {
		return nil, err
	}
	if err := verifyDrift(ctx, env, mig, opts.AcceptDrift); err != nil { // every table's (drift.go)
		return nil, err
	}
	members := membersOf(mig.Spec)
	for _, m := range members {
		if err := checkCommandPrivileges(ctx, env, &Migration{Row: mig.Row, Spec: m.spec, Names: m.names}, shadow.StepVerify); err != nil {
			return nil, err
		}
		b, err := loadBuild(ctx, env.Pool, m.spec, m.names)
		if err != nil {
			return nil, badInput(fmt.Errorf("table %s: %w", m.table(), err))
		}
		m.build = b
	}
	bidirectional := mig.Row.State == state.Synced || mig.Row.State == state.CutOver
	log := env.Log.With().Str("migration", name).Str("step", VerifyStep).Logger()
	log.Info().Str("tables", appTableOf(mig.Spec)).Int("workers", opts.Workers).Bool("repair", opts.Repair).
		Msg("verify: comparing every table, blue (mapped) with green, under one snapshot")
	start := time.Now()
	// The feed brings every green up to date (the logical one holds every
	// blue's writers until the one snapshot is exported: feed_logical.go).
	waiter, release, err := env.feedOf(mig).settle(ctx, mig, nil, (SwapCommandOptions{}).lockOptions(mig.Spec))
	if err != nil {
		return nil, err
	}
	defer release()
	var out *TablesVerifyResult
	err = runPhase(ctx, env, log, name, VerifyStep, func(ctx context.Context, ev *phaseEvent) error {
		var err error
		out, err = compareTables(ctx, env, mig, members, opts, waiter, bidirectional, log)
		ev.Took = time.Since(start)
		if err != nil {
			return err
		}
		ev.Recorded = true
		if err := recordVerifyTables(context.WithoutCancel(ctx), env.Pool, name, out, time.Since(start)); err != nil {
			return fmt.Errorf("verify finished (ok=%v) but recording the result failed: %w", out.OK, err)
		}
		return nil
	})
	if err != nil {
		return out, err
	}
	ev := log.Info()
	if !out.OK {
		ev = log.Warn()
	}
	ev.Bool("ok", out.OK).Strs("different", out.Different).Int64("rows", out.SourceRows).Int("chunks", out.Chunks).
		Int("differences", out.DifferenceCount).Float64("took_ms", logx.Ms(time.Since(start))).Msg("verify finished")
	return out, nil
}

// compareTables runs each member's comparison, in dependency order, under
// one snapshot exported here and held until the last table is read: a
// parent and its children written in one transaction are counted in
// every table or in none, whenever they commit. A repair writes between
// the tables, the parents' first, and rechecks its table under a snapshot
// of its own.
func compareTables(ctx context.Context, env *Env, mig *Migration, members []*member, opts VerifyOptions,
	waiter verify.StreamWaiter, bidirectional bool, log zerolog.Logger) (*TablesVerifyResult, error) {
	start := time.Now()
	out := &TablesVerifyResult{OK: true, Tables: []TableVerify{}, Different: []string{}}
	var snap *verify.Snapshot
	if !opts.separateSnapshots {
		var err error
		if snap, err = verify.ExportSnapshot(ctx, env.Pool, waiter); err != nil {
			return nil, err
		}
		defer snap.Close(ctx)
		out.SnapshotAt, out.SnapshotLSN = snap.At, snap.LSN
		waiter = nil // released with the export
	}
	for i, m := range members {
		if opts.OnTable != nil {
			opts.OnTable(m.table(), i, len(members))
		}
		tl := log.With().Str("table", m.table()).Logger()
		res, err := runVerify(ctx, env, mig, m.build, opts, waiter, snap, bidirectional, &tl)
		if err != nil {
			return nil, fmt.Errorf("verify %s: %w", m.table(), err)
		}
		ev := tl.Info()
		if !res.OK {
			ev = tl.Warn()
		}
		ev.Bool("ok", res.OK).Int64("rows", res.Rows).Int("differences", res.DifferenceCount).Msg("verify: table compared")
		out.add(m.table(), res)
	}
	if snap == nil && len(out.Tables) > 0 {
		out.SnapshotAt, out.SnapshotLSN = out.Tables[0].SnapshotAt, out.Tables[0].SnapshotLSN
	}
	out.Duration = time.Since(start)
	out.TotalMS = logx.Ms(out.Duration)
	return out, nil
}

// runVerify compares blue (mapped) with green under one snapshot: snap
// when given (shared by the tables of a migration), else its own.
func runVerify(ctx context.Context, env *Env, mig *Migration, b *Build, opts VerifyOptions, waiter verify.StreamWaiter,
	snap *verify.Snapshot, bidirectional bool, log *zerolog.Logger) (*verify.Result, error) {
	// A repair copies from the primary side, the one the app name reads:
	// after cutover green's rows are the truth and blue is brought in line
	// through the reverse mapping (trap 12: copying blue over green then
	// would erase every write made since the cutover that missed blue).
	dir := verify.Forward
	if opts.Repair && mig.Row.PrimarySide == "green" {
		dir = verify.Reverse
	}
	return verify.Run(ctx, env.Pool, verify.Target{Names: b.Names, Mapping: b.Mapping, Blue: b.Blue, Green: b.Green}, verify.Options{
		Direction:     dir,
		DeleteExtra:   opts.DeleteExtra,
		Stream:        waiter,
		Snapshot:      snap,
		Workers:       opts.Workers,
		ChunkRows:     opts.ChunkRows,
		Repair:        opts.Repair,
		Exact:         opts.Exact,
		Bidirectional: bidirectional,
		MaxReported:   opts.MaxReported,
		Progress:      opts.Progress,
		Log:           log,
	})
}

// verifiable refuses migrations whose green is not complete yet (exit 2).
func verifiable(m *Migration) error {
	r := m.Row
	switch r.State {
	case state.Syncing:
		if r.BackfillDoneAt == nil {
			progress := ""
			if r.RowsEstimate > 0 {
				progress = fmt.Sprintf(" (%d of about %d rows copied)", r.RowsCopied, r.RowsEstimate)
			}
			return exitcode.Errorf(exitcode.BadInput,
				"migration %s: the backfill has not finished%s, so green is still missing rows; run verify once `greenswap sync` reports the backfill done (see `greenswap status %s`)",
				r.Name, progress, r.Name)
		}
	case state.Synced, state.CutOver:
	case state.Planned:
		return exitcode.Errorf(exitcode.BadInput, "migration %s is planned: there is no green table yet; run `greenswap sync` first", r.Name)
	default:
		return exitcode.Errorf(exitcode.BadInput, "migration %s is %s: there is nothing to verify (verify works while syncing after the backfill, synced or cut over)", r.Name, r.State)
	}
	return nil
}

// recordVerify writes the event and the migration row's verify columns in
// one transaction.
func recordVerify(ctx context.Context, pool interface {
	db.Querier
	shadow.TxBeginner
}, name string, res *verify.Result, took time.Duration) error {
	return recordVerdict(ctx, pool, name, res.OK, res.SnapshotAt, verifyDetail(res), took)
}

// recordVerdict writes a verify's event (outcome ok or failed, detail) and
// the row's verified_at (the compared snapshot's time, so "verified since
// the last backfill" means the snapshot saw the finished backfill) and
// verify_ok, in one transaction.
func recordVerdict(ctx context.Context, pool shadow.TxBeginner, name string, ok bool, at time.Time, detail any, took time.Duration) error {
	outcome := "ok"
	if !ok {
		outcome = "failed"
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if err := state.Record(ctx, tx, name, VerifyStep, outcome, took, "", detail); err != nil {
		return err
	}
	if err := state.SetVerified(ctx, tx, name, at, ok); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// verifyDetail is one table's result as the verify event records it.
func verifyDetail(res *verify.Result) map[string]any {
	detail := map[string]any{
		"ok":                res.OK,
		"rows":              res.SourceRows,
		"green_rows":        res.TargetRows,
		"chunks":            res.Chunks,
		"mismatched_chunks": res.MismatchedChunks,
		"differences":       res.DifferenceCount,
		"workers":           res.Workers,
		"snapshot_at":       res.SnapshotAt,
		"exact":             res.Exact,
	}
	if len(res.Excluded) > 0 {
		detail["excluded_columns"] = res.Excluded
	}
	if n := len(res.Differences); n > 0 {
		detail["first_differences"] = res.Differences[:min(n, 20)]
	}
	if res.Accepted > 0 {
		detail["accepted_via_reverse"] = res.Accepted
	}
	if r := res.Repair; r != nil {
		detail["repair"] = map[string]any{"keys": r.Keys, "upserted": r.Upserted, "deleted": r.Deleted,
			"source": res.SourceSide, "extra_left": r.ExtraLeft, "extra_keys": r.ExtraKeys,
			"recheck_chunks": r.Recheck.Chunks, "remaining_differences": r.Recheck.DifferenceCount}
	}
	return detail
}

// recordVerifyTables records a verify of several tables as recordVerify
// does one: one event for the migration, its detail the totals and each
// table's, and the row's verified_at (the shared snapshot's time) and
// verify_ok (every table identical), in one transaction.
func recordVerifyTables(ctx context.Context, pool interface {
	db.Querier
	shadow.TxBeginner
}, name string, out *TablesVerifyResult, took time.Duration) error {
	tables := make([]map[string]any, 0, len(out.Tables))
	for _, t := range out.Tables {
		d := verifyDetail(t.Result)
		d["table"] = t.Table
		tables = append(tables, d)
	}
	detail := map[string]any{
		"ok":                out.OK,
		"rows":              out.SourceRows,
		"green_rows":        out.TargetRows,
		"chunks":            out.Chunks,
		"mismatched_chunks": out.MismatchedChunks,
		"differences":       out.DifferenceCount,
		"snapshot_at":       out.SnapshotAt,
		"different_tables":  out.Different,
		"tables":            tables,
	}
	return recordVerdict(ctx, pool, name, out.OK, out.SnapshotAt, detail, took)
}

// LastVerifyPassed reports whether migration name has a passing verify
// since its last backfill; cutover refuses without one unless
// --skip-verify. See verify.LastVerifyPassed.
func LastVerifyPassed(ctx context.Context, q db.Querier, name string) (bool, error) {
	return verify.LastVerifyPassed(ctx, q, name)
}
