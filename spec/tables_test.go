package spec

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// multiYAML lists order_items before orders, which it references: Members
// must put orders first.
const multiYAML = `name: orders_bigint
mode: trigger
tables:
  - table: public.order_items
    key: [id]
    target:
      ddl: |
        CREATE TABLE order_items (
          id bigint PRIMARY KEY,
          order_id bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
          qty int NOT NULL
        )
    forward:
      order_id: order_id::bigint
    reverse:
      order_id: order_id::int
  - table: public.orders
    target:
      ddl: CREATE TABLE orders (id bigint PRIMARY KEY, note text)
    forward:
      id: id::bigint
sync:
  batch_size: 500
`

func TestTablesDecodeMembers(t *testing.T) {
	t.Parallel()
	s, err := ParseSpec([]byte(multiYAML), "m.yaml", "")
	if err != nil {
		t.Fatal(err)
	}
	if !s.MultiTable() || len(s.Tables) != 2 {
		t.Fatalf("MultiTable %v, %d tables", s.MultiTable(), len(s.Tables))
	}
	ms := s.Members()
	if len(ms) != 2 || ms[0].Table != "public.orders" || ms[1].Table != "public.order_items" {
		t.Fatalf("members not in dependency order: %v", tableNames(ms))
	}
	items := ms[1]
	if items.Name != "orders_bigint" || items.Mode != ModeTrigger || items.Sync.BatchSize != 500 || items.Tables != nil || items.MultiTable() {
		t.Errorf("member does not share name/mode/sync: %+v", items)
	}
	if items.Forward["order_id"] != "order_id::bigint" || len(items.Key) != 1 {
		t.Errorf("member fields: %+v", items)
	}
	for field, want := range map[string]int{"table": 4, "key": 5, "target.ddl": 7, "forward.order_id": 14, "reverse.order_id": 16, "name": 1, "sync.batch_size": 23} {
		if got := items.Line(field); got != want {
			t.Errorf("order_items line of %s = %d, want %d", field, got, want)
		}
	}
	if got := ms[0].Line("forward.id"); got != 21 {
		t.Errorf("orders line of forward.id = %d, want 21", got)
	}
	e := items.Errorf("forward.order_id", "fix it", "bad")
	if e.Field != "tables[0].forward.order_id" || e.Line != 14 {
		t.Errorf("member error names %s at line %d, want tables[0].forward.order_id at 14", e.Field, e.Line)
	}
	if e := items.Errorf("sync.batch_size", "", "bad"); e.Field != "sync.batch_size" {
		t.Errorf("shared field error names %s", e.Field)
	}
	single := exampleSpec()
	if ms := single.Members(); len(ms) != 1 || ms[0] != &single || single.MultiTable() {
		t.Errorf("single-table Members is not []*Spec{s}")
	}
}

func TestTablesBothFormsRejected(t *testing.T) {
	t.Parallel()
	src := strings.Replace(multiYAML, "mode: trigger\n", "mode: trigger\ntable: public.orders\n", 1)
	_, err := ParseSpec([]byte(src), "m.yaml", "")
	if err == nil || !strings.Contains(err.Error(), "m.yaml:3: table: a spec with tables:") {
		t.Fatalf("got %v", err)
	}
}

func tableNames(ms []*Spec) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Table)
	}
	return out
}

func TestTablesForeignKeysParsed(t *testing.T) {
	t.Parallel()
	ddl := `CREATE TABLE items (
  id bigint PRIMARY KEY,
  order_id bigint NOT NULL CONSTRAINT items_order_fk REFERENCES "Shop".orders (id) ON DELETE CASCADE NOT NULL,
  parent bigint REFERENCES items,
  note text DEFAULT 'REFERENCES x',
  CONSTRAINT items_sku_fk FOREIGN KEY (tenant, sku) REFERENCES skus (tenant, sku) MATCH FULL ON UPDATE SET NULL (sku) DEFERRABLE INITIALLY DEFERRED,
  CHECK (id > 0)
)`
	fks := ForeignKeys(ddl)
	if len(fks) != 3 {
		t.Fatalf("got %d foreign keys: %+v", len(fks), fks)
	}
	a, b, c := fks[0], fks[1], fks[2]
	if a.Name != "items_order_fk" || a.Table != (QualifiedName{Schema: "Shop", Name: "orders"}) || a.Columns[0] != "order_id" ||
		a.RefColumns[0] != "id" || a.Options != "ON DELETE CASCADE" {
		t.Errorf("column constraint: %+v", a)
	}
	if b.Table.Name != "items" || b.RefColumns != nil || b.Columns[0] != "parent" {
		t.Errorf("self reference: %+v", b)
	}
	if c.Name != "items_sku_fk" || strings.Join(c.Columns, ",") != "tenant,sku" || c.Options != "MATCH FULL ON UPDATE SET NULL (sku) DEFERRABLE INITIALLY DEFERRED" {
		t.Errorf("table constraint: %+v", c)
	}
	got := WithoutForeignKeys(ddl, fks)
	for _, gone := range []string{"items_order_fk", "REFERENCES items", "items_sku_fk", "MATCH FULL"} {
		if strings.Contains(got, gone) {
			t.Errorf("WithoutForeignKeys left %q:\n%s", gone, got)
		}
	}
	for _, kept := range []string{"order_id bigint NOT NULL", "NOT NULL,\n  parent bigint", "'REFERENCES x'", "CHECK (id > 0)"} {
		if !strings.Contains(strings.ReplaceAll(got, " ,", ","), kept) && !strings.Contains(got, kept) {
			t.Errorf("WithoutForeignKeys lost %q:\n%s", kept, got)
		}
	}
	if _, msg := checkCreateTable(got); msg != "" {
		t.Errorf("the stripped DDL is no longer one CREATE TABLE: %s\n%s", msg, got)
	}
}

