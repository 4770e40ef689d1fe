package cutover

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// Direction says which way a swap moves the app name.
type Direction string

const (
	// ToGreen is cutover: the app name reads green, green is primary.
	ToGreen Direction = "cutover"
	// ToBlue is rollback after cutover: the app name reads blue again.
	ToBlue Direction = "rollback"
)

// SwapPlan is what one swap does, computed from the catalog: the locks in
// the order they are taken, then the statements run under them in the same
// transaction, then the statements run after it commits.
type SwapPlan struct {
	Migration string             `json:"migration"`
	Direction Direction          `json:"direction"`
	App       spec.QualifiedName `json:"app"`
	From      spec.QualifiedName `json:"from"` // the table the app name reads before
	To        spec.QualifiedName `json:"to"`   // and after
	// RowTypeChanged: the app name's columns change (names, types, order).
	// The view is dropped and created again; clients holding prepared
	// statements on it get one "cached plan must not change result type"
	// error per statement (trap 6).
	RowTypeChanged bool `json:"row_type_changed"`
	// ViewMode is "replace" (CREATE OR REPLACE VIEW: nothing else moves) or
	// "rebuild" (dependent views dropped and created again around it).
	ViewMode string        `json:"view_mode"`
	Views    []*viewMeta   `json:"dependent_views,omitempty"` // rebuilt, in creation order
	MovedFKs []*foreignKey `json:"moved_foreign_keys,omitempty"`
	AddedFKs []*foreignKey `json:"added_foreign_keys,omitempty"`
	Triggers []TriggerMove `json:"user_triggers,omitempty"`
	Policies []string      `json:"policies_added,omitempty"`
	Locks    []LockTarget  `json:"locks"`
	SQL      []string      `json:"sql"`             // under the locks, one transaction
	After    []string      `json:"after,omitempty"` // each in its own short transaction once the swap committed
	Warnings []string      `json:"warnings,omitempty"`
	// Members is each table's own plan, in dependency order, when the
	// migration has several tables (this plan is then their union).
	Members []*SwapPlan `json:"members,omitempty"`
	// SplitViews are the views a split's cutover gives its greens in the
	// app schema (swap_split.go).
	SplitViews []SplitGreenView `json:"split_green_views,omitempty"`
	blueOID    uint32
	greenOID   uint32
	validate   []*foreignKey // what After validates
	fpOIDs     []uint32      // relations the fingerprint covers
	fp         string        // fingerprint the plan was made from
	fromTable  *shadow.Table // as loaded
	toTable    *shadow.Table // as loaded
	sequences  []sequenceUse // green defaults drawing from blue's sequences
	appMeta    *viewMeta     // the app-name view as it is
	// appColGrants are the view's column privileges (CREATE OR REPLACE VIEW
	// keeps them; a view created again gets them back: viewTable).
	appColGrants []shadow.ColumnGrant
	appColNames  map[string]bool // the view's columns
	triggerSQL   []string        // the user-trigger statements, placed by buildSQL
	touchFrom    bool            // triggerSQL changes the old primary side
	touchTo      bool            // and the new one
}

// TriggerMove is one user trigger changing sides.
type TriggerMove struct {
	Name    string `json:"name"`
	Mode    string `json:"mode"`              // tgenabled it gets on the new primary side
	Created bool   `json:"created,omitempty"` // copied to green from blue's definition
	Note    string `json:"note,omitempty"`
}

// Step is the plan as a shadow.Step, for listings.
func (p *SwapPlan) Step() shadow.Step {
	sql := make([]string, 0, len(p.Locks)+len(p.SQL))
	for i, l := range p.Locks {
		// As acquire takes them: the first waited for, the others NOWAIT
		// (all released and taken again when one is busy).
		if o := l.ordered(); i == 0 {
			sql = append(sql, o.Wait)
		} else {
			sql = append(sql, o.NoWait)
		}
	}
	sql = append(sql, p.SQL...)
	modes := make([]string, len(p.Locks))
	for i, l := range p.Locks {
		modes[i] = l.Mode + " on " + l.Rel.String()
	}
	return shadow.Step{
		Name:          string(p.Direction),
		Description:   fmt.Sprintf("point %s at %s in one transaction", p.App, p.To),
		SQL:           sql,
		Lock:          strings.Join(modes, ", "),
		LockHold:      "milliseconds (catalog changes only; no rows are touched)",
		Transactional: true,
	}
}

