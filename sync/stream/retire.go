package stream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
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
	// CatchUp bounds each catching up before the switch; default 5 minutes.
	// None holds a lock the application waits on.
	CatchUp time.Duration
	// Settle: catching up before the switch repeats until one round takes
	// less than this (default 1s), at most PreDrainRounds times (default 3).
	Settle         time.Duration
	PreDrainRounds int
	// Hold bounds how long blue's writers wait, in the switch transaction,
	// for the stream to apply what committed before it (default:
	// Lock.Timeout). Past it the transaction rolls back, the writers go on,
	// and the attempt counts as a lock timeout (caught up again, retried).
	Hold time.Duration
	// OnRetry is told of each switch attempt rolled back: a lock not
	// granted within the lock timeout (blockers, when known), or held
	// (true) when the stream did not apply up to the switch within Hold.
	OnRetry func(attempt int, blockers []shadow.Blocker, held bool, wait time.Duration)
	// afterLock, in tests, runs in the switch transaction once blue is
	// locked and the switch position read, before the stream applies up to it.
	afterLock func()
}

// RetireResult is what Retire did.
type RetireResult struct {
	SwitchLSN   pglogrepl.LSN // the forward triggers carry every blue write committed after this
	PreDrain    time.Duration // catching up before the switch
	Drain       time.Duration // applying the rest up to SwitchLSN, blue's writers held (last attempt)
	Switch      time.Duration // the switch transaction, lock waits, drain and retries included
	Attempts    int           // switch transactions run (lock timeouts and expired holds retry)
	Keys        int64         // keys applied by Retire's own streaming
	AlreadyDone bool          // the stream was retired by an earlier run
	SQL         []string      // the switch transaction's statements
}

// errHoldExpired: the stream did not apply up to the switch position within
// RetireOptions.Hold while blue's writers were held.
type errHoldExpired struct{ lag *LagError }

func (e *errHoldExpired) Error() string {
	behind := int64(0)
	if e.lag.Target > e.lag.Confirmed {
		behind = int64(e.lag.Target - e.lag.Confirmed)
	}
	return fmt.Sprintf("the stream (slot %s) did not apply up to the switch position %s within %s while blue's writers waited "+
		"(confirmed %s, %d bytes behind): it applies more slowly than blue is written; cut over when writes are lighter, or with a longer lock timeout",
		e.lag.Slot, e.lag.Target, e.lag.Waited.Round(time.Millisecond), e.lag.Confirmed, behind)
}
func (e *errHoldExpired) Unwrap() error { return e.lag }

