// Package trigger generates and installs the row triggers that keep blue and
// green equal in trigger mode. See README.md for the invariants.
package trigger

import (
	"fmt"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
)

// FunctionSQL returns CREATE OR REPLACE FUNCTION for one direction: a row
// trigger function that applies the source table's change to the target
// through d's expressions.
//
// The echo guard (trap 2) is a transaction-local setting, set just around the
// write to the other side and cleared right after: the other side's trigger
// sees it and does nothing. pg_trigger_depth() is not used, because a user's
// trigger elsewhere that writes this table runs at depth > 1 and must still
// be synced.
//
// The function is SECURITY DEFINER (owned by the table owner, see
// InstallStep) so a client allowed to INSERT into one shape does not also need
// UPDATE and DELETE on the other for the upsert, and its search_path is fixed
// to the app schema so the spec's expressions resolve the same for every caller.
func FunctionSQL(fn shadow.QualifiedName, flag, searchPath string, d *shadow.Direction) string {
	return functionSQL(fn, flag, searchPath, d, "", "", false)
}

// functionSQL is FunctionSQL with two optional statements placed just
// before and just after the write to the target, and, with inPlace, an
// UPDATE that keeps its key updating the target row in place (never
// inserting it) — logical mode's reverse function; see logical.go.
func functionSQL(fn shadow.QualifiedName, flag, searchPath string, d *shadow.Direction, before, after string, inPlace bool) string {
	target := db.Ident(d.Target.Schema, d.Target.Name)
	keyList := db.IdentList(d.TargetKey)
	keyExprs := make([]string, len(d.TargetKey))
	gKey := make([]string, len(d.TargetKey))
	for i, k := range d.TargetKey {
		keyExprs[i] = d.ValueExpr(k)
		gKey[i] = "t." + db.Ident(k)
	}
	keyOf := func(rec string) string {
		return "(SELECT " + strings.Join(keyExprs, ", ") + " FROM (SELECT " + rec + ".*) AS s)"
	}
	// rowKeyOf is the "did the key change" operand: the text forms of the
	// key, because types like numeric or a nondeterministic collation call
	// values equal (1.0 = 1.00) that are different keys once written.
	// Equal text means an equal key; unequal text at worst re-keys a row
	// that kept its key (a DELETE and an INSERT instead of an UPDATE).
	rowKeyOf := func(rec string) string {
		texts := make([]string, len(keyExprs))
		for i, e := range keyExprs {
			texts[i] = e + "::text"
		}
		return "(SELECT ROW(" + strings.Join(texts, ", ") + ") FROM (SELECT " + rec + ".*) AS s)"
	}
	oldKey, newKey := rowKeyOf("OLD"), rowKeyOf("NEW")
	if k := byNameKey(d); k != nil {
		oldKey, newKey = textKey("OLD", k), textKey("NEW", k)
	}
	overriding := ""
	if d.NeedsOverriding() {
		overriding = " OVERRIDING SYSTEM VALUE"
	}
	conflict := "DO NOTHING"
	if set := d.UpdateSet(); set != "" {
		conflict = "DO UPDATE SET " + set
	}
	lhs := "(" + strings.Join(gKey, ", ") + ")"
	if len(gKey) == 1 {
		// A one-column row constructor is not a row on the left of "= (subquery)".
		lhs = gKey[0]
	}
	deleteBy := func(rec string) string {
		return "DELETE FROM " + target + " AS t WHERE " + lhs + " = " + keyOf(rec) + ";"
	}
	write := fmt.Sprintf(`INSERT INTO %s (%s)%s
		SELECT %s FROM (SELECT NEW.*) AS s
		ON CONFLICT (%s) %s;`, target, d.TargetList(), overriding, d.SelectList(), keyList, conflict)
	if inPlace {
		write = inPlaceUpdate(d, target, lhs, keyOf("NEW"), oldKey, newKey, write)
	}
	body := fmt.Sprintf(`
#variable_conflict use_column
BEGIN
	IF current_setting(%[1]s, true) = 'on' THEN
		RETURN NULL; -- this change is the other side's sync write: do not echo it back
	END IF;
	PERFORM set_config(%[1]s, 'on', true);%[7]s
	IF TG_OP = 'DELETE' THEN
		%[2]s
	ELSE
		IF TG_OP = 'UPDATE' AND %[3]s IS DISTINCT FROM %[4]s THEN
			%[5]s -- the key changed: the row under the old key goes away (trap 3)
		END IF;
		%[6]s
	END IF;%[8]s
	PERFORM set_config(%[1]s, '', true);
	RETURN NULL;
END`,
		db.Literal(flag), deleteBy("OLD"), oldKey, newKey, deleteBy("OLD"),
		write, stmt(before), stmt(after))
	return "CREATE OR REPLACE FUNCTION " + db.Ident(fn.Schema, fn.Name) +
		"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, " + db.Ident(searchPath) +
		" AS " + dollarQuote(body)
}

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
		parts[i] = rec + "." + db.Ident(c) + "::text"
	}
	return "ROW(" + strings.Join(parts, ", ") + ")"
}

// TruncateFunctionSQL returns a statement-trigger function that empties the
// target when the source is truncated (TRUNCATE fires no row triggers).
func TruncateFunctionSQL(fn shadow.QualifiedName, flag string, target shadow.QualifiedName) string {
	return truncateFunctionSQL(fn, flag, target, "", "")
}

