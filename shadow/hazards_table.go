package shadow

import (
	"fmt"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
)

// Hazards: what blue is (persistence, partitioning, inheritance) and what being a view means.

// tableKind: what blue is: persistence, partitioned or a partition.
func (h *hazardScan) tableKind() {
	blue, f := h.blue, h.f
	switch f.Persistence {
	case "u":
		h.add(Hazard{Code: HazardUnlogged, Severity: Blocking,
			Message: fmt.Sprintf("%s is UNLOGGED: a crash empties it, so blue and green could not be kept equal", blue.Name),
			Fix:     fmt.Sprintf("ALTER TABLE %s SET LOGGED first (rewrites the table), or change it offline", db.Ident(blue.Name.Schema, blue.Name.Name))})
	case "t":
		h.add(Hazard{Code: HazardTemporary, Severity: Blocking,
			Message: fmt.Sprintf("%s is a temporary table: it lives in one session", blue.Name),
			Fix:     "greenswap migrates permanent tables only"})
	}
	if blue.Kind == "p" {
		h.add(Hazard{Code: HazardPartitioned, Severity: Blocking,
			Message: fmt.Sprintf("%s is partitioned (%s): migrating a partitioned blue table is not supported yet", blue.Name, blue.PartitionKey),
			Fix:     "not supported yet: change a partitioned table with ALTER TABLE, or build its new shape with another tool"})
	}
	if blue.PartitionOf != nil {
		h.add(Hazard{Code: HazardPartition, Severity: Blocking,
			Message: fmt.Sprintf("%s is a partition of %s: moving it behind a view would detach it from its parent's routing", blue.Name, blue.PartitionOf),
			Fix:     "a partition cannot be migrated on its own; see the partitioned table"})
	}
}

// inheritance: inheritance children and parents.
func (h *hazardScan) inheritance() {
	blue, f := h.blue, h.f
	if len(f.InheritanceChildren) > 0 {
		h.add(Hazard{Code: HazardInheritanceChildren, Severity: Blocking,
			Message: fmt.Sprintf("%d tables inherit from %s: the backfill reads blue with its children and would copy their rows into green, but the sync triggers are on blue alone, so writes to the children never reach green, and at finalize the children lose their parent", len(f.InheritanceChildren), blue.Name),
			Fix:     fmt.Sprintf("migrate without inheritance: ALTER TABLE <child> NO INHERIT %s for each child listed (or move their rows into %s), then plan again", db.Ident(blue.Name.Schema, blue.Name.Name), blue.Name),
			Objects: f.InheritanceChildren})
	}
	if len(f.InheritanceParents) > 0 {
		h.add(Hazard{Code: HazardInheritanceParent, Severity: Blocking,
			Message: fmt.Sprintf("%s inherits from %s: the parent's queries include blue's rows in the old shape until finalize, then lose them all when blue is dropped (green inherits from nothing; making it inherit would show every row twice meanwhile)", blue.Name, strings.Join(f.InheritanceParents, ", ")),
			Fix:     fmt.Sprintf("ALTER TABLE %s NO INHERIT <parent> before the migration and re-attach the new table after finalize (ALTER TABLE ... INHERIT, which needs the parent's columns), or change it with ALTER TABLE", db.Ident(blue.Name.Schema, blue.Name.Name)),
			Objects: f.InheritanceParents})
	}
}

// viewLimitations: the app name is a view until finalize.
func (h *hazardScan) viewLimitations() {
	s, n := h.s, h.n
	h.add(Hazard{Code: HazardViewLimitations, Severity: Warning,
		Message: fmt.Sprintf("from adopt until finalize %s is a view: TRUNCATE, COPY ... FROM, COPY %s TO, ALTER TABLE (ADD/DROP/ALTER COLUMN, constraints), CREATE INDEX, REINDEX, CLUSTER, CREATE TRIGGER and new foreign keys referencing it fail; VACUUM (FULL) and ANALYZE skip it with a warning; LOCK TABLE locks the view and the table it reads now, not the other shape",
			s.AppTable(), s.AppTable()),
		Fix: fmt.Sprintf("point maintenance at %s / %s directly, use COPY (SELECT ...) TO for exports, and pause jobs that TRUNCATE or COPY into the table until finalize",
			db.Ident(n.Blue.Schema, n.Blue.Name), db.Ident(n.Green.Schema, n.Green.Name))})
}
