// Package guard samples the health of the database a migration runs on
// and compares each signal with a baseline taken before the step: the
// circuit breaker (Breaker) holds sync while one is past its bound.
package guard

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os/exec"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/spec"
)

// Signal names, as they appear in reasons, events and metrics.
const (
	SigRollbackRate = "rollback_rate"
	SigDeadlocks    = "deadlocks"
	SigLockWaits    = "lock_waits"
	SigLockWaitTime = "lock_wait_time"
	SigLatency      = "latency_ratio"
	SigReplicaLag   = "replica_lag"
	SigProbeSQL     = "probe_sql"
	SigProbeCmd     = "probe_cmd"
)

// Signal is one reading: its value against its bound, the baseline it is
// compared with, and whether it is past the bound.
type Signal struct {
	Name     string
	Value    float64
	Bound    float64 // in Value's unit; the threshold after the baseline is applied
	Baseline float64
	Unit     string // "", "s", "/s", "ms", "x"
	Tripped  bool
	// Unavailable: the signal cannot be read here (pg_stat_statements not
	// installed or not preloaded); never tripped.
	Unavailable bool
	Reason      string // one line: what was seen
}

// Text is the one-line form status and the throttle reason carry:
// "rollback_rate=0.62 > 0.21 (baseline 0.01): 310 of 500 transactions rolled back".
func (s Signal) Text() string {
	if s.Unavailable {
		return s.Name + " unavailable: " + s.Reason
	}
	op := "<="
	if s.Tripped {
		op = ">"
	}
	return fmt.Sprintf("%s=%s %s %s (baseline %s): %s", s.Name, num(s.Value, s.Unit), op, num(s.Bound, s.Unit), num(s.Baseline, s.Unit), s.Reason)
}

func num(v float64, unit string) string {
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".") + unit
}

// Sampler reads the signals of one migration. Q is the migration's
// connection (its role runs the SQL probe). Relations are blue, green and
// the app view, quoted and qualified.
type Sampler struct {
	Q         db.Querier
	Relations []string
	// AppTable is the app name's unquoted table name: statements whose text
	// names it are the application's (pg_stat_statements).
	AppTable string
	// Exclude: statements whose text contains it are greenswap's own
	// (the version schemas' prefix, "gs_<m>_").
	Exclude string
	Opts    spec.GuardOptions // after WithDefaults
	// ReplicaLag reads the worst replica's lag (sync.ReadReplicaLag); nil
	// leaves the signal out.
	ReplicaLag func(ctx context.Context, q db.Querier) (time.Duration, string, error)
}

// counters are the cumulative figures a rate is the delta of.
type counters struct {
	at                time.Time
	commits, rollback int64
	deadlocks         int64
	stmtCalls         float64
	stmtTime          float64 // ms
	stmtOK            bool
	stmtWhy           string
}

const dbStatsSQL = `SELECT xact_commit, xact_rollback, deadlocks FROM pg_catalog.pg_stat_database
	WHERE datname = pg_catalog.current_database()`

// LockWaitSQL counts the sessions waiting for a lock on the relations $1
// (a table lock, or a row's tuple lock), greenswap's own excepted, and the
// longest such wait in seconds. pg_locks.waitstart needs PostgreSQL 14
// (lockWaitSQL13 before).
const LockWaitSQL = `SELECT pg_catalog.count(DISTINCT l.pid)::int,
	coalesce(extract(epoch FROM pg_catalog.max(pg_catalog.clock_timestamp() - l.waitstart)), 0)::float8` + lockWaitFrom

// lockWaitSQL13 is LockWaitSQL before PostgreSQL 14 (no waitstart): the
// wait is taken from the start of the waiting statement, an upper bound.
const lockWaitSQL13 = `SELECT pg_catalog.count(DISTINCT l.pid)::int,
	coalesce(extract(epoch FROM pg_catalog.max(pg_catalog.clock_timestamp() - a.query_start)), 0)::float8` + lockWaitFrom

const lockWaitFrom = `
	FROM pg_catalog.pg_locks l
	LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
	WHERE NOT l.granted AND l.locktype IN ('relation', 'tuple')
	  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
	  AND l.relation IN (SELECT pg_catalog.to_regclass(r)::oid FROM pg_catalog.unnest($1::text[]) r)
	  AND coalesce(a.application_name, '') NOT LIKE 'greenswap%'`

