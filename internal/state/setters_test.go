package state

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/pgtest"
)

// TestBuiltIndexesInState: the indexes a sync built are recorded in the
// state row (AddBuiltIndex) and cleared when the backfill starts over; a
// row written by a greenswap whose state schema had no indexes_built
// column still loads, and the upgrade carries its builds over from the
// event log once (only those since the row was created).
func TestBuiltIndexesInState(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	if err := Ensure(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(ctx, pool, "m1", "public.orders", "trigger", map[string]string{"name": "m1"}); err != nil {
		t.Fatal(err)
	}
	for i, ix := range []string{"a_idx", "b_idx"} {
		if err := AddBuiltIndex(ctx, pool, "m1", i*2, ix); err != nil {
			t.Fatal(err)
		}
	}
	m, err := Get(ctx, pool, "m1")
	if err != nil {
		t.Fatal(err)
	}
	got, err := m.BuiltIndexes()
	if want := map[int]string{0: "a_idx", 2: "b_idx"}; err != nil || !maps.Equal(got, want) {
		t.Fatalf("BuiltIndexes = %v, %v; want %v", got, err, want)
	}
	if err := AddBuiltIndex(ctx, pool, "nope", 0, "x"); err == nil {
		t.Fatal("AddBuiltIndex of a missing migration succeeded")
	}
	if err := StartBackfill(ctx, pool, "m1", "backfill", 10, true); err != nil {
		t.Fatal(err)
	}
	if m, err = Get(ctx, pool, "m1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.BuiltIndexes(); len(got) != 0 || m.Phase != "backfill" || m.RowsEstimate != 10 {
		t.Fatalf("after StartBackfill: built %v, phase %q, estimate %d", got, m.Phase, m.RowsEstimate)
	}

	// The old state schema: no indexes_built column, builds only as events
	// (one from before the row was created again after a rollback).
	if err := Record(ctx, pool, "m2", "build-index", "ok", 0, "", map[string]any{"statement": 0, "index": "stale_idx"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	pgtest.Exec(t, dsn, `ALTER TABLE greenswap.migrations DROP COLUMN indexes_built;
		INSERT INTO greenswap.migrations (name, app_table, mode, spec, state, phase)
		VALUES ('m2', 'public.orders', 'trigger', '{"name":"m2"}', 'syncing', 'indexes')`)
	for _, ev := range []map[string]any{{"statement": 1, "index": "one_idx"}, {"statement": 3, "index": "three_idx"}} {
		if err := Record(ctx, pool, "m2", "build-index", "ok", 0, "", ev); err != nil {
			t.Fatal(err)
		}
	}
	if err := Record(ctx, pool, "m2", "build-index", "error", 0, "", map[string]any{"statement": 4, "index": "failed_idx"}); err != nil {
		t.Fatal(err)
	}
	old, err := Get(ctx, pool, "m2")
	if err != nil {
		t.Fatalf("a row of the old state schema does not load: %v", err)
	}
	if got, err := old.BuiltIndexes(); err != nil || len(got) != 0 || old.Phase != "indexes" {
		t.Fatalf("old row: built %v, %v, phase %q", got, err, old.Phase)
	}
	if list, err := List(ctx, pool); err != nil || len(list) != 2 {
		t.Fatalf("List on the old schema = %d, %v", len(list), err)
	}
	if err := Upgrade(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if old, err = Get(ctx, pool, "m2"); err != nil {
		t.Fatal(err)
	}
	got, err = old.BuiltIndexes()
	if want := map[int]string{1: "one_idx", 3: "three_idx"}; err != nil || !maps.Equal(got, want) {
		t.Fatalf("after Upgrade: BuiltIndexes = %v, %v; want %v", got, err, want)
	}
	// m1 lost its column's value with the column: the upgrade found no event.
	if m, err = Get(ctx, pool, "m1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.BuiltIndexes(); len(got) != 0 {
		t.Fatalf("m1 after Upgrade: %v", got)
	}
}

// TestTypedSetters: each setter writes the columns it names.
func TestTypedSetters(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := pgtest.NewPool(t)
	if err := Ensure(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(ctx, pool, "m", "public.t", "logical", map[string]string{"name": "m"}); err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	steps := []error{
		SetSpec(ctx, pool, "m", map[string]string{"name": "m", "v": "2"}, "public.u"),
		SetRowsEstimate(ctx, pool, "m", "backfill", 77),
		SetCheckpoint(ctx, pool, "m", BackfillCheckpoint{Cursor: []string{"5", "x"}, RowsCopied: 5, BatchSize: 50, RowsPerSec: 9.5}),
		SetThrottle(ctx, pool, "m", "paused"),
		SetPaused(ctx, pool, "m", true),
		SetSlot(ctx, pool, "m", "gs_m_slot", "0/16B3748"),
		SetPrimarySide(ctx, pool, "m", "green"),
		SetVerified(ctx, pool, "m", at, true),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("setter %d: %v", i, err)
		}
	}
	m, err := Get(ctx, pool, "m")
	if err != nil {
		t.Fatal(err)
	}
	if m.AppTable != "public.u" || m.Phase != "backfill" || m.RowsEstimate != 77 || string(m.Cursor) != `["5", "x"]` ||
		m.RowsCopied != 5 || m.BatchSize != 50 || m.RowsPerSec != 0 || m.Throttle != "paused" || !m.Paused ||
		m.SlotName == nil || *m.SlotName != "gs_m_slot" || m.ConfirmedLSN == nil || *m.ConfirmedLSN != "0/16B3748" ||
		m.PrimarySide != "green" || m.VerifyOK == nil || !*m.VerifyOK || m.VerifiedAt == nil || !m.VerifiedAt.Equal(at) {
		t.Fatalf("row after the setters: %+v", m)
	}
	if err := SetCheckpoint(ctx, pool, "m", BackfillCheckpoint{Cursor: []string{"9"}, RowsCopied: 9, Done: true, Next: "indexes"}); err != nil {
		t.Fatal(err)
	}
	if err := SetVerifyFailed(ctx, pool, "m"); err != nil {
		t.Fatal(err)
	}
	if m, err = Get(ctx, pool, "m"); err != nil {
		t.Fatal(err)
	}
	if m.Phase != "indexes" || m.BackfillDoneAt == nil || m.Throttle != "" || m.VerifyOK == nil || *m.VerifyOK {
		t.Fatalf("after the last batch and a failed verify: %+v", m)
	}
	if err := SetSynced(ctx, pool, "m"); err != nil {
		t.Fatal(err)
	}
	if err := SetTornDown(ctx, pool, "m"); err != nil {
		t.Fatal(err)
	}
	if m, err = Get(ctx, pool, "m"); err != nil {
		t.Fatal(err)
	}
	if m.Phase != "" || m.PrimarySide != "blue" {
		t.Fatalf("after SetSynced, SetTornDown: phase %q, side %q", m.Phase, m.PrimarySide)
	}
}
