package shadow

import (
	"context"
	"fmt"
	"slices"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/spec"
	"github.com/jackc/pgx/v5"
)

// Hazards: leftovers of other migrations and names finalize needs.

// leftovers: greenswap objects of an earlier or running migration.
func (h *hazardScan) leftovers() {
	s, f := h.s, h.f
	if len(f.Leftovers) > 0 {
		h.add(Hazard{Code: HazardLeftover, Severity: Blocking,
			Message: fmt.Sprintf("greenswap objects of an earlier or running migration of %s (or named %s) still exist", s.AppTable(), s.Name),
			Fix: "if that migration is live, continue it (see `greenswap status`); if it was abandoned, `greenswap rollback NAME`, " +
				"or remove the leftovers listed here by hand, then plan again",
			Objects: f.Leftovers})
	}
}

// nameClashes: names finalize needs in the app schema.
func (h *hazardScan) nameClashes() {
	n, f := h.n, h.f
	if len(f.NameClashes) > 0 {
		h.add(Hazard{Code: HazardFinalizeNameClash, Severity: Warning,
			Message: fmt.Sprintf("finalize moves green's partitions and indexes into schema %s, where these names are taken: finalize would refuse until they are free", n.App.Schema),
			Fix: fmt.Sprintf("rename the partition in target.partitions (or the index in target.indexes) before sync, or rename or drop the object in %s before finalize (ALTER TABLE / ALTER INDEX ... RENAME TO ...)",
				n.App.Schema),
			Objects: f.NameClashes})
	}
}

// loadLeftovers finds objects of another (or an abandoned) greenswap
// migration of this table or under this name.
func loadLeftovers(ctx context.Context, q db.Querier, s *spec.Spec, blue *Table) ([]string, error) {
	n := NamesFor(s.Name, s.AppTable())
	var out []string
	rows, err := q.Query(ctx, `SELECT nspname::text FROM pg_namespace WHERE nspname = ANY ($1) ORDER BY 1`,
		[]string{n.BlueSchema, n.GreenSchema})
	if err != nil {
		return nil, err
	}
	schemas, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	for _, sc := range schemas {
		out = append(out, fmt.Sprintf("schema %s exists: DROP SCHEMA %s CASCADE", sc, db.Ident(sc)))
	}

	slots := []string{n.Slot}
	migs, err := state.List(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("read greenswap.migrations: %w", err)
	}
	app := s.AppTable()
	for _, m := range migs {
		sameTable := m.AppTable == app.String() || m.AppTable == s.Table || m.AppTable == db.Ident(app.Schema, app.Name)
		switch {
		case m.Name == s.Name && m.State != state.RolledBack:
			out = append(out, fmt.Sprintf("migration %s exists in state %s (table %s): see `greenswap status %s`", m.Name, m.State, m.AppTable, m.Name))
		case m.Name != s.Name && sameTable && m.State != state.RolledBack && m.State != state.Finalized:
			out = append(out, fmt.Sprintf("migration %s of the same table is in state %s: see `greenswap status %s`", m.Name, m.State, m.Name))
		default:
			continue
		}
		if m.SlotName != nil && *m.SlotName != "" && !slices.Contains(slots, *m.SlotName) {
			slots = append(slots, *m.SlotName)
		}
	}

	rows, err = q.Query(ctx, `
SELECT slot_name::text, active,
       coalesce(pg_catalog.pg_wal_lsn_diff(CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END, restart_lsn), 0)::int8
  FROM pg_replication_slots WHERE slot_name = ANY ($1) ORDER BY 1`, slots)
	if err != nil {
		return nil, err
	}
	type slot struct {
		name     string
		active   bool
		retained int64
	}
	found, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (slot, error) {
		var sl slot
		err := r.Scan(&sl.name, &sl.active, &sl.retained)
		return sl, err
	})
	if err != nil {
		return nil, err
	}
	for _, sl := range found {
		st := "inactive"
		if sl.active {
			st = "active"
		}
		out = append(out, fmt.Sprintf("replication slot %s exists (%s, retains %d bytes of WAL): SELECT pg_catalog.pg_drop_replication_slot(%s)",
			sl.name, st, sl.retained, db.Literal(sl.name)))
	}

	var pub bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, n.Publication).Scan(&pub); err != nil {
		return nil, err
	}
	if pub {
		out = append(out, fmt.Sprintf("publication %s exists: DROP PUBLICATION %s", n.Publication, db.Ident(n.Publication)))
	}

	if blue != nil {
		rows, err := q.Query(ctx, `SELECT tgname::text FROM pg_trigger WHERE tgrelid = $1 AND pg_catalog.left(tgname::text, 8) = 'gs_sync_' ORDER BY 1`, blue.OID)
		if err != nil {
			return nil, err
		}
		tgs, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, err
		}
		for _, tg := range tgs {
			out = append(out, fmt.Sprintf("greenswap sync trigger %s is on %s: DROP TRIGGER %s ON %s", tg, blue.Name, db.Ident(tg), db.Ident(blue.Name.Schema, blue.Name.Name)))
		}
	}
	return out, nil
}