func truncateFunctionSQL(fn shadow.QualifiedName, flag string, target shadow.QualifiedName, before, after string) string {
	body := fmt.Sprintf(`
BEGIN
	IF current_setting(%[1]s, true) = 'on' THEN
		RETURN NULL;
	END IF;
	PERFORM set_config(%[1]s, 'on', true);%[3]s
	TRUNCATE %[2]s;%[4]s
	PERFORM set_config(%[1]s, '', true);
	RETURN NULL;
END`, db.Literal(flag), db.Ident(target.Schema, target.Name), stmt(before), stmt(after))
	return "CREATE OR REPLACE FUNCTION " + db.Ident(fn.Schema, fn.Name) +
		"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS " + dollarQuote(body)
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
func truncateFunc(fn shadow.QualifiedName) shadow.QualifiedName {
	return shadow.QualifiedName{Schema: fn.Schema, Name: fn.Name + "_truncate"}
}

// triggerSQL creates the row and TRUNCATE triggers on table, disabled when enabled is false.
//
// The row trigger's WHEN clause repeats the function's echo guard: it is
// evaluated as the row is written, so the other side's sync write does not
// even queue an event, let alone call a function (its own check stays, for
// a trigger created without the clause by an older greenswap).
func triggerSQL(n shadow.Names, table, fn shadow.QualifiedName, enabled bool) []string {
	rel := db.Ident(table.Schema, table.Name)
	sql := []string{
		"CREATE TRIGGER " + db.Ident(n.Trigger) + " AFTER INSERT OR UPDATE OR DELETE ON " + rel +
			" FOR EACH ROW WHEN (current_setting(" + db.Literal(n.SyncFlag) + ", true) IS DISTINCT FROM 'on')" +
			" EXECUTE FUNCTION " + db.Ident(fn.Schema, fn.Name) + "()",
		"CREATE TRIGGER " + db.Ident(n.Trigger+"_truncate") + " AFTER TRUNCATE ON " + rel +
			" FOR EACH STATEMENT EXECUTE FUNCTION " + db.Ident(truncateFunc(fn).Schema, truncateFunc(fn).Name) + "()",
	}
	if !enabled {
		sql = append(sql, "ALTER TABLE "+rel+" DISABLE TRIGGER "+db.Ident(n.Trigger),
			"ALTER TABLE "+rel+" DISABLE TRIGGER "+db.Ident(n.Trigger+"_truncate"))
	}
	return sql
}

// InstallStep creates both trigger functions, the forward triggers on blue
// (enabled: every change from now on reaches green) and the reverse triggers
// on green (disabled until the migration is synced). It belongs in the same
// transaction as green's creation, so green never exists without capture.
func InstallStep(n shadow.Names, m *shadow.Mapping, owner string) shadow.Step {
	sql := []string{
		FunctionSQL(n.ForwardFunc, n.SyncFlag, n.App.Schema, &m.Forward),
		TruncateFunctionSQL(truncateFunc(n.ForwardFunc), n.SyncFlag, n.Green),
		FunctionSQL(n.ReverseFunc, n.SyncFlag, n.App.Schema, &m.Reverse),
		TruncateFunctionSQL(truncateFunc(n.ReverseFunc), n.SyncFlag, n.Blue),
	}
	return installStep(n, owner, sql)
}

// installStep completes InstallStep (and LogicalInstallStep) from the four
// CREATE FUNCTION statements: owners, then the triggers.
func installStep(n shadow.Names, owner string, sql []string) shadow.Step {
	for _, fn := range []shadow.QualifiedName{n.ForwardFunc, truncateFunc(n.ForwardFunc), n.ReverseFunc, truncateFunc(n.ReverseFunc)} {
		sql = append(sql, "ALTER FUNCTION "+db.Ident(fn.Schema, fn.Name)+"() OWNER TO "+db.Ident(owner))
	}
	sql = append(sql, triggerSQL(n, n.Blue, n.ForwardFunc, true)...)
	sql = append(sql, triggerSQL(n, n.Green, n.ReverseFunc, false)...)
	return shadow.Step{
		Name:          "install-sync-triggers",
		Description:   "create the blue → green sync triggers (on) and green → blue (off until synced)",
		SQL:           sql,
		Lock:          "SHARE ROW EXCLUSIVE on " + n.Blue.String() + " (waits for in-flight writes, blocks new ones while held)",
		LockHold:      "milliseconds",
		Transactional: true,
	}
}

// SetReverseSQL switches the green → blue direction on or off.
func SetReverseSQL(n shadow.Names, on bool) []string {
	verb := "DISABLE"
	if on {
		verb = "ENABLE"
	}
	rel := db.Ident(n.Green.Schema, n.Green.Name)
	return []string{
		"ALTER TABLE " + rel + " " + verb + " TRIGGER " + db.Ident(n.Trigger),
		"ALTER TABLE " + rel + " " + verb + " TRIGGER " + db.Ident(n.Trigger+"_truncate"),
	}
}

// RemoveSQL drops the sync triggers and functions from whichever tables still exist.
// Functions live in the version schemas, so dropping those schemas removes them too;
// this is for finalize, which keeps green.
func RemoveSQL(n shadow.Names, table shadow.QualifiedName) []string {
	rel := db.Ident(table.Schema, table.Name)
	return []string{
		"DROP TRIGGER IF EXISTS " + db.Ident(n.Trigger) + " ON " + rel,
		"DROP TRIGGER IF EXISTS " + db.Ident(n.Trigger+"_truncate") + " ON " + rel,
	}
}

// SyncFlagSQL marks the current transaction as a sync write, for a backfill
// or repair batch that writes green directly: green's reverse trigger (if on)
// must not copy those rows back to blue.
func SyncFlagSQL(n shadow.Names) (string, []any) {
	return "SELECT set_config($1, 'on', true)", []any{n.SyncFlag}
}
