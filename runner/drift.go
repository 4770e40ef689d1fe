package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// The drift check (design trap 16): greenswap records a fingerprint of
// the objects it built (shadow.Fingerprint: the app-name view, blue and
// green of every table of the migration) in the transaction of each step
// that changes them, and compares it with the catalog before verify,
// cutover, rollback (a warning) and finalize. A migration of several
// tables has one fingerprint holding every table's three objects, each
// tagged with its table, in greenswap.migrations.fingerprint like one
// table's.

// DriftError refuses a step because blue, green or the app-name view (of
// any table of the migration) was changed outside greenswap since
// greenswap last changed them, or because their privileges disagree
// (exit 3, nothing changed).
type DriftError struct {
	Migration string
	Step      string
	Drift     []shadow.Drift
	// Uncarried: verify --accept-drift was asked for, but these changes
	// cannot be accepted (Drift holds only them).
	Uncarried bool
}

func (e *DriftError) Error() string {
	var b strings.Builder
	if e.Uncarried {
		// One line: each change with its table and column, why, and its undo.
		fmt.Fprintf(&b, "%s --accept-drift %s refused, nothing was recorded: %d change(s) would leave the sync writing with a mapping that no longer matches: ",
			e.Step, e.Migration, len(e.Drift))
		for i, d := range e.Drift {
			if i > 0 {
				b.WriteString("; ")
			}
			b.WriteString(d.String())
			if d.Fix != "" {
				fmt.Fprintf(&b, " (fix: %s)", d.Fix)
			}
		}
		fmt.Fprintf(&b, ". Undo them, or `greenswap rollback %s` and plan again with them in the spec", e.Migration)
		return b.String()
	}
	fmt.Fprintf(&b, "%s %s refused, nothing was changed: %d change(s) made outside greenswap since its last step:",
		e.Step, e.Migration, len(e.Drift))
	for _, d := range e.Drift {
		fmt.Fprintf(&b, "\n  %s", d)
		if d.Fix != "" {
			fmt.Fprintf(&b, "\n      fix: %s", d.Fix)
		}
	}
	fmt.Fprintf(&b, "\nApply the same change to the other shape(s) or undo it, then `greenswap verify %s` "+
		"(`--accept-drift` records a change mirrored on every shape); or `greenswap rollback %s`", e.Migration, e.Migration)
	return b.String()
}

// ExitCode is exit 3 (blocked).
func (e *DriftError) ExitCode() exitcode.Code { return exitcode.Blocked }

// driftCheck is the outcome of comparing the catalog with the record.
type driftCheck struct {
	Current  *shadow.Fingerprint
	Recorded *shadow.Fingerprint // nil: none was recorded (an older greenswap did not)
	Changes  []shadow.Drift      // recorded vs current
	ACL      []shadow.Drift      // the shapes' privileges disagree
}

func (c *driftCheck) all() []shadow.Drift { return append(slices.Clone(c.Changes), c.ACL...) }

// takeFingerprint reads the fingerprint of every table of sp's migration.
func takeFingerprint(ctx context.Context, q shadow.TxBeginner, sp *spec.Spec) (*shadow.Fingerprint, error) {
	return shadow.TakeFingerprints(ctx, q, MemberNames(sp), sp.MultiTable())
}

// recordedFingerprint reads the migration's recorded fingerprint: nil
// when there is none to compare with (none recorded, as for a migration
// an older greenswap started, or of a version that is not comparable).
func recordedFingerprint(ctx context.Context, q pgx.Tx, name string) (*shadow.Fingerprint, error) {
	js, err := state.Fingerprint(ctx, q, name)
	if err != nil || js == nil {
		return nil, err
	}
	var rec shadow.Fingerprint
	if err := json.Unmarshal(js, &rec); err != nil {
		return nil, fmt.Errorf("decode the recorded fingerprint of %s: %w", name, err)
	}
	if !rec.Comparable() {
		return nil, nil
	}
	return &rec, nil
}

