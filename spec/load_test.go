package spec

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// These tests need no database.

const exampleDDL = `CREATE TABLE orders (
  id          bigint PRIMARY KEY,
  email       text NOT NULL,
  amount      numeric(12,2) NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
)
`

func exampleSpec() Spec {
	return Spec{
		Name:  "orders_v2",
		Table: "public.orders",
		Mode:  ModeTrigger,
		Key:   []string{"id"},
		Target: Target{
			DDL:     exampleDDL,
			Indexes: []string{"CREATE INDEX orders_created_at_idx ON orders (created_at)"},
		},
		Forward: map[string]string{"email": "coalesce(email, 'unknown@invalid')"},
		Reverse: map[string]string{"amount": "round(amount)::int"},
	}
}

func withoutLines(s *Spec) Spec {
	c := *s
	c.File, c.Lines = "", nil
	return c
}

func TestSpecLoadExample(t *testing.T) {
	yamlLines := map[string]int{
		"name": 1, "table": 2, "mode": 3, "key": 4, "key[0]": 4,
		"target": 5, "target.ddl": 6, "target.indexes": 13, "target.indexes[0]": 14,
		"forward": 15, "forward.email": 16, "reverse": 17, "reverse.amount": 18,
	}
	jsonLines := map[string]int{
		"name": 2, "table": 3, "mode": 4, "key": 5, "key[0]": 5,
		"target": 6, "target.ddl": 7, "target.indexes": 8, "target.indexes[0]": 9,
		"forward": 12, "forward.email": 13, "reverse": 15, "reverse.amount": 16,
	}
	for _, tc := range []struct {
		file  string
		lines map[string]int
	}{
		{"orders.yaml", yamlLines},
		{"orders.json", jsonLines},
		{"orders_yaml.spec", yamlLines}, // sniffed
		{"orders_json.spec", jsonLines}, // sniffed
	} {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join("testdata", tc.file)
			s, err := LoadSpecFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := withoutLines(s), exampleSpec(); !reflect.DeepEqual(got, want) {
				t.Errorf("spec:\n got %#v\nwant %#v", got, want)
			}
			if s.File != path {
				t.Errorf("File = %q, want %q", s.File, path)
			}
			if !reflect.DeepEqual(s.Lines, tc.lines) {
				t.Errorf("Lines:\n got %v\nwant %v", s.Lines, tc.lines)
			}
			if got := s.AppTable(); got != (QualifiedName{"public", "orders"}) {
				t.Errorf("AppTable = %v", got)
			}
		})
	}
}

func TestSpecLoadAllOptions(t *testing.T) {
	s, err := LoadSpecFile(filepath.Join("testdata", "sync.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Mode != ModeLogical || !reflect.DeepEqual(s.Key, []string{"tenant_id", "id"}) {
		t.Errorf("mode %q key %v", s.Mode, s.Key)
	}
	want := SyncOptions{
		BatchSize: 5000, MinBatchSize: 500, MaxBatchSize: 20000,
		TargetBatchTime: Duration{250 * time.Millisecond},
		MaxReplicaLag:   Duration{5 * time.Second},
		LockTimeout:     Duration{time.Second},
		NiceRatio:       0.5,
	}
	if s.Sync != want {
		t.Errorf("sync = %+v, want %+v", s.Sync, want)
	}
	if got := s.AppTable(); got != (QualifiedName{"Billing", "Events"}) {
		t.Errorf("AppTable = %v", got)
	}
	for f, l := range map[string]int{"sync": 23, "sync.batch_size": 24, "sync.lock_timeout": 29, "target.indexes[1]": 18} {
		if s.Lines[f] != l {
			t.Errorf("Lines[%q] = %d, want %d", f, s.Lines[f], l)
		}
	}
}

func TestSpecModeDefault(t *testing.T) {
	s, err := ParseSpec([]byte("name: a\ntable: t\ntarget:\n  ddl: CREATE TABLE t (id int)\n"), "a.yaml", "")
	if err != nil {
		t.Fatal(err)
	}
	if s.Mode != ModeTrigger {
		t.Errorf("mode = %q, want trigger", s.Mode)
	}
	if s.Key != nil || s.Forward != nil || s.Reverse != nil || s.Target.Indexes != nil {
		t.Errorf("absent fields not nil: %+v", s)
	}
}

// TestSpecRoundTrip: a parsed spec marshals to JSON and YAML and parses back equal.
func TestSpecRoundTrip(t *testing.T) {
	for _, f := range []string{"orders.yaml", "orders.json", "sync.yaml"} {
		s, err := LoadSpecFile(filepath.Join("testdata", f))
		if err != nil {
			t.Fatal(err)
		}
		j, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		y, err := yaml.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			data   []byte
			format string
		}{{j, "json"}, {y, "yaml"}} {
			s2, err := ParseSpec(c.data, "rt", c.format)
			if err != nil {
				t.Fatalf("%s via %s: %v\n%s", f, c.format, err, c.data)
			}
			if !reflect.DeepEqual(withoutLines(s), withoutLines(s2)) {
				t.Errorf("%s via %s:\n got %#v\nwant %#v", f, c.format, withoutLines(s2), withoutLines(s))
			}
		}
	}
}

