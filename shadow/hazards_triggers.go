package shadow

import "fmt"

// Hazards: views and user triggers on blue, and the sync trigger between the shapes.

// dependents: views and user triggers on blue.
func (h *hazardScan) dependents() {
	s, blue := h.s, h.blue
	if len(blue.DependentViews) > 0 {
		var objs []string
		mat := false
		for _, v := range blue.DependentViews {
			o := v.Name.String()
			if v.Materialized {
				o += " (materialized)"
				mat = true
			}
			objs = append(objs, o)
		}
		fix := "nothing to do; views that must keep blue's shape should read gs_" + s.Name + "_blue." + blue.Name.Name + " explicitly"
		if mat {
			fix += "; refresh the materialized views after cutover"
		}
		h.add(Hazard{Code: HazardDependentViews, Severity: Warning,
			Message: fmt.Sprintf("%d views read %s: they read blue until cutover, which re-creates them over the app name (and rollback again)", len(objs), blue.Name),
			Fix:     fix, Objects: objs})
	}
	if len(blue.Triggers) > 0 {
		var objs []string
		for _, tg := range blue.Triggers {
			objs = append(objs, tg.Def)
		}
		h.add(Hazard{Code: HazardUserTriggers, Severity: Warning,
			Message: fmt.Sprintf("%s has %d user triggers: they fire on the primary side only (blue until cutover, green after), once per logical write; greenswap's own sync writes do not fire them again", blue.Name, len(objs)),
			Fix:     "check that they can run against green's shape after cutover (NEW.column names and types) and that they do not depend on firing for both shapes",
			Objects: objs})
	}
}

// crossShapeDeadlock: the sync trigger can deadlock writers of both shapes.
func (h *hazardScan) crossShapeDeadlock() {
	s := h.s
	h.add(Hazard{Code: HazardCrossShapeDeadlock, Severity: Info,
		Message: fmt.Sprintf("once synced, a write through one shape updates the other in the same transaction: two clients writing the same rows at the same moment, one through blue's shape (old releases, %s before cutover) and one through green's, each hold their own row and wait for the other's through the sync trigger; PostgreSQL aborts one with SQLSTATE 40P01 (deadlock detected) after deadlock_timeout (default 1s) of stall",
			s.AppTable()),
		Fix: "route all writers of a given row through one shape (e.g. by tenant or by key range, or move writers to the new shape all at once), and retry transactions that fail with 40P01, as with any deadlock; see docs/runbook.md"})
}