// checkDrift compares the migration's objects with the fingerprint
// recorded at greenswap's last step, and the privileges of blue and green
// with the app view's, for every table. A migration with no recorded
// fingerprint (started by an older greenswap) gets the current one
// recorded as its baseline when the privileges agree, and is not refused
// for the rest; one recorded by an older version is compared for what it
// holds and brought up to date (its indexes become the baseline).
func checkDrift(ctx context.Context, env *Env, m *Migration) (*driftCheck, error) {
	if err := state.Upgrade(ctx, env.Pool); err != nil {
		return nil, fmt.Errorf("upgrade the greenswap state schema: %w", err)
	}
	tx, err := env.Pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx)
	cur, err := takeFingerprint(ctx, tx, m.Spec)
	if err != nil {
		return nil, err
	}
	c := &driftCheck{Current: cur, ACL: shadow.PrivilegeDrift(cur)}
	rec, err := recordedFingerprint(ctx, tx, m.Spec.Name)
	if err != nil {
		return nil, err
	}
	name := m.Spec.Name
	if rec != nil {
		c.Recorded = rec
		c.Changes = shadow.DiffFingerprints(rec, cur)
		if m.Row.State == state.Syncing {
			// The index and foreign-key phases are building green's
			// target.indexes and the foreign keys among the greens:
			// greenswap's work in progress, recorded once synced
			// (recordGreenWork); a deploy's own is named from then on.
			c.Changes = slices.DeleteFunc(c.Changes, func(d shadow.Drift) bool {
				return d.Role == "green" && (d.Kind == "index" || d.Kind == "constraint")
			})
		}
		if rec.Version == shadow.FingerprintVersion {
			return c, nil
		}
		rec.Upgrade(cur)
		if err := state.SetFingerprint(ctx, tx, name, rec); err != nil {
			return nil, err
		}
		return c, tx.Commit(ctx)
	}
	if len(c.ACL) == 0 {
		if err := state.SetFingerprint(ctx, tx, name, cur); err != nil {
			return nil, err
		}
		if err := state.Record(ctx, tx, name, "fingerprint", "baseline", 0, "",
			map[string]any{"note": "no fingerprint recorded (an older greenswap started this migration): the current one is the baseline"}); err != nil {
			return nil, err
		}
	}
	return c, tx.Commit(ctx)
}

// refuseOnDrift runs checkDrift for step and returns a *DriftError naming
// every change, after recording a refused event.
func refuseOnDrift(ctx context.Context, env *Env, m *Migration, step string) error {
	c, err := checkDrift(ctx, env, m)
	if err != nil {
		return err
	}
	if d := c.all(); len(d) > 0 {
		_ = state.Record(context.WithoutCancel(ctx), env.Pool, m.Spec.Name, step, "drift", 0, "", map[string]any{"drift": d})
		return &DriftError{Migration: m.Spec.Name, Step: step, Drift: d}
	}
	return nil
}

// verifyDrift refuses (exit 3) a migration whose objects drifted, marking
// its last verify failed so cutover needs a new one; with accept, a change
// of definitions (not of privileges, which must agree) is recorded as the
// new baseline instead, unless greenswap could not carry it (a column it
// does not sync, a relation gone: refused, exit 3, nothing recorded).
func verifyDrift(ctx context.Context, env *Env, m *Migration, accept bool) error {
	c, err := checkDrift(ctx, env, m)
	if err != nil {
		return err
	}
	name := m.Spec.Name
	if accept && len(c.Changes) > 0 && len(c.ACL) == 0 {
		primary := "blue"
		if m.Row.State == state.CutOver {
			primary = "green"
		}
		shadow.CarryDrift(c.Current, c.Changes, primary)
		if un := slices.DeleteFunc(slices.Clone(c.Changes), func(d shadow.Drift) bool { return !d.Uncarried }); len(un) > 0 {
			rctx := context.WithoutCancel(ctx)
			_ = state.Record(rctx, env.Pool, name, "accept-drift", "refused", 0, "", map[string]any{"drift": un})
			if err := state.SetVerifyFailed(rctx, env.Pool, name); err != nil {
				return err
			}
			return &DriftError{Migration: name, Step: VerifyStep, Drift: un, Uncarried: true}
		}
		tx, err := env.Pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		if err := state.SetFingerprint(ctx, tx, name, c.Current); err != nil {
			return err
		}
		if err := state.Record(ctx, tx, name, "accept-drift", "ok", 0, "", map[string]any{"drift": c.Changes}); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		env.Log.Warn().Str("migration", name).Int("changes", len(c.Changes)).Msg("verify --accept-drift: recorded the objects as they are now")
		return nil
	}
	d := c.all()
	if len(d) == 0 {
		return nil
	}
	rctx := context.WithoutCancel(ctx)
	_ = state.Record(rctx, env.Pool, name, VerifyStep, "drift", 0, "", map[string]any{"drift": d})
	if err := state.SetVerifyFailed(rctx, env.Pool, name); err != nil {
		return err
	}
	return &DriftError{Migration: name, Step: VerifyStep, Drift: d}
}

