package testkit

// A randomized workload on a vertical split of users(id, email, name, bio,
// avatar_url, prefs, last_seen_at, legacy_col) into users(id, email, name),
// user_profiles(user_id, bio, avatar_url, prefs) and user_activity(user_id,
// last_seen_at) where last_seen_at IS NOT NULL (issue 15), with a ledger
// table (id, name) the writers keep in their own transactions.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
)

// SplitWriters run a randomized workload on the vertical users split:
// writers on blue (through the app name) from the start, racing the
// backfill; from synced on, writers on every green too. The hot keys
// (1..hot) are shared by all of them. Each transaction also writes the
// ledger (id → the name it set, or the row's absence) in the same
// transaction, after its data write: the ledger row's lock follows the
// blue row's, so its final state is what blue and green users must say.
type SplitWriters struct {
	Pool    *pgxpool.Pool
	Green   string // the green version schema, quoted
	Hot     int64
	Greens  atomic.Bool // writers may write the greens (synced)
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	errs    []error
	Commits atomic.Int64
	Aborts  atomic.Int64
	Kinds   sync.Map // op name → *atomic.Int64 commits
}

// retryable are the errors of contention and of a write that the data
// refuses (a key taken, a parent gone): the transaction rolls back, ledger
// included, and nothing is checked about it.
func Retryable(err error) bool {
	switch db.SQLState(err) {
	case db.DeadlockDetected, db.UniqueViolation, "23503", "40001":
		return true
	}
	return false
}

func (w *SplitWriters) Start(n int, seed uint64) {
	w.stop = make(chan struct{})
	for i := range n {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			for {
				select {
				case <-w.stop:
					return
				default:
				}
				op, err := w.one(rng)
				switch {
				case err == nil:
					w.Commits.Add(1)
					c, _ := w.Kinds.LoadOrStore(op, new(atomic.Int64))
					c.(*atomic.Int64).Add(1)
				case Retryable(err):
					w.Aborts.Add(1)
				default:
					w.mu.Lock()
					w.errs = append(w.errs, fmt.Errorf("%s: %w", op, err))
					w.mu.Unlock()
					return
				}
			}
		}()
	}
}

func (w *SplitWriters) Halt(t testing.TB) {
	t.Helper()
	close(w.stop)
	w.wg.Wait()
	for _, err := range w.errs {
		t.Error(err)
	}
}

