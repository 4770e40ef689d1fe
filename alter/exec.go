package alter

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/sqllex"
	migstate "github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
)

// EventInPlace is the event-log step of one in-place statement that ran
// (outcome "ok", in the statement's own transaction) or failed; a resumed
// run skips the statements recorded "ok" under the same migration.
const EventInPlace = "alter-in-place"

// EventDropInvalid records an INVALID index (a CREATE INDEX CONCURRENTLY
// that did not finish) dropped before the build is tried again.
const EventDropInvalid = "alter-drop-invalid"

// ExecOptions says how Execute runs a plan's in-place steps.
type ExecOptions struct {
	// Migration is the name the statements are recorded under in
	// greenswap.events (the state schema must exist: state.Ensure).
	Migration string
	// Lock bounds every attempt at a lock-taking statement (trap 7: a DDL
	// queued for ACCESS EXCLUSIVE blocks every later query on the table).
	Lock shadow.LockOptions
	// OnRetry is told each lock attempt that timed out (may be nil).
	OnRetry func(attempt int, blockers []shadow.Blocker, wait time.Duration)
	// OnStatement is told each statement run or skipped (may be nil).
	OnStatement func(StatementRun)
}

// StatementRun is what Execute did with one statement of an in-place step.
type StatementRun struct {
	Step int    // position in Plan.Steps
	SQL  string // as the plan has it
	// Skipped: an earlier run did it (recorded, or for an index build:
	// the valid index is there).
	Skipped bool
	// DroppedInvalid: an INVALID leftover of an earlier build was dropped
	// and the index built again.
	DroppedInvalid bool
	// Concurrent: the statement ran outside a transaction (CREATE INDEX
	// CONCURRENTLY), without lock_timeout.
	Concurrent bool
	Took       time.Duration
}

// Execute runs the in-place steps of plan (every step but the BlueGreen
// ones), in order, one statement at a time: each in its own transaction
// under opt.Lock's lock_timeout, rolled back and retried with backoff when
// the lock is not granted (after the last attempt: *shadow.LockTimeoutError,
// exit 5, with that statement and every later one not run); a CREATE INDEX
// CONCURRENTLY on its own session, outside a transaction. Each statement is
// recorded in the event log when it commits, in its own transaction, so a
// run started again (after a lock timeout, a crash, an interruption) skips
// what is done and goes on from the first statement that is not.
func Execute(ctx context.Context, pool *pgxpool.Pool, connConfig *pgx.ConnConfig, plan *Plan, opt ExecOptions) ([]StatementRun, error) {
	if opt.Migration == "" {
		return nil, errors.New("alter: execute: no migration name to record the statements under")
	}
	done, err := doneStatements(ctx, pool, opt.Migration)
	if err != nil {
		return nil, err
	}
	var out []StatementRun
	for i, st := range plan.Steps {
		if st.Strategy == BlueGreen {
			continue
		}
		for j, sql := range st.SQL {
			run := StatementRun{Step: i, SQL: sql}
			key := statementKey(i, j, sql)
			index, concurrent, err := concurrentIndex(sql)
			if err != nil {
				return out, err
			}
			run.Concurrent = concurrent
			t0 := time.Now()
			switch {
			case done[key]:
				run.Skipped = true
			case concurrent:
				run.Skipped, run.DroppedInvalid, err = buildConcurrently(ctx, pool, connConfig, plan, opt, i, j, sql, index)
			default:
				err = runLocked(ctx, pool, opt, st, i, j, sql)
			}
			run.Took = time.Since(t0)
			if err != nil {
				return out, err
			}
			out = append(out, run)
			if opt.OnStatement != nil {
				opt.OnStatement(run)
			}
		}
	}
	return out, nil
}

// statementKey identifies a statement of a plan in the event log: its
// position and its text, so a different plan under the same migration
// name does not pass for done.
func statementKey(step, stmt int, sql string) string {
	return fmt.Sprintf("%d/%d/%s", step, stmt, sql)
}