// SwapInput names what to swap.
type SwapInput struct {
	Migration   string
	Names       shadow.Names
	Direction   Direction
	ServerMajor int
	// Members are the names of every table of a migration of several
	// tables, in dependency order (nil for one table): PlanSwap then plans
	// every one of them into one plan, one transaction.
	Members []shadow.Names
}

func (in SwapInput) sides() (from, to spec.QualifiedName) {
	if in.Direction == ToGreen {
		return in.Names.Blue, in.Names.Green
	}
	return in.Names.Green, in.Names.Blue
}

// PlanSwap reads the catalog through q and returns the swap's plan. It
// changes nothing but the transaction-local search_path of q (when q is a
// transaction). Precondition failures (objects missing, sync off, an FK
// green cannot carry) are exit code 2.
func PlanSwap(ctx context.Context, q db.Querier, in SwapInput) (*SwapPlan, error) {
	if err := setPath(ctx, q, catalogPath); err != nil {
		return nil, err
	}
	if len(in.Members) > 1 {
		return planSwapMembers(ctx, q, in)
	}
	return planSwapOne(ctx, q, in, nil)
}

// planSwapOne plans the swap of one table. among holds the blue and green
// of every table of the migration (nil for one table): foreign keys among
// them stay where they are, blue's to blue and green's to green.
func planSwapOne(ctx context.Context, q db.Querier, in SwapInput, among map[uint32]bool) (*SwapPlan, error) {
	n := in.Names
	from, to := in.sides()
	p := &SwapPlan{Migration: in.Migration, Direction: in.Direction, App: n.App, From: from, To: to}

	app, blue, green, err := findMigrationRelations(ctx, q, n)
	if err != nil {
		return nil, err
	}
	if app == nil || app.Kind != "v" {
		return nil, exitcode.Errorf(exitcode.BadInput, "%s is not greenswap's view (the migration is not adopted, or was finalized)", n.App)
	}
	if blue == nil || green == nil {
		return nil, exitcode.Errorf(exitcode.BadInput, "%s or %s is missing: sync has not built the migration", n.Blue, n.Green)
	}
	p.blueOID, p.greenOID = blue.OID, green.OID
	fromRel, toRel := blue, green
	if in.Direction == ToBlue {
		fromRel, toRel = green, blue
	}
	// Bidirectional sync must be on, or a switch-back would lose writes.
	fwd, err := syncTriggerState(ctx, q, blue.OID, n.Trigger)
	if err != nil {
		return nil, err
	}
	rev, err := syncTriggerState(ctx, q, green.OID, n.Trigger)
	if err != nil {
		return nil, err
	}
	if fwd == "" || fwd == "D" || rev == "" || rev == "D" {
		return nil, exitcode.Errorf(exitcode.BadInput,
			"sync is not bidirectional (trigger %s on %s: %s; on %s: %s): run `greenswap sync` until the migration is synced",
			n.Trigger, n.Blue, trigState(fwd), n.Green, trigState(rev))
	}

	if p.fromTable, err = shadow.LoadTable(ctx, q, from); err != nil {
		return nil, err
	}
	if p.toTable, err = shadow.LoadTable(ctx, q, to); err != nil {
		return nil, err
	}
	appCols, err := loadColumns(ctx, q, app.OID)
	if err != nil {
		return nil, err
	}
	toCols, err := loadColumns(ctx, q, toRel.OID)
	if err != nil {
		return nil, err
	}
	p.RowTypeChanged = !sameRowType(appCols, toCols)
	p.appMeta = &viewMeta{OID: app.OID, Name: n.App}
	if err := loadViewMeta(ctx, q, p.appMeta); err != nil {
		return nil, err
	}
	if p.appColGrants, err = shadow.LoadColumnGrants(ctx, q, app.OID); err != nil {
		return nil, err
	}
	p.appColNames = map[string]bool{}
	for _, c := range appCols {
		p.appColNames[c.Name] = true
	}

	// Dependent views. At cutover, views that read blue itself (those that
	// existed before adopt) are moved over to the app name.
	roots, repoint := []uint32{app.OID}, uint32(0)
	if in.Direction == ToGreen {
		roots, repoint = append(roots, blue.OID), blue.OID
	}
	deps, err := loadDependents(ctx, q, roots, repoint, n.BlueSchema, n.App.Schema)
	if err != nil {
		return nil, err
	}
	rebuild := p.RowTypeChanged || slices.ContainsFunc(deps, func(v *viewMeta) bool { return v.Repoint })
	p.ViewMode = "replace"
	if rebuild {
		p.ViewMode, p.Views = "rebuild", deps
		for _, v := range deps {
			if v.Materialized && v.Populated {
				p.Warnings = append(p.Warnings, fmt.Sprintf("materialized view %s is created again and refilled inside the swap: its query runs while the locks are held", v.Name))
			}
		}
	}

	// Foreign keys referencing the old primary move to the new one.
	in1, err := incomingFKs(ctx, q, fromRel.OID, in.ServerMajor)
	if err != nil {
		return nil, err
	}
	for _, f := range in1 {
		if f.TableOID == toRel.OID || among[f.TableOID] {
			continue
		}
		ok, err := hasUniqueOn(ctx, q, toRel.OID, f.RefColumns)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, exitcode.Errorf(exitcode.BadInput,
				"foreign key %s on %s references %s (%s), but %s has no unique index on exactly those columns: "+
					"add one (target.ddl or target.indexes) so the constraint can move", f.Name, f.Table, from,
				strings.Join(f.RefColumns, ", "), to)
		}
		p.MovedFKs = append(p.MovedFKs, f)
	}
	// Blue's own FKs to other tables: green gets those it lacks.
	if in.Direction == ToGreen {
		if err := p.planOutgoing(ctx, q, blue.OID, green.OID, toCols, in.ServerMajor, among); err != nil {
			return nil, err
		}
	}
	if err := p.planTriggers(ctx, q, fromRel.OID, toRel.OID); err != nil {
		return nil, err
	}
	if in.Direction == ToGreen {
		p.planPolicies()
		if p.sequences, err = defaultSequences(ctx, q, green.OID); err != nil {
			return nil, err
		}
	}
	usage, err := usageState(ctx, q, n, blue.OID)
	if err != nil {
		return nil, err
	}

	// Locks, in the documented order (see LockTarget).
	var ls lockSet
	if rebuild {
		for i := len(deps) - 1; i >= 0; i-- {
			ls.addView(deps[i], "dropped and created again")
		}
	}
	ls.addView(p.appMeta, "re-pointed at "+to.String())
	for _, f := range p.MovedFKs {
		ls.add(f.Table, f.TableOID, AccessExclusive, "foreign key "+f.Name+" moves to "+to.String())
	}
	for _, f := range p.AddedFKs {
		ls.add(f.RefTable, f.RefOID, ShareRowExclusive, "foreign key "+f.Name+" added on "+to.String())
	}
	need := map[uint32][]string{} // oid → mode, why
	want := func(oid uint32, mode, why string) {
		if cur := need[oid]; cur == nil || modeRank(mode) > modeRank(cur[0]) {
			need[oid] = []string{mode, why}
		} else if !strings.Contains(cur[1], why) {
			cur[1] += "; " + why
		}
	}
	if p.touchFrom {
		want(fromRel.OID, ShareRowExclusive, "user triggers")
	}
	if p.touchTo {
		want(toRel.OID, ShareRowExclusive, "user triggers")
	}
	if len(p.MovedFKs) > 0 {
		want(fromRel.OID, AccessExclusive, "foreign keys referencing it are dropped")
		want(toRel.OID, ShareRowExclusive, "foreign keys now reference it")
	}
	if len(p.AddedFKs) > 0 {
		want(green.OID, ShareRowExclusive, "foreign keys added")
	}
	if in.Direction == ToGreen && !usage.trigger {
		want(blue.OID, ShareRowExclusive, "usage sensor installed")
	}
	if len(p.Policies) > 0 || (p.fromTable.RLSEnabled && !p.toTable.RLSEnabled) || (p.fromTable.RLSForced && !p.toTable.RLSForced) {
		want(green.OID, AccessExclusive, "row-level security")
	}
	if nb := need[blue.OID]; nb != nil {
		ls.add(n.Blue, blue.OID, nb[0], nb[1])
	}
	if ng := need[green.OID]; ng != nil {
		ls.add(n.Green, green.OID, ng[0], ng[1])
	}
	ls.pair(blue.OID, green.OID)
	p.Locks = ls.list
	p.fpOIDs = []uint32{app.OID, blue.OID, green.OID}
	for _, l := range p.Locks {
		if !slices.Contains(p.fpOIDs, l.OID) {
			p.fpOIDs = append(p.fpOIDs, l.OID)
		}
	}
	if p.fp, err = fingerprint(ctx, q, p.fpOIDs); err != nil {
		return nil, err
	}

	p.buildSQL(in, usage)
	return p, nil
}