func TestSpecAppTable(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want QualifiedName
	}{
		{"public.orders", QualifiedName{"public", "orders"}},
		{"orders", QualifiedName{"public", "orders"}},
		{"Sales.Orders", QualifiedName{"sales", "orders"}},
		{`"My Schema"."Orders"`, QualifiedName{"My Schema", "Orders"}},
		{`"a""b".c`, QualifiedName{`a"b`, "c"}},
		{`  app . "x.y"  `, QualifiedName{"app", "x.y"}},
		{`ÄPfel.t$1`, QualifiedName{"Äpfel", "t$1"}},
	} {
		s := &Spec{Table: tc.in}
		if got := s.AppTable(); got != tc.want {
			t.Errorf("AppTable(%q) = %#v, want %#v", tc.in, got, tc.want)
		}
		if _, msg := parseQualifiedName(tc.in); msg != "" {
			t.Errorf("parseQualifiedName(%q): %s", tc.in, msg)
		}
	}
	for _, bad := range []string{"a.b.c", `"unterminated`, `""`, "1abc", "a.", ".a", "a b", "a;b", strings.Repeat("x", 64)} {
		if _, msg := parseQualifiedName(bad); msg == "" {
			t.Errorf("parseQualifiedName(%q) accepted", bad)
		}
	}
}

func TestDurationCodec(t *testing.T) {
	var d Duration
	if err := json.Unmarshal([]byte(`"200ms"`), &d); err != nil || d.Duration != 200*time.Millisecond {
		t.Errorf("json: %v %v", d, err)
	}
	if err := json.Unmarshal([]byte(`200`), &d); err == nil || !strings.Contains(err.Error(), `"200ms"`) {
		t.Errorf("json int: %v", err)
	}
	if err := yaml.Unmarshal([]byte(`2s`), &d); err != nil || d.Duration != 2*time.Second {
		t.Errorf("yaml: %v %v", d, err)
	}
	if err := yaml.Unmarshal([]byte(`200`), &d); err == nil || !strings.Contains(err.Error(), `"200ms"`) {
		t.Errorf("yaml int: %v", err)
	}
	if b, _ := json.Marshal(Duration{1500 * time.Millisecond}); string(b) != `"1.5s"` {
		t.Errorf("json marshal: %s", b)
	}
	if b, _ := yaml.Marshal(struct{ D Duration }{Duration{2 * time.Second}}); string(b) != "d: 2s\n" {
		t.Errorf("yaml marshal: %q", b)
	}
}

// base is a valid YAML spec; cases below edit it. Line numbers:
//
//	1 name, 2 table, 3 key, 4 target, 5 ddl, 6 indexes, 7 item,
//	8 forward, 9 email, 10 reverse, 11 amount, 12 sync, 13 batch_size
const baseYAML = `name: orders_v2
table: public.orders
key: [id]
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL)
  indexes:
    - CREATE INDEX orders_email_idx ON orders (email)
forward:
  email: coalesce(email, '')
reverse:
  amount: round(amount)::int
sync:
  batch_size: 1000
`

func edit(old, new string) string {
	if !strings.Contains(baseYAML, old) {
		panic("edit: " + old)
	}
	return strings.Replace(baseYAML, old, new, 1)
}

