package runner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/sync/stream"
)

// narrowKind is one by-name type narrowing: blue's and green's type, a
// value that fits both, and one that fits only blue (and which an explicit
// CAST would cut to short).
type narrowKind struct {
	name, from, to, fits, long, short, code, msg string
}

var narrowKinds = []narrowKind{
	{"varchar", "varchar(20)", "varchar(5)", "'abc'", "'abcdefgh'", "'abcde'", "22001", "value too long for type character varying(5)"},
	{"char", "char(6)", "char(3)", "'ab'", "'abcdef'", "'abc'", "22001", "value too long for type character(3)"},
	{"varbit", "bit varying(8)", "bit varying(3)", "B'10'", "B'101101'", "B'101'", "22001", "bit string too long for type bit varying(3)"},
	{"bit", "bit(4)", "bit(3)", "", "B'1010'", "B'101'", "22026", "bit string length 4 does not match type bit(3)"},
}

func narrowTable(k narrowKind, long bool) string {
	v := k.fits
	if v == "" {
		v = "NULL" // bit(4) → bit(3): no non-NULL value fits the ALTER
	}
	sql := fmt.Sprintf(`CREATE TABLE items (id int PRIMARY KEY, c %s);
		INSERT INTO items SELECT g, %s FROM generate_series(1, 50) g;`, k.from, v)
	if long {
		sql += fmt.Sprintf("UPDATE items SET c = %s WHERE id = 37;", k.long)
	}
	return sql
}

func narrowSpec(name, mode string, k narrowKind) string {
	return fmt.Sprintf(`
name: %s
table: public.items
mode: %s
target:
  ddl: |
    CREATE TABLE items (id int PRIMARY KEY, c %s)
`, name, mode, k.to)
}

// The copy of a row whose by-name value does not fit the narrower green
// column fails as ALTER TABLE … TYPE would (22001/22026) and names the
// column, the row's key and what to do; green never holds the cut value.
// Before the fix both modes copied the value cut short and succeeded.
func TestNarrowByNameCopyFails(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []string{"trigger", "logical"} {
		for _, k := range narrowKinds {
			t.Run(mode+"/"+k.name, func(t *testing.T) {
				name := logicalName("nc")
				_, dsn := syncNewDB(t)
				pgtest.Exec(t, dsn, narrowTable(k, true))
				env := syncTestEnv(t, dsn)
				sp := syncSpec(t, narrowSpec(name, mode, k))
				_, err := Sync(ctx, env, sp, SyncOptions{})
				if err == nil {
					t.Fatal("sync copied a value that does not fit green's column")
				}
				t.Logf("sync: %v (exit %d)", err, exitcode.Of(err))
				msg := err.Error()
				for _, want := range []string{"forward.c", "(id)=(37)", k.msg, "write forward.c"} {
					if !strings.Contains(msg, want) {
						t.Fatalf("error does not say %q: %v", want, err)
					}
				}
				if strings.Contains(msg, "\n") {
					t.Fatalf("error is not one line: %q", msg)
				}
				if exitcode.Of(err) != exitcode.BadInput {
					t.Fatalf("exit code %d, want %d (bad input: the spec or the data)", exitcode.Of(err), exitcode.BadInput)
				}
				if m, lerr := env.LoadMigration(ctx, name); lerr == nil { // else refused before anything was recorded
					var n int
					q := fmt.Sprintf("SELECT count(*) FROM %s WHERE c = %s", db.Ident(m.Names.Green.Schema, m.Names.Green.Name), k.short)
					if err := env.Pool.QueryRow(ctx, q).Scan(&n); err == nil && n > 0 {
						t.Fatalf("green holds the value cut short (%d rows)", n)
					}
				}
				// Fixing the data makes the migration go on.
				pgtest.Exec(t, dsn, "UPDATE public.items SET c = NULL WHERE id = 37")
				if _, err := Sync(ctx, env, sp, SyncOptions{}); err != nil {
					t.Fatalf("sync after fixing the row: %v", err)
				}
				res, err := Verify(ctx, env, name, VerifyOptions{})
				if err != nil || !res.OK {
					t.Fatalf("verify after the fixed copy: %v %+v", err, res)
				}
			})
		}
	}
}