func trigState(s string) string {
	switch s {
	case "":
		return "missing"
	case "D":
		return "disabled"
	}
	return "enabled"
}

// planOutgoing adds to green, NOT VALID, each FK of blue's to another table
// that green does not have yet (same columns, same referenced columns).
func (p *SwapPlan) planOutgoing(ctx context.Context, q db.Querier, blueOID, greenOID uint32, greenCols []column, major int, among map[uint32]bool) error {
	bfk, err := outgoingFKs(ctx, q, blueOID, major)
	if err != nil {
		return err
	}
	gfk, err := outgoingFKs(ctx, q, greenOID, major)
	if err != nil {
		return err
	}
	names := map[string]bool{}
	for _, c := range p.toTable.Constraints {
		names[c.Name] = true
	}
	for _, f := range gfk {
		names[f.Name] = true
	}
	for _, idx := range p.toTable.Indexes {
		names[idx.Name] = true
	}
	for _, f := range bfk {
		if among[f.RefOID] { // to another blue of the migration: green has its own to that green
			continue
		}
		if slices.ContainsFunc(gfk, func(g *foreignKey) bool {
			return g.RefOID == f.RefOID && slices.Equal(g.Columns, f.Columns) && slices.Equal(g.RefColumns, f.RefColumns)
		}) {
			continue
		}
		missing := slices.ContainsFunc(f.Columns, func(c string) bool {
			return !slices.ContainsFunc(greenCols, func(g column) bool { return g.Name == c })
		})
		if missing {
			p.Warnings = append(p.Warnings, fmt.Sprintf("foreign key %s of %s is not added to %s: it lacks column(s) %s",
				f.Name, p.From, p.To, strings.Join(f.Columns, ", ")))
			continue
		}
		g := *f
		g.Table, g.TableOID = p.To, greenOID
		for names[g.Name] {
			g.Name += "_gs"
		}
		names[g.Name] = true
		p.AddedFKs = append(p.AddedFKs, &g)
	}
	return nil
}