// TestTablesSpecErrors: the tables: form's own errors name file, line and
// field; every member check names tables[i].
func TestTablesSpecErrors(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 55)
	for _, tc := range []struct {
		name, from, to, want string
	}{
		{"key beside tables", "mode: trigger\n", "mode: trigger\nkey: [id]\n", "m.yaml:3: key: a spec with tables:"},
		{"one table", "  - table: public.orders\n    target:\n      ddl: CREATE TABLE orders (id bigint PRIMARY KEY, note text)\n    forward:\n      id: id::bigint\n", "",
			"m.yaml:3: tables: lists 1 table"},
		{"duplicate", "table: public.orders", "table: public.order_items", `m.yaml:17: tables[1].table: "public.order_items" is already tables[0]`},
		{"same name in another schema", "table: public.orders", "table: shop.order_items",
			`m.yaml:17: tables[1].table: "shop.order_items" has the same name as tables[0] ("public.order_items"): their blues would both be "gs_orders_bigint_blue.order_items"`},
		{"function names collide", "table: public.orders", "table: public." + long + "a", ""},
		{"member field", "qty int NOT NULL\n        )", "qty int NOT NULL\n        ); SELECT 1", "m.yaml:7: tables[0].target.ddl: more than one statement"},
		{"member key", "key: [id]", "key: [id, id]", "m.yaml:5: tables[0].key[1]: column \"id\" is already key[0]"},
		{"unknown entry field", "    forward:\n      id: id::bigint", "    fwd:\n      id: id::bigint", "m.yaml:20: tables[1].fwd: unknown field (valid fields: table, key, target, forward, reverse)"},
		{"not a list", "tables:\n", "tables: 5\nx:\n", "m.yaml:3: tables: must be a list of tables"},
		{"cycle", "note text)", "note text, i bigint REFERENCES order_items)",
			"m.yaml:7: tables[0].target.ddl: the foreign keys among the migrated tables form a cycle: public.order_items → public.orders → public.order_items"},
	} {
		src := strings.Replace(multiYAML, tc.from, tc.to, 1)
		if tc.name == "function names collide" {
			src = strings.Replace(strings.Replace(multiYAML, "table: public.orders", "table: public."+long+"a", 1),
				"table: public.order_items", "table: public."+long+"b", 1)
			src = strings.Replace(src, "REFERENCES orders", "REFERENCES "+long+"a", 1)
			tc.want = "tables[1].table: the sync functions of"
		}
		if src == multiYAML && tc.from != "" {
			t.Fatalf("%s: edit did not apply", tc.name)
		}
		_, err := ParseSpec([]byte(src), "m.yaml", "")
		var se *SpecError
		if err == nil || !errors.As(err, &se) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want)
		}
	}
}

// TestTablesJSONRoundTrip: a tables: spec survives the JSON the state
// table stores, and a one-table spec's JSON has no tables field.
func TestTablesJSONRoundTrip(t *testing.T) {
	t.Parallel()
	s, err := ParseSpec([]byte(multiYAML), "m.yaml", "")
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseSpec(js, "", "json")
	if err != nil {
		t.Fatalf("stored JSON does not parse: %v\n%s", err, js)
	}
	if a, b := withoutLines(s), withoutLines(back); !reflect.DeepEqual(a, b) {
		t.Errorf("round trip differs:\n got %#v\nwant %#v", b, a)
	}
	var stored Spec
	if err := json.Unmarshal(js, &stored); err != nil || !stored.MultiTable() || stored.Members()[0].Table != "public.orders" {
		t.Errorf("json.Unmarshal of the stored spec: %v, %+v", err, stored)
	}
	one := exampleSpec()
	js, _ = json.Marshal(&one)
	if strings.Contains(string(js), "tables") {
		t.Errorf("one-table JSON changed: %s", js)
	}
}
