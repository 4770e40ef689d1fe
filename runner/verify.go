package runner

import (
	"context"
	"fmt"
	"time"

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
	Progress    func(verify.Progress)
}

// VerifyStep is the step name of verify's events.
const VerifyStep = "verify"

// Verify compares blue, mapped through the forward expressions, with green
// under one snapshot (see package verify), optionally repairs the
// differences, and records the result: an event (step "verify") and the
// migration row's verified_at (the time of the compared snapshot) and
// verify_ok. It holds the migration's lock throughout.
//
// A completed comparison returns its Result and a nil error whether or not
// differences were found (Result.OK); the CLI maps !OK to exit 1. Errors are
// bad input (exit 2: unknown migration, wrong state, backfill not done),
// a held lock (exit 4) or a failure.
func Verify(ctx context.Context, env *Env, name string, opts VerifyOptions) (*verify.Result, error) {
	lock, err := env.Lock(ctx, name)
	if err != nil {
		return nil, err
	}
	defer lock.Release(context.WithoutCancel(ctx))
	mig, err := env.LoadMigration(ctx, name)
	if err != nil {
		return nil, err
	}
	if err := verifiable(mig); err != nil {
		return nil, err
	}
	if err := checkCommandPrivileges(ctx, env, mig, shadow.StepVerify); err != nil {
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
	// Logical mode: green is brought up to date and blue's writers held
	// until the snapshot is taken (sync_logical.go).
	waiter, release, err := settleLogical(ctx, env, mig, b, (SwapCommandOptions{}).lockOptions(mig.Spec))
	if err != nil {
		return nil, err
	}
	defer release()
	res, err := verify.Run(ctx, env.Pool, verify.Target{Names: b.Names, Mapping: b.Mapping, Blue: b.Blue, Green: b.Green}, verify.Options{
		Stream:        waiter,
		Workers:       opts.Workers,
		ChunkRows:     opts.ChunkRows,
		Repair:        opts.Repair,
		Exact:         opts.Exact,
		Bidirectional: bidirectional,
		MaxReported:   opts.MaxReported,
		Progress:      opts.Progress,
		Log:           &log,
	})
	took := time.Since(start)
	rctx := context.WithoutCancel(ctx)
	if err != nil {
		outcome := "error"
		if exitcode.Of(err) == exitcode.Interrupted {
			outcome = "interrupted"
		}
		if rerr := state.Record(rctx, env.Pool, name, VerifyStep, outcome, took, "", map[string]any{"error": err.Error()}); rerr != nil {
			log.Warn().Err(rerr).Msg("could not record the verify event")
		}
		return nil, err
	}
	if err := recordVerify(rctx, env.Pool, name, res, took); err != nil {
		return res, fmt.Errorf("verify finished (ok=%v) but recording the result failed: %w", res.OK, err)
	}
	ev := log.Info()
	if !res.OK {
		ev = log.Warn()
	}
	ev.Bool("ok", res.OK).Int64("rows", res.Rows).Int("chunks", res.Chunks).Int("differences", res.DifferenceCount).
		Float64("took_ms", logx.Ms(took)).Msg("verify finished")
	return res, nil
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
	outcome := "ok"
	if !res.OK {
		outcome = "failed"
	}
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
			"recheck_chunks": r.Recheck.Chunks, "remaining_differences": r.Recheck.DifferenceCount}
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if err := state.Record(ctx, tx, name, VerifyStep, outcome, took, "", detail); err != nil {
		return err
	}
	// verified_at is the compared snapshot's time, so "verified since the
	// last backfill" means the snapshot saw the finished backfill.
	if err := state.Update(ctx, tx, name, map[string]any{"verified_at": res.SnapshotAt, "verify_ok": res.OK}); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// LastVerifyPassed reports whether migration name has a passing verify
// since its last backfill; cutover refuses without one unless
// --skip-verify. See verify.LastVerifyPassed.
func LastVerifyPassed(ctx context.Context, q db.Querier, name string) (bool, error) {
	return verify.LastVerifyPassed(ctx, q, name)
}
