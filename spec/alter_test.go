package spec

import (
	"strings"
	"testing"
)

// TestSpecAlterField: alter: replaces target and is checked strictly
// without a database.
func TestSpecAlterField(t *testing.T) {
	ok := "name: orders_v2\ntable: public.orders\nalter: ALTER TABLE orders ALTER COLUMN id TYPE bigint; CREATE INDEX ON public.orders (email)\nforward:\n  email: coalesce(email, '')\n"
	s, err := ParseSpec([]byte(ok), "orders.yaml", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(s.Alter, "ALTER TABLE orders") || s.Lines["alter"] != 3 || s.Forward["email"] == "" {
		t.Fatalf("%+v", s)
	}
	for _, c := range []struct{ doc, want string }{
		{"name: a\ntable: orders\nalter: ALTER TABLE orders ADD COLUMN x int\ntarget:\n  ddl: CREATE TABLE orders (id int)\n", "orders.yaml:3: alter: alter and target are both given"},
		{"name: a\ntable: orders\nalter: ALTER TABLE customers ADD COLUMN x int\n", "orders.yaml:3: alter: a statement changes customers, not public.orders"},
		{"name: a\ntable: orders\nalter: ALTER TABLE other.orders ADD COLUMN x int\n", "changes other.orders, not public.orders"},
		{"name: a\ntable: orders\nalter: DROP TABLE orders\n", `"DROP TABLE orders" is not an ALTER TABLE`},
		{"name: a\ntable: orders\nalter: ';'\n", "no statement"},
		{"name: a\ntable: orders\nalter: \"ALTER TABLE orders ADD COLUMN x text DEFAULT 'a\"\n", "unterminated"},
	} {
		_, err := ParseSpec([]byte(c.doc), "orders.yaml", "yaml")
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("%q: %v, want %q", c.doc, err, c.want)
		}
	}
}