const statementsSchemaSQL = `SELECT n.nspname FROM pg_catalog.pg_extension e
	JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'`

// statementsSQL sums the calls and execution time of the statements whose
// text names the app table ($1) but not greenswap's schemas ($2).
func statementsSQL(schema string) string {
	return `SELECT coalesce(pg_catalog.sum(calls), 0)::float8, coalesce(pg_catalog.sum(total_exec_time), 0)::float8
	FROM ` + db.Ident(schema, "pg_stat_statements") + `
	WHERE dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
	  AND pg_catalog.strpos(pg_catalog.lower(query), pg_catalog.lower($1)) > 0
	  AND ($2 = '' OR pg_catalog.strpos(query, $2) = 0)`
}

func (s *Sampler) counters(ctx context.Context) (counters, error) {
	c := counters{at: time.Now()}
	if err := s.Q.QueryRow(ctx, dbStatsSQL).Scan(&c.commits, &c.rollback, &c.deadlocks); err != nil {
		return c, fmt.Errorf("guard: read pg_stat_database: %w", err)
	}
	if s.Opts.LatencyRatio <= 0 {
		return c, nil
	}
	var schema string
	switch err := s.Q.QueryRow(ctx, statementsSchemaSQL).Scan(&schema); {
	case errors.Is(err, pgx.ErrNoRows):
		c.stmtWhy = "the pg_stat_statements extension is not installed in this database"
		return c, nil
	case err != nil:
		return c, fmt.Errorf("guard: look for pg_stat_statements: %w", err)
	}
	err := s.Q.QueryRow(ctx, statementsSQL(schema), s.AppTable, s.Exclude).Scan(&c.stmtCalls, &c.stmtTime)
	if err != nil {
		// Not preloaded (55000), or a role that may not read it: the signal
		// is unavailable, which must not stop a migration.
		c.stmtWhy = fmt.Sprintf("pg_stat_statements cannot be read (SQLSTATE %s): %s", db.SQLState(err), firstLine(err.Error()))
		return c, nil
	}
	c.stmtOK = true
	return c, nil
}

// Baseline is what the signals are compared with: the rates over one
// interval before the step.
type Baseline struct {
	last          counters
	rates         []Signal // the rate signals of the last full window
	rollbackShare float64
	deadlockRate  float64
	meanMs        float64
	meanOK        bool
}

// TakeBaseline samples the counters twice, Opts.Every apart (once when
// no rate signal is on).
func (s *Sampler) TakeBaseline(ctx context.Context) (*Baseline, error) {
	a, err := s.counters(ctx)
	if err != nil {
		return nil, err
	}
	if s.Opts.RollbackRate <= 0 && s.Opts.Deadlocks <= 0 && s.Opts.LatencyRatio <= 0 {
		// No signal is a rate: nothing to wait an interval for.
		return &Baseline{last: a, rates: []Signal{}}, nil
	}
	t := time.NewTimer(max(s.Opts.Every.Duration, RateWindow))
	select {
	case <-ctx.Done():
		t.Stop()
		return nil, ctx.Err()
	case <-t.C:
	}
	b, err := s.counters(ctx)
	if err != nil {
		return nil, err
	}
	bl := &Baseline{last: b}
	bl.rollbackShare, _, _ = share(a, b)
	bl.deadlockRate = rate(float64(b.deadlocks-a.deadlocks), b.at.Sub(a.at))
	if b.stmtOK && b.stmtCalls > 0 {
		// The cumulative mean: steadier than one interval's.
		bl.meanMs, bl.meanOK = b.stmtTime/b.stmtCalls, true
	}
	bl.rates = s.rates(bl, a, b) // the baseline's own window: what the first samples show
	return bl, nil
}

func share(a, b counters) (float64, int64, int64) {
	rb := b.rollback - a.rollback
	all := b.commits - a.commits + rb
	if all <= 0 {
		return 0, rb, all
	}
	return float64(rb) / float64(all), rb, all
}

func rate(n float64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return n / d.Seconds()
}

// minXacts: below this many transactions in one sample, a rollback share
// says nothing (one rollback out of two is not an error storm).
const minXacts = 20