func TestSpecErrors(t *testing.T) {
	if _, err := ParseSpec([]byte(baseYAML), "orders.yaml", ""); err != nil {
		t.Fatalf("base spec: %v", err)
	}
	logical := strings.Replace(edit("batch_size: 1000", "apply_workers: 8"), "key: [id]", "key: [id]\nmode: logical", 1)
	if s, err := ParseSpec([]byte(logical), "orders.yaml", ""); err != nil {
		t.Fatalf("sync.apply_workers in mode: logical: %v", err)
	} else if s.Sync.ApplyWorkers != 8 {
		t.Fatalf("sync.apply_workers: 8 in mode: logical read as %d", s.Sync.ApplyWorkers)
	}
	for _, tc := range []struct {
		name   string
		format string // "" sniffs
		in     string
		want   []string // substrings of the error
	}{
		// strict decoding
		{"unknown top", "", edit("key: [id]", "kye: [id]"), []string{"orders.yaml:3: kye: unknown field (valid fields: name, table, mode, key, alter, target, forward, reverse, sync, guard, tables, split, drop)"}},
		{"unknown nested", "", edit("  indexes:", "  indxes:"), []string{"orders.yaml:6: target.indxes: unknown field (valid fields: ddl, indexes, partitions)"}},
		{"unknown sync", "", edit("  batch_size", "  batchsize"), []string{"orders.yaml:13: sync.batchsize: unknown field", "batch_size"}},
		{"merge key", "", "base: &b {name: x}\n", []string{"orders.yaml:1: base: unknown field"}},
		{"merge key used", "", "<<: {name: x}\n", []string{"orders.yaml:1: <<: unknown field", "merge keys"}},
		{"duplicate column", "", edit("  email: coalesce(email, '')\n", "  email: coalesce(email, '')\n  email: lower(email)\n"), []string{"orders.yaml:10: forward.email: duplicate column (first given on line 9)"}},
		{"duplicate field", "", baseYAML + "name: other\n", []string{"orders.yaml:14: name: duplicate field (first given on line 1)"}},
		{"duplicate nested", "", edit("  batch_size: 1000", "  batch_size: 1000\n  batch_size: 2"), []string{"orders.yaml:14: sync.batch_size: duplicate field"}},
		{"key not list", "", edit("key: [id]", "key: 5"), []string{"orders.yaml:3: key: must be a list of column names, not the number \"5\"", "key: [id]"}},
		{"key scalar string", "", edit("key: [id]", "key: id"), []string{"orders.yaml:3: key: must be a list"}},
		{"key item list", "", edit("key: [id]", "key:\n- [a]"), []string{"orders.yaml:4: key[0]: must be a string, not a list"}},
		{"batch size string", "", edit("batch_size: 1000", `batch_size: "x"`), []string{`orders.yaml:13: sync.batch_size: must be a whole number, not the string "x"`}},
		{"batch size quoted number", "", edit("batch_size: 1000", `batch_size: "1000"`), []string{`orders.yaml:13: sync.batch_size: must be a whole number`}},
		{"batch size float", "", edit("batch_size: 1000", `batch_size: 1.5`), []string{`orders.yaml:13: sync.batch_size: must be a whole number, not the number "1.5"`}},
		{"batch size huge", "", edit("batch_size: 1000", `batch_size: 99999999999999999999`), []string{`orders.yaml:13: sync.batch_size:`}},
		{"duration int", "", edit("batch_size: 1000", "lock_timeout: 200"), []string{`orders.yaml:13: sync.lock_timeout: a duration needs a unit`, `"200ms"`}},
		{"duration bad", "", edit("batch_size: 1000", "lock_timeout: 2 seconds"), []string{`orders.yaml:13: sync.lock_timeout: invalid duration "2 seconds"`, `"2s"`}},
		{"nice ratio string", "", edit("batch_size: 1000", `nice_ratio: "half"`), []string{`orders.yaml:13: sync.nice_ratio: must be a number, not the string "half"`}},
		{"nice ratio negative", "", edit("batch_size: 1000", "nice_ratio: -1"), []string{`orders.yaml:13: sync.nice_ratio: must be between 0 and 20, got -1`}},
		{"nice ratio huge", "", edit("batch_size: 1000", "nice_ratio: 100"), []string{`orders.yaml:13: sync.nice_ratio: must be between 0 and 20, got 100`}},
		{"apply workers in trigger mode", "", edit("batch_size: 1000", "apply_workers: 4"), []string{`sync.apply_workers: applies only to mode: logical, and the mode is trigger`, "remove it, or set mode: logical"}},
		{"apply workers zero", "", strings.Replace(edit("batch_size: 1000", "apply_workers: -1"), "key: [id]", "key: [id]\nmode: logical", 1), []string{`sync.apply_workers: must be between 1 and 32, got -1`}},
		{"apply workers huge", "", strings.Replace(edit("batch_size: 1000", "apply_workers: 33"), "key: [id]", "key: [id]\nmode: logical", 1), []string{`sync.apply_workers: must be between 1 and 32, got 33`}},
		{"nice ratio nan", "", edit("batch_size: 1000", "nice_ratio: .nan"), []string{`orders.yaml:13: sync.nice_ratio: number ".nan" is not finite`}},
		{"ddl list", "", edit("  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL)", "  ddl: [a]"), []string{"orders.yaml:5: target.ddl: must be a string, not a list"}},
		{"target scalar", "", "name: a\ntable: t\ntarget: CREATE TABLE t()\n", []string{"orders.yaml:3: target: must be a mapping"}},
		{"forward list", "", edit("forward:\n  email: coalesce(email, '')", "forward: [email]"), []string{"orders.yaml:8: forward: must be a mapping of column to SQL expression"}},
		{"not a mapping", "", "- a\n- b\n", []string{"orders.yaml:1: the spec must be a mapping"}},
		{"empty", "", "# nothing\n", []string{"orders.yaml: the spec is empty"}},
		{"two documents", "", baseYAML + "---\nname: x\n", []string{"orders.yaml:14:", "second YAML document"}},
		{"yaml syntax", "", edit("table: public.orders", "table: [public.orders"), []string{"orders.yaml:", "invalid YAML"}},
		{"yaml tab", "", "name: a\ntarget:\n\tddl: x\n", []string{"orders.yaml:3: invalid YAML", "tabs"}},
		{"tagged", "", edit("name: orders_v2", "name: !!binary b3JkZXJz"), []string{"orders.yaml:1: name: must be a string"}},
		{"bad utf8", "", edit("table: public.orders", "table: public.\xff"), []string{"orders.yaml:2: the spec is not valid UTF-8"}},
		{"bad format", "toml", baseYAML, []string{`orders.yaml: unknown spec format "toml"`}},

		// Validate
		{"name missing", "", strings.Replace(baseYAML, "name: orders_v2\n", "", 1), []string{"orders.yaml:1: name: required"}},
		{"name bad", "", edit("name: orders_v2", "name: Orders-V2"), []string{`orders.yaml:1: name: invalid migration name "Orders-V2"`, "lowercase", "schema and slot names"}},
		{"name long", "", edit("name: orders_v2", "name: "+strings.Repeat("a", 41)), []string{"orders.yaml:1: name: invalid migration name", "at most 40"}},
		{"table missing", "", edit("table: public.orders", "table:"), []string{"orders.yaml:2: table: required"}},
		{"table bad", "", edit("table: public.orders", "table: a.b.c"), []string{`orders.yaml:2: table: invalid table name "a.b.c"`}},
		{"mode bad", "", edit("key: [id]", "mode: triggers"), []string{`orders.yaml:3: mode: unknown mode "triggers"`, "logical"}},
		{"key empty", "", edit("key: [id]", "key: [id, '']"), []string{"orders.yaml:3: key[1]: empty column name"}},
		{"key null", "", edit("key: [id]", "key: [id, ~]"), []string{"orders.yaml:3: key[1]: empty column name"}},
		{"key dup", "", edit("key: [id]", "key:\n  - id\n  - id"), []string{`orders.yaml:5: key[1]: column "id" is already key[0]`}},
		{"ddl missing", "", edit("  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL)\n", ""), []string{"orders.yaml:4: target.ddl: required"}},
		{"target missing", "", strings.Replace(baseYAML, "target:\n  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL)\n  indexes:\n    - CREATE INDEX orders_email_idx ON orders (email)\n", "", 1), []string{"orders.yaml:1: target.ddl: required"}},
		{"ddl not create table", "", edit("ddl: CREATE TABLE", "ddl: CREATE VIEW"), []string{`orders.yaml:5: target.ddl: must be a CREATE TABLE statement, found "CREATE VIEW"`}},
		{"ddl alter", "", edit("ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL)", "ddl: ALTER TABLE orders ADD x int"), []string{`orders.yaml:5: target.ddl: must be a CREATE TABLE`}},
		{"ddl two statements", "", edit("email text NOT NULL)", "email text NOT NULL); DROP TABLE blue"), []string{`orders.yaml:5: target.ddl: more than one statement: "DROP" follows the ';'`}},
		{"ddl unterminated", "", edit("email text NOT NULL)", "email text NOT NULL DEFAULT 'x)"), []string{`orders.yaml:5: target.ddl: unterminated string literal`}},
		{"index not create index", "", edit("- CREATE INDEX orders_email_idx", "- CREATE TABLE orders_email_idx"), []string{`orders.yaml:7: target.indexes[0]: must be a CREATE INDEX or CREATE UNIQUE INDEX statement`}},
		{"index concurrently", "", edit("- CREATE INDEX orders_email_idx", "- create index concurrently orders_email_idx"), []string{`orders.yaml:7: target.indexes[0]: must not say CONCURRENTLY`, "greenswap builds every index CONCURRENTLY itself"}},
		{"unique index concurrently", "", edit("- CREATE INDEX orders_email_idx", "- CREATE UNIQUE INDEX CONCURRENTLY orders_email_idx"), []string{`orders.yaml:7: target.indexes[0]: must not say CONCURRENTLY`}},
		{"index two statements", "", edit("ON orders (email)", "ON orders (email); CREATE INDEX b ON orders (id)"), []string{`orders.yaml:7: target.indexes[0]: more than one statement`}},
		{"index empty", "", edit("- CREATE INDEX orders_email_idx ON orders (email)", "- ''"), []string{`orders.yaml:7: target.indexes[0]: empty index statement`}},
		{"forward empty", "", edit("email: coalesce(email, '')", "email:"), []string{"orders.yaml:9: forward.email: empty expression"}},
		{"reverse blank", "", edit("amount: round(amount)::int", "amount: '  '"), []string{"orders.yaml:11: reverse.amount: empty expression"}},
		{"forward semicolon", "", edit("email: coalesce(email, '')", "email: lower(email); select 1"), []string{"orders.yaml:9: forward.email: a mapping is one SQL expression"}},
		{"forward parens", "", edit("email: coalesce(email, '')", "email: lower(email))"), []string{"orders.yaml:9: forward.email: unbalanced parentheses"}},
		{"forward comment", "", edit("email: coalesce(email, '')", "email: \"lower(email) -- hi\""), []string{"orders.yaml:9: forward.email:", "comment"}},
		{"forward empty column", "", edit("  email: coalesce", "  '': coalesce"), []string{`orders.yaml:9: forward.: empty column name`}},
		{"batch negative", "", edit("batch_size: 1000", "batch_size: -1"), []string{"orders.yaml:13: sync.batch_size: must not be negative"}},
		{"min > max", "", edit("batch_size: 1000", "min_batch_size: 10\n  max_batch_size: 5"), []string{"orders.yaml:13: sync.min_batch_size: min_batch_size 10 is larger than max_batch_size 5"}},
		{"duration negative", "", edit("batch_size: 1000", "max_replica_lag: -1s"), []string{"orders.yaml:13: sync.max_replica_lag: must not be negative"}},

		// JSON
		{"json unknown", "json", "{\n  \"name\": \"a\",\n  \"table\": \"t\",\n  \"target\": {\"ddl\": \"CREATE TABLE t (id int)\",\n    \"indxes\": []}\n}", []string{"orders.yaml:5: target.indxes: unknown field (valid fields: ddl, indexes, partitions)"}},
		{"json duplicate", "", "{\"name\": \"a\",\n\"name\": \"b\"}", []string{"orders.yaml:2: name: duplicate field (first given on line 1)"}},
		{"json key type", "", "{\"name\": \"a\", \"table\": \"t\",\n \"key\": 5}", []string{"orders.yaml:2: key: must be a list of column names"}},
		{"json batch type", "", "{\"sync\":\n {\"batch_size\": \"x\"}}", []string{"orders.yaml:2: sync.batch_size: must be a whole number"}},
		{"json batch float", "", "{\"sync\":\n {\"batch_size\": 1e3}}", []string{"orders.yaml:2: sync.batch_size: must be a whole number"}},
		{"json duration int", "", "{\"sync\":\n {\"lock_timeout\": 200}}", []string{"orders.yaml:2: sync.lock_timeout: a duration needs a unit", `"200ms"`}},
		{"json syntax", "", "{\n\"name\": \"a\",\n\"table\" \"t\"}", []string{"orders.yaml:3: invalid JSON"}},
		{"json truncated", "", "{\n\"name\": \"a\",\n", []string{"orders.yaml:", "invalid JSON: unexpected end of input"}},
		{"json trailing", "", "{}\n{}", []string{"orders.yaml:2: unexpected text after the JSON object"}},
		{"json tabs", "", "{\n\t\"name\": \"a\",\n\t\"tablex\": \"t\"\n}", []string{"orders.yaml:3: tablex: unknown field"}},
		{"json concurrently", "", "{\"name\": \"a\", \"table\": \"t\", \"target\": {\"ddl\": \"CREATE TABLE t (id int)\",\n \"indexes\": [\n  \"CREATE INDEX CONCURRENTLY ON t (id)\"]}}", []string{"orders.yaml:3: target.indexes[0]: must not say CONCURRENTLY"}},
		{"json deep", "json", strings.Repeat("[", 100000), []string{"orders.yaml:1:", "the JSON is nested too deeply"}},
		{"yaml deep", "", strings.Repeat("[", 100000), []string{"orders.yaml: invalid YAML: exceeded max depth"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSpec([]byte(tc.in), "orders.yaml", tc.format)
			if err == nil {
				t.Fatalf("no error; spec %+v", s)
			}
			var se *SpecError
			if !errors.As(err, &se) {
				t.Errorf("error is %T, not *SpecError", err)
			}
			msg := err.Error()
			if strings.ContainsAny(msg, "\n\r") {
				t.Errorf("error has a line break: %q", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q\n does not contain %q", msg, w)
				}
			}
		})
	}
}

