package cutover

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
)

// planned is what runPlanned needs from a plan.
type planned interface {
	lockList() []LockTarget
	statements() []string
	stamp() ([]uint32, string) // fingerprinted relations and the value planned from
}

func (p *SwapPlan) lockList() []LockTarget        { return p.Locks }
func (p *SwapPlan) statements() []string          { return p.SQL }
func (p *SwapPlan) stamp() ([]uint32, string)     { return p.fpOIDs, p.fp }
func (p *TeardownPlan) lockList() []LockTarget    { return p.Locks }
func (p *TeardownPlan) statements() []string      { return p.SQL }
func (p *TeardownPlan) stamp() ([]uint32, string) { return p.fpOIDs, p.fp }
func (p *FinalizePlan) lockList() []LockTarget    { return p.Locks }
func (p *FinalizePlan) statements() []string      { return p.SQL }
func (p *FinalizePlan) stamp() ([]uint32, string) { return p.fpOIDs, p.fp }

// runStats are the timings of runPlanned.
type runStats struct {
	Attempts int
	LockWait time.Duration // first LOCK issued → first lock granted, last attempt
	LockHold time.Duration // first lock granted → commit
	Duration time.Duration
	Blockers []shadow.Blocker // of the last failed attempt
}

// runPlanned is the shape of every command here: one transaction through
// shadow.RunWithLockRetry that plans from the catalog, takes the plan's
// locks in order (acquire), checks the catalog did not change meanwhile,
// runs check (may be nil) and the plan's statements, then commit (may be
// nil: the state change), and commits.
func runPlanned[P planned](ctx context.Context, pool *pgxpool.Pool, step string, opt SwapOptions,
	plan func(tx pgx.Tx) (P, error), check, commit func(tx pgx.Tx, p P) error) (P, runStats, error) {
	var (
		st       runStats
		last     P
		first    time.Time
		blockers []shadow.Blocker
	)
	start := time.Now()
	onRetry := func(attempt int, b []shadow.Blocker, wait time.Duration) {
		if len(b) == 0 {
			b = blockers
		}
		st.Blockers = b
		if opt.OnRetry != nil {
			opt.OnRetry(attempt, b, wait)
		}
	}
	err := shadow.RunWithLockRetry(ctx, pool, step, opt.Lock, onRetry, func(tx pgx.Tx) error {
		st.Attempts++
		blockers = nil
		p, err := plan(tx)
		if err != nil {
			return err
		}
		last = p
		t0 := time.Now()
		if first, err = acquire(ctx, tx, pool, p.lockList(), opt.Lock.Timeout, &blockers); err != nil {
			return err
		}
		if len(p.lockList()) == 0 {
			first = time.Now()
		}
		st.LockWait = first.Sub(t0)
		// Everything under the locks is one round trip: a DO block that
		// checks the catalog did not change since the plan, then runs the
		// statements (an error names the statement that failed).
		oids, want := p.stamp()
		if check != nil {
			if err := check(tx, p); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, doBlock(oids, want, p.statements())); err != nil {
			return fmt.Errorf("%s: %w", step, explain(err))
		}
		if commit != nil {
			return commit(tx, p)
		}
		return nil
	})
	st.Duration = time.Since(start)
	if err != nil {
		if len(st.Blockers) == 0 {
			st.Blockers = blockers
		}
		return last, st, withBlockers(err, st.Blockers)
	}
	st.LockHold = time.Since(first)
	return last, st, nil
}

// doBlock is one DO statement that raises lock_not_available (retried) when
// the fingerprint of oids is not want any more, then EXECUTEs each statement.
func doBlock(oids []uint32, want string, stmts []string) string {
	ids := make([]string, len(oids))
	for i, o := range oids {
		ids[i] = fmt.Sprint(o)
	}
	fp := strings.ReplaceAll(fingerprintSQL, "$1", db.Literal("{"+strings.Join(ids, ",")+"}")+"::oid[]")
	var b strings.Builder
	b.WriteString("BEGIN\n\tIF (" + fp + ") IS DISTINCT FROM " + db.Literal(want) + " THEN\n" +
		"\t\tRAISE EXCEPTION 'the catalog changed while the locks were taken; planning again' USING ERRCODE = 'lock_not_available';\n\tEND IF;\n")
	for _, s := range stmts {
		b.WriteString("\tEXECUTE " + db.Literal(s) + ";\n")
	}
	b.WriteString("END")
	body := b.String()
	tag := "$gsdo$"
	for i := 0; strings.Contains(body, tag); i++ {
		tag = fmt.Sprintf("$gsdo%d$", i)
	}
	return "DO " + tag + body + tag
}

// explain adds to a PostgreSQL error the statement it came from (a DO
// block's EXECUTE reports it in the error's context).
func explain(err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Where == "" {
		return err
	}
	where := pe.Where
	if i := strings.Index(where, "\nPL/pgSQL function inline_code_block"); i >= 0 {
		where = where[:i]
	}
	if where == "" || strings.HasPrefix(where, "PL/pgSQL function inline_code_block") {
		return err
	}
	return fmt.Errorf("%w (in %s)", err, oneLine(where))
}
