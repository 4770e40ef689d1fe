package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/cutover"
	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"

	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/spec"
	"github.com/greenswap/greenswap/trigger"
)

// storedSpec decodes a migration row's spec; one
// that does not decode is left to the command's own reading to report.
func storedSpec(m *state.Migration) *spec.Spec {
	var s spec.Spec
	if json.Unmarshal(m.Spec, &s) != nil {
		return nil
	}
	return &s
}

// planTables is plan for a spec with several tables. In one transaction,
// always rolled back: the foreign keys' targets are checked against the
// catalog; every green is created in dependency order without the foreign
// keys among the greens, their types compared, the keys added NOT VALID and
// validated, as sync will (one savepoint, released before the tables are
// planned); then each table gets the one-table rehearsal (adopt, green,
// triggers, the sample, the steps), in order, each in a savepoint of its own
// so that one table's adopt lock is released before the next is taken.
func planTables(ctx context.Context, env *Env, s *spec.Spec, opts PlanOptions) (*PlanResult, error) {
	opts = opts.withDefaults(s)
	res, err := rehearseRolledBack(ctx, env, opts, "a table of "+s.Name, func(tx pgx.Tx) (*PlanResult, error) {
		return rehearseTables(ctx, env, s, opts, tx)
	})
	if err != nil {
		return nil, err
	}
	res.Rehearsal.Done = true
	for _, t := range res.Tables {
		t.Rehearsal.RolledBack = true
		t.countHazards()
		res.Blocking += t.Blocking
		res.Warnings += t.Warnings
		res.Infos += t.Infos
		res.Rehearsal.Done = res.Rehearsal.Done && t.Rehearsal.Done
		res.Rehearsal.LockHeldMS += t.Rehearsal.LockHeldMS
		if t.Rehearsal.Skipped != "" && res.Rehearsal.Skipped == "" {
			res.Rehearsal.Skipped = t.Table + ": " + t.Rehearsal.Skipped
		}
		e, te := &res.Estimate, t.Estimate
		e.Rows += te.Rows
		e.BlueTableBytes += te.BlueTableBytes
		e.BlueIndexBytes += te.BlueIndexBytes
		e.GreenTableBytes += te.GreenTableBytes
		e.GreenIndexBytes += te.GreenIndexBytes
		e.GreenTotalBytes += te.GreenTotalBytes
		e.DiskNeededBytes += te.DiskNeededBytes
		e.BackfillSeconds += te.BackfillSeconds
		e.RowsPerSecond = te.RowsPerSecond
	}
	res.Estimate.Note = "the sums over the tables (each table's own estimate is in its section); the copies run table by table in the order shown"
	return res, nil
}

