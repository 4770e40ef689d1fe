package spec

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// splitYAML lists user_activity first: it references users, so SplitOrder
// puts users before it; user_profiles references users too.
const splitYAML = `name: users_split
table: public.users
mode: trigger
split:
  - table: user_activity
    ddl: CREATE TABLE user_activity (user_id bigint PRIMARY KEY REFERENCES users ON DELETE CASCADE, last_seen_at timestamptz)
    forward: {user_id: id}
    where: last_seen_at IS NOT NULL
  - table: users
    ddl: CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, name text)
    indexes:
      - CREATE INDEX users_email_idx ON users (email)
  - table: user_profiles
    ddl: |
      CREATE TABLE user_profiles (user_id bigint PRIMARY KEY REFERENCES users ON UPDATE CASCADE ON DELETE CASCADE,
        bio text, avatar_url text, prefs jsonb)
    forward:
      user_id: id
drop: [legacy_col]
reverse:
  bio: user_profiles.bio
`

func TestSplitDecode(t *testing.T) {
	t.Parallel()
	s, err := ParseSpec([]byte(splitYAML), "u.yaml", "")
	if err != nil {
		t.Fatal(err)
	}
	if !s.IsSplit() || s.MultiTable() || len(s.Split) != 3 {
		t.Fatalf("IsSplit %v MultiTable %v, %d greens", s.IsSplit(), s.MultiTable(), len(s.Split))
	}
	if got := s.SplitOrder(); !slices.Equal(got, []int{1, 0, 2}) {
		t.Errorf("SplitOrder = %v, want users first [1 0 2]", got)
	}
	if got := s.SplitRoots(); !slices.Equal(got, []int{1}) {
		t.Errorf("SplitRoots = %v, want [1] (users)", got)
	}
	if s.Split[0].Where != "last_seen_at IS NOT NULL" || s.Split[2].Forward["user_id"] != "id" || !slices.Equal(s.Drop, []string{"legacy_col"}) || s.Reverse["bio"] != "user_profiles.bio" {
		t.Errorf("decoded fields: %+v", s)
	}
	m := s.SplitMember(2)
	if m.Table != "public.users" || !strings.Contains(m.Target.DDL, "user_profiles") || m.Forward["user_id"] != "id" {
		t.Errorf("member: %+v", m)
	}
	for field, want := range map[string]int{"target.ddl": 14, "forward.user_id": 18, "table": 2, "name": 1} {
		if got := m.Line(field); got != want {
			t.Errorf("split member line of %s = %d, want %d", field, got, want)
		}
	}
	if e := m.Errorf("target.ddl", "", "bad"); e.Field != "split[2].ddl" || e.Line != 14 {
		t.Errorf("member ddl error names %s:%d, want split[2].ddl:14", e.Field, e.Line)
	}
	if e := m.Errorf("forward.user_id", "", "bad"); e.Field != "split[2].forward.user_id" {
		t.Errorf("member forward error names %s", e.Field)
	}
	if e := m.Errorf("key", "", "bad"); e.Field != "key" {
		t.Errorf("blue's key error names %s, want key", e.Field)
	}
	if e := s.SplitMember(1).Errorf("target.indexes[0]", "", "bad"); e.Field != "split[1].indexes[0]" || e.Line != 12 {
		t.Errorf("member index error names %s:%d", e.Field, e.Line)
	}
	// The stored JSON round-trips.
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseSpec(b, "", "json")
	if err != nil {
		t.Fatalf("stored JSON does not parse back: %v\n%s", err, b)
	}
	if !reflect.DeepEqual(back.Split, s.Split) || !slices.Equal(back.Drop, s.Drop) || !reflect.DeepEqual(back.Reverse, s.Reverse) {
		t.Errorf("JSON round trip changed the split:\n%+v\n%+v", back.Split, s.Split)
	}
}

