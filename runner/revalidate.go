package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/greenswap/greenswap/cutover"
	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
)

// A swap adds the foreign keys it moves NOT VALID and validates them once
// it committed (a SHARE UPDATE EXCLUSIVE lock, no writer blocked). A
// greenswap killed in between leaves them NOT VALID: new rows are checked,
// the old ones never are, and the catalog alone cannot tell greenswap's
// from one a DBA left NOT VALID on purpose. So the swap's transaction
// records which ones it will validate (a validate-pending event); status
// names those still NOT VALID, and the next cutover, rollback or finalize
// of the migration validates them before anything else.

const validatePendingStep = "validate-pending"

// recordPendingFKs records, inside the swap's transaction, the foreign
// keys the swap adds NOT VALID and validates after its commit.
func recordPendingFKs(ctx context.Context, q db.Querier, name string, p *cutover.SwapPlan) error {
	fks := p.PendingFKs()
	if len(fks) == 0 {
		return nil
	}
	return state.Record(ctx, q, name, validatePendingStep, "pending", 0, "", map[string]any{"foreign_keys": fks})
}

// notValidFKs are the foreign keys a swap of migration name recorded as
// pending that are still NOT VALID now.
func notValidFKs(ctx context.Context, q db.Querier, name string) ([]cutover.PendingFK, error) {
	details, err := state.EventDetails(ctx, q, name, validatePendingStep, "pending")
	if err != nil {
		return nil, err
	}
	var all []cutover.PendingFK
	for _, d := range details {
		var ev struct {
			FKs []cutover.PendingFK `json:"foreign_keys"`
		}
		if err := json.Unmarshal(d, &ev); err != nil {
			return nil, fmt.Errorf("decode a %s event of %s: %w", validatePendingStep, name, err)
		}
		all = append(all, ev.FKs...)
	}
	if len(all) == 0 {
		return nil, nil
	}
	return cutover.NotValid(ctx, q, all)
}

// revalidatePending validates the foreign keys an interrupted swap of m
// left NOT VALID, each recorded as a validate-constraint event; it
// returns what it ran (nothing when none was left) and an error only
// when it could not read what is pending. A VALIDATE that fails (a row
// the key rejects) is reported in its Validation and leaves the key NOT
// VALID, still reported by status.
func revalidatePending(ctx context.Context, env *Env, m *Migration, lo shadow.LockOptions, printf func(string, ...any)) ([]cutover.Validation, error) {
	name := m.Spec.Name
	pend, err := notValidFKs(ctx, env.Pool, name)
	if err != nil || len(pend) == 0 {
		return nil, err
	}
	printf("%d foreign key(s) an interrupted swap left NOT VALID: validating them first\n", len(pend))
	vals := cutover.ValidateFKs(ctx, env.Pool, pend, lo)
	for _, v := range vals {
		outcome := "ok"
		if v.Error != "" {
			outcome = "error"
			printf("FAILED %s: %s (the constraint stays NOT VALID and is enforced for new rows)\n", v.SQL, v.Error)
		} else {
			printf("validated: %s (%.1f ms)\n", v.SQL, v.DurationMS)
		}
		_ = state.Record(ctx, env.Pool, name, "validate-constraint", outcome, time.Duration(v.DurationMS*float64(time.Millisecond)), v.SQL,
			map[string]any{"interrupted_swap": true})
	}
	return vals, nil
}

// validationWarnings are the warnings of failed validations.
func validationWarnings(vals []cutover.Validation) []string {
	var out []string
	for _, v := range vals {
		if v.Error != "" {
			out = append(out, fmt.Sprintf("%s failed: %s; the constraint stays NOT VALID (enforced for new rows); fix the rows and run it by hand", v.SQL, v.Error))
		}
	}
	return out
}
