package cutover

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	"github.com/greenswap/greenswap/trigger"
)

// FinalizeInput names what to finalize.
type FinalizeInput struct {
	Migration string
	Names     shadow.Names
	// Identity maps the green columns that are identity columns in
	// target.ddl to their kind ("a" ALWAYS, "d" BY DEFAULT). During the
	// migration they draw from blue's sequence through a plain default
	// (shadow.GreenFixupSQL); finalize makes them identity columns again.
	Identity map[string]string
	// Since: a write to blue recorded by the usage sensor at or after this
	// time, seen under finalize's locks, makes it refuse (nothing changed).
	Since time.Time
	// Own: the backend PIDs of the caller's own sessions, which are not
	// clients (see Usage and OwnSessions).
	Own []int32
	// Members is every table of a migration of several tables, in
	// dependency order, each with its Names and Identity (nil for one
	// table): PlanFinalize then finalizes all of them in one plan.
	Members []FinalizeInput
	// Split is the spec of a table split (nil otherwise): PlanFinalize then
	// finalizes its blue and every green (finalize_split.go).
	Split *spec.Spec
}

// SequenceMove says what finalize does with one sequence a green column
// draws from.
type SequenceMove struct {
	Column   string             `json:"column"`
	Sequence spec.QualifiedName `json:"sequence"`
	Action   string             `json:"action"` // "identity", "re-owned", "new sequence", "kept"
}

// FinalizePlan is what finalize does in its one transaction.
type FinalizePlan struct {
	Migration string             `json:"migration"`
	App       spec.QualifiedName `json:"app"`
	Green     spec.QualifiedName `json:"green"`
	Blue      spec.QualifiedName `json:"blue"`
	Views     []*viewMeta        `json:"dependent_views,omitempty"`
	Sequences []SequenceMove     `json:"sequences,omitempty"`
	// Partitions are green's partitions (every level) that move into the
	// app schema with it: ALTER TABLE ... SET SCHEMA moves a partitioned
	// table without them. Their indexes move with each.
	Partitions []spec.QualifiedName `json:"partitions,omitempty"`
	Dropped    []string             `json:"dropped"`
	Locks      []LockTarget         `json:"locks"`
	SQL        []string             `json:"sql"`
	Slot       string               `json:"slot,omitempty"`
	Warnings   []string             `json:"warnings,omitempty"`
	fpOIDs     []uint32
	fp         string
}

// Step is the plan as a shadow.Step, for listings.
func (p *FinalizePlan) Step() shadow.Step {
	var sql []string
	for _, l := range p.Locks {
		sql = append(sql, l.SQL())
	}
	return shadow.Step{
		Name:          "finalize",
		Description:   fmt.Sprintf("make %s the table %s%s; drop %s, the sync triggers and the version schemas", p.Green, p.App, withPartitions(len(p.Partitions)), p.Blue),
		SQL:           append(sql, p.SQL...),
		Lock:          "ACCESS EXCLUSIVE on " + p.App.String() + ", " + p.Blue.String() + ", " + p.Green.String(),
		LockHold:      "milliseconds (catalog changes only)",
		Transactional: true,
	}
}

func withPartitions(n int) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf(" (with its %d partitions)", n)
}

// PlanFinalize reads the catalog through q and returns what finalize does.
func PlanFinalize(ctx context.Context, q db.Querier, in FinalizeInput) (*FinalizePlan, error) {
	if err := setPath(ctx, q, catalogPath); err != nil {
		return nil, err
	}
	if in.Split != nil {
		return planFinalizeSplit(ctx, q, in)
	}
	if len(in.Members) > 1 {
		return planFinalizeMembers(ctx, q, in)
	}
	return planFinalizeOne(ctx, q, in, nil)
}