func TestSplitSpecErrors(t *testing.T) {
	t.Parallel()
	const users = "CREATE TABLE users (id bigint PRIMARY KEY, email text)"
	const profiles = "CREATE TABLE user_profiles (user_id bigint PRIMARY KEY REFERENCES users, bio text)"
	base := func(extra string) string {
		return "name: s\ntable: public.users\n" + extra
	}
	two := "split:\n  - {table: users, ddl: \"" + users + "\"}\n  - {table: user_profiles, ddl: \"" + profiles + "\", forward: {user_id: id}}\n"
	cases := []struct{ name, yaml, field, msg string }{
		{"one green", base("split:\n  - {table: users, ddl: \"" + users + "\"}\n"), "split", "lists 1 green"},
		{"target beside split", base(two + "target: {ddl: \"" + users + "\"}\n"), "target", "no single target"},
		{"top-level forward", base(two + "forward: {id: id}\n"), "forward", "per green"},
		{"tables beside split", base(two + "tables:\n  - {table: a, target: {ddl: CREATE TABLE a (id int)}}\n"), "tables", "not both"},
		{"logical", base("mode: logical\n" + two), "mode", "logical"},
		{"merge", base("merge: [a, b]\n"), "merge", "not supported"},
		{"no table name", base("split:\n  - {ddl: \"" + users + "\"}\n  - {table: user_profiles, ddl: \"" + profiles + "\"}\n"), "split[0].table", "required"},
		{"qualified green", base("split:\n  - {table: public.users, ddl: \"" + users + "\"}\n  - {table: user_profiles, ddl: \"" + profiles + "\"}\n"), "split[0].table", "schema-qualified"},
		{"ddl names another table", base("split:\n  - {table: accounts, ddl: \"" + users + "\"}\n  - {table: user_profiles, ddl: \"" + profiles + "\"}\n"), "split[0].ddl", `creates table "users"`},
		{"ddl missing", base("split:\n  - {table: users}\n  - {table: user_profiles, ddl: \"" + profiles + "\"}\n"), "split[0].ddl", "required"},
		{"ddl not create table", base("split:\n  - {table: users, ddl: \"DROP TABLE users\"}\n  - {table: user_profiles, ddl: \"" + profiles + "\"}\n"), "split[0].ddl", "CREATE TABLE"},
		{"index on another table", base("split:\n  - {table: users, ddl: \"" + users + "\", indexes: [\"CREATE INDEX ON user_profiles (bio)\"]}\n  - {table: user_profiles, ddl: \"" + profiles + "\"}\n"), "split[0].indexes[0]", "is not green"},
		{"bad forward", base("split:\n  - {table: users, ddl: \"" + users + "\", forward: {email: \"a; b\"}}\n  - {table: user_profiles, ddl: \"" + profiles + "\"}\n"), "split[0].forward.email", ";"},
		{"bad where", base("split:\n  - {table: users, ddl: \"" + users + "\", where: \"x -- y\"}\n  - {table: user_profiles, ddl: \"" + profiles + "\"}\n"), "split[0].where", "comment"},
		{"green twice", base("split:\n  - {table: users, ddl: \"" + users + "\"}\n  - {table: users, ddl: \"" + users + "\"}\n"), "split[1].table", "already split[0]"},
		{"cycle", base("split:\n  - {table: a, ddl: \"CREATE TABLE a (id int PRIMARY KEY REFERENCES b)\"}\n  - {table: b, ddl: \"CREATE TABLE b (id int PRIMARY KEY REFERENCES a)\"}\n"), "split[0].ddl", "cycle: a → b → a"},
		{"partitioned green", base("split:\n  - {table: users, ddl: \"CREATE TABLE users (id int) PARTITION BY HASH (id)\"}\n  - {table: user_profiles, ddl: \"" + profiles + "\"}\n"), "split[0].ddl", "partitioned"},
		{"drop empty", base(two + "drop: ['']\n"), "drop[0]", "empty"},
		{"drop twice", base(two + "drop: [a, a]\n"), "drop[1]", "already drop[0]"},
		{"drop without split", "name: s\ntable: t\ntarget: {ddl: CREATE TABLE t (id int)}\ndrop: [a]\n", "drop", "only to a split"},
		{"reverse of dropped", base(two + "drop: [bio]\nreverse: {bio: user_profiles.bio}\n"), "reverse.bio", "dropped"},
		{"bad reverse", base(two + "reverse: {bio: \"1;2\"}\n"), "reverse.bio", ";"},
		{"split not a list", base("split: users\n"), "split", "list of green tables"},
		{"unknown item field", base("split:\n  - {table: users, ddl: \"" + users + "\", target: x}\n  - {table: user_profiles, ddl: \"" + profiles + "\"}\n"), "split[0].target", "unknown field"},
		{"blue key empty", base("key: ['']\n" + two), "key[0]", "empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseSpec([]byte(tc.yaml), "s.yaml", "yaml")
			var se *SpecError
			if !errors.As(err, &se) {
				t.Fatalf("want a SpecError, got %v", err)
			}
			if se.Field != tc.field || !strings.Contains(se.Error(), tc.msg) || strings.Contains(se.Error(), "\n") {
				t.Errorf("got %q (field %s), want field %s and %q", se.Error(), se.Field, tc.field, tc.msg)
			}
		})
	}
}
