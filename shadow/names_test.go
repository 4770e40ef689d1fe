package shadow

import (
	"testing"

	"github.com/greenswap/greenswap/spec"
)

// TestMemberNamesFor: a one-table migration keeps NamesFor's names (those
// in flight find their objects); with several tables only the trigger
// functions are per table, the rest is the migration's.
func TestMemberNamesFor(t *testing.T) {
	t.Parallel()
	app := spec.QualifiedName{Schema: "shop", Name: "order_items"}
	if one, want := MemberNamesFor("m", app, false), NamesFor("m", app); one != want {
		t.Errorf("one table: %+v, want NamesFor's %+v", one, want)
	}
	n := MemberNamesFor("m", app, true)
	if n.ForwardFunc != (spec.QualifiedName{Schema: "gs_m_green", Name: "gs_forward_order_items"}) ||
		n.ReverseFunc != (spec.QualifiedName{Schema: "gs_m_blue", Name: "gs_reverse_order_items"}) {
		t.Errorf("functions %v %v", n.ForwardFunc, n.ReverseFunc)
	}
	other := MemberNamesFor("m", spec.QualifiedName{Schema: "public", Name: "orders"}, true)
	if n.SyncFlag != other.SyncFlag || n.Trigger != other.Trigger || n.Slot != other.Slot || n.Publication != other.Publication ||
		n.EchoToken != other.EchoToken || n.BlueSchema != other.BlueSchema || n.GreenSchema != other.GreenSchema {
		t.Errorf("shared names differ between members: %+v vs %+v", n, other)
	}
	if n.Green != (spec.QualifiedName{Schema: "gs_m_green", Name: "order_items"}) {
		t.Errorf("green %v", n.Green)
	}
	long := MemberNamesFor("m", spec.QualifiedName{Schema: "public", Name: string(make([]byte, 0)) + "é" + string(make([]rune, 0)) + longName}, true)
	if len(long.ForwardFunc.Name) > 63 {
		t.Errorf("forward function name is %d bytes", len(long.ForwardFunc.Name))
	}
}

const longName = "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabc"

// TestSplitNamesFor: every green of a split shares blue, the schemas, the
// trigger, the sync flag and the forward function; each has its own green
// table and reverse function.
func TestSplitNamesFor(t *testing.T) {
	t.Parallel()
	app := spec.QualifiedName{Schema: "public", Name: "users"}
	one := NamesFor("m", app)
	users, profiles := SplitNamesFor("m", app, "users"), SplitNamesFor("m", app, "user_profiles")
	if users.Green != (spec.QualifiedName{Schema: "gs_m_green", Name: "users"}) || profiles.Green != (spec.QualifiedName{Schema: "gs_m_green", Name: "user_profiles"}) {
		t.Errorf("greens %v %v", users.Green, profiles.Green)
	}
	if profiles.ReverseFunc != (spec.QualifiedName{Schema: "gs_m_blue", Name: "gs_reverse_user_profiles"}) || users.ReverseFunc == profiles.ReverseFunc {
		t.Errorf("reverse functions %v %v", users.ReverseFunc, profiles.ReverseFunc)
	}
	for _, n := range []Names{users, profiles} {
		if n.Blue != one.Blue || n.ForwardFunc != one.ForwardFunc || n.SyncFlag != one.SyncFlag || n.Trigger != one.Trigger ||
			n.BlueSchema != one.BlueSchema || n.GreenSchema != one.GreenSchema || n.App != app {
			t.Errorf("shared names differ: %+v vs %+v", n, one)
		}
	}
}
