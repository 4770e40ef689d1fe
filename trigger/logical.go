package trigger

// Logical mode (package sync/stream): blue → green is carried by a logical
// replication stream instead of the forward trigger, so the app's writes on
// blue pay no trigger cost. Green → blue still runs by the reverse trigger
// once the migration is synced. The reverse trigger's writes to blue reach
// the stream like any other blue write; they are the echo of a write green
// already has (trap 2 across the stream). In logical mode the reverse
// functions bracket their write to blue with two transactional logical
// decoding messages (pg_logical_emit_message, prefix EchoPrefix(n), content
// carrying the migration's secret echo token), and the stream skips the blue
// changes between them.

import (
	"slices"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
)

// Echo marker contents: the blue changes between EchoBegin+token and
// EchoEnd+token of one transaction are the reverse trigger's own writes,
// where token is the migration's echo token (EchoTokenSQL). Any role may
// call pg_logical_emit_message with any prefix; only the table owner (and
// a superuser) can read the token, so only the reverse functions, which
// run as the owner, can emit a marker the stream accepts.
const (
	EchoBegin = "b"
	EchoEnd   = "e"
)

// EchoPrefix is the logical decoding message prefix of migration n's echo
// markers: the sync flag's name, unique per migration.
func EchoPrefix(n shadow.Names) string { return n.SyncFlag }

// echoMarker emits content followed by the echo token. The token is read
// at every marker rather than baked into the function's text: a function's
// source is readable by every role (pg_proc.prosrc), the token table by
// the owner alone. A missing row makes the content NULL and the message is
// not emitted (the function is strict): the write then reaches the stream
// as an ordinary change, which costs a re-copy, never a lost change.
func echoMarker(n shadow.Names, content string) string {
	return "PERFORM pg_catalog.pg_logical_emit_message(true, " + db.Literal(EchoPrefix(n)) +
		", pg_catalog.concat(CAST(" + db.Literal(content) + " AS pg_catalog.text), t.token)) FROM " +
		db.Ident(n.EchoToken.Schema, n.EchoToken.Name) + " AS t;"
}

// EchoTokenSQL creates migration n's echo token: a one-row table holding a
// random value (gen_random_uuid draws from the server's strong random
// source; PostgreSQL 13+, and logical mode needs 14+), owned by the table
// owner, readable by nobody else. Idempotent: a re-run keeps the token, so
// a restarted stream and the reverse functions keep agreeing.
func EchoTokenSQL(n shadow.Names, owner string) []string {
	rel := db.Ident(n.EchoToken.Schema, n.EchoToken.Name)
	return []string{
		"CREATE TABLE IF NOT EXISTS " + rel + " (token pg_catalog.text NOT NULL)",
		"INSERT INTO " + rel + " (token) SELECT CAST(pg_catalog.gen_random_uuid() AS pg_catalog.text) WHERE NOT EXISTS (SELECT FROM " + rel + ")",
		"ALTER TABLE " + rel + " OWNER TO " + db.Ident(owner),
		"REVOKE ALL ON " + rel + " FROM PUBLIC",
	}
}

// ReadEchoTokenSQL reads the echo token (the stream, connected as the
// owner or a superuser).
func ReadEchoTokenSQL(n shadow.Names) string {
	return "SELECT token FROM " + db.Ident(n.EchoToken.Schema, n.EchoToken.Name)
}

// reverseLogicalSQL are the reverse functions of logical mode: the
// trigger-mode bodies with the echo markers around the write to blue, and
// an UPDATE through green that keeps its key updating blue's row in place.
//
// In place, not upsert: blue → green is asynchronous in logical mode, so a
// client can update a green row that blue has deleted or re-keyed a moment
// ago (the stream has not applied it yet). An upsert would bring the row
// back into blue under its old key (where the application may already have
// put another row); the in-place update finds nothing and changes nothing,
// and the stream then applies blue's change to green: blue wins. Inserts
// and key changes still upsert.
func reverseLogicalSQL(n shadow.Names, m *shadow.Mapping) []string {
	b, e := echoMarker(n, EchoBegin), echoMarker(n, EchoEnd)
	return []string{
		functionSQL(n.ReverseFunc, n.SyncFlag, n.App.Schema, &m.Reverse, b, e, &m.Forward, ""),
		truncateFunctionSQL(truncateFunc(n.ReverseFunc), n.SyncFlag, n.Blue, b, e),
	}
}

