package testkit

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	gosync "sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
)

// Mix is the choice of operations a Workload makes, each drawn from one
// random number in [0, 100) per operation.
type Mix int

const (
	// MixApp is an application through the app name (the runner's tests):
	// inserts 30, updates 25, amount+1 10, deletes 12, key flips 8, tenant
	// moves 5 (Composite only), 20-row range updates 3, whole rows out by
	// prepared statements (SELECT *, INSERT … RETURNING *) 3, delete+insert
	// transactions 4.
	MixApp Mix = iota
	// MixStream is what a logical stream finds hardest (the stream's
	// tests): inserts 30, updates 22, amount+1 (a TOASTed note left
	// unchanged: 'u' in the stream) 10, deletes 12, key flips 10, 40-row
	// range updates 6, delete+insert transactions 5, and transactions of 30
	// inserts and a range update 5.
	MixStream
)

// WorkloadOptions say what a Workload writes and how.
type WorkloadOptions struct {
	Table   string // the name written, unqualified (resolved by the DSN's search_path), e.g. "orders"
	Workers int    // goroutines, one connection each
	Seed    uint64 // worker i draws from PCG(Seed, i)
	Mix     Mix
	// Composite: the table's key is (tenant, id), so tenant moves are key updates too.
	Composite bool
	// NoNulls: never write a NULL email (for a workload writing green, where email is NOT NULL).
	NoNulls bool
	// StaleOK: a workload writing green before a logical-mode cutover, where
	// greenswap refuses a write onto a row the stream has not brought to
	// green yet (40001, or 23505 for a key blue has): the documented answer,
	// counted in Refused, not an error.
	StaleOK bool
	// Pause between two operations of one worker (0: as fast as possible).
	Pause time.Duration
	// Parity, when 1 or 2, keeps the workload to rows whose |id| is odd (1)
	// or even (2), but for the rows it inserts: two workloads writing blue
	// and green at once then never write the same row on both sides within
	// the stream's lag, which logical mode does not reconcile.
	Parity int64
}

// Workload writes the orders fixture from several goroutines through a pgx
// pool (extended protocol with its statement cache, so prepared
// statements): inserts, updates, deletes, key updates, multi-row updates,
// NULLs and TOAST-sized values. Errors other than deadlocks between its own
// workers (and, with StaleOK, the stream's refusals) are collected.
type Workload struct {
	Pool *pgxpool.Pool
	WorkloadOptions
	Ops       atomic.Int64 // operations that succeeded
	Deadlocks atomic.Int64 // deadlocks between its own multi-row writers (not errors)
	Refused   atomic.Int64 // with StaleOK: writes refused as documented

	mu     gosync.Mutex
	errs   []error
	cancel context.CancelFunc
	wg     gosync.WaitGroup
}

// StartWorkload connects to dsn (application_name test-workload, one
// connection per worker) and starts the workers; Stop, or the end of the
// test, ends them.
func StartWorkload(t testing.TB, dsn string, o WorkloadOptions) *Workload {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = int32(o.Workers)
	cfg.ConnConfig.RuntimeParams["application_name"] = "test-workload"
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &Workload{Pool: pool, WorkloadOptions: o, cancel: cancel}
	for i := range o.Workers {
		w.wg.Add(1)
		go w.run(ctx, rand.New(rand.NewPCG(o.Seed, uint64(i))))
	}
	t.Cleanup(func() { w.Stop() })
	return w
}

// Stop ends the workload, closes its pool and returns its unexpected
// errors. It may be called more than once.
func (w *Workload) Stop() []error {
	w.cancel()
	w.wg.Wait()
	w.Pool.Close()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errs
}

func (w *Workload) run(ctx context.Context, rng *rand.Rand) {
	defer w.wg.Done()
	var maxID int64
	for ctx.Err() == nil {
		if maxID == 0 || rng.IntN(50) == 0 {
			if err := w.Pool.QueryRow(ctx, "SELECT coalesce(max(id), 1) FROM "+w.Table).Scan(&maxID); err != nil {
				w.fail(ctx, err)
				continue
			}
		}
		id := rng.Int64N(maxID) + 1
		if w.Parity != 0 && id%2 != w.Parity%2 {
			id++
		}
		if rng.IntN(4) == 0 {
			id = -id // rows whose key was flipped
		}
		var err error
		if w.Mix == MixStream {
			err = w.streamOp(ctx, rng, id)
		} else {
			err = w.appOp(ctx, rng, id)
		}
		if err != nil {
			w.fail(ctx, err)
		} else {
			w.Ops.Add(1)
		}
		if w.Pause > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(w.Pause):
			}
		}
	}
}

