package state

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/pgtest"
)

// The migration lock verifies that its session keeps the backend that took
// it. Through pgbouncer in transaction mode (runner.Connect refuses that;
// this is the lock's own line of defence) the lock stays on a pooled
// backend while the session's next transaction runs on another: Verify,
// the watch and Release say so, naming the backend to end, instead of
// "releasing" nothing while the lock outlives greenswap (issue 19: every
// later command then exited 4 naming a pgbench backend).
func TestLockNoticesItLostItsBackend(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	direct, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)
	pb := pgtest.StartPgbouncer(t, dsn, pgtest.PgbouncerOptions{})
	cfg, err := pgx.ParseConfig(pb.DSN(pb.DBName, pgtest.SuperUser))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	// On an idle pool pgbouncer hands the lock session's second
	// transaction the same backend again: Acquire's own check passes.
	lock, err := Acquire(ctx, cfg, "pm")
	if err != nil {
		t.Fatalf("Acquire on an idle pool: %v", err)
	}
	holder := lock.PID()
	var held int
	if err := direct.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1`, int32(holder)).Scan(&held); err != nil || held != 1 {
		t.Fatalf("backend %d holds %d advisory locks (%v), want 1", holder, held, err)
	}
	var notified atomic.Value
	lock.Watch(50*time.Millisecond, func(err error) { notified.Store(err) })

	// Another client of the pool takes that backend for a transaction.
	other, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	tx, err := other.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var otherPID uint32
	if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&otherPID); err != nil {
		t.Fatal(err)
	}
	if otherPID != holder {
		t.Fatalf("pgbouncer gave the other client backend %d, not the lock's %d: the test's premise failed", otherPID, holder)
	}
	deadline := time.Now().Add(5 * time.Second)
	for notified.Load() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the lock's watch did not notice within 5s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var lost *LostError
	if err := notified.Load().(error); !errors.As(err, &lost) || lost.Backend != holder {
		t.Fatalf("watch reported %v, want a *LostError for backend %d", err, holder)
	}
	if err := lock.Verify(ctx); !errors.As(err, &lost) {
		t.Fatalf("Verify = %v, want *LostError", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	err = lock.Release(ctx)
	if !errors.As(err, &lost) {
		t.Fatalf("Release = %v, want *LostError", err)
	}
	for _, want := range []string{fmt.Sprintf("pg_terminate_backend(%d)", holder), "connected directly", "transaction pooler"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Release's error lacks %q: %v", want, err)
		}
	}
	if lock.PID() != 0 {
		t.Error("PID after Release is not 0")
	}
}

// Connected directly, Verify and the watch stay quiet for the whole
// command and Release releases.
func TestLockVerifyDirect(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	lock, err := Acquire(ctx, cfg, "dm")
	if err != nil {
		t.Fatal(err)
	}
	var notified atomic.Bool
	lock.Watch(20*time.Millisecond, func(error) { notified.Store(true) })
	time.Sleep(200 * time.Millisecond)
	if err := lock.Verify(ctx); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if lock.PID() != lock.conn.PgConn().PID() {
		t.Fatalf("PID %d is not the session's backend %d", lock.PID(), lock.conn.PgConn().PID())
	}
	if err := lock.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if notified.Load() {
		t.Fatal("the watch reported a loss on a direct session")
	}
	again, err := Acquire(ctx, cfg, "dm")
	if err != nil {
		t.Fatalf("Acquire after Release: %v", err)
	}
	again.Release(ctx)
}
