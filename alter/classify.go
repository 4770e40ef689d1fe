package alter

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/sqllex"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// lockStrength orders pg_locks modes, weakest first.
var lockStrength = []string{
	"AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
	"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock",
}

// observation is what running one subcommand on a scratch copy did.
type observation struct {
	Rewrite bool     // the table's relfilenode changed
	Rebuilt []string // indexes whose relfilenode changed
	Created []string // indexes that appeared
	Mode    string   // the strongest lock it took on the table
}

// scratch is an empty copy of blue in this session's temporary schema,
// under blue's own name, so names PostgreSQL generates (orders_pkey,
// orders_email_key) are the ones it would generate on blue.
type scratch struct {
	q    db.Querier
	blue *shadow.Table
	rel  string // quoted pg_temp_N.name
	def  tableDef
}

func newScratch(ctx context.Context, q db.Querier, blue *shadow.Table) (*scratch, error) {
	s := &scratch{q: q, blue: blue}
	var taken bool
	err := q.QueryRow(ctx, `SELECT pg_catalog.to_regclass(pg_catalog.quote_ident('pg_temp') || '.' || pg_catalog.quote_ident($1)) IS NOT NULL`,
		blue.Name.Name).Scan(&taken)
	if err != nil {
		return nil, fmt.Errorf("alter: rehearsal: temporary schema: %w", err)
	}
	if taken {
		return nil, fmt.Errorf("alter: rehearsal: this session already has a temporary table %s: use a new session", blue.Name.Name)
	}
	s.rel = "pg_temp." + db.Ident(blue.Name.Name)
	s.def, err = renderTable(ctx, q, blue, s.rel, renderOptions{})
	if err != nil {
		return nil, fmt.Errorf("alter: rehearsal: %w", err)
	}
	return s, nil
}

// create makes the scratch copy (CREATE TEMP TABLE and its indexes). The
// caller is inside a savepoint or the rolled-back transaction.
func (s *scratch) create(ctx context.Context) error {
	stmt := strings.Replace(s.def.Create, "CREATE TABLE", "CREATE TEMPORARY TABLE", 1)
	for _, sql := range append([]string{stmt}, s.def.Indexes...) {
		if _, err := s.q.Exec(ctx, sql); err != nil {
			return fmt.Errorf("alter: rehearsal: copying %s's structure: %s: %w", s.blue.Name, oneLine(sql), err)
		}
	}
	return nil
}

// state is the scratch's relfilenodes and the lock modes this backend
// holds on it.
type state struct {
	node    uint32
	indexes map[string]uint32
	modes   []string
}

// oid is the scratch's OID (it is found by name before a subcommand,
// and by OID after, which may have renamed it).
func (s *scratch) oid(ctx context.Context) (uint32, error) {
	var oid uint32
	if err := s.q.QueryRow(ctx, `SELECT c.oid FROM pg_catalog.pg_class c
 WHERE c.relnamespace = pg_catalog.pg_my_temp_schema() AND c.relname = $1`, s.blue.Name.Name).Scan(&oid); err != nil {
		return 0, fmt.Errorf("alter: rehearsal: scratch table: %w", err)
	}
	return oid, nil
}

func (s *scratch) state(ctx context.Context, oid uint32) (state, error) {
	st := state{indexes: map[string]uint32{}}
	if err := s.q.QueryRow(ctx, `SELECT c.relfilenode FROM pg_catalog.pg_class c WHERE c.oid = $1`, oid).Scan(&st.node); err != nil {
		return st, fmt.Errorf("alter: rehearsal: scratch table: %w", err)
	}
	rows, err := s.q.Query(ctx, `SELECT c.relname::text, c.relfilenode FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = $1`, oid)
	if err != nil {
		return st, fmt.Errorf("alter: rehearsal: scratch indexes: %w", err)
	}
	for rows.Next() {
		var name string
		var node uint32
		if err := rows.Scan(&name, &node); err != nil {
			rows.Close()
			return st, err
		}
		st.indexes[name] = node
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return st, err
	}
	rows, err = s.q.Query(ctx, `SELECT mode FROM pg_catalog.pg_locks
 WHERE pid = pg_catalog.pg_backend_pid() AND locktype = 'relation' AND relation = $1 AND granted`, oid)
	if err != nil {
		return st, fmt.Errorf("alter: rehearsal: locks: %w", err)
	}
	for rows.Next() {
		var m string
		if err := rows.Scan(&m); err != nil {
			rows.Close()
			return st, err
		}
		st.modes = append(st.modes, m)
	}
	rows.Close()
	return st, rows.Err()
}