// planFinalizeOne plans the finalize of one table; among holds the blues
// of a migration of several tables (nil for one), whose foreign keys to
// this blue go with them.
func planFinalizeOne(ctx context.Context, q db.Querier, in FinalizeInput, among map[uint32]bool) (*FinalizePlan, error) {
	n := in.Names
	p := &FinalizePlan{Migration: in.Migration, App: n.App, Green: n.Green, Blue: n.Blue}
	app, blue, green, err := findMigrationRelations(ctx, q, n)
	if err != nil {
		return nil, err
	}
	if app == nil || app.Kind != "v" || blue == nil || green == nil {
		return nil, exitcode.Errorf(exitcode.BadInput, "%s is not greenswap's view over %s: nothing to finalize", n.App, n.Green)
	}
	var readsGreen bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_rewrite r JOIN pg_depend d ON d.objid = r.oid
		WHERE r.ev_class = $1 AND d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = $2)`,
		app.OID, green.OID).Scan(&readsGreen); err != nil {
		return nil, err
	}
	if !readsGreen {
		return nil, exitcode.Errorf(exitcode.BadInput, "%s does not read %s: cut over first", n.App, n.Green)
	}
	// What would stop DROP TABLE blue: say it now, by name.
	onBlue, err := loadDependents(ctx, q, []uint32{blue.OID}, 0, "", "")
	if err != nil {
		return nil, err
	}
	if len(onBlue) > 0 {
		names := make([]string, len(onBlue))
		for i, v := range onBlue {
			names[i] = v.Name.String()
		}
		return nil, exitcode.Errorf(exitcode.BadInput, "views still read %s directly: %s; drop them or re-create them over %s first",
			n.Blue, strings.Join(names, ", "), n.App)
	}
	major, err := serverMajor(ctx, q)
	if err != nil {
		return nil, err
	}
	all, err := incomingFKs(ctx, q, blue.OID, major)
	if err != nil {
		return nil, err
	}
	var fks []*foreignKey
	for _, f := range all {
		if !among[f.TableOID] {
			fks = append(fks, f)
		}
	}
	if len(fks) > 0 {
		names := make([]string, len(fks))
		for i, f := range fks {
			names[i] = f.Name + " on " + f.Table.String()
		}
		return nil, exitcode.Errorf(exitcode.BadInput, "foreign keys still reference %s: %s; point them at %s first",
			n.Blue, strings.Join(names, ", "), n.App)
	}
	// Green's partitions move too; a name already taken in the app schema
	// (by a partition or by the index of one) would fail the move half-way
	// through the transaction, so refuse now, by name, with nothing touched.
	clashes, err := shadow.LoadNameClashes(ctx, q, green.OID, n.App.Schema, 0)
	if err != nil {
		return nil, err
	}
	if len(clashes) > 0 {
		return nil, exitcode.Errorf(exitcode.BadInput, "refusing to finalize: it moves green's partitions and indexes into schema %s, where names are taken: %s; "+
			"rename or drop those objects in %s (or rename green's: ALTER TABLE / ALTER INDEX %s.<name> RENAME TO ...), then run finalize again; nothing was changed",
			n.App.Schema, strings.Join(clashes, "; "), n.App.Schema, db.Ident(n.GreenSchema))
	}
	parts, err := greenPartitions(ctx, q, green.OID, n.GreenSchema)
	if err != nil {
		return nil, err
	}
	blueT, err := shadow.LoadTable(ctx, q, n.Blue)
	if err != nil {
		return nil, err
	}
	greenT, err := shadow.LoadTable(ctx, q, n.Green)
	if err != nil {
		return nil, err
	}
	appMeta := &viewMeta{OID: app.OID, Name: n.App}
	if err := loadViewMeta(ctx, q, appMeta); err != nil {
		return nil, err
	}
	if p.Views, err = loadDependents(ctx, q, []uint32{app.OID}, 0, "", ""); err != nil {
		return nil, err
	}
	seqs, err := defaultSequences(ctx, q, green.OID)
	if err != nil {
		return nil, err
	}
	detached, err := detachedSequences(ctx, q, n)
	if err != nil {
		return nil, err
	}
	isDetached := map[uint32]bool{}
	for _, d := range detached {
		isDetached[d.oid] = true
	}
	viewColGrants, err := shadow.LoadColumnGrants(ctx, q, app.OID)
	if err != nil {
		return nil, err
	}

	var ls lockSet
	for i := len(p.Views) - 1; i >= 0; i-- {
		ls.addView(p.Views[i], "dropped and created again over the table")
	}
	ls.addView(appMeta, "dropped: the table takes its name")
	ls.add(n.Blue, blue.OID, AccessExclusive, "dropped")
	ls.add(n.Green, green.OID, AccessExclusive, "moved to "+n.App.Schema)
	ls.pair(blue.OID, green.OID)
	p.Locks = ls.list

	appRel := db.Ident(n.App.Schema, n.App.Name)
	greenRel := db.Ident(n.Green.Schema, n.Green.Name)
	var sql []string
	for i := len(p.Views) - 1; i >= 0; i-- {
		sql = append(sql, p.Views[i].dropSQL())
	}
	sql = append(sql, "DROP VIEW "+appRel)
	for _, tg := range []string{n.Trigger, n.Trigger + "_truncate", trigger.GateTrigger(n)} {
		sql = append(sql, "DROP TRIGGER IF EXISTS "+db.Ident(tg)+" ON "+greenRel)
	}
	for _, part := range parts { // the write gate is a statement trigger: each partition has its own
		sql = append(sql, "DROP TRIGGER IF EXISTS "+db.Ident(trigger.GateTrigger(n))+" ON "+db.Ident(part.name.Schema, part.name.Name))
	}

	// Sequences, part 1 (green still in its schema).
	var after []string     // once green is in the app schema
	var afterBlue []string // once blue, whose defaults may use them, is dropped
	used := map[string]bool{}
	insertGrantees := func() []shadow.Grant {
		var out []shadow.Grant
		for _, g := range greenT.Grants {
			if g.Privilege == "INSERT" {
				out = append(out, g)
			}
		}
		return out
	}
	for _, s := range seqs {
		used[s.Seq.String()] = true
		col := db.Ident(s.Column)
		seq := db.Ident(s.Seq.Schema, s.Seq.Name)
		// reown: a serial sequence of blue's stays in the app schema under
		// its name, owned by green's column from now on and widened to fit.
		reown := func() error {
			if s.Seq.Schema != n.App.Schema {
				sql = append(sql, "ALTER SEQUENCE "+seq+" SET SCHEMA "+db.Ident(n.App.Schema))
			}
			final := db.Ident(n.App.Schema, s.Seq.Name)
			after = append(after, "ALTER SEQUENCE "+final+" OWNED BY "+appRel+"."+col)
			w, warn, err := widenSequence(ctx, q, s.SeqOID, final, greenT.Column(s.Column))
			if err != nil {
				return err
			}
			after = append(after, w...)
			if warn != "" {
				p.Warnings = append(p.Warnings, warn)
			}
			p.Sequences = append(p.Sequences, SequenceMove{s.Column, spec.QualifiedName{Schema: n.App.Schema, Name: s.Seq.Name}, "re-owned"})
			return nil
		}
		switch {
		case s.OwnerOID == green.OID:
			p.Sequences = append(p.Sequences, SequenceMove{s.Column, s.Seq, "kept"})
		case s.OwnerOID == 0 && isDetached[s.SeqOID] && in.Identity[s.Column] != "":
			// blue's serial sequence, detached at adopt: the identity column
			// takes its name and continues after it; it goes once blue is gone.
			kind := "ALWAYS"
			if in.Identity[s.Column] == "d" {
				kind = "BY DEFAULT"
			}
			retired := db.Ident(s.Seq.Schema, retiredName(s.Seq.Name))
			after = append(after, "ALTER TABLE "+appRel+" ALTER COLUMN "+col+" DROP DEFAULT",
				"ALTER SEQUENCE "+seq+" RENAME TO "+db.Ident(retiredName(s.Seq.Name)),
				nextValueDo(retired, "ALTER TABLE "+appRel+" ALTER COLUMN "+col+" ADD GENERATED "+kind+" AS IDENTITY (SEQUENCE NAME "+
					db.Ident(n.App.Schema, s.Seq.Name)+" START WITH %s INCREMENT BY %s)"))
			afterBlue = append(afterBlue, "DROP SEQUENCE "+retired)
			p.Sequences = append(p.Sequences, SequenceMove{s.Column, spec.QualifiedName{Schema: n.App.Schema, Name: s.Seq.Name}, "identity"})
		case s.OwnerOID == 0 && isDetached[s.SeqOID]:
			// blue's serial sequence, detached at adopt and kept in the app
			// schema: green's column owns it from now on, widened to fit.
			if err := reown(); err != nil {
				return nil, err
			}
		case s.OwnerOID != blue.OID:
			p.Sequences = append(p.Sequences, SequenceMove{s.Column, s.Seq, "kept"})
			p.Warnings = append(p.Warnings, fmt.Sprintf("column %s draws from %s, which greenswap does not own; left as it is", s.Column, s.Seq))
		case in.Identity[s.Column] != "":
			kind := "ALWAYS"
			if in.Identity[s.Column] == "d" {
				kind = "BY DEFAULT"
			}
			after = append(after, "ALTER TABLE "+appRel+" ALTER COLUMN "+col+" DROP DEFAULT",
				nextValueDo(seq, "ALTER TABLE "+appRel+" ALTER COLUMN "+col+" ADD GENERATED "+kind+" AS IDENTITY (START WITH %s INCREMENT BY %s)"))
			p.Sequences = append(p.Sequences, SequenceMove{s.Column, s.Seq, "identity"})
		case !s.Identity:
			// blue's serial sequence: green's column owns it from now on.
			sql = append(sql, "ALTER SEQUENCE "+seq+" OWNED BY NONE")
			if err := reown(); err != nil {
				return nil, err
			}
		default:
			// blue's identity sequence cannot change owner: a new one takes over.
			newSeq := db.Ident(n.App.Schema, s.Seq.Name)
			var typ string
			if c := greenT.Column(s.Column); c != nil {
				typ = c.Type
			}
			create := "CREATE SEQUENCE " + newSeq
			if typ == "smallint" || typ == "integer" || typ == "bigint" {
				create += " AS " + typ
			}
			after = append(after, nextValueDo(seq, create+" START WITH %s INCREMENT BY %s OWNED BY "+appRel+"."+col),
				"ALTER TABLE "+appRel+" ALTER COLUMN "+col+" SET DEFAULT pg_catalog.nextval("+db.Literal(newSeq)+"::regclass)")
			after = append(after, grantOnSequence(newSeq, insertGrantees())...)
			p.Sequences = append(p.Sequences, SequenceMove{s.Column, spec.QualifiedName{Schema: n.App.Schema, Name: s.Seq.Name}, "new sequence"})
		}
	}
	// Sequences green's own DDL created (serial) that its columns no longer use.
	for _, own := range greenT.OwnedSequences {
		if !own.Identity && !used[own.Name.String()] && slices.ContainsFunc(seqs, func(s sequenceUse) bool { return s.Column == own.Column }) {
			sql = append(sql, "DROP SEQUENCE "+db.Ident(own.Name.Schema, own.Name.Name))
			p.Dropped = append(p.Dropped, own.Name.String()+" (unused)")
		}
	}
	// Identity columns of target.ddl that draw from no sequence of blue's.
	for c, kind := range in.Identity {
		gc := greenT.Column(c)
		if gc == nil || gc.Identity != "" || slices.ContainsFunc(seqs, func(s sequenceUse) bool { return s.Column == c }) {
			continue
		}
		k := "ALWAYS"
		if kind == "d" {
			k = "BY DEFAULT"
		}
		after = append(after, fmt.Sprintf(`DO $gs$DECLARE v bigint; BEGIN
	SELECT coalesce(pg_catalog.max(%[1]s), 0) + 1 INTO v FROM %[2]s;
	EXECUTE pg_catalog.format(%[3]s, v);