func rehearseTables(ctx context.Context, env *Env, s *spec.Spec, opts PlanOptions, tx pgx.Tx) (*PlanResult, error) {
	names := shadow.MemberNamesFor(s.Name, spec.QualifiedName{}, true)
	res := &PlanResult{
		SchemaVersion: PlanSchemaVersion, Migration: s.Name, SpecFile: s.File, Mode: s.Mode,
		BlueSchema: names.BlueSchema, GreenSchema: names.GreenSchema,
		Steps: []PlanStep{}, Hazards: []shadow.Hazard{}, Key: []string{}, Privileges: []shadow.Privilege{},
		Order: []string{}, Tables: []*PlanResult{},
	}
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.set_config('statement_timeout', $1, true)`,
		fmt.Sprintf("%dms", opts.StatementTimeout.Milliseconds())); err != nil {
		return nil, err
	}
	if err := tx.QueryRow(ctx, `SELECT pg_catalog.current_setting('server_version')`).Scan(&res.Server.Version); err != nil {
		return nil, err
	}
	res.Server.Major = env.ServerMajor
	order := s.Order()
	var members []spec.QualifiedName
	var tables, greens []string
	for _, i := range order {
		m := s.Member(i)
		members = append(members, m.AppTable())
		tables = append(tables, m.AppTable().String())
		greens = append(greens, shadow.MemberNamesFor(s.Name, m.AppTable(), true).Green.String())
	}
	res.Order, res.Table, res.GreenTable = tables, strings.Join(tables, ", "), strings.Join(greens, ", ")

	if err := shadow.CheckForeignKeyTargets(ctx, tx, s); err != nil {
		return nil, err
	}
	fks, createSQL, err := rehearseGreenLinks(ctx, tx, s, order)
	if err != nil {
		return nil, err
	}

	for _, i := range order {
		m := s.Member(i)
		// The green is created without its foreign keys to the other
		// greens (added once every green exists), which also keeps this
		// table's rehearsal from reaching into a blue it does not lock.
		m.Target.DDL = shadow.MemberGreenDDL(s, i)
		p := &planner{env: env, spec: m, opts: opts, tx: tx, members: members,
			n: shadow.MemberNamesFor(s.Name, m.AppTable(), true)}
		if _, err := tx.Exec(ctx, "SAVEPOINT gs_plan_member"); err != nil {
			return nil, err
		}
		if err := p.run(ctx); err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT gs_plan_member"); err != nil {
			return nil, err
		}
		res.Tables = append(res.Tables, p.res)
	}

	// The cutover of every table in one transaction, planned by the
	// cutover package on a catalog where every table is adopted and every
	// green exists with its triggers: each table's own rehearsal sees the
	// other tables unadopted, so its swap would point a foreign key to
	// another member at that member's app name (a view at cutover) rather
	// than at its green.
	swap, swapErr := rehearseTablesSwap(ctx, env, tx, s, order)
	if swap != nil {
		for i, t := range res.Tables {
			if i >= len(swap.Members) {
				break
			}
			for j := range t.Steps {
				if t.Steps[j].Name != "cutover" {
					continue
				}
				st := swap.Members[i].Step()
				st.Name, st.SQL = "cutover", append(st.SQL, swap.Members[i].After...)
				st.Description = fmt.Sprintf("this table's part of the migration's one cutover transaction: %s now reads green", t.Table)
				t.Steps[j].Step, t.Steps[j].Exact = st, true
				t.Steps[j].Note = "as the cutover command plans it, every table of the migration adopted and its green built, on this rehearsed catalog; " +
					"the migration's cutover step runs every table's in one transaction"
			}
		}
	}
	add := func(st shadow.Step, note string) {
		res.Steps = append(res.Steps, PlanStep{N: len(res.Steps) + 1, Step: st, Command: "sync", Exact: false, Note: note})
	}
	addCutover := func() {
		st := shadow.Step{Name: "cutover", Description: "one transaction: every app name (" + strings.Join(tables, ", ") + ") now reads its green",
			Transactional: true}
		note := "as the cutover command plans it on this rehearsed catalog (every table adopted, every green built); it plans again at run time"
		exact := swap != nil
		if swap != nil {
			st = swap.Step()
			st.Description = "one transaction: every app name (" + strings.Join(tables, ", ") + ") now reads its green (rollback: the same swap back)"
			if len(swap.After) > 0 {
				st.SQL = append(st.SQL, swap.After...)
				note += fmt.Sprintf("; the last %d statements (VALIDATE of the foreign keys it moves NOT VALID) run after the swap commits, each in its own transaction", len(swap.After))
			}
		} else {
			note = "the cutover command plans it at run time; planning it on this rehearsal failed: " + shadow.ErrText(swapErr)
		}
		res.Steps = append(res.Steps, PlanStep{N: len(res.Steps) + 1, Step: st, Command: "cutover", Exact: exact, Note: note})
	}
	const coming = "rehearsed here as one transaction; sync for several tables is coming (today it refuses them)"
	add(shadow.Step{
		Name:        "create-greens",
		Description: "create every green in dependency order (" + strings.Join(tables, " → ") + "), without the foreign keys among them",
		SQL:         createSQL,
		Lock:        "none on the app tables (new tables in " + names.GreenSchema + ")",
		LockHold:    "-", Transactional: true,
	}, coming+"; each table's own section shows its adopt, green and triggers as the one-table sync runs them")
	if len(fks) > 0 {
		var addSQL, validate, rels []string
		for _, g := range fks {
			addSQL = append(addSQL, g.Add)
			validate = append(validate, g.Validate)
			rels = append(rels, g.Child.String()+" → "+g.Parent.String())
		}
		add(shadow.Step{
			Name:        "add-foreign-keys",
			Description: "once every green exists: the foreign keys among the greens, NOT VALID (checked for new rows, the copied ones are not scanned): " + strings.Join(rels, ", "),
			SQL:         addSQL,
			Lock:        "SHARE ROW EXCLUSIVE on each referencing and referenced green (blue untouched)",
			LockHold:    "milliseconds (catalog only)", Transactional: true,
		}, coming+"; a foreign key column and the key it references were checked to have the same type")
		add(shadow.Step{
			Name:        "validate-foreign-keys",
			Description: "after every copy: validate the foreign keys among the greens",
			SQL:         validate,
			Lock:        "SHARE UPDATE EXCLUSIVE on the referencing green, ROW SHARE on the referenced one (no write blocked)",
			LockHold:    "a scan of the referencing green", Transactional: true,
		}, coming)
	}
	addCutover()
	return res, nil
}

// rehearseTablesSwap plans the cutover of every table of s in one
// transaction (cutover.PlanSwap with every member) on the catalog sync
// leaves: in a savepoint it rolls back, every table adopted, every green
// created from its whole target.ddl (the foreign keys among the greens
// included, as they are once sync added them back) with its sync
// triggers, and reverse sync on. A failure is returned for plan to report; the
// transaction is left as it was either way.
func rehearseTablesSwap(ctx context.Context, env *Env, tx pgx.Tx, s *spec.Spec, order []int) (*cutover.SwapPlan, error) {
	if _, err := tx.Exec(ctx, "SAVEPOINT gs_plan_swap"); err != nil {
		return nil, err
	}
	plan, err := func() (*cutover.SwapPlan, error) {
		var names []shadow.Names
		for k, i := range order {
			m := s.Member(i)
			n := shadow.MemberNamesFor(s.Name, m.AppTable(), true)
			names = append(names, n)
			app, err := loadApp(ctx, tx, m)
			if err != nil {
				return nil, err
			}
			step := shadow.AdoptStep(n, app, env.ServerMajor)
			if k > 0 {
				step.SQL = withoutSchema(step.SQL, n.BlueSchema)
			}
			if err := execStep(ctx, tx, step); err != nil {
				return nil, err
			}
		}
		for k, i := range order {
			if _, err := createMemberGreenTx(ctx, tx, s.Member(i), names[k], k == 0); err != nil {
				return nil, err
			}
		}
		for _, n := range names {
			for _, q := range trigger.SetReverseSQL(n, true) {
				if _, err := tx.Exec(ctx, q); err != nil {
					return nil, err
				}
			}
		}
		return cutover.PlanSwap(ctx, tx, cutover.SwapInput{Migration: s.Name, Names: names[0], Direction: cutover.ToGreen,
			ServerMajor: env.ServerMajor, Members: names})
	}()
	if _, rerr := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT gs_plan_swap"); rerr != nil {
		return nil, rerr
	}
	return plan, err
}

// rehearseGreenLinks creates every green (without the foreign keys among
// them), compares the foreign keys' column types, adds them NOT VALID and
// validates them, in a savepoint it rolls back. It returns the foreign keys
// and the creating SQL.
func rehearseGreenLinks(ctx context.Context, tx pgx.Tx, s *spec.Spec, order []int) ([]shadow.GreenForeignKey, []string, error) {
	if _, err := tx.Exec(ctx, "SAVEPOINT gs_plan_links"); err != nil {
		return nil, nil, err
	}
	names := shadow.MemberNamesFor(s.Name, spec.QualifiedName{}, true)
	createSQL := []string{"CREATE SCHEMA " + db.Ident(names.GreenSchema)}
	if _, err := tx.Exec(ctx, createSQL[0]); err != nil {
		return nil, nil, fmt.Errorf("rehearse the green schema %s: %w", names.GreenSchema, err)
	}
	for _, i := range order {
		m := s.Member(i)
		stmts := []string{
			"SET LOCAL search_path TO " + db.Ident(names.GreenSchema) + ", " + db.Ident(m.AppTable().Schema),
			strings.TrimRight(strings.TrimSpace(shadow.MemberGreenDDL(s, i)), ";"),
		}
		for _, part := range m.Target.Partitions {
			stmts = append(stmts, strings.TrimRight(strings.TrimSpace(part), ";"))
		}
		for _, q := range stmts {
			if _, err := tx.Exec(ctx, q); err != nil {
				if isDataError(err) {
					return nil, nil, m.Errorf("target.ddl", "fix the CREATE TABLE statement", "creating the green fails: %s", shadow.ErrText(err))
				}
				return nil, nil, fmt.Errorf("rehearse the green of %s: %w", m.AppTable(), err)
			}
		}
		createSQL = append(createSQL, stmts...)
	}
	createSQL = append(createSQL, "RESET search_path")
	if _, err := tx.Exec(ctx, "RESET search_path"); err != nil {
		return nil, nil, err
	}
	fks := shadow.GreenForeignKeys(s)
	if err := shadow.CheckForeignKeyTypes(ctx, tx, s, fks); err != nil {
		return nil, nil, err
	}
	if err := shadow.CheckForeignKeyActions(ctx, tx, s, fks); err != nil {
		return nil, nil, err
	}
	for _, g := range fks {
		for _, q := range []string{g.Add, g.Validate} {
			if _, err := tx.Exec(ctx, q); err != nil {
				if isDataError(err) {
					return nil, nil, s.Errorf(g.Field, "fix the REFERENCES clause", "the foreign key %s cannot be created between the greens: %s", g.Name, shadow.ErrText(err))
				}
				return nil, nil, fmt.Errorf("rehearse the foreign key %s: %w", g.Name, err)
			}
		}
	}
	if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT gs_plan_links"); err != nil {
		return nil, nil, err
	}
	return fks, createSQL, nil
}
