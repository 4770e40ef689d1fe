package runner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/spec"
)

// TestRunAlterNeverMoreLossyThanALTER: for each family of type change
// that goes blue-green, what `run --alter --until synced` stores in green
// is what the plain ALTER stores on a copy of the same rows, or both
// refuse (greenswap's error carries the ALTER's own message). Each family
// has a case the ALTER accepts and, where one exists, a value it refuses:
// an explicit cast would have truncated it (varchar, char, bit, varbit)
// where the ALTER's assignment coercion fails. Once synced, a write
// through the app name that the altered table would refuse fails too
// (the trigger converts the same way).
func TestRunAlterNeverMoreLossyThanALTER(t *testing.T) {
	pool, dsn := syncNewDB(t)
	env := syncTestEnv(t, dsn)
	ctx := context.Background()
	cases := []struct {
		name, from, values, change string
		// write is a value inserted through the app name once synced, with
		// whether the altered copy accepts it ("" : none).
		write string
	}{
		{"vc_ok", "varchar(20)", "'abc'), (2, 'abcde   '), (3, NULL", "TYPE varchar(5)", "'abcdefghij'"},
		{"vc_long", "varchar(20)", "'abc'), (2, 'abcdefghij'", "TYPE varchar(5)", ""},
		{"text_long", "text", "'abcdefghij'", "TYPE varchar(5)", ""},
		{"char_long", "char(20)", "'abcdefghij'", "TYPE char(5)", ""},
		{"char_ok", "char(20)", "'abc'", "TYPE char(5)", "'abcdefgh'"},
		{"bit_long", "bit(8)", "B'10101010'", "TYPE bit(4)", ""},
		{"varbit_long", "varbit(8)", "B'101010'", "TYPE varbit(4)", ""},
		{"varbit_ok", "varbit(8)", "B'101'", "TYPE varbit(4)", "B'11111'"},
		{"num_scale", "numeric(10,4)", "1.23456), (2, 2.00005), (3, -7.5555", "TYPE numeric(10,2)", ""},
		{"num_overflow", "numeric(10,2)", "12345.67", "TYPE numeric(5,2)", ""},
		{"int_ok", "bigint", "1), (2, -2147483648), (3, 2147483647", "TYPE int", "5"},
		{"int_overflow", "bigint", "3000000000", "TYPE int", ""},
		{"using_long", "text", "'abcdefghij'", "TYPE varchar(5) USING c || ''", ""},
		{"using_int", "text", "' 42'), (2, '-7'", "TYPE int USING c::int", ""},
		{"using_int_bad", "text", "'4x2'", "TYPE int USING c::int", ""},
		{"arr_long", "varchar(20)[]", "ARRAY['abcdefghij']::varchar(20)[]", "TYPE varchar(5)[]", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			table := "t_" + tc.name
			rel := db.Ident("public", table)
			copyRel := db.Ident("public", table+"_plain")
			mustExec(t, pool, fmt.Sprintf("CREATE TABLE %s (id int PRIMARY KEY, c %s); INSERT INTO %s VALUES (1, %s);"+
				"CREATE TABLE %s (LIKE %s INCLUDING ALL); INSERT INTO %s SELECT * FROM %s",
				rel, tc.from, rel, tc.values, copyRel, rel, copyRel, rel))
			_, plainErr := pool.Exec(ctx, "ALTER TABLE "+copyRel+" ALTER COLUMN c "+tc.change)
			name := spec.TruncateIdent(table + "_alter")
			res, runErr := RunAlter(ctx, env, "ALTER TABLE "+rel+" ALTER COLUMN c "+tc.change, AlterRunOptions{UntilSynced: true})
			switch {
			case plainErr != nil && runErr != nil:
				var pe *pgconn.PgError
				if !errors.As(plainErr, &pe) {
					t.Fatal(plainErr)
				}
				msg := runErr.Error()
				if !strings.Contains(msg, pe.Message) && !strings.Contains(msg, "alter_length_check_unreproducible") {
					t.Fatalf("both refuse, but for different reasons:\n  ALTER: %v\n  greenswap: %v", plainErr, runErr)
				}
				return
			case plainErr != nil:
				t.Fatalf("the ALTER refuses (%v) but greenswap synced: green holds %v", plainErr, column(t, pool, db.Ident("gs_"+name+"_green", table)))
			case runErr != nil:
				t.Fatalf("the ALTER succeeds (%v) but greenswap refuses: %v", column(t, pool, copyRel), runErr)
			}
			if res.Plan.Order != "blue-green only" {
				t.Fatalf("order %s: the case does not test the blue-green path", res.Plan.Order)
			}
			plain, green := column(t, pool, copyRel), column(t, pool, db.Ident("gs_"+name+"_green", table))
			if plain != green {
				t.Fatalf("the ALTER stores %s, greenswap stores %s", plain, green)
			}
			if tc.write == "" {
				return
			}
			_, plainErr = pool.Exec(ctx, "INSERT INTO "+copyRel+" VALUES (100, "+tc.write+")")
			_, appErr := pool.Exec(ctx, "INSERT INTO "+rel+" VALUES (100, "+tc.write+")")
			if (plainErr == nil) != (appErr == nil) {
				t.Fatalf("a write of %s: on the altered table %v, through greenswap's trigger %v", tc.write, plainErr, appErr)
			}
			if appErr == nil {
				if plain, green := column(t, pool, copyRel), column(t, pool, db.Ident("gs_"+name+"_green", table)); plain != green {
					t.Fatalf("after the write the ALTER has %s, green %s", plain, green)
				}
			}
		})
	}
}

// column is rel's (id, c) rows as text, in id order.
func column(t *testing.T, pool interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, rel string) string {
	t.Helper()
	var s string
	if err := pool.QueryRow(context.Background(), "SELECT coalesce(string_agg(id || '=' || coalesce(c::text, 'NULL') || '/' || pg_column_size(c), ', ' ORDER BY id), '') FROM "+rel).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func mustExec(t *testing.T, pool interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, sql string) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
