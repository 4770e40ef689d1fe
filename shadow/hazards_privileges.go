package shadow

import (
	"fmt"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
)

// Hazards: row-level security and schemas others may CREATE in.

// rowSecurity: row-level security on blue and green.
func (h *hazardScan) rowSecurity() {
	blue, green, n, f := h.blue, h.green, h.n, h.f
	if blue.RLSEnabled && f.ServerMajor > 0 && f.ServerMajor < 15 {
		h.add(Hazard{Code: HazardRLSNeedsInvoker, Severity: Blocking,
			Message: fmt.Sprintf("%s has row-level security and PostgreSQL %d has no security_invoker views: the app-name view would read the table with its owner's rights and bypass the policies", blue.Name, f.ServerMajor),
			Fix:     "upgrade to PostgreSQL 15 or later, or migrate another way"})
	}
	if blue.RLSEnabled && blue.RLSForced && len(f.RLSSubjects) > 0 {
		h.add(Hazard{Code: HazardRLSForcedOnGreenswap, Severity: Blocking,
			Message: fmt.Sprintf("%s has FORCE ROW LEVEL SECURITY, which applies to %s (neither superuser nor BYPASSRLS): the policies would filter greenswap's own reads and writes (the copy, the sync triggers, the checksums), so rows they hide would be missing from green while verify, seeing the same subset on both sides, called them equal; finalize would then drop them with blue",
				blue.Name, strings.Join(f.RLSSubjects, " and ")),
			Fix: fmt.Sprintf("for the migration, ALTER TABLE %s NO FORCE ROW LEVEL SECURITY (the owner is then exempt, other roles stay restricted) and FORCE it again after finalize; or, as a superuser, ALTER ROLE ... BYPASSRLS for the roles named",
				db.Ident(blue.Name.Schema, blue.Name.Name)),
			Objects: f.RLSSubjects})
	}
	if blue.RLSEnabled && green != nil && !green.RLSEnabled {
		pols := make([]string, len(blue.Policies))
		for i, p := range blue.Policies {
			pols[i] = p.Def
		}
		h.add(Hazard{Code: HazardRLSNotOnGreen, Severity: Warning,
			Message: fmt.Sprintf("%s has row-level security (%d policies) but green has none until cutover, which enables it and creates blue's policies there: until then a role reading %s directly (green's version schema) sees every row",
				blue.Name, len(blue.Policies), n.Green),
			Fix: fmt.Sprintf("right after sync creates green, ALTER TABLE %s ENABLE ROW LEVEL SECURITY and create the policies listed ON %s; or grant green's schema to no role that RLS restricts",
				db.Ident(n.Green.Schema, n.Green.Name), db.Ident(n.Green.Schema, n.Green.Name)),
			Objects: pols})
	}
}

// writableSchemas: schemas others may CREATE in on the expressions' path.
func (h *hazardScan) writableSchemas() {
	blue, n, f := h.blue, h.n, h.f
	for _, w := range f.WritableSchemas {
		where := fmt.Sprintf("which the sync functions (running as the owner) and greenswap's sessions search: %s", n.SearchPath())
		if w.Schema != n.App.Schema {
			where = "which holds functions that the spec's expressions call (" + strings.Join(w.Functions, ", ") + ")"
		}
		var roles []string
		for _, r := range w.Roles {
			if r == "PUBLIC" {
				roles = append(roles, "PUBLIC")
			} else {
				roles = append(roles, db.Ident(r))
			}
		}
		h.add(Hazard{Code: HazardWritableSchema, Severity: Warning,
			Message: fmt.Sprintf("roles other than the table's owner (%s) may CREATE in schema %s, %s. greenswap's own SQL qualifies every function it calls and its catalog sessions do not search %s, but the spec's forward and reverse expressions are evaluated with %s on the path, by the owner's triggers on every write: a function created there that matches a call's argument types better than the built-in (e.g. round(integer) for round(amount) on an integer column, where the built-in needs a cast to numeric) would run as the owner",
				blue.Owner, w.Schema, where, w.Schema, w.Schema),
			Fix:     fmt.Sprintf("REVOKE CREATE ON SCHEMA %s FROM %s; or write the spec's calls schema-qualified (pg_catalog.round(...), myschema.f(...))", db.Ident(w.Schema), strings.Join(roles, ", ")),
			Objects: w.Roles})
	}
}
