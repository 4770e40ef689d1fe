package alter

import (
	"errors"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/exitcode"
)

func TestParse(t *testing.T) {
	cases := []struct {
		sql   string
		table string
		kinds []Kind
		check func(t *testing.T, st []Statement)
	}{
		{"ALTER TABLE orders ALTER COLUMN id TYPE bigint, ALTER COLUMN email SET NOT NULL;", "orders",
			[]Kind{AlterType, SetNotNull}, func(t *testing.T, st []Statement) {
				s := st[0].Subs[0]
				if s.Column != "id" || s.TypeName != "bigint" || s.Text != "ALTER COLUMN id TYPE bigint" {
					t.Fatalf("%+v", s)
				}
				if st[0].Subs[1].Text != "ALTER COLUMN email SET NOT NULL" {
					t.Fatalf("%q", st[0].Subs[1].Text)
				}
			}},
		{`alter table if exists only public."Orders" alter "Amount" set data type numeric(12, 2) using "Amount"::numeric / 100`, "public.Orders",
			[]Kind{AlterType}, func(t *testing.T, st []Statement) {
				s := st[0].Subs[0]
				if !st[0].IfExists || !st[0].Only || s.Column != "Amount" || s.TypeName != "numeric(12, 2)" || s.Using != `"Amount"::numeric / 100` {
					t.Fatalf("%+v %+v", st[0], s)
				}
			}},
		{"ALTER TABLE t ADD COLUMN a int DEFAULT 0, ADD b text NOT NULL DEFAULT 'x, y', DROP COLUMN IF EXISTS c CASCADE, DROP d", "t",
			[]Kind{AddColumn, AddColumn, DropColumn, DropColumn}, func(t *testing.T, st []Statement) {
				if s := st[0].Subs[1]; s.Column != "b" || s.TypeName != "text" || s.Text != "ADD b text NOT NULL DEFAULT 'x, y'" {
					t.Fatalf("%+v", s)
				}
				if st[0].Subs[2].Column != "c" || st[0].Subs[3].Column != "d" {
					t.Fatalf("%+v", st[0].Subs)
				}
			}},
		{"ALTER TABLE t ALTER a SET DEFAULT now(), ALTER a DROP DEFAULT, ALTER a DROP NOT NULL", "t",
			[]Kind{SetDefault, DropDefault, DropNotNull}, nil},
		{"ALTER TABLE t ADD CONSTRAINT c1 CHECK (a > 0 AND b IN (1, 2)), ADD FOREIGN KEY (cust) REFERENCES c (id), ADD UNIQUE (a, b), ADD PRIMARY KEY (a), ADD CONSTRAINT pk PRIMARY KEY USING INDEX i", "t",
			[]Kind{AddCheck, AddForeignKey, AddUnique, AddPrimaryKey, AddPrimaryKeyUsingIndex}, func(t *testing.T, st []Statement) {
				if st[0].Subs[0].Constraint != "c1" || st[0].Subs[1].Column != "cust" || st[0].Subs[4].Constraint != "pk" {
					t.Fatalf("%+v", st[0].Subs)
				}
			}},
		{"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS ix ON s.t USING btree (a) WHERE b; CREATE INDEX ON t (lower(a))", "s.t",
			[]Kind{CreateIndex}, func(t *testing.T, st []Statement) {
				s := st[0].Subs[0]
				if !s.Unique || !s.Concurrently || s.Constraint != "ix" || len(st) != 2 || st[1].Subs[0].Constraint != "" || st[1].Table.Name != "t" {
					t.Fatalf("%+v %+v", st, s)
				}
			}},
		{"ALTER TABLE t RENAME COLUMN a TO b; ALTER TABLE t RENAME TO u", "t", []Kind{RenameColumn}, func(t *testing.T, st []Statement) {
			if st[0].Subs[0].NewName != "b" || st[1].Subs[0].Kind != RenameTable || st[1].Subs[0].NewName != "u" {
				t.Fatalf("%+v", st)
			}
		}},
		{"ALTER TABLE t PARTITION BY RANGE (created_at)", "t", []Kind{PartitionBy}, nil},
		{"ALTER TABLE t DROP CONSTRAINT c, VALIDATE CONSTRAINT d, SET (fillfactor = 70), ALTER a SET STATISTICS 100", "t",
			[]Kind{Other, Other, Other, Other}, nil},
		{"-- a comment; with a semicolon\nALTER TABLE t /* , */ ADD COLUMN \"a,b\" text DEFAULT $$;,$$;", "t", []Kind{AddColumn}, func(t *testing.T, st []Statement) {
			if st[0].Subs[0].Column != "a,b" {
				t.Fatalf("%+v", st[0].Subs[0])
			}
		}},
	}
	for _, c := range cases {
		st, err := Parse(c.sql)
		if err != nil {
			t.Fatalf("%s: %v", c.sql, err)
		}
		if st[0].Table.String() != c.table && !(st[0].Table.Schema == "" && st[0].Table.Name == c.table) {
			t.Fatalf("%s: table %v", c.sql, st[0].Table)
		}
		var kinds []Kind
		for _, s := range st[0].Subs {
			kinds = append(kinds, s.Kind)
		}
		if strings.Join(kindStrings(kinds), ",") != strings.Join(kindStrings(c.kinds), ",") {
			t.Fatalf("%s: kinds %v, want %v", c.sql, kinds, c.kinds)
		}
		if c.check != nil {
			c.check(t, st)
		}
	}
}