// MinRollbacks: rollback_rate also needs this many rolled-back
// transactions in one rate window (2 s) to trip. pg_stat_database is
// database-wide: any role with CONNECT adds rollbacks of its own (break7
// finding 04: 400 × BEGIN; SELECT txid_current(); ROLLBACK by a role with
// no table privilege rolled a guarded cutover back). A floor keeps a small
// such storm from deciding; it does not stop a determined one, which is
// why the per-table signals (lock waits, latency) and probes exist.
const MinRollbacks = 50

// minCalls: the same for statement latency.
const minCalls = 20

// Sample reads every signal against bl, and moves bl's counters on.
func (s *Sampler) Sample(ctx context.Context, bl *Baseline) ([]Signal, error) {
	c, err := s.counters(ctx)
	if err != nil {
		return nil, err
	}
	var out []Signal
	if prev := bl.last; c.at.Sub(prev.at) < RateWindow && bl.rates != nil {
		out = append(out, bl.rates...) // the window is not over: the last verdict stands
	} else {
		bl.last = c
		bl.rates = s.rates(bl, prev, c)
		out = append(out, bl.rates...)
	}
	return s.instant(ctx, out)
}

// RateWindow is the least span a rate is measured over: a busy backend
// flushes its counters to pg_stat_database about once a second, so a
// shorter window sees bursts and gaps, not rates.
const RateWindow = 2 * time.Second

// rates are the signals measured as deltas of counters between prev and c.
func (s *Sampler) rates(bl *Baseline, prev, c counters) []Signal {
	o := s.Opts
	dt := c.at.Sub(prev.at)
	out := []Signal{}
	if o.RollbackRate > 0 {
		v, rb, all := share(prev, c)
		bound := math.Min(bl.rollbackShare+o.RollbackRate, 1)
		out = append(out, Signal{Name: SigRollbackRate, Value: v, Bound: bound, Baseline: bl.rollbackShare,
			Tripped: all >= minXacts && rb >= MinRollbacks && v > bound,
			Reason:  fmt.Sprintf("%d of %d transactions rolled back in %s", rb, all, dt.Round(10*time.Millisecond))})
	}
	if o.Deadlocks > 0 {
		n := c.deadlocks - prev.deadlocks
		v := rate(float64(n), dt)
		bound := bl.deadlockRate + o.Deadlocks
		out = append(out, Signal{Name: SigDeadlocks, Value: v, Bound: bound, Baseline: bl.deadlockRate, Unit: "/s",
			Tripped: v > bound, Reason: fmt.Sprintf("%d deadlocks in %s", n, dt.Round(10*time.Millisecond))})
	}
	if o.LatencyRatio > 0 {
		sg := Signal{Name: SigLatency, Unit: "ms"}
		switch {
		case !c.stmtOK:
			sg.Unavailable, sg.Reason = true, c.stmtWhy
		case !bl.meanOK:
			sg.Unavailable, sg.Reason = true, "no baseline: no statement on "+s.AppTable+" had run before the step"
		default:
			calls := c.stmtCalls - prev.stmtCalls
			sg.Baseline, sg.Bound = bl.meanMs, bl.meanMs*o.LatencyRatio
			if calls > 0 {
				sg.Value = (c.stmtTime - prev.stmtTime) / calls
			}
			sg.Tripped = calls >= minCalls && sg.Value > sg.Bound
			sg.Reason = fmt.Sprintf("mean execution time of %.0f calls on %s in %s (bound: %g times the baseline)",
				calls, s.AppTable, dt.Round(10*time.Millisecond), o.LatencyRatio)
		}
		out = append(out, sg)
	}
	return out
}

