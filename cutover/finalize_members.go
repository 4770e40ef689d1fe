package cutover

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/shadow"
)

// names are the Names of every table in (one, or each member's).
func (in FinalizeInput) names() []shadow.Names {
	if in.Split != nil {
		return shadow.SplitNames(in.Split) // one blue; every green is app side
	}
	if len(in.Members) == 0 {
		return []shadow.Names{in.Names}
	}
	out := make([]shadow.Names, len(in.Members))
	for i, m := range in.Members {
		out[i] = m.Names
	}
	return out
}

// planFinalizeMembers is PlanFinalize for several tables: every member's
// finalize in one plan, one transaction. The blues are dropped referencing
// tables first (a blue another blue's foreign key references cannot go
// before it), so the members' statements run in the reverse dependency
// order; the greens keep the foreign keys among them (they move by OID
// into the app schema). The version schemas and the publication are the
// migration's, dropped once at the end. Locks: every view first, then each
// member's blue/green pair in dependency order (as cutover's).
func planFinalizeMembers(ctx context.Context, q db.Querier, in FinalizeInput) (*FinalizePlan, error) {
	among := map[uint32]bool{}
	for _, m := range in.Members {
		_, blue, _, err := findMigrationRelations(ctx, q, m.Names)
		if err != nil {
			return nil, err
		}
		if blue == nil {
			return nil, exitcode.Errorf(exitcode.BadInput, "%s is missing: nothing to finalize", m.Names.Blue)
		}
		among[blue.OID] = true
	}
	var subs []*FinalizePlan
	for _, m := range in.Members {
		one := m
		one.Migration, one.Since, one.Own, one.Members = in.Migration, in.Since, in.Own, nil
		p, err := planFinalizeOne(ctx, q, one, among)
		if err != nil {
			return nil, err
		}
		subs = append(subs, p)
	}
	first := subs[0]
	out := &FinalizePlan{Migration: in.Migration, App: first.App, Green: first.Green, Blue: first.Blue}
	var ls lockSet
	for _, p := range subs {
		for _, l := range p.Locks {
			if l.Kind == "v" || l.Kind == "m" {
				t := ls.add(l.Rel, l.OID, l.Mode, l.Why)
				t.Kind, t.Owner = l.Kind, l.Owner
			}
		}
	}
	for _, p := range subs {
		var pair []LockTarget
		for _, l := range p.Locks {
			if l.Kind != "v" && l.Kind != "m" {
				pair = append(pair, l)
			}
		}
		for _, l := range pair {
			ls.add(l.Rel, l.OID, l.Mode, l.Why)
		}
		if len(pair) == 2 {
			ls.pair(pair[0].OID, pair[1].OID)
		}
	}
	out.Locks = ls.list

	// The usage sensor's function and tables are the blue schema's, shared
	// by every blue's trigger: dropped once every blue is gone.
	n0 := in.Members[0].Names
	sensor := []string{"DROP FUNCTION IF EXISTS " + qident(usageFunc(n0)) + "()",
		"DROP TABLE IF EXISTS " + qident(usageTable(n0)), "DROP TABLE IF EXISTS " + qident(usageStateTable(n0))}
	var shared []string
	for _, p := range slices.Backward(subs) {
		for _, s := range p.SQL {
			if strings.HasPrefix(s, "DROP SCHEMA ") || strings.HasPrefix(s, "DROP PUBLICATION ") || slices.Contains(sensor, s) {
				if !slices.Contains(shared, s) {
					shared = append(shared, s)
				}
				continue
			}
			out.SQL = append(out.SQL, s)
		}
	}
	out.SQL = append(out.SQL, shared...)
	for _, p := range subs {
		out.Views = append(out.Views, p.Views...)
		out.Sequences = append(out.Sequences, p.Sequences...)
		out.Partitions = append(out.Partitions, p.Partitions...)
		out.Warnings = append(out.Warnings, p.Warnings...)
		for _, d := range p.Dropped {
			if !slices.Contains(out.Dropped, d) {
				out.Dropped = append(out.Dropped, d)
			}
		}
		if p.Slot != "" {
			out.Slot = p.Slot
		}
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

// UsageMembers is one Usage sample over several blues (a migration of
// several tables): every client seen using any of them.
func UsageMembers(ctx context.Context, q db.Querier, members []shadow.Names, since time.Time, own []int32) ([]Client, error) {
	// One session for every table's sample, for the reason WatchUsage
	// gives: a sample's own query names a blue.
	q, release, err := oneSession(ctx, q)
	if err != nil {
		return nil, err
	}
	defer release()
	appSide, err := appSideOIDs(ctx, q, members)
	if err != nil {
		return nil, err
	}
	var seen []Client
	for _, n := range members {
		cs, err := usageOf(ctx, q, n, since, own, appSide)
		if err != nil {
			return seen, err
		}
		seen = mergeClients(seen, cs)
	}
	return seen, nil
}