// one runs one random transaction; op names it.
func (w *SplitWriters) one(rng *rand.Rand) (op string, err error) {
	ctx := context.Background()
	k := 1 + rng.Int64N(w.Hot)
	k2 := 1 + rng.Int64N(w.Hot)
	name := fmt.Sprintf("t%d", rng.Int64())
	var stmts []string
	var args [][]any
	var ledger []bool
	add := func(s string, a ...any) {
		stmts = append(stmts, s)
		args = append(args, a)
		ledger = append(ledger, false)
	}
	// The ledger follows the data write, and only when the first data
	// statement wrote a row: then this transaction holds that row (blue's,
	// directly or through the reverse trigger) until it commits, and so
	// does every other transaction that changes the ledger row of that key.
	// A ledger statement run after a data statement that matched nothing
	// would see, in its own later snapshot, a row another transaction just
	// moved onto the key, and record a write that never happened.
	addLedger := func(s string, a ...any) { add(s, a...); ledger[len(ledger)-1] = true }
	ledgerSet := func(id int64) { addLedger(`UPDATE ledger SET name = $2 WHERE id = $1`, id, name) }
	ledgerNew := func(id int64) { addLedger(`INSERT INTO ledger VALUES ($1, $2)`, id, name) }
	n := 7
	if w.Greens.Load() {
		n = 14
	}
	switch rng.IntN(n) {
	case 0, 1:
		op = "blue update"
		seen := []any{nil, time.Now().Add(-time.Duration(rng.IntN(1000)) * time.Minute)}[rng.IntN(2)]
		add(`UPDATE users SET name = $2, bio = $3, last_seen_at = $4, prefs = pg_catalog.jsonb_build_object('r', $5::int) WHERE id = $1`,
			k, name, Note(rng), seen, rng.IntN(100))
		ledgerSet(k)
	case 2:
		op = "blue insert"
		add(`INSERT INTO users (id, email, name, bio, last_seen_at) VALUES ($1, 'w@x', $2, 'new', CASE WHEN $3 THEN now() END)`, k, name, rng.IntN(2) == 0)
		ledgerNew(k)
	case 3:
		op = "blue delete"
		add(`DELETE FROM users WHERE id = $1`, k)
		addLedger(`DELETE FROM ledger WHERE id = $1`, k)
	case 4:
		op = "blue key update"
		add(`UPDATE users SET id = $2 WHERE id = $1`, k, k2)
		addLedger(`UPDATE ledger SET id = $2 WHERE id = $1`, k, k2)
	case 5:
		op = "blue legacy column"
		add(`UPDATE users SET legacy_col = $2, name = $2 WHERE id = $1`, k, name)
		ledgerSet(k)
	case 6:
		op = "blue two rows"
		// The ledger takes the rows the update returned, in the same way.
		add(`UPDATE users SET name = $3 WHERE id IN ($1, $2) RETURNING id`, k, k2, name)
		addLedger(`UPDATE ledger SET name = $2 WHERE id = ANY($1::bigint[])`, nil, name)
	case 7, 8:
		op = "green users update"
		add(`UPDATE `+w.Green+`.users SET name = $2, email = $2 || '@g' WHERE id = $1`, k, name)
		ledgerSet(k)
	case 9:
		op = "green profile update"
		add(`UPDATE `+w.Green+`.user_profiles SET bio = $2, prefs = '[1]' WHERE user_id = $1`, k, name)
	case 10:
		op = "green activity upsert or delete"
		if rng.IntN(2) == 0 {
			add(`INSERT INTO `+w.Green+`.user_activity VALUES ($1, now()) ON CONFLICT (user_id) DO UPDATE SET last_seen_at = EXCLUDED.last_seen_at - interval '1 day'`, k)
		} else {
			add(`DELETE FROM `+w.Green+`.user_activity WHERE user_id = $1`, k)
		}
	case 11:
		op = "green insert"
		add(`INSERT INTO `+w.Green+`.users VALUES ($1, 'g@x', $2)`, k, name)
		add(`INSERT INTO `+w.Green+`.user_profiles VALUES ($1, 'gbio', NULL, '{}')`, k)
		ledgerNew(k)
	case 12:
		op = "green delete"
		add(`DELETE FROM `+w.Green+`.users WHERE id = $1`, k)
		addLedger(`DELETE FROM ledger WHERE id = $1`, k)
	case 13:
		op = "green key update"
		add(`UPDATE `+w.Green+`.users SET id = $2 WHERE id = $1`, k, k2)
		addLedger(`UPDATE ledger SET id = $2 WHERE id = $1`, k, k2)
	}
	err = pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		wrote := int64(-1) // rows the first data statement wrote
		var ids []int64    // and the keys it returned, if it returns any
		for i, s := range stmts {
			if ledger[i] {
				if wrote == 0 {
					return nil
				}
				if args[i][0] == nil {
					args[i][0] = ids
				}
			} else if wrote < 0 {
				rows, err := tx.Query(ctx, s, args[i]...)
				if err != nil {
					return err
				}
				got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (int64, error) {
					var id int64
					return id, r.Scan(&id)
				})
				if err != nil {
					return err
				}
				ids, wrote = got, rows.CommandTag().RowsAffected()
				continue
			}
			if _, err := tx.Exec(ctx, s, args[i]...); err != nil {
				return err
			}
		}
		return nil
	})
	return op, err
}