func TestSpecValidSQLScanning(t *testing.T) {
	// Semicolons inside literals, dollar quotes, comments; trailing ';' and comments.
	for _, ddl := range []string{
		"CREATE TABLE t (a text DEFAULT ';')",
		"create table t (a text DEFAULT 'it''s; fine');",
		"CREATE TABLE t (a text DEFAULT E'\\'; x')",
		"CREATE TABLE t (a text CHECK (a <> $x$;$$;$x$));\n-- done\n/* really */  ",
		"/* a /* nested */ comment */ -- line\n CREATE /* x */ TABLE t (\"a;b\" int)",
		"CREATE TABLE t (a$1 int, b text DEFAULT U&'\\0041;')",
	} {
		if msg, _ := checkCreateTable(ddl); msg != "" {
			t.Errorf("checkCreateTable(%q): %s", ddl, msg)
		}
	}
	for _, bad := range []string{
		"CREATE TABLE t (a int); CREATE TABLE u (a int)",
		"CREATE TABLE t (a text DEFAULT $$x)",
		"CREATE TABLE t (a int) /* open",
		"CREATE TEMP TABLE t (a int)",
		"-- only a comment",
	} {
		if msg, _ := checkCreateTable(bad); msg == "" {
			t.Errorf("checkCreateTable(%q) accepted", bad)
		}
	}
	for _, ix := range []string{
		"CREATE INDEX ON t (a)",
		"create unique index if not exists t_a ON t (a) WHERE a <> ';';",
		`CREATE INDEX "concurrently" ON t (a)`,
	} {
		if msg, _ := checkCreateIndex(ix); msg != "" {
			t.Errorf("checkCreateIndex(%q): %s", ix, msg)
		}
	}
	for _, e := range []string{"0", "true", "NULL", "'a;b'", "f(x) /* c */", "$$)$$", `"weird)" + 1`} {
		if msg, _ := checkExpression(e); msg != "" {
			t.Errorf("checkExpression(%q): %s", e, msg)
		}
	}
}

