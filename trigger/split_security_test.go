package trigger_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/trigger"
)

// TestSplitAttackFunctions: a role that may only read the app name calls
// each of a split's SECURITY DEFINER functions directly and attaches each
// to a temp table (and the view function to a temp view named like the app
// name) of its own, then writes and truncates it. EXECUTE is revoked from
// PUBLIC, so the call and CREATE TRIGGER are refused; with EXECUTE granted
// by mistake, every function's self-check refuses to run (42501) for any
// trigger but its own. Blue and the greens are unchanged.
func TestSplitAttackFunctions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := splitSetup(t, splitUsersTable, splitUsersSpec)
	m.backfill(t)
	m.reverseOn(t)
	// The old-shape view's function, as cutover creates it.
	n0 := m.names[0]
	view := trigger.BlueWriteDirection(m.blue, m.mapping, n0.App)
	m.exec(t, trigger.SplitViewFunctionSQL(n0, m.mapping, view)+`;
		ALTER FUNCTION gs_us_green.gs_forward_view() OWNER TO CURRENT_USER; REVOKE ALL ON FUNCTION gs_us_green.gs_forward_view() FROM PUBLIC`)
	reader := testkit.RoleName(t, m.dsn, "split_reader")
	testkit.CreateRole(t, m.dsn, reader, "GRANT SELECT ON public.users TO {role}", "GRANT USAGE ON SCHEMA gs_us_blue, gs_us_green TO {role}")
	snapshot := func() string {
		var s string
		if err := m.pool.QueryRow(ctx, `SELECT md5(string_agg(t, '|' ORDER BY t)) FROM (
			SELECT 'b' || u::text AS t FROM gs_us_blue.users u UNION ALL SELECT 'u' || g::text FROM gs_us_green.users g
			UNION ALL SELECT 'p' || p::text FROM gs_us_green.user_profiles p UNION ALL SELECT 'a' || a::text FROM gs_us_green.user_activity a) s`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := snapshot()
	blueCols := "id bigint, email text, name text, bio text, avatar_url text, prefs jsonb, last_seen_at timestamptz, legacy_col text"
	fns := []struct {
		fn   string
		kind string // row, statement, view
		cols string
	}{
		{"gs_us_green.gs_forward", "row", blueCols},
		{"gs_us_green.gs_forward_truncate", "statement", blueCols},
		{"gs_us_green.gs_forward_view", "view", blueCols},
		{"gs_us_blue.gs_reverse_users", "row", "id bigint, email text, name text"},
		{"gs_us_blue.gs_reverse_users_truncate", "statement", "id bigint, email text, name text"},
		{"gs_us_blue.gs_reverse_user_profiles", "row", "user_id bigint, bio text, avatar_url text, prefs jsonb"},
		{"gs_us_blue.gs_reverse_user_profiles_truncate", "statement", "user_id bigint, bio text, avatar_url text, prefs jsonb"},
		{"gs_us_blue.gs_reverse_user_activity", "row", "user_id bigint, last_seen_at timestamptz"},
		{"gs_us_blue.gs_reverse_user_activity_truncate", "statement", "user_id bigint, last_seen_at timestamptz"},
	}
	var fnNames []string
	for _, f := range trigger.SplitFunctions(m.names) {
		fnNames = append(fnNames, f.String())
	}
	fnNames = append(fnNames, trigger.SplitViewFunc(n0).String())
	if len(fnNames) != len(fns) {
		t.Fatalf("the split has %d functions (%v), the test attacks %d: attack them all", len(fnNames), fnNames, len(fns))
	}
	if n := testkit.Count(t, m.pool, `SELECT count(*) FROM pg_proc p WHERE p.pronamespace IN ('gs_us_blue'::regnamespace, 'gs_us_green'::regnamespace)
		AND (p.proacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))`); n != 0 {
		t.Fatalf("%d of the split's functions are executable by PUBLIC", n)
	}
	if n := testkit.Count(t, m.pool, `SELECT count(*) FROM pg_proc p WHERE p.pronamespace IN ('gs_us_blue'::regnamespace, 'gs_us_green'::regnamespace) AND prosecdef`); n != int64(len(fns)) {
		t.Fatalf("%d SECURITY DEFINER functions in the version schemas, want %d", n, len(fns))
	}
	attack := func(t *testing.T, c *pgx.Conn, fn, kind, cols string) (call, attach error, fire []error) {
		_, call = c.Exec(ctx, "SELECT "+fn+"()")
		tbl := "victim_" + strings.ReplaceAll(fn, ".", "_")
		first := strings.Fields(cols)[0]
		if _, err := c.Exec(ctx, "CREATE TEMP TABLE "+tbl+" ("+cols+"); INSERT INTO "+tbl+" ("+first+") VALUES (1), (2), (1000)"); err != nil {
			t.Fatal(err)
		}
		rel := tbl
		var trg string
		switch kind {
		case "row":
			trg = "CREATE TRIGGER " + n0.Trigger + " AFTER INSERT OR UPDATE OR DELETE ON " + tbl + " FOR EACH ROW EXECUTE FUNCTION " + fn + "()"
		case "statement":
			trg = "CREATE TRIGGER " + n0.Trigger + "_truncate AFTER TRUNCATE ON " + tbl + " FOR EACH STATEMENT EXECUTE FUNCTION " + fn + "()"
		case "view":
			// A temp view named like the app name, with the view trigger's name.
			rel = "users"
			if _, err := c.Exec(ctx, "CREATE TEMP VIEW users AS SELECT * FROM "+tbl); err != nil {
				t.Fatal(err)
			}
			trg = "CREATE TRIGGER " + trigger.SplitViewTrigger(n0) + " INSTEAD OF INSERT OR UPDATE OR DELETE ON pg_temp.users FOR EACH ROW EXECUTE FUNCTION " + fn + "()"
		}
		if _, attach = c.Exec(ctx, trg); attach != nil {
			return call, attach, nil
		}
		for _, w := range []string{
			"INSERT INTO pg_temp." + rel + " (" + first + ") VALUES (3)",
			"UPDATE pg_temp." + rel + " SET " + first + " = " + first + " + 1",
			"DELETE FROM pg_temp." + rel,
			"TRUNCATE pg_temp." + tbl,
		} {
			_, err := c.Exec(ctx, w)
			fire = append(fire, err)
		}
		return call, nil, fire
	}
	t.Run("no-execute", func(t *testing.T) {
		c := testkit.ConnectAs(t, m.dsn, reader)
		for _, f := range fns {
			call, attach, _ := attack(t, c, f.fn, f.kind, f.cols)
			if pgCode(call) != "42501" {
				t.Errorf("calling %s() as a SELECT-only role: %v, want permission denied (42501)", f.fn, call)
			}
			if pgCode(attach) != "42501" {
				t.Errorf("attaching %s as a SELECT-only role: %v, want permission denied (42501)", f.fn, attach)
			}
		}
	})
	t.Run("execute-granted-by-mistake", func(t *testing.T) {
		for _, f := range fns {
			pgtest.Exec(t, m.dsn, "GRANT EXECUTE ON FUNCTION "+f.fn+"() TO "+pgx.Identifier{reader}.Sanitize())
		}
		c := testkit.ConnectAs(t, m.dsn, reader)
		for _, f := range fns {
			call, attach, fire := attack(t, c, f.fn, f.kind, f.cols)
			if call == nil {
				t.Errorf("a direct call of %s() ran", f.fn)
			}
			if attach != nil {
				t.Fatalf("attach %s with EXECUTE: %v", f.fn, attach)
			}
			for i, err := range fire {
				wantFire := (f.kind != "statement" && i < 3) || (f.kind == "statement" && i == 3)
				if wantFire && (pgCode(err) != "42501" || !strings.Contains(err.Error(), "runs only as trigger")) {
					t.Errorf("%s fired on the attacker's temp relation (statement %d): %v, want the self-check's 42501", f.fn, i, err)
				}
			}
		}
	})
	if after := snapshot(); after != before {
		t.Fatalf("blue or a green changed")
	}
}
