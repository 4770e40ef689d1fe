package cutover

import (
	"context"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
)

// PlanTeardownMembers is PlanTeardown for a migration of several tables
// (members: each table's names, referenced tables first): every member's
// teardown in one plan. The version schemas and the publication are the
// migration's, shared by the members, so each is dropped once, after
// every member's objects are gone (a member's DROP SCHEMA would otherwise
// meet the other members' tables); locks are each member's, each relation
// once. Members are torn down in the reverse order, referencing tables
// first: a green that another green's foreign key references cannot be
// dropped before it.
func PlanTeardownMembers(ctx context.Context, q db.Querier, migration string, members []shadow.Names) (*TeardownPlan, error) {
	if len(members) == 1 {
		return PlanTeardown(ctx, q, migration, members[0])
	}
	out := &TeardownPlan{Migration: migration, App: members[0].App}
	var shared []string
	seen := map[uint32]bool{}
	for _, n := range slices.Backward(members) {
		p, err := PlanTeardown(ctx, q, migration, n)
		if err != nil {
			return nil, err
		}
		out.Adopted = out.Adopted || p.Adopted
		out.Green = out.Green || p.Green
		out.Views = append(out.Views, p.Views...)
		out.Warnings = append(out.Warnings, p.Warnings...)
		if p.Slot != "" {
			out.Slot = p.Slot
		}
		for _, l := range p.Locks {
			if !seen[l.OID] {
				seen[l.OID] = true
				out.Locks = append(out.Locks, l)
				out.fpOIDs = append(out.fpOIDs, l.OID)
			}
		}
		for _, s := range p.SQL {
			if strings.HasPrefix(s, "DROP SCHEMA ") || strings.HasPrefix(s, "DROP PUBLICATION ") {
				if !slices.Contains(shared, s) {
					shared = append(shared, s)
				}
				continue
			}
			out.SQL = append(out.SQL, s)
		}
	}
	out.SQL = append(out.SQL, shared...)
	var err error
	if out.fp, err = fingerprint(ctx, q, out.fpOIDs); err != nil {
		return nil, err
	}
	return out, nil
}

// TeardownMembers is Teardown for every table of a migration (one or
// several): all of them in one transaction (all or none), with the lock
// retry; commit (the state change; may be nil) runs last inside it. A
// replication slot is dropped after the commit.
func TeardownMembers(ctx context.Context, pool *pgxpool.Pool, migration string, members []shadow.Names, opt SwapOptions,
	commit func(ctx context.Context, tx pgx.Tx, p *TeardownPlan) error) (*TeardownResult, error) {
	var c func(tx pgx.Tx, p *TeardownPlan) error
	if commit != nil {
		c = func(tx pgx.Tx, p *TeardownPlan) error { return commit(ctx, tx, p) }
	}
	plan, st, err := runPlanned(ctx, pool, "rollback", opt,
		func(tx pgx.Tx) (*TeardownPlan, error) { return PlanTeardownMembers(ctx, tx, migration, members) }, nil, c)
	res := &TeardownResult{Plan: plan, Attempts: st.Attempts, LockHold: st.LockHold, Duration: st.Duration}
	if err != nil {
		return res, err
	}
	if plan.Slot != "" {
		res.SlotNote = dropSlot(ctx, pool, plan.Slot)
	}
	return res, nil
}
