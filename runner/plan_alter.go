package runner

// plan --alter (issue 18): the change given as ALTER TABLE. Each
// subcommand is rehearsed on an empty scratch copy of the table inside a
// transaction that is always rolled back (package alter); the blue-green
// part, if any, is then planned like any spec.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/greenswap/greenswap/alter"
	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// AlterPlanResult is plan --alter's document: what each subcommand does
// and, when some need the blue-green lifecycle, the plan of the derived
// spec.
type AlterPlanResult struct {
	SchemaVersion int         `json:"schema_version"`
	Alter         *alter.Plan `json:"alter"`
	// BlueGreen is the plan of Alter.BlueGreen (nil when everything runs
	// in place).
	BlueGreen *PlanResult `json:"blue_green_plan,omitempty"`
}

// ClassifyAlter parses sql and classifies it against the table it names,
// in a transaction it rolls back: nothing is changed and blue is not
// locked (the scratch copy is built from the catalog). name, when not
// empty, names the derived spec's migration.
func ClassifyAlter(ctx context.Context, env *Env, sql, name string, timeout time.Duration) (*alter.Plan, error) {
	stmts, err := alter.Parse(sql)
	if err != nil {
		return nil, err
	}
	tx, err := env.Pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("plan --alter: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if timeout > 0 {
		if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL statement_timeout = %d", timeout.Milliseconds())); err != nil {
			return nil, fmt.Errorf("plan --alter: %w", err)
		}
	}
	table, err := resolveTable(ctx, tx, stmts[0].Table)
	if err != nil {
		return nil, err
	}
	blue, err := shadow.LoadTable(ctx, tx, table)
	if errors.Is(err, shadow.ErrNotATable) {
		if m, merr := migrationOfApp(ctx, env.Pool, table); merr == nil && m != nil {
			return nil, exitcode.Errorf(exitcode.BadInput,
				"%s is managed by greenswap migration %s (%s): an ALTER runs on the table itself; finish that migration first (greenswap finalize %s, or rollback and teardown), or change its spec",
				table, m.Name, m.State, m.Name)
		}
		return nil, exitcode.With(exitcode.BadInput, fmt.Errorf("%w; an ALTER names a table", err))
	}
	if err != nil {
		return nil, err
	}
	plan, err := alter.Classify(ctx, tx, blue, stmts)
	if err != nil {
		return nil, err
	}
	if plan.BlueGreen != nil && name != "" {
		plan.BlueGreen.Name = name
		if err := plan.BlueGreen.Validate(); err != nil {
			return nil, exitcode.With(exitcode.BadInput, fmt.Errorf("--name: %w", err))
		}
	}
	return plan, nil
}

// resolveTable finds the table an ALTER names; a bare name is in public,
// as a spec's table is (greenswap's sessions search no user schema). A
// missing one is bad input.
func resolveTable(ctx context.Context, q db.Querier, t spec.QualifiedName) (spec.QualifiedName, error) {
	if t.Schema == "" {
		t.Schema = "public"
	}
	rel := db.Ident(t.Schema, t.Name)
	var out spec.QualifiedName
	var found bool
	err := q.QueryRow(ctx, `SELECT coalesce(n.nspname::text, ''), coalesce(c.relname::text, ''), c.oid IS NOT NULL
  FROM (SELECT pg_catalog.to_regclass($1) AS oid) r
  LEFT JOIN pg_catalog.pg_class c ON c.oid = r.oid
  LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace`, rel).Scan(&out.Schema, &out.Name, &found)
	if err != nil {
		return out, fmt.Errorf("plan --alter: resolving %s: %w", rel, err)
	}
	if !found {
		return out, exitcode.Errorf(exitcode.BadInput, "alter: table %s does not exist: check the name and the database you are connected to", rel)
	}
	return out, nil
}

// ResolveAlterSpec turns a spec with alter: into the spec the lifecycle
// runs, and the plan it came from. A spec without alter: is returned as is.
func ResolveAlterSpec(ctx context.Context, env *Env, s *spec.Spec, timeout time.Duration) (*spec.Spec, *alter.Plan, error) {
	if s.Alter == "" {
		return s, nil, nil
	}
	plan, err := ClassifyAlter(ctx, env, s.Alter, "", timeout)
	if err != nil {
		return nil, nil, alterSpecErr(s, err)
	}
	if plan.Table != s.AppTable() {
		return nil, nil, s.Errorf("alter", "alter only the spec's table", "the ALTER changes %s, not %s", plan.Table, s.AppTable())
	}
	plan.GreenOnly(s.Forward)
	plan.Overridden(s.Forward, s.Reverse)
	if plan.BlueGreen == nil {
		return nil, plan, nil
	}
	return withDerivedTarget(s, plan.BlueGreen), plan, nil
}

// withDerivedTarget is s (its name, mode, key, sync and guard options)
// with the derived target, the spec's own forward and reverse over the
// derived ones; field lines of the target point at alter:.
func withDerivedTarget(s, derived *spec.Spec) *spec.Spec {
	out := *s
	out.Alter = ""
	out.Target = derived.Target
	out.Forward = mergeMapping(derived.Forward, s.Forward)
	out.Reverse = mergeMapping(derived.Reverse, s.Reverse)
	out.Lines = map[string]int{}
	for k, v := range s.Lines {
		out.Lines[k] = v
	}
	for _, f := range []string{"target", "target.ddl", "target.indexes", "target.partitions"} {
		out.Lines[f] = s.Lines["alter"]
	}
	return &out
}

