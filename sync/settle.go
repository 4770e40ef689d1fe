package sync

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
)

// DefaultSettleCostDelay is the settle's vacuum_cost_delay: autovacuum's
// own pace (its default since PostgreSQL 12), so settling green costs the
// application no more than the autovacuum it replaces, but runs now, under
// greenswap's throttles, instead of racing the application after synced.
const DefaultSettleCostDelay = 2 * time.Millisecond

// DefaultSettleHorizonWait is Settler.HorizonWait's default.
const DefaultSettleHorizonWait = 2 * time.Minute

// VacuumSQL is the settle's statement for one leaf. TRUNCATE false: the
// truncation of empty pages at the end of a table takes ACCESS EXCLUSIVE,
// which would block every read and write of green (and, through the
// triggers, of blue) while it runs, and conflicts with a hot standby's
// queries as it is replayed (break9 04).
func VacuumSQL(leaf string) string { return "VACUUM (FREEZE, TRUNCATE false) " + leaf }

// Settler brings a freshly filled green to steady state before the
// migration is called synced: VACUUM (FREEZE) of every leaf of green, one
// at a time. A million-row copy leaves pages without hint bits, an unset
// visibility map and an insert count past autovacuum's insert threshold:
// the first readers pay for the hint bits, index-only scans read the heap,
// and an autovacuum (later an anti-wraparound one) rewrites every page
// while the application runs on green. The FREEZE does all of that once,
// paced by vacuum_cost_delay, between the throttles' holds.
//
// A re-run after an interruption repeats the VACUUM of the leaf it was in
// and of those after it; a leaf already frozen costs little (its pages are
// all-frozen in the visibility map and skipped).
type Settler struct {
	Pool  *pgxpool.Pool
	Names shadow.Names
	// Throttles are asked before every leaf, as the backfill asks them
	// before every batch (pause, replica lag, the breaker), and every
	// PollInterval while a VACUUM runs: a hold then cancels it, and it
	// runs again once released (aggressive VACUUM skips the pages it has
	// frozen already, so little is done twice).
	Throttles  []Throttle
	OnThrottle func(reason string)
	// LockTimeout bounds each attempt's wait for the leaf's SHARE UPDATE
	// EXCLUSIVE lock (another VACUUM, ANALYZE, an index build or DDL hold
	// it); the attempt is retried with backoff until ctx ends.
	LockTimeout time.Duration
	// NiceRatio lowers the pace: vacuum_cost_delay is
	// DefaultSettleCostDelay × (1 + NiceRatio).
	NiceRatio    float64
	PollInterval time.Duration // how often a held settle re-checks; default 250ms
	// HorizonWait bounds the wait for transactions older than the copy's
	// end (a long report, an idle-in-transaction session, a prepared
	// transaction, a standby's feedback): while one is open VACUUM can
	// freeze none of the copied rows. Past it the VACUUM runs anyway and
	// the result says green is not settled. Default DefaultSettleHorizonWait.
	HorizonWait time.Duration
	Log         zerolog.Logger
}

// SettleResult is what one Run did.
type SettleResult struct {
	Leaves     int      // leaves vacuumed
	Statements []string // the SQL run, for the event log
	Retries    int      // attempts that timed out on the lock
	// Interrupted counts VACUUMs cancelled under way because a throttle
	// held (pause, replica lag, the breaker); each was run again after.
	Interrupted int
	Held        time.Duration // time spent held by a throttle or waiting for the horizon
	// NotSettled names each leaf vacuumed while the xmin horizon was held
	// back past HorizonWait, and by what.
	NotSettled []string
}

