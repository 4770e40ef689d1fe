package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/pgtest"
)

const tablesSpec = "../../examples/orders-with-items/spec.yaml"

func ordersWithItemsDB(t *testing.T) string {
	t.Helper()
	dsn := pgtest.NewDB(t)
	seed, err := os.ReadFile("../../examples/orders-with-items/seed.sql")
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, string(seed))
	pgtest.Exec(t, dsn, "ANALYZE orders; ANALYZE order_items")
	return dsn
}

// TestPlanTablesCommand: plan of the orders-with-items example, as text and
// as JSON: the order, the steps linking the greens, one section per table;
// sync reaches synced, and verify finds every table identical.
func TestPlanTablesCommand(t *testing.T) {
	t.Parallel()
	dsn := ordersWithItemsDB(t)
	code, out, errOut := gsCLI("--dsn", dsn, "plan", "-f", tablesSpec)
	if code != 0 {
		t.Fatalf("plan: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, want := range []string{
		"greenswap plan: orders_bigint — 2 tables, in dependency order (referenced first): public.orders → public.order_items (trigger mode)",
		"Rehearsed in one transaction and rolled back: nothing was changed",
		"\nLinking the greens\n", "1. create-greens (greenswap sync)", "2. add-foreign-keys", "3. validate-foreign-keys",
		`REFERENCES "gs_orders_bigint_green"."orders" ("id") ON DELETE CASCADE NOT VALID`,
		"=== Table 1/2: public.orders → gs_orders_bigint_green.orders",
		"=== Table 2/2: public.order_items → gs_orders_bigint_green.order_items",
		`"gs_orders_bigint_green"."gs_forward_order_items"`,
		"Nothing blocking. Nothing was changed. Next: greenswap sync -f ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan output lacks %q:\n%s", want, out)
		}
	}
	if i, j := strings.Index(out, "=== Table 1/2"), strings.Index(out, "=== Table 2/2"); i < 0 || j < i {
		t.Errorf("sections out of order")
	}

	code, out, errOut = gsCLI("--dsn", dsn, "plan", "-f", tablesSpec, "--json")
	if code != 0 {
		t.Fatalf("plan --json: exit %d\n%s\n%s", code, out, errOut)
	}
	var doc struct {
		Migration string   `json:"migration"`
		Order     []string `json:"order"`
		Steps     []struct {
			Name string   `json:"name"`
			SQL  []string `json:"sql"`
		} `json:"steps"`
		Tables []struct {
			Table string `json:"table"`
			Steps []struct {
				Name string `json:"name"`
			} `json:"steps"`
			Rehearsal struct {
				Done bool `json:"done"`
			} `json:"rehearsal"`
		} `json:"tables"`
		Blocking int `json:"blocking"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("plan --json is not JSON: %v\n%s", err, out)
	}
	if doc.Migration != "orders_bigint" || strings.Join(doc.Order, ",") != "public.orders,public.order_items" ||
		len(doc.Tables) != 2 || doc.Tables[0].Table != "public.orders" || doc.Tables[1].Table != "public.order_items" ||
		!doc.Tables[0].Rehearsal.Done || len(doc.Tables[1].Steps) == 0 || doc.Tables[1].Steps[0].Name != "adopt" ||
		len(doc.Steps) != 4 || doc.Steps[3].Name != "cutover" || doc.Blocking != 0 {
		t.Errorf("plan --json = %+v", doc)
	}

	code, _, errOut = gsCLI("--dsn", dsn, "sync", "-f", tablesSpec)
	if code != 0 {
		t.Fatalf("sync of several tables: exit %d, stderr %s", code, errOut)
	}
	code, out, errOut = gsCLI("--dsn", dsn, "verify", "orders_bigint")
	if code != 0 || !strings.Contains(out, "IDENTICAL: every table's green matches its blue (public.orders, public.order_items)") {
		t.Errorf("verify of several tables: exit %d\nstdout:\n%s\nstderr %s", code, out, errOut)
	}
}

// TestPlanTablesSpecErrors: the several-tables form's spec errors exit 2
// naming file, line and field, before any connection matters.
func TestPlanTablesSpecErrors(t *testing.T) {
	t.Parallel()
	dsn := ordersWithItemsDB(t)
	dir := t.TempDir()
	base, err := os.ReadFile(tablesSpec)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, from, to, want string
	}{
		{"both forms", "mode: trigger\n", "mode: trigger\ntable: public.orders\n", "spec.yaml:6: table: a spec with tables:"},
		{"cycle", "email       text NOT NULL,", "email text NOT NULL, item bigint REFERENCES order_items,",
			"tables[0].target.ddl: the foreign keys among the migrated tables form a cycle: public.orders → public.order_items → public.orders"},
		{"type mismatch", "order_id  bigint NOT NULL", "order_id  int NOT NULL",
			"spec.yaml:17: tables[1].target.ddl: order_items.order_id is integer but the key it references, orders.id, is bigint"},
		{"same name", "table: public.order_items", "table: other.orders", "tables[1].table: \"other.orders\" has the same name as tables[0]"},
	} {
		src := strings.Replace(string(base), tc.from, tc.to, 1)
		if src == string(base) {
			t.Fatalf("%s: edit did not apply", tc.name)
		}
		path := dir + "/" + strings.ReplaceAll(tc.name, " ", "_") + "/spec.yaml"
		if err := os.MkdirAll(dir+"/"+strings.ReplaceAll(tc.name, " ", "_"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, errOut := gsCLI("--dsn", dsn, "plan", "-f", path)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%s: exit %d, stderr %s\nwant exit 2 and %q", tc.name, code, errOut, tc.want)
		}
	}
}
