package cutover

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// Lock modes used here, weakest first.
const (
	ShareRowExclusive = "SHARE ROW EXCLUSIVE"
	AccessExclusive   = "ACCESS EXCLUSIVE"
)

// LockTarget is one explicit lock of a swap, in acquisition order.
//
// The order is fixed, chosen so that the swap never waits for a lock while
// a client it blocks waits for one the swap holds (lock_timeout would end
// such a deadlock, but only after stalling that client):
//
//  1. views dropped and created again, outermost first (a query on a view
//     locks it before the views and tables under it);
//  2. the app-name view;
//  3. other tables whose constraints change (FK children and parents: their
//     writers lock them before blue or green, from the FK triggers);
//  4. blue, then green, only when the swap changes something on them (user
//     triggers, foreign keys, row-level security).
//
// A view is locked with ALTER VIEW … OWNER TO its own owner (a no-op that
// takes ACCESS EXCLUSIVE on the view alone): LOCK TABLE on a view also locks
// every table under it, in the view's order, which is the wrong order after
// cutover (the view reads green).
//
// No order is safe on its own, though: a writer through the blue schema
// locks blue and then, from the sync trigger, green, one through the green
// schema the other way round, and with several tables an app transaction
// may touch the members in any order. So acquire waits for one lock only
// and takes the others NOWAIT, releasing all and trying again when one is
// busy (shadow.LockInOrder): the swap never waits while holding a lock.
// Every wait shares one budget of lock_timeout per attempt, so app traffic
// never queues behind the swap for longer than that. NoWait marks the green
// of a blue/green pair, as plans have always shown it; acquire takes every
// lock but the first NOWAIT regardless.
type LockTarget struct {
	Rel    spec.QualifiedName `json:"relation"`
	OID    uint32             `json:"-"`
	Mode   string             `json:"mode"`
	NoWait bool               `json:"nowait,omitempty"` // taken with NOWAIT, in the blue/green loop
	Why    string             `json:"why"`
	Kind   string             `json:"-"` // relkind
	Owner  string             `json:"-"` // for a view: its owner
}

// SQL is the statement that takes the lock.
func (l LockTarget) SQL() string {
	rel := db.Ident(l.Rel.Schema, l.Rel.Name)
	if l.Kind == "v" {
		return "ALTER VIEW " + rel + " OWNER TO " + db.Ident(l.Owner) + " /* ACCESS EXCLUSIVE on the view alone */"
	}
	s := "LOCK TABLE " + rel + " IN " + l.Mode + " MODE"
	if l.NoWait {
		s += " NOWAIT"
	}
	return s
}

// lockSet collects lock targets, keeping the strongest mode per relation
// and the first position it was added at.
type lockSet struct{ list []LockTarget }

func modeRank(m string) int { return slices.Index([]string{ShareRowExclusive, AccessExclusive}, m) }

func (s *lockSet) add(rel spec.QualifiedName, oid uint32, mode, why string) *LockTarget {
	for i := range s.list {
		if s.list[i].OID == oid {
			if modeRank(mode) > modeRank(s.list[i].Mode) {
				s.list[i].Mode = mode
			}
			if !strings.Contains(s.list[i].Why, why) {
				s.list[i].Why += "; " + why
			}
			return &s.list[i]
		}
	}
	s.list = append(s.list, LockTarget{Rel: rel, OID: oid, Mode: mode, Why: why, Kind: "r"})
	return &s.list[len(s.list)-1]
}

// addView adds a view (locked without recursing into its tables).
func (s *lockSet) addView(v *viewMeta, why string) {
	t := s.add(v.Name, v.OID, AccessExclusive, why)
	if !v.Materialized {
		t.Kind, t.Owner = "v", v.Owner
	} else {
		t.Kind = "m"
	}
}

// pair marks the last two locks as the blue/green pair when both are there.
func (s *lockSet) pair(blue, green uint32) {
	n := len(s.list)
	if n >= 2 && s.list[n-2].OID == blue && s.list[n-1].OID == green {
		s.list[n-1].NoWait = true
	}
}

