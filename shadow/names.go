package shadow

import (
	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/spec"
)

// Names are the objects one migration creates. They derive from the
// migration name only, so every command (and a second operator) finds them
// without extra state, and a crash between steps leaves nothing unnamed.
type Names struct {
	App         spec.QualifiedName // the name clients use: a view during the migration
	BlueSchema  string             // version schema holding blue
	GreenSchema string             // version schema holding green
	Blue        spec.QualifiedName // blue table inside BlueSchema
	Green       spec.QualifiedName // green table inside GreenSchema
	ForwardFunc spec.QualifiedName // trigger function blue → green
	ReverseFunc spec.QualifiedName // trigger function green → blue
	Trigger     string             // trigger name used on both tables
	SyncFlag    string             // transaction-local GUC that marks a sync write (echo guard)
	Slot        string             // logical replication slot (logical mode)
	Publication string             // publication (logical mode)
	// EchoToken is a one-row table (column token text), readable by the
	// table owner alone, holding a random secret: logical mode's reverse
	// functions put it in their echo markers so the stream can tell them
	// from a marker any role can emit with pg_logical_emit_message.
	EchoToken spec.QualifiedName
}

// NamesFor derives every object name of migration m over the app table app.
func NamesFor(m string, app spec.QualifiedName) Names {
	blue := "gs_" + m + "_blue"
	green := "gs_" + m + "_green"
	return Names{
		App:         app,
		BlueSchema:  blue,
		GreenSchema: green,
		Blue:        spec.QualifiedName{Schema: blue, Name: app.Name},
		Green:       spec.QualifiedName{Schema: green, Name: app.Name},
		ForwardFunc: spec.QualifiedName{Schema: green, Name: "gs_forward"},
		ReverseFunc: spec.QualifiedName{Schema: blue, Name: "gs_reverse"},
		Trigger:     "gs_sync_" + m,
		SyncFlag:    "greenswap.sync_" + m,
		Slot:        "gs_" + m,
		Publication: "gs_" + m,
		EchoToken:   spec.QualifiedName{Schema: blue, Name: "gs_echo_token"},
	}
}

// SearchPath is the one search_path under which the spec's expressions, the
// sync functions and greenswap's own sessions (backfill, repair, verify,
// apply, plan) resolve names: pg_catalog first, so no schema can shadow a
// built-in type, function or operator; the app schema for the app's own
// types and functions; pg_temp named last, because a search_path that does
// not name it searches the caller's temporary schema first for relations and
// types (trap 11: a role's pg_temp.text would otherwise be the text of a
// SECURITY DEFINER function).
func (n Names) SearchPath() string { return SearchPathFor(n.App.Schema) }

// SearchPathFor is Names.SearchPath for an app schema.
func SearchPathFor(appSchema string) string {
	return "pg_catalog, " + db.Ident(appSchema) + ", pg_temp"
}

// MemberNamesFor derives the names of one table of migration m. For a
// one-table migration (multi false) it is NamesFor, so migrations in flight
// keep their names. With several tables each table has its own trigger
// functions (gs_forward_<table> in green's schema, gs_reverse_<table> in
// blue's: each maps its own columns), while the schemas, the trigger name,
// the slot, the publication, the echo token and SyncFlag are the
// migration's: one echo guard for every table, so a sync write on one green
// that cascades through a foreign key into another green does not echo
// back. spec.Validate rejects table names whose functions would collide once
// cut to 63 bytes.
func MemberNamesFor(m string, app spec.QualifiedName, multi bool) Names {
	n := NamesFor(m, app)
	if multi {
		fwd, rev := spec.MemberFuncNames(app.Name)
		n.ForwardFunc = spec.QualifiedName{Schema: n.GreenSchema, Name: fwd}
		n.ReverseFunc = spec.QualifiedName{Schema: n.BlueSchema, Name: rev}
	}
	return n
}

// SplitNamesFor derives the names of green i of a split of migration m
// over app table app (spec.IsSplit): blue, the schemas, the trigger name,
// SyncFlag (one echo guard for blue and every green), slot and publication
// are the migration's, as for one table; Green is the green in the green
// version schema under its own name (split[i].table); ForwardFunc is the
// one forward function of the split (on blue, writing every green:
// gs_forward in green's schema, as for one table); ReverseFunc is this
// green's own (gs_reverse_<green> in blue's schema), which rebuilds the
// blue row from the greens.
func SplitNamesFor(m string, app spec.QualifiedName, green string) Names {
	n := NamesFor(m, app)
	n.Green = spec.QualifiedName{Schema: n.GreenSchema, Name: green}
	n.ReverseFunc = spec.QualifiedName{Schema: n.BlueSchema, Name: spec.SplitFuncNames(green)}
	return n
}

// SplitNames is SplitNamesFor of every green of split spec s, in the order
// of s.Split (s.SplitOrder gives the order to write them in).
func SplitNames(s *spec.Spec) []Names {
	out := make([]Names, len(s.Split))
	for i := range s.Split {
		out[i] = SplitNamesFor(s.Name, s.AppTable(), s.SplitGreenName(i))
	}
	return out
}