// syncAlterSpec is the spec sync runs for a spec with alter:: sync runs
// only a blue-green part, so an ALTER with in-place steps is refused
// before anything is touched.
func syncAlterSpec(ctx context.Context, env *Env, s *spec.Spec) (*spec.Spec, error) {
	resolved, plan, err := ResolveAlterSpec(ctx, env, s, 30*time.Second)
	if err != nil || plan == nil {
		return resolved, err
	}
	if err := alterGate(ctx, env, s.Name, plan, "sync"); err != nil {
		return nil, err
	}
	if plan.Order != alter.BlueGreenOnly {
		return nil, s.Errorf("alter", "run the in-place steps first (greenswap plan -f shows their SQL), then sync the spec greenswap plan --write-spec writes",
			"the ALTER has steps that run in place (%s): sync runs only the blue-green part", plan.Order)
	}
	return resolved, nil
}

// alterGate refuses (exit 3, nothing changed) a migration that has not
// started when the ALTER has blocking hazards of its own; one under way
// resumes (as gateNewSync lets it).
func alterGate(ctx context.Context, env *Env, name string, plan *alter.Plan, command string) error {
	if plan == nil || !shadow.HasBlocking(plan.Hazards) {
		return nil
	}
	row, err := state.Get(ctx, env.Pool, name)
	if err == nil && row.State != state.RolledBack {
		return nil
	}
	var msgs []string
	for _, h := range plan.Hazards {
		if h.Severity == shadow.Blocking {
			msgs = append(msgs, h.Code+": "+h.Message+" ("+h.Fix+")")
		}
	}
	return exitcode.Errorf(exitcode.Blocked, "%s refused, nothing was changed: plan found %d blocking hazard(s): %s", command, len(msgs), strings.Join(msgs, "; "))
}

// alterSpecErr points an alter error at the spec's alter: line.
func alterSpecErr(s *spec.Spec, err error) error {
	var pe *alter.ParseError
	var se *alter.SubError
	if errors.As(err, &pe) || errors.As(err, &se) {
		return s.Errorf("alter", "fix the ALTER", "%s", err.Error())
	}
	return err
}

func mergeMapping(derived, given map[string]string) map[string]string {
	if len(derived) == 0 && len(given) == 0 {
		return nil
	}
	out := map[string]string{}
	for k, v := range derived {
		out[k] = v
	}
	for k, v := range given {
		out[k] = v
	}
	return out
}

// PlanAlter is plan --alter (sql, given nil) and plan -f of a spec with
// alter: (given): classify, then plan the blue-green part with the given
// spec's name, options and mappings.
func PlanAlter(ctx context.Context, env *Env, sql string, given *spec.Spec, name string, opts PlanOptions) (*AlterPlanResult, error) {
	timeout := opts.StatementTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	if given != nil {
		sql = given.Alter
	}
	plan, err := ClassifyAlter(ctx, env, sql, name, timeout)
	if err != nil {
		if given != nil {
			return nil, alterSpecErr(given, err)
		}
		return nil, err
	}
	res := &AlterPlanResult{SchemaVersion: PlanSchemaVersion, Alter: plan}
	if given != nil {
		if plan.Table != given.AppTable() {
			return nil, given.Errorf("alter", "alter only the spec's table", "the ALTER changes %s, not %s", plan.Table, given.AppTable())
		}
		plan.GreenOnly(given.Forward)
		plan.Overridden(given.Forward, given.Reverse)
	}
	if plan.BlueGreen == nil {
		return res, nil
	}
	if given != nil {
		plan.BlueGreen = withDerivedTarget(given, plan.BlueGreen)
	}
	// The classification stands even when the blue-green part's plan
	// fails (a NULL the sample found): the caller shows both.
	res.BlueGreen, err = Plan(ctx, env, plan.BlueGreen, opts)
	withAlterHazards(res.BlueGreen, plan)
	return res, err
}

// withAlterHazards puts the ALTER's own hazards (a conversion the mapping
// cannot do as the ALTER would, package alter) first among the blue-green
// part's: a blocking one stops plan (exit 3), run --alter and sync alike.
func withAlterHazards(res *PlanResult, plan *alter.Plan) {
	if res == nil || plan == nil || len(plan.Hazards) == 0 {
		return
	}
	res.Hazards = append(slices.Clone(plan.Hazards), res.Hazards...)
	res.Blocking, res.Warnings, res.Infos = 0, 0, 0
	res.countHazards()
}

// planAlterSpec is Plan of a spec with alter:: the blue-green part of the
// ALTER, derived and planned (plan -f shows the in-place part too, through
// PlanAlter).
func planAlterSpec(ctx context.Context, env *Env, s *spec.Spec, opts PlanOptions) (*PlanResult, error) {
	resolved, plan, err := ResolveAlterSpec(ctx, env, s, opts.StatementTimeout)
	if err != nil {
		return nil, err
	}
	if plan.BlueGreen == nil {
		return nil, s.Errorf("alter", "plan it with greenswap plan -f (which shows the in-place steps) or run it with greenswap run --alter",
			"every subcommand runs in place: there is no new table to plan")
	}
	res, err := Plan(ctx, env, resolved, opts)
	withAlterHazards(res, plan)
	return res, err
}

// migrationOfApp is the unfinished migration whose app name (one of them,
// for several tables) is table, or nil.
func migrationOfApp(ctx context.Context, q db.Querier, table spec.QualifiedName) (*state.Migration, error) {
	if ok, err := state.Exists(ctx, q); err != nil || !ok {
		return nil, err
	}
	all, err := state.List(ctx, q)
	if err != nil {
		return nil, err
	}
	for _, m := range all {
		if m.State == state.Finalized || m.State == state.RolledBack {
			continue
		}
		for _, app := range strings.Split(m.AppTable, ", ") {
			if app == table.String() {
				return m, nil
			}
		}
	}
	return nil, nil
}
