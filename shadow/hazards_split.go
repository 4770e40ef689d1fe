package shadow

// The hazards of a table split (issue 15), beside those of one table.

import (
	"fmt"
	"strings"

	"github.com/greenswap/greenswap/spec"
)

// Hazard codes of a split.
const (
	HazardSplitOldShapeView  = "split_old_shape_view"
	HazardSplitPartitions    = "split_partitions_unproven"
	HazardSplitRootCoverage  = "split_root_coverage"
	HazardSplitKeyUpdate     = "split_key_update_fk"
	HazardSplitDropped       = "split_dropped_columns"
	HazardSplitRollbackNames = "split_rollback_names"
	HazardSplitTruncate      = "split_truncate"
	HazardSplitGreenWrites   = "split_green_writes_rebuild"
	HazardSplitLossy         = "split_round_trip"
	HazardSplitInboundFK     = "split_inbound_fk"
)

// SplitInboundFKHazard is the blocking hazard of a blue that foreign keys
// reference (nil when none does): a split's cutover refuses it (exit 2)
// rather than choose the green the referencing rows should point at.
func SplitInboundFKHazard(blue *Table) *Hazard {
	var objs []string
	for _, fk := range blue.ReferencedBy {
		objs = append(objs, fk.Name+" on "+fk.Table.String())
	}
	if len(objs) == 0 {
		return nil
	}
	return &Hazard{Code: HazardSplitInboundFK, Severity: Blocking, Objects: objs,
		Message: "foreign keys reference the table being split: cutover of a split does not move them (the referencing rows would have to reference one of the greens) and refuses while they exist",
		Fix:     "drop them before sync, and after finalize create them again against the green that holds the referenced key"}
}

// SplitSample is what plan measured on a sample of blue's rows: how many
// it read, how many land in no root green and in more than one (a
// horizontal split's wheres must be exhaustive and exclusive), and how many
// do not come back equal when rebuilt from the greens they were copied to.
type SplitSample struct {
	Rows      int64
	NoRoot    int64
	ManyRoots int64
	Lossy     int64
}

// SplitHazards are the hazards particular to split s with mapping m over
// the greens (greens[i] is s.Split[i]'s table, as rehearsed), given the
// sample's findings.
func SplitHazards(s *spec.Spec, m *SplitMapping, greens []*Table, sample SplitSample) []Hazard {
	var out []Hazard
	app := s.AppTable().String()
	out = append(out, Hazard{Code: HazardSplitOldShapeView, Severity: Warning,
		Message: fmt.Sprintf("after cutover %s is a view joining the greens, written through INSTEAD OF triggers, no longer an auto-updatable view: "+
			"INSERT … RETURNING returns the row as the client wrote it (a default or generated value computed on a green is not in it), "+
			"INSERT … ON CONFLICT (key) on it is refused (42P10) and ON CONFLICT DO NOTHING raises the unique violation instead of skipping the row, COPY into it runs the trigger row by row, UPDATE/DELETE … WHERE CURRENT OF on it is refused, SELECT … FOR UPDATE/NO KEY UPDATE/SHARE/KEY SHARE (an ORM's pessimistic lock) on it fails with 0A000 (the greens are outer-joined), row-level security put on a green after cutover applies to reads through it on PostgreSQL 15+ (a security_invoker view; on 14 it reads the greens as its owner and cutover refuses RLS on a green) while writes through it are refused (42501) as long as a green has RLS, and an UPDATE/DELETE through it of a row another transaction changed since the statement read it fails with 40001 (retry it, as under REPEATABLE READ)", app),
		Fix: "point clients that need these at the greens (the new shape) before cutover, or keep them on blue's version schema (search_path), which stays a table until finalize"})
	roots := m.Roots()
	horizontal := false
	for _, r := range roots {
		if r.Where != "" {
			horizontal = true
		}
	}
	if horizontal || len(roots) > 1 {
		var objs []string
		for _, r := range roots {
			w := r.Where
			if w == "" {
				w = "every row"
			}
			objs = append(objs, r.Name+": "+w)
		}
		out = append(out, Hazard{Code: HazardSplitPartitions, Severity: Warning, Objects: objs,
			Message: "greenswap cannot prove that the root greens' wheres are exhaustive and exclusive (every blue row in exactly one root); verify checks it on every row",
			Fix:     "write the wheres as one condition and its negation (status = 'closed' / status IS DISTINCT FROM 'closed'), so NULLs land too"})
	}
	if sample.NoRoot > 0 || sample.ManyRoots > 0 {
		out = append(out, Hazard{Code: HazardSplitRootCoverage, Severity: Blocking,
			Message: fmt.Sprintf("of %d sampled blue rows, %d land in no root green (they would vanish from the rebuilt old shape) and %d in more than one (the rebuild would see two rows for one key)",
				sample.Rows, sample.NoRoot, sample.ManyRoots),
			Fix: "fix the roots' where so every blue row lands in exactly one"})
	}
	if sample.Lossy > 0 {
		out = append(out, Hazard{Code: HazardSplitLossy, Severity: Warning,
			Message: fmt.Sprintf("%d of %d sampled blue rows do not come back equal when rebuilt from the greens: a write through a green would change them in blue", sample.Lossy, sample.Rows),
			Fix:     "give reverse: expressions that undo the forward ones (and check the wheres of the non-root greens keep what they drop)"})
	}
	for _, d := range s.SplitDependencies() {
		opts := strings.ToLower(d.FK.Options)
		if !strings.Contains(opts, "on update cascade") {
			out = append(out, Hazard{Code: HazardSplitKeyUpdate, Severity: Warning,
				Objects: []string{fmt.Sprintf("%s → %s", s.SplitGreenName(d.From), s.SplitGreenName(d.To))},
				Message: "a key UPDATE of a blue row fails once it reaches the greens: the foreign key among them is not ON UPDATE CASCADE, so the parent green's key cannot move while the child's row points at it",
				Fix:     "declare the REFERENCES … ON UPDATE CASCADE in the child green's ddl, or never update the key"})
		}
	}
	if len(m.Dropped) > 0 {
		out = append(out, Hazard{Code: HazardSplitDropped, Severity: Warning, Objects: m.Dropped,
			Message: "dropped columns stay in blue only: a row created through a green gets blue's default there, and finalize retires them with blue",
			Fix:     "copy out what you still need before finalize"})
	}
	var named []string
	for _, g := range m.Greens {
		if g.Name != s.AppTable().Name {
			named = append(named, s.AppTable().Schema+"."+g.Name)
		}
	}
	if len(named) > 0 {
		out = append(out, Hazard{Code: HazardSplitRollbackNames, Severity: Info, Objects: named,
			Message: "cutover gives these greens app-schema names (simple views over them); rollback drops them again, and clients that started using them lose them",
			Fix:     "roll the clients that use the new names back before a rollback"})
	}
	out = append(out, Hazard{Code: HazardSplitTruncate, Severity: Info,
		Message: "TRUNCATE of blue empties every green; TRUNCATE of one green is refused (0A000): it would say nothing of the blue rows the other greens still make",
		Fix:     "delete a green's rows instead; each delete rebuilds its blue row"})
	out = append(out, Hazard{Code: HazardSplitGreenWrites, Severity: Info,
		Message: "from synced on, every row written through a green rebuilds its blue row from all the greens under a per-key advisory lock: writes of one row through several greens at once queue one behind the other (and can deadlock as two-table writes can)",
		Fix:     "nothing to do; retry a deadlocked transaction as you would any"})
	SortHazards(out)
	return out
}