// nameClashesSQL: $1 green, $2 the app schema, $3 a table whose own
// relations (itself, its indexes, the sequences it owns) do not count — at
// plan time blue, which adopt moves out of the app schema before finalize
// (0 for none). The relations that move are those of green's schema in its
// partition tree, each with its indexes (the root keeps the app name: the
// app-name view is dropped first). A table's row type also needs its name
// free among the schema's types (a composite type has a pg_class row too,
// so only types without one are read from pg_type).
const nameClashesSQL = `
WITH RECURSIVE tree(oid) AS (
	SELECT $1::oid
	UNION
	SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.oid
), moving AS (
	SELECT c.oid, c.relname, c.relkind, c.relnamespace FROM pg_class c
	 WHERE c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = $1)
	   AND (c.oid IN (SELECT oid FROM tree WHERE oid <> $1)
	        OR c.oid IN (SELECT x.indexrelid FROM pg_index x JOIN tree t ON x.indrelid = t.oid))
), excluded(oid) AS (
	SELECT $3::oid
	UNION SELECT indexrelid FROM pg_index WHERE indrelid = $3::oid
	UNION SELECT d.objid FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
	        AND d.refobjid = $3::oid AND d.deptype IN ('a', 'i')
), app AS (
	SELECT oid FROM pg_namespace WHERE nspname = $2
)
SELECT m.relkind::text, n.nspname::text, m.relname::text, c.relkind::text
  FROM moving m JOIN pg_namespace n ON n.oid = m.relnamespace
  JOIN pg_class c ON c.relname = m.relname AND c.relnamespace = (SELECT oid FROM app)
 WHERE c.oid <> m.oid AND c.oid NOT IN (SELECT oid FROM excluded)
UNION ALL
SELECT m.relkind::text, n.nspname::text, m.relname::text, 'type'
  FROM moving m JOIN pg_namespace n ON n.oid = m.relnamespace
  JOIN pg_type t ON t.typname = m.relname AND t.typnamespace = (SELECT oid FROM app) AND t.typrelid = 0
 WHERE m.relkind IN ('r', 'p')
 ORDER BY 3`

// LoadNameClashes lists the relations finalize would move from green's
// schema into appSchema — green's partitions (the whole tree) and the
// indexes of green and of every partition — whose name is already taken
// there, each as one line naming both. ALTER TABLE ... SET SCHEMA fails on
// such a name, so finalize refuses up front and plan warns. exclude is a
// table whose own relations do not count (plan: blue, which leaves the app
// schema at adopt); 0 for none.
func LoadNameClashes(ctx context.Context, q db.Querier, green uint32, appSchema string, exclude uint32) ([]string, error) {
	rows, err := q.Query(ctx, nameClashesSQL, green, appSchema, exclude)
	if err != nil {
		return nil, fmt.Errorf("read names taken in schema %s: %w", appSchema, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var kind, schema, name, taken string
		if err := r.Scan(&kind, &schema, &name, &taken); err != nil {
			return "", err
		}
		what := "index"
		if kind == "r" || kind == "p" {
			what = "partition"
		}
		holder := relkindNames[taken]
		switch {
		case taken == "type":
			holder = "a type"
		case holder == "":
			holder = "a relation"
		}
		return fmt.Sprintf("%s %s would become %s, but %s of that name exists there",
			what, db.Ident(schema, name), db.Ident(appSchema, name), holder), nil
	})
}
