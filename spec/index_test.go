package spec

import "testing"

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
	}
	for _, c := range cases {
		st, err := ParseIndexStmt(c.in)
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if st.Name != c.name || st.SQL != c.sql {
			t.Errorf("%q: got name %q sql %q; want %q %q", c.in, st.Name, st.SQL, c.name, c.sql)
		}
	}
	for _, bad := range []string{"CREATE TABLE t (a int)", "CREATE INDEX CONCURRENTLY x ON t (a)", "CREATE INDEX IF EXISTS x ON t (a)", "CREATE INDEX x y ON t (a)", ""} {
		if _, err := ParseIndexStmt(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
