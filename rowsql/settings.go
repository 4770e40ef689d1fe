package rowsql

import (
	"strings"

	"github.com/greenswap/greenswap/internal/db"
)

// Setting is one transaction-local setting: Value is SQL, a placeholder
// ($1) or a literal ('on').
type Setting struct {
	Name  string
	Value string
}

// SearchPath is the search_path the mapping's expressions are evaluated
// under (value: a placeholder bound to Names.SearchPath(), or a literal).
func SearchPath(value string) Setting { return Setting{"search_path", value} }

// CopySettings are the settings of every transaction that copies rows
// through the mapping (backfill batches, stream apply): key values travel as
// text, so their text form must read back as the same value whatever the
// role's defaults (ISO dates, exact floats, hex bytea); the expressions
// resolve through the trigger functions' search_path; a row lock wait is
// bounded (YieldingLockTimeout), so greenswap, not the application, gives
// way; and row_security is off, so a policy that would filter the copy
// (FORCE ROW LEVEL SECURITY turned on mid-migration) fails it instead of
// silently leaving the rows it hides out. searchPath and lockTimeout are
// SQL (placeholders, usually).
func CopySettings(searchPath, lockTimeout string) []Setting {
	return []Setting{
		SearchPath(searchPath), {"lock_timeout", YieldingLockTimeout(lockTimeout)},
		{"datestyle", "'ISO, MDY'"}, {"intervalstyle", "'postgres'"},
		{"extra_float_digits", "'3'"}, {"bytea_output", "'hex'"},
		{"row_security", "'off'"},
	}
}

// CompareSettings are verify's: the expressions resolve as in the
// triggers, floats print exactly (shortest exact form), no user
// statement_timeout cuts a whole-table scan short, and row_security is
// off: a policy filtering both sides alike would make a subset look equal.
func CompareSettings(searchPath string) []Setting {
	return []Setting{
		SearchPath(searchPath), {"extra_float_digits", "'1'"},
		{"statement_timeout", "'0'"}, {"row_security", "'off'"},
	}
}

// SettingsList is the select list setting each of s for the transaction
// only (set_config(…, true)), two to a line.
func SettingsList(s ...Setting) string {
	var b strings.Builder
	for i, x := range s {
		switch {
		case i > 0 && i%2 == 0:
			b.WriteString(",\n\t")
		case i > 0:
			b.WriteString(", ")
		}
		b.WriteString("pg_catalog.set_config(" + db.Literal(x.Name) + ", " + x.Value + ", true)")
	}
	return b.String()
}

// SelectSettings is the statement setting s: SELECT SettingsList(s).
func SelectSettings(s ...Setting) string { return "SELECT " + SettingsList(s...) }

// YieldingLockTimeout is the lock_timeout of a transaction of greenswap's
// that writes rows the application writes too (a backfill batch, a stream
// apply): lockTimeout (SQL: a placeholder or literal such as '2000ms'),
// but never more than a quarter of the server's deadlock_timeout.
//
// Why: a batch copying keys in order and an app transaction writing two of
// them the other way round (or one multi-row UPDATE in the heap's order)
// wait for each other, the app on the batch's uncommitted green row, the
// batch on the app's. PostgreSQL breaks the cycle by failing the waiter
// whose deadlock_timeout runs out first, and the app usually began waiting
// first: with a longer lock_timeout the app got the 40P01. A wait that
// gives up first is a batch rolled back and retried, nothing lost
// (TestCopyYieldsToTheAppInLockCycles).
func YieldingLockTimeout(lockTimeout string) string {
	return "(GREATEST(1, pg_catalog.floor(1000 * pg_catalog.date_part('epoch', LEAST(" +
		"CAST(" + lockTimeout + " AS pg_catalog.interval), " +
		"CAST(pg_catalog.current_setting('deadlock_timeout') AS pg_catalog.interval) / 4))))::pg_catalog.int8::pg_catalog.text || 'ms')"
}
