package state

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
)

func TestTransitions(t *testing.T) {
	allowed := map[[2]State]bool{
		{Planned, Syncing}: true, {Planned, RolledBack}: true,
		{Syncing, Syncing}: true, {Syncing, Synced}: true, {Syncing, RolledBack}: true,
		{Synced, Syncing}: true, {Synced, CutOver}: true, {Synced, RolledBack}: true,
		{CutOver, Synced}: true, {CutOver, Finalized}: true,
		{RolledBack, Planned}: true, {RolledBack, Syncing}: true,
	}
	all := []State{Planned, Syncing, Synced, CutOver, Finalized, RolledBack}
	for _, from := range all {
		if !from.Valid() {
			t.Errorf("%s not valid", from)
		}
		for _, to := range all {
			if got := from.CanMoveTo(to); got != allowed[[2]State{from, to}] {
				t.Errorf("%s → %s: CanMoveTo = %v, want %v", from, to, got, !got)
			}
		}
	}
	if State("bogus").Valid() {
		t.Error("bogus state reported valid")
	}
	if !Finalized.Terminal() || CutOver.Terminal() {
		t.Error("only finalized is terminal")
	}
}

func TestStoreLifecycle(t *testing.T) {
	ctx := context.Background()
	pool, _ := pgtest.NewPool(t)
	if ok, err := Exists(ctx, pool); err != nil || ok {
		t.Fatalf("Exists before Ensure = %v, %v", ok, err)
	}
	// Concurrent first calls must not race on CREATE ... IF NOT EXISTS.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- Ensure(ctx, pool) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Get(ctx, pool, "nope"); !errors.Is(err, ErrNotFound) || exitcode.Of(err) != exitcode.BadInput {
		t.Fatalf("Get missing = %v", err)
	}
	m, err := Create(ctx, pool, "m1", "public.orders", "trigger", map[string]string{"name": "m1"})
	if err != nil {
		t.Fatal(err)
	}
	if m.State != Planned || m.PrimarySide != "blue" {
		t.Fatalf("created %+v", m)
	}
	if _, err := Create(ctx, pool, "m1", "public.orders", "trigger", map[string]string{}); exitcode.Of(err) != exitcode.BadInput {
		t.Fatalf("second Create = %v, want bad input", err)
	}
	if err := Transition(ctx, pool, "m1", CutOver); exitcode.Of(err) != exitcode.BadInput {
		t.Fatalf("planned → cut_over = %v, want refused", err)
	}
	for _, s := range []State{Syncing, Synced, CutOver, Synced} {
		if err := Transition(ctx, pool, "m1", s); err != nil {
			t.Fatalf("→ %s: %v", s, err)
		}
	}
	if err := Update(ctx, pool, "m1", map[string]any{"rows_copied": int64(42), "phase": "backfill"}); err != nil {
		t.Fatal(err)
	}
	if err := Transition(ctx, pool, "m1", RolledBack); err != nil {
		t.Fatal(err)
	}
	// A rolled-back migration may start over with a new spec.
	m, err = Create(ctx, pool, "m1", "public.orders", "logical", map[string]string{"v": "2"})
	if err != nil {
		t.Fatal(err)
	}
	if m.State != Planned || m.RowsCopied != 0 || m.Mode != "logical" {
		t.Fatalf("re-created %+v", m)
	}
	list, err := List(ctx, pool)
	if err != nil || len(list) != 1 {
		t.Fatalf("List = %d, %v", len(list), err)
	}

	if err := Record(ctx, pool, "m1", "adopt", "ok", 1500*time.Microsecond, "ALTER TABLE x", map[string]int{"n": 1}); err != nil {
		t.Fatal(err)
	}
	ev, err := Events(ctx, pool, "m1", 10)
	if err != nil || len(ev) != 1 || ev[0].Step != "adopt" || ev[0].DurationMS != 1.5 || ev[0].Actor == "" {
		t.Fatalf("events = %+v, %v", ev, err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM greenswap.events`); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Fatalf("deleting events = %v, want append-only refusal", err)
	}
	if _, err := pool.Exec(ctx, `UPDATE greenswap.events SET outcome = 'x'`); err == nil {
		t.Fatal("updating events succeeded")
	}
}

func TestLockSecondHolderFailsAtOnce(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	first, err := Acquire(ctx, cfg, "m1")
	if err != nil {
		t.Fatal(err)
	}
	var pid int32
	if err := first.conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = Acquire(ctx, cfg, "m1")
	var h *HolderError
	if !errors.As(err, &h) || exitcode.Of(err) != exitcode.Busy {
		t.Fatalf("second Acquire = %v, want HolderError (exit 4)", err)
	}
	if h.PID != pid || !strings.Contains(err.Error(), "greenswap:m1:lock") {
		t.Fatalf("holder = %+v (%v), want pid %d", h, err, pid)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("second Acquire waited instead of failing at once")
	}
	// Another migration is independent.
	other, err := Acquire(ctx, cfg, "m2")
	if err != nil {
		t.Fatal(err)
	}
	other.Release(ctx)
	if err := first.Release(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := Acquire(ctx, cfg, "m1")
	if err != nil {
		t.Fatalf("Acquire after Release = %v", err)
	}
	again.Release(ctx)
}
