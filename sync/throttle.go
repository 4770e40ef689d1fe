package sync

import (
	"context"
	"fmt"
	gosync "sync"
	"time"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
)

// Throttle holds the backfill: Hold returns why the next batch must wait,
// or "" when it may run. It is asked before every batch, and every
// Options.PollInterval while held. An error stops the backfill after the
// last committed batch (its checkpoint kept).
//
// The sources the runner asks, in order: the paused flag (greenswap
// pause), ReplicaLag below, and the guard's circuit breaker
// (guard.Breaker: rollback rate, deadlocks, lock waits, latency, replica
// lag, probes), whose reason reads "guard: <signal>=<value> > <bound> ..."
// and which fails with exitcode.GuardTripped once it has been open longer
// than its MaxOpen.
type Throttle interface {
	Hold(ctx context.Context) (reason string, err error)
}

// ThrottleFunc adapts a function to Throttle.
type ThrottleFunc func(ctx context.Context) (string, error)

func (f ThrottleFunc) Hold(ctx context.Context) (string, error) { return f(ctx) }

// ReplicaLag holds the backfill while any standby's replay lag
// (pg_stat_replication.replay_lag) exceeds Max. The view is read at most
// once per Every (default 1s). A role that may not see the lag columns
// (neither superuser nor pg_read_all_stats) reads NULL and could never
// hold: the first Hold finds that out (shadow.StatsVisibility) and calls
// Warn once, naming the missing privilege; Blind then reports it.
//
// Against a real standby (sync/replica_test.go): while its replay is paused
// replay_lag keeps growing, whether or not the primary writes (the
// walsender extrapolates the age of the oldest WAL not yet replayed at
// every standby reply, at least every wal_receiver_status_interval, 10s by
// default), so the hold starts within about Max plus that interval. But
// once the standby has replayed everything while the primary is idle (as it
// is when the held backfill was the writer), the view keeps showing a stale
// lag (the age of the newest WAL replayed: 3-10s in the test) until a
// later reply clears it, up to one status interval later. A standby whose
// replay_lsn has reached pg_current_wal_lsn() is not behind, so it is not
// counted.
type ReplicaLag struct {
	Q     db.Querier
	Max   time.Duration
	Every time.Duration
	// Warn, when set, is told once that the throttle is blind.
	Warn func(msg string)

	mu      gosync.Mutex
	at      time.Time
	reason  string
	checked bool // visibility read
	blind   bool
}

// Blind reports whether the throttle found it cannot see the replicas' lag
// (known after the first Hold with Max > 0).
func (r *ReplicaLag) Blind() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.blind
}

// ReplicaLagSQL is the worst replay lag in seconds over the standbys and
// subscribers that have not yet replayed all the WAL written (0 without
// any), and that one's application_name.
//
// greenswap's own logical streams are not replicas: a walsender whose
// application_name is greenswap's stream's ("greenswap:<m>:stream") and
// which streams from a greenswap slot ("gs_<m>") is left out. Counting it
// held the backfill behind the stream's own apply lag, which the copy's
// writes were making: a stall that fed itself (issue 12).
const ReplicaLagSQL = `SELECT coalesce(pg_catalog.max(extract(epoch FROM r.replay_lag)), 0)::float8,
	coalesce((pg_catalog.array_agg(r.application_name ORDER BY r.replay_lag DESC NULLS LAST))[1], '')
	FROM pg_catalog.pg_stat_replication r
	WHERE r.replay_lsn < pg_catalog.pg_current_wal_lsn()
	  AND NOT (r.application_name LIKE 'greenswap:%:stream' AND EXISTS (
	      SELECT 1 FROM pg_catalog.pg_replication_slots s
	       WHERE s.active_pid = r.pid AND s.slot_type = 'logical' AND s.slot_name LIKE 'gs\_%'))`

// ReadReplicaLag is the worst replay lag and that replica's name (see
// ReplicaLagSQL); the guard's replica-lag signal reads it too, so the two
// never disagree on what a replica is.
func ReadReplicaLag(ctx context.Context, q db.Querier) (time.Duration, string, error) {
	var lag float64
	var name string
	if err := q.QueryRow(ctx, ReplicaLagSQL).Scan(&lag, &name); err != nil {
		return 0, "", fmt.Errorf("read replica lag: %w", err)
	}
	return time.Duration(lag * float64(time.Second)), name, nil
}

