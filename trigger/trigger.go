// Package trigger generates and installs the row triggers that keep blue and
// green equal in trigger mode. See README.md for the invariants.
package trigger

import (
	"fmt"
	"slices"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/rowsql"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// FunctionSQL returns CREATE OR REPLACE FUNCTION for one direction: a row
// trigger function that applies the source table's change to the target
// through d's expressions. appSchema is the app table's schema (the
// function's search_path is shadow.SearchPathFor(appSchema)).
//
// The echo guard (trap 2) is the transaction-local setting flag, holding the
// trigger depth of the sync write while it runs: the function sets it to its
// own pg_trigger_depth() just before the write to the other side and puts
// the previous value back right after. The other side's row trigger skips
// only a write made at exactly that depth by a member of the table owner
// (EchoGuard, in its WHEN clause), so a write one level deeper (an FK cascade
// or a user trigger fired by the sync write) is mirrored, and no role that
// sets the flag itself can make its writes skip the other side.
//
// The function is SECURITY DEFINER (owned by the table owner, see
// InstallStep) so a client allowed to INSERT into one shape does not also need
// UPDATE and DELETE on the other for the upsert. Because it runs as the
// owner it trusts nothing of its caller (trap 11): it raises 42501 unless it
// was fired by its own trigger on its own side's schema, every name it
// writes is schema-qualified, and its search_path names pg_temp last.
func FunctionSQL(fn spec.QualifiedName, flag, appSchema string, d *shadow.Direction) string {
	return functionSQL(fn, flag, appSchema, d, "", "", nil, "")
}

// eq is the key comparison of every statement the sync functions run:
// pg_catalog's operator by name, never one a role with CREATE on a schema
// of the function's search_path planted for the key's exact types (an
// exact match wins over pg_catalog's candidate reached through a cast,
// whatever the path's order), which would run as the table owner.
const eq = "OPERATOR(pg_catalog.=)"

// ReverseFunctionSQL is FunctionSQL of m's reverse direction (green →
// blue). When green's key has columns beyond blue's (green (tenant_id, id)
// over blue (id)), two green rows can hold one blue key: a write through
// green whose blue key is blue's row of another green key must not
// overwrite that row (it would be another tenant's, written with the
// owner's rights): the upsert updates only a blue row whose green key is
// the new row's (sameGreenRow) and otherwise fails with 23505, as a
// duplicate key in blue does (TestReverseUpsertNeverTakesAnotherGreenRow).
func ReverseFunctionSQL(fn spec.QualifiedName, flag, appSchema string, m *shadow.Mapping) string {
	return functionSQL(fn, flag, appSchema, &m.Reverse, "", "", nil, sameGreenRow(m))
}

// sameGreenRow is the DO UPDATE condition of the reverse upsert that
// holds when the conflicting blue row maps to the new green row's key:
// each green key column blue's key does not have, computed by the forward
// mapping from the existing blue row, equals NEW's. "" when green's key is blue's.
func sameGreenRow(m *shadow.Mapping) string {
	var conds []string
	for _, k := range m.Forward.TargetKey {
		if slices.Contains(m.Key, k) {
			if c := m.Forward.Column(k); c != nil && !c.Explicit {
				continue
			}
		}
		// Over a row of the existing blue row's fields (named by the
		// target's own name: its bare columns would be ambiguous with
		// EXCLUDED's), so the forward expression reads blue's columns.
		// Compared as text (pg_catalog's text operators, whatever a
		// planted operator for the key's own type says).
		conds = append(conds, "(SELECT "+m.Forward.ValueExpr(k)+"::pg_catalog.text FROM (SELECT "+db.Ident(m.Reverse.Target.Name)+".*) AS s)"+
			" IS NOT DISTINCT FROM (NEW."+db.Ident(k)+")::pg_catalog.text")
	}
	return strings.Join(conds, " AND ")
}

// functionSQL is FunctionSQL with two optional statements placed just
// before and just after the write to the target, and, with fwd (the
// mapping's other direction), logical mode's reverse function (see
// logical.go): an UPDATE that keeps its key updates the target row in
// place (never inserting it), and a write onto a row the stream has not
// brought to green yet is refused (staleGuard).
// searchPath is the app schema (FunctionSQL's appSchema).
func functionSQL(fn spec.QualifiedName, flag, searchPath string, d *shadow.Direction, before, after string, fwd *shadow.Direction, ownRow string) string {
	n := namesOf(flag)
	target := db.Ident(d.Target.Schema, d.Target.Name)
	keyExprs := make([]string, len(d.TargetKey))
	for i, k := range d.TargetKey {
		keyExprs[i] = d.ValueExpr(k)
	}
	keyOf := func(rec string) string {
		return "(SELECT " + strings.Join(keyExprs, ", ") + " FROM (SELECT " + rec + ".*) AS s)"
	}
	if fwd == nil && byNameKey(d) != nil {
		// Trigger mode, a key mapped by name: the key is a cast of the
		// record's own fields, which plpgsql binds as parameters; no
		// subquery over the row to plan and run for every write.
		keyOf = func(rec string) string { return directKey(d, rec) }
	}
	// rowKeyOf is the "did the key change" operand: the text forms of the
	// key, because types like numeric or a nondeterministic collation call
	// values equal (1.0 = 1.00) that are different keys once written.
	// Equal text means an equal key; unequal text at worst re-keys a row
	// that kept its key (an UPDATE of the key to an equal value).
	rowKeyOf := func(rec string) string {
		texts := make([]string, len(keyExprs))
		for i, e := range keyExprs {
			texts[i] = e + "::pg_catalog.text"
		}
		return "(SELECT ROW(" + strings.Join(texts, ", ") + ") FROM (SELECT " + rec + ".*) AS s)"
	}
	oldKey, newKey := rowKeyOf("OLD"), rowKeyOf("NEW")
	if k := byNameKey(d); k != nil {
		oldKey, newKey = textKey("OLD", k), textKey("NEW", k)
	}
	// The same insert as every other copy through the mapping (rowsql),
	// over the trigger's NEW row.
	b := rowsql.Builder{Dir: d, Into: target}
	lhs := keyColumns("t", d.TargetKey)
	deleteBy := func(rec string) string {
		return "DELETE FROM " + target + " AS t WHERE " + lhs + " " + eq + " " + keyOf(rec) + ";"
	}
	upsert := b.Insert("(SELECT NEW.*) AS s", rowsql.DoUpdate, "\t\t\t") + ";"
	if ownRow != "" && strings.Contains(upsert, " DO UPDATE SET ") {
		upsert = strings.TrimSuffix(upsert, ";") + "\n\t\t\tWHERE " + ownRow + ";" +
			"\n\t\t\tIF NOT FOUND THEN\n\t\t\t\tRAISE EXCEPTION " + db.Literal(percent(fmt.Sprintf("duplicate key: %s already has this key under another key of %s", db.Ident(d.Target.Schema, d.Target.Name), db.Ident(d.Source.Schema, d.Source.Name)))) +
			" USING ERRCODE = '23505';\n\t\t\tEND IF;"
	}
	write, guard, move := keptKeyUpdate(d, target, lhs, keyOf("NEW"), upsert), "", upsert
	if fwd != nil {
		// Logical mode: blue is the truth until cutover, so a row under the
		// new key there is a conflict, never a row to overwrite (staleGuard).
		insert := b.Insert("(SELECT NEW.*) AS s", rowsql.Plain, "\t\t\t") + ";"
		write = inPlaceUpdate(d, target, lhs, keyOf("NEW"), insert)
		move = insert
		guard = staleGuard(d, fwd, target, lhs, keyOf("OLD"), keyOf("NEW"), oldKey, newKey)
	}
	body := fmt.Sprintf(`
#variable_conflict use_column
DECLARE
	prev pg_catalog.text;
	setres pg_catalog.text;
BEGIN
	IF TG_NAME <> %[1]s OR TG_TABLE_SCHEMA <> %[2]s OR TG_WHEN <> 'AFTER' OR TG_LEVEL <> 'ROW' THEN
		%[3]s
	END IF;
	prev := pg_catalog.current_setting(%[4]s, true);
	setres := pg_catalog.set_config(%[4]s, pg_catalog.pg_trigger_depth()::pg_catalog.text, true);%[12]s%[5]s
	IF TG_OP = 'DELETE' THEN
		%[6]s
	ELSIF TG_OP = 'UPDATE' AND %[7]s IS DISTINCT FROM %[8]s THEN
		%[9]s
	ELSE
		%[10]s
	END IF;%[11]s
	setres := pg_catalog.set_config(%[4]s, COALESCE(prev, ''), true);
	RETURN NULL;
END`,
		db.Literal(n.Trigger), db.Literal(d.Source.Schema), misfiredSQL(fn, n, n.Trigger, d.Source),
		db.Literal(flag), stmt(before), deleteBy("OLD"), oldKey, newKey,
		rekey(d, target, lhs, keyOf("OLD"), keyOf("NEW"), deleteBy("OLD"), move), write, stmt(after), guard)
	return "CREATE OR REPLACE FUNCTION " + db.Ident(fn.Schema, fn.Name) +
		"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = " + shadow.SearchPathFor(searchPath) +
		" AS " + dollarQuote(body)
}

// keptKeyUpdate is what trigger mode does for an INSERT (the upsert) and
// for an UPDATE that keeps the target key: a plain UPDATE of the target row
// by key, which is all a synced pair needs, and the upsert only when no row
// has the key (the backfill has not copied it yet, or is copying it right
// now: the upsert then waits for the batch and overwrites its copy, as
// before, so trap 1 stays closed). The UPDATE skips the upsert's conflict
// probe of the unique index and its row lock (a second WAL record and page
// write on every synced write); it sets what the upsert's DO UPDATE sets
// (Direction.UpdateSet's columns), so the row it leaves is the same.
// Without such a column (every written column is the key or GENERATED
// ALWAYS) the upsert's DO NOTHING stays.
func keptKeyUpdate(d *shadow.Direction, target, lhs, newKey, upsert string) string {
	var sets, cols, exprs []string
	direct := true
	for _, c := range d.Columns {
		if slices.Contains(d.TargetKey, c.Target) || c.Identity == "a" {
			continue
		}
		cols = append(cols, db.Ident(c.Target))
		exprs = append(exprs, d.ValueExpr(c.Target))
		sets = append(sets, db.Ident(c.Target)+" = "+directValue(c, "NEW"))
		direct = direct && !c.Explicit
	}
	if len(cols) == 0 {
		return upsert
	}
	set := "(" + strings.Join(cols, ", ") + ") = (SELECT " + strings.Join(exprs, ", ") + " FROM (SELECT NEW.*) AS s)"
	if direct {
		// Every column by name: casts of NEW's fields, no subquery.
		set = strings.Join(sets, ", ")
	}
	return "IF TG_OP = 'UPDATE' THEN\n\t\t\tUPDATE " + target + " AS t SET " + set + " WHERE " + lhs + " " + eq + " " + newKey + ";" +
		"\n\t\t\tIF NOT FOUND THEN\n\t\t\t\t" + strings.ReplaceAll(upsert, "\n\t\t\t", "\n\t\t\t\t") + "\n\t\t\tEND IF;" +
		"\n\t\tELSE\n\t\t\t" + upsert + "\n\t\tEND IF;"
}

// directValue is a column mapped by name, computed from the record's field
// itself: CAST((NEW."c") AS type), the same value as ValueExpr over a
// subquery of the row.
func directValue(c shadow.ColumnMap, rec string) string {
	return c.Cast(rec + "." + db.Ident(c.Target))
}

// directKey is the target key of rec when every key column maps by name:
// the cast field, or a row of them for a composite key.
func directKey(d *shadow.Direction, rec string) string {
	parts := make([]string, len(d.TargetKey))
	for i, k := range d.TargetKey {
		parts[i] = directValue(*d.Column(k), rec)
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return "ROW(" + strings.Join(parts, ", ") + ")"
}

// rekey is what an UPDATE that changes the key does on the target (trap 13):
// an UPDATE of the row under the old key, key columns included, so foreign
// keys referencing the target see an UPDATE (ON UPDATE CASCADE follows, ON
// DELETE CASCADE never fires) and the target's columns that the mapping does
// not write keep their values. Only when no row has the old key (the
// backfill has not copied it yet) is the new row upserted. A target key
// column that is GENERATED ALWAYS cannot be updated: that key moves by
// DELETE and upsert, as before.
//
// The UPDATE moves the row only while no target row holds the new key
// already: in sync that never happens, but while logical mode hands over to
// the triggers (Retire) green may still hold a row the stream has yet to
// delete there, and moving onto it would fail the client's write with a
// unique violation. Then, as when no row had the old key, the old row goes
// and the new one is upserted.
func rekey(d *shadow.Direction, target, lhs, oldKey, newKey, deleteOld, upsert string) string {
	var cols, exprs []string
	for _, c := range d.Columns {
		if c.Identity == "a" {
			if slices.Contains(d.TargetKey, c.Target) {
				return deleteOld + "\n\t\t" + upsert
			}
			continue // PostgreSQL lets it be updated only to DEFAULT; its value never changes
		}
		cols = append(cols, db.Ident(c.Target))
		exprs = append(exprs, d.ValueExpr(c.Target))
	}
	return "UPDATE " + target + " AS t SET (" + strings.Join(cols, ", ") + ") = (SELECT " + strings.Join(exprs, ", ") +
		" FROM (SELECT NEW.*) AS s) WHERE " + lhs + " " + eq + " " + oldKey +
		" AND NOT EXISTS (SELECT FROM " + target + " AS u WHERE " + keyColumns("u", d.TargetKey) + " " + eq + " " + newKey + ");" +
		"\n\t\tIF NOT FOUND THEN\n\t\t\t" + deleteOld + "\n\t\t\t" + upsert + "\n\t\tEND IF;"
}

// misfiredSQL is the RAISE of a sync function fired by anything but its own
// trigger on its own table's schema: 42501, because the function runs as the
// table owner and a role that attaches it to a table of its own (a temp
// table will do) would write the other side with the owner's rights.
func misfiredSQL(fn spec.QualifiedName, n shadow.Names, trigger string, on spec.QualifiedName) string {
	return "RAISE EXCEPTION " + db.Literal(percent(fmt.Sprintf("%s() is greenswap's sync function of migration %s and runs only as trigger %s on %s, not as ",
		db.Ident(fn.Schema, fn.Name), migrationOf(n), trigger, db.Ident(on.Schema, on.Name)))+"% % trigger % on %.%") +
		", TG_WHEN, TG_LEVEL, TG_NAME, TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = '42501', HINT = " +
		db.Literal("greenswap's functions are not for other tables; REVOKE EXECUTE on them from any role that was granted it") + ";"
}

// percent escapes % for a RAISE format string.
func percent(s string) string { return strings.ReplaceAll(s, "%", "%%") }

// namesOf recovers the names of the migration that owns sync flag flag.
// shadow.NamesFor derives the flag, the trigger and the version schemas from
// the migration name alone, so the generators whose parameters predate the
// self-check (functionSQL, truncateFunctionSQL) need nothing more. The app
// table's name is not among them and stays empty.
func namesOf(flag string) shadow.Names {
	return shadow.NamesFor(strings.TrimPrefix(flag, flagPrefix), spec.QualifiedName{})
}

// flagPrefix is how shadow.NamesFor names the sync flag.
const flagPrefix = "greenswap.sync_"

func migrationOf(n shadow.Names) string { return strings.TrimPrefix(n.SyncFlag, flagPrefix) }

// byNameKey returns the target key's columns when every one is copied from
// the source column of the same name (no spec expression), else nil.
func byNameKey(d *shadow.Direction) []string {
	for _, k := range d.TargetKey {
		if c := d.Column(k); c == nil || c.Explicit {
			return nil
		}
	}
	return d.TargetKey
}

// textKey is rowKeyOf for a key mapped by name: the source columns' text
// forms (equal text, equal input, equal cast). It is a plain expression,
// which plpgsql evaluates without starting a query, unlike rowKeyOf's
// subquery over the mapped row: about 15% of the trigger's cost on an UPDATE.
func textKey(rec string, cols []string) string {
	parts := make([]string, len(cols))
	for i, c := range cols {
		parts[i] = rec + "." + db.Ident(c) + "::pg_catalog.text"
	}
	return "ROW(" + strings.Join(parts, ", ") + ")"
}

// TruncateFunctionSQL returns a statement-trigger function that empties the
// target when the source is truncated (TRUNCATE fires no row triggers). The
// source is the other version schema's table.
func TruncateFunctionSQL(fn spec.QualifiedName, flag string, target spec.QualifiedName) string {
	return truncateFunctionSQL(fn, flag, target, "", "")
}

// truncateFunctionSQL is TruncateFunctionSQL with optional statements just
// before and after the TRUNCATE (logical mode's echo markers).
//
// The reverse one (it fires on green) is also green's write gate (GateSQL):
// fired by the gate trigger it refuses the statement. Hosting the gate here
// keeps the set of functions that teardown and finalize drop unchanged.
//
// Its search_path is pg_catalog, pg_temp: unlike the row functions it
// evaluates no spec expression, so it needs nothing from the app schema.
func truncateFunctionSQL(fn spec.QualifiedName, flag string, target spec.QualifiedName, before, after string) string {
	n := namesOf(flag)
	src := spec.QualifiedName{Schema: n.GreenSchema, Name: target.Name}
	if target.Schema == n.GreenSchema {
		src.Schema = n.BlueSchema
	}
	gate := ""
	if src.Schema == n.GreenSchema {
		gate = fmt.Sprintf(`
	IF TG_NAME = %[1]s AND TG_TABLE_SCHEMA = %[2]s AND TG_WHEN = 'BEFORE' AND TG_LEVEL = 'STATEMENT' THEN
		RAISE EXCEPTION %[3]s, TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
			USING ERRCODE = '55000', HINT = %[4]s;
	END IF;`, db.Literal(GateTrigger(n)), db.Literal(n.GreenSchema),
			db.Literal(percent("greenswap migration "+migrationOf(n)+" is not synced yet: ")+"% on %.% refused"),
			db.Literal(percent(fmt.Sprintf("green (%s) accepts writes from state synced on, when they also reach blue; until then write through the app name (%s) or blue's schema (%s)",
				db.Ident(n.GreenSchema), db.Ident(target.Name), db.Ident(n.BlueSchema, target.Name)))))
	}
	trig := n.Trigger + "_truncate"
	body := fmt.Sprintf(`
DECLARE
	prev pg_catalog.text;
BEGIN%[1]s
	IF TG_NAME <> %[2]s OR TG_TABLE_SCHEMA <> %[3]s OR TG_WHEN <> 'AFTER' OR TG_LEVEL <> 'STATEMENT' OR TG_OP <> 'TRUNCATE' THEN
		%[4]s
	END IF;
	prev := pg_catalog.current_setting(%[5]s, true);
	PERFORM pg_catalog.set_config(%[5]s, pg_catalog.pg_trigger_depth()::pg_catalog.text, true);%[6]s
	TRUNCATE %[7]s;%[8]s
	PERFORM pg_catalog.set_config(%[5]s, COALESCE(prev, ''), true);
	RETURN NULL;
END`, gate, db.Literal(trig), db.Literal(src.Schema), misfiredSQL(fn, n, trig, src),
		db.Literal(flag), stmt(before), db.Ident(target.Schema, target.Name), stmt(after))
	return "CREATE OR REPLACE FUNCTION " + db.Ident(fn.Schema, fn.Name) +
		"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS " + dollarQuote(body)
}

// stmt places an optional extra statement on its own line ("" → nothing).
func stmt(s string) string {
	if s == "" {
		return ""
	}
	return "\n\t" + s
}

func dollarQuote(body string) string {
	tag := "$gs$"
	for i := 0; strings.Contains(body, tag); i++ {
		tag = fmt.Sprintf("$gs%d$", i)
	}
	return tag + body + tag
}

// truncateFunc names the TRUNCATE companion of a row trigger function.
func truncateFunc(fn spec.QualifiedName) spec.QualifiedName {
	return spec.QualifiedName{Schema: fn.Schema, Name: fn.Name + "_truncate"}
}

// EchoGuard is the WHEN condition of greenswap's triggers: true unless the
// statement being written is greenswap's own sync write, that is, the sync
// flag holds the current trigger depth (set by the sync function just around
// its write, or '0' by SyncFlagSQL for greenswap's own top-level sessions) and
// the writing role is a member of the table owner. WHEN is evaluated as the
// role that runs the writing statement: inside the SECURITY DEFINER sync
// function that is the owner; a client that sets the flag itself is not (a
// role that can become the owner could drop the triggers anyway). The flag
// is read first so that the common case (not set) costs one
// current_setting and no role lookup.
func EchoGuard(n shadow.Names, owner string) string {
	return "pg_catalog.current_setting(" + db.Literal(n.SyncFlag) + ", true) IS DISTINCT FROM pg_catalog.pg_trigger_depth()::pg_catalog.text" +
		" OR NOT " + ownerMember(owner)
}

// ownerMember is true when the current role is a member of owner. By name:
// PostgreSQL refuses a regrole constant in a stored expression (roles are
// shared objects it does not track dependencies on), so renaming the owner
// during a migration makes the triggers fail until greenswap re-creates them.
func ownerMember(owner string) string {
	return "pg_catalog.pg_has_role(" + db.Literal(owner) + "::pg_catalog.name, 'MEMBER')"
}

// gateGuard is the gate's WHEN condition: true unless a sync write of the
// owner is in progress at this depth or above. Looser than EchoGuard on
// purpose: a write to green one level inside a forward sync write (green's
// own ON DELETE CASCADE of a row the sync deleted) is part of that sync
// write and must not be refused; its echo is not a concern while green's
// reverse trigger is off, which it is whenever the gate is on.
func gateGuard(n shadow.Names, owner string) string {
	return "COALESCE(pg_catalog.current_setting(" + db.Literal(n.SyncFlag) + ", true), '') = ''" +
		" OR NOT " + ownerMember(owner)
}

// UsageGuard is the WHEN condition of finalize's usage sensor on blue
// (package cutover): true unless the write happens inside a sync write of
// the owner, at its depth or below, as gateGuard. EchoGuard is too narrow
// there: a sync write to one blue that cascades through a foreign key into
// another blue (or the same one) runs one level deeper, and the cascade was
// counted as a client writing blue (break5 finding 01). A client that sets
// the flag itself is still recorded (it is not the owner).
func UsageGuard(n shadow.Names, owner string) string { return gateGuard(n, owner) }

// GateTrigger names green's write gate: a BEFORE INSERT OR UPDATE OR DELETE
// OR TRUNCATE statement trigger on green and on each of its partitions,
// enabled from green's creation until synced, whose function
// (gs_reverse_truncate) refuses the statement with SQLSTATE 55000. Without
// it green's version schema would accept writes that never reach blue
// (trap 12). The gs_sync_ prefix marks it as greenswap's own for every
// catalog read that skips the sync triggers.
func GateTrigger(n shadow.Names) string { return n.Trigger + "_gate" }

// triggerSQL creates the row and TRUNCATE triggers on table, disabled when enabled is false.
//
// Their WHEN clause is the echo guard: the other side's sync write does not
// even queue an event, let alone call a function.
func triggerSQL(n shadow.Names, owner string, table, fn spec.QualifiedName, enabled bool) []string {
	rel := db.Ident(table.Schema, table.Name)
	guard := " WHEN (" + EchoGuard(n, owner) + ")"
	sql := []string{
		"CREATE TRIGGER " + db.Ident(n.Trigger) + " AFTER INSERT OR UPDATE OR DELETE ON " + rel +
			" FOR EACH ROW" + guard + " EXECUTE FUNCTION " + db.Ident(fn.Schema, fn.Name) + "()",
		"CREATE TRIGGER " + db.Ident(n.Trigger+"_truncate") + " AFTER TRUNCATE ON " + rel +
			" FOR EACH STATEMENT" + guard + " EXECUTE FUNCTION " + db.Ident(truncateFunc(fn).Schema, truncateFunc(fn).Name) + "()",
	}
	if !enabled {
		sql = append(sql, "ALTER TABLE "+rel+" DISABLE TRIGGER "+db.Ident(n.Trigger),
			"ALTER TABLE "+rel+" DISABLE TRIGGER "+db.Ident(n.Trigger+"_truncate"))
	}
	return sql
}

// gateSQL creates green's write gate (GateTrigger), enabled, on green and on
// every partition of it. A statement trigger of a partitioned table fires
// only for statements that name it, so a write naming a partition needs the
// partition's own; the partitions are listed when the statement runs (they
// are created with green, before it). A partition attached later has none.
func gateSQL(n shadow.Names, owner string) []string {
	fn := truncateFunc(n.ReverseFunc)
	create := func(rel string) string {
		return "CREATE TRIGGER " + db.Ident(GateTrigger(n)) + " BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON " + rel +
			" FOR EACH STATEMENT WHEN (" + gateGuard(n, owner) + ") EXECUTE FUNCTION " + db.Ident(fn.Schema, fn.Name) + "()"
	}
	const rel = "\x00rel\x00"
	return []string{
		create(db.Ident(n.Green.Schema, n.Green.Name)),
		onPartitions(n.Green, strings.Replace(percent(create(rel)), rel, "%I.%I", 1)),
	}
}

// onPartitions is a DO block that runs format(stmt, schema, name) for every
// partition of rel, every level, parents before children. Nothing for a
// table that is not partitioned.
func onPartitions(rel spec.QualifiedName, stmt string) string {
	return "DO " + dollarQuote(`
DECLARE
	p record;
BEGIN
	FOR p IN SELECT n.nspname, c.relname
	           FROM pg_catalog.pg_partition_tree(`+db.Literal(db.Ident(rel.Schema, rel.Name))+`::pg_catalog.regclass) t
	           JOIN pg_catalog.pg_class c ON c.oid = t.relid
	           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
	          WHERE t.level > 0
	          ORDER BY t.level, c.relname
	LOOP
		EXECUTE pg_catalog.format(`+db.Literal(stmt)+`, p.nspname, p.relname);
	END LOOP;
END`)
}

// InstallStep creates both trigger functions, the forward triggers on blue
// (enabled: every change from now on reaches green), the reverse triggers
// on green (disabled until the migration is synced) and green's write gate
// (enabled until then). It belongs in the same transaction as green's
// creation, so green never exists without capture.
func InstallStep(n shadow.Names, m *shadow.Mapping, owner string) shadow.Step {
	sql := []string{
		FunctionSQL(n.ForwardFunc, n.SyncFlag, n.App.Schema, &m.Forward),
		TruncateFunctionSQL(truncateFunc(n.ForwardFunc), n.SyncFlag, n.Green),
		ReverseFunctionSQL(n.ReverseFunc, n.SyncFlag, n.App.Schema, m),
		TruncateFunctionSQL(truncateFunc(n.ReverseFunc), n.SyncFlag, n.Blue),
	}
	return installStep(n, owner, sql)
}

// installStep completes InstallStep (and LogicalInstallStep) from the four
// CREATE FUNCTION statements: owners and EXECUTE revoked from PUBLIC (in
// the same transaction, so no other role ever holds it; PostgreSQL checks
// EXECUTE when CREATE TRIGGER attaches a function, not when the trigger
// fires), then the triggers and the gate.
func installStep(n shadow.Names, owner string, sql []string) shadow.Step {
	for _, fn := range []spec.QualifiedName{n.ForwardFunc, truncateFunc(n.ForwardFunc), n.ReverseFunc, truncateFunc(n.ReverseFunc)} {
		f := db.Ident(fn.Schema, fn.Name) + "()"
		sql = append(sql, "ALTER FUNCTION "+f+" OWNER TO "+db.Ident(owner), "REVOKE ALL ON FUNCTION "+f+" FROM PUBLIC")
	}
	sql = append(sql, triggerSQL(n, owner, n.Blue, n.ForwardFunc, true)...)
	sql = append(sql, triggerSQL(n, owner, n.Green, n.ReverseFunc, false)...)
	sql = append(sql, gateSQL(n, owner)...)
	return shadow.Step{
		Name:          "install-sync-triggers",
		Description:   "create the blue → green sync triggers (on), green → blue (off until synced) and green's write gate (on until synced)",
		SQL:           sql,
		Lock:          "SHARE ROW EXCLUSIVE on " + n.Blue.String() + " (waits for in-flight writes, blocks new ones while held)",
		LockHold:      "milliseconds",
		Transactional: true,
	}
}

// SetReverseSQL switches the green → blue direction on or off, and green's
// write gate the other way in the same statements' transaction: green
// accepts writes exactly while they reach blue.
func SetReverseSQL(n shadow.Names, on bool) []string {
	verb, gate := "DISABLE", "ENABLE"
	if on {
		verb, gate = "ENABLE", "DISABLE"
	}
	rel := db.Ident(n.Green.Schema, n.Green.Name)
	return []string{
		"ALTER TABLE " + rel + " " + verb + " TRIGGER " + db.Ident(n.Trigger),
		"ALTER TABLE " + rel + " " + verb + " TRIGGER " + db.Ident(n.Trigger+"_truncate"),
		"ALTER TABLE " + rel + " " + gate + " TRIGGER " + db.Ident(GateTrigger(n)),
		onPartitions(n.Green, "ALTER TABLE %I.%I "+gate+" TRIGGER "+percent(db.Ident(GateTrigger(n)))),
	}
}

// RemoveSQL drops the sync triggers and the gate from one table (finalize).
// Functions live in the version schemas, so dropping those schemas removes them too;
// this is for finalize, which keeps green. Green's partitions keep their gate
// triggers (disabled): finalize drops those by name.
func RemoveSQL(n shadow.Names, table spec.QualifiedName) []string {
	rel := db.Ident(table.Schema, table.Name)
	return []string{
		"DROP TRIGGER IF EXISTS " + db.Ident(n.Trigger) + " ON " + rel,
		"DROP TRIGGER IF EXISTS " + db.Ident(n.Trigger+"_truncate") + " ON " + rel,
		"DROP TRIGGER IF EXISTS " + db.Ident(GateTrigger(n)) + " ON " + rel,
	}
}

// SyncFlagSQL marks the current transaction's top-level statements as sync
// writes, for a backfill, repair or apply batch that writes one side
// itself: the other side's trigger (if on) and green's gate let them pass.
// '0' is the trigger depth of a top-level statement (EchoGuard); writes a
// level deeper (an FK cascade they cause) still sync.
func SyncFlagSQL(n shadow.Names) (string, []any) {
	return "SELECT " + SyncFlagExpr("$1"), []any{n.SyncFlag}
}

// SyncFlagExpr is SyncFlagSQL's expression, for a session that sets it in
// a statement of its own; param is the placeholder bound to Names.SyncFlag.
func SyncFlagExpr(param string) string {
	return "pg_catalog.set_config(" + param + ", '0', true)"
}

// keyColumns is the key columns of the row alias as the left side of
// "= (subquery)": a row of them, or the column alone, since a one-column
// row constructor is not a row there.
func keyColumns(alias string, key []string) string {
	cols := make([]string, len(key))
	for i, k := range key {
		cols[i] = alias + "." + db.Ident(k)
	}
	if len(cols) == 1 {
		return cols[0]
	}
	return "(" + strings.Join(cols, ", ") + ")"
}
