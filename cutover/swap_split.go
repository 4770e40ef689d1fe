package cutover

// The swap of a table split (issue 15): the app name, a view over blue
// since adopt, becomes the old shape rebuilt from the greens (an INSTEAD OF
// trigger writes every green and blue), and each green gets a view of its
// own name in the app schema where that name is free; rollback puts the
// adopt view back and drops them. Nothing about the sync triggers changes:
// from synced on both directions are on (blue → every green, each green →
// blue), so blue stays equal to the greens whichever side the app writes,
// and the swap back loses nothing.

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	"github.com/greenswap/greenswap/trigger"
)

// SplitSwapInput names a split's swap.
type SplitSwapInput struct {
	Migration   string
	Spec        *spec.Spec
	Direction   Direction
	ServerMajor int
}

// SplitGreenView is a green's view in the app schema (cutover creates it,
// rollback and finalize drop it), or the reason it has none.
type SplitGreenView struct {
	Green   spec.QualifiedName `json:"green"`
	View    spec.QualifiedName `json:"view,omitempty"`
	Skipped string             `json:"skipped,omitempty"`
}

// splitRels are the relations of a split as they are in the catalog.
type splitRels struct {
	names  []shadow.Names
	app    *relation
	blue   *relation
	greens []*relation     // spec order
	tables []*shadow.Table // the greens as tables, spec order
	table  *shadow.Table
	m      *shadow.SplitMapping
}

func loadSplitRels(ctx context.Context, q db.Querier, s *spec.Spec) (*splitRels, error) {
	r := &splitRels{names: shadow.SplitNames(s)}
	n0 := r.names[0]
	var err error
	if r.app, err = findRelation(ctx, q, n0.App); err != nil {
		return nil, err
	}
	if r.blue, err = findRelation(ctx, q, n0.Blue); err != nil {
		return nil, err
	}
	if r.app == nil || r.app.Kind != "v" || r.blue == nil {
		return nil, exitcode.Errorf(exitcode.BadInput, "%s is not a view over %s: sync has not adopted the table", n0.App, n0.Blue)
	}
	greens := make([]*shadow.Table, len(r.names))
	for i, n := range r.names {
		g, err := findRelation(ctx, q, n.Green)
		if err != nil {
			return nil, err
		}
		if g == nil {
			return nil, exitcode.Errorf(exitcode.BadInput, "the green %s is missing: sync has not built the split", n.Green)
		}
		r.greens = append(r.greens, g)
		if greens[i], err = shadow.LoadTable(ctx, q, n.Green); err != nil {
			return nil, err
		}
	}
	if r.table, err = shadow.LoadTable(ctx, q, n0.Blue); err != nil {
		return nil, err
	}
	if r.m, err = shadow.BuildSplitMapping(s, r.table, greens); err != nil {
		return nil, err
	}
	r.tables = greens
	return r, nil
}

func (r *splitRels) oids() []uint32 {
	out := []uint32{r.app.OID, r.blue.OID}
	for _, g := range r.greens {
		out = append(out, g.OID)
	}
	return out
}

// refuseInboundFKs refuses a split whose blue is referenced by a foreign
// key (another table's, or its own): the referencing rows would have to
// reference one of the greens, and which one is the DBA's choice. Exit 2,
// nothing changed; plan names them too (split_inbound_fk).
func refuseInboundFKs(ctx context.Context, q db.Querier, r *splitRels) error {
	rows, err := q.Query(ctx, `SELECT c.conname::text, c.conrelid::regclass::text FROM pg_catalog.pg_constraint c
		WHERE c.contype = 'f' AND c.confrelid = $1 ORDER BY 1`, r.blue.OID)
	if err != nil {
		return err
	}
	fks, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (string, error) {
		var name, rel string
		err := row.Scan(&name, &rel)
		return name + " on " + rel, err
	})
	if err != nil {
		return err
	}
	if len(fks) > 0 {
		return exitcode.Errorf(exitcode.BadInput, "%s is referenced by foreign key %s: a split's cutover does not move foreign keys into the old table; "+
			"drop it, or point it at a green by hand, then cut over", r.names[0].App, strings.Join(fks, ", "))
	}
	return nil
}