// planTriggers moves the user triggers: they fire on the primary side only,
// so one logical write fires each once (trap 5). The new primary side gets
// each trigger in the mode it had on the old one; the old side's are
// disabled. At cutover a trigger green lacks is created from blue's
// definition.
func (p *SwapPlan) planTriggers(ctx context.Context, q db.Querier, fromOID, toOID uint32) error {
	fromTr, fromPrinted, err := loadTriggers(ctx, q, fromOID)
	if err != nil {
		return err
	}
	toTr, _, err := loadTriggers(ctx, q, toOID)
	if err != nil {
		return err
	}
	for _, t := range fromTr {
		i := slices.IndexFunc(toTr, func(x userTrigger) bool { return x.Name == t.Name })
		mv := TriggerMove{Name: t.Name, Mode: t.Enabled}
		var sql []string
		switch {
		case i >= 0:
			if toTr[i].Enabled != t.Enabled {
				sql = append(sql, triggerModeSQL(p.To, t.Name, t.Enabled))
				p.touchTo = true
			}
		case p.Direction == ToGreen:
			def, ok := retarget(t.Def, fromPrinted, p.To)
			if !ok {
				return fmt.Errorf("cannot copy trigger %s to %s: its definition does not name %s as expected: %s", t.Name, p.To, fromPrinted, t.Def)
			}
			mv.Created, p.touchTo = true, true
			sql = append(sql, def)
			if t.Enabled != "O" {
				sql = append(sql, triggerModeSQL(p.To, t.Name, t.Enabled))
			}
		default:
			mv.Note = fmt.Sprintf("exists only on %s; left as it is", p.From)
			p.Warnings = append(p.Warnings, fmt.Sprintf("trigger %s exists only on %s and stays there (it fires for every write, synced ones included)", t.Name, p.From))
			p.Triggers = append(p.Triggers, mv)
			continue
		}
		if t.Enabled != "D" {
			sql = append(sql, triggerModeSQL(p.From, t.Name, "D"))
			p.touchFrom = true
		}
		p.Triggers = append(p.Triggers, mv)
		p.triggerSQL = append(p.triggerSQL, sql...)
	}
	for _, t := range toTr {
		if !slices.ContainsFunc(fromTr, func(x userTrigger) bool { return x.Name == t.Name }) && t.Enabled != "D" && p.Direction == ToBlue {
			p.Warnings = append(p.Warnings, fmt.Sprintf("trigger %s exists only on %s and is left as it is", t.Name, p.To))
		}
	}
	return nil
}