func setLockTimeout(ctx context.Context, tx pgx.Tx, d time.Duration) error {
	_, err := tx.Exec(ctx, lockTimeoutSQL(d))
	return err
}

// lockTimeoutSQL sets lock_timeout for the rest of the transaction; it
// goes in front of a statement (one round trip, simple protocol).
func lockTimeoutSQL(d time.Duration) string {
	return fmt.Sprintf("SET LOCAL lock_timeout = '%dms';\n", max(d.Milliseconds(), 1))
}

// acquire takes locks in order inside tx within a budget of timeout,
// counted from the first statement (see LockTarget), through
// shadow.LockInOrder: only the first lock is waited for, every other is
// taken NOWAIT, and when one is busy all are released and the set is
// taken again after a short backoff. So the swap never waits for a lock
// while holding another, and no client touching the relations in another
// order can deadlock with it (the blue/green pair is one such case; with
// several tables, any two members are). It returns when every lock was
// granted. When it gives up it asks pool (may be nil) who holds the
// relation it could not lock and stores them in blockers.
func acquire(ctx context.Context, tx pgx.Tx, pool *pgxpool.Pool, locks []LockTarget, timeout time.Duration,
	blockers *[]shadow.Blocker) (time.Time, error) {
	set := make([]shadow.OrderedLock, len(locks))
	for i, l := range locks {
		set[i] = l.ordered()
	}
	deadline := time.Now().Add(timeout)
	failed, err := shadow.LockInOrder(ctx, tx, set, timeout)
	first := time.Now()
	if err != nil {
		if db.SQLState(err) == db.LockNotAvailable && pool != nil && failed >= 0 {
			if b, berr := holders(context.WithoutCancel(ctx), pool, locks[failed].OID); berr == nil && len(b) > 0 {
				*blockers = b
			}
		}
		return first, err
	}
	// The statements that follow take no lock the swap does not hold,
	// except ACCESS SHARE on what re-created views read: give them what is
	// left of the budget, and a little at least.
	return first, setLockTimeout(ctx, tx, max(time.Until(deadline), timeout/10, 50*time.Millisecond))
}

// ordered is l as shadow.LockInOrder takes it: a view has no NOWAIT form
// of its lock (ALTER VIEW), so it gets the shortest lock_timeout instead.
func (l LockTarget) ordered() shadow.OrderedLock {
	wait, nowait := l, l
	wait.NoWait, nowait.NoWait = false, true
	o := shadow.OrderedLock{Label: l.Rel.String(), Wait: wait.SQL(), NoWait: nowait.SQL()}
	if l.Kind == "v" {
		o.NoWait = "SET LOCAL lock_timeout = '1ms';\n" + wait.SQL()
	}
	return o
}

// holders lists the sessions holding a lock on relation oid.
func holders(ctx context.Context, pool *pgxpool.Pool, oid uint32) ([]shadow.Blocker, error) {
	rows, err := pool.Query(ctx, `
		SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''),
		       coalesce(a.state, '') || ', holds ' || pg_catalog.string_agg(DISTINCT l.mode, '+'),
		       coalesce(a.query, ''), coalesce(pg_catalog.date_trunc('second', pg_catalog.now() - a.xact_start)::text, '')
		  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		 WHERE l.locktype = 'relation' AND l.relation = $1 AND l.granted AND l.pid <> pg_catalog.pg_backend_pid()
		   AND l.database = (SELECT oid FROM pg_database WHERE datname = pg_catalog.current_database())
		   AND NOT (coalesce(a.application_name, '') LIKE 'greenswap%' AND a.state = 'idle in transaction (aborted)')
		 GROUP BY a.pid, a.application_name, a.usename, a.state, a.query, a.xact_start
		 ORDER BY a.xact_start NULLS LAST LIMIT 10`, oid)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (shadow.Blocker, error) {
		var b shadow.Blocker
		err := r.Scan(&b.PID, &b.Application, &b.User, &b.State, &b.Query, &b.XactAge)
		return b, err
	})
}