END$gs$`, db.Ident(c), appRel, db.Literal("ALTER TABLE "+appRel+" ALTER COLUMN "+db.Ident(c)+" ADD GENERATED "+k+" AS IDENTITY (START WITH %s)")))
	}

	sql = append(sql, "ALTER TABLE "+greenRel+" SET SCHEMA "+db.Ident(n.App.Schema))
	for _, part := range parts {
		// LOCK TABLE green (above) locked its partitions too.
		sql = append(sql, "ALTER TABLE "+db.Ident(part.name.Schema, part.name.Name)+" SET SCHEMA "+db.Ident(n.App.Schema))
		p.Partitions = append(p.Partitions, part.name)
	}
	sql = append(sql, after...)
	// The app name's grants and comments carry over to the table.
	sql = append(sql, shadow.GrantSQL(appRel, appMeta.Grants)...)
	sql = append(sql, shadow.ColumnGrantSQL(appRel, viewColGrants, func(c string) bool { return greenT.Column(c) != nil })...)
	if appMeta.Comment != "" && greenT.Comment == "" {
		sql = append(sql, "COMMENT ON TABLE "+appRel+" IS "+db.Literal(appMeta.Comment))
	}
	for _, c := range appMeta.ColComment {
		if gc := greenT.Column(c[0]); gc != nil && gc.Comment == "" {
			sql = append(sql, "COMMENT ON COLUMN "+appRel+"."+db.Ident(c[0])+" IS "+db.Literal(c[1]))
		}
	}
	if blueT.ReplicaIdentity != greenT.ReplicaIdentity {
		switch blueT.ReplicaIdentity {
		case "f":
			sql = append(sql, "ALTER TABLE "+appRel+" REPLICA IDENTITY FULL")
		case "n":
			sql = append(sql, "ALTER TABLE "+appRel+" REPLICA IDENTITY NOTHING")
		case "i":
			p.Warnings = append(p.Warnings, fmt.Sprintf("%s had REPLICA IDENTITY USING INDEX; set it on %s by hand", n.Blue, n.App))
		}
	}
	// Publications that named blue now name the table.
	rows, err := q.Query(ctx, `SELECT p.pubname::text FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
		WHERE r.prrelid = $1 AND p.pubname <> $2 ORDER BY 1`, blue.OID, n.Publication)
	if err != nil {
		return nil, err
	}
	pubs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	for _, pub := range pubs {
		sql = append(sql, "ALTER PUBLICATION "+db.Ident(pub)+" ADD TABLE "+appRel)
		p.Warnings = append(p.Warnings, fmt.Sprintf("publication %s now publishes %s (a row filter or column list it had on blue is not copied)", pub, n.App))
	}

	blueRel := db.Ident(n.Blue.Schema, n.Blue.Name)
	sql = append(sql, "DROP TABLE "+blueRel)
	sql = append(sql, afterBlue...)
	p.Dropped = append(p.Dropped, n.Blue.String(), n.App.String()+" (view)")
	for _, fn := range []spec.QualifiedName{n.ForwardFunc, truncFunc(n.ForwardFunc), n.ReverseFunc, truncFunc(n.ReverseFunc), usageFunc(n)} {
		sql = append(sql, "DROP FUNCTION IF EXISTS "+db.Ident(fn.Schema, fn.Name)+"()")
	}
	rec := shadow.SequenceRecord(n)
	sql = append(sql, "DROP TABLE IF EXISTS "+qident(usageTable(n)), "DROP TABLE IF EXISTS "+qident(usageStateTable(n)),
		"DROP TABLE IF EXISTS "+qident(n.EchoToken), // logical mode's echo token, if the stream's retirement left it
		"DROP TABLE IF EXISTS "+db.Ident(rec.Schema, rec.Name),
		"DROP SCHEMA "+db.Ident(n.BlueSchema), "DROP SCHEMA "+db.Ident(n.GreenSchema))
	p.Dropped = append(p.Dropped, "schema "+n.BlueSchema, "schema "+n.GreenSchema, "sync triggers and functions")
	var pub bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, n.Publication).Scan(&pub); err != nil {
		return nil, err
	}
	if pub {
		sql = append(sql, "DROP PUBLICATION "+db.Ident(n.Publication))
	}
	if err := q.QueryRow(ctx, `SELECT coalesce((SELECT slot_name::text FROM pg_replication_slots WHERE slot_name = $1), '')`, n.Slot).Scan(&p.Slot); err != nil {
		return nil, err
	}
	for _, v := range p.Views {
		sql = append(sql, v.createSQL()...)
	}
	p.SQL = sql
	for _, l := range p.Locks {
		p.fpOIDs = append(p.fpOIDs, l.OID)
	}
	for _, part := range parts {
		// A partition renamed, moved or dropped before the locks: plan again.
		p.fpOIDs = append(p.fpOIDs, part.oid)
	}
	if p.fp, err = fingerprint(ctx, q, p.fpOIDs); err != nil {
		return nil, err
	}
	return p, nil
}

type partition struct {
	oid  uint32
	name spec.QualifiedName
}

// greenPartitions lists the partitions of green, every level
// (pg_partition_tree), that live in green's schema: finalize moves each.
// One already elsewhere stays where it is.
func greenPartitions(ctx context.Context, q db.Querier, green uint32, schema string) ([]partition, error) {
	rows, err := q.Query(ctx, `SELECT c.oid, n.nspname::text, c.relname::text
		FROM pg_catalog.pg_partition_tree($1::oid::regclass) t JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE t.level > 0 AND n.nspname = $2 ORDER BY t.level, c.relname`, green, schema)
	if err != nil {
		return nil, fmt.Errorf("read green's partitions: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (partition, error) {
		var x partition
		err := r.Scan(&x.oid, &x.name.Schema, &x.name.Name)
		return x, err
	})
}

// retiredName is the name blue's serial sequence takes while an identity
// column takes over its own name at finalize (dropped in the same
// transaction).
func retiredName(name string) string {
	const suffix = "_gs_retired"
	if len(name)+len(suffix) > 63 {
		name = name[:63-len(suffix)]
	}
	return name + suffix
}

// intMax and intMin are the bounds of the integer types a sequence can be.
var (
	intRank = map[string]int{"smallint": 2, "integer": 4, "bigint": 8}
	intMax  = map[string]int64{"smallint": 1<<15 - 1, "integer": 1<<31 - 1, "bigint": 1<<63 - 1}
	intMin  = map[string]int64{"smallint": -1 << 15, "integer": -1 << 31, "bigint": -1 << 63}
)

// widenSequence makes the sequence seq (oid, quoted final name) as wide as
// the column it feeds when the column's integer type is wider (blue's
// narrower column bounded it until now: trap 14). ALTER SEQUENCE ... AS
// moves a MAXVALUE (MINVALUE when descending) that was the old type's
// bound to the new one's; a custom one stays, and the warning says so.
func widenSequence(ctx context.Context, q db.Querier, oid uint32, seq string, col *shadow.Column) ([]string, string, error) {
	if col == nil || intRank[col.Type] == 0 {
		return nil, "", nil
	}
	var (
		typ             string
		maxV, minV, inc int64
	)
	if err := q.QueryRow(ctx, `SELECT pg_catalog.format_type(seqtypid, NULL), seqmax, seqmin, seqincrement FROM pg_sequence WHERE seqrelid = $1`, oid).
		Scan(&typ, &maxV, &minV, &inc); err != nil {
		return nil, "", fmt.Errorf("read sequence %s: %w", seq, err)
	}
	if intRank[typ] == 0 || intRank[col.Type] <= intRank[typ] {
		return nil, "", nil
	}
	sql := []string{"ALTER SEQUENCE " + seq + " AS " + col.Type}
	switch {
	case inc > 0 && maxV != intMax[typ]:
		return sql, fmt.Sprintf("sequence %s is now AS %s but keeps its own MAXVALUE %d: raise it (ALTER SEQUENCE %s MAXVALUE ...) if the column should use its range", seq, col.Type, maxV, seq), nil
	case inc < 0 && minV != intMin[typ]:
		return sql, fmt.Sprintf("sequence %s is now AS %s but keeps its own MINVALUE %d: lower it (ALTER SEQUENCE %s MINVALUE ...) if the column should use its range", seq, col.Type, minV, seq), nil
	}
	return sql, "", nil
}

// nextValueDo wraps stmt, a format() string with two %s (the next value of
// seq, its increment), in a DO block that reads them under the locks.
func nextValueDo(seq, stmt string) string {
	return fmt.Sprintf(`DO $gs$DECLARE v bigint; inc bigint; BEGIN
	SELECT CASE WHEN s.is_called THEN s.last_value + p.seqincrement ELSE s.last_value END, p.seqincrement
	  INTO v, inc FROM %[1]s s, pg_catalog.pg_sequence p WHERE p.seqrelid = %[2]s::regclass;
	EXECUTE pg_catalog.format(%[3]s, v, inc);