// planPolicies gives green blue's row-level security: enabled (and forced)
// like blue, with every policy of blue's it lacks (same name).
func (p *SwapPlan) planPolicies() {
	if !p.fromTable.RLSEnabled && len(p.fromTable.Policies) == 0 {
		return
	}
	from := " ON " + db.Ident(p.From.Schema, p.From.Name) + " "
	to := " ON " + db.Ident(p.To.Schema, p.To.Name) + " "
	for _, pol := range p.fromTable.Policies {
		if slices.ContainsFunc(p.toTable.Policies, func(x shadow.Policy) bool { return x.Name == pol.Name }) {
			continue
		}
		p.Policies = append(p.Policies, strings.Replace(pol.Def, from, to, 1))
	}
}

// buildSQL lays out the statements run under the locks.
func (p *SwapPlan) buildSQL(in SwapInput, usage usageObjects) {
	rel := db.Ident(p.To.Schema, p.To.Name)
	var sql []string
	if in.Direction == ToGreen {
		if p.fromTable.RLSEnabled && !p.toTable.RLSEnabled {
			sql = append(sql, "ALTER TABLE "+rel+" ENABLE ROW LEVEL SECURITY")
		}
		if p.fromTable.RLSForced && !p.toTable.RLSForced {
			sql = append(sql, "ALTER TABLE "+rel+" FORCE ROW LEVEL SECURITY")
		}
		sql = append(sql, p.Policies...)
		sql = append(sql, sequenceGrantSQL(p.sequences, p.fromTable.Grants)...)
	}
	// The app name.
	viewTable := p.viewTable()
	create := shadow.ViewSQL(p.App, p.To, viewTable, in.ServerMajor)
	if p.ViewMode == "rebuild" {
		for i := len(p.Views) - 1; i >= 0; i-- {
			sql = append(sql, p.Views[i].dropSQL())
		}
	}
	if p.RowTypeChanged {
		keep := map[string]bool{}
		for _, c := range viewTable.Columns {
			keep[c.Name] = true
		}
		sql = append(sql, "DROP VIEW "+db.Ident(p.App.Schema, p.App.Name))
		sql = append(sql, create...)
		sql = append(sql, p.appMeta.extrasSQL(keep, false)...)
	} else {
		sql = append(sql, strings.Replace(create[0], "CREATE VIEW ", "CREATE OR REPLACE VIEW ", 1))
	}
	if p.ViewMode == "rebuild" {
		for _, v := range p.Views {
			sql = append(sql, v.createSQL()...)
		}
	}
	// Foreign keys.
	for _, f := range p.MovedFKs {
		sql = append(sql, f.dropSQL(), f.addSQL(p.To))
		if f.Validated {
			moved := *f
			p.validate = append(p.validate, &moved)
		}
	}
	for _, f := range p.AddedFKs {
		sql = append(sql, f.addSQL(f.RefTable))
		if f.Validated {
			p.validate = append(p.validate, f)
		}
	}
	sql = append(sql, p.triggerSQL...)
	if in.Direction == ToGreen && !usage.complete() {
		sql = append(sql, usageInstallSQL(in.Names, p.fromTable.Owner, usage)...)
	}
	if in.Direction == ToGreen || usage.state {
		sql = append(sql, usageSwitchSQL(in.Names, in.Direction == ToGreen))
	}
	p.SQL = sql
	p.After = nil
	for _, f := range p.validate {
		p.After = append(p.After, f.validateSQL())
	}
}