// observe runs one subcommand on the scratch and says what it did.
func (s *scratch) observe(ctx context.Context, sql string) (observation, error) {
	oid, err := s.oid(ctx)
	if err != nil {
		return observation{}, err
	}
	before, err := s.state(ctx, oid)
	if err != nil {
		return observation{}, err
	}
	// The subcommand's names (types, functions in a DEFAULT or USING)
	// resolve as the application's would: its schema first after
	// pg_catalog; greenswap's own queries keep the session's bare path.
	if _, err := s.q.Exec(ctx, "SET LOCAL search_path TO "+shadow.SearchPathFor(s.blue.Name.Schema)); err != nil {
		return observation{}, err
	}
	_, err = s.q.Exec(ctx, sql)
	if _, rerr := s.q.Exec(ctx, "SET LOCAL search_path TO pg_catalog, pg_temp"); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		return observation{}, err
	}
	after, err := s.state(ctx, oid)
	if err != nil {
		return observation{}, err
	}
	var o observation
	o.Rewrite = after.node != before.node
	for name, node := range after.indexes {
		old, ok := before.indexes[name]
		switch {
		case !ok:
			o.Created = append(o.Created, name)
		case old != node:
			o.Rebuilt = append(o.Rebuilt, name)
		}
	}
	slices.Sort(o.Created)
	slices.Sort(o.Rebuilt)
	// A relation we created is already held in ACCESS EXCLUSIVE mode; a
	// weaker mode the subcommand takes shows as a new row of pg_locks, the
	// same mode again does not: no new mode means ACCESS EXCLUSIVE.
	o.Mode = "AccessExclusiveLock"
	best := -1
	for _, m := range after.modes {
		if slices.Contains(before.modes, m) {
			continue
		}
		if i := slices.Index(lockStrength, m); i > best {
			best, o.Mode = i, m
		}
	}
	return o, nil
}

// rehearseSQL is the statement that runs sub on rel.
func rehearseSQL(sub Subcommand, rel string) string {
	if sub.Kind == CreateIndex {
		return retargetIndex(sub.Text, rel, false)
	}
	return "ALTER TABLE " + rel + " " + sub.Text
}

// SubError is a subcommand PostgreSQL refused in the rehearsal: bad
// input, exit 2, nothing changed.
type SubError struct {
	Sub Subcommand
	Err error
}

func (e *SubError) Error() string {
	msg := e.Err.Error()
	var pe *pgconn.PgError
	if errors.As(e.Err, &pe) {
		msg = pe.Message + " (SQLSTATE " + pe.Code + ")"
		msg = strings.ReplaceAll(msg, `relation "pg_temp.`, `relation "`)
	}
	return fmt.Sprintf("alter: %q fails: %s: fix the ALTER", oneLine(e.Sub.Text), msg)
}

func (e *SubError) Unwrap() error { return e.Err }

// ExitCode: a subcommand the server refuses is bad input.
func (e *SubError) ExitCode() exitcode.Code { return exitcode.BadInput }

// checkTables makes sure every statement is about blue: a bare name
// means blue's schema (greenswap's sessions have no user schema on their
// search_path).
func checkTables(blue *shadow.Table, stmts []Statement) error {
	for _, st := range stmts {
		if st.Table.Name == blue.Name.Name && (st.Table.Schema == "" || st.Table.Schema == blue.Name.Schema) {
			continue
		}
		name := db.Ident(st.Table.Name)
		if st.Table.Schema != "" {
			name = db.Ident(st.Table.Schema, st.Table.Name)
		}
		return &ParseError{Msg: fmt.Sprintf("%q is about %s, not %s: give one table's ALTERs at a time", oneLine(st.Text), name, blue.Name)}
	}
	return nil
}

