package cutover

// Finalize of a table split (issue 15): in one transaction, the app name's
// old-shape view and the greens' views in the app schema are dropped, the
// split's triggers and functions go, each green moves into the app schema
// under its own name, and blue and the version schemas are dropped. The
// old-shape view does not outlive blue: a spec cannot ask to keep it yet,
// and a view another view depends on makes finalize refuse (exit 2).

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
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
	appMeta := &viewMeta{OID: r.app.OID, Name: n0.App}
	if err := loadViewMeta(ctx, q, appMeta); err != nil {
		return nil, err
	}
	viewGrants := map[spec.QualifiedName][]shadow.Grant{} // green → its view's grants
	for _, v := range views {
		rel, err := findRelation(ctx, q, v.View)
		if err != nil {
			return nil, err
		}
		vm := &viewMeta{OID: rel.OID, Name: v.View}
		if err := loadViewMeta(ctx, q, vm); err != nil {
			return nil, err
		}
		viewGrants[v.Green] = vm.Grants
	}
	for _, v := range views {
		p.SQL = append(p.SQL, "DROP VIEW "+db.Ident(v.View.Schema, v.View.Name))
	}
	p.SQL = append(p.SQL, "DROP VIEW "+db.Ident(n0.App.Schema, n0.App.Name))
	seqs, err := splitSequences(ctx, q, r, p)
	if err != nil {
		return nil, err
	}
	p.SQL = append(p.SQL, seqs.before...)
	// Blue before the split's functions: its triggers run the forward one.
	p.SQL = append(p.SQL, "DROP TABLE "+db.Ident(n0.Blue.Schema, n0.Blue.Name))
	p.SQL = append(p.SQL, trigger.SplitTeardownSQL(r.names)...)
	for _, g := range r.m.Greens {
		n := r.names[g.Spec]
		p.SQL = append(p.SQL, "ALTER TABLE "+db.Ident(n.Green.Schema, n.Green.Name)+" SET SCHEMA "+db.Ident(n0.App.Schema))
	}
	p.SQL = append(p.SQL, seqs.after...)
	// The privileges the app had through the names it used: blue's, which
	// sync gave every green, and any granted on the views since.
	for _, g := range r.m.Greens {
		n := r.names[g.Spec]
		rel := db.Ident(n0.App.Schema, n.Green.Name)
		if n.Green.Name == n0.App.Name {
			p.SQL = append(p.SQL, shadow.GrantSQL(rel, appMeta.Grants)...)
		}
		p.SQL = append(p.SQL, shadow.GrantSQL(rel, viewGrants[n.Green])...)
	}
	rec := shadow.SequenceRecord(n0)
	p.SQL = append(p.SQL, "DROP FUNCTION IF EXISTS "+qident(usageFunc(n0))+"()",
		"DROP TABLE IF EXISTS "+qident(usageTable(n0)), "DROP TABLE IF EXISTS "+qident(usageStateTable(n0)),
		"DROP TABLE IF EXISTS "+db.Ident(rec.Schema, rec.Name),
		"DROP SCHEMA "+db.Ident(n0.BlueSchema), "DROP SCHEMA "+db.Ident(n0.GreenSchema))
	p.Dropped = []string{n0.App.String() + " (the old-shape view)", n0.Blue.String(), n0.BlueSchema, n0.GreenSchema}
	p.Warnings = append(p.Warnings, "the greens are now "+strings.Join(greens, ", ")+" under "+n0.App.Schema)
	if p.fp, err = fingerprint(ctx, q, p.fpOIDs); err != nil {
		return nil, err
	}
	return p, nil
}

// splitSeqSQL is finalize's SQL for the defaults and sequences of a
// split's greens: before (blue still there, the greens in their schema),
// after (the greens in the app schema: a sequence is owned by a table of
// its own schema only).
type splitSeqSQL struct{ before, after []string }