// viewTable describes the app-name view to shadow.ViewSQL: the new base
// table's columns, with the view's own owner, grants and comments. A
// column keeps the view's column privileges; one the view did not have
// takes the new base table's (the privileges of that shape's column).
func (p *SwapPlan) viewTable() *shadow.Table {
	t := &shadow.Table{Owner: p.appMeta.Owner, Grants: p.appMeta.Grants, Comment: p.appMeta.Comment,
		RLSEnabled: p.fromTable.RLSEnabled || p.toTable.RLSEnabled} // security_invoker follows RLS (shadow.ViewSQL)
	comments := map[string]string{}
	for _, c := range p.appMeta.ColComment {
		comments[c[0]] = c[1]
	}
	for _, c := range p.toTable.Columns {
		if vc, ok := comments[c.Name]; ok {
			c.Comment = vc
		}
		t.Columns = append(t.Columns, c)
		src := p.toTable.ColumnGrants
		if p.appColNames[c.Name] {
			src = p.appColGrants
		}
		for _, g := range src {
			if g.Column == c.Name {
				t.ColumnGrants = append(t.ColumnGrants, g)
			}
		}
	}
	return t
}

// SwapOptions tune Swap.
type SwapOptions struct {
	Lock shadow.LockOptions
	// OnRetry is told about each failed attempt (may be nil).
	OnRetry func(attempt int, blockers []shadow.Blocker, wait time.Duration)
	// Commit runs last inside the swap's transaction: the state change.
	Commit func(ctx context.Context, tx pgx.Tx, p *SwapPlan) error
}

// SwapResult is what a swap did.
type SwapResult struct {
	Plan     *SwapPlan     `json:"plan"`
	Attempts int           `json:"attempts"`
	LockWait time.Duration `json:"-"` // from the first LOCK statement to the first lock granted, last attempt
	// LockHold is the time the app name was locked: from the first lock
	// granted to the commit (the figure the bench reports).
	LockHold time.Duration    `json:"-"`
	Duration time.Duration    `json:"-"`                  // the whole swap, retries included
	Blockers []shadow.Blocker `json:"blockers,omitempty"` // of the last failed attempt
}

// Swap plans and runs the swap in one transaction through
// shadow.RunWithLockRetry; each attempt reads the catalog afresh. A
// *shadow.LockTimeoutError (exit 5) means every attempt gave up waiting and
// nothing changed.
func Swap(ctx context.Context, pool *pgxpool.Pool, in SwapInput, opt SwapOptions) (*SwapResult, error) {
	return swapPlanned(ctx, pool, string(in.Direction), opt, func(tx pgx.Tx) (*SwapPlan, error) { return PlanSwap(ctx, tx, in) })
}

// swapPlanned runs the swap plan makes (in each attempt's transaction)
// through runPlanned, with opt.Commit inside the transaction.
func swapPlanned(ctx context.Context, pool *pgxpool.Pool, direction string, opt SwapOptions, plan func(pgx.Tx) (*SwapPlan, error)) (*SwapResult, error) {
	var commit func(tx pgx.Tx, p *SwapPlan) error
	if opt.Commit != nil {
		commit = func(tx pgx.Tx, p *SwapPlan) error { return opt.Commit(ctx, tx, p) }
	}
	planned, st, err := runPlanned(ctx, pool, direction, opt, plan, nil, commit)
	return &SwapResult{Plan: planned, Attempts: st.Attempts, LockWait: st.LockWait, LockHold: st.LockHold,
		Duration: st.Duration, Blockers: st.Blockers}, err
}

// Validation is one VALIDATE CONSTRAINT run after the swap.
type Validation struct {
	SQL        string  `json:"sql"`
	DurationMS float64 `json:"duration_ms"`
	Error      string  `json:"error,omitempty"`
}

// Validate runs the plan's After statements (VALIDATE CONSTRAINT: a SHARE
// UPDATE EXCLUSIVE lock, writers carry on), each in its own transaction
// with the lock retry. A failure is reported, not fatal: the constraint
// stays NOT VALID (enforced for new rows) and is named.
func Validate(ctx context.Context, pool *pgxpool.Pool, p *SwapPlan, lock shadow.LockOptions) []Validation {
	return validateAll(ctx, pool, p.After, lock)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 160 {
		s = s[:160] + "…"
	}
	return s
}
