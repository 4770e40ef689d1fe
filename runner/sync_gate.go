package runner

import (
	"context"
	"errors"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// gateNewSync runs plan before a migration that has not started yet (no row,
// or a rolled-back one) and refuses it with exit 3 when plan finds blocking
// hazards, before anything is touched. A migration already under way resumes
// without re-planning: its own objects would read as leftovers.
func gateNewSync(ctx context.Context, env *Env, spec *spec.Spec) error {
	row, err := state.Get(ctx, env.Pool, spec.Name)
	if err == nil && row.State != state.RolledBack {
		return nil
	}
	// A state schema the role may not read (42501 insufficient_privilege)
	// is for plan's privilege check to name (exit 2), not a raw error.
	if err != nil && !errors.Is(err, state.ErrNotFound) && db.SQLState(err) != "42501" {
		return err
	}
	res, err := Plan(ctx, env, spec, PlanOptions{})
	if err != nil {
		return err
	}
	if res.Blocking == 0 {
		return nil
	}
	var codes []string
	for _, h := range res.Hazards {
		if h.Severity == shadow.Blocking {
			codes = append(codes, h.Code+": "+h.Message)
		}
	}
	return exitcode.Errorf(exitcode.Blocked, "sync refused, nothing was changed: plan found %d blocking hazard(s): %s (see `greenswap plan -f %s`)",
		res.Blocking, strings.Join(codes, "; "), fileOr(spec.File))
}