END$gs$`, seq, db.Literal(seq), db.Literal(stmt))
}

func grantOnSequence(seq string, grants []shadow.Grant) []string {
	var sql []string
	for _, g := range grants {
		to := "PUBLIC"
		if g.Grantee != "PUBLIC" {
			to = db.Ident(g.Grantee)
		}
		sql = append(sql, "GRANT USAGE ON SEQUENCE "+seq+" TO "+to)
	}
	return sql
}

// FinalizeResult is what Finalize did.
type FinalizeResult struct {
	Plan     *FinalizePlan `json:"plan"`
	Attempts int           `json:"attempts"`
	LockHold time.Duration `json:"-"`
	Duration time.Duration `json:"-"`
	SlotNote string        `json:"slot_note,omitempty"`
}

// UsageError is finalize refusing because clients used blue. Exit code 3
// (a blocking condition; nothing was changed).
type UsageError struct {
	Blue    spec.QualifiedName
	Period  time.Duration
	Clients []Client
	// Share and MaxShare: under --max-legacy-share, blue's share of the
	// client sightings and the bound it went over (MaxShare 0: not used).
	Share, MaxShare float64
}

func (e *UsageError) Error() string {
	parts := make([]string, len(e.Clients))
	for i, c := range e.Clients {
		parts[i] = c.String()
	}
	if e.MaxShare > 0 {
		return fmt.Sprintf("refusing to finalize: blue's share of the client sightings was %.3f, over --max-legacy-share %g, within the quiet period of %s; "+
			"%d client(s) used %s: %s; move them off the blue version schema, wait, and run finalize again",
			e.Share, e.MaxShare, e.Period, len(e.Clients), e.Blue, strings.Join(parts, "; "))
	}
	return fmt.Sprintf("refusing to finalize: %d client(s) used %s within the quiet period of %s: %s; "+
		"move them off the blue version schema, wait, and run finalize again (or pass --force)",
		len(e.Clients), e.Blue, e.Period, strings.Join(parts, "; "))
}

func (e *UsageError) ExitCode() exitcode.Code { return exitcode.Blocked }

// Finalize runs finalize in one transaction with the lock retry. Under the
// locks, a write to blue recorded since in.Since makes it refuse
// (*UsageError); commit (may be nil) runs last inside the transaction.
func Finalize(ctx context.Context, pool *pgxpool.Pool, in FinalizeInput, opt SwapOptions,
	commit func(ctx context.Context, tx pgx.Tx, p *FinalizePlan) error) (*FinalizeResult, error) {
	check := func(tx pgx.Tx, p *FinalizePlan) error {
		if in.Since.IsZero() {
			return nil
		}
		appSide, err := appSideOIDs(ctx, tx, in.names())
		if err != nil {
			return err
		}
		for _, n := range in.names() {
			cs, err := usageOf(ctx, tx, n, in.Since, in.Own, appSide)
			if err != nil {
				return err
			}
			if len(cs) > 0 {
				return &UsageError{Blue: n.Blue, Period: time.Since(in.Since).Round(time.Second), Clients: cs}
			}
		}
		return nil
	}
	var c func(tx pgx.Tx, p *FinalizePlan) error
	if commit != nil {
		c = func(tx pgx.Tx, p *FinalizePlan) error { return commit(ctx, tx, p) }
	}
	plan, st, err := runPlanned(ctx, pool, "finalize", opt,
		func(tx pgx.Tx) (*FinalizePlan, error) { return PlanFinalize(ctx, tx, in) }, check, c)
	res := &FinalizeResult{Plan: plan, Attempts: st.Attempts, LockHold: st.LockHold, Duration: st.Duration}
	if err != nil {
		return res, err
	}
	if plan.Slot != "" {
		res.SlotNote = dropSlot(ctx, pool, plan.Slot)
	}
	return res, nil
}

// TargetIdentity reads which columns of target.ddl are identity columns:
// it creates the table in a scratch schema inside a transaction it rolls
// back (the DDL's own locks are bounded by lock).
func TargetIdentity(ctx context.Context, pool *pgxpool.Pool, n shadow.Names, spec *spec.Spec, lock shadow.LockOptions) (map[string]string, error) {
	scratch := n
	scratch.GreenSchema = "gs_" + spec.Name + "_scratch"
	out := map[string]string{}
	errDone := fmt.Errorf("done")
	err := shadow.RunWithLockRetry(ctx, pool, "read target.ddl", lock, nil, func(tx pgx.Tx) error {
		for _, s := range shadow.CreateGreenSQL(scratch, spec) {
			if _, err := tx.Exec(ctx, s); err != nil {
				return fmt.Errorf("create target.ddl in a scratch schema: %w", err)
			}
		}
		rows, err := tx.Query(ctx, `SELECT a.attname::text, a.attidentity::text FROM pg_attribute a
			JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace s ON s.oid = c.relnamespace
			WHERE s.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity <> ''`,
			scratch.GreenSchema, n.Green.Name)
		if err != nil {
			return err
		}
		pairs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
			var p [2]string
			err := r.Scan(&p[0], &p[1])
			return p, err
		})
		if err != nil {
			return err
		}
		for _, p := range pairs {
			out[p[0]] = p[1]
		}
		return errDone // roll back
	})
	if err != nil && err != errDone {
		return nil, err
	}
	return out, nil
}
