package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/pgtest"
)

const splitSeed = `
CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL, name text, bio text, avatar_url text,
	prefs jsonb, last_seen_at timestamptz, legacy_col text);
INSERT INTO users (email, name, bio, prefs, last_seen_at)
SELECT 'u' || g || '@x', 'n' || g, 'bio ' || g, jsonb_build_object('g', g), CASE WHEN g % 2 = 0 THEN now() END
  FROM generate_series(1, 2000) g;
ANALYZE users;`

const splitSpecYAML = `name: users_split
table: public.users
split:
  - table: users
    ddl: CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, name text)
  - table: user_profiles
    ddl: CREATE TABLE user_profiles (user_id bigint PRIMARY KEY REFERENCES users ON UPDATE CASCADE ON DELETE CASCADE, bio text, avatar_url text, prefs jsonb)
    forward: {user_id: id}
  - table: user_activity
    ddl: CREATE TABLE user_activity (user_id bigint PRIMARY KEY REFERENCES users ON DELETE CASCADE, last_seen_at timestamptz NOT NULL)
    forward: {user_id: id}
    where: last_seen_at IS NOT NULL
drop: [legacy_col]
`

// TestPlanSplitText: plan of the vertical users split rehearses it and
// prints each green's data flow (which blue rows, which columns from which
// expressions, parents first), the rebuild of blue, the sampled round trip
// and the split's hazards; it changes nothing. A broken green (a forward
// expression that fails on blue's rows) is exit 2 naming split[i].
func TestPlanSplitText(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, splitSeed)
	p := filepath.Join(t.TempDir(), "users_split.yaml")
	if err := os.WriteFile(p, []byte(splitSpecYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := gsCLI("--dsn", dsn, "plan", "-f", p)
	t.Logf("greenswap plan -f users_split.yaml (exit %d):\n%s%s", code, out, errOut)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"split public.users into 3 greens: gs_users_split_green.users, gs_users_split_green.user_profiles, gs_users_split_green.user_activity",
		"1,000 blue rows copied into every green and rebuilt back: 0 in no root green, 0 in several, 0 not equal after the round trip",
		"gs_users_split_green.users ← every blue row (root; key id; 1000 of the sample)",
		"gs_users_split_green.user_profiles ← every blue row (references users; key user_id; 1000 of the sample)",
		"user_id ← id",
		"gs_users_split_green.user_activity ← blue rows where last_seen_at IS NOT NULL (references users; key user_id; 500 of the sample)",
		`bio ← "user_profiles"."bio"`,
		`last_seen_at ← "user_activity"."last_seen_at"`,
		"dropped (blue only): legacy_col",
		"split_old_shape_view", "split_key_update_fk", "split_dropped_columns", "split_rollback_names",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan output lacks %q", want)
		}
	}
	if strings.Contains(out, "split_partitions_unproven") {
		t.Errorf("a vertical split with one root warned about its partitions")
	}
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var schemas int
	var kind string
	if err := conn.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'gs\_%'),
		(SELECT relkind::text FROM pg_class WHERE oid = 'public.users'::regclass)`).Scan(&schemas, &kind); err != nil {
		t.Fatal(err)
	}
	if schemas != 0 || kind != "r" {
		t.Errorf("plan changed the database: %d gs_ schemas, public.users relkind %q", schemas, kind)
	}

	for _, bad := range []struct{ from, to, field string }{
		{"where: last_seen_at IS NOT NULL", "where: name::int > 0", "split[2].where"},
		{"forward: {user_id: id}\n    where", "forward: {user_id: \"id * 0\"}\n    where", "split[2].forward.user_id"},
		{"email text NOT NULL, name text)", "email text NOT NULL, name text CHECK (name = 'x'))", "split[0].ddl"},
	} {
		if err := os.WriteFile(p, []byte(strings.Replace(splitSpecYAML, bad.from, bad.to, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, errOut = gsCLI("--dsn", dsn, "plan", "-f", p)
		if code != 2 || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, bad.field) {
			t.Errorf("%s: exit %d, stderr %q; want exit 2 and one line naming %s", bad.to, code, errOut, bad.field)
		}
	}
	code, _, errOut = gsCLI("--dsn", dsn, "sync", "-f", p)
	if code != 2 || !strings.Contains(errOut, "split[0].ddl") {
		t.Errorf("sync of a split whose green rejects blue's rows: exit %d, stderr %q; want exit 2 from plan's gate", code, errOut)
	}
}
