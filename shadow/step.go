package shadow

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/spec"
)

// Step is one unit of work as plan shows it and as the runner executes it:
// the exact SQL, the lock it takes and how long that lock is expected to be held.
// A step whose Transactional is true runs all its SQL in one transaction.
type Step struct {
	Name          string   `json:"name"`
	Description   string   `json:"description"`
	SQL           []string `json:"sql"`
	Lock          string   `json:"lock"`      // e.g. "ACCESS EXCLUSIVE on public.orders"
	LockHold      string   `json:"lock_hold"` // e.g. "milliseconds (catalog only)"
	Transactional bool     `json:"transactional"`
}

// LockOptions bound how long a lock-taking step may queue (trap 7: a DDL
// waiting for a lock blocks every later query on the table).
type LockOptions struct {
	Timeout     time.Duration // SET LOCAL lock_timeout per attempt
	MaxAttempts int
	BaseBackoff time.Duration
	MaxBackoff  time.Duration
}

// DefaultLockOptions are used where the spec and flags say nothing.
func DefaultLockOptions() LockOptions {
	return LockOptions{Timeout: spec.DefaultLockTimeout, MaxAttempts: 10, BaseBackoff: 200 * time.Millisecond, MaxBackoff: 5 * time.Second}
}

// Blocker is a session that held a lock a step waited for.
type Blocker struct {
	PID         int32  `json:"pid"`
	Application string `json:"application"`
	User        string `json:"user"`
	State       string `json:"state"`
	Query       string `json:"query"`
	XactAge     string `json:"xact_age"`
}

func (b Blocker) String() string {
	q := b.Query
	if len(q) > 80 {
		q = q[:80] + "…"
	}
	return fmt.Sprintf("pid %d (%s, user %s, %s, transaction open %s): %s", b.PID, b.Application, b.User, b.State, b.XactAge, q)
}

// LockTimeoutError: every attempt timed out waiting for a lock. Exit code 5.
type LockTimeoutError struct {
	Step     string
	Attempts int
	Blockers []Blocker
}

func (e *LockTimeoutError) Error() string {
	s := fmt.Sprintf("%s: gave up after %d attempts waiting for a lock; nothing was changed", e.Step, e.Attempts)
	if len(e.Blockers) > 0 {
		parts := make([]string, len(e.Blockers))
		for i, b := range e.Blockers {
			parts[i] = b.String()
		}
		s += "; blocked by " + strings.Join(parts, "; ")
	}
	return s
}

func (e *LockTimeoutError) ExitCode() exitcode.Code { return exitcode.LockTimeout }

// TxBeginner is satisfied by *pgx.Conn and *pgxpool.Pool.
type TxBeginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// RunWithLockRetry runs fn in a transaction with SET LOCAL lock_timeout. When
// the transaction fails on a lock timeout or deadlock it is rolled back
// (so nothing is left half-done), the blocking sessions are recorded, and it
// is retried after an exponential, jittered backoff; onRetry (may be nil) is
// told each time. After MaxAttempts it returns *LockTimeoutError.
func RunWithLockRetry(ctx context.Context, conn TxBeginner, step string, opt LockOptions,
	onRetry func(attempt int, blockers []Blocker, wait time.Duration),
	fn func(tx pgx.Tx) error) error {
	if opt.MaxAttempts <= 0 {
		opt.MaxAttempts = 1
	}
	var blockers []Blocker
	backoff := opt.BaseBackoff
	for attempt := 1; ; attempt++ {
		err := runOnce(ctx, conn, opt.Timeout, fn, &blockers)
		if err == nil {
			return nil
		}
		st := db.SQLState(err)
		if st != db.LockNotAvailable && st != db.DeadlockDetected {
			return err
		}
		if attempt >= opt.MaxAttempts {
			return &LockTimeoutError{Step: step, Attempts: attempt, Blockers: blockers}
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		if onRetry != nil {
			onRetry(attempt, blockers, wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		backoff = min(backoff*2, opt.MaxBackoff)
	}
}

func runOnce(ctx context.Context, conn TxBeginner, timeout time.Duration, fn func(pgx.Tx) error, blockers *[]Blocker) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT pg_catalog.set_config('lock_timeout', $1, true)", fmt.Sprintf("%dms", timeout.Milliseconds())); err != nil {
		return err
	}
	// A watcher notes who blocks us while we wait, so a timeout can name them.
	var pid int32
	if err := tx.QueryRow(ctx, "SELECT pg_catalog.pg_backend_pid()").Scan(&pid); err != nil {
		return err
	}
	watchCtx, stop := context.WithCancel(ctx)
	done := make(chan []Blocker, 1)
	go func() { done <- watchBlockers(watchCtx, conn, pid, timeout) }()
	err = fn(tx)
	if err == nil {
		err = tx.Commit(ctx)
	}
	stop()
	if b := <-done; len(b) > 0 {
		*blockers = b
	}
	return err
}

// watchBlockers polls pg_blocking_pids for pid until ctx ends, returning the
// last non-empty set seen. It uses its own short transaction per poll.
func watchBlockers(ctx context.Context, conn TxBeginner, pid int32, timeout time.Duration) []Blocker {
	var last []Blocker
	tick := time.NewTicker(max(timeout/4, 50*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return last
		case <-tick.C:
		}
		if b, err := BlockersOf(ctx, conn, pid); err == nil && len(b) > 0 {
			last = b
		}
	}
}

// BlockersOf lists the sessions blocking pid.
func BlockersOf(ctx context.Context, conn TxBeginner, pid int32) ([]Blocker, error) {
	q, ok := conn.(*pgxpool.Pool)
	if !ok {
		return nil, nil // a single *pgx.Conn is busy running the step; nothing to poll with
	}
	rows, err := q.Query(ctx, `
		SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), coalesce(a.state, ''),
		       coalesce(a.query, ''), coalesce(pg_catalog.date_trunc('second', pg_catalog.now() - a.xact_start)::text, '')
		FROM pg_stat_activity a WHERE a.pid = ANY (pg_catalog.pg_blocking_pids($1))`, pid)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Blocker, error) {
		var b Blocker
		err := r.Scan(&b.PID, &b.Application, &b.User, &b.State, &b.Query, &b.XactAge)
		return b, err
	})
}