// Retire hands blue → green over from the stream to the forward triggers,
// losing nothing, so that the cutover that follows is a trigger-mode swap:
//
//  1. take the slot over (terminating the walsender of a `sync --watch`,
//     which then stops with ErrRetired) and stream until green is current
//     up to the WAL position at the start — no locks held;
//  2. in one short transaction (lock timeout, retried): lock blue IN SHARE
//     ROW EXCLUSIVE MODE (in-flight writers finish first, later ones wait;
//     readers never do), read the WAL position L, stream until green is
//     current up to L (at most Hold: every blue write committed before L),
//     then take the stream's retirement lock exclusively (no apply
//     transaction can commit after it without seeing the switch) and
//     enable the forward triggers on blue;
//  3. drop the slot and the publication, and re-create the reverse
//     functions without the echo markers.
//
// The stream never applies anything once the triggers carry blue's writes:
// a drain after the switch (what Retire did before) races them. A blue
// write after the switch that the trigger applied to a green not yet
// current (a delete of a row whose re-key the stream had not applied)
// finds nothing to do, and the stream's rule for a row re-keyed away from
// a key blue no longer has ("a later change in the stream finishes the
// job") then moves green's row there and leaves it: a row green has and
// blue lacks (the PG 18 failure of TestLogicalLifecycleLeastPrivilege). Holding blue's writers while the
// rest is applied closes that window; step 1 keeps the rest short, and
// Hold bounds the wait as the lock timeout bounds any lock.
//
// A failure before the switch commits changes nothing; once it commits,
// green is current up to L and the triggers carry the rest, so a Retire
// interrupted after it only has step 3 left, which running it again does.
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
	if opt.Lock.Timeout <= 0 {
		opt.Lock = shadow.DefaultLockOptions()
	}
	if opt.Lock.MaxAttempts <= 0 {
		opt.Lock.MaxAttempts = 1
	}
	if opt.Hold <= 0 {
		opt.Hold = opt.Lock.Timeout
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
	if fwdOn {
		// The switch committed in an earlier run, which had made green
		// current up to it first; the triggers carry everything since.
		res.AlreadyDone = true
		return res, finishRetire(ctx, cfg)
	}
	c := cfg
	c.Options.takeOver = true
	s, err := New(c)
	if err != nil {
		return nil, err
	}
	// One streamer, one replication session for the whole handover: the
	// catching up and the drain under the switch's lock only wait for its
	// position, so blue's writers never wait for a reconnection (nor for a
	// `sync --watch` that took the slot back in between).
	if err := TakeOver(ctx, cfg.Pool, n.Slot); err != nil {
		return nil, err
	}
	sctx, stopStream := context.WithCancel(ctx)
	streamDone := make(chan error, 1)
	go func() { streamDone <- s.Run(sctx) }()
	streaming := true
	var streamErr error
	stop := func() error {
		if streaming {
			stopStream()
			streamErr = <-streamDone
			streaming = false
		}
		return streamErr
	}
	defer stop()
	run := func(until pglogrepl.LSN, timeout time.Duration) (time.Duration, error) {
		t0 := time.Now()
		deadline := t0.Add(timeout)
		sleep := time.Millisecond
		defer func() { res.Keys = s.Stats().Keys }()
		for s.Applied() < until {
			if !streaming {
				return 0, fmt.Errorf("the stream stopped: %w", streamErr)
			}
			if time.Now().After(deadline) {
				return 0, &LagError{Slot: n.Slot, Target: until, Confirmed: s.Applied(), Waited: time.Since(t0)}
			}
			select {
			case err := <-streamDone:
				streaming, streamErr = false, err
				if streamErr == nil {
					streamErr = errors.New("it returned before the switch")
				}
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(sleep):
			}
			sleep = min(2*sleep, 10*time.Millisecond)
		}
		return time.Since(t0), nil
	}
	// Catch up to the WAL position at the start, again while a round takes
	// long (at most PreDrainRounds), so that little is left to apply while
	// the switch holds blue's writers. Under writes faster than the stream
	// applies, rounds do not get shorter, and the switch's Hold gives up.
	preDrain := func() error {
		t0 := time.Now()
		defer func() { res.PreDrain += time.Since(t0) }()
		for round := 1; ; round++ {
			l0, err := CurrentLSN(ctx, cfg.Pool)
			if err != nil {
				return err
			}
			d, err := run(l0, opt.CatchUp)
			if err != nil {
				return fmt.Errorf("catch up before switching to triggers: %w", err)
			}
			if d < opt.Settle || round >= opt.PreDrainRounds {
				return nil
			}
		}
	}
	if err := preDrain(); err != nil {
		return res, err
	}
	// Every blue of the migration, in one statement (nothing half taken),
	// and every forward trigger switched in the same transaction: no
	// table's writes reach green by trigger before another's stream is done.
	lockBlue := "LOCK TABLE " + cfg.blueList() + " IN SHARE ROW EXCLUSIVE MODE"
	var forwardOn []string
	for _, t := range cfg.tables() {
		forwardOn = append(forwardOn, trigger.SetForwardSQL(t.Names, true)...)
	}
	res.SQL = append([]string{lockBlue, "SELECT pg_catalog.pg_current_wal_insert_lsn()", "-- the stream applies up to that position", RetireLockSQL},
		forwardOn...)
	t0 := time.Now()
	backoff := opt.Lock.BaseBackoff
	for {
		res.Attempts++
		one := opt.Lock
		one.MaxAttempts = 1
		err = shadow.RunWithLockRetry(ctx, cfg.Pool, "retire-stream", one, nil, func(tx pgx.Tx) error {
			// SHARE ROW EXCLUSIVE, what ENABLE TRIGGER takes anyway: taken
			// first, it is never upgraded while the stream applies. The
			// apply transactions' FOR KEY SHARE (ROW SHARE) does not
			// conflict with it.
			if _, err := tx.Exec(ctx, lockBlue); err != nil {
				return err
			}
			// The insert position: every blue write has committed, but an
			// asynchronous commit's record may not be written out yet (see
			// CurrentLSN).
			if err := tx.QueryRow(ctx, `SELECT pg_catalog.pg_current_wal_insert_lsn()::text`).Scan(&res.SwitchLSN); err != nil {
				return err
			}
			if opt.afterLock != nil {
				opt.afterLock()
			}
			if err := flushAndPing(ctx, cfg); err != nil {
				return err
			}
			d, err := run(res.SwitchLSN, opt.Hold)
			res.Drain = d
			if err != nil {
				if lag := (*LagError)(nil); errors.As(err, &lag) {
					return &errHoldExpired{lag: lag}
				}
				return fmt.Errorf("apply the stream up to the switch (blue's writers held): %w", err)
			}
			if _, err := tx.Exec(ctx, RetireLockSQL, cfg.Migration); err != nil {
				return err
			}
			for _, s := range forwardOn {
				if _, err := tx.Exec(ctx, s); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil {
			break
		}
		var held *errHoldExpired
		var lto *shadow.LockTimeoutError
		switch {
		case errors.As(err, &held):
		case errors.As(err, &lto):
			lto.Attempts = res.Attempts
		default:
			res.Switch = time.Since(t0)
			return res, err
		}
		if res.Attempts >= opt.Lock.MaxAttempts {
			res.Switch = time.Since(t0)
			if held != nil {
				return res, &shadow.LockTimeoutError{Step: "retire-stream (" + held.Error() + ")", Attempts: res.Attempts}
			}
			return res, lto
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		if opt.OnRetry != nil {
			var blockers []shadow.Blocker
			if lto != nil {
				blockers = lto.Blockers
			}
			opt.OnRetry(res.Attempts, blockers, held != nil, wait)
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(wait):
		}
		backoff = min(2*backoff, opt.Lock.MaxBackoff)
		if err := preDrain(); err != nil {
			return res, err
		}
	}
	res.Switch = time.Since(t0)
	// Apply transactions after the switch see the triggers on and stop
	// (ErrRetired); the switch waited for those before it.
	if err := stop(); err != nil && !errors.Is(err, ErrRetired) {
		res.Keys = s.Stats().Keys
		return res, fmt.Errorf("stop the stream after the switch (the triggers carry blue → green already; run again to finish): %w", err)
	}
	res.Keys = s.Stats().Keys
	return res, finishRetire(ctx, cfg)
}

// flushAndPing shortens the wait, while blue's writers are held, for the
// stream to reach the switch position: a ping (PingPrefix) after it makes
// the streamer ask for a keepalive as soon as it has read that far, and a
// commit with synchronous_commit = local flushes the WAL through the ping
// at once — the walsender sends only flushed WAL, and with asynchronous
// commits the WAL writer would flush it only within wal_writer_delay.
// (local: a synchronous standby is not waited for; the walsender needs the
// local flush only.)
func flushAndPing(ctx context.Context, cfg Config) error {
	return pgx.BeginFunc(ctx, cfg.Pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `SELECT pg_catalog.set_config('synchronous_commit', 'local', true),
			pg_catalog.pg_logical_emit_message(false, $1, ''), pg_catalog.pg_current_xact_id()`, PingPrefix(cfg.Names.SyncFlag))
		if err != nil {
			return fmt.Errorf("flush the WAL up to the switch position: %w", err)
		}
		return nil
	})
}

// blueList is every blue of the migration, quoted, comma-separated.
func (c Config) blueList() string {
	var list []string
	for _, t := range c.tables() {
		list = append(list, db.Ident(t.Names.Blue.Schema, t.Names.Blue.Name))
	}
	return strings.Join(list, ", ")
}

// forwardEnabled reads the first table's forward trigger: Retire switches
// every table's in one transaction.
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
	for _, t := range cfg.tables() {
		for _, s := range trigger.PlainReverseSQL(t.Names, t.Mapping) {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("re-create the reverse functions of %s without echo markers: %w", t.Names.Blue, err)
			}
		}
	}
	return tx.Commit(ctx)
}