// splitGreenViews are the views cutover gives the greens in the app
// schema: one per green whose name is free there (the app name's own green,
// and a name another relation holds, stay in the green schema until
// finalize).
func splitGreenViews(ctx context.Context, q db.Querier, r *splitRels) ([]SplitGreenView, error) {
	var out []SplitGreenView
	app := r.names[0].App
	for _, n := range r.names {
		v := SplitGreenView{Green: n.Green}
		name := spec.QualifiedName{Schema: app.Schema, Name: n.Green.Name}
		switch have, err := findRelation(ctx, q, name); {
		case err != nil:
			return nil, err
		case name == app:
			v.Skipped = "the app name is the old-shape view; the green takes it at finalize"
		case have != nil:
			v.Skipped = name.String() + " exists and is not greenswap's"
		default:
			v.View = name
		}
		out = append(out, v)
	}
	return out, nil
}

// existingGreenViews are the green views cutover made: a view of the
// green's name in the app schema that reads the green.
func existingGreenViews(ctx context.Context, q db.Querier, r *splitRels) ([]SplitGreenView, error) {
	var out []SplitGreenView
	app := r.names[0].App
	for i, n := range r.names {
		name := spec.QualifiedName{Schema: app.Schema, Name: n.Green.Name}
		if name == app {
			continue
		}
		var ok bool
		err := q.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace
			JOIN pg_catalog.pg_rewrite w ON w.ev_class = c.oid
			JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = w.oid
			WHERE s.nspname = $1 AND c.relname = $2 AND c.relkind = 'v' AND d.refobjid = $3)`, name.Schema, name.Name, r.greens[i].OID).Scan(&ok)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, SplitGreenView{Green: n.Green, View: name})
		}
	}
	return out, nil
}

// SplitOldShapeSQL is the old-shape view's query: blue's columns, in
// blue's order, rebuilt from the greens (shadow.SplitMapping.RebuildFrom);
// a column no green carries (drop:, or generated in blue) is read from
// blue, which the reverse triggers keep, by key.
func SplitOldShapeSQL(n shadow.Names, blue *shadow.Table, m *shadow.SplitMapping) string {
	rebuilt := map[string]string{}
	for _, c := range m.Reverse {
		rebuilt[c.Target] = c.Cast(c.Expr)
	}
	cols := make([]string, len(blue.Columns))
	for i, c := range blue.Columns {
		e, ok := rebuilt[c.Name]
		if !ok {
			e = db.Ident("gs_blue", c.Name)
		}
		cols[i] = e + " AS " + db.Ident(c.Name)
	}
	on := make([]string, len(m.Key))
	for i, k := range m.Key {
		on[i] = db.Ident("gs_blue", k) + " = " + db.Ident(shadow.RebuildKeyAlias, k)
	}
	return "SELECT " + strings.Join(cols, ", ") + " FROM " + m.RebuildFrom(n.GreenSchema, nil) +
		" LEFT JOIN " + db.Ident(n.Blue.Schema, n.Blue.Name) + " AS gs_blue ON " + strings.Join(on, " AND ")
}

// splitViewDefaults sets (or drops) on the old-shape view app the
// defaults of blue's columns: its own default, or for an identity column
// the next value of its sequence.
func splitViewDefaults(app string, n shadow.Names, blue *shadow.Table, set bool) []string {
	var out []string
	for _, c := range blue.Columns {
		if c.Generated != "" || (c.Default == "" && c.Identity == "") {
			continue
		}
		col := "ALTER VIEW " + app + " ALTER COLUMN " + db.Ident(c.Name)
		switch {
		case !set:
			out = append(out, col+" DROP DEFAULT")
		case c.Default != "":
			out = append(out, col+" SET DEFAULT "+c.Default)
		default:
			out = append(out, col+" SET DEFAULT pg_catalog.nextval(pg_catalog.pg_get_serial_sequence("+
				db.Literal(db.Ident(n.Blue.Schema, n.Blue.Name))+", "+db.Literal(c.Name)+")::pg_catalog.regclass)")
		}
	}
	return out
}

// splitInvoker is the WITH clause of a split's views (the old-shape view
// and the greens' views): security_invoker on PostgreSQL 15+, so the
// caller's privileges on the greens and blue and the greens' row-level
// security apply through them, as through the adopt view
// (shadow.ViewInvoker: a table with column grants, which an invoker view
// would deny its column-privileged roles, keeps plain views, checked
// against their own column grants). PostgreSQL 14 has no invoker views:
// the views read as their owner, and cutover refuses RLS on a green there.
func splitInvoker(blue *shadow.Table, serverMajor int) string {
	switch {
	case shadow.ViewInvoker(blue, serverMajor):
		return " WITH (security_invoker = true)"
	case serverMajor >= 15:
		return " WITH (security_invoker = false)"
	}
	return ""
}

// PlanSplitSwap plans a split's swap from the catalog (read only).
func PlanSplitSwap(ctx context.Context, q db.Querier, in SplitSwapInput) (*SwapPlan, error) {
	if err := setPath(ctx, q, catalogPath); err != nil {
		return nil, err
	}
	r, err := loadSplitRels(ctx, q, in.Spec)
	if err != nil {
		return nil, err
	}
	n0 := r.names[0]
	p := &SwapPlan{Migration: in.Migration, Direction: in.Direction, App: n0.App, From: n0.Blue, To: n0.Green,
		ViewMode: "replace", blueOID: r.blue.OID, fpOIDs: r.oids()}
	if in.Direction == ToBlue {
		p.From, p.To = n0.Green, n0.Blue
	}
	var owner string
	if err := q.QueryRow(ctx, `SELECT pg_catalog.pg_get_userbyid(relowner)::text FROM pg_catalog.pg_class WHERE oid = $1`, r.app.OID).Scan(&owner); err != nil {
		return nil, err
	}
	usage, err := usageState(ctx, q, n0, r.blue.OID)
	if err != nil {
		return nil, err
	}
	var ls lockSet
	t := ls.add(n0.App, r.app.OID, AccessExclusive, "the app name changes what it reads")
	t.Kind, t.Owner = "v", owner
	if in.Direction == ToGreen && !usage.trigger {
		// Finalize's usage sensor (usage.go): a client writing blue
		// directly after cutover must hold finalize back, as for one table.
		ls.add(n0.Blue, r.blue.OID, ShareRowExclusive, "usage sensor installed")
	}
	p.Locks = ls.list
	app := db.Ident(n0.App.Schema, n0.App.Name)
	fn := trigger.SplitViewFunc(n0)
	fnSig := db.Ident(fn.Schema, fn.Name) + "()"
	if in.Direction == ToGreen {
		if err := refuseInboundFKs(ctx, q, r); err != nil {
			return nil, err
		}
		if r.table.RLSEnabled {
			return nil, exitcode.Errorf(exitcode.BadInput, "%s has row-level security: a split does not carry blue's policies to the greens (their columns differ), "+
				"so the app name would show rows the policies hide; disable RLS on %s (put policies on the greens after cutover) or migrate without split:", n0.App, n0.Blue)
		}
		var rlsGreens string
		if err := q.QueryRow(ctx, `SELECT coalesce(pg_catalog.string_agg(n.nspname || '.' || c.relname, ', ' ORDER BY c.relname), '')
			  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
			 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relrowsecurity`, n0.GreenSchema).Scan(&rlsGreens); err != nil {
			return nil, err
		}
		if rlsGreens != "" && !shadow.ViewInvoker(r.table, in.ServerMajor) {
			return nil, exitcode.Errorf(exitcode.BadInput, "%s has row-level security: the old-shape view and the greens' views read the greens as their owner "+
				"(PostgreSQL 14 has no security_invoker views, and a table with column grants keeps plain ones) and would bypass the policies; "+
				"disable RLS there, or migrate without split:", rlsGreens)
		}
		views, err := splitGreenViews(ctx, q, r)
		if err != nil {
			return nil, err
		}
		p.SQL = append(p.SQL,
			trigger.SplitViewFunctionSQL(n0, r.m, trigger.BlueWriteDirection(r.table, r.m, n0.App)),
			"ALTER FUNCTION "+fnSig+" OWNER TO "+db.Ident(r.table.Owner),
			"REVOKE ALL ON FUNCTION "+fnSig+" FROM PUBLIC",
			// Its own grants (kept by CREATE OR REPLACE) gate the writes,
			// which its INSTEAD OF trigger makes as the owner; the reads
			// are the caller's (splitInvoker).
			"CREATE OR REPLACE VIEW "+app+splitInvoker(r.table, in.ServerMajor)+" AS "+SplitOldShapeSQL(n0, r.table, r.m),
			trigger.SplitViewTriggerSQL(n0, n0.App))
		// A simple view fills a column an INSERT omits from its table's
		// default; a view written by a trigger has only its own.
		p.SQL = append(p.SQL, splitViewDefaults(app, n0, r.table, true)...)
		for _, v := range views {
			if v.View.Name == "" {
				p.Warnings = append(p.Warnings, fmt.Sprintf("green %s has no view in %s: %s", v.Green, n0.App.Schema, v.Skipped))
				continue
			}
			rel := db.Ident(v.View.Schema, v.View.Name)
			p.SQL = append(p.SQL, "CREATE VIEW "+rel+splitInvoker(r.table, in.ServerMajor)+" AS SELECT * FROM "+db.Ident(v.Green.Schema, v.Green.Name),
				"ALTER VIEW "+rel+" OWNER TO "+db.Ident(r.table.Owner))
			p.SQL = append(p.SQL, shadow.GrantSQL(rel, r.table.Grants)...)
			p.SplitViews = append(p.SplitViews, v)
		}
	} else {
		views, err := existingGreenViews(ctx, q, r)
		if err != nil {
			return nil, err
		}
		for _, v := range views {
			p.SQL = append(p.SQL, "DROP VIEW "+db.Ident(v.View.Schema, v.View.Name))
		}
		create := shadow.ViewSQL(n0.App, n0.Blue, r.table, in.ServerMajor)
		p.SQL = append(p.SQL, splitViewDefaults(app, n0, r.table, false)...)
		p.SQL = append(p.SQL,
			"DROP TRIGGER IF EXISTS "+db.Ident(trigger.SplitViewTrigger(n0))+" ON "+app,
			strings.Replace(create[0], "CREATE VIEW ", "CREATE OR REPLACE VIEW ", 1),
			"DROP FUNCTION IF EXISTS "+fnSig)
		if in.ServerMajor >= 15 && !strings.Contains(create[0], " WITH (") {
			p.SQL = append(p.SQL, "ALTER VIEW "+app+" RESET (security_invoker)")
		}
	}
	if in.Direction == ToGreen && !usage.complete() {
		p.SQL = append(p.SQL, usageInstallSQL(n0, r.table.Owner, usage)...)
	}
	if in.Direction == ToGreen || usage.state {
		p.SQL = append(p.SQL, usageSwitchSQL(n0, in.Direction == ToGreen))
	}
	if p.fp, err = fingerprint(ctx, q, p.fpOIDs); err != nil {
		return nil, err
	}
	return p, nil
}

// SplitSwap runs a split's swap in one transaction under the lock budget
// (runPlanned: all or nothing; *shadow.LockTimeoutError when the budget is
// used up).
func SplitSwap(ctx context.Context, pool *pgxpool.Pool, in SplitSwapInput, opt SwapOptions) (*SwapResult, error) {
	return swapPlanned(ctx, pool, string(in.Direction), opt, func(tx pgx.Tx) (*SwapPlan, error) { return PlanSplitSwap(ctx, tx, in) })
}
