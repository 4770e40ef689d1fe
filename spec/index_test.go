package spec

import (
	"errors"
	"strings"
	"testing"
)

func TestParseIndexStmt(t *testing.T) {
	cases := []struct{ in, name, sql string }{
		{"CREATE INDEX orders_created_at_idx ON orders (created_at)", "orders_created_at_idx",
			"CREATE INDEX CONCURRENTLY orders_created_at_idx ON orders (created_at)"},
		{"create unique index \"Events_Note\" on \"Events\" (note);", "Events_Note",
			"create unique index CONCURRENTLY \"Events_Note\" on \"Events\" (note)"},
		{"create index on \"Events\" (id)", "", "create index CONCURRENTLY on \"Events\" (id)"},
		{"-- a comment\nCREATE /* x /* nested */ */ INDEX IF NOT EXISTS Ix1 ON ONLY t (a) ; \n", "ix1",
			"-- a comment\nCREATE /* x /* nested */ */ INDEX CONCURRENTLY IF NOT EXISTS Ix1 ON ONLY t (a)"},
		{`CREATE INDEX "on" ON t (a)`, "on", `CREATE INDEX CONCURRENTLY "on" ON t (a)`},
		{`CREATE INDEX "a""b" ON t USING gin (a)`, `a"b`, `CREATE INDEX CONCURRENTLY "a""b" ON t USING gin (a)`},
		{"CREATE INDEX i ON s /* c */ . /* d */ t (a) WHERE b <> E'\\';' AND c = $$;$$", "i",
			"CREATE INDEX CONCURRENTLY i ON s /* c */ . /* d */ t (a) WHERE b <> E'\\';' AND c = $$;$$"},
	}
	for _, c := range cases {
		st, err := ParseIndexStmt(c.in)
		if err == nil && c.name == "i" && (len(st.Table) != 2 || st.Table[0] != "s" || st.Table[1] != "t" || st.Tail != "(a) WHERE b <> E'\\';' AND c = $$;$$") {
			t.Errorf("%q: table %q tail %q", c.in, st.Table, st.Tail)
		}
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if st.Name != c.name || st.SQL != c.sql {
			t.Errorf("%q: got name %q sql %q; want %q %q", c.in, st.Name, st.SQL, c.name, c.sql)
		}
	}
	for _, bad := range []string{"CREATE TABLE t (a int)", "CREATE INDEX CONCURRENTLY x ON t (a)", "CREATE INDEX IF EXISTS x ON t (a)", "CREATE INDEX x y ON t (a)", "", "CREATE INDEX x ON t", "CREATE INDEX x ON \"\" (a)", "CREATE INDEX 'x' ON t (a)"} {
		if _, err := ParseIndexStmt(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestIndexStatementsParsedByValidate: the loader reads every
// target.indexes item with ParseIndexStmt, the parser sync builds them
// with, so a statement sync could not build is a spec error at its line
// (exit 2 before anything is touched), and a loaded spec's statements are
// there to read.
func TestIndexStatementsParsedByValidate(t *testing.T) {
	t.Parallel()
	s, err := ParseSpec([]byte(edit("    - CREATE INDEX orders_email_idx ON orders (email)",
		"    - CREATE INDEX orders_email_idx ON orders (email)\n    - create unique index on gs_orders_v2_green.\"orders\" using btree (lower(email)) where email <> ';'")), "orders.yaml", "")
	if err != nil {
		t.Fatal(err)
	}
	sts, err := s.Target.IndexStatements()
	if err != nil || len(sts) != 2 {
		t.Fatalf("IndexStatements: %v %v", sts, err)
	}
	if sts[0].Name != "orders_email_idx" || sts[0].SQL != "CREATE INDEX CONCURRENTLY orders_email_idx ON orders (email)" {
		t.Errorf("first: %+v", sts[0])
	}
	if st := sts[1]; st.Name != "" || !st.Unique || len(st.Table) != 2 || st.Table[1] != "orders" ||
		st.Tail != "using btree (lower(email)) where email <> ';'" {
		t.Errorf("second: %+v", st)
	}
	for _, bad := range []string{
		"CREATE INDEX x y ON orders (email)", // two names
		"CREATE INDEX x ON orders",           // no columns
		"CREATE INDEX x ON",                  // no table
	} {
		_, err := ParseSpec([]byte(edit("CREATE INDEX orders_email_idx ON orders (email)", bad)), "orders.yaml", "")
		var se *SpecError
		if !errors.As(err, &se) || se.Field != "target.indexes[0]" || se.Line != 7 {
			t.Errorf("%q: err = %v, want a spec error at orders.yaml:7 target.indexes[0]", bad, err)
		}
	}
}

// TestIndexOnAnotherTableRefused: sync builds every target.indexes item as
// written and rollback drops only green's schema, so a statement naming
// any table but green (or one of green's partitions) would build an index
// on a live table that outlives the migration. The loader refuses it at
// its line; green's own name, bare or in green's schema, still loads.
func TestIndexOnAnotherTableRefused(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{
		"CREATE INDEX i1 ON other (v)",
		"CREATE INDEX i1 ON public.orders (email)",               // the app name: a view during sync
		"CREATE INDEX i1 ON public.other (v)",                    // another table in the app schema
		"CREATE INDEX i1 ON gs_orders_v2_blue.orders (email)",    // blue
		"CREATE INDEX i1 ON gs_orders_v2_green.other (v)",        // not green
		"CREATE INDEX i1 ON \"Orders\" (email)",                  // quoted: another name
		"CREATE INDEX i1 ON x.gs_orders_v2_green.orders (email)", // not a table name at all
	} {
		_, err := ParseSpec([]byte(edit("CREATE INDEX orders_email_idx ON orders (email)", bad)), "orders.yaml", "")
		var se *SpecError
		if !errors.As(err, &se) || se.Field != "target.indexes[0]" || se.Line != 7 {
			t.Errorf("%q: err = %v, want a spec error at orders.yaml:7 target.indexes[0]", bad, err)
		}
	}
	for _, good := range []string{
		"CREATE INDEX i1 ON orders (email)",
		"CREATE INDEX i1 ON ONLY \"orders\" (email)",
		"CREATE INDEX i1 ON gs_orders_v2_green.orders (email)",
	} {
		if _, err := ParseSpec([]byte(edit("CREATE INDEX orders_email_idx ON orders (email)", good)), "orders.yaml", ""); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
	// A partition of green is green's too (an index of one partition).
	part := `name: ev
table: public.events
key: [id, at]
target:
  ddl: CREATE TABLE events (id bigint, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)
  partitions:
    - CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')
  indexes:
    - CREATE INDEX e24_id ON events_2024 (id)
`
	if _, err := ParseSpec([]byte(part), "ev.yaml", ""); err != nil {
		t.Errorf("index on a partition of green: %v", err)
	}
	if _, err := ParseSpec([]byte(strings.Replace(part, "ON events_2024", "ON events_2025", 1)), "ev.yaml", ""); err == nil {
		t.Errorf("index on a table that is not a partition of green: loaded")
	}
}
