package shadow

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/internal/db"
)

// OrderedLock is one lock of a set LockInOrder takes: Wait is the
// statement that waits for it (run for the first lock of the set),
// NoWait the one that fails at once when it is busy (55P03).
type OrderedLock struct {
	Label  string // the relation, for errors
	Wait   string
	NoWait string
}

// TableLock is the OrderedLock of LOCK TABLE rel IN mode MODE (rel
// quoted already).
func TableLock(rel, mode string) OrderedLock {
	s := "LOCK TABLE " + rel + " IN " + mode + " MODE"
	return OrderedLock{Label: rel, Wait: s, NoWait: s + " NOWAIT"}
}

// LockInOrder takes every lock of a step that locks several relations,
// inside tx, all up front and without ever waiting for one while holding
// another: one is waited for (under what is left of budget), before any
// other is taken; the others are taken NOWAIT, in the order given; when
// one of them is busy every lock taken is released (a savepoint rolled
// back) and the set is tried again after a short jittered backoff, until
// budget is spent. The first try waits for the first lock; each retry
// waits for the one found busy last (so a table every client holds for a
// moment is not lost to NOWAIT forever), the others still in order.
//
// Why: locks taken one after another (LOCK TABLE a, b, or one ALTER per
// table) wait for b while holding a; an app transaction that holds b and
// then touches a closes a cycle. PostgreSQL breaks it after
// deadlock_timeout by failing one of the two, often the app's (40P01),
// and until then everyone queued behind a waits too.
//
// It returns the index of the lock it could not take and a 55P03 error
// (which RunWithLockRetry retries), or -1 and nil with every lock held;
// lock_timeout is then budget again for the rest of tx.
func LockInOrder(ctx context.Context, tx pgx.Tx, locks []OrderedLock, budget time.Duration) (int, error) {
	if len(locks) == 0 {
		return -1, nil
	}
	deadline := time.Now().Add(budget)
	if _, err := tx.Exec(ctx, "SAVEPOINT gs_lock_all"); err != nil {
		return 0, err
	}
	pause := time.Millisecond
	waited := 0 // the lock waited for: the first, then the last one found busy
	for try := 1; ; try++ {
		left := time.Until(deadline)
		if left < time.Millisecond {
			return waited, lockBusy("could not lock %s within %s (%d tries)", locks[waited].Label, budget, try-1)
		}
		failed := waited
		_, err := tx.Exec(ctx, lockTimeoutStmt(left)+locks[waited].Wait)
		for i := 0; err == nil && i < len(locks); i++ {
			if i == waited {
				continue
			}
			failed = i
			_, err = tx.Exec(ctx, locks[i].NoWait)
		}
		if err == nil {
			_, err = tx.Exec(ctx, "RELEASE SAVEPOINT gs_lock_all;\n"+lockTimeoutStmt(budget))
			if err != nil {
				return 0, err
			}
			return -1, nil
		}
		if db.SQLState(err) != db.LockNotAvailable {
			return failed, err
		}
		if _, rerr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT gs_lock_all"); rerr != nil {
			return failed, rerr
		}
		if failed == waited {
			return failed, err // waited for the whole budget
		}
		wait := pause/2 + rand.N(pause/2+1)
		if time.Until(deadline) <= wait {
			return failed, lockBusy("could not lock %s and the %d other relation(s) of the step together within %s (%d tries; last: %s busy)",
				locks[0].Label, len(locks)-1, budget, try, locks[failed].Label)
		}
		select {
		case <-ctx.Done():
			return failed, ctx.Err()
		case <-time.After(wait):
		}
		pause = min(pause*2, 32*time.Millisecond)
		// Wait for the busy one next time, holding nothing: the clients
		// holding it finish, and those that would take it after us
		// queue behind us instead of keeping it from us.
		waited = failed
	}
}

func lockTimeoutStmt(d time.Duration) string {
	return fmt.Sprintf("SET LOCAL lock_timeout = '%dms';\n", max(d.Milliseconds(), 1))
}

func lockBusy(format string, args ...any) error {
	return &pgconn.PgError{Severity: "ERROR", Code: db.LockNotAvailable, Message: fmt.Sprintf(format, args...)}
}
