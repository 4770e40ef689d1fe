package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// hotRowRun is what clients updating a few hot rows saw: transactions
// committed, deadlocks (40P01) and the longest wait for one.
type hotRowRun struct {
	commits, deadlocks, otherErrors int
	maxStall                        time.Duration
}

// hotRows runs clients single-row UPDATEs of random rows among the first
// hot keys for d; client i sets search_path to paths[i % len(paths)].
func hotRows(ctx context.Context, dsn string, paths []string, clients, hot int, d time.Duration) (hotRowRun, error) {
	var (
		mu  sync.Mutex
		out hotRowRun
		wg  sync.WaitGroup
	)
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	conns := make([]*pgx.Conn, clients)
	for i := range conns {
		cfg, err := pgx.ParseConfig(dsn)
		if err != nil {
			return out, err
		}
		cfg.RuntimeParams["search_path"] = paths[i%len(paths)]
		cfg.RuntimeParams["application_name"] = "bench-hot-rows"
		if conns[i], err = pgx.ConnectConfig(ctx, cfg); err != nil {
			return out, err
		}
		defer conns[i].Close(context.Background())
	}
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for ctx.Err() == nil {
				t0 := time.Now()
				_, err := c.Exec(ctx, `UPDATE orders SET note = $1 WHERE id = $2`, fmt.Sprint(rng.Int64()), 1+rng.IntN(hot))
				took := time.Since(t0)
				var pgErr *pgconn.PgError
				mu.Lock()
				switch {
				case err == nil:
					out.commits++
				case errors.As(err, &pgErr) && pgErr.Code == "40P01":
					out.deadlocks++
					out.maxStall = max(out.maxStall, took)
				case ctx.Err() == nil:
					out.otherErrors++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out, nil
}

// crossShape measures issue 11.7 on a migration that is cut over (so sync
// runs both ways): clients pinned to blue's and to green's shape updating
// the same hot rows deadlock across the sync trigger; the baseline is the
// same clients all on one shape, where they only queue.
func (b *bench) crossShape(ctx context.Context, dsn string, fig *Figure) error {
	const clients, hot = 8, 50
	const d = 10 * time.Second
	b.logf("hot rows: %d clients on both shapes, %d rows, %s", clients, hot, d)
	base, err := hotRows(ctx, dsn, []string{names.BlueSchema}, clients, hot, d)
	if err != nil {
		return err
	}
	mixed, err := hotRows(ctx, dsn, []string{names.BlueSchema, names.GreenSchema}, clients, hot, d)
	if err != nil {
		return err
	}
	per := func(r hotRowRun) float64 {
		if r.commits+r.deadlocks == 0 {
			return 0
		}
		return 1e5 * float64(r.deadlocks) / float64(r.commits+r.deadlocks)
	}
	fig.Value = fmt.Sprintf("%d in %d tx (%.0f per 100k)", mixed.deadlocks, mixed.commits+mixed.deadlocks, per(mixed))
	fig.Baseline = fmt.Sprintf("%d in %d tx (one shape)", base.deadlocks, base.commits+base.deadlocks)
	fig.raw("deadlocks", float64(mixed.deadlocks))
	fig.raw("transactions", float64(mixed.commits+mixed.deadlocks))
	fig.raw("deadlocks_per_100k", per(mixed))
	fig.raw("baseline_deadlocks", float64(base.deadlocks))
	fig.raw("max_stall_ms", ms(mixed.maxStall))
	fig.Note = fmt.Sprintf("%d clients alternately pinned to %s and %s, single-row UPDATEs of %d hot rows for %s; each deadlock stalls its transaction up to deadlock_timeout (longest: %s); %d other errors",
		clients, names.BlueSchema, names.GreenSchema, hot, d, fmtDur(mixed.maxStall), mixed.otherErrors+base.otherErrors)
	b.logf("  %s; one shape: %s", fig.Value, fig.Baseline)
	return nil
}
