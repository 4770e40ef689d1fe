package cutover

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// TeardownPlan is rollback before cutover: everything sync built goes away
// in one transaction and the app gets its table back under its own name,
// as it was before sync (views created over the app name meanwhile are
// created again over the table).
type TeardownPlan struct {
	Migration string             `json:"migration"`
	App       spec.QualifiedName `json:"app"`
	Adopted   bool               `json:"adopted"` // the app name is greenswap's view over blue
	Green     bool               `json:"green"`   // green exists
	Views     []*viewMeta        `json:"dependent_views,omitempty"`
	Locks     []LockTarget       `json:"locks"`
	SQL       []string           `json:"sql"`
	// Slot is a replication slot of the migration that is dropped after the
	// transaction commits (slots are not transactional).
	Slot     string   `json:"slot,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
	fpOIDs   []uint32
	fp       string
}

// Nothing reports whether there is nothing to tear down.
func (p *TeardownPlan) Nothing() bool { return len(p.SQL) == 0 && p.Slot == "" }

// Step is the plan as a shadow.Step, for listings.
func (p *TeardownPlan) Step() shadow.Step {
	var sql []string
	for _, l := range p.Locks {
		sql = append(sql, l.SQL())
	}
	return shadow.Step{
		Name:          "rollback",
		Description:   fmt.Sprintf("drop green, the sync triggers and the version schemas; give %s its table back", p.App),
		SQL:           append(sql, p.SQL...),
		Lock:          "ACCESS EXCLUSIVE on " + p.App.String() + " and both tables",
		LockHold:      "milliseconds (catalog changes only; dropping green's files happens at commit)",
		Transactional: true,
	}
}

// PlanTeardown reads the catalog through q and returns what rollback
// before cutover does.
func PlanTeardown(ctx context.Context, q db.Querier, migration string, n shadow.Names) (*TeardownPlan, error) {
	if err := setPath(ctx, q, catalogPath); err != nil {
		return nil, err
	}
	p := &TeardownPlan{Migration: migration, App: n.App}
	app, blue, green, err := findMigrationRelations(ctx, q, n)
	if err != nil {
		return nil, err
	}
	blueSchema, err := schemaExists(ctx, q, n.BlueSchema)
	if err != nil {
		return nil, err
	}
	greenSchema, err := schemaExists(ctx, q, n.GreenSchema)
	if err != nil {
		return nil, err
	}
	p.Adopted = app != nil && app.Kind == "v" && blue != nil
	p.Green = green != nil
	switch {
	case app != nil && app.Kind == "v" && blue == nil:
		return nil, exitcode.Errorf(exitcode.Failed, "%s is a view but %s is missing: the migration's objects are inconsistent; inspect them by hand", n.App, n.Blue)
	case app != nil && app.Kind != "v" && blue != nil:
		return nil, exitcode.Errorf(exitcode.Failed, "both %s and %s are tables: the migration's objects are inconsistent; inspect them by hand", n.App, n.Blue)
	}

	var ls lockSet
	var sql []string
	if p.Adopted {
		if p.Views, err = loadDependents(ctx, q, []uint32{app.OID}, 0, "", ""); err != nil {
			return nil, err
		}
		appMeta := &viewMeta{OID: app.OID, Name: n.App}
		if err := loadViewMeta(ctx, q, appMeta); err != nil {
			return nil, err
		}
		for i := len(p.Views) - 1; i >= 0; i-- {
			ls.addView(p.Views[i], "dropped and created again over the table")
		}
		ls.addView(appMeta, "dropped")
		for i := len(p.Views) - 1; i >= 0; i-- {
			sql = append(sql, p.Views[i].dropSQL())
		}
		sql = append(sql, "DROP VIEW "+db.Ident(n.App.Schema, n.App.Name))
		colGrants, err := shadow.LoadColumnGrants(ctx, q, app.OID)
		if err != nil {
			return nil, err
		}
		defer func() {
			// Grants made on the view during the migration stay with the app name.
			p.SQL = append(p.SQL, shadow.GrantSQL(db.Ident(n.App.Schema, n.App.Name), appMeta.Grants)...)
			p.SQL = append(p.SQL, shadow.ColumnGrantSQL(db.Ident(n.App.Schema, n.App.Name), colGrants, nil)...)
			for _, v := range p.Views {
				p.SQL = append(p.SQL, v.createSQL()...)
			}
		}()
	}
	if blue != nil {
		ls.add(n.Blue, blue.OID, AccessExclusive, "sync triggers dropped, moved back to "+n.App.Schema)
		rel := db.Ident(n.Blue.Schema, n.Blue.Name)
		for _, tg := range []string{n.Trigger, n.Trigger + "_truncate", usageTrigger(n)} {
			sql = append(sql, "DROP TRIGGER IF EXISTS "+db.Ident(tg)+" ON "+rel)
		}
		sql = append(sql, "ALTER TABLE "+rel+" SET SCHEMA "+db.Ident(n.App.Schema))
		// The serial sequences adopt detached stayed in the app schema:
		// blue's columns own them again, as before sync.
		seqs, err := detachedSequences(ctx, q, n)
		if err != nil {
			return nil, err
		}
		appRel := db.Ident(n.App.Schema, n.App.Name)
		for _, s := range seqs {
			if s.name.Schema != n.App.Schema {
				p.Warnings = append(p.Warnings, fmt.Sprintf("sequence %s was moved out of %s during the migration: left unowned; "+
					"move it back and run ALTER SEQUENCE ... OWNED BY %s.%s", s.name, n.App.Schema, n.App, s.column))
				continue
			}
			sql = append(sql, "ALTER SEQUENCE "+db.Ident(s.name.Schema, s.name.Name)+" OWNED BY "+appRel+"."+db.Ident(s.column))
		}
	}
	if green != nil {
		// A partitioned green's partitions (every level) and their indexes
		// go with it: DROP TABLE of a partitioned table drops its
		// partitions, and LOCK TABLE locks them too. So the green schema is
		// empty for its DROP SCHEMA ... RESTRICT below, which would name any
		// other object left in it.
		ls.add(n.Green, green.OID, AccessExclusive, "dropped")
		sql = append(sql, "DROP TABLE "+db.Ident(n.Green.Schema, n.Green.Name))
	}
	if blueSchema || greenSchema {
		for _, fn := range []spec.QualifiedName{n.ForwardFunc, truncFunc(n.ForwardFunc), n.ReverseFunc, truncFunc(n.ReverseFunc), usageFunc(n)} {
			if (fn.Schema == n.BlueSchema && blueSchema) || (fn.Schema == n.GreenSchema && greenSchema) {
				sql = append(sql, "DROP FUNCTION IF EXISTS "+db.Ident(fn.Schema, fn.Name)+"()")
			}
		}
	}
	if blueSchema {
		rec := shadow.SequenceRecord(n)
		sql = append(sql, "DROP TABLE IF EXISTS "+qident(usageTable(n)), "DROP TABLE IF EXISTS "+qident(usageStateTable(n)),
			"DROP TABLE IF EXISTS "+qident(n.EchoToken), // logical mode's echo token (trigger.EchoTokenSQL)
			"DROP TABLE IF EXISTS "+db.Ident(rec.Schema, rec.Name))
	}
	if greenSchema {
		sql = append(sql, "DROP SCHEMA "+db.Ident(n.GreenSchema))
	}
	if blueSchema {
		sql = append(sql, "DROP SCHEMA "+db.Ident(n.BlueSchema))
	}
	var pub bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, n.Publication).Scan(&pub); err != nil {
		return nil, err
	}
	if pub {
		sql = append(sql, "DROP PUBLICATION "+db.Ident(n.Publication))
	}
	if err := q.QueryRow(ctx, `SELECT coalesce((SELECT slot_name::text FROM pg_replication_slots WHERE slot_name = $1 AND database = pg_catalog.current_database()), '')`, n.Slot).Scan(&p.Slot); err != nil {
		return nil, err
	}
	p.SQL = sql
	if blue != nil && green != nil {
		ls.pair(blue.OID, green.OID)
	}
	p.Locks = ls.list
	for _, l := range p.Locks {
		p.fpOIDs = append(p.fpOIDs, l.OID)
	}
	if p.fp, err = fingerprint(ctx, q, p.fpOIDs); err != nil {
		return nil, err
	}
	return p, nil
}

// detachedSequence is a serial sequence of blue's that adopt detached
// (shadow.SequenceRecord), where it is now.
type detachedSequence struct {
	oid    uint32
	name   spec.QualifiedName
	column string
}

// detachedSequences reads shadow.SequenceRecord; none when it does not exist
// (no serial sequence, or adopted by a greenswap that moved them with blue).
func detachedSequences(ctx context.Context, q db.Querier, n shadow.Names) ([]detachedSequence, error) {
	rec := shadow.SequenceRecord(n)
	var exists bool
	if err := q.QueryRow(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL`, db.Ident(rec.Schema, rec.Name)).Scan(&exists); err != nil {
		return nil, fmt.Errorf("read %s: %w", rec, err)
	}
	if !exists {
		return nil, nil
	}
	rows, err := q.Query(ctx, `SELECT c.oid, n.nspname::text, c.relname::text, r.col
		FROM `+db.Ident(rec.Schema, rec.Name)+` r JOIN pg_class c ON c.oid = r.seq JOIN pg_namespace n ON n.oid = c.relnamespace
		ORDER BY r.col`)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", rec, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (detachedSequence, error) {
		var s detachedSequence
		err := r.Scan(&s.oid, &s.name.Schema, &s.name.Name, &s.column)
		return s, err
	})
}