// inPlaceUpdate wraps upsert: an UPDATE that keeps its key updates the
// target row under that key (and does nothing when there is none). An
// UPDATE that changes the key never gets here: functionSQL re-keys the
// target row in place (rekey), falling back to the upsert only when no row
// has the old key.
func inPlaceUpdate(d *shadow.Direction, target, lhs, newKey, upsert string) string {
	var cols, exprs []string
	for _, c := range d.Columns {
		if slices.Contains(d.TargetKey, c.Target) || c.Identity != "" {
			continue
		}
		cols = append(cols, db.Ident(c.Target))
		exprs = append(exprs, d.ValueExpr(c.Target))
	}
	update := "NULL; -- only key columns: nothing to update"
	if len(cols) > 0 {
		update = "UPDATE " + target + " AS t SET (" + strings.Join(cols, ", ") + ") = (SELECT " + strings.Join(exprs, ", ") +
			" FROM (SELECT NEW.*) AS s) WHERE " + lhs + " " + eq + " " + newKey + ";"
	}
	return "IF TG_OP = 'UPDATE' THEN\n\t\t\t" + update +
		"\n\t\tELSE\n\t\t\t" + upsert + "\n\t\tEND IF;"
}

// LogicalInstallStep is InstallStep for logical mode: the same functions and
// triggers, except that the forward triggers on blue are created disabled
// (the stream carries blue → green; SetForwardSQL enables them when the
// stream is retired before cutover) and the reverse functions mark their writes
// to blue as echoes for the stream to skip.
func LogicalInstallStep(n shadow.Names, m *shadow.Mapping, owner string) shadow.Step {
	sql := EchoTokenSQL(n, owner)
	sql = append(sql,
		FunctionSQL(n.ForwardFunc, n.SyncFlag, n.App.Schema, &m.Forward),
		TruncateFunctionSQL(truncateFunc(n.ForwardFunc), n.SyncFlag, n.Green),
	)
	sql = append(sql, reverseLogicalSQL(n, m)...)
	st := installStep(n, owner, sql)
	st.SQL = append(st.SQL, SetForwardSQL(n, false)...)
	st.Name = "install-sync-triggers"
	st.Description = "create the sync triggers: blue → green off (the logical stream carries it), green → blue off until synced"
	return st
}

// SetForwardSQL switches the blue → green triggers on or off.
func SetForwardSQL(n shadow.Names, on bool) []string {
	verb := "DISABLE"
	if on {
		verb = "ENABLE"
	}
	rel := db.Ident(n.Blue.Schema, n.Blue.Name)
	return []string{
		"ALTER TABLE " + rel + " " + verb + " TRIGGER " + db.Ident(n.Trigger),
		"ALTER TABLE " + rel + " " + verb + " TRIGGER " + db.Ident(n.Trigger+"_truncate"),
	}
}

// PlainReverseSQL re-creates the reverse functions without the echo
// markers (trigger mode). Run it once the stream is retired and its slot
// dropped: blue → green runs by the forward trigger then, whose echo guard is
// the sync flag alone. Until the slot is gone the markers must stay, or the
// last changes the stream applies could include unmarked echoes. The echo
// token stays until finalize or teardown drops blue's schema: a statement
// already running the old function reads it after this commits (seen in
// TestRetireUnderWorkload when it was dropped here).
func PlainReverseSQL(n shadow.Names, m *shadow.Mapping) []string {
	return []string{
		ReverseFunctionSQL(n.ReverseFunc, n.SyncFlag, n.App.Schema, m),
		TruncateFunctionSQL(truncateFunc(n.ReverseFunc), n.SyncFlag, n.Blue),
	}
}

