package runner

import (
	"context"
	"fmt"
	"time"

	"github.com/greenswap/greenswap/internal/logx"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/verify"
)

// verifySplit is the verify of a table split: each green against blue
// through its forward mapping and where, and the old shape rebuilt from
// the greens against blue, under one snapshot (verify.Split). The result
// has one section per green and one for the rebuild, as for several
// tables; the verdict is recorded as for them (cutover needs it).
func verifySplit(ctx context.Context, env *Env, mig *Migration, opts VerifyOptions) (*TablesVerifyResult, error) {
	name := mig.Spec.Name
	if err := verifiable(mig); err != nil {
		return nil, err
	}
	if opts.Repair {
		return nil, refuseSplit(mig.Spec, "verify --repair")
	}
	if err := verifyDrift(ctx, env, mig, opts.AcceptDrift); err != nil {
		return nil, err
	}
	sr := &splitRun{syncRun: &syncRun{env: env, spec: mig.Spec}, names: shadow.SplitNames(mig.Spec)}
	if err := sr.load(ctx, env.Pool); err != nil {
		return nil, badInput(err)
	}
	log := env.Log.With().Str("migration", name).Str("step", VerifyStep).Logger()
	log.Info().Int("greens", len(sr.names)).Msg("verify: every green against blue, and the old shape rebuilt from the greens against blue, under one snapshot")
	start := time.Now()
	var out *TablesVerifyResult
	err := runPhase(ctx, env, log, name, VerifyStep, func(ctx context.Context, ev *phaseEvent) error {
		cmp, err := verify.Split(ctx, env.Pool, verify.SplitTarget{Names: sr.names, Mapping: sr.mapping, MaxReported: opts.MaxReported})
		ev.Took = time.Since(start)
		if err != nil {
			return err
		}
		out = &TablesVerifyResult{OK: true, Tables: []TableVerify{}, Different: []string{}}
		for i, c := range cmp {
			if opts.OnTable != nil {
				opts.OnTable(c.Table, i, len(cmp))
			}
			out.add(c.Table, c.Result)
		}
		out.SnapshotAt = cmp[0].SnapshotAt
		out.Duration = time.Since(start)
		out.TotalMS = logx.Ms(out.Duration)
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
	ev.Bool("ok", out.OK).Strs("different", out.Different).Int64("rows", out.SourceRows).
		Int("differences", out.DifferenceCount).Float64("took_ms", logx.Ms(time.Since(start))).Msg("verify finished")
	return out, nil
}
