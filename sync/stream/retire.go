package stream

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/trigger"
)

// RetireOptions bound Retire.
type RetireOptions struct {
	Lock shadow.LockOptions // the short transaction that switches the forward triggers on
	// CatchUp bounds each of the two drains (before and after the switch);
	// default 5 minutes. Neither holds a lock the application waits on.
	CatchUp time.Duration
	// Settle: catching up before the switch repeats until one round takes
	// less than this (default 1s), at most PreDrainRounds times (default 3).
	Settle         time.Duration
	PreDrainRounds int
	OnRetry        func(attempt int, blockers []shadow.Blocker, wait time.Duration)
}

// RetireResult is what Retire did.
type RetireResult struct {
	SwitchLSN   pglogrepl.LSN // the forward triggers carry every blue write committed after this
	PreDrain    time.Duration // catching up before the switch
	Drain       time.Duration // applying the rest up to SwitchLSN
	Switch      time.Duration // the switch transaction, lock waits included
	Keys        int64         // keys applied by Retire's own streaming
	AlreadyDone bool          // the stream was retired by an earlier run
	SQL         []string      // the switch transaction's statements
}

// Retire hands blue → green over from the stream to the forward triggers,
// losing nothing, so that the cutover that follows is a trigger-mode swap:
//
//  1. take the slot over (terminating the walsender of a `sync --watch`,
//     which then stops with ErrRetired) and stream until green is current
//     up to the WAL position at the start — no locks held;
//  2. in one short transaction (lock timeout, retried): take the stream's
//     retirement lock exclusively (no apply transaction can commit after
//     it without seeing the switch), enable the forward triggers on blue
//     (SHARE ROW EXCLUSIVE: in-flight blue writers finish first, later ones
//     fire the trigger), and read the WAL position L;
//  3. stream again until green is current up to L: every blue write that
//     did not fire the trigger committed before L;
//  4. drop the slot and the publication, and re-create the reverse
//     functions without the echo markers.
//
// From step 2 on the migration is in trigger mode; a failure after it
// leaves a consistent trigger-mode migration with a slot still to drain,
// and running Retire again finishes the job.
func Retire(ctx context.Context, cfg Config, opt RetireOptions) (*RetireResult, error) {
	if opt.CatchUp <= 0 {
		opt.CatchUp = 5 * time.Minute
	}
	if opt.Settle <= 0 {
		opt.Settle = time.Second
	}
	if opt.PreDrainRounds <= 0 {
		opt.PreDrainRounds = 3
	}
	res := &RetireResult{}
	n := cfg.Names
	exists, _, _, err := SlotInfo(ctx, cfg.Pool, n.Slot)
	if err != nil {
		return nil, err
	}
	fwdOn, err := forwardEnabled(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if !exists {
		if !fwdOn {
			return nil, fmt.Errorf("%w: slot %s does not exist and the forward triggers are off: "+
				"changes to blue may be missing from green; roll the migration back and sync it again", ErrSlotLost, n.Slot)
		}
		res.AlreadyDone = true
		return res, finishRetire(ctx, cfg)
	}
	c := cfg
	c.Options.takeOver = true
	s, err := New(c)
	if err != nil {
		return nil, err
	}
	run := func(draining bool, until pglogrepl.LSN) (time.Duration, error) {
		t0 := time.Now()
		s.opt.Draining, s.ap.opt.Draining = draining, draining
		if err := TakeOver(ctx, cfg.Pool, n.Slot); err != nil {
			return 0, err
		}
		rctx, cancel := context.WithTimeout(ctx, opt.CatchUp)
		defer cancel()
		err := s.RunUntil(rctx, until)
		res.Keys = s.Stats().Keys
		if err == nil && s.Applied() < until {
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			return 0, &LagError{Slot: n.Slot, Target: until, Confirmed: s.Applied(), Waited: time.Since(t0)}
		}
		return time.Since(t0), err
	}
	if !fwdOn {
		// Catch up to the WAL position at the start, again while a round
		// takes long (at most PreDrainRounds): the drain after the switch,
		// while the application pays the trigger cost, then has little
		// left. Under writes faster than the stream applies, rounds do not
		// get shorter; the switch bounds what is left to drain anyway.
		t0 := time.Now()
		for round := 1; ; round++ {
			l0, err := CurrentLSN(ctx, cfg.Pool)
			if err != nil {
				return nil, err
			}
			d, err := run(false, l0)
			if err != nil {
				return res, fmt.Errorf("catch up before switching to triggers: %w", err)
			}
			if d < opt.Settle || round >= opt.PreDrainRounds {
				break
			}
		}
		res.PreDrain = time.Since(t0)
		t0 = time.Now()
		res.SQL = append([]string{RetireLockSQL}, trigger.SetForwardSQL(n, true)...)
		err = shadow.RunWithLockRetry(ctx, cfg.Pool, "retire-stream", opt.Lock, opt.OnRetry, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, RetireLockSQL, cfg.Migration); err != nil {
				return err
			}
			for _, s := range trigger.SetForwardSQL(n, true) {
				if _, err := tx.Exec(ctx, s); err != nil {
					return err
				}
			}
			// The insert position: every blue write that did not fire the
			// trigger has committed, but an asynchronous commit's record
			// may not be written out yet (see CurrentLSN).
			return tx.QueryRow(ctx, `SELECT pg_catalog.pg_current_wal_insert_lsn()::text`).Scan(&res.SwitchLSN)
		})
		res.Switch = time.Since(t0)
		if err != nil {
			return res, err
		}
	} else {
		// An earlier Retire switched and did not finish draining.
		if res.SwitchLSN, err = CurrentLSN(ctx, cfg.Pool); err != nil {
			return res, err
		}
	}
	if res.Drain, err = run(true, res.SwitchLSN); err != nil {
		return res, fmt.Errorf("drain the stream after switching to triggers (they carry blue → green already; run again to finish): %w", err)
	}
	return res, finishRetire(ctx, cfg)
}

func forwardEnabled(ctx context.Context, cfg Config) (bool, error) {
	n := cfg.Names
	var st string
	err := cfg.Pool.QueryRow(ctx, `SELECT coalesce((SELECT tgenabled::text FROM pg_catalog.pg_trigger
		WHERE tgrelid = pg_catalog.to_regclass($1) AND tgname = $2), '')`, db.Ident(n.Blue.Schema, n.Blue.Name), n.Trigger).Scan(&st)
	if err != nil {
		return false, err
	}
	if st == "" {
		return false, fmt.Errorf("sync trigger %s is missing on %s", n.Trigger, n.Blue)
	}
	return st != "D", nil
}

// finishRetire drops the slot and publication, then takes the echo markers
// out of the reverse functions (safe only once nothing streams the slot).
func finishRetire(ctx context.Context, cfg Config) error {
	if err := DropSlotAndPublication(ctx, cfg.Pool, cfg.Names); err != nil {
		return err
	}
	tx, err := cfg.Pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	for _, s := range trigger.PlainReverseSQL(cfg.Names, cfg.Mapping) {
		if _, err := tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("re-create the reverse functions without echo markers: %w", err)
		}
	}
	return tx.Commit(ctx)
}