func kindStrings(k []Kind) []string {
	var out []string
	for _, x := range k {
		out = append(out, string(x))
	}
	return out
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct{ sql, want string }{
		{"", "no statement"},
		{"SELECT 1", "not an ALTER TABLE"},
		{"ALTER TABLE", "expected a table name"},
		{"ALTER TABLE t", "no subcommand"},
		{"ALTER TABLE t ADD COLUMN a int,", "empty subcommand"},
		{"ALTER TABLE t OWNER TO bob", `"OWNER TO bob" is not supported`},
		{"ALTER TABLE t ALTER a ADD GENERATED ALWAYS AS IDENTITY", "not supported"},
		{"ALTER TABLE t SET TABLESPACE x", "not supported"},
		{"ALTER TABLE t ADD EXCLUDE USING gist (a WITH &&)", "EXCLUDE"},
		{"ALTER TABLE t RENAME a TO b, ADD COLUMN c int", "cannot be combined"},
		{"ALTER TABLE t ADD COLUMN a text DEFAULT 'x", "unterminated"},
		{"CREATE INDEX i ON", "expected a table name"},
	} {
		_, err := Parse(c.sql)
		var pe *ParseError
		if !errors.As(err, &pe) || exitcode.Of(err) != exitcode.BadInput || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%q: %v (want %q)", c.sql, err, c.want)
		}
	}
}

// FuzzParse: never panics; an error is one line with exit 2; every
// subcommand's text is a piece of the input.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"ALTER TABLE orders ALTER COLUMN id TYPE bigint, ALTER COLUMN email SET NOT NULL;",
		"CREATE UNIQUE INDEX CONCURRENTLY ix ON s.t (a) WHERE b",
		"ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0) NOT VALID",
		"ALTER TABLE t RENAME COLUMN a TO b",
		"ALTER TABLE t ALTER a TYPE int USING a::int, DROP b",
		"ALTER TABLE \"x\"\"y\".z PARTITION BY LIST (a)",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		st, err := Parse(sql)
		if err != nil {
			if exitcode.Of(err) != exitcode.BadInput || strings.Contains(err.Error(), "\n") {
				t.Fatalf("%q: %v", sql, err)
			}
			return
		}
		for _, s := range st {
			for _, sub := range s.Subs {
				if !strings.Contains(sql, sub.Text) || sub.Text == "" {
					t.Fatalf("%q: subcommand %q", sql, sub.Text)
				}
			}
		}
	})
}