func TestSpecLoadFileErrors(t *testing.T) {
	_, err := LoadSpecFile(filepath.Join("testdata", "nope.yaml"))
	if err == nil || !strings.Contains(err.Error(), "nope.yaml: cannot read the spec file") {
		t.Errorf("missing file: %v", err)
	}
	for file, want := range map[string]string{
		"broken_unknown.yaml":      "broken_unknown.yaml:5: target.indxes: unknown field (valid fields: ddl, indexes, partitions)",
		"broken_concurrently.json": "broken_concurrently.json:6: target.indexes[0]: must not say CONCURRENTLY",
	} {
		_, err := LoadSpecFile(filepath.Join("testdata", file))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", file, err, want)
		}
	}
	// A spec with another extension holding JSON is sniffed as JSON.
	dir := t.TempDir()
	p := filepath.Join(dir, "spec.txt")
	if err := os.WriteFile(p, []byte("  {\"name\": \"a\", \"nam\": 1}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSpecFile(p); err == nil || !strings.Contains(err.Error(), "spec.txt:1: nam: unknown field") {
		t.Errorf("sniffed JSON: %v", err)
	}
}

func TestSpecValidateProgrammatic(t *testing.T) {
	s := exampleSpec()
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	s.Mode = ""
	if err := s.Validate(); err != nil {
		t.Errorf("empty mode: %v", err)
	}
	s.Name = ""
	if err := s.Validate(); err == nil || err.Error() != "spec: name: required (add e.g. name: orders_v2)" {
		t.Errorf("no lines: %v", err)
	}
}

