package state

import (
	"context"
	"testing"

	"github.com/greenswap/greenswap/internal/pgtest"
)

// TestFingerprintColumnUpgrade: a state schema made before the fingerprint
// column existed still reads (no fingerprint), Upgrade adds the column,
// SetFingerprint records one that Fingerprint reads back, and a migration
// started over after a rollback forgets it.
func TestFingerprintColumnUpgrade(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, _ := pgtest.NewPool(t)
	if err := Ensure(ctx, pool); err != nil {
		t.Fatal(err)
	}
	// As an older greenswap left it.
	if _, err := pool.Exec(ctx, `ALTER TABLE greenswap.migrations DROP COLUMN fingerprint`); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(ctx, pool, "m1", "public.t", "trigger", map[string]string{"name": "m1"}); err == nil {
		t.Fatal("Create on a schema without the column succeeded: the test does not simulate an old schema")
	}
	if _, err := pool.Exec(ctx, `INSERT INTO greenswap.migrations (name, app_table, mode, spec, state) VALUES ('m1', 'public.t', 'trigger', '{}', 'synced')`); err != nil {
		t.Fatal(err)
	}
	if fp, err := Fingerprint(ctx, pool, "m1"); err != nil || fp != nil {
		t.Fatalf("old schema: fingerprint %s, %v; want none and no error", fp, err)
	}
	if _, err := Get(ctx, pool, "m1"); err != nil {
		t.Fatalf("Get on the old schema: %v", err)
	}
	if err := Upgrade(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if err := SetFingerprint(ctx, pool, "m1", map[string]int{"version": 1}); err != nil {
		t.Fatal(err)
	}
	fp, err := Fingerprint(ctx, pool, "m1")
	if err != nil || string(fp) != `{"version": 1}` {
		t.Fatalf("fingerprint %s, %v", fp, err)
	}
	if err := Upgrade(ctx, pool); err != nil { // up to date: nothing to do
		t.Fatal(err)
	}
	if _, err := Fingerprint(ctx, pool, "nope"); err == nil {
		t.Fatal("fingerprint of an unknown migration: no error")
	}
	if _, err := pool.Exec(ctx, `UPDATE greenswap.migrations SET state = 'rolled_back' WHERE name = 'm1'`); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(ctx, pool, "m1", "public.t", "trigger", map[string]string{"name": "m1"}); err != nil {
		t.Fatal(err)
	}
	if fp, err := Fingerprint(ctx, pool, "m1"); err != nil || fp != nil {
		t.Fatalf("started over: fingerprint %s, %v; want none", fp, err)
	}
}
