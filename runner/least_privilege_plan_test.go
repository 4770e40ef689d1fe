package runner

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/shadow"
)

// Issue 10.5: a role that lacks a privilege plan or sync needs gets exit 2
// from both, with one line naming what it lacks and the GRANT that gives
// it, and the database is exactly as before (catalog snapshot, rows,
// sequences). Each case is a real role connecting with its own DSN.
func TestLeastPrivilegeMissingFailsEarly(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		mode  string
		setup func(t *testing.T, dsn, dbname string) (roleDSN string) // returns the DSN greenswap connects with
		code  string
		want  []string
	}{
		{name: "not the owner", code: shadow.PrivTableOwner,
			setup: func(t *testing.T, dsn, dbname string) string {
				owner, _ := lpOwner(t, dsn)
				pgtest.Exec(t, dsn, "ALTER TABLE accounts OWNER TO "+db.Ident(owner))
				_, rd := lpRole(t, dsn, "ops",
					"GRANT CREATE, TEMPORARY ON DATABASE "+db.Ident(dbname)+" TO {role}",
					"GRANT CREATE ON SCHEMA public TO {role}", "GRANT SELECT ON accounts TO {role}")
				return rd
			},
			want: []string{"the owner of public.accounts", `GRANT "owner_`}},
		{name: "no CREATE on the database", code: shadow.PrivCreateOnDB,
			setup: func(t *testing.T, dsn, dbname string) string {
				owner, rd := lpRole(t, dsn, "owner", "GRANT CREATE ON SCHEMA public TO {role}")
				pgtest.Exec(t, dsn, "ALTER TABLE accounts OWNER TO "+db.Ident(owner))
				return rd
			},
			want: []string{"CREATE on database", "GRANT CREATE ON DATABASE " + `"gs_test_`}},
		{name: "no CREATE on the app schema", code: shadow.PrivCreateOnApp,
			setup: func(t *testing.T, dsn, dbname string) string {
				owner, rd := lpRole(t, dsn, "owner", "GRANT CREATE ON DATABASE "+db.Ident(dbname)+" TO {role}")
				// PostgreSQL ≤ 14 grants CREATE on public to PUBLIC.
				pgtest.Exec(t, dsn, "REVOKE CREATE ON SCHEMA public FROM PUBLIC; ALTER TABLE accounts OWNER TO "+db.Ident(owner))
				return rd
			},
			want: []string{"CREATE on schema public", `GRANT CREATE ON SCHEMA "public" TO "owner_`}},
		{name: "no TEMPORARY on the database", code: shadow.PrivTempOnDB,
			setup: func(t *testing.T, dsn, dbname string) string {
				pgtest.Exec(t, dsn, "REVOKE TEMPORARY ON DATABASE "+db.Ident(dbname)+" FROM PUBLIC")
				owner, rd := lpOwner(t, dsn)
				pgtest.Exec(t, dsn, "ALTER TABLE accounts OWNER TO "+db.Ident(owner))
				return rd
			},
			want: []string{"TEMPORARY on database", "GRANT TEMPORARY ON DATABASE"}},
		{name: "greenswap schema of another owner", code: shadow.PrivStateSchema,
			setup: func(t *testing.T, dsn, dbname string) string {
				// A first migration run by the superuser created it.
				pgtest.Exec(t, dsn, `CREATE SCHEMA greenswap; CREATE TABLE greenswap.migrations (name text PRIMARY KEY)`)
				owner, rd := lpOwner(t, dsn)
				pgtest.Exec(t, dsn, "ALTER TABLE accounts OWNER TO "+db.Ident(owner))
				return rd
			},
			want: []string{"schema greenswap", "connect as postgres", "DROP SCHEMA greenswap CASCADE"}},
		{name: "an operator whose owner role cannot create in the database", code: shadow.PrivOwnerCreateOnDB,
			setup: func(t *testing.T, dsn, dbname string) string {
				owner, _ := lpRole(t, dsn, "owner", "GRANT CREATE ON SCHEMA public TO {role}")
				pgtest.Exec(t, dsn, "ALTER TABLE accounts OWNER TO "+db.Ident(owner))
				_, rd := lpRole(t, dsn, "operator", "GRANT "+db.Ident(owner)+" TO {role}", "GRANT CREATE ON DATABASE "+db.Ident(dbname)+" TO {role}")
				return rd
			},
			want: []string{"for the table's owner", `GRANT CREATE ON DATABASE "gs_test_`}},
		{name: "logical without REPLICATION", code: shadow.PrivReplication, mode: "mode: logical\n",
			setup: func(t *testing.T, dsn, dbname string) string {
				owner, rd := lpOwner(t, dsn)
				pgtest.Exec(t, dsn, "ALTER TABLE accounts OWNER TO "+db.Ident(owner))
				return rd
			},
			want: []string{"REPLICATION attribute", "REPLICATION"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			dsn := pgtest.NewDB(t)
			u, _ := url.Parse(dsn)
			dbname := strings.TrimPrefix(u.Path, "/")
			pgtest.Exec(t, dsn, wlSchema)
			roleDSN := tc.setup(t, dsn, dbname)
			spec := parseSpec(t, "name: lpm\ntable: public.accounts\n"+tc.mode+
				"target:\n  ddl: CREATE TABLE accounts (id bigint PRIMARY KEY, value bigint NOT NULL, note text)\n")
			env := testEnv(t, roleDSN)
			super := testEnv(t, dsn)
			before := catalogSnapshot(t, dsn, "public.accounts") + coCatalog(t, super.Pool)

			for _, cmd := range []string{"plan", "sync"} {
				var err error
				if cmd == "plan" {
					_, err = Plan(ctx, env, spec, PlanOptions{})
				} else {
					_, err = Sync(ctx, env, spec, SyncOptions{})
				}
				var pe *shadow.PrivilegeError
				if !errors.As(err, &pe) || exitcode.Of(err) != exitcode.BadInput {
					t.Fatalf("%s: want a privilege error (exit 2), got exit %d: %v", cmd, exitcode.Of(err), err)
				}
				found := false
				for _, p := range pe.Missing {
					found = found || p.Code == tc.code
				}
				if !found {
					t.Errorf("%s: missing %+v, want %s among them", cmd, pe.Missing, tc.code)
				}
				msg := err.Error()
				if strings.Contains(msg, "\n") {
					t.Errorf("%s: the error is not one line: %q", cmd, msg)
				}
				for _, w := range tc.want {
					if !strings.Contains(msg, w) {
						t.Errorf("%s: error lacks %q: %s", cmd, w, msg)
					}
				}
				if !strings.Contains(msg, "nothing was changed") {
					t.Errorf("%s: error does not say nothing was changed: %s", cmd, msg)
				}
				if after := catalogSnapshot(t, dsn, "public.accounts") + coCatalog(t, super.Pool); after != before {
					t.Fatalf("%s changed the database:\n%s", cmd, coDiff(before, after))
				}
			}
		})
	}
}