// Classify decides the strategy of every subcommand by rehearsing it on an
// empty scratch copy of blue, in q's transaction: the caller must roll it
// back (it creates temporary tables). PostgreSQL rewrites an empty table
// exactly when it would rewrite a full one, so the relfilenodes read back
// decide per server major; the lock mode is read from pg_locks.
func Classify(ctx context.Context, q db.Querier, blue *shadow.Table, stmts []Statement) (*Plan, error) {
	if err := checkTables(blue, stmts); err != nil {
		return nil, err
	}
	plan := &Plan{Table: blue.Name}
	if err := q.QueryRow(ctx, `SELECT pg_catalog.current_setting('server_version_num')::int / 10000`).Scan(&plan.ServerMajor); err != nil {
		return nil, fmt.Errorf("alter: server version: %w", err)
	}
	sc, err := newScratch(ctx, q, blue)
	if err != nil {
		return nil, err
	}
	var subs []Subcommand
	for _, st := range stmts {
		subs = append(subs, st.Subs...)
	}
	// Each subcommand alone on a fresh copy: its own rewrite and lock.
	alone := make([]*observation, len(subs))
	for i, sub := range subs {
		if sub.Kind == AddForeignKey || sub.Kind == PartitionBy {
			continue // not runnable on a temporary table; decided below
		}
		o, err := sc.probe(ctx, sub)
		if err == nil {
			alone[i] = &o
		}
	}
	// Then all of them in order on one copy: the result, and the readings
	// of a subcommand that needs an earlier one.
	if _, err := q.Exec(ctx, "SAVEPOINT gs_alter_all"); err != nil {
		return nil, fmt.Errorf("alter: rehearsal: %w", err)
	}
	if err := sc.create(ctx); err != nil {
		return nil, err
	}
	var tempSchema string
	if err := q.QueryRow(ctx, `SELECT nspname::text FROM pg_catalog.pg_namespace WHERE oid = pg_catalog.pg_my_temp_schema()`).Scan(&tempSchema); err != nil {
		return nil, fmt.Errorf("alter: the rehearsal's temporary schema: %w", err)
	}
	// stable[i]: the STABLE functions subs[i]'s conversion calls, read
	// before it runs (the copy still has the old type, as blue does).
	stable := make([][]string, len(subs))
	fkNames := map[string]bool{}
	for i, sub := range subs {
		if sub.Kind == AlterType {
			if stable[i], err = sc.stableConversion(ctx, tempSchema, sub); err != nil {
				return nil, err
			}
		}
		if sub.Kind == AddForeignKey {
			if err := checkForeignKey(ctx, q, sc, sub); err != nil {
				return nil, err
			}
			if subs[i].Text, err = qualifyReference(ctx, q, blue, sub); err != nil {
				return nil, err
			}
			if sub.Constraint == "" {
				cols := clip(strings.Join(fkColumns(constraintBody(sub.Text)), "_"), spec.MaxIdentLen)
				if subs[i].Constraint, err = freeConstraintName(ctx, q, blue, blue.Name.Name, cols, "fkey", fkNames); err != nil {
					return nil, err
				}
				fkNames[subs[i].Constraint] = true
			}
			continue
		}
		if sub.Kind == PartitionBy {
			continue
		}
		consBefore, err := sc.constraintNames(ctx)
		if err != nil {
			return nil, err
		}
		o, err := sc.observe(ctx, rehearseSQL(sub, sc.rel))
		if err != nil {
			return nil, &SubError{Sub: sub, Err: err}
		}
		if sub.Kind == RenameTable {
			// The later statements and green's definition read the copy
			// under blue's name.
			if _, err := q.Exec(ctx, "ALTER TABLE pg_temp."+db.Ident(sub.NewName)+" RENAME TO "+db.Ident(blue.Name.Name)); err != nil {
				return nil, fmt.Errorf("alter: rehearsal: %w", err)
			}
		}
		consAfter, err := sc.constraintNames(ctx)
		if err != nil {
			return nil, err
		}
		added := ""
		for _, c := range consAfter {
			if !slices.Contains(consBefore, c) {
				added = c
			}
		}
		if alone[i] == nil {
			alone[i] = &o
		}
		step, err := decide(ctx, q, sc, blue, sub, *alone[i], added, plan.ServerMajor)
		if err != nil {
			return nil, err
		}
		plan.Steps = append(plan.Steps, step)
	}
	// Foreign keys and PARTITION BY come in where they were written.
	plan.Steps = placeUnrehearsed(plan.Steps, subs, blue)
	if err := order(plan, subs); err != nil {
		return nil, err
	}
	for i, st := range plan.Steps {
		if st.Strategy == BlueGreen && st.Sub.Kind == AlterType && len(stable[i]) > 0 {
			plan.Hazards = append(plan.Hazards, sessionHazard(blue, st.Sub, stable[i]))
		}
	}
	if plan.Order != InPlaceOnly {
		s, err := deriveSpec(ctx, q, sc, blue, plan)
		if err != nil {
			return nil, err
		}
		plan.BlueGreen = s
	}
	if _, err := q.Exec(ctx, "ROLLBACK TO SAVEPOINT gs_alter_all"); err != nil {
		return nil, fmt.Errorf("alter: rehearsal: %w", err)
	}
	return plan, nil
}

