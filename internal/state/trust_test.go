package state

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
)

// trustRole creates a LOGIN role unique to the test's database (roles are
// cluster-wide) and returns its name and a DSN connecting as it.
func trustRole(t *testing.T, dsn, prefix string, setup ...string) (string, string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	dbname := strings.TrimPrefix(u.Path, "/")
	role := prefix + "_" + dbname
	pgtest.Exec(t, dsn, "CREATE ROLE "+db.Ident(role)+" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
	t.Cleanup(func() {
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return
		}
		defer conn.Close(ctx)
		_, _ = conn.Exec(ctx, "DROP OWNED BY "+db.Ident(role)+" CASCADE")
		_, _ = conn.Exec(ctx, "DROP ROLE IF EXISTS "+db.Ident(role))
	})
	for _, s := range setup {
		pgtest.Exec(t, dsn, strings.ReplaceAll(strings.ReplaceAll(s, "{role}", db.Ident(role)), "{db}", db.Ident(dbname)))
	}
	u.User = url.User(role)
	return role, u.String()
}

func rolePool(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// plantSQL is what an attacker with CREATE on the database makes before
// greenswap's first run: greenswap's own schema, to the column, plus a
// trigger on each table that copies the row into a table of its own and,
// when the writer is a superuser, makes the attacker one.
func plantSQL(attacker string) string {
	return strings.Join(ddl[1:], ";\n") + `;
CREATE TABLE greenswap.loot (who text, what text);
CREATE FUNCTION greenswap.audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO greenswap.loot VALUES (current_user, row_to_json(NEW)::text);
	IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
		EXECUTE 'ALTER ROLE ` + db.Ident(attacker) + ` SUPERUSER';
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER zz_audit AFTER INSERT OR UPDATE ON greenswap.events FOR EACH ROW EXECUTE FUNCTION greenswap.audit();
CREATE TRIGGER zz_audit AFTER INSERT OR UPDATE ON greenswap.migrations FOR EACH ROW EXECUTE FUNCTION greenswap.audit();
GRANT INSERT ON greenswap.loot TO PUBLIC;`
}

func wantUntrusted(t *testing.T, what string, err error, mention ...string) {
	t.Helper()
	var ue *UntrustedError
	if !errors.As(err, &ue) || exitcode.Of(err) != exitcode.BadInput {
		t.Fatalf("%s: want an *UntrustedError (exit 2), got exit %d: %v", what, exitcode.Of(err), err)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || !strings.Contains(msg, "DROP SCHEMA greenswap CASCADE") || strings.Contains(msg, "GRANT ") {
		t.Errorf("%s: want one line saying to inspect and drop the schema, never to grant a role: %s", what, msg)
	}
	for _, m := range mention {
		if !strings.Contains(msg, m) {
			t.Errorf("%s: error does not name %q: %s", what, m, msg)
		}
	}
}

// TestPlantedStateSchemaRefused: finding 02. A role with only CREATE on
// the database plants the state schema; greenswap, connected as a
// superuser or as an unrelated table owner, refuses it (exit 2, naming the
// owner) before writing anything, so the attacker's triggers never run.
func TestPlantedStateSchemaRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	super, dsn := pgtest.NewPool(t)
	attacker, attackerDSN := trustRole(t, dsn, "attacker", "GRANT CREATE ON DATABASE {db} TO {role}")
	_, ownerDSN := trustRole(t, dsn, "owner", "GRANT CREATE ON DATABASE {db} TO {role}")
	pgtest.Exec(t, attackerDSN, plantSQL(attacker))

	for _, who := range []struct {
		name string
		pool *pgxpool.Pool
	}{{"superuser", super}, {"owner", rolePool(t, ownerDSN)}} {
		wantUntrusted(t, who.name+" Ensure", Ensure(ctx, who.pool), "schema greenswap (owner "+attacker+")")
		_, err := Exists(ctx, who.pool)
		wantUntrusted(t, who.name+" Exists", err, attacker)
		_, err = Get(ctx, who.pool, "m")
		wantUntrusted(t, who.name+" Get", err, attacker)
		_, err = List(ctx, who.pool)
		wantUntrusted(t, who.name+" List", err, attacker)
		wantUntrusted(t, who.name+" Upgrade", Upgrade(ctx, who.pool), attacker)
	}
	var isSuper bool
	var loot, rows int
	if err := super.QueryRow(ctx, `SELECT rolsuper FROM pg_roles WHERE rolname = $1`, attacker).Scan(&isSuper); err != nil {
		t.Fatal(err)
	}
	if err := super.QueryRow(ctx, `SELECT (SELECT count(*) FROM greenswap.loot), (SELECT count(*) FROM greenswap.migrations) + (SELECT count(*) FROM greenswap.events)`).Scan(&loot, &rows); err != nil {
		t.Fatal(err)
	}
	if isSuper || loot != 0 || rows != 0 {
		t.Fatalf("the planted schema was used: attacker superuser=%v, rows copied=%d, state rows=%d", isSuper, loot, rows)
	}
}

// TestStateSchemaTrust: what makes a state schema untrusted, and what
// does not.
func TestStateSchemaTrust(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		// setup runs as the superuser after Ensure made the schema as the
		// superuser; {role} is a role without privileges.
		setup   string
		mention []string // nil: the schema stays trusted
	}{
		{name: "as greenswap made it"},
		{name: "operator grants", setup: `GRANT USAGE ON SCHEMA greenswap TO {role};
			GRANT SELECT, INSERT, UPDATE ON greenswap.migrations TO {role}; GRANT SELECT, INSERT ON greenswap.events TO {role};
			GRANT USAGE ON SEQUENCE greenswap.events_id_seq TO {role}`},
		{name: "an extra trigger of a trusted owner", setup: `CREATE FUNCTION greenswap.t() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
			CREATE TRIGGER x BEFORE INSERT ON greenswap.migrations FOR EACH ROW EXECUTE FUNCTION greenswap.t()`,
			mention: []string{"trigger x on greenswap.migrations", "function greenswap.t()"}},
		{name: "a rule", setup: `CREATE RULE r AS ON INSERT TO greenswap.events DO ALSO NOTIFY x`, mention: []string{"rule r on greenswap.events"}},
		{name: "a policy", setup: `CREATE POLICY p ON greenswap.migrations USING (true); ALTER TABLE greenswap.migrations ENABLE ROW LEVEL SECURITY`,
			mention: []string{"policy p on greenswap.migrations", "row level security"}},
		{name: "a grant to PUBLIC", setup: `GRANT SELECT ON greenswap.events TO PUBLIC`, mention: []string{"grants SELECT to PUBLIC"}},
		{name: "CREATE on the schema for another role", setup: `GRANT CREATE ON SCHEMA greenswap TO {role}`, mention: []string{"grants CREATE to a role you do not trust"}},
		{name: "TRIGGER on a table for another role", setup: `GRANT TRIGGER ON greenswap.events TO {role}`, mention: []string{"grants TRIGGER"}},
		{name: "a table handed to another role", setup: `ALTER TABLE greenswap.events OWNER TO {role}`, mention: []string{"table greenswap.events", "is owned by"}},
		{name: "a function of its own", setup: `CREATE FUNCTION greenswap.f() RETURNS int LANGUAGE sql AS 'SELECT 1'`, mention: []string{"function greenswap.f()"}},
		{name: "a domain", setup: `CREATE DOMAIN greenswap.d AS int`, mention: []string{"type greenswap.d"}},
		{name: "a view", setup: `CREATE VIEW greenswap.v AS SELECT 1`, mention: []string{"view greenswap.v"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool, dsn := pgtest.NewPool(t)
			role, _ := trustRole(t, dsn, "other")
			if err := Ensure(ctx, pool); err != nil {
				t.Fatal(err)
			}
			if tc.setup != "" {
				pgtest.Exec(t, dsn, strings.ReplaceAll(tc.setup, "{role}", db.Ident(role)))
			}
			err := Check(ctx, pool)
			if tc.mention == nil {
				if err != nil {
					t.Fatalf("want the schema trusted, got %v", err)
				}
				if err := Ensure(ctx, pool); err != nil {
					t.Fatalf("Ensure again: %v", err)
				}
				return
			}
			wantUntrusted(t, "Check", err, tc.mention...)
			wantUntrusted(t, "Ensure", Ensure(ctx, pool), tc.mention...)
		})
	}
}

// TestStateSchemaOwnerMembership: a schema made by a role is trusted by
// its members, but not by a superuser, for whom pg_has_role is true of
// every role: its owner's triggers would run as the superuser.
func TestStateSchemaOwnerMembership(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	super, dsn := pgtest.NewPool(t)
	owner, ownerDSN := trustRole(t, dsn, "owner", "GRANT CREATE ON DATABASE {db} TO {role}")
	_, memberDSN := trustRole(t, dsn, "member", "GRANT "+db.Ident("owner_"+strings.TrimPrefix(mustURL(t, dsn).Path, "/"))+" TO {role}")
	if err := Ensure(ctx, rolePool(t, ownerDSN)); err != nil {
		t.Fatalf("the owner makes its state schema: %v", err)
	}
	if _, err := Exists(ctx, rolePool(t, memberDSN)); err != nil {
		t.Fatalf("a member of the owner's role: want trusted, got %v", err)
	}
	_, err := Exists(ctx, super)
	wantUntrusted(t, "superuser", err, "schema greenswap (owner "+owner+")")
}

func mustURL(t *testing.T, dsn string) *url.URL {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
