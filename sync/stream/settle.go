package stream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
)

// SettleOptions bound Settle.
type SettleOptions struct {
	// Lock: blue is locked IN SHARE MODE (writers wait, readers do not)
	// with this per-attempt timeout, attempts and backoff.
	Lock shadow.LockOptions
	// CatchUp bounds the catching up before the lock (default 5 minutes).
	CatchUp time.Duration
	// Hold bounds how long blue's writers are held while the stream applies
	// the rest (default: Lock.Timeout); past it the lock is released and
	// the attempt counts as a lock timeout.
	Hold time.Duration
}

// Settle brings green up to date with blue and holds blue's writers off
// until release is called, so that a snapshot taken in between (verify's)
// sees both sides consistent: in logical mode green lags blue by the
// stream, and a snapshot taken while writes flow would catch changes
// committed on blue but not applied yet. It first catches up without any
// lock, then locks blue IN SHARE MODE (bounded wait, retried) and waits at
// most Hold for the stream to apply what committed before the lock. If a
// streamer of this migration runs elsewhere (`sync --watch`) it waits for
// that one; otherwise it streams itself. Release must be called (it is
// idempotent).
func Settle(ctx context.Context, cfg Config, opt SettleOptions) (release func(), err error) {
	if opt.CatchUp <= 0 {
		opt.CatchUp = 5 * time.Minute
	}
	if opt.Lock.Timeout <= 0 {
		opt.Lock = shadow.DefaultLockOptions()
	}
	if opt.Hold <= 0 {
		opt.Hold = opt.Lock.Timeout
	}
	if opt.Lock.MaxAttempts <= 0 {
		opt.Lock.MaxAttempts = 1
	}
	backoff := opt.Lock.BaseBackoff
	blue := cfg.blueList() // every blue of the migration, in one LOCK
	for attempt := 1; ; attempt++ {
		// Catch up without holding anything first (every attempt), so that
		// little is left to apply while writers wait.
		l0, err := CurrentLSN(ctx, cfg.Pool)
		if err != nil {
			return nil, err
		}
		if err := catchUp(ctx, cfg, l0, opt.CatchUp); err != nil {
			return nil, fmt.Errorf("catch up before verifying: %w", err)
		}
		conn, err := cfg.Pool.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			conn.Release()
			return nil, err
		}
		done := func() {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			conn.Release()
		}
		_, err = tx.Exec(ctx, "SELECT pg_catalog.set_config('lock_timeout', $1, true)", fmt.Sprintf("%dms", opt.Lock.Timeout.Milliseconds()))
		if err == nil {
			_, err = tx.Exec(ctx, "LOCK TABLE "+blue+" IN SHARE MODE")
		}
		var l pglogrepl.LSN
		if err == nil {
			l, err = CurrentLSN(ctx, cfg.Pool)
		}
		if err == nil {
			// The writers wait from here: let the stream read up to l at
			// once rather than when the WAL writer flushes it.
			err = flushAndPing(ctx, cfg)
		}
		if err == nil {
			err = catchUp(ctx, cfg, l, opt.Hold)
		}
		if err == nil {
			var once bool
			return func() {
				if !once {
					once = true
					done()
				}
			}, nil
		}
		done()
		var lag *LagError
		if db.SQLState(err) != db.LockNotAvailable && !errors.As(err, &lag) {
			return nil, err
		}
		if attempt >= opt.Lock.MaxAttempts {
			return nil, &shadow.LockTimeoutError{Step: "settle the stream (" + err.Error() + ")", Attempts: attempt}
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		backoff = min(2*backoff, opt.Lock.MaxBackoff)
	}
}

// catchUp waits until green is current up to lsn, for at most timeout:
// streaming itself when nobody streams the slot, else waiting for whoever
// does.
func catchUp(ctx context.Context, cfg Config, lsn pglogrepl.LSN, timeout time.Duration) error {
	exists, active, _, err := SlotInfo(ctx, cfg.Pool, cfg.Names.Slot)
	if err != nil {
		return err
	}
	if !exists {
		return fmt.Errorf("%w: slot %s does not exist", ErrSlotLost, cfg.Names.Slot)
	}
	if active {
		return WaitApplied(ctx, cfg.Pool, cfg.Names, lsn, timeout)
	}
	s, err := New(cfg)
	if err != nil {
		return err
	}
	t0 := time.Now()
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := s.RunUntil(rctx, lsn); err != nil {
		return err
	}
	if s.Applied() < lsn {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &LagError{Slot: cfg.Names.Slot, Target: lsn, Confirmed: s.Applied(), Waited: time.Since(t0)}
	}
	return nil
}