// recordFingerprintOf records, inside tx, the current state of only the
// objects a step changed (roles "app", "blue", "green", of every table),
// the others as recorded before: a sync phase that creates green must not
// make a change an app deploy made to the view or blue meanwhile part of
// the baseline. With no usable recorded fingerprint (an older greenswap's
// row) it records everything as it is.
func recordFingerprintOf(ctx context.Context, tx pgx.Tx, sp *spec.Spec, roles ...string) error {
	return updateFingerprint(ctx, tx, sp, len(roles) > 0, func(rec, cur *shadow.ObjectPrint) {
		if slices.Contains(roles, rec.Role) {
			*rec = *cur
		}
	})
}

// recordGreenWork records, inside tx, what sync built on the greens after
// create-green recorded them, and nothing else: their indexes (the index
// phase's target.indexes) and, for several tables, the foreign keys among
// them (dropped for the copy and added back after it).
func recordGreenWork(ctx context.Context, tx pgx.Tx, sp *spec.Spec) error {
	own, err := greenFKNames(ctx, tx, sp)
	if err != nil {
		return err
	}
	return updateFingerprint(ctx, tx, sp, true, func(rec, cur *shadow.ObjectPrint) {
		if rec.Role != "green" {
			return
		}
		rec.Indexes = cur.Indexes
		cons := slices.DeleteFunc(slices.Clone(rec.Constraints), func(d shadow.NamedDef) bool { return own[rec.Name+"|"+d.Name] })
		for _, d := range cur.Constraints {
			if own[rec.Name+"|"+d.Name] {
				cons = append(cons, d)
			}
		}
		slices.SortFunc(cons, func(a, b shadow.NamedDef) int { return strings.Compare(a.Name, b.Name) })
		rec.Constraints = cons
	})
}

// greenFKNames are the foreign keys among the greens that sync adds back
// after the copy, as "green.table|constraint" (none for one table).
func greenFKNames(ctx context.Context, q pgx.Tx, sp *spec.Spec) (map[string]bool, error) {
	own := map[string]bool{}
	if !sp.MultiTable() {
		return own, nil
	}
	row, err := state.Get(ctx, q, sp.Name)
	if err != nil {
		return nil, err
	}
	fks, err := row.GreenFKs()
	if err != nil {
		return nil, err
	}
	greens := map[string]string{} // quoted → as the fingerprint names it
	for _, n := range MemberNames(sp) {
		greens[db.Ident(n.Green.Schema, n.Green.Name)] = n.Green.String()
	}
	for _, fk := range fks {
		own[greens[fk.Table]+"|"+fk.Name] = true
	}
	return own, nil
}

// updateFingerprint applies update to each recorded object and the same
// object now, and records the result (when changes says it may differ);
// without a usable record it records everything as it is.
func updateFingerprint(ctx context.Context, tx pgx.Tx, sp *spec.Spec, changes bool, update func(rec, cur *shadow.ObjectPrint)) error {
	rec, err := recordedFingerprint(ctx, tx, sp.Name)
	if err != nil {
		return err
	}
	if rec == nil {
		return recordFingerprint(ctx, tx, sp, nil)
	}
	if !changes {
		return nil
	}
	cur, err := takeFingerprint(ctx, tx, sp)
	if err != nil {
		return err
	}
	rec.Upgrade(cur)
	for i := range rec.Objects {
		if o := cur.ObjectOf(rec.Objects[i].Table, rec.Objects[i].Role); o != nil {
			update(&rec.Objects[i], o)
		}
	}
	return state.SetFingerprint(ctx, tx, sp.Name, rec)
}

// recordFingerprint records the objects of every table as they are now,
// inside tx: the transaction of the greenswap step that changed them.
// keep (may be nil) is drift the step went ahead despite (rollback): its
// parts keep their recorded state, so later checks still report it.
func recordFingerprint(ctx context.Context, tx pgx.Tx, sp *spec.Spec, keep *driftCheck) error {
	fp, err := takeFingerprint(ctx, tx, sp)
	if err != nil {
		return err
	}
	if keep != nil && keep.Recorded != nil && len(keep.Changes) > 0 {
		fp = shadow.KeepDrifted(keep.Recorded, fp, keep.Changes)
	}
	return state.SetFingerprint(ctx, tx, sp.Name, fp)
}