// An app write of a value too long for green's narrower by-name column,
// made through blue while the migration syncs, never reaches green cut
// short: in trigger mode the write fails as on the ALTER'd table; in
// logical mode the stream's apply fails on it and green keeps no cut value.
// Before the fix green got the value cut short in both modes.
func TestNarrowByNameSyncWriteFails(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []string{"trigger", "logical"} {
		for _, k := range narrowKinds {
			t.Run(mode+"/"+k.name, func(t *testing.T) {
				name := logicalName("nw")
				_, dsn := syncNewDB(t)
				pgtest.Exec(t, dsn, narrowTable(k, false))
				env := syncTestEnv(t, dsn)
				if _, err := Sync(ctx, env, syncSpec(t, narrowSpec(name, mode, k)), SyncOptions{}); err != nil {
					t.Fatal(err)
				}
				m, err := env.LoadMigration(ctx, name)
				if err != nil {
					t.Fatal(err)
				}
				_, werr := env.Pool.Exec(ctx, fmt.Sprintf("INSERT INTO public.items VALUES (1000, %s)", k.long))
				if mode == "trigger" {
					var pe *pgconn.PgError
					if !errors.As(werr, &pe) || pe.Code != k.code {
						t.Fatalf("app write of a too-long value: %v, want SQLSTATE %s", werr, k.code)
					}
				} else {
					if werr != nil {
						t.Fatalf("app write in logical mode: %v", werr)
					}
					lsn, err := stream.CurrentLSN(ctx, env.Pool)
					if err != nil {
						t.Fatal(err)
					}
					stop, _ := startWatch(t, env, name)
					aerr := stream.WaitApplied(ctx, env.Pool, m.Names, lsn, 20*time.Second)
					serr := stop()
					t.Logf("apply: %v; watch: %v", aerr, serr)
					if aerr == nil {
						t.Fatal("the stream applied a value that does not fit green's column")
					}
				}
				var n int
				q := fmt.Sprintf("SELECT count(*) FROM %s WHERE id = 1000", db.Ident(m.Names.Green.Schema, m.Names.Green.Name))
				if err := env.Pool.QueryRow(ctx, q).Scan(&n); err != nil {
					t.Fatal(err)
				}
				if n != 0 {
					t.Fatal("green holds the row with the value cut short")
				}
			})
		}
	}
}

// A green row holding blue's value cut short is a difference verify finds
// (and --repair does not "fix" by cutting it again). Before the fix verify
// compared through the same cutting CAST and reported none.
func TestVerifyDetectsTruncatedRow(t *testing.T) {
	ctx := context.Background()
	for _, k := range narrowKinds {
		if k.fits == "" {
			continue
		}
		t.Run(k.name, func(t *testing.T) {
			name := logicalName("nv")
			_, dsn := syncNewDB(t)
			pgtest.Exec(t, dsn, narrowTable(k, false))
			env := syncTestEnv(t, dsn)
			if _, err := Sync(ctx, env, syncSpec(t, narrowSpec(name, "trigger", k)), SyncOptions{}); err != nil {
				t.Fatal(err)
			}
			m, err := env.LoadMigration(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			// Plant behind the triggers' back: blue's full value, green's cut one.
			pgtest.Exec(t, dsn, fmt.Sprintf(`SET session_replication_role = replica;
				UPDATE %s SET c = %s WHERE id = 7; UPDATE %s SET c = %s WHERE id = 7;`,
				db.Ident(m.Names.Blue.Schema, m.Names.Blue.Name), k.long,
				db.Ident(m.Names.Green.Schema, m.Names.Green.Name), k.short))
			res, err := Verify(ctx, env, name, VerifyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if res.OK || res.Pass.DifferenceCount != 1 {
				t.Fatalf("verify missed the truncated row: %+v", res)
			}
		})
	}
}

// plan warns of every by-name narrowing (kind, column, from and to type),
// and not of a widening; a row of the sample that does not fit is reported
// with its key (exit 2). Before the fix there was no such warning and plan
// passed a row that the copy then cut.
func TestPlanWarnsNarrowingByName(t *testing.T) {
	ctx := context.Background()
	_, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY, v varchar(20), ch char(6), b bit(4), vb bit varying(8), t text, w varchar(5));
		INSERT INTO items VALUES (1, 'abc', 'ab', NULL, B'1', 'x', 'abc');`)
	env := syncTestEnv(t, dsn)
	sp := syncSpec(t, `
name: np
table: public.items
target:
  ddl: |
    CREATE TABLE items (id int PRIMARY KEY, v varchar(5), ch char(3), b bit(3), vb bit varying(3), t varchar(4), w varchar(10))
`)
	res, err := Plan(ctx, env, sp, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h := hazard(res, shadow.HazardNarrowingByName)
	if h == nil || h.Severity != shadow.Warning {
		t.Fatalf("no narrowing warning: %+v", res.Hazards)
	}
	got := strings.Join(h.Objects, "\n")
	for _, want := range []string{
		"varchar v: character varying(20) → character varying(5)",
		"bpchar ch: character(6) → character(3)",
		"bit b: bit(4) → bit(3)",
		"varbit vb: bit varying(8) → bit varying(3)",
		"varchar t: text → character varying(4)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("narrowing objects lack %q: %q", want, h.Objects)
		}
	}
	if strings.Contains(got, " w:") {
		t.Errorf("a widening is reported as narrowing: %q", h.Objects)
	}
	pgtest.Exec(t, dsn, `UPDATE items SET v = 'abcdefgh' WHERE id = 1`)
	_, err = Plan(ctx, env, sp, PlanOptions{})
	if err == nil || exitcode.Of(err) != exitcode.BadInput || !strings.Contains(err.Error(), "(id)=(1)") || !strings.Contains(err.Error(), "forward.v") {
		t.Fatalf("plan of a row that does not fit: %v (exit %d)", err, exitcode.Of(err))
	}
}