// probe runs sub alone on a fresh copy inside a savepoint it rolls back.
func (s *scratch) probe(ctx context.Context, sub Subcommand) (observation, error) {
	if _, err := s.q.Exec(ctx, "SAVEPOINT gs_alter_probe"); err != nil {
		return observation{}, err
	}
	defer func() { _, _ = s.q.Exec(ctx, "ROLLBACK TO SAVEPOINT gs_alter_probe") }()
	if err := s.create(ctx); err != nil {
		return observation{}, err
	}
	return s.observe(ctx, rehearseSQL(sub, s.rel))
}

func (s *scratch) constraintNames(ctx context.Context) ([]string, error) {
	rows, err := s.q.Query(ctx, `SELECT conname::text FROM pg_catalog.pg_constraint
 WHERE conrelid = pg_catalog.to_regclass($1) ORDER BY 1`, s.rel)
	if err != nil {
		return nil, fmt.Errorf("alter: rehearsal: constraints: %w", err)
	}
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, n)
	}
	rows.Close()
	return out, rows.Err()
}

// checkForeignKey checks what a temporary table cannot rehearse (it may
// not reference a permanent one): the column exists on the scratch.
func checkForeignKey(ctx context.Context, q db.Querier, sc *scratch, sub Subcommand) error {
	if sub.Column == "" {
		return nil
	}
	var ok bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
 WHERE attrelid = pg_catalog.to_regclass($1) AND attname = $2 AND attnum > 0 AND NOT attisdropped)`, sc.rel, sub.Column).Scan(&ok); err != nil {
		return fmt.Errorf("alter: rehearsal: %w", err)
	}
	if !ok {
		return &SubError{Sub: sub, Err: fmt.Errorf("column %q of %s does not exist", sub.Column, sc.blue.Name)}
	}
	return nil
}

func lockHeld(mode string) string {
	switch mode {
	case "AccessExclusiveLock":
		return "brief, metadata only"
	case "ShareUpdateExclusiveLock":
		return "brief; reads and writes go on"
	}
	return "brief"
}

// endsNotValid reports whether text already ends in NOT VALID.
func endsNotValid(text string) bool {
	toks, _ := sqllex.Tokens(text)
	n := len(toks)
	return n >= 2 && toks[n-2].Is("NOT") && toks[n-1].Is("VALID")
}

// constraintBody is an ADD's text from its CHECK / FOREIGN KEY / UNIQUE
// keyword on (the CONSTRAINT name, if any, left out).
func constraintBody(text string) string {
	toks, _ := sqllex.Tokens(text)
	for _, t := range toks {
		if isAny(t, "CHECK", "FOREIGN", "UNIQUE", "PRIMARY", "EXCLUDE") {
			return text[t.Pos:]
		}
	}
	return text
}

// decide picks a subcommand's strategy from what the rehearsal saw.
func decide(ctx context.Context, q db.Querier, sc *scratch, blue *shadow.Table, sub Subcommand, o observation, added string, major int) (Step, error) {
	rel := db.Ident(blue.Name.Schema, blue.Name.Name)
	step := Step{Sub: sub, Lock: Lock{Mode: o.Mode, Held: lockHeld(o.Mode)}, Rewrite: o.Rewrite, IndexRebuild: len(o.Rebuilt) > 0}
	plain := "ALTER TABLE " + rel + " " + sub.Text
	blueGreen := func(why string) (Step, error) {
		step.Strategy, step.Why = BlueGreen, why
		step.Lock.Held = "none on the live table beyond the lifecycle's own short steps (below); the plain ALTER would hold " + o.Mode + " throughout"
		return step, nil
	}
	switch {
	case o.Rewrite:
		return blueGreen(fmt.Sprintf("on PostgreSQL %d it rewrites the table (the rehearsal's relfilenode changed): the plain ALTER would hold %s for the whole copy", major, o.Mode))
	case len(o.Rebuilt) > 0:
		return blueGreen(fmt.Sprintf("on PostgreSQL %d it rebuilds %s under %s: built beside blue instead", major, strings.Join(o.Rebuilt, ", "), o.Mode))
	}
	switch sub.Kind {
	case AddPrimaryKey:
		return blueGreen("a new primary key builds its index and checks NOT NULL under ACCESS EXCLUSIVE (build a unique index CONCURRENTLY and use ADD PRIMARY KEY USING INDEX to stay in place)")
	case SetNotNull:
		free, err := freeConstraintName(ctx, q, blue, blue.Name.Name, sub.Column, "gs_not_null", nil)
		if err != nil {
			return step, err
		}
		name := db.Ident(free)
		col := db.Ident(sub.Column)
		step.Strategy = CheckThenSetNotNull
		step.SQL = []string{
			"ALTER TABLE " + rel + " ADD CONSTRAINT " + name + " CHECK (" + col + " IS NOT NULL) NOT VALID",
			"ALTER TABLE " + rel + " VALIDATE CONSTRAINT " + name,
			plain,
			"ALTER TABLE " + rel + " DROP CONSTRAINT " + name,
		}
		step.Lock.Held = "brief, metadata only: VALIDATE scans under SHARE UPDATE EXCLUSIVE (writes go on), then SET NOT NULL uses the validated check instead of a scan"
		step.Why = "a plain SET NOT NULL scans the whole table under ACCESS EXCLUSIVE; a validated CHECK (col IS NOT NULL) lets it skip the scan"
		if major < 12 {
			step.Why += fmt.Sprintf(" (PostgreSQL %d does not use the check: SET NOT NULL still scans)", major)
		}
		step.Warnings = append(step.Warnings, "VALIDATE fails if any row has "+sub.Column+" NULL: fill them first")
		return step, nil
	case AddCheck:
		if endsNotValid(sub.Text) {
			break
		}
		name := sub.Constraint
		if name == "" {
			name = added
		}
		step.Strategy = NotValidThenValidate
		step.SQL = []string{
			"ALTER TABLE " + rel + " ADD CONSTRAINT " + db.Ident(name) + " " + constraintBody(sub.Text) + " NOT VALID",
			"ALTER TABLE " + rel + " VALIDATE CONSTRAINT " + db.Ident(name),
		}
		step.Lock.Held = "brief, metadata only; VALIDATE scans under SHARE UPDATE EXCLUSIVE (writes go on)"
		step.Why = "a plain ADD CHECK scans every row under ACCESS EXCLUSIVE; NOT VALID then VALIDATE moves the scan under a lock writes pass"
		return step, nil
	case CreateIndex, AddUnique, AddPrimaryKeyUsingIndex:
		return concurrentStep(ctx, q, sc, blue, sub, o, step, added)
	case RenameColumn, RenameTable:
		step.Warnings = append(step.Warnings, "clients still using the old name break at once: deploy them first, or pin old releases to a version schema (greenswap's blue-green path keeps both shapes)")
	}
	step.Strategy = InPlace
	step.SQL = []string{plain}
	if step.Why == "" {
		step.Why = fmt.Sprintf("metadata only on PostgreSQL %d: the rehearsal rewrote nothing and took %s briefly", major, o.Mode)
	}
	return step, nil
}

// concurrentStep builds an index CONCURRENTLY on blue, then attaches the
// constraint USING INDEX.
func concurrentStep(ctx context.Context, q db.Querier, sc *scratch, blue *shadow.Table, sub Subcommand, o observation, step Step, added string) (Step, error) {
	rel := db.Ident(blue.Name.Schema, blue.Name.Name)
	step.Strategy = Concurrently
	step.Lock = Lock{Mode: "ShareUpdateExclusiveLock", Held: "for the build; reads and writes go on (the plain form would hold " + o.Mode + " for the build)"}
	step.Why = "CREATE INDEX CONCURRENTLY builds the index while writes go on; an INVALID leftover of an earlier try is dropped and rebuilt"
	var index string
	switch sub.Kind {
	case AddPrimaryKeyUsingIndex:
		step.Lock = Lock{Mode: o.Mode, Held: "brief, metadata only (the index exists)"}
		step.Why = "the index exists: attaching it as the primary key is metadata only once its columns are NOT NULL"
		step.SQL = []string{"ALTER TABLE " + rel + " " + sub.Text}
		return step, nil
	case CreateIndex:
		if len(o.Created) == 1 {
			index = o.Created[0]
		}
	case AddUnique:
		index = added
	}
	if index == "" {
		return step, &SubError{Sub: sub, Err: errors.New("the rehearsal built no single index")}
	}
	if sub.Constraint == "" {
		// The copy's schema holds only the copy: the name PostgreSQL chose
		// there may be another relation's in blue's schema.
		free, err := freeRelationName(ctx, q, blue, index)
		if err != nil {
			return step, err
		}
		if free != index {
			if _, err := q.Exec(ctx, "ALTER INDEX pg_temp."+db.Ident(index)+" RENAME TO "+db.Ident(free)); err != nil {
				return step, fmt.Errorf("alter: rehearsal: renaming index %s: %w", index, err)
			}
			index = free
		}
	}
	var def string
	if err := q.QueryRow(ctx, `SELECT pg_catalog.pg_get_indexdef(c.oid) FROM pg_catalog.pg_class c
 WHERE c.relnamespace = pg_catalog.pg_my_temp_schema() AND c.relname = $1`, index).Scan(&def); err != nil {
		return step, fmt.Errorf("alter: rehearsal: index %s: %w", index, err)
	}
	step.SQL = []string{retargetIndex(def, rel, true)}
	if sub.Kind == AddUnique {
		// USING INDEX makes the constraint NOT DEFERRABLE unless told.
		var deferrable, deferred bool
		if err := q.QueryRow(ctx, `SELECT condeferrable, condeferred FROM pg_catalog.pg_constraint
 WHERE conrelid = pg_catalog.to_regclass($1) AND conname = $2`, sc.rel, index).Scan(&deferrable, &deferred); err != nil {
			return step, fmt.Errorf("alter: rehearsal: constraint %s: %w", index, err)
		}
		attach := "ALTER TABLE " + rel + " ADD CONSTRAINT " + db.Ident(index) + " UNIQUE USING INDEX " + db.Ident(index)
		if deferrable {
			attach += " DEFERRABLE"
		}
		if deferred {
			attach += " INITIALLY DEFERRED"
		}
		step.SQL = append(step.SQL, attach)
	}
	return step, nil
}

// placeUnrehearsed puts the foreign keys and PARTITION BY among the steps
// in input order.
func placeUnrehearsed(steps []Step, subs []Subcommand, blue *shadow.Table) []Step {
	rel := db.Ident(blue.Name.Schema, blue.Name.Name)
	var out []Step
	k := 0
	for _, sub := range subs {
		switch sub.Kind {
		case AddForeignKey:
			step := Step{Sub: sub, Lock: Lock{Mode: "ShareRowExclusiveLock", Held: "brief on both tables; VALIDATE scans under SHARE UPDATE EXCLUSIVE (writes go on)"}}
			if endsNotValid(sub.Text) {
				step.Strategy, step.SQL = InPlace, []string{"ALTER TABLE " + rel + " " + sub.Text}
				step.Why = "NOT VALID: metadata only"
			} else {
				name := sub.Constraint
				if name == "" {
					name = spec.TruncateIdent(blue.Name.Name + "_" + sub.Column + "_fkey")
				}
				step.Strategy = NotValidThenValidate
				step.SQL = []string{
					"ALTER TABLE " + rel + " ADD CONSTRAINT " + db.Ident(name) + " " + constraintBody(sub.Text) + " NOT VALID",
					"ALTER TABLE " + rel + " VALIDATE CONSTRAINT " + db.Ident(name),
				}
				step.Why = "a plain ADD FOREIGN KEY checks every row while both tables are locked against writes; NOT VALID then VALIDATE lets writes go on during the check"
			}
			out = append(out, step)
		case PartitionBy:
			out = append(out, Step{Sub: sub, Strategy: BlueGreen, Lock: Lock{Mode: "AccessExclusiveLock", Held: "none on the live table beyond the lifecycle's own short steps"},
				Why: "a table cannot become partitioned in place: green is created partitioned and filled beside blue"})
		default:
			out = append(out, steps[k])
			k++
		}
	}
	return out
}

// order decides when the in-place steps run relative to the blue-green
// part, or refuses a mix that must be split.
func order(plan *Plan, subs []Subcommand) error {
	var bg, inPlace bool
	var usings []string
	for _, st := range plan.Steps {
		if st.Strategy == BlueGreen {
			bg = true
			if st.Sub.Using != "" {
				usings = append(usings, st.Sub.Using)
			}
		} else {
			inPlace = true
		}
	}
	switch {
	case !bg:
		plan.Order = InPlaceOnly
		return nil
	case !inPlace:
		plan.Order = BlueGreenOnly
		return nil
	}
	seenBG := false
	for i := range plan.Steps {
		st := &plan.Steps[i]
		if st.Strategy == BlueGreen {
			seenBG = true
			continue
		}
		switch st.Sub.Kind {
		case RenameTable:
			return &ParseError{Msg: fmt.Sprintf("%q with a change that needs the blue-green lifecycle: rename the table in its own ALTER after the migration", oneLine(st.Sub.Text))}
		case RenameColumn, DropColumn:
			for _, u := range usings {
				if mentions(u, st.Sub.Column) {
					return &ParseError{Msg: fmt.Sprintf("%q changes column %s that a USING expression reads: split the ALTER (the type change first)", oneLine(st.Sub.Text), st.Sub.Column)}
				}
			}
			if st.Sub.Kind == RenameColumn && seenBG {
				return &ParseError{Msg: fmt.Sprintf("%q after a change that needs the blue-green lifecycle: give the rename its own ALTER after the migration", oneLine(st.Sub.Text))}
			}
		case CreateIndex, AddUnique:
			// Building it on blue too would be wasted: green gets it.
			st.Strategy, st.SQL = BlueGreen, nil
			st.Why = "the ALTER rebuilds the table beside blue anyway: the index is built on green (CONCURRENTLY, after the backfill) instead of on blue"
			st.Lock = Lock{Mode: "ShareUpdateExclusiveLock", Held: "on green only"}
		}
	}
	plan.Order = InPlaceFirst
	return nil
}

// mentions reports whether expr names column col.
func mentions(expr, col string) bool {
	toks, _ := sqllex.Tokens(expr)
	for _, t := range toks {
		if n, ok := t.Ident(); ok && n == col {
			return true
		}
	}
	return false
}

// GreenOnly moves a SET NOT NULL on a column forward maps to green only:
// the mapping fills what blue lacks, so blue keeps accepting NULLs (old
// clients) and green, already derived with the NOT NULL, enforces it. The
// order is decided again.
func (p *Plan) GreenOnly(forward map[string]string) {
	changed := false
	for i := range p.Steps {
		st := &p.Steps[i]
		if st.Sub.Kind != SetNotNull || forward[st.Sub.Column] == "" {
			continue
		}
		st.Strategy, st.SQL, st.Warnings = BlueGreen, nil, nil
		st.Lock = Lock{Mode: "AccessExclusiveLock", Held: "none on the live table: green is created with it"}
		st.Why = "forward." + st.Sub.Column + " fills the NULLs blue has: NOT NULL on green only, blue keeps accepting them from old clients"
		changed = true
	}
	if changed {
		_ = order(p, nil)
	}
}