func (r *ReplicaLag) Hold(ctx context.Context) (string, error) {
	if r.Max <= 0 {
		return "", nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	every := r.Every
	if every <= 0 {
		every = time.Second
	}
	if !r.at.IsZero() && time.Since(r.at) < every {
		return r.reason, nil
	}
	if !r.checked {
		ok, role, err := shadow.StatsVisibility(ctx, r.Q)
		if err != nil {
			return "", err
		}
		r.checked, r.blind = true, !ok
		if r.blind && r.Warn != nil {
			r.Warn(fmt.Sprintf("the replica-lag throttle (max %s) is blind: role %s is neither superuser nor has the privileges of pg_read_all_stats, so pg_stat_replication hides every replica's lag and the copy is never held for it; GRANT pg_read_all_stats TO %s to make it work",
				r.Max, role, db.Ident(role)))
		}
	}
	d, name, err := ReadReplicaLag(ctx, r.Q)
	if err != nil {
		return "", err
	}
	r.at = time.Now()
	r.reason = ""
	if d > r.Max {
		r.reason = fmt.Sprintf("replica %s replay lag %s > %s", name, d.Round(100*time.Millisecond), r.Max)
	}
	return r.reason, nil
}

// LockWaitersSQL counts the sessions waiting on a lock that backend $1
// holds, greenswap's own excepted: in logical mode the stream's applier
// may wait a moment for a batch's uncommitted green rows, and holding the
// backfill for that would slow both for no client's sake.
const LockWaitersSQL = `SELECT pg_catalog.count(DISTINCT l.pid) FROM pg_locks l
	LEFT JOIN pg_stat_activity a ON a.pid = l.pid
	WHERE NOT l.granted AND $1 = ANY (pg_catalog.pg_blocking_pids(l.pid))
	  AND coalesce(a.application_name, '') NOT LIKE 'greenswap%'`

// lockWaitersExceptSQL is LockWaitersSQL leaving out the backends in $2
// too: the other workers of a parallel copy, whose checkpoints queue on
// the migration's row while a batch commits. They are greenswap's own
// whatever application_name the DSN gives them.
const lockWaitersExceptSQL = LockWaitersSQL + `
	  AND l.pid <> ALL ($2::int4[])`

// LockWaiters counts the sessions now waiting on locks held by backend pid.
func LockWaiters(ctx context.Context, q db.Querier, pid uint32) (int, error) {
	var n int
	err := q.QueryRow(ctx, LockWaitersSQL, int32(pid)).Scan(&n)
	return n, err
}

// waiterWatch samples, while a batch runs, how many sessions wait on the
// batch's locks (its FOR KEY SHARE row locks, its uncommitted green rows).
type waiterWatch struct {
	cancel context.CancelFunc
	done   chan int
}

// waiterPoll is how often a running batch is checked for waiting sessions;
// batches shorter than that are never checked (and hold their locks briefly).
const waiterPoll = 100 * time.Millisecond

// siblings, when set, is the backends of the other workers of a parallel
// copy, not counted as waiters.
func startWaiterWatch(ctx context.Context, q db.Querier, pid uint32, siblings func() []int32) *waiterWatch {
	ctx, cancel := context.WithCancel(ctx)
	w := &waiterWatch{cancel: cancel, done: make(chan int, 1)}
	go func() {
		most := 0
		t := time.NewTicker(waiterPoll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				w.done <- most
				return
			case <-t.C:
			}
			var n int
			var err error
			if siblings == nil {
				n, err = LockWaiters(ctx, q, pid)
			} else {
				err = q.QueryRow(ctx, lockWaitersExceptSQL, int32(pid), siblings()).Scan(&n)
			}
			if err == nil && n > most {
				most = n
			}
		}
	}()
	return w
}

// stop ends the watch and returns the most waiters seen at once.
func (w *waiterWatch) stop() int {
	w.cancel()
	return <-w.done
}

// GreenChangesSQL reads green's cumulative row changes from the statistics
// collector: every insert, update and delete, by the backfill and by the
// triggers alike. $1 is green's quoted, qualified name.
const GreenChangesSQL = `SELECT coalesce((SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables
	WHERE relid = pg_catalog.to_regclass($1)), 0)`

// GreenChanges is green's cumulative row changes (see GreenChangesSQL). The
// statistics lag the writes by up to a second or so: an estimate.
func GreenChanges(ctx context.Context, q db.Querier, n shadow.Names) (int64, error) {
	var v int64
	err := q.QueryRow(ctx, GreenChangesSQL, db.Ident(n.Green.Schema, n.Green.Name)).Scan(&v)
	return v, err
}