// splitSequences gives the greens blue's column defaults, which the
// old-shape view carried until now: each green column that carries a blue
// column (by name; a key column in the roots only, the other greens'
// reference their parent) and has no default of its own gets blue's. The
// sequence that fed a blue column is then owned by the carrying column of
// the primary root (the green named like the app table, else the first
// root), so pg_get_serial_sequence answers for it: blue's serial sequence,
// which adopt detached and kept in the app schema, is owned by it and
// widened to fit; blue's identity sequence, which goes with blue, is
// replaced by a new sequence in the app schema continuing after it.
func splitSequences(ctx context.Context, q db.Querier, r *splitRels, p *FinalizePlan) (*splitSeqSQL, error) {
	n0 := r.names[0]
	out := &splitSeqSQL{}
	uses, err := defaultSequences(ctx, q, r.blue.OID)
	if err != nil {
		return nil, err
	}
	detached, err := detachedSequences(ctx, q, n0)
	if err != nil {
		return nil, err
	}
	isDetached := map[uint32]bool{}
	for _, d := range detached {
		isDetached[d.oid] = true
	}
	primary := -1
	for k, g := range r.m.Greens {
		if g.Root && (primary < 0 || r.names[g.Spec].Green.Name == n0.App.Name) {
			primary = k
		}
	}
	appRel := func(g *shadow.SplitGreen) string { return db.Ident(n0.App.Schema, r.names[g.Spec].Green.Name) }
	var inserters []shadow.Grant
	for _, gr := range r.table.Grants {
		if gr.Privilege == "INSERT" {
			inserters = append(inserters, gr)
		}
	}
	for _, c := range r.table.Columns {
		if c.Generated != "" || (c.Default == "" && c.Identity == "") {
			continue
		}
		keyAt := slices.Index(r.m.Key, c.Name)
		type carrier struct {
			g   *shadow.SplitGreen
			col string
		}
		var carriers []carrier
		owner := -1
		for k := range r.m.Greens {
			g := &r.m.Greens[k]
			col := ""
			switch {
			case keyAt >= 0 && g.Root:
				col = g.KeyOf[keyAt]
			case keyAt < 0:
				if fc := g.Forward.Column(c.Name); fc != nil && !fc.Explicit {
					col = c.Name
				}
			}
			gc := r.tables[g.Spec].Column(col)
			// A root green's key already drawing from blue's sequence (sync
			// gave it blue's default) is a carrier still: its sequence moves.
			if col == "" || gc == nil || (gc.Default != "" && gc.Default != c.Default) || gc.Identity != "" || gc.Generated != "" {
				continue
			}
			if k == primary {
				owner = len(carriers)
			}
			carriers = append(carriers, carrier{g, col})
		}
		if len(carriers) == 0 {
			continue
		}
		if owner < 0 {
			owner = 0
		}
		useIdx := slices.IndexFunc(uses, func(u sequenceUse) bool { return u.Column == c.Name })
		if c.Identity == "" {
			for _, k := range carriers {
				g := r.names[k.g.Spec].Green
				out.before = append(out.before, "ALTER TABLE "+db.Ident(g.Schema, g.Name)+" ALTER COLUMN "+db.Ident(k.col)+" SET DEFAULT "+c.Default)
			}
			if useIdx < 0 {
				continue
			}
		}
		own := carriers[owner]
		ownCol := appRel(own.g) + "." + db.Ident(own.col)
		if c.Identity != "" {
			// Blue's identity sequence goes with blue: a new one, in the
			// app schema, continues it, owned by the primary root's column.
			var seqName, seqQual string
			if err := q.QueryRow(ctx, `SELECT s.relname::text, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(s.relname)
				FROM pg_catalog.pg_class s JOIN pg_catalog.pg_namespace n ON n.oid = s.relnamespace
				WHERE s.oid = pg_catalog.pg_get_serial_sequence($1, $2)::pg_catalog.regclass`,
				db.Ident(n0.Blue.Schema, n0.Blue.Name), c.Name).Scan(&seqName, &seqQual); err != nil {
				return nil, fmt.Errorf("read the identity sequence of %s.%s: %w", n0.Blue, c.Name, err)
			}
			newSeq := db.Ident(n0.App.Schema, seqName)
			create := "CREATE SEQUENCE " + newSeq
			if gc := r.tables[own.g.Spec].Column(own.col); gc != nil && intRank[gc.Type] > 0 {
				create += " AS " + gc.Type
			}
			out.before = append(out.before, nextValueDo(seqQual, create+" START WITH %s INCREMENT BY %s"))
			out.after = append(out.after, "ALTER SEQUENCE "+newSeq+" OWNED BY "+ownCol)
			for _, k := range carriers {
				out.after = append(out.after, "ALTER TABLE "+appRel(k.g)+" ALTER COLUMN "+db.Ident(k.col)+
					" SET DEFAULT pg_catalog.nextval("+db.Literal(newSeq)+"::pg_catalog.regclass)")
			}
			out.after = append(out.after, grantOnSequence(newSeq, inserters)...)
			p.Sequences = append(p.Sequences, SequenceMove{own.col, spec.QualifiedName{Schema: n0.App.Schema, Name: seqName}, "new sequence"})
			continue
		}
		u := uses[useIdx]
		seq := db.Ident(u.Seq.Schema, u.Seq.Name)
		switch {
		case u.OwnerOID == 0 && isDetached[u.SeqOID], u.OwnerOID == r.blue.OID:
			if u.OwnerOID == r.blue.OID {
				out.before = append(out.before, "ALTER SEQUENCE "+seq+" OWNED BY NONE")
			}
			if u.Seq.Schema != n0.App.Schema {
				out.before = append(out.before, "ALTER SEQUENCE "+seq+" SET SCHEMA "+db.Ident(n0.App.Schema))
			}
			final := db.Ident(n0.App.Schema, u.Seq.Name)
			out.after = append(out.after, "ALTER SEQUENCE "+final+" OWNED BY "+ownCol)
			w, warn, err := widenSequence(ctx, q, u.SeqOID, final, r.tables[own.g.Spec].Column(own.col))
			if err != nil {
				return nil, err
			}
			out.after = append(out.after, w...)
			if warn != "" {
				p.Warnings = append(p.Warnings, warn)
			}
			p.Sequences = append(p.Sequences, SequenceMove{own.col, spec.QualifiedName{Schema: n0.App.Schema, Name: u.Seq.Name}, "re-owned"})
		default:
			p.Sequences = append(p.Sequences, SequenceMove{own.col, u.Seq, "kept"})
			p.Warnings = append(p.Warnings, fmt.Sprintf("column %s draws from %s, which greenswap does not own; left as it is", c.Name, u.Seq))
		}
	}
	return out, nil
}