// staleGuard refuses a write through green that would overwrite a change
// the stream has not brought to green yet (logical mode, before cutover:
// blue → green is asynchronous, green → blue is not). Without it a client
// of green's shape computing `amount = amount + 10` on a row blue changed a
// moment ago wrote its result over blue's change, the stream then copied
// blue back to green, and both sides agreed on a value that had lost an
// update (issue 12; found from outside). So, before the write to blue:
//
//   - UPDATE and DELETE: blue's row under the old key is locked (its
//     newest version), and must be the one green's row came from: blue
//     equals reverse(OLD) (green's row was written through green, or
//     reverses exactly) or forward(blue) equals OLD (green's row is the
//     stream's or the backfill's copy of blue). Otherwise SQLSTATE 40001,
//     the error REPEATABLE READ gives a write that lost a race: the client
//     retries, and once the stream has applied blue's change the retry
//     computes on it. A DELETE counts too: DELETE and INSERT again in one
//     transaction is a read-modify-write as well.
//   - UPDATE or DELETE of a row blue no longer has under that key (deleted
//     or re-keyed there): 40001 as well — the retry then finds the row
//     where blue moved it, or not at all, as on one table. An UPDATE that
//     did nothing on blue while green reported "UPDATE 1" lost the client's
//     write, and a DELETE that reported "DELETE 1" let a client that then
//     inserted the key again make a second row beside the re-keyed one
//     (both found from outside).
//   - INSERT, or an UPDATE moving the row to another key: a blue row
//     already under the new key is a duplicate the stream has not brought
//     to green yet: SQLSTATE 23505, as the insert would get on one table.
//     The write to blue is then a plain INSERT, not the upsert of trigger
//     mode (functionSQL), so a row inserted into blue after this check
//     fails the client's write with the server's own 23505 instead of
//     being overwritten.
//
// Columns are compared in their text forms: equality operators may be
// missing (json) or call different values equal (numeric scale).
func staleGuard(d, fwd *shadow.Direction, target, lhs, oldKeyOf, newKeyOf, oldKey, newKey string) string {
	var blueCols, reverseOld []string
	// A column whose expression is volatile (ColumnMap.Volatile, when plan's
	// probe has set it) differs on every evaluation: compared, it would
	// refuse every write of the row for good.
	for _, c := range d.Columns {
		if c.Volatile {
			continue
		}
		blueCols = append(blueCols, "t."+db.Ident(c.Target))
		reverseOld = append(reverseOld, d.ValueExpr(c.Target))
	}
	var greenOld, forwardBlue []string
	for _, c := range fwd.Columns {
		if c.Volatile {
			continue
		}
		greenOld = append(greenOld, "OLD."+db.Ident(c.Target))
		forwardBlue = append(forwardBlue, fwd.ValueExpr(c.Target))
	}
	current := "ROW(" + strings.Join(blueCols, ", ") + ")::pg_catalog.text IS NOT DISTINCT FROM (SELECT ROW(" +
		strings.Join(reverseOld, ", ") + ")::pg_catalog.text FROM (SELECT OLD.*) AS s)" +
		"\n\t\t\tOR (SELECT ROW(" + strings.Join(forwardBlue, ", ") + ")::pg_catalog.text FROM (SELECT t.*) AS s) IS NOT DISTINCT FROM ROW(" +
		strings.Join(greenOld, ", ") + ")::pg_catalog.text"
	stale := db.Literal("could not serialize access: the row changed on blue (the live table) and the logical stream has not brought the change to green yet")
	gone := db.Literal("could not serialize access: the row was deleted or re-keyed on blue (the live table) and the logical stream has not brought the change to green yet")
	dup := db.Literal("duplicate key: blue (the live table) already has a row with this key, which the logical stream has not brought to green yet")
	hint := db.Literal("retry the transaction; until cutover, write each row through one shape, or use mode: trigger")
	return `
	IF TG_OP IN ('UPDATE', 'DELETE') THEN
		PERFORM FROM ` + target + ` AS t WHERE ` + lhs + ` OPERATOR(pg_catalog.=) ` + oldKeyOf + ` FOR UPDATE OF t;
		IF NOT FOUND THEN
			-- A concurrent DELETE and INSERT of the key: the lock waited for
			-- it and skipped the deleted version; this statement's snapshot
			-- sees the new row.
			PERFORM FROM ` + target + ` AS t WHERE ` + lhs + ` OPERATOR(pg_catalog.=) ` + oldKeyOf + ` FOR UPDATE OF t;
		END IF;
		IF FOUND THEN
			IF NOT EXISTS (SELECT FROM ` + target + ` AS t WHERE ` + lhs + ` OPERATOR(pg_catalog.=) ` + oldKeyOf + `
				AND (` + current + `)) THEN
				RAISE EXCEPTION ` + stale + ` USING ERRCODE = '40001', HINT = ` + hint + `;
			END IF;
		ELSE
			RAISE EXCEPTION ` + gone + ` USING ERRCODE = '40001', HINT = ` + hint + `;
		END IF;
	END IF;
	IF (TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND ` + oldKey + ` IS DISTINCT FROM ` + newKey + `))
		AND EXISTS (SELECT FROM ` + target + ` AS t WHERE ` + lhs + ` OPERATOR(pg_catalog.=) ` + newKeyOf + `) THEN
		RAISE EXCEPTION ` + dup + ` USING ERRCODE = '23505', HINT = ` + hint + `;
	END IF;`
}