// Run vacuums every leaf of green. It returns ctx's error when interrupted.
func (s *Settler) Run(ctx context.Context) (SettleResult, error) {
	var res SettleResult
	poll := s.PollInterval
	if poll <= 0 {
		poll = 250 * time.Millisecond
	}
	pc, err := s.Pool.Acquire(ctx)
	if err != nil {
		return res, fmt.Errorf("settle %s: %w", s.Names.Green, err)
	}
	// The session's settings stay with the connection: it is not given back
	// to the pool for another use.
	conn := pc.Hijack()
	defer conn.Close(context.WithoutCancel(ctx))
	delay := time.Duration(float64(DefaultSettleCostDelay) * (1 + max(s.NiceRatio, 0)))
	lt := s.LockTimeout
	if lt <= 0 {
		lt = 2 * time.Second
	}
	// client_connection_check_interval: a VACUUM whose greenswap was
	// killed stops within a second instead of running on, out of reach of
	// pause and the throttles of the run that resumes (break9 02).
	if _, err := conn.Exec(ctx, fmt.Sprintf("SET vacuum_cost_delay = '%dus'; SET lock_timeout = '%dms'; SET statement_timeout = 0; "+
		"SET client_connection_check_interval = '1s'", delay.Microseconds(), lt.Milliseconds())); err != nil {
		return res, fmt.Errorf("settle %s: session settings: %w", s.Names.Green, err)
	}
	var startXmax int64
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.txid_snapshot_xmax(pg_catalog.txid_current_snapshot())`).Scan(&startXmax); err != nil {
		return res, fmt.Errorf("settle %s: %w", s.Names.Green, err)
	}
	leaves, err := greenLeaves(ctx, conn, s.Names)
	if err != nil {
		return res, err
	}
	held := ""
	tell := func(reason string) {
		if reason != held {
			held = reason
			if s.OnThrottle != nil {
				s.OnThrottle(reason)
			}
		}
	}
	horizonWait := s.HorizonWait
	if horizonWait <= 0 {
		horizonWait = DefaultSettleHorizonWait
	}
	for _, leaf := range leaves {
		sql := VacuumSQL(leaf)
		var horizonSince time.Time
		backoff := 50 * time.Millisecond
		for {
			if err := ctx.Err(); err != nil {
				return res, err
			}
			reason, err := s.hold(ctx)
			if err != nil {
				if ctx.Err() != nil {
					continue
				}
				return res, err
			}
			tell(reason)
			if reason != "" {
				t0 := time.Now()
				sleepCtx(ctx, poll)
				res.Held += time.Since(t0)
				continue
			}
			if horizon, err := horizonHolders(ctx, conn, startXmax); err != nil {
				return res, fmt.Errorf("settle %s: %w", s.Names.Green, err)
			} else if horizon != "" {
				// A VACUUM now would freeze nothing the copy wrote and set no
				// visibility bit: wait (bounded, said in status) for it.
				if horizonSince.IsZero() {
					horizonSince = time.Now()
				}
				if time.Since(horizonSince) < horizonWait {
					tell("settle waits for " + horizon + ": it holds back the xmin horizon, so VACUUM could freeze none of the copied rows")
					t0 := time.Now()
					sleepCtx(ctx, poll)
					res.Held += time.Since(t0)
					continue
				}
				res.NotSettled = append(res.NotSettled, fmt.Sprintf("%s: vacuumed while %s held back the xmin horizon (waited %s): "+
					"its copied rows are neither frozen nor all-visible; autovacuum will do it once that ends", leaf, horizon, horizonWait))
				s.Log.Warn().Str("table", leaf).Str("held_by", horizon).Msg("green is not settled: the xmin horizon is held back; vacuuming anyway")
			}
			// VACUUM marks a page all-visible only once its rows' hint bits
			// are set, and a hint bit waits until the WAL of its commit is
			// flushed; under synchronous_commit = off that commit's LSN is
			// that of the latest commit among the 32 transactions sharing
			// its commit-log slot, so writers committing just after the copy
			// push it on. Wait (bounded: the WAL writer's job) for the WAL
			// written so far to be flushed.
			if err := waitWALFlushed(ctx, conn, 5*time.Second); err != nil {
				return res, fmt.Errorf("settle %s: wait for the WAL to be flushed: %w", s.Names.Green, err)
			}
			t0 := time.Now()
			reason, err = s.vacuum(ctx, conn, sql, poll)
			if reason != "" {
				// A throttle held while the VACUUM ran: it was cancelled;
				// the pages it froze stay frozen and are skipped next time.
				res.Interrupted++
				tell(reason)
				continue
			}
			if err == nil {
				msg := "settled (vacuum freeze)"
				if !horizonSince.IsZero() && time.Since(horizonSince) >= horizonWait {
					msg = "vacuumed, not settled: the xmin horizon was held back (see the warning before)"
				}
				s.Log.Info().Str("table", leaf).Dur("took", time.Since(t0)).Msg(msg)
				res.Leaves++
				res.Statements = append(res.Statements, sql)
				break
			}
			if ctx.Err() != nil {
				return res, ctx.Err()
			}
			if db.SQLState(err) != db.LockNotAvailable {
				return res, fmt.Errorf("settle %s: %s: %w", s.Names.Green, sql, err)
			}
			res.Retries++
			who := lockHolders(ctx, conn, leaf)
			tell("settle waits for the lock on " + leaf + ": " + who)
			s.Log.Info().Str("table", leaf).Str("held_by", who).Dur("retry_in", backoff).Msg("settle waits for the table's lock")
			sleepCtx(ctx, backoff+rand.N(backoff/2+1))
			backoff = min(2*backoff, 5*time.Second)
		}
	}
	return res, nil
}

// vacuum runs one VACUUM on conn, asking the throttles every poll while it
// runs. When one holds, or ctx ends, the server is asked to cancel the
// statement (a cancel request: the session stays usable) and vacuum returns
// the throttle's reason, or ctx's error. The statement itself runs without
// ctx, because pgx answers a cancelled context by abandoning the
// connection, which would leave the server vacuuming on.
func (s *Settler) vacuum(ctx context.Context, conn *pgx.Conn, sql string, poll time.Duration) (string, error) {
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(context.WithoutCancel(ctx), sql)
		done <- err
	}()
	tick := time.NewTicker(poll)
	defer tick.Stop()
	cancel := func() {
		if err := conn.PgConn().CancelRequest(context.WithoutCancel(ctx)); err != nil {
			s.Log.Warn().Err(err).Msg("settle: cancel the VACUUM under way")
		}
	}
	for {
		select {
		case err := <-done:
			return "", err
		case <-ctx.Done():
			cancel()
			<-done
			return "", ctx.Err()
		case <-tick.C:
			reason, err := s.hold(ctx)
			if err != nil || reason == "" {
				continue // a throttle that cannot be read does not stop a VACUUM under way
			}
			cancel()
			if err := <-done; err == nil || db.SQLState(err) != db.QueryCanceled {
				return "", err // it ended on its own first
			}
			return reason, nil
		}
	}
}

func (s *Settler) hold(ctx context.Context) (string, error) {
	for _, t := range s.Throttles {
		if reason, err := t.Hold(ctx); err != nil || reason != "" {
			return reason, err
		}
	}
	return "", nil
}

// greenLeaves are green's tables that hold rows, quoted: green itself, or
// the leaves of its partition tree.
func greenLeaves(ctx context.Context, q db.Querier, n shadow.Names) ([]string, error) {
	rows, err := q.Query(ctx, `SELECT ns.nspname, c.relname
		  FROM (SELECT relid, isleaf, level FROM pg_catalog.pg_partition_tree($1::regclass)
		         UNION SELECT $1::regclass, true, 0) t -- a plain table has no partition tree
		  JOIN pg_catalog.pg_class c ON c.oid = t.relid
		  JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace
		 WHERE t.isleaf AND c.relkind = 'r'
		 ORDER BY t.level, c.relname`, db.Ident(n.Green.Schema, n.Green.Name))
	if err != nil {
		return nil, fmt.Errorf("list the tables of %s: %w", n.Green, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var schema, name string
		if err := rows.Scan(&schema, &name); err != nil {
			return nil, err
		}
		out = append(out, db.Ident(schema, name))
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("settle: %s has no table to vacuum", strings.TrimSpace(n.Green.String()))
	}
	return out, nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// waitWALFlushed waits until the WAL inserted so far is flushed, at most
// limit (then it goes on: VACUUM still works, only some pages stay without
// their all-visible bit until the next vacuum).
func waitWALFlushed(ctx context.Context, conn *pgx.Conn, limit time.Duration) error {
	var target string
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_current_wal_insert_lsn()::text`).Scan(&target); err != nil {
		return err
	}
	deadline := time.Now().Add(limit)
	for {
		var flushed bool
		if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_current_wal_flush_lsn() >= $1::pg_lsn`, target).Scan(&flushed); err != nil {
			return err
		}
		if flushed || time.Now().After(deadline) {
			return nil
		}
		sleepCtx(ctx, 10*time.Millisecond)
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// horizonHoldersSQL lists what holds the xmin horizon back past $1, the
// snapshot xmax taken when the settle started (every row the copy wrote
// is older): sessions of this database with an older snapshot or xid,
// prepared transactions, replication slots and standbys' feedback. A role
// without pg_read_all_stats sees no other role's backend_xmin: then only
// its own sessions are named.
const horizonHoldersSQL = `
WITH s AS (SELECT ($1::bigint % 4294967296)::text::xid AS x)
SELECT 'pid ' || a.pid || coalesce(' (' || nullif(a.application_name, '') || ')', '') ||
       coalesce(', ' || a.state, '') || coalesce(', transaction open since ' || pg_catalog.to_char(a.xact_start, 'YYYY-MM-DD HH24:MI:SS'), '')
  FROM pg_catalog.pg_stat_activity a, s
 WHERE a.datname = pg_catalog.current_database() AND a.pid <> pg_catalog.pg_backend_pid()
   AND (pg_catalog.age(a.backend_xmin) > pg_catalog.age(s.x) OR pg_catalog.age(a.backend_xid) > pg_catalog.age(s.x))
UNION ALL
SELECT 'prepared transaction ' || pg_catalog.quote_literal(p.gid)
  FROM pg_catalog.pg_prepared_xacts p, s
 WHERE p.database = pg_catalog.current_database() AND pg_catalog.age(p.transaction) > pg_catalog.age(s.x)
UNION ALL
SELECT 'replication slot ' || r.slot_name
  FROM pg_catalog.pg_replication_slots r, s
 WHERE r.xmin IS NOT NULL AND pg_catalog.age(r.xmin) > pg_catalog.age(s.x)
UNION ALL
SELECT 'standby ' || coalesce(nullif(w.application_name, ''), pg_catalog.host(w.client_addr), 'pid ' || w.pid) || ' (hot_standby_feedback)'
  FROM pg_catalog.pg_stat_replication w, s
 WHERE pg_catalog.age(w.backend_xmin) > pg_catalog.age(s.x)`

// horizonHolders names what holds the horizon back ("" = nothing).
func horizonHolders(ctx context.Context, conn *pgx.Conn, startXmax int64) (string, error) {
	rows, err := conn.Query(ctx, horizonHoldersSQL, startXmax)
	if err != nil {
		return "", fmt.Errorf("read what holds the xmin horizon: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", fmt.Errorf("read what holds the xmin horizon: %w", err)
	}
	if len(names) > 3 {
		names = append(names[:3], fmt.Sprintf("%d more", len(names)-3))
	}
	return strings.Join(names, "; "), nil
}

// lockHolders names the sessions holding a lock on leaf that conflicts
// with VACUUM's SHARE UPDATE EXCLUSIVE, for status; best effort.
func lockHolders(ctx context.Context, conn *pgx.Conn, leaf string) string {
	rows, err := conn.Query(ctx, `SELECT 'pid ' || l.pid || coalesce(' (' || nullif(a.application_name, '') || ')', '') || ' holds ' || l.mode
		  FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
		 WHERE l.locktype = 'relation' AND l.relation = $1::regclass AND l.granted AND l.pid <> pg_catalog.pg_backend_pid()
		   AND l.mode IN ('ShareUpdateExclusiveLock', 'ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
		 ORDER BY l.pid LIMIT 3`, leaf)
	if err != nil {
		return "another session holds it"
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(names) == 0 {
		return "another session holds it (another vacuum, analyze, index build or DDL)"
	}
	return strings.Join(names, "; ")
}
