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
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
)

// plantedStateSchema is finding 02's attack: greenswap's state schema, to
// the column, made by a role with only CREATE on the database, with a
// trigger on both tables that copies every row greenswap writes and, when
// the writer is a superuser, makes the attacker one.
func plantedStateSchema(attacker string) string {
	return `
CREATE SCHEMA greenswap;
CREATE FUNCTION greenswap.events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'greenswap.events is append-only'; END$$;
CREATE TABLE greenswap.events (id bigserial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp() NOT NULL, migration text NOT NULL, step text NOT NULL,
  actor text DEFAULT CURRENT_USER NOT NULL, client_addr text DEFAULT (inet_client_addr())::text, host text DEFAULT '' NOT NULL, outcome text NOT NULL,
  duration_ms double precision DEFAULT 0 NOT NULL, sql text DEFAULT '' NOT NULL, detail jsonb);
CREATE INDEX events_migration_idx ON greenswap.events (migration, id);
CREATE TRIGGER events_append_only BEFORE DELETE OR UPDATE ON greenswap.events FOR EACH ROW EXECUTE FUNCTION greenswap.events_append_only();
CREATE TABLE greenswap.migrations (name text PRIMARY KEY, app_table text NOT NULL, mode text NOT NULL, spec jsonb NOT NULL, state text NOT NULL,
  phase text DEFAULT '' NOT NULL, cursor jsonb, rows_copied bigint DEFAULT 0 NOT NULL, rows_estimate bigint DEFAULT 0 NOT NULL, batch_size integer DEFAULT 0 NOT NULL,
  rows_per_sec double precision DEFAULT 0 NOT NULL, throttle text DEFAULT '' NOT NULL, paused boolean DEFAULT false NOT NULL,
  backfill_started_at timestamptz, backfill_done_at timestamptz, verified_at timestamptz, verify_ok boolean, slot_name text, confirmed_lsn pg_lsn,
  primary_side text DEFAULT 'blue' NOT NULL, created_at timestamptz DEFAULT now() NOT NULL, updated_at timestamptz DEFAULT now() NOT NULL,
  state_changed_at timestamptz DEFAULT now() NOT NULL, fingerprint jsonb);
CREATE TABLE greenswap.loot (who text, what text);
GRANT USAGE ON SCHEMA greenswap TO PUBLIC;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA greenswap TO PUBLIC;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA greenswap TO PUBLIC;
CREATE FUNCTION greenswap.audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO greenswap.loot VALUES (current_user, TG_TABLE_NAME || ': ' || row_to_json(NEW)::text);
	IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
		EXECUTE 'ALTER ROLE ` + db.Ident(attacker) + ` SUPERUSER';
	END IF;
	RETURN NEW;
EXCEPTION WHEN others THEN RETURN NEW;
END $$;
CREATE TRIGGER zz_audit AFTER INSERT OR UPDATE ON greenswap.events FOR EACH ROW EXECUTE FUNCTION greenswap.audit();
CREATE TRIGGER zz_audit AFTER INSERT OR UPDATE ON greenswap.migrations FOR EACH ROW EXECUTE FUNCTION greenswap.audit();`
}

// TestPlantedStateSchemaRefusedByCommands: finding 02 end to end. plan,
// sync and status, connected as a superuser and as the table's owner,
// refuse the planted schema with exit 2 naming its owner, never suggest
// granting it, and change nothing: the attacker is no superuser, its
// triggers copied nothing, the table is where it was.
func TestPlantedStateSchemaRefusedByCommands(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, wlSchema)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	dbname := strings.TrimPrefix(u.Path, "/")
	attacker, attackerDSN := lpRole(t, dsn, "attacker", "GRANT CREATE ON DATABASE "+db.Ident(dbname)+" TO {role}")
	owner, ownerDSN := lpOwner(t, dsn)
	pgtest.Exec(t, dsn, "ALTER TABLE accounts OWNER TO "+db.Ident(owner))
	pgtest.Exec(t, attackerDSN, plantedStateSchema(attacker))
	spec := parseSpec(t, "name: pss\ntable: public.accounts\n"+
		"target:\n  ddl: CREATE TABLE accounts (id bigint PRIMARY KEY, value bigint NOT NULL, note text)\n")
	before := catalogSnapshot(t, dsn, "public.accounts")

	for _, who := range []struct{ name, dsn string }{{"superuser", dsn}, {"owner", ownerDSN}} {
		env := testEnv(t, who.dsn)
		for _, cmd := range []string{"plan", "sync", "status"} {
			var err error
			switch cmd {
			case "plan":
				_, err = Plan(ctx, env, spec, PlanOptions{})
			case "sync":
				_, err = Sync(ctx, env, spec, SyncOptions{})
			case "status":
				_, err = Status(ctx, env, "")
			}
			// The owner's plan may stop first at its privilege check (it
			// lacks the planted schema's owner's rights): refused either way.
			var ue *state.UntrustedError
			var pe *shadow.PrivilegeError
			if !(errors.As(err, &ue) || errors.As(err, &pe) && who.name == "owner" && cmd == "plan") || exitcode.Of(err) != exitcode.BadInput {
				t.Fatalf("%s as %s: want the state schema refused (exit 2), got exit %d: %v", cmd, who.name, exitcode.Of(err), err)
			}
			if msg := err.Error(); !strings.Contains(msg, attacker) || !strings.Contains(msg, "DROP SCHEMA greenswap CASCADE") || strings.Contains(msg, "GRANT") {
				t.Errorf("%s as %s: want the schema's owner named, the schema to be dropped, and no GRANT suggested: %s", cmd, who.name, msg)
			}
		}
	}
	var isSuper bool
	var loot, rows int
	super := testEnv(t, dsn)
	if err := super.Pool.QueryRow(ctx, `SELECT rolsuper FROM pg_roles WHERE rolname = $1`, attacker).Scan(&isSuper); err != nil {
		t.Fatal(err)
	}
	if err := super.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM greenswap.loot),
		(SELECT count(*) FROM greenswap.migrations) + (SELECT count(*) FROM greenswap.events)`).Scan(&loot, &rows); err != nil {
		t.Fatal(err)
	}
	if isSuper || loot != 0 || rows != 0 {
		t.Fatalf("greenswap used the planted schema: attacker superuser=%v, rows copied=%d, state rows=%d", isSuper, loot, rows)
	}
	if after := catalogSnapshot(t, dsn, "public.accounts"); after != before {
		t.Errorf("a refused command changed the database:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}
