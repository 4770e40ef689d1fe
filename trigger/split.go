package trigger

// Table splits (issue 15): one forward function on blue writing every
// green, one reverse function per green rebuilding the blue row from all of
// them. See README.md, "Splits".

import (
	"fmt"
	"slices"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/rowsql"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// SplitViewTrigger names the INSTEAD OF trigger on the old-shape view
// (after cutover the app name) that runs SplitViewFunc.
func SplitViewTrigger(n shadow.Names) string { return n.Trigger + "_view" }

// SplitViewFunc is the function behind SplitViewTrigger: the forward body,
// writing blue as well (gs_forward_view in green's schema).
func SplitViewFunc(n shadow.Names) spec.QualifiedName {
	return spec.QualifiedName{Schema: n.GreenSchema, Name: n.ForwardFunc.Name + "_view"}
}

// splitGuard is the WHEN condition of a split's triggers: true unless a
// sync write of the owner is in progress, at any depth (the gate's
// condition, gateGuard). A split needs the looser guard: the forward write
// of one blue row to a parent green cascades (ON UPDATE / ON DELETE
// CASCADE) into its child greens one level deeper, and those cascades are
// part of the forward write, not writes to rebuild blue from (a rebuild in
// the middle of the forward write would read the greens half written).
func splitGuard(n shadow.Names, owner string) string { return gateGuard(n, owner) }

// splitForwardBody is the body of the forward function over one blue row
// (NEW / OLD): every green whose where holds gets the row (parents first),
// every green whose where no longer holds loses it (children first), a key
// UPDATE stays an UPDATE in each green (trap 13, rekey), a DELETE deletes
// from every green, children first.
//
// onInsert is how an INSERT writes a green: DoUpdate on blue's trigger (the
// backfill may have copied the row already), Plain through the old-shape
// view, where every green is complete and a duplicate key must fail as it
// would on a table (an upsert would turn the client's ON CONFLICT DO
// NOTHING into an overwrite).
func splitForwardBody(m *shadow.SplitMapping, greenSchema string, onInsert rowsql.Conflict) (deletes, writes string) {
	blueKeyChanged := textKey("OLD", m.Key) + " IS DISTINCT FROM " + textKey("NEW", m.Key)
	var del, upd, wr []string
	for k := len(m.Greens) - 1; k >= 0; k-- {
		g := &m.Greens[k]
		target := db.Ident(greenSchema, g.Name)
		del = append(del, greenDelete(g, target, "OLD"))
		if g.Where != "" {
			upd = append(upd, "IF NOT "+whereOf(g, "NEW")+" THEN\n\t\t\t"+greenDelete(g, target, "OLD")+"\n\t\tEND IF;")
		}
	}
	for k := range m.Greens {
		g := &m.Greens[k]
		target := db.Ident(greenSchema, g.Name)
		d := &g.Forward
		b := rowsql.Builder{Dir: d, Into: target}
		upsert := b.Insert("(SELECT NEW.*) AS s", rowsql.DoUpdate, "\t\t\t\t") + ";"
		lhs := keyColumns("t", d.TargetKey)
		move := rekey(d, target, lhs, greenKeyOf(d, "OLD"), greenKeyOf(d, "NEW"), greenDelete(g, target, "OLD"), upsert)
		insert := b.Insert("(SELECT NEW.*) AS s", onInsert, "\t\t\t\t") + ";"
		w := "IF TG_OP = 'UPDATE' AND " + blueKeyChanged + " THEN\n\t\t\t" + strings.ReplaceAll(move, "\n", "\n\t") +
			"\n\t\tELSIF TG_OP = 'INSERT' THEN\n\t\t\t" + insert +
			"\n\t\tELSE\n\t\t\t" + upsert + "\n\t\tEND IF;"
		if g.Where != "" {
			w = "IF " + whereOf(g, "NEW") + " THEN\n\t\t" + strings.ReplaceAll(w, "\n", "\n\t") + "\n\t\tEND IF;"
		}
		wr = append(wr, w)
	}
	deletes = strings.Join(del, "\n\t\t")
	writes = ""
	if len(upd) > 0 {
		writes = "IF TG_OP = 'UPDATE' THEN\n\t\t" + strings.Join(upd, "\n\t\t") + "\n\t\tEND IF;\n\t\t"
	}
	writes += strings.Join(wr, "\n\t\t")
	return deletes, writes
}

// greenKeyOf is green's key computed from blue record rec.
func greenKeyOf(d *shadow.Direction, rec string) string {
	exprs := make([]string, len(d.TargetKey))
	for i, k := range d.TargetKey {
		exprs[i] = d.ValueExpr(k)
	}
	return "(SELECT " + strings.Join(exprs, ", ") + " FROM (SELECT " + rec + ".*) AS s)"
}

func greenDelete(g *shadow.SplitGreen, target, rec string) string {
	return "DELETE FROM " + target + " AS t WHERE " + keyColumns("t", g.Forward.TargetKey) + " " + eq + " " + greenKeyOf(&g.Forward, rec) + ";"
}

// whereOf is true when green g's where holds for blue record rec (NULL is
// false).
func whereOf(g *shadow.SplitGreen, rec string) string {
	return "COALESCE((SELECT (" + g.Where + ")::pg_catalog.bool FROM (SELECT " + rec + ".*) AS s), false)"
}

// SplitForwardFunctionSQL is CREATE FUNCTION for a split's forward
// function (n: any green's names; the forward function is the split's):
// the AFTER ROW trigger function on blue that writes every green
// (splitForwardBody), SECURITY DEFINER under the same rules as
// FunctionSQL (trap 11): refuses (42501) unless fired by its own trigger
// on blue, schema and table both.
func SplitForwardFunctionSQL(n shadow.Names, m *shadow.SplitMapping) string {
	deletes, writes := splitForwardBody(m, n.GreenSchema, rowsql.DoUpdate)
	body := fmt.Sprintf(`IF TG_OP = 'DELETE' THEN
		%s
	ELSE
		%s
	END IF;`, deletes, writes)
	return splitRowFunction(n, n.ForwardFunc, n.Trigger, n.Blue, "AFTER", body, "RETURN NULL;")
}

// splitRowFunction is CREATE FUNCTION fn() for one of a split's row
// trigger functions around body: it raises 42501 unless fired by trigger
// trig on relation on (schema and name), timing when, FOR EACH ROW
// (trap 11), and runs body as a sync write (the flag at this trigger
// depth, put back after), then ret.
func splitRowFunction(n shadow.Names, fn spec.QualifiedName, trig string, on spec.QualifiedName, when, body, ret string) string {
	return createFunction(fn, n.App.Schema, fmt.Sprintf(`
#variable_conflict use_column
DECLARE
	prev pg_catalog.text;
BEGIN
	IF TG_NAME <> %[1]s OR TG_TABLE_SCHEMA <> %[2]s OR TG_TABLE_NAME <> %[3]s OR TG_WHEN <> %[4]s OR TG_LEVEL <> 'ROW' THEN
		%[5]s
	END IF;
	prev := pg_catalog.current_setting(%[6]s, true);
	PERFORM pg_catalog.set_config(%[6]s, pg_catalog.pg_trigger_depth()::pg_catalog.text, true);
	%[7]s
	PERFORM pg_catalog.set_config(%[6]s, COALESCE(prev, ''), true);
	%[8]s
END`, db.Literal(trig), db.Literal(on.Schema), db.Literal(on.Name), db.Literal(when), misfiredSQL(fn, n, trig, on),
		db.Literal(n.SyncFlag), body, ret))
}

// SplitViewFunctionSQL is CREATE FUNCTION for the INSTEAD OF trigger on the
// old-shape view (SplitViewTrigger; cutover creates the view and the
// trigger): the forward body over the view's row (the old shape, blue's
// row type), then the same write to blue itself, both as sync writes, so
// neither blue's forward trigger nor the greens' reverse triggers echo it.
// It returns NEW (OLD for a DELETE) so the client's row count is right;
// RETURNING sees the row as written, not as the greens computed it.
func SplitViewFunctionSQL(n shadow.Names, m *shadow.SplitMapping, blueWrite *shadow.Direction) string {
	deletes, writes := splitForwardBody(m, n.GreenSchema, rowsql.Plain)
	blue := db.Ident(n.Blue.Schema, n.Blue.Name)
	b := rowsql.Builder{Dir: blueWrite, Into: blue}
	upsert := b.Insert("(SELECT NEW.*) AS s", rowsql.DoUpdate, "\t\t\t") + ";"
	insert := b.Insert("(SELECT NEW.*) AS s", rowsql.Plain, "\t\t\t") + ";"
	lhs := keyColumns("t", blueWrite.TargetKey)
	delBlue := "DELETE FROM " + blue + " AS t WHERE " + lhs + " " + eq + " " + greenKeyOf(blueWrite, "OLD") + ";"
	move := rekey(blueWrite, blue, lhs, greenKeyOf(blueWrite, "OLD"), greenKeyOf(blueWrite, "NEW"), delBlue, upsert)
	// PostgreSQL hands an INSTEAD OF trigger the view's row as the
	// statement's snapshot read it, without a row lock or a re-check: two
	// concurrent "SET n = n + 1" would both write the same n. Every write
	// of a key takes blue's row, so lock it, and refuse (40001, as
	// REPEATABLE READ would) when the row the greens carry changed since
	// the statement read it.
	var bcols, ocols, okey []string
	for _, c := range m.Reverse {
		bcols = append(bcols, "b."+db.Ident(c.Target))
		ocols = append(ocols, "OLD."+db.Ident(c.Target))
	}
	for _, k := range m.Key {
		okey = append(okey, "OLD."+db.Ident(k))
	}
	oldKey := okey[0]
	if len(okey) > 1 {
		oldKey = "(" + strings.Join(okey, ", ") + ")"
	}
	recheck := fmt.Sprintf(`IF TG_OP <> 'INSERT' THEN
		PERFORM FROM %[1]s AS b WHERE %[2]s OPERATOR(pg_catalog.=) %[3]s FOR UPDATE;
		IF (SELECT ROW(%[4]s)::pg_catalog.text FROM %[1]s AS b WHERE %[2]s OPERATOR(pg_catalog.=) %[3]s) IS DISTINCT FROM ROW(%[5]s)::pg_catalog.text THEN
			RAISE EXCEPTION %[6]s USING ERRCODE = '40001', HINT = %[7]s;
		END IF;
	END IF;
	`, blue, keyColumns("b", m.Key), oldKey, strings.Join(bcols, ", "), strings.Join(ocols, ", "),
		db.Literal("could not serialize access: the row of "+n.App.String()+" changed since the statement read it"),
		db.Literal("retry the transaction: writes through the old-shape view of a table split are checked as under REPEATABLE READ"))
	// The function writes the greens as their owner, past any row-level
	// security a green was given after cutover (cutover refuses one put
	// on before); the invoker views apply it to reads, and writes through
	// the greens' views to the caller's rows, so a write here would be
	// wider than the caller may make: refuse it.
	greens := make([]string, len(m.Greens))
	for i, g := range m.Greens {
		greens[i] = db.Literal(g.Name)
	}
	rls := fmt.Sprintf(`IF EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace
		WHERE s.nspname = %[1]s AND c.relname OPERATOR(pg_catalog.=) ANY (ARRAY[%[2]s]::pg_catalog.name[]) AND c.relrowsecurity) THEN
		RAISE EXCEPTION %[3]s USING ERRCODE = '42501', HINT = %[4]s;
	END IF;
	`, db.Literal(n.GreenSchema), strings.Join(greens, ", "),
		db.Literal(percent("a green of "+n.App.String()+" has row-level security: writes through the old-shape view, which would bypass it, are refused")),
		db.Literal(percent("write the greens through their views in "+n.App.Schema+" (or in "+n.GreenSchema+"), where the policies apply")))
	body := rls + recheck + fmt.Sprintf(`IF TG_OP = 'DELETE' THEN
		%[1]s
		%[3]s
	ELSE
		%[2]s
		IF TG_OP = 'UPDATE' AND %[4]s IS DISTINCT FROM %[5]s THEN
			%[6]s
		ELSIF TG_OP = 'INSERT' THEN
			%[8]s
		ELSE
			%[7]s
		END IF;
	END IF;`, deletes, writes, delBlue, textKey("OLD", m.Key), textKey("NEW", m.Key), strings.ReplaceAll(move, "\n", "\n\t"), upsert, insert)
	return splitRowFunction(n, SplitViewFunc(n), SplitViewTrigger(n), n.App, "INSTEAD OF", body,
		"IF TG_OP = 'DELETE' THEN\n\t\tRETURN OLD;\n\tEND IF;\n\tRETURN NEW;")
}

// SplitViewTriggerSQL creates the INSTEAD OF trigger on view (the
// old-shape view) that runs SplitViewFunc (INSTEAD OF triggers take no
// WHEN: nothing of greenswap's writes the view).
func SplitViewTriggerSQL(n shadow.Names, view spec.QualifiedName) string {
	fn := SplitViewFunc(n)
	return "CREATE TRIGGER " + db.Ident(SplitViewTrigger(n)) + " INSTEAD OF INSERT OR UPDATE OR DELETE ON " + db.Ident(view.Schema, view.Name) +
		" FOR EACH ROW EXECUTE FUNCTION " + db.Ident(fn.Schema, fn.Name) + "()"
}

// BlueWriteDirection is blue written from a row of its own shape (the
// old-shape view's NEW): every column of blue that is not generated, by
// name, keyed by the split's key.
func BlueWriteDirection(blue *shadow.Table, m *shadow.SplitMapping, view spec.QualifiedName) *shadow.Direction {
	d := &shadow.Direction{Source: view, Target: blue.Name, TargetKey: slices.Clone(m.Key)}
	for _, c := range blue.Columns {
		if c.Generated != "" {
			continue
		}
		d.Columns = append(d.Columns, shadow.ColumnMap{Target: c.Name, Expr: db.Ident(c.Name), Type: shadow.QualifiedType(c.Type), Identity: c.Identity})
	}
	return d
}

// splitReverseDirection is blue written from the rebuild of the greens
// (shadow.SplitMapping.RebuildFrom), keyed by blue's key.
func splitReverseDirection(m *shadow.SplitMapping) *shadow.Direction {
	return &shadow.Direction{Target: m.Blue, Columns: m.Reverse, TargetKey: slices.Clone(m.Key)}
}

// SplitReverseFunctionSQL is CREATE FUNCTION for green g's reverse
// function (n: g's names): the AFTER ROW trigger function on g that, for
// the blue key of the changed row (both keys of a key UPDATE), takes a
// transaction-level advisory lock on that key, rebuilds the blue row from
// every green under a fresh snapshot and upserts it into blue, or deletes
// it from blue when no root green holds the key any more.
//
// The lock serializes the rebuilds of one key: without it two clients
// writing two greens of one row at once would each rebuild from a snapshot
// missing the other's write, and the later upsert would undo the earlier.
// With it, the second rebuild starts after the first commits (READ
// COMMITTED: each statement of the function takes a new snapshot) and
// reads both writes. Blue's row is locked next, for the same reason against
// a writer of blue whose forward write is changing the greens: a rebuild
// from a snapshot taken before that writer committed, upserted once its
// row lock is released, would put back blue's old values.
//
// A key UPDATE moves the blue row in place (trap 13): when blue holds the
// old key and not the new, the row is UPDATEd to the rebuilt new one, so
// FKs referencing blue see an UPDATE; both keys are then settled.
func SplitReverseFunctionSQL(n shadow.Names, m *shadow.SplitMapping, g *shadow.SplitGreen) string {
	blue := db.Ident(m.Blue.Schema, m.Blue.Name)
	rev := splitReverseDirection(m)
	vals := func(rec string) []string {
		out := make([]string, len(m.Key))
		for i := range m.Key {
			out[i] = "CAST(" + rec + "." + db.Ident(g.KeyOf[i]) + " AS " + m.KeyTypes[i] + ")"
		}
		return out
	}
	blueKey := keyColumns("b", m.Key)
	rowOf := func(v []string) string {
		if len(v) == 1 {
			return v[0]
		}
		return "(" + strings.Join(v, ", ") + ")"
	}
	// The key's advisory lock, then blue's row (when there is one): a
	// writer of blue holds that row while its forward write changes the
	// greens, so the rebuild that follows, in a statement (and snapshot)
	// of its own, starts after that writer commits and sees its writes.
	lock := func(rec string) string {
		return "PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext(" + db.Literal("greenswap split "+migrationOf(n)) +
			"), pg_catalog.hashtext(ROW(" + strings.Join(vals(rec), ", ") + ")::pg_catalog.text));\n\t\t" +
			"PERFORM FROM " + blue + " AS b WHERE " + blueKey + " " + eq + " " + rowOf(vals(rec)) + " FOR UPDATE;"
	}
	rootHas := func(rec string) string {
		var ex []string
		f := m.KeyFilter(vals(rec))
		for _, r := range m.Roots() {
			ex = append(ex, "EXISTS (SELECT FROM "+db.Ident(n.GreenSchema, r.Name)+" AS r WHERE "+f(r)+")")
		}
		return strings.Join(ex, " OR ")
	}
	b := rowsql.Builder{Dir: rev, Into: blue}
	settle := func(rec string) string {
		from := m.RebuildFrom(n.GreenSchema, m.KeyFilter(vals(rec)))
		return "IF " + rootHas(rec) + " THEN\n\t\t" + b.Insert(from, rowsql.DoUpdate, "\t\t") + ";\n\tELSE\n\t\tDELETE FROM " + blue +
			" AS b WHERE " + blueKey + " " + eq + " " + rowOf(vals(rec)) + ";\n\tEND IF;"
	}
	// The in-place move: every written column but a GENERATED ALWAYS one;
	// a GENERATED ALWAYS key cannot move, and settles by delete and insert.
	var cols, exprs []string
	movable := true
	for _, c := range rev.Columns {
		if c.Identity == "a" {
			if slices.Contains(m.Key, c.Target) {
				movable = false
			}
			continue
		}
		cols = append(cols, db.Ident(c.Target))
		exprs = append(exprs, rev.ValueExpr(c.Target))
	}
	move := ""
	if movable {
		move = "UPDATE " + blue + " AS b SET (" + strings.Join(cols, ", ") + ") = (SELECT " + strings.Join(exprs, ", ") +
			" FROM " + m.RebuildFrom(n.GreenSchema, m.KeyFilter(vals("NEW"))) + ")\n\t\tWHERE " + blueKey + " " + eq + " " + rowOf(vals("OLD")) +
			" AND NOT EXISTS (SELECT FROM " + blue + " AS u WHERE " + keyColumns("u", m.Key) + " " + eq + " " + rowOf(vals("NEW")) + ") AND (" + rootHas("NEW") + ");"
	}
	keyText := func(rec string) string {
		parts := make([]string, len(g.KeyOf))
		for i, c := range g.KeyOf {
			parts[i] = rec + "." + db.Ident(c) + "::pg_catalog.text"
		}
		return "ROW(" + strings.Join(parts, ", ") + ")"
	}
	body := fmt.Sprintf(`IF TG_OP = 'UPDATE' AND %[1]s IS DISTINCT FROM %[2]s THEN
		%[3]s
		%[4]s
		%[5]s
		%[6]s
		%[7]s
	ELSIF TG_OP = 'DELETE' THEN
		%[3]s
		%[6]s
	ELSE
		%[4]s
		%[7]s
	END IF;`, keyText("OLD"), keyText("NEW"), lock("OLD"), lock("NEW"), move,
		strings.ReplaceAll(settle("OLD"), "\n", "\n\t"), strings.ReplaceAll(settle("NEW"), "\n", "\n\t"))
	return splitRowFunction(n, n.ReverseFunc, n.Trigger, n.Green, "AFTER", body, "RETURN NULL;")
}

// splitTruncateFunctionSQL is the TRUNCATE companion of a split: on blue
// (fn: the forward one, fired AFTER TRUNCATE) it empties every green in one
// statement; on a green (fn: that green's reverse one) it is fired BEFORE
// TRUNCATE and refuses it (0A000: emptying one green says nothing about the
// blue rows the others still make; delete the rows, or truncate blue), and
// it is also the green's write gate until synced (GateTrigger, 55000).
func splitTruncateFunctionSQL(fn spec.QualifiedName, n shadow.Names, m *shadow.SplitMapping, onBlue bool) string {
	trig := n.Trigger + "_truncate"
	var body string
	if onBlue {
		greens := make([]string, len(m.Greens))
		for i, g := range m.Greens {
			greens[i] = db.Ident(n.GreenSchema, g.Name)
		}
		body = fmt.Sprintf(`
DECLARE
	prev pg_catalog.text;
BEGIN
	IF TG_NAME <> %[1]s OR TG_TABLE_SCHEMA <> %[2]s OR TG_TABLE_NAME <> %[3]s OR TG_WHEN <> 'AFTER' OR TG_LEVEL <> 'STATEMENT' OR TG_OP <> 'TRUNCATE' THEN
		%[4]s
	END IF;
	prev := pg_catalog.current_setting(%[5]s, true);
	PERFORM pg_catalog.set_config(%[5]s, pg_catalog.pg_trigger_depth()::pg_catalog.text, true);
	TRUNCATE %[6]s;
	PERFORM pg_catalog.set_config(%[5]s, COALESCE(prev, ''), true);
	RETURN NULL;
END`, db.Literal(trig), db.Literal(n.Blue.Schema), db.Literal(n.Blue.Name), misfiredSQL(fn, n, trig, n.Blue), db.Literal(n.SyncFlag), strings.Join(greens, ", "))
	} else {
		body = fmt.Sprintf(`
BEGIN
	IF TG_NAME = %[1]s AND TG_TABLE_SCHEMA = %[2]s AND TG_TABLE_NAME = %[3]s AND TG_WHEN = 'BEFORE' AND TG_LEVEL = 'STATEMENT' THEN
		RAISE EXCEPTION %[4]s, TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
			USING ERRCODE = '55000', HINT = %[5]s;
	END IF;
	IF TG_NAME = %[6]s AND TG_TABLE_SCHEMA = %[2]s AND TG_TABLE_NAME = %[3]s AND TG_WHEN = 'BEFORE' AND TG_LEVEL = 'STATEMENT' AND TG_OP = 'TRUNCATE' THEN
		RAISE EXCEPTION %[7]s, TG_TABLE_SCHEMA, TG_TABLE_NAME
			USING ERRCODE = '0A000', HINT = %[8]s;
	END IF;
	%[9]s
END`, db.Literal(GateTrigger(n)), db.Literal(n.GreenSchema), db.Literal(n.Green.Name),
			db.Literal(percent("greenswap migration "+migrationOf(n)+" is not synced yet: ")+"% on %.% refused"),
			db.Literal(percent(fmt.Sprintf("the greens accept writes from state synced on, when they also reach blue; until then write through the app name (%s) or blue's schema (%s)",
				db.Ident(n.App.Schema, n.App.Name), db.Ident(n.Blue.Schema, n.Blue.Name)))),
			db.Literal(trig),
			db.Literal(percent("greenswap migration "+migrationOf(n)+" splits "+n.App.String()+": ")+"TRUNCATE of one green %.% is not carried to blue"),
			db.Literal("DELETE its rows instead (each delete rebuilds its blue row), or TRUNCATE blue, which empties every green"),
			misfiredSQL(fn, n, trig, n.Green))
	}
	return "CREATE OR REPLACE FUNCTION " + db.Ident(fn.Schema, fn.Name) +
		"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS " + dollarQuote(body)
}

// createFunction is CREATE OR REPLACE FUNCTION fn() for a row trigger
// body, SECURITY DEFINER, search_path as every sync function's.
func createFunction(fn spec.QualifiedName, appSchema, body string) string {
	return "CREATE OR REPLACE FUNCTION " + db.Ident(fn.Schema, fn.Name) +
		"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = " + shadow.SearchPathFor(appSchema) +
		" AS " + dollarQuote(body)
}

// SplitFunctions are every function a split creates (names: the greens'
// names, shadow.SplitNames, in spec order): the forward one and its TRUNCATE
// companion, then per green its reverse one and companion. Teardown and
// finalize drop them (they live in the version schemas).
func SplitFunctions(names []shadow.Names) []spec.QualifiedName {
	out := []spec.QualifiedName{names[0].ForwardFunc, truncateFunc(names[0].ForwardFunc)}
	for _, n := range names {
		out = append(out, n.ReverseFunc, truncateFunc(n.ReverseFunc))
	}
	return out
}

// SplitInstallStep creates a split's functions (owned by owner, EXECUTE
// revoked from PUBLIC in the same transaction), the forward triggers on
// blue (enabled), on each green the reverse triggers (disabled until
// synced), the TRUNCATE refusal (enabled) and the write gate (enabled
// until synced). names are shadow.SplitNames(spec), m.Greens' Spec indexes
// into them. The view function (SplitViewFunctionSQL) is cutover's.
func SplitInstallStep(names []shadow.Names, m *shadow.SplitMapping, owner string) shadow.Step {
	n0 := names[0]
	sql := []string{
		SplitForwardFunctionSQL(n0, m),
		splitTruncateFunctionSQL(truncateFunc(n0.ForwardFunc), n0, m, true),
	}
	for k := range m.Greens {
		g := &m.Greens[k]
		n := names[g.Spec]
		sql = append(sql, SplitReverseFunctionSQL(n, m, g), splitTruncateFunctionSQL(truncateFunc(n.ReverseFunc), n, m, false))
	}
	for _, fn := range SplitFunctions(names) {
		f := db.Ident(fn.Schema, fn.Name) + "()"
		sql = append(sql, "ALTER FUNCTION "+f+" OWNER TO "+db.Ident(owner), "REVOKE ALL ON FUNCTION "+f+" FROM PUBLIC")
	}
	guard := " WHEN (" + splitGuard(n0, owner) + ")"
	blue := db.Ident(n0.Blue.Schema, n0.Blue.Name)
	fwdTrunc := truncateFunc(n0.ForwardFunc)
	sql = append(sql,
		"CREATE TRIGGER "+db.Ident(n0.Trigger)+" AFTER INSERT OR UPDATE OR DELETE ON "+blue+" FOR EACH ROW"+guard+
			" EXECUTE FUNCTION "+db.Ident(n0.ForwardFunc.Schema, n0.ForwardFunc.Name)+"()",
		"CREATE TRIGGER "+db.Ident(n0.Trigger+"_truncate")+" AFTER TRUNCATE ON "+blue+" FOR EACH STATEMENT"+guard+
			" EXECUTE FUNCTION "+db.Ident(fwdTrunc.Schema, fwdTrunc.Name)+"()")
	for k := range m.Greens {
		n := names[m.Greens[k].Spec]
		rel := db.Ident(n.Green.Schema, n.Green.Name)
		tr := truncateFunc(n.ReverseFunc)
		sql = append(sql,
			"CREATE TRIGGER "+db.Ident(n.Trigger)+" AFTER INSERT OR UPDATE OR DELETE ON "+rel+" FOR EACH ROW"+guard+
				" EXECUTE FUNCTION "+db.Ident(n.ReverseFunc.Schema, n.ReverseFunc.Name)+"()",
			"ALTER TABLE "+rel+" DISABLE TRIGGER "+db.Ident(n.Trigger),
			"CREATE TRIGGER "+db.Ident(n.Trigger+"_truncate")+" BEFORE TRUNCATE ON "+rel+" FOR EACH STATEMENT"+guard+
				" EXECUTE FUNCTION "+db.Ident(tr.Schema, tr.Name)+"()",
			"CREATE TRIGGER "+db.Ident(GateTrigger(n))+" BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON "+rel+
				" FOR EACH STATEMENT WHEN ("+gateGuard(n, owner)+") EXECUTE FUNCTION "+db.Ident(tr.Schema, tr.Name)+"()")
	}
	return shadow.Step{
		Name:          "install-sync-triggers",
		Description:   "create the split's sync triggers: blue → every green (on), each green → blue (off until synced), each green's write gate (on until synced) and TRUNCATE refusal",
		SQL:           sql,
		Lock:          "SHARE ROW EXCLUSIVE on " + n0.Blue.String() + " (waits for in-flight writes, blocks new ones while held)",
		LockHold:      "milliseconds",
		Transactional: true,
	}
}

// SplitSetReverseSQL switches every green's green → blue direction on or
// off, and each green's write gate the other way (SetReverseSQL for a
// split; the TRUNCATE refusal stays on). It first locks blue, then every
// green, in one statement, in the order writers take them (a write to blue
// reaches the greens through its trigger): one ALTER TABLE after another
// would take the greens' locks in an order of their own and deadlock with
// a writer between two of them.
func SplitSetReverseSQL(names []shadow.Names, on bool) []string {
	verb, gate := "DISABLE", "ENABLE"
	if on {
		verb, gate = "ENABLE", "DISABLE"
	}
	rels := []string{db.Ident(names[0].Blue.Schema, names[0].Blue.Name)}
	for _, n := range names {
		rels = append(rels, db.Ident(n.Green.Schema, n.Green.Name))
	}
	out := []string{"LOCK TABLE " + strings.Join(rels, ", ") + " IN SHARE ROW EXCLUSIVE MODE"}
	for _, n := range names {
		rel := db.Ident(n.Green.Schema, n.Green.Name)
		out = append(out,
			"ALTER TABLE "+rel+" "+verb+" TRIGGER "+db.Ident(n.Trigger),
			"ALTER TABLE "+rel+" "+gate+" TRIGGER "+db.Ident(GateTrigger(n)))
	}
	return out
}

// SplitTeardownSQL drops what a split installed on its greens (the reverse
// trigger, the TRUNCATE refusal, the write gate), then every function of
// the split, the view function included (IF EXISTS: rollback dropped it).
// Blue's triggers go with blue; the view trigger with the view, which
// must be dropped before this runs.
func SplitTeardownSQL(names []shadow.Names) []string {
	var out []string
	for _, n := range names {
		rel := db.Ident(n.Green.Schema, n.Green.Name)
		for _, t := range []string{n.Trigger, n.Trigger + "_truncate", GateTrigger(n)} {
			out = append(out, "DROP TRIGGER IF EXISTS "+db.Ident(t)+" ON "+rel)
		}
	}
	fns := append(SplitFunctions(names), SplitViewFunc(names[0]))
	for _, fn := range fns {
		out = append(out, "DROP FUNCTION IF EXISTS "+db.Ident(fn.Schema, fn.Name)+"()")
	}
	return out
}
