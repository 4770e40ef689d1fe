package cutover

// Teardown of a table split before cutover (issue 15): one table's
// teardown of the app name and blue (PlanTeardown: the adopt view
// dropped, blue back under its name, the forward triggers gone), with
// every green dropped in its place (children first: the foreign keys among
// them) and the split's functions after them, in one transaction.

import (
	"context"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	"github.com/greenswap/greenswap/trigger"
)

// PlanTeardownSplit plans the teardown of split s (read only).
func PlanTeardownSplit(ctx context.Context, q db.Querier, migration string, s *spec.Spec) (*TeardownPlan, error) {
	one := shadow.NamesFor(migration, s.AppTable())
	p, err := PlanTeardown(ctx, q, migration, one)
	if err != nil {
		return nil, err
	}
	names := shadow.SplitNames(s)
	var drops []string
	order := s.SplitOrder()
	for _, i := range slices.Backward(order) {
		n := names[i]
		g, err := findRelation(ctx, q, n.Green)
		if err != nil {
			return nil, err
		}
		if g == nil {
			continue
		}
		p.Green = true
		if !slices.ContainsFunc(p.Locks, func(l LockTarget) bool { return l.OID == g.OID }) {
			p.Locks = append(p.Locks, LockTarget{Rel: n.Green, OID: g.OID, Mode: AccessExclusive, Why: "dropped", Kind: "r"})
			p.fpOIDs = append(p.fpOIDs, g.OID)
		}
		drops = append(drops, "DROP TABLE "+db.Ident(n.Green.Schema, n.Green.Name))
	}
	drops = append(drops, trigger.SplitTeardownSQL(names)...)
	appGreen := "DROP TABLE " + db.Ident(one.Green.Schema, one.Green.Name)
	var sql []string
	placed := false
	for _, st := range p.SQL {
		if st == appGreen {
			continue // dropped with the other greens, in their order
		}
		if !placed && (strings.HasPrefix(st, "DROP FUNCTION ") || strings.HasPrefix(st, "DROP TABLE IF EXISTS ") || strings.HasPrefix(st, "DROP SCHEMA ")) {
			sql, placed = append(sql, drops...), true
		}
		sql = append(sql, st)
	}
	if !placed {
		sql = append(sql, drops...)
	}
	p.SQL = sql
	if p.fp, err = fingerprint(ctx, q, p.fpOIDs); err != nil {
		return nil, err
	}
	return p, nil
}

// TeardownSplit is TeardownMembers for a split: one transaction, the lock
// retry, commit last inside it.
func TeardownSplit(ctx context.Context, pool *pgxpool.Pool, migration string, s *spec.Spec, opt SwapOptions,
	commit func(ctx context.Context, tx pgx.Tx, p *TeardownPlan) error) (*TeardownResult, error) {
	var c func(tx pgx.Tx, p *TeardownPlan) error
	if commit != nil {
		c = func(tx pgx.Tx, p *TeardownPlan) error { return commit(ctx, tx, p) }
	}
	plan, st, err := runPlanned(ctx, pool, "rollback", opt,
		func(tx pgx.Tx) (*TeardownPlan, error) { return PlanTeardownSplit(ctx, tx, migration, s) }, nil, c)
	return &TeardownResult{Plan: plan, Attempts: st.Attempts, LockHold: st.LockHold, Duration: st.Duration}, err
}
