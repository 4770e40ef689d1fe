package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/pgtest"
)

// TestInterruptedSyncBinary: SIGINT to a running sync (the built binary,
// mid-backfill) exits 130 with one line on stderr that says it was
// interrupted, during what, and how to resume, not a raw "context
// canceled" as if a statement had failed; the same command then resumes
// and completes.
func TestInterruptedSyncBinary(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t)
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'x' FROM generate_series(1, 50000) g")
	spec := filepath.Join(t.TempDir(), "spec.yaml")
	// Small batches that yield: the copy runs for many seconds.
	body := "name: intr\ntable: public.t\ntarget:\n  ddl: CREATE TABLE t (id bigint PRIMARY KEY, v text)\nsync:\n  batch_size: 100\n  min_batch_size: 100\n  max_batch_size: 100\n  nice_ratio: 5\n"
	if err := os.WriteFile(spec, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--dsn", dsn, "--log-level", "error", "sync", "-f", spec}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// Wait until the backfill has copied some rows, so the signal lands
	// mid-copy rather than before sync connected.
	for {
		var n int
		err := conn.QueryRow(ctx, "SELECT count(*) FROM gs_intr_green.t").Scan(&n)
		if err == nil && n > 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the backfill never started: %v\nstderr: %s", err, errb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 130 {
		t.Fatalf("sync after SIGINT: %v, want exit 130\nstderr: %s", err, errb.String())
	}
	stderr := errb.String()
	if strings.Count(stderr, "\n") != 1 || strings.Contains(stderr, "context canceled") ||
		!strings.HasPrefix(stderr, "greenswap: interrupted during sync") ||
		!strings.Contains(stderr, "nothing is lost, the copy is checkpointed: run `greenswap --dsn ") ||
		!strings.Contains(stderr, " sync -f "+spec+"` again to resume") {
		t.Errorf("stderr is not one honest line about the interruption:\n%s", stderr)
	}
	var copied int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM gs_intr_green.t").Scan(&copied); err != nil || copied >= 50000 {
		t.Fatalf("the signal did not land mid-copy: %d rows in green (%v)", copied, err)
	}

	// The line's advice works: the same command resumes and completes.
	fast := strings.Replace(body, "nice_ratio: 5", "nice_ratio: 0", 1)
	fast = strings.NewReplacer("batch_size: 100\n  min", "batch_size: 5000\n  min", "max_batch_size: 100", "max_batch_size: 5000").Replace(fast)
	if err := os.WriteFile(spec, []byte(fast), 0o644); err != nil {
		t.Fatal(err)
	}
	rerun := exec.CommandContext(ctx, bin, args...)
	if b, err := rerun.CombinedOutput(); err != nil {
		t.Fatalf("rerun: %v\n%s", err, b)
	}
	var blue, green int
	if err := conn.QueryRow(ctx, "SELECT (SELECT count(*) FROM gs_intr_blue.t), (SELECT count(*) FROM gs_intr_green.t)").Scan(&blue, &green); err != nil || blue != green || green != 50000 {
		t.Errorf("after the rerun: blue %d rows, green %d (%v)", blue, green, err)
	}
}
