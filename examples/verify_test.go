package examples_test

import (
	"context"
	"testing"

	"github.com/greenswap/greenswap/runner"
	"github.com/greenswap/greenswap/spec"
)

// verifyExample runs greenswap verify on a synced example: blue and green
// must be identical, with both one and two workers, and the result recorded.
func verifyExample(ctx context.Context, t *testing.T, env *runner.Env, spec *spec.Spec) {
	t.Helper()
	for _, workers := range []int{1, 2} {
		res, err := runner.Verify(ctx, env, spec.Name, runner.VerifyOptions{Workers: workers})
		if err != nil {
			t.Fatalf("verify --workers %d: %v", workers, err)
		}
		for _, w := range res.Warnings {
			t.Logf("verify warning: %s", w)
		}
		if !res.OK || res.Rows == 0 {
			t.Fatalf("verify --workers %d: ok=%v after %d rows; result: %+v", workers, res.OK, res.Rows, res.Pass)
		}
	}
	ok, err := runner.LastVerifyPassed(ctx, env.Pool, spec.Name)
	if err != nil || !ok {
		t.Fatalf("the passing verify was not recorded: %v, %v", ok, err)
	}
}
