package shadow

import (
	"fmt"
	"slices"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
)

// Hazards: the sync key, unique indexes and foreign keys.

// key: a sync key exists.
func (h *hazardScan) key() {
	s, blue := h.s, h.blue
	if len(s.Key) == 0 && TableKey(blue) == nil {
		h.add(Hazard{Code: HazardNoKey, Severity: Blocking,
			Message: fmt.Sprintf("%s has no primary key and no unique index on NOT NULL columns: changes cannot be matched to green rows", blue.Name),
			Fix: fmt.Sprintf("add one without a long lock: CREATE UNIQUE INDEX CONCURRENTLY ... ON %s (...), then ALTER TABLE %s ADD PRIMARY KEY USING INDEX ...; or set key: [...] to a unique NOT NULL index's columns",
				db.Ident(blue.Name.Schema, blue.Name.Name), db.Ident(blue.Name.Schema, blue.Name.Name))})
	}
}

// foreignKeys: foreign keys to and from blue, and their counterparts on green.
func (h *hazardScan) foreignKeys() {
	blue, green := h.blue, h.green
	if len(blue.ReferencedBy) > 0 {
		var objs, missing []string
		for _, fk := range blue.ReferencedBy {
			objs = append(objs, fmt.Sprintf("%s.%s: %s", fk.Table, fk.Name, fk.Def))
			if green != nil && !hasUniqueOn(green, fk.RefColumns) {
				missing = append(missing, fmt.Sprintf("%s.%s needs a unique key on (%s)", fk.Table, fk.Name, strings.Join(fk.RefColumns, ", ")))
			}
		}
		h.add(Hazard{Code: HazardReferencedByFKs, Severity: Warning,
			Message: fmt.Sprintf("%d foreign keys reference %s: they keep pointing at blue while syncing; cutover re-points them at green and rollback back at blue", len(objs), blue.Name),
			Fix:     "expect a validation scan of the referencing tables at cutover; widen referencing columns too if the key's type changes (e.g. int → bigint)",
			Objects: objs})
		if len(missing) > 0 {
			h.add(Hazard{Code: HazardReferencedKeyMissing, Severity: Blocking,
				Message: "green has no unique key on the columns that foreign keys of other tables reference: they could not be re-pointed at cutover",
				Fix:     "add a PRIMARY KEY / UNIQUE constraint in target.ddl (or a CREATE UNIQUE INDEX in target.indexes) on those columns",
				Objects: missing})
		}
	}
	if green != nil {
		var missing []string
		for _, fk := range blue.ForeignKeys {
			if !greenHasFK(fk, blue, green) {
				missing = append(missing, fmt.Sprintf("%s: %s", fk.Name, fk.Def))
			}
		}
		if len(missing) > 0 {
			h.add(Hazard{Code: HazardForeignKeysMissing, Severity: Warning,
				Message: fmt.Sprintf("%d foreign keys of %s are not in target.ddl: green (and the app name after cutover) would not enforce them", len(missing), blue.Name),
				Fix:     "add the REFERENCES clauses to target.ddl, or accept losing them",
				Objects: missing})
		}
	}
}

// hasUniqueOn reports whether t has a valid, non-partial unique index on exactly cols.
func hasUniqueOn(t *Table, cols []string) bool {
	for _, ix := range t.Indexes {
		if ix.Unique && ix.Valid && !ix.Partial && !ix.Expression && SameColumns(ix.Columns, cols) {
			return true
		}
	}
	return false
}

// greenHasFK reports whether green has an FK matching blue's fk: same
// columns, same referenced table (blue itself maps to green) and columns.
func greenHasFK(fk ForeignKey, blue, green *Table) bool {
	ref := fk.RefTable
	if ref == blue.Name {
		ref = green.Name
	}
	for _, g := range green.ForeignKeys {
		if slices.Equal(g.Columns, fk.Columns) && g.RefTable == ref && slices.Equal(g.RefColumns, fk.RefColumns) {
			return true
		}
	}
	return false
}
