package runner

import (
	"context"
	"errors"
	"testing"

	"github.com/greenswap/greenswap/internal/state"
)

// TestSwapRevalidatesInterruptedFK (issue 14): a cutover of several tables
// moves payments' foreign key (a table outside the migration) to green
// NOT VALID and validates it after the swap's commit. Killed in between
// (the test hook ends the command right after the commit), the key stays
// NOT VALID: status names it (not_valid_foreign_keys), and the next
// command on the migration — cutover run again, rollback, or finalize —
// validates it first (pg_constraint.convalidated true), after which status
// names nothing. A rollback killed the same way leaves blue's key NOT
// VALID, and the cutover after it validates that one.
func TestSwapRevalidatesInterruptedFK(t *testing.T) {
	t.Parallel()
	killed := errors.New("killed between the swap and its VALIDATE")
	next := map[string]func(ctx context.Context, env *Env, name string) (int, error){
		"cutover again": func(ctx context.Context, env *Env, name string) (int, error) {
			res, err := Cutover(ctx, env, name, CutoverOptions{})
			if res == nil {
				return 0, err
			}
			return len(res.Validations), err
		},
		"rollback": func(ctx context.Context, env *Env, name string) (int, error) {
			res, err := Rollback(ctx, env, name, SwapCommandOptions{})
			if res == nil {
				return 0, err
			}
			return len(res.Validations), err
		},
		"finalize": func(ctx context.Context, env *Env, name string) (int, error) {
			res, err := Finalize(ctx, env, name, FinalizeOptions{Force: true, Yes: true})
			if res == nil {
				return 0, err
			}
			return len(res.Validations), err
		},
	}
	for _, cmd := range []string{"cutover again", "rollback", "finalize"} {
		t.Run(cmd, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			name := map[string]string{"cutover again": "ra", "rollback": "rb", "finalize": "rf"}[cmd]
			pool, _, env := tablesSynced(t, name, 300)
			if _, err := VerifyMigration(ctx, env, name, VerifyOptions{}); err != nil {
				t.Fatal(err)
			}
			env.afterSwapCommit = func() error { return killed }
			if _, err := Cutover(ctx, env, name, CutoverOptions{}); !errors.Is(err, killed) {
				t.Fatalf("cutover with the hook: %v", err)
			}
			env.afterSwapCommit = nil
			if ns, valid := paymentsFK(t, pool); ns != "gs_"+name+"_green" || valid {
				t.Fatalf("after the interrupted cutover payments' key references %s, validated %v: want green, NOT VALID", ns, valid)
			}
			notValid := func() int {
				t.Helper()
				rep, err := Status(ctx, env, name, StatusOptions{Sample: -1, ShapeWindow: -1})
				if err != nil || len(rep.Migrations) != 1 {
					t.Fatalf("status: %+v, %v", rep, err)
				}
				for _, k := range rep.Migrations[0].NotValidForeignKeys {
					if k.Table.String() != "public.payments" || k.SQL == "" {
						t.Fatalf("status names %+v, want payments' key with its VALIDATE", k)
					}
				}
				return len(rep.Migrations[0].NotValidForeignKeys)
			}
			if n := notValid(); n != 1 {
				t.Fatalf("status names %d NOT VALID foreign keys after the interrupted cutover, want 1", n)
			}
			n, err := next[cmd](ctx, env, name)
			if err != nil || n != 1 {
				t.Fatalf("%s: %d validations of the interrupted swap's key, %v", cmd, n, err)
			}
			if _, valid := paymentsFK(t, pool); !valid {
				t.Fatalf("after %s payments' key is still NOT VALID", cmd)
			}
			if n := notValid(); n != 0 {
				t.Fatalf("status still names %d NOT VALID foreign keys after %s", n, cmd)
			}
			if cmd != "cutover again" {
				return
			}
			// A rollback killed the same way: blue's key is left NOT VALID.
			env.afterSwapCommit = func() error { return killed }
			if _, err := Rollback(ctx, env, name, SwapCommandOptions{}); !errors.Is(err, killed) {
				t.Fatalf("rollback with the hook: %v", err)
			}
			env.afterSwapCommit = nil
			if ns, valid := paymentsFK(t, pool); ns != "gs_"+name+"_blue" || valid {
				t.Fatalf("after the interrupted rollback payments' key references %s, validated %v", ns, valid)
			}
			if n := notValid(); n != 1 {
				t.Fatalf("status names %d NOT VALID foreign keys after the interrupted rollback, want 1", n)
			}
			if _, err := VerifyMigration(ctx, env, name, VerifyOptions{}); err != nil {
				t.Fatal(err)
			}
			res, err := Cutover(ctx, env, name, CutoverOptions{})
			if err != nil || len(res.Validations) < 2 {
				t.Fatalf("cutover after the interrupted rollback: %+v, %v (want blue's key validated first, then its own)", res, err)
			}
			if m, err := state.Get(ctx, pool, name); err != nil || m.State != state.CutOver {
				t.Fatalf("state %+v, %v", m, err)
			}
			if ns, valid := paymentsFK(t, pool); ns != "gs_"+name+"_green" || !valid {
				t.Fatalf("after the cutover payments' key references %s, validated %v", ns, valid)
			}
			if n := notValid(); n != 0 {
				t.Fatalf("status names %d NOT VALID foreign keys at the end", n)
			}
		})
	}
}