// SplitUsersChecks are the oracle of the users split of migration m, by
// hand: each green against blue mapped forward, and blue against the old
// shape rebuilt from the greens (pairs for Diff).
func SplitUsersChecks(m string) [][2]string {
	b, g := db.Ident("gs_"+m+"_blue"), db.Ident("gs_"+m+"_green")
	return [][2]string{
		{`SELECT id, email, name FROM ` + b + `.users`, `SELECT id, email, name FROM ` + g + `.users`},
		{`SELECT id, bio, avatar_url, prefs::text FROM ` + b + `.users`, `SELECT user_id, bio, avatar_url, prefs::text FROM ` + g + `.user_profiles`},
		{`SELECT id, last_seen_at FROM ` + b + `.users WHERE last_seen_at IS NOT NULL`, `SELECT user_id, last_seen_at FROM ` + g + `.user_activity`},
		{`SELECT id, email, name, bio, avatar_url, prefs::text, last_seen_at FROM ` + b + `.users`,
			`SELECT u.id, u.email, u.name, p.bio, p.avatar_url, p.prefs::text, a.last_seen_at FROM ` + g + `.users u
			   LEFT JOIN ` + g + `.user_profiles p ON p.user_id = u.id LEFT JOIN ` + g + `.user_activity a ON a.user_id = u.id`},
	}
}

// CheckSplitUsers runs SplitUsersChecks and the ledger against blue and
// green users; every difference is a test error.
func CheckSplitUsers(t testing.TB, q db.Querier, m, when string) {
	t.Helper()
	checks := SplitUsersChecks(m)
	checks = append(checks,
		[2]string{`SELECT id, name FROM ledger`, `SELECT id, name FROM ` + db.Ident("gs_"+m+"_blue") + `.users`},
		[2]string{`SELECT id, name FROM ledger`, `SELECT id, name FROM ` + db.Ident("gs_"+m+"_green") + `.users`})
	failed := false
	for _, c := range checks {
		if d := Diff(t, q, c[0], c[1]); d != 0 {
			failed = true
			t.Errorf("%s: %d rows differ between\n  %s\nand\n  %s", when, d, c[0], c[1])
		}
	}
	if !failed {
		return
	}
	// Name the rows, for the one who debugs it.
	rows, err := q.Query(context.Background(), `SELECT l.id, l.name, b.id, b.name, g.id, g.name, p.user_id, a.user_id
		FROM ledger l FULL JOIN `+db.Ident("gs_"+m+"_blue")+`.users b ON b.id = l.id
		FULL JOIN `+db.Ident("gs_"+m+"_green")+`.users g ON g.id = coalesce(l.id, b.id)
		LEFT JOIN `+db.Ident("gs_"+m+"_green")+`.user_profiles p ON p.user_id = coalesce(l.id, b.id, g.id)
		LEFT JOIN `+db.Ident("gs_"+m+"_green")+`.user_activity a ON a.user_id = coalesce(l.id, b.id, g.id)
		WHERE l.name IS DISTINCT FROM b.name OR l.id IS DISTINCT FROM b.id OR b.id IS DISTINCT FROM g.id OR b.name IS DISTINCT FROM g.name`)
	if err != nil {
		t.Log(err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		v, _ := rows.Values()
		t.Logf("ledger id, name / blue id, name / green users id, name / profile / activity: %v", v)
	}
}

// LogKinds reports the commits per kind of write and fails the test for a
// kind that never committed, or for fewer than min commits in all.
func (w *SplitWriters) LogKinds(t testing.TB, min int64) {
	t.Helper()
	w.Kinds.Range(func(k, v any) bool {
		n := v.(*atomic.Int64).Load()
		t.Logf("%s: %d commits", k, n)
		if n == 0 {
			t.Errorf("no %s committed: the workload did not exercise it", k)
		}
		return true
	})
	t.Logf("%d commits, %d rolled back on contention", w.Commits.Load(), w.Aborts.Load())
	if w.Commits.Load() < min {
		t.Errorf("only %d transactions committed", w.Commits.Load())
	}
}
