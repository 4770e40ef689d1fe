package cutover

// Finalize of a table split (issue 15): in one transaction, the app name's
// old-shape view and the greens' views in the app schema are dropped, the
// split's triggers and functions go, each green moves into the app schema
// under its own name, and blue and the version schemas are dropped. The
// old-shape view does not outlive blue: a spec cannot ask to keep it yet,
// and a view another view depends on makes finalize refuse (exit 2).

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/trigger"
)

func planFinalizeSplit(ctx context.Context, q db.Querier, in FinalizeInput) (*FinalizePlan, error) {
	r, err := loadSplitRels(ctx, q, in.Split)
	if err != nil {
		return nil, err
	}
	n0 := r.names[0]
	views, err := existingGreenViews(ctx, q, r)
	if err != nil {
		return nil, err
	}
	// Views over the app name or a green's view would go with them.
	check := []uint32{r.app.OID}
	for _, v := range views {
		rel, err := findRelation(ctx, q, v.View)
		if err != nil {
			return nil, err
		}
		check = append(check, rel.OID)
	}
	rows, err := q.Query(ctx, `SELECT DISTINCT w.ev_class::regclass::text FROM pg_catalog.pg_depend d
		JOIN pg_catalog.pg_rewrite w ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = w.oid
		WHERE d.refobjid = ANY($1::oid[]) AND w.ev_class <> d.refobjid ORDER BY 1`, check)
	if err != nil {
		return nil, err
	}
	deps, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	if len(deps) > 0 {
		return nil, exitcode.Errorf(exitcode.BadInput, "view(s) %s read %s or a green's view, which finalize of a split drops: "+
			"drop them (and create them again over the greens after finalize), nothing was changed", strings.Join(deps, ", "), n0.App)
	}
	p := &FinalizePlan{Migration: in.Migration, App: n0.App, Blue: n0.Blue, fpOIDs: r.oids()}
	var greens []string
	for _, g := range r.m.Greens {
		greens = append(greens, r.names[g.Spec].Green.String())
	}
	p.Green = n0.Green
	var ls lockSet
	var owner string
	if err := q.QueryRow(ctx, `SELECT pg_catalog.pg_get_userbyid(relowner)::text FROM pg_catalog.pg_class WHERE oid = $1`, r.app.OID).Scan(&owner); err != nil {
		return nil, err
	}
	t := ls.add(n0.App, r.app.OID, AccessExclusive, "the app name's old-shape view is dropped")
	t.Kind, t.Owner = "v", owner
	ls.add(n0.Blue, r.blue.OID, AccessExclusive, "blue is dropped")
	// The greens in write order (parents first), as writers reach them.
	for _, g := range r.m.Greens {
		ls.add(r.names[g.Spec].Green, r.greens[g.Spec].OID, AccessExclusive, "moves into "+n0.App.Schema)
	}
	p.Locks = ls.list
	for _, v := range views {
		p.SQL = append(p.SQL, "DROP VIEW "+db.Ident(v.View.Schema, v.View.Name))
	}
	p.SQL = append(p.SQL, "DROP VIEW "+db.Ident(n0.App.Schema, n0.App.Name), "DROP TABLE "+db.Ident(n0.Blue.Schema, n0.Blue.Name))
	p.SQL = append(p.SQL, trigger.SplitTeardownSQL(r.names)...)
	for _, g := range r.m.Greens {
		n := r.names[g.Spec]
		p.SQL = append(p.SQL, "ALTER TABLE "+db.Ident(n.Green.Schema, n.Green.Name)+" SET SCHEMA "+db.Ident(n0.App.Schema))
	}
	rec := shadow.SequenceRecord(n0)
	p.SQL = append(p.SQL, "DROP TABLE IF EXISTS "+db.Ident(rec.Schema, rec.Name),
		"DROP SCHEMA "+db.Ident(n0.BlueSchema), "DROP SCHEMA "+db.Ident(n0.GreenSchema))
	p.Dropped = []string{n0.App.String() + " (the old-shape view)", n0.Blue.String(), n0.BlueSchema, n0.GreenSchema}
	p.Warnings = append(p.Warnings, "the greens are now "+strings.Join(greens, ", ")+" under "+n0.App.Schema+
		"; a sequence blue's columns drew from stays in "+n0.App.Schema+", owned by no column")
	if p.fp, err = fingerprint(ctx, q, p.fpOIDs); err != nil {
		return nil, err
	}
	return p, nil
}
