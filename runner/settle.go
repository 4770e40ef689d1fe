package runner

import (
	"context"
	"maps"
	"strings"
	"time"

	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	gssync "github.com/greenswap/greenswap/sync"
)

// PhaseSettle is sync's VACUUM (FREEZE) of every green once the copy and
// the indexes are done (issue 20): the migration is synced only once green
// is in the steady state the application will find it in, not when the
// last row is copied. It comes before analyze in syncPhases, so a row an
// older greenswap left at "analyze" does not settle.
const PhaseSettle = "settle"

// settle vacuums every green of greens, one leaf at a time, under the
// migration's throttles (pause, replica lag, the breaker) and paced by
// vacuum_cost_delay; SyncOptions.SkipSettle leaves it to autovacuum.
func (r *syncRun) settle(ctx context.Context, greens []shadow.Names) error {
	if phaseAfter(r.phase, PhaseSettle) {
		return nil
	}
	t0 := time.Now()
	var stmts []string
	detail := map[string]any{}
	if r.opts.SkipSettle {
		detail["skipped"] = "--no-settle: green is left to autovacuum"
	} else {
		if err := r.env.atSyncPoint(ctx, "settle"); err != nil {
			return err
		}
		// Logical mode: the stream's backlog from the copy first, so the
		// VACUUM sets the visibility map of pages the backlog's apply
		// would otherwise dirty again right after it.
		drained, err := r.feed.drain(ctx, r)
		if err != nil {
			return err
		}
		maps.Copy(detail, drained)
		so := r.spec.Sync.WithDefaults()
		nice := so.NiceRatio
		if r.opts.NiceRatio > 0 {
			nice = r.opts.NiceRatio
		}
		var retries, interrupted int
		var notSettled []string
		var held time.Duration
		for _, n := range greens {
			s := &gssync.Settler{
				Pool:        r.env.Pool,
				Names:       n,
				Throttles:   r.throttles(ctx),
				OnThrottle:  r.recordThrottle(ctx),
				LockTimeout: r.lockOptions().Timeout,
				NiceRatio:   nice,
				Log:         r.log,
			}
			res, err := s.Run(ctx)
			stmts = append(stmts, res.Statements...)
			retries += res.Retries
			interrupted += res.Interrupted
			notSettled = append(notSettled, res.NotSettled...)
			held += res.Held
			if err != nil {
				return err
			}
		}
		if err := r.env.atSyncPoint(ctx, "settled"); err != nil {
			return err
		}
		detail["lock_retries"], detail["held_s"], detail["vacuums_interrupted"] = retries, held.Seconds(), interrupted
		if len(notSettled) > 0 {
			detail["not_settled"] = notSettled
		}
		detail["vacuum_cost_delay_ms"] = float64(gssync.DefaultSettleCostDelay.Microseconds()) * (1 + max(nice, 0)) / 1000
	}
	if err := state.Record(ctx, r.env.Pool, r.spec.Name, PhaseSettle, "ok", time.Since(t0), strings.Join(stmts, ";\n"), detail); err != nil {
		return err
	}
	return r.setPhase(ctx, r.env.Pool, PhaseAnalyze)
}

// memberNames are the names of every table of a migration of several.
func (r *syncRun) memberNames() []shadow.Names {
	out := make([]shadow.Names, len(r.members))
	for i, m := range r.members {
		out[i] = m.names
	}
	return out
}