func (w *Workload) appOp(ctx context.Context, rng *rand.Rand, id int64) error {
	var err error
	switch op := rng.IntN(100); {
	case op < 30:
		_, err = w.Pool.Exec(ctx, "INSERT INTO "+w.Table+" (tenant, email, amount, note) VALUES ($1, $2, $3, $4)",
			rng.IntN(7), w.email(rng), rng.IntN(100000), Note(rng))
	case op < 55:
		_, err = w.Pool.Exec(ctx, "UPDATE "+w.Table+" SET amount = $2, email = $3, note = $4 WHERE id = $1",
			id, rng.IntN(100000), w.email(rng), Note(rng))
	case op < 65:
		_, err = w.Pool.Exec(ctx, "UPDATE "+w.Table+" SET amount = amount + 1 WHERE id = $1", id)
	case op < 77:
		_, err = w.Pool.Exec(ctx, "DELETE FROM "+w.Table+" WHERE id = $1", id)
	case op < 85:
		// Key update: the key flips sign, so it never collides.
		_, err = w.Pool.Exec(ctx, "UPDATE "+w.Table+" SET id = -id WHERE id = $1", id)
	case op < 90 && w.Composite:
		_, err = w.Pool.Exec(ctx, "UPDATE "+w.Table+" SET tenant = tenant + 7 WHERE id = $1", id)
	case op < 93:
		_, err = w.Pool.Exec(ctx, "UPDATE "+w.Table+" SET amount = amount - 1 WHERE id BETWEEN $1 AND $1 + 20"+w.sameParity(), id)
	case op < 96:
		// Whole rows out, by prepared statements whose result type must
		// survive adopt: SELECT * and INSERT ... RETURNING *.
		var rows pgx.Rows
		if op%2 == 0 {
			rows, err = w.Pool.Query(ctx, "SELECT * FROM "+w.Table+" WHERE id = $1", id)
		} else {
			rows, err = w.Pool.Query(ctx, "INSERT INTO "+w.Table+" (tenant, email, amount) VALUES ($1, $2, $3) RETURNING *", rng.IntN(7), w.email(rng), rng.IntN(10))
		}
		if err == nil {
			_, err = pgx.CollectRows(rows, pgx.RowToMap)
		}
	default:
		err = w.deleteInsert(ctx, rng, id)
	}
	return err
}

func (w *Workload) streamOp(ctx context.Context, rng *rand.Rand, id int64) error {
	var err error
	switch op := rng.IntN(100); {
	case op < 30:
		_, err = w.Pool.Exec(ctx, "INSERT INTO "+w.Table+" (tenant, email, amount, note) VALUES ($1, $2, $3, $4)",
			rng.IntN(7), w.email(rng), rng.IntN(100000), Note(rng))
	case op < 52:
		_, err = w.Pool.Exec(ctx, "UPDATE "+w.Table+" SET amount = $2, email = $3, note = $4 WHERE id = $1",
			id, rng.IntN(100000), w.email(rng), Note(rng))
	case op < 62:
		// Leaves a TOASTed note unchanged: it arrives as 'u' in the stream.
		_, err = w.Pool.Exec(ctx, "UPDATE "+w.Table+" SET amount = amount + 1 WHERE id = $1", id)
	case op < 74:
		_, err = w.Pool.Exec(ctx, "DELETE FROM "+w.Table+" WHERE id = $1", id)
	case op < 84:
		_, err = w.Pool.Exec(ctx, "UPDATE "+w.Table+" SET id = -id WHERE id = $1", id)
	case op < 90:
		_, err = w.Pool.Exec(ctx, "UPDATE "+w.Table+" SET amount = amount - 1 WHERE id BETWEEN $1 AND $1 + 40"+w.sameParity(), id)
	case op < 95:
		err = w.deleteInsert(ctx, rng, id)
	default:
		// A bigger transaction: many changes reach the stream at one commit.
		err = pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
			for range 30 {
				if _, err := tx.Exec(ctx, "INSERT INTO "+w.Table+" (tenant, email, amount, note) VALUES ($1, $2, $3, $4)",
					rng.IntN(7), w.email(rng), rng.IntN(100), Note(rng)); err != nil {
					return err
				}
			}
			_, err := tx.Exec(ctx, "UPDATE "+w.Table+" SET note = $2 WHERE id BETWEEN $1 AND $1 + 10"+w.sameParity(), id, Note(rng))
			return err
		})
	}
	return err
}

// deleteInsert deletes a row and inserts another in one transaction.
func (w *Workload) deleteInsert(ctx context.Context, rng *rand.Rand, id int64) error {
	return pgx.BeginFunc(ctx, w.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "DELETE FROM "+w.Table+" WHERE id = $1", id); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "INSERT INTO "+w.Table+" (tenant, email, amount, note) VALUES ($1, $2, 1, NULL)", rng.IntN(7), w.email(rng))
		return err
	})
}

// sameParity keeps a range update to the workload's parity of |id|.
func (w *Workload) sameParity() string {
	if w.Parity == 0 {
		return ""
	}
	return fmt.Sprintf(" AND abs(id) %% 2 = %d", w.Parity%2)
}

func (w *Workload) fail(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return
	}
	code := db.SQLState(err)
	if code == db.DeadlockDetected {
		w.Deadlocks.Add(1)
		return
	}
	if w.StaleOK && (code == db.SerializationFailure || code == db.UniqueViolation) &&
		strings.Contains(err.Error(), "the logical stream has not brought") {
		w.Refused.Add(1)
		return
	}
	w.mu.Lock()
	w.errs = append(w.errs, err)
	w.mu.Unlock()
}

func (w *Workload) email(rng *rand.Rand) any {
	if !w.NoNulls && rng.IntN(4) == 0 {
		return nil
	}
	return fmt.Sprintf("w%d@x", rng.IntN(1_000_000))
}

// Note is a value for orders.note: NULL one time in five, a TOAST-sized
// one (12 kB of hex, incompressible enough to be stored out of line) one
// time in ten, else a short one.
func Note(rng *rand.Rand) any {
	switch rng.IntN(10) {
	case 0, 1:
		return nil
	case 2:
		var b strings.Builder
		for b.Len() < 12000 {
			fmt.Fprintf(&b, "%016x", rng.Uint64())
		}
		return b.String()
	default:
		return fmt.Sprintf("note %d", rng.IntN(1000))
	}
}
