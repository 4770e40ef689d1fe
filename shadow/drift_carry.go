package shadow

import (
	"strings"
)

// CarryDrift marks Uncarried the changes DiffFingerprints found that
// leave every column as planned but can still make a sync write fail or
// land differently from the write it carries; drift is changed in place.
// primary is the shape the app name reads ("blue" before cutover,
// "green" after): the side whose user triggers fire. A change is carried
// when the other shape of the same table (blue for green, green for
// blue) makes it moot, as current shows it:
//
//   - NOT NULL added on a column: the other shape's column of that name is
//     NOT NULL too, so no sync write can bring a NULL (a forward or reverse
//     expression over a NOT NULL column is trusted to keep it non-NULL);
//   - a CHECK, UNIQUE, PRIMARY KEY or EXCLUDE constraint added or changed:
//     the other shape has one with the same definition, so the write the
//     sync carries was already accepted by the same rule; removed, a
//     uniqueness constraint may be the key's ON CONFLICT arbiter, so it is
//     never carried (a CHECK removed is);
//   - a unique index added or changed: the other shape has a unique index
//     with the same columns and method; removed, never (it may be the
//     key's arbiter); a non-unique index is always carried;
//   - a user trigger added or changed on the side that is not primary:
//     only disabled, since an enabled one fires on the sync's writes too
//     (twice per logical write, or a BEFORE trigger rewriting the row the
//     sync wrote); on the primary side, always (the sync triggers run AFTER
//     and read the row as stored).
//
// Foreign keys, defaults, rules, policies, owners and view changes are left
// as DiffFingerprints marked them: none changes what a sync write reads or
// writes (a default only applies to a column the write leaves out, and
// the sync writes every mapped column).
func CarryDrift(current *Fingerprint, drift []Drift, primary string) {
	for i := range drift {
		d := &drift[i]
		if d.Uncarried || (d.Role != "blue" && d.Role != "green") {
			continue
		}
		otherRole := "green"
		if d.Role == "green" {
			otherRole = "blue"
		}
		other := current.ObjectOf(d.Table, otherRole)
		if other != nil && !other.Exists {
			other = nil
		}
		refuse := func(why string) {
			d.Uncarried = true
			d.Fix = why + ": " + d.Fix
		}
		switch d.Kind {
		case "column":
			if d.Op != "not_null" {
				continue
			}
			var oc *ColumnPrint
			if other != nil {
				oc = other.column(d.Column)
			}
			if oc == nil || !oc.NotNull {
				refuse("the sync can still write NULL into it from " + otherRole + " (" + otherRole + "'s " + d.Column + " is nullable)")
			}
		case "constraint":
			kind := carryConstraintKind(d.Def)
			switch {
			case kind == "":
			case d.Op == "removed" && kind != "CHECK":
				refuse("it may be the key's ON CONFLICT arbiter the sync writes rely on")
			case d.Op == "removed":
			case other == nil || !carryHasConstraint(other, d.Def):
				refuse("the sync writes rows " + otherRole + " accepted into it without this rule; add the same constraint to " + otherRole + " first")
			}
		case "index":
			if !strings.HasPrefix(d.Def, "CREATE UNIQUE INDEX ") {
				continue
			}
			switch {
			case d.Op == "removed":
				refuse("a unique index may be the key's ON CONFLICT arbiter the sync writes rely on")
			case other == nil || !carryHasUniqueIndex(other, d.Def):
				refuse("the sync writes rows " + otherRole + " accepted into it without this uniqueness; build the same unique index on " + otherRole + " first")
			}
		case "trigger":
			if d.Op == "removed" || d.Role == primary || strings.HasSuffix(d.Def, " [D]") {
				continue
			}
			refuse("an enabled user trigger on " + d.Role + " (not the primary side) fires on the sync's writes: disable it (ALTER TABLE ... DISABLE TRIGGER " + d.Name + ")")
		}
	}
}

// carryConstraintKind is the kind of a pg_get_constraintdef text among
// those that restrict writes ("" for a foreign key or another kind).
func carryConstraintKind(def string) string {
	for _, k := range []string{"CHECK", "UNIQUE", "PRIMARY KEY", "EXCLUDE"} {
		if strings.HasPrefix(def, k+" ") || strings.HasPrefix(def, k+"(") {
			return k
		}
	}
	return ""
}

func carryHasConstraint(o *ObjectPrint, def string) bool {
	for _, c := range o.Constraints {
		if c.Def == def {
			return true
		}
	}
	return false
}

// carryHasUniqueIndex reports whether o has a unique index with def's
// method, columns and predicate (what follows " USING ": the name and the
// table differ between the shapes).
func carryHasUniqueIndex(o *ObjectPrint, def string) bool {
	_, tail, ok := strings.Cut(def, " USING ")
	if !ok {
		return false
	}
	for _, x := range o.Indexes {
		if _, t, ok := strings.Cut(x.Def, " USING "); ok && strings.HasPrefix(x.Def, "CREATE UNIQUE INDEX ") && t == tail {
			return true
		}
	}
	return false
}