func doneStatements(ctx context.Context, q db.Querier, migration string) (map[string]bool, error) {
	rows, err := q.Query(ctx, `SELECT (detail->>'step')::int, (detail->>'statement')::int, sql FROM greenswap.events
 WHERE migration = $1 AND step = $2 AND outcome = 'ok' AND detail ? 'step'`, migration, EventInPlace)
	if err != nil {
		return nil, fmt.Errorf("alter: read the statements already run for %s: %w", migration, err)
	}
	out := map[string]bool{}
	var step, stmt int
	var sql string
	_, err = pgx.ForEachRow(rows, []any{&step, &stmt, &sql}, func() error {
		out[statementKey(step, stmt, sql)] = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("alter: read the statements already run for %s: %w", migration, err)
	}
	return out, nil
}

func eventDetail(st Step, step, stmt int, extra map[string]any) map[string]any {
	d := map[string]any{"step": step, "statement": stmt, "subcommand": st.Sub.Text, "strategy": string(st.Strategy)}
	for k, v := range extra {
		d[k] = v
	}
	return d
}

// runLocked runs one statement in its own transaction under lock_timeout,
// retried, and records it in the same transaction.
func runLocked(ctx context.Context, pool *pgxpool.Pool, opt ExecOptions, st Step, i, j int, sql string) error {
	attempts := 0
	var took time.Duration
	label := fmt.Sprintf("alter %q, statement %d", oneLine(st.Sub.Text), j+1)
	err := shadow.RunWithLockRetry(ctx, pool, label, opt.Lock, opt.OnRetry, func(tx pgx.Tx) error {
		attempts++
		t0 := time.Now()
		if _, err := tx.Exec(ctx, sql); err != nil {
			return statementError(sql, err)
		}
		took = time.Since(t0)
		return migstate.Record(ctx, tx, opt.Migration, EventInPlace, "ok", took, sql, eventDetail(st, i, j, map[string]any{"attempts": attempts}))
	})
	if err != nil {
		outcome := "error"
		var lt *shadow.LockTimeoutError
		if errors.As(err, &lt) {
			outcome = "lock-timeout"
		}
		if ctx.Err() != nil {
			outcome = "interrupted"
		}
		// The failure is recorded apart: its transaction was rolled back.
		_ = migstate.Record(context.WithoutCancel(ctx), pool, opt.Migration, EventInPlace, outcome, 0, sql,
			eventDetail(st, i, j, map[string]any{"attempts": attempts, "error": err.Error()}))
	}
	return err
}

// statementError names the statement that failed and, when existing rows
// violate what it checks, what is left and how to go on.
func statementError(sql string, err error) error {
	switch db.SQLState(err) {
	case "23514", "23503", "23502", "23505": // check, foreign key, not null, unique violation
		return exitcode.With(exitcode.Failed, fmt.Errorf(
			"alter: %s: existing rows violate it: %w; what ran before stays (a constraint added NOT VALID checks new rows only): fix those rows and run again to resume", oneLine(sql), err))
	}
	return fmt.Errorf("alter: %s: %w", oneLine(sql), err)
}

// concurrentIndex reports whether sql is CREATE [UNIQUE] INDEX
// CONCURRENTLY, and the index it names.
func concurrentIndex(sql string) (name string, ok bool, err error) {
	toks, lexErr := sqllex.Tokens(sql)
	if lexErr != "" {
		return "", false, fmt.Errorf("alter: statement %q: %s", oneLine(sql), lexErr)
	}
	i := 0
	if i >= len(toks) || !toks[i].Is("CREATE") {
		return "", false, nil
	}
	i++
	if i < len(toks) && toks[i].Is("UNIQUE") {
		i++
	}
	if i+1 >= len(toks) || !toks[i].Is("INDEX") || !toks[i+1].Is("CONCURRENTLY") {
		return "", false, nil
	}
	i += 2
	if i+2 < len(toks) && toks[i].Is("IF") && toks[i+1].Is("NOT") && toks[i+2].Is("EXISTS") {
		i += 3
	}
	if i < len(toks) {
		if n, isIdent := toks[i].Ident(); isIdent && !toks[i].Is("ON") {
			return n, true, nil
		}
	}
	return "", false, fmt.Errorf("alter: %q names no index: a build that is cut off could not be found again", oneLine(sql))
}

// indexState is what the catalog says of an index of the plan's table.
type indexState struct {
	exists, valid bool
}

func lookupIndex(ctx context.Context, q db.Querier, plan *Plan, index string) (indexState, error) {
	var s indexState
	err := q.QueryRow(ctx, `SELECT true, i.indisvalid FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
 WHERE c.relname = $1 AND c.relnamespace = (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass($2))
   AND i.indrelid = pg_catalog.to_regclass($2)`, index, db.Ident(plan.Table.Schema, plan.Table.Name)).Scan(&s.exists, &s.valid)
	if errors.Is(err, pgx.ErrNoRows) {
		return indexState{}, nil
	}
	if err != nil {
		return s, fmt.Errorf("alter: look up index %s: %w", index, err)
	}
	return s, nil
}

// buildConcurrently runs a CREATE INDEX CONCURRENTLY on a session of its
// own. A valid index of that name on the table is an earlier run's build
// that was not recorded (cut off between the build and the record): it is
// recorded and skipped. An INVALID one is what a cut-off build leaves: it
// is dropped (DROP INDEX CONCURRENTLY) and built again.
//
// The session runs without lock_timeout: the build takes SHARE UPDATE
// EXCLUSIVE, which no reader or writer waits for, and then waits for older
// transactions through lock waits that a lock_timeout would turn into an
// INVALID index.
func buildConcurrently(ctx context.Context, pool *pgxpool.Pool, connConfig *pgx.ConnConfig, plan *Plan, opt ExecOptions, i, j int, sql, index string) (skipped, dropped bool, err error) {
	st := plan.Steps[i]
	have, err := lookupIndex(ctx, pool, plan, index)
	if err != nil {
		return false, false, err
	}
	record := func(step, outcome, sql string, took time.Duration, extra map[string]any) error {
		return migstate.Record(context.WithoutCancel(ctx), pool, opt.Migration, step, outcome, took, sql, eventDetail(st, i, j, extra))
	}
	if have.exists && have.valid {
		return true, false, record(EventInPlace, "ok", sql, 0, map[string]any{"found_built": index})
	}
	cfg := connConfig.Copy()
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["application_name"] = "greenswap:" + opt.Migration + ":index"
	cfg.RuntimeParams["lock_timeout"] = "0"
	cfg.RuntimeParams["statement_timeout"] = "0"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return false, false, fmt.Errorf("alter: connect to build index %s: %w", index, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if have.exists {
		drop := "DROP INDEX CONCURRENTLY IF EXISTS " + db.Ident(plan.Table.Schema, index)
		t0 := time.Now()
		if _, err := conn.Exec(ctx, drop); err != nil {
			return false, false, fmt.Errorf("alter: drop the INVALID index %s an earlier build left: %w", index, err)
		}
		if err := record(EventDropInvalid, "ok", drop, time.Since(t0), nil); err != nil {
			return false, true, err
		}
		dropped = true
	}
	t0 := time.Now()
	if _, err := conn.Exec(ctx, sql); err != nil {
		_ = record(EventInPlace, outcomeOfBuild(ctx), sql, time.Since(t0), map[string]any{"error": err.Error()})
		return false, dropped, fmt.Errorf("alter: %s: %w (an INVALID index may be left: the next run drops and rebuilds it)", oneLine(sql), err)
	}
	return false, dropped, record(EventInPlace, "ok", sql, time.Since(t0), map[string]any{"index": index, "rebuilt": dropped})
}

func outcomeOfBuild(ctx context.Context) string {
	if ctx.Err() != nil {
		return "interrupted"
	}
	return "error"
}

// Recheck rehearses again, against blue as it is now, the in-place steps
// of a recorded plan that have not started (no statement of theirs
// recorded done under migration): between an interrupted run and its
// resume the app's deploy may have changed the table, and a step decided
// then (metadata only, this constraint name, this column) may no longer
// hold. A step that PostgreSQL now refuses, or that now decides another
// strategy or other SQL, is an error naming it; nothing is run. q must be
// a transaction the caller rolls back.
func Recheck(ctx context.Context, q db.Querier, blue *shadow.Table, plan *Plan, migration string) error {
	done, err := doneStatements(ctx, q, migration)
	if err != nil {
		return err
	}
	var idx []int
	st := Statement{Table: plan.Table}
	for i, step := range plan.Steps {
		if step.Strategy == BlueGreen {
			continue
		}
		started := false
		for j, sql := range step.SQL {
			started = started || done[statementKey(i, j, sql)]
		}
		if started {
			continue // mid-way: its own statements resume it
		}
		idx = append(idx, i)
		st.Subs = append(st.Subs, step.Sub)
	}
	if len(idx) == 0 {
		return nil
	}
	stale := func(sub Subcommand, why string) error {
		return exitcode.Errorf(exitcode.BadInput,
			"alter: resume of %s: %q no longer holds on %s as it is now (%s): the table changed since the plan was recorded; nothing was run: check the table, then run the remaining change under another --name",
			migration, oneLine(sub.Text), blue.Name, why)
	}
	now, err := Classify(ctx, q, blue, []Statement{st})
	if err != nil {
		var se *SubError
		if errors.As(err, &se) {
			return stale(se.Sub, se.Error())
		}
		var pe *ParseError
		if errors.As(err, &pe) {
			return stale(st.Subs[0], pe.Error())
		}
		return err
	}
	for k, i := range idx {
		was, is := plan.Steps[i], now.Steps[k]
		switch {
		case is.Strategy != was.Strategy:
			return stale(was.Sub, fmt.Sprintf("it was %s, it is now %s: %s", was.Strategy, is.Strategy, is.Why))
		case !slices.Equal(is.SQL, was.SQL):
			return stale(was.Sub, fmt.Sprintf("its SQL is now %q", strings.Join(is.SQL, "; ")))
		}
	}
	return nil
}
