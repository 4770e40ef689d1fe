package spec

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// FuzzLoadSpec: ParseSpec never panics; every error is a one-line
// *SpecError; an accepted spec validates and survives a JSON round trip.
//
//	go test ./shadow -run XXX -fuzz FuzzLoadSpec -fuzztime 60s
func FuzzLoadSpec(f *testing.F) {
	seeds := []string{
		baseYAML,
		edit("  indexes:", "  indxes:"),
		edit("key: [id]", "key: 5"),
		edit("batch_size: 1000", `batch_size: "x"`),
		edit("batch_size: 1000", "lock_timeout: 200"),
		edit("batch_size: 1000", "min_batch_size: 10\n  max_batch_size: 5\n  target_batch_time: 1m30s"),
		edit("  email: coalesce(email, '')\n", "  email: coalesce(email, '')\n  email: lower(email)\n"),
		edit("- CREATE INDEX orders_email_idx", "- CREATE UNIQUE INDEX CONCURRENTLY orders_email_idx"),
		edit("email text NOT NULL)", "email text NOT NULL DEFAULT $a$;$a$); -- end"),
		edit("table: public.orders", `table: '"My Schema"."Orders"'`),
		"name: a\ntable: t\ntarget:\n  ddl: CREATE TABLE t (id int)\n",
		"x: &a {name: b}\n<<: *a\n",
		"name: a\ntable: t\ntarget: &t\n  ddl: CREATE TABLE t (id int)\nforward: {a: *t}\n",
		"name: a\n---\nname: b\n",
		"name: a\ntarget:\n\tddl: x\n",
		"",
		"[]",
		`{"name":"a","table":"t","target":{"ddl":"CREATE TABLE t (id int);"},"sync":{"lock_timeout":"1s","batch_size":10}}`,
		`{"name":"a","table":"t","target":{"ddl":"CREATE TABLE t (id int)","indexes":["CREATE INDEX ON t (id)"]},"forward":{"id":"id::bigint"}}`,
		"{\n\t\"name\": \"a\",\n\t\"name\": \"b\"\n}",
		`{"sync": {"lock_timeout": 200}}`,
		`{"key": [1, null, true, 2.5]}`,
		`{"name": "a"} trailing`,
		`{"name": "\u00e9\ud800"}`,
		// target.partitions
		partYAML,
		partEdit(" PARTITION BY RANGE (at)", ""),
		partEdit("TABLE events_2024 PARTITION", "TABLE gs_ev_green.events_2024 PARTITION"),
		partEdit("PARTITION OF events DEFAULT", "PARTITION OF app.events DEFAULT"),
		partEdit("PARTITION OF events DEFAULT", `PARTITION OF "events" (id DEFAULT 1) DEFAULT PARTITION BY LIST (id)`),
		partEdit("PARTITION OF events DEFAULT", "PARTITION OF events DEFAULT; -- x"),
		partEdit("CREATE INDEX events_at_idx ON events", "CREATE INDEX ON events"),
		"name: a\ntable: t\ntarget:\n  ddl: CREATE TABLE t (a int) PARTITION BY LIST (a)\n  partitions: [CREATE TABLE p PARTITION OF t DEFAULT, CREATE TABLE p PARTITION OF t DEFAULT]\n",
		`{"name":"a","table":"t","target":{"ddl":"CREATE TABLE t (a int) PARTITION BY LIST (a)","partitions":["CREATE TABLE \"p\"\"q\" PARTITION OF t FOR VALUES IN (1)",null]}}`,
		// tables:
		multiYAML,
		strings.Replace(multiYAML, "  - table: public.orders\n", "  - table: public.order_items\n", 1),
		strings.Replace(multiYAML, "note text)", "note text, i bigint REFERENCES order_items)", 1),
		strings.Replace(multiYAML, "mode: trigger\n", "mode: trigger\nkey: [id]\n", 1),
		"name: a\ntables:\n  - table: t\n    target: {ddl: CREATE TABLE t (id int REFERENCES t)}\n",
		"name: a\ntables: [{table: a, target: {ddl: 'CREATE TABLE a (id int)'}}, {table: x.a, target: {ddl: 'CREATE TABLE a (id int)'}}]\n",
		`{"name":"a","tables":[{"table":"p","target":{"ddl":"CREATE TABLE p (id int PRIMARY KEY)"}},{"table":"c","target":{"ddl":"CREATE TABLE c (id int, FOREIGN KEY (id) REFERENCES p)"}}]}`,
	}
	for _, s := range seeds {
		for format := range uint8(3) {
			f.Add([]byte(s), format)
		}
	}
	files, _ := filepath.Glob(filepath.Join("testdata", "*"))
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, uint8(0))
	}

	f.Fuzz(func(t *testing.T, data []byte, format uint8) {
		formats := []string{"", "yaml", "json"}
		s, err := ParseSpec(data, "fuzz.spec", formats[int(format)%len(formats)])
		if err != nil {
			var se *SpecError
			if !errors.As(err, &se) {
				t.Fatalf("error is %T, not *SpecError: %v", err, err)
			}
			if msg := err.Error(); strings.ContainsAny(msg, "\n\r") {
				t.Fatalf("error has a line break: %q", msg)
			}
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("accepted spec does not validate: %v", err)
		}
		out, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		s2, err := ParseSpec(out, "roundtrip.json", "json")
		if err != nil {
			t.Fatalf("round trip does not parse: %v\n%s", err, out)
		}
		if a, b := withoutLines(s), withoutLines(s2); !reflect.DeepEqual(a, b) {
			t.Fatalf("round trip differs:\n got %#v\nwant %#v", b, a)
		}
		_ = s.AppTable()
		for _, m := range s.Members() {
			if err := m.Validate(); err != nil {
				t.Fatalf("a member of an accepted spec does not validate: %v", err)
			}
		}
	})
}