// With every privilege, plan lists them all as granted; privileges only
// cutover needs (the owners of a view reading the table and of a table
// referencing it) are a warning in plan, not a refusal.
func TestLeastPrivilegePlanListsPrivileges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, wlSchema)
	owner, ownerDSN := lpOwner(t, dsn)
	other, _ := lpRole(t, dsn, "viewer", "GRANT CREATE ON SCHEMA public TO {role}")
	pgtest.Exec(t, dsn, "ALTER TABLE accounts OWNER TO "+db.Ident(owner)+"; GRANT SELECT ON accounts TO "+db.Ident(other)+
		"; CREATE VIEW accounts_report AS SELECT id, value FROM accounts; ALTER VIEW accounts_report OWNER TO "+db.Ident(other)+
		"; CREATE TABLE payments (id int PRIMARY KEY, account bigint REFERENCES accounts); ALTER TABLE payments OWNER TO "+db.Ident(other))
	spec := parseSpec(t, "name: lpl\ntable: public.accounts\ntarget:\n  ddl: CREATE TABLE accounts (id bigint PRIMARY KEY, value bigint NOT NULL, note text)\n")
	res, err := Plan(ctx, testEnv(t, ownerDSN), spec, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, p := range res.Privileges {
		got[p.Code] = p.Granted
	}
	for _, c := range []string{shadow.PrivTableOwner, shadow.PrivCreateOnDB, shadow.PrivTempOnDB, shadow.PrivCreateOnApp} {
		if g, ok := got[c]; !ok || !g {
			t.Errorf("privilege %s: listed %v, granted %v; want listed and granted (%+v)", c, ok, g, res.Privileges)
		}
	}
	if g, ok := got[shadow.PrivViewOwner]; !ok || g {
		t.Errorf("the view owned by %s: listed %v, granted %v; want listed, not granted", other, ok, g)
	}
	if g, ok := got[shadow.PrivReferencerOwner]; !ok || g {
		t.Errorf("the referencing table owned by %s: listed %v, granted %v; want listed, not granted", other, ok, g)
	}
	h := hazard(res, shadow.HazardMissingPrivileges)
	if h == nil || h.Severity != shadow.Warning || !strings.Contains(strings.Join(h.Objects, " "), "public.accounts_report") ||
		!strings.Contains(strings.Join(h.Objects, " "), "table public.payments") {
		t.Fatalf("missing_privileges hazard = %+v", h)
	}
	if res.Blocking != 0 {
		t.Errorf("blocking hazards: %+v", res.Hazards)
	}
}
