package cutover

import (
	"context"
	"slices"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
)

// planSwapMembers is PlanSwap for a migration of several tables: each
// table's swap planned as for one table (in.Members, dependency order) and
// joined into one plan, run in one transaction (all or none). The foreign
// keys among the migration's tables are left alone (blue's reference blue,
// green's green: sync built them so); those from tables outside it move.
//
// Locks, one budget for all: every view of every table first (dependent
// views outermost first, then the app views, in dependency order), then
// the other tables whose constraints change, then each table's blue/green
// pair (each taken with the pair loop, see LockTarget). Views before
// tables for the reason LockTarget gives for one table; the pairs in
// dependency order because writers reach a referenced table before its
// children (an insert of an order's items checks the order; a delete of an
// order cascades to its items).
func planSwapMembers(ctx context.Context, q db.Querier, in SwapInput) (*SwapPlan, error) {
	among := map[uint32]bool{}
	for _, n := range in.Members {
		_, blue, green, err := findMigrationRelations(ctx, q, n)
		if err != nil {
			return nil, err
		}
		if blue == nil || green == nil {
			return nil, exitcode.Errorf(exitcode.BadInput, "%s or %s is missing: sync has not built the migration", n.Blue, n.Green)
		}
		among[blue.OID], among[green.OID] = true, true
	}
	var subs []*SwapPlan
	for _, n := range in.Members {
		one := in
		one.Names, one.Members = n, nil
		p, err := planSwapOne(ctx, q, one, among)
		if err != nil {
			return nil, err
		}
		subs = append(subs, p)
	}
	first := subs[0]
	out := &SwapPlan{Migration: in.Migration, Direction: in.Direction, App: first.App, From: first.From, To: first.To,
		ViewMode: "replace", Members: subs, blueOID: first.blueOID, greenOID: first.greenOID}

	var ls lockSet
	isPair := func(p *SwapPlan, l LockTarget) bool { return l.OID == p.blueOID || l.OID == p.greenOID }
	for _, p := range subs { // views
		for _, l := range p.Locks {
			if l.Kind == "v" || l.Kind == "m" {
				t := ls.add(l.Rel, l.OID, l.Mode, l.Why)
				t.Kind, t.Owner = l.Kind, l.Owner
			}
		}
	}
	for _, p := range subs { // other tables
		for _, l := range p.Locks {
			if l.Kind != "v" && l.Kind != "m" && !among[l.OID] {
				ls.add(l.Rel, l.OID, l.Mode, l.Why)
			}
		}
	}
	for _, p := range subs { // the pairs
		var mine []LockTarget
		for _, l := range p.Locks {
			if isPair(p, l) {
				mine = append(mine, l)
			}
		}
		for _, l := range mine {
			ls.add(l.Rel, l.OID, l.Mode, l.Why)
		}
		if len(mine) == 2 {
			ls.pair(p.blueOID, p.greenOID)
		}
	}
	// A lock on another member's blue or green that is not in its own
	// pair (none today: the FKs among them do not move) is kept, after.
	for _, p := range subs {
		for _, l := range p.Locks {
			if among[l.OID] && !isPair(p, l) {
				ls.add(l.Rel, l.OID, l.Mode, l.Why)
			}
		}
	}
	out.Locks = ls.list

	for _, p := range subs {
		out.RowTypeChanged = out.RowTypeChanged || p.RowTypeChanged
		if p.ViewMode == "rebuild" {
			out.ViewMode = "rebuild"
		}
		out.Views = append(out.Views, p.Views...)
		out.MovedFKs = append(out.MovedFKs, p.MovedFKs...)
		out.AddedFKs = append(out.AddedFKs, p.AddedFKs...)
		out.Triggers = append(out.Triggers, p.Triggers...)
		out.Policies = append(out.Policies, p.Policies...)
		out.SQL = append(out.SQL, p.SQL...)
		out.After = append(out.After, p.After...)
		out.validate = append(out.validate, p.validate...)
		out.Warnings = append(out.Warnings, p.Warnings...)
		for _, o := range p.fpOIDs {
			if !slices.Contains(out.fpOIDs, o) {
				out.fpOIDs = append(out.fpOIDs, o)
			}
		}
	}
	var err error
	if out.fp, err = fingerprint(ctx, q, out.fpOIDs); err != nil {
		return nil, err
	}
	return out, nil
}
