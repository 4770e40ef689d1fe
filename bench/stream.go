package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// streamFigures are logical mode's figures once the copy is done, while
// `greenswap sync --watch` keeps applying blue's changes and the same
// clients keep writing.
type streamFigures struct {
	from, to       time.Time
	catchUp        time.Duration // from starting the watch until the slot's lag first fell under catchUpBytes
	applyRowsPerSc float64       // green's row changes per second over the window (pg_stat_user_tables)
	lagBytesMedian float64       // pg_current_wal_lsn() − the slot's confirmed_flush_lsn, sampled
	lagBytesMax    float64
	lagSecsMedian  float64 // the watch's own status lines (stream_lag_seconds); -1 when it printed none
	samples        int
}

// catchUpBytes is the slot lag under which the stream counts as caught up
// with the backlog a sync without --watch leaves behind.
const catchUpBytes = 1 << 20

// streamWindow starts `sync --watch` on a synced logical-mode migration,
// waits for it to catch up, then measures window seconds of streaming.
// The clients' throughput over [from, to] is read by the caller.
func (b *bench) streamWindow(ctx context.Context, dsn, specPath string, window time.Duration) (streamFigures, error) {
	var f streamFigures
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return f, err
	}
	defer conn.Close(context.Background())
	lag := func() (float64, error) {
		var v float64
		err := conn.QueryRow(ctx, `SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)), -1)
			FROM pg_replication_slots s JOIN greenswap.migrations m ON m.slot_name = s.slot_name WHERE m.name = $1`, migName).Scan(&v)
		if err == nil && v < 0 {
			err = fmt.Errorf("migration %s has no replication slot", migName)
		}
		return v, err
	}
	changes := func() (float64, error) {
		var v float64
		err := conn.QueryRow(ctx, `SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::float8
			FROM pg_stat_user_tables WHERE schemaname = $1`, "gs_"+migName+"_green").Scan(&v)
		return v, err
	}
	args := []string{"sync", "-f", specPath, "--watch"}
	run, err := b.cli.start(ctx, dsn, args...)
	if err != nil {
		return f, err
	}
	stopped := false
	defer func() {
		if !stopped {
			run.stop(args)
		}
	}()
	t0 := time.Now()
	for {
		v, err := lag()
		if err != nil {
			return f, err
		}
		if v < catchUpBytes {
			break
		}
		if time.Since(t0) > 2*time.Minute {
			return f, fmt.Errorf("sync --watch did not catch up in 2 minutes (slot %.0f bytes behind)", v)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return f, err
		}
	}
	f.catchUp = time.Since(t0)
	// Past the catch-up burst, into the steady state.
	if err := sleep(ctx, time.Second); err != nil {
		return f, err
	}
	c0, err := changes()
	if err != nil {
		return f, err
	}
	f.from = time.Now()
	var lags []float64
	for time.Since(f.from) < window {
		v, err := lag()
		if err != nil {
			return f, err
		}
		lags = append(lags, v)
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return f, err
		}
	}
	f.to = time.Now()
	// Statistics reach the shared counters within a second of a commit.
	if err := sleep(ctx, 1200*time.Millisecond); err != nil {
		return f, err
	}
	c1, err := changes()
	if err != nil {
		return f, err
	}
	stopped = true
	res := run.stop(args)
	if res.Code != 0 && res.Code != 130 {
		return f, fmt.Errorf("greenswap sync --watch exited %d: %s", res.Code, oneLine(lastLines(res.Stderr, 3), 300))
	}
	f.applyRowsPerSc = (c1 - c0) / f.to.Sub(f.from).Seconds()
	f.samples = len(lags)
	f.lagBytesMedian, f.lagBytesMax = median(lags), slices.Max(lags)
	f.lagSecsMedian = median(statusLagSeconds(res.Stdout+"\n"+res.Stderr, f.from, f.to))
	return f, nil
}

// statusLagSeconds picks stream_lag_seconds out of the watch's JSON status
// lines logged between from and to.
func statusLagSeconds(out string, from, to time.Time) []float64 {
	var v []float64
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		var line struct {
			Time    time.Time `json:"time"`
			Message string    `json:"message"`
			Lag     *float64  `json:"stream_lag_seconds"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Lag == nil || line.Message != "sync status" {
			continue
		}
		if !line.Time.Before(from.Truncate(time.Second)) && !line.Time.After(to.Add(time.Second)) {
			v = append(v, *line.Lag)
		}
	}
	return v
}

// median of v; -1 for none.
func median(v []float64) float64 {
	if len(v) == 0 {
		return -1
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
