package verify

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/logx"
	"github.com/greenswap/greenswap/rowsql"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/trigger"
)

// repairBatch is how many keys one repair transaction re-copies.
const repairBatch = 500

// repair re-copies every missing or different key of pass from the source
// (extra keys only with DeleteExtra; otherwise they are listed), in batches,
// each one short READ COMMITTED transaction with the sync flag set (so the
// other side's trigger does not echo the write back):
//
//  1. delete the target rows of these keys that the source does not have
//     (any more): extra rows;
//  2. upsert the source rows of these keys through the mapping, the source
//     rows locked FOR NO KEY UPDATE: missing and different rows. Statement 2
//     takes a new snapshot, so a source row inserted concurrently with
//     statement 1 (whose target row 1 may have deleted) is copied again.
//
// Then the affected chunks are verified again under a new snapshot.
func (v *verifier) repair(ctx context.Context, pass *Pass) (*RepairResult, error) {
	start := time.Now()
	todo := pass.keys
	var left [][]string
	if v.opt.DeleteExtra {
		todo = append(slices.Clone(todo), pass.extra...)
	} else {
		left = pass.extra
	}
	rep := &RepairResult{Keys: len(todo), ExtraLeft: len(left)}
	if len(left) > 0 {
		sorted := slices.Clone(left)
		sort.Slice(sorted, func(i, j int) bool { return lessKey(sorted[i], sorted[j]) })
		rep.ExtraKeys = sorted[:min(len(sorted), MaxExtraKeys)]
		v.opt.Log.Warn().Int("keys", len(left)).Str("side", v.p.dst.label).
			Msg("rows only the non-primary side has are left alone (they may be writes that reached only that side); DeleteExtra deletes them")
	}
	p := v.p
	flagSQL, flagArgs := trigger.SyncFlagSQL(v.names)
	batches := (len(todo) + repairBatch - 1) / repairBatch
	lockOpts := shadow.DefaultLockOptions()
	for b := 0; b < batches; b++ {
		keys := todo[b*repairBatch : min((b+1)*repairBatch, len(todo))]
		var up, del int64
		err := shadow.RunWithLockRetry(ctx, v.pool, "verify-repair", lockOpts,
			func(attempt int, blockers []shadow.Blocker, wait time.Duration) {
				ev := v.opt.Log.Warn().Int("attempt", attempt).Float64("retry_in_ms", logx.Ms(wait))
				for _, bl := range blockers {
					ev = ev.Str("blocked_by", bl.String())
				}
				ev.Msg("repair waited too long for a row lock; retrying")
			},
			func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, flagSQL, flagArgs...); err != nil {
					return err
				}
				if err := v.sessionSettings(ctx, tx); err != nil {
					return err
				}
				// The repair writes rows the app writes: its row lock waits
				// give way before the app's deadlock_timeout (as a batch's).
				if _, err := tx.Exec(ctx, rowsql.SelectSettings(rowsql.Setting{Name: "lock_timeout", Value: rowsql.YieldingLockTimeout("$1")}),
					fmt.Sprintf("%dms", lockOpts.Timeout.Milliseconds())); err != nil {
					return err
				}
				sql, args := p.repairDeleteSQL(keys)
				tag, err := tx.Exec(ctx, sql, args...)
				if err != nil {
					return fmt.Errorf("delete extra rows from %s: %w", p.dst.name, err)
				}
				del = tag.RowsAffected()
				sql, args = p.repairUpsertSQL(keys)
				if tag, err = tx.Exec(ctx, sql, args...); err != nil {
					return fmt.Errorf("copy rows from %s to %s: %w", p.src.name, p.dst.name, err)
				}
				up = tag.RowsAffected()
				return nil
			})
		if err != nil {
			return nil, err
		}
		rep.Upserted += up
		rep.Deleted += del
		if v.opt.Progress != nil {
			v.opt.Progress(Progress{Phase: "repair", Done: b + 1, Total: batches, Rows: int64(min((b+1)*repairBatch, len(todo))), Elapsed: time.Since(start)})
		}
	}
	v.opt.Log.Info().Int("keys", rep.Keys).Int64("upserted", rep.Upserted).Int64("deleted", rep.Deleted).Msg("repaired; verifying the affected chunks again")
	only := map[int]bool{}
	for _, idx := range pass.mismatched {
		only[idx] = true
	}
	recheck, err := v.run(ctx, only, "recheck")
	if err != nil {
		return nil, fmt.Errorf("recheck: %w", err)
	}
	rep.Recheck = recheck
	return rep, nil
}