// instant are the signals read as they are now.
func (s *Sampler) instant(ctx context.Context, out []Signal) ([]Signal, error) {
	o := s.Opts
	if o.LockWaits > 0 || o.LockWaitTime.Duration > 0 {
		var n int
		var longest float64
		err := s.Q.QueryRow(ctx, LockWaitSQL, s.Relations).Scan(&n, &longest)
		if db.SQLState(err) == "42703" { // undefined_column: waitstart is PostgreSQL 14's
			err = s.Q.QueryRow(ctx, lockWaitSQL13, s.Relations).Scan(&n, &longest)
		}
		if err != nil {
			return nil, fmt.Errorf("guard: read lock waits: %w", err)
		}
		why := fmt.Sprintf("%d sessions wait for a lock on %s, the longest for %.1fs", n, strings.Join(s.Relations, ", "), longest)
		if o.LockWaits > 0 {
			out = append(out, Signal{Name: SigLockWaits, Value: float64(n), Bound: float64(o.LockWaits) - 1,
				Tripped: n >= o.LockWaits, Reason: why})
		}
		if o.LockWaitTime.Duration > 0 {
			out = append(out, Signal{Name: SigLockWaitTime, Value: longest, Bound: o.LockWaitTime.Seconds(), Unit: "s",
				Tripped: longest > o.LockWaitTime.Seconds(), Reason: why})
		}
	}
	if o.ReplicaLag.Duration > 0 && s.ReplicaLag != nil {
		lag, name, err := s.ReplicaLag(ctx, s.Q)
		if err != nil {
			return nil, fmt.Errorf("guard: %w", err)
		}
		why := "no replica behind"
		if name != "" {
			why = "replica " + name + " replay lag"
		}
		out = append(out, Signal{Name: SigReplicaLag, Value: lag.Seconds(), Bound: o.ReplicaLag.Seconds(), Unit: "s",
			Tripped: lag > o.ReplicaLag.Duration, Reason: why})
	}
	if o.ProbeSQL != "" {
		out = append(out, s.probeSQL(ctx))
	}
	if o.ProbeCmd != "" {
		out = append(out, s.probeCmd(ctx))
	}
	return out, nil
}

// probeSQL runs the SQL probe: an error, a timeout, or a first column
// that is boolean and not true trips it. Value 1 = failing.
func (s *Sampler) probeSQL(ctx context.Context) Signal {
	sg := Signal{Name: SigProbeSQL, Reason: "ok"}
	pctx, cancel := context.WithTimeout(ctx, s.Opts.ProbeTimeout.Duration)
	defer cancel()
	fail := func(why string) Signal {
		sg.Value, sg.Tripped, sg.Reason = 1, true, why
		return sg
	}
	rows, err := s.Q.Query(pctx, s.Opts.ProbeSQL)
	if err != nil {
		return fail(probeErr(pctx, err, s.Opts.ProbeTimeout.Duration))
	}
	var first any
	got := false
	if rows.Next() {
		if vals, err := rows.Values(); err == nil && len(vals) > 0 {
			first, got = vals[0], true
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fail(probeErr(pctx, err, s.Opts.ProbeTimeout.Duration))
	}
	if b, ok := first.(bool); got && ok && !b {
		return fail("the probe returned false")
	}
	if got && first == nil {
		return fail("the probe returned NULL")
	}
	return sg
}

func probeErr(ctx context.Context, err error, timeout time.Duration) string {
	if ctx.Err() != nil {
		return fmt.Sprintf("the probe did not answer within %s", timeout)
	}
	if st := db.SQLState(err); st != "" {
		return fmt.Sprintf("the probe failed (SQLSTATE %s): %s", st, firstLine(err.Error()))
	}
	return "the probe failed: " + firstLine(err.Error())
}

// probeCmd runs the command probe through /bin/sh -c; Value is its exit
// status (-1: it could not run or timed out), the reason its stderr's
// last line.
func (s *Sampler) probeCmd(ctx context.Context) Signal {
	sg := Signal{Name: SigProbeCmd, Reason: "exit status 0"}
	timeout := s.Opts.ProbeTimeout.Duration
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(pctx, "/bin/sh", "-c", s.Opts.ProbeCmd)
	cmd.WaitDelay = time.Second // a child keeping stderr open must not hang the probe
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err == nil {
		return sg
	}
	last := lastLine(stderr.String())
	sg.Tripped, sg.Value = true, -1
	var exit *exec.ExitError
	switch {
	case pctx.Err() != nil:
		sg.Reason = fmt.Sprintf("%q did not finish within %s", s.Opts.ProbeCmd, timeout)
	case errors.As(err, &exit):
		sg.Value = float64(exit.ExitCode())
		sg.Reason = fmt.Sprintf("%q exited %d", s.Opts.ProbeCmd, exit.ExitCode())
	default:
		sg.Reason = fmt.Sprintf("%q could not run: %v", s.Opts.ProbeCmd, err)
	}
	if last != "" {
		sg.Reason += ": " + last
	}
	return sg
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