func TestSpecPartitionsAccepted(t *testing.T) {
	s, err := LoadSpecFile(filepath.Join("testdata", "partitioned.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Target.Partitions) != 5 || !strings.HasPrefix(s.Target.Partitions[1], `CREATE TABLE "Events_2025" PARTITION OF events`) {
		t.Errorf("partitions: %q", s.Target.Partitions)
	}
	for f, l := range map[string]int{"target.partitions": 11, "target.partitions[0]": 12, "target.partitions[1]": 13,
		"target.partitions[2]": 16, "target.partitions[4]": 18, "target.indexes[1]": 21} {
		if s.Lines[f] != l {
			t.Errorf("Lines[%q] = %d, want %d", f, s.Lines[f], l)
		}
	}
	j, err := LoadSpecFile(filepath.Join("testdata", "partitioned.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(j.Target.Partitions) != 2 || j.Lines["target.partitions[1]"] != 8 {
		t.Errorf("json: %q, lines %v", j.Target.Partitions, j.Lines)
	}
	// A round trip keeps them.
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := ParseSpec(b, "rt.json", "json")
	if err != nil || !reflect.DeepEqual(withoutLines(s), withoutLines(s2)) {
		t.Errorf("round trip: %v\n%s", err, b)
	}
}

// partYAML is a valid spec with a partitioned target; line numbers:
//
//	1 name, 2 table, 3 target, 4 ddl, 5 partitions, 6 item 0, 7 item 1, 8 indexes, 9 item 0
const partYAML = `name: ev
table: app.events
target:
  ddl: CREATE TABLE events (id bigint, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)
  partitions:
    - CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')
    - CREATE TABLE events_rest PARTITION OF events DEFAULT
  indexes:
    - CREATE INDEX events_at_idx ON events (at)
`

func partEdit(old, new string) string {
	if !strings.Contains(partYAML, old) {
		panic("partEdit: " + old)
	}
	return strings.Replace(partYAML, old, new, 1)
}

func TestSpecPartitionsRefused(t *testing.T) {
	if _, err := ParseSpec([]byte(partYAML), "ev.yaml", ""); err != nil {
		t.Fatalf("base: %v", err)
	}
	p0 := "CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')"
	for _, tc := range []struct {
		name string
		in   string
		want []string
	}{
		{"not partitioned", partEdit(" PARTITION BY RANGE (at)", ""),
			[]string{"ev.yaml:5: target.partitions: target.ddl is not partitioned", "add PARTITION BY"}},
		{"partition by inside parens only", partEdit("PRIMARY KEY (id, at)) PARTITION BY RANGE (at)", "PRIMARY KEY (id, at), \"partition\" int, by int)"),
			[]string{"ev.yaml:5: target.partitions: target.ddl is not partitioned"}},
		{"qualified name", partEdit("TABLE events_2024 PARTITION", "TABLE gs_ev_green.events_2024 PARTITION"),
			[]string{"ev.yaml:6: target.partitions[0]: the partition's name must not name a schema", "green's schema"}},
		{"qualified quoted name", partEdit("TABLE events_rest PARTITION", `TABLE public."events_rest" PARTITION`),
			[]string{"ev.yaml:7: target.partitions[1]: the partition's name must not name a schema"}},
		{"qualified parent", partEdit("PARTITION OF events DEFAULT", "PARTITION OF app.events DEFAULT"),
			[]string{"ev.yaml:7: target.partitions[1]: PARTITION OF must not name a schema"}},
		{"another table", partEdit("PARTITION OF events DEFAULT", "PARTITION OF orders DEFAULT"),
			[]string{`ev.yaml:7: target.partitions[1]: PARTITION OF "orders" names another table than green`, "PARTITION OF events"}},
		{"case matters when quoted", partEdit("PARTITION OF events DEFAULT", `PARTITION OF "Events" DEFAULT`),
			[]string{`ev.yaml:7: target.partitions[1]: PARTITION OF "Events" names another table`}},
		{"later partition as parent", partEdit("- "+p0, "- CREATE TABLE events_x PARTITION OF events_rest DEFAULT"),
			[]string{`ev.yaml:6: target.partitions[0]: PARTITION OF "events_rest" names another table`}},
		{"parent not partitioned", partEdit("PARTITION OF events DEFAULT", "PARTITION OF events_2024 DEFAULT"),
			[]string{`ev.yaml:7: target.partitions[1]: PARTITION OF "events_2024": that partition is not partitioned itself`}},
		{"duplicate", partEdit("TABLE events_rest PARTITION", "TABLE Events_2024 PARTITION"),
			[]string{`ev.yaml:7: target.partitions[1]: partition "events_2024" is already target.partitions[0]`}},
		{"green's name", partEdit("TABLE events_rest PARTITION", "TABLE events PARTITION"),
			[]string{`ev.yaml:7: target.partitions[1]: partition "events" has the name of the green table`}},
		{"not a partition", partEdit("- CREATE TABLE events_rest PARTITION OF events DEFAULT", "- CREATE TABLE events_rest (id bigint)"),
			[]string{`ev.yaml:7: target.partitions[1]: "events_rest" is not a partition: expected PARTITION OF`}},
		{"not create table", partEdit("- CREATE TABLE events_rest PARTITION OF events DEFAULT", "- ALTER TABLE events ATTACH PARTITION x DEFAULT"),
			[]string{`ev.yaml:7: target.partitions[1]: must be a CREATE TABLE ... PARTITION OF statement, found "ALTER TABLE"`}},
		{"unlogged", partEdit("- CREATE TABLE events_rest", "- CREATE UNLOGGED TABLE events_rest"),
			[]string{`ev.yaml:7: target.partitions[1]: must be a CREATE TABLE ... PARTITION OF statement`}},
		{"no bound", partEdit("PARTITION OF events DEFAULT", "PARTITION OF events"),
			[]string{`ev.yaml:7: target.partitions[1]: expected FOR VALUES or DEFAULT after PARTITION OF "events"`}},
		{"two statements", partEdit("PARTITION OF events DEFAULT", "PARTITION OF events DEFAULT; DROP TABLE app.events"),
			[]string{`ev.yaml:7: target.partitions[1]: more than one statement: "DROP" follows the ';'`}},
		{"unterminated", partEdit("TO ('2025-01-01')", "TO ('2025-01-01)"),
			[]string{`ev.yaml:6: target.partitions[0]: unterminated string literal`}},
		{"empty", partEdit("- CREATE TABLE events_rest PARTITION OF events DEFAULT", "- ''"),
			[]string{`ev.yaml:7: target.partitions[1]: empty partition statement`}},
		{"not a list", partEdit("  partitions:\n    - "+p0+"\n    - CREATE TABLE events_rest PARTITION OF events DEFAULT", "  partitions: "+p0),
			[]string{`ev.yaml:5: target.partitions: must be a list of CREATE TABLE ... PARTITION OF statements`}},
		{"unnamed index", partEdit("CREATE INDEX events_at_idx ON events", "CREATE INDEX ON events"),
			[]string{`ev.yaml:9: target.indexes[0]: target.ddl is partitioned: every index needs a name`}},
		{"unnamed unique index", partEdit("CREATE INDEX events_at_idx ON events", "create unique index if not exists on events"),
			[]string{`ev.yaml:9: target.indexes[0]: target.ddl is partitioned: every index needs a name`}},
		{"json qualified", "{\"name\": \"ev\", \"table\": \"events\", \"target\": {\n\"ddl\": \"CREATE TABLE events (id int) PARTITION BY LIST (id)\",\n\"partitions\": [\n\"CREATE TABLE x.p PARTITION OF events DEFAULT\"]}}",
			[]string{`ev.yaml:4: target.partitions[0]: the partition's name must not name a schema`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSpec([]byte(tc.in), "ev.yaml", "")
			if err == nil {
				t.Fatalf("no error; spec %+v", s.Target)
			}
			var se *SpecError
			if !errors.As(err, &se) || se.ExitCode() != 2 {
				t.Errorf("error is %T, not a *SpecError (exit 2)", err)
			}
			msg := err.Error()
			if strings.ContainsAny(msg, "\n\r") {
				t.Errorf("error has a line break: %q", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q\n does not contain %q", msg, w)
				}
			}
		})
	}
	// Unnamed indexes stay fine on a plain target.
	if _, err := ParseSpec([]byte(edit("CREATE INDEX orders_email_idx ON", "CREATE INDEX ON")), "o.yaml", ""); err != nil {
		t.Errorf("unnamed index on a plain target: %v", err)
	}
}