func truncFunc(fn spec.QualifiedName) spec.QualifiedName {
	return spec.QualifiedName{Schema: fn.Schema, Name: fn.Name + "_truncate"}
}

// TeardownResult is what Teardown did.
type TeardownResult struct {
	Plan     *TeardownPlan `json:"plan"`
	Attempts int           `json:"attempts"`
	LockHold time.Duration `json:"-"`
	Duration time.Duration `json:"-"`
	SlotNote string        `json:"slot_note,omitempty"`
}

// Teardown runs rollback before cutover in one transaction, with the lock
// retry; commit (the state change; may be nil) runs last inside it. A
// replication slot is dropped after the commit.
func Teardown(ctx context.Context, pool *pgxpool.Pool, migration string, n shadow.Names, opt SwapOptions,
	commit func(ctx context.Context, tx pgx.Tx, p *TeardownPlan) error) (*TeardownResult, error) {
	return TeardownMembers(ctx, pool, migration, []shadow.Names{n}, opt, commit)
}

// dropSlot drops a replication slot that is not in use and says what happened.
func dropSlot(ctx context.Context, pool *pgxpool.Pool, slot string) string {
	var active bool
	if err := pool.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1 AND database = pg_catalog.current_database()`, slot).Scan(&active); err != nil {
		if err == pgx.ErrNoRows {
			return ""
		}
		return fmt.Sprintf("could not read replication slot %s: %v; drop it by hand: SELECT pg_catalog.pg_drop_replication_slot('%s')", slot, err, slot)
	}
	if active {
		return fmt.Sprintf("replication slot %s is in use and was not dropped: it retains WAL; stop its consumer and run SELECT pg_catalog.pg_drop_replication_slot('%s')", slot, slot)
	}
	if _, err := pool.Exec(ctx, `SELECT pg_catalog.pg_drop_replication_slot($1)`, slot); err != nil {
		return fmt.Sprintf("could not drop replication slot %s: %v; it retains WAL: SELECT pg_catalog.pg_drop_replication_slot('%s')", slot, err, slot)
	}
	return "dropped replication slot " + slot
}

// withBlockers fills a lock timeout's blockers from NOWAIT failures when
// the waiting watcher saw none.
func withBlockers(err error, b []shadow.Blocker) error {
	if lt, ok := err.(*shadow.LockTimeoutError); ok && len(lt.Blockers) == 0 {
		lt.Blockers = b
	}
	return err
}
