// Package runsync takes a test's migration through the real sync path
// (runner.Sync), for the tests of the packages the runner calls (sync,
// trigger): they set a migration up as an operator would and then test
// their own piece of it. It is apart from testkit because it imports
// runner, whose own tests import testkit.
package runsync

import (
	"context"
	"testing"

	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/runner"
	"github.com/greenswap/greenswap/spec"
)

// Sync parses specYAML and runs runner.Sync on dsn's database: with
// setupOnly, adopt, green and the sync triggers only (not backfilled);
// else all the way to synced (reverse direction on).
func Sync(t testing.TB, dsn, specYAML string, setupOnly bool) *spec.Spec {
	t.Helper()
	ctx := context.Background()
	spec := testkit.ParseSpec(t, specYAML)
	env, err := runner.Connect(ctx, dsn, testkit.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	if _, err := runner.Sync(ctx, env, spec, runner.SyncOptions{StopAfterSetup: setupOnly}); err != nil {
		t.Fatal(err)
	}
	return spec
}
