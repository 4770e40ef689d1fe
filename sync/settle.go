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
	Log          zerolog.Logger
}

// SettleResult is what one Run did.
type SettleResult struct {
	Leaves     int      // leaves vacuumed
	Statements []string // the SQL run, for the event log
	Retries    int      // attempts that timed out on the lock
	// Interrupted counts VACUUMs cancelled under way because a throttle
	// held (pause, replica lag, the breaker); each was run again after.
	Interrupted int
	Held        time.Duration // time spent held by a throttle
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
	if _, err := conn.Exec(ctx, fmt.Sprintf("SET vacuum_cost_delay = '%dus'; SET lock_timeout = '%dms'; SET statement_timeout = 0",
		delay.Microseconds(), lt.Milliseconds())); err != nil {
		return res, fmt.Errorf("settle %s: session settings: %w", s.Names.Green, err)
	}
	// VACUUM marks a page all-visible only once its rows' hint bits are
	// set, and a hint bit waits for its commit's WAL to be flushed: under
	// synchronous_commit = off (the copy's last batches, the application's
	// writes) that is up to wal_writer_delay later. Wait for the WAL
	// written so far to be flushed (the WAL writer's job; bounded).
	if err := waitWALFlushed(ctx, conn, 5*time.Second); err != nil {
		return res, fmt.Errorf("settle %s: wait for the copy's WAL to be flushed: %w", s.Names.Green, err)
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
	for _, leaf := range leaves {
		sql := "VACUUM (FREEZE) " + leaf
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
				s.Log.Info().Str("table", leaf).Dur("took", time.Since(t0)).Msg("settled (vacuum freeze)")
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
			s.Log.Info().Str("table", leaf).Dur("retry_in", backoff).Msg("settle waits for the table's lock (another vacuum, analyze or DDL holds it)")
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
