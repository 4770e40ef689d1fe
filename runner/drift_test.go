package runner

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	"github.com/greenswap/greenswap/trigger"
)

const driftSchema = `
CREATE TABLE orders (id bigserial PRIMARY KEY, note text, amount int NOT NULL);
INSERT INTO orders (note, amount) SELECT 'n' || g, g FROM generate_series(1, 200) g;
CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;`

const driftSpec = `
name: dr
table: public.orders
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, note text, amount bigint NOT NULL)
`

// driftCase is a change an app deploy makes during the migration, named
// in the refusal by want; fix undoes or mirrors it (%[1]s is the table
// the view reads at that moment, %[2]s the role of the test).
type driftCase struct {
	name        string
	change, fix string
	want        string
	accept      bool // the fix mirrors the change: verify --accept-drift records it
	// After cutover, when the first change (fixed) cannot be made again.
	change2, fix2, want2 string
}

var driftCases = []driftCase{
	{name: "view add column",
		change: `CREATE OR REPLACE VIEW public.orders AS SELECT id, note, amount, NULL::numeric AS discount FROM %[1]s`,
		fix:    `DROP VIEW public.orders; CREATE VIEW public.orders %[3]s AS SELECT id, note, amount FROM %[1]s`,
		want:   "public.orders (the app view): column discount numeric added"},
	{name: "view rename column", change: `ALTER VIEW public.orders RENAME COLUMN note TO memo`,
		fix: `ALTER VIEW public.orders RENAME COLUMN memo TO note`, want: "public.orders (the app view): column note renamed to memo"},
	{name: "view set default", change: `ALTER VIEW public.orders ALTER COLUMN note SET DEFAULT 'n/a'`,
		fix: `ALTER VIEW public.orders ALTER COLUMN note DROP DEFAULT`, want: "public.orders (the app view): column note default changed from none to 'n/a'::text"},
	{name: "blue add column", change: `ALTER TABLE gs_dr_blue.orders ADD COLUMN memo text`,
		fix: `ALTER TABLE gs_dr_blue.orders DROP COLUMN memo`, want: "gs_dr_blue.orders (blue): column memo text added"},
	{name: "blue drop not null", change: `ALTER TABLE gs_dr_blue.orders ALTER COLUMN amount DROP NOT NULL`,
		fix: `ALTER TABLE gs_dr_blue.orders ALTER COLUMN amount SET NOT NULL`, want: "gs_dr_blue.orders (blue): column amount no longer NOT NULL"},
	{name: "blue add check", change: `ALTER TABLE gs_dr_blue.orders ADD CONSTRAINT amount_pos CHECK (amount > 0)`,
		fix: `ALTER TABLE gs_dr_blue.orders DROP CONSTRAINT amount_pos`, want: "gs_dr_blue.orders (blue): constraint amount_pos added"},
	{name: "green add check", change: `ALTER TABLE gs_dr_green.orders ADD CONSTRAINT note_len CHECK (length(note) < 100)`,
		fix: `ALTER TABLE gs_dr_green.orders DROP CONSTRAINT note_len`, want: "gs_dr_green.orders (green): constraint note_len added"},
	{name: "blue user trigger", change: `CREATE TRIGGER audit BEFORE UPDATE ON gs_dr_blue.orders FOR EACH ROW EXECUTE FUNCTION public.audit_fn()`,
		fix: `DROP TRIGGER audit ON gs_dr_blue.orders`, want: "gs_dr_blue.orders (blue): trigger audit added"},
	{name: "blue policy", change: `CREATE POLICY p ON gs_dr_blue.orders USING (amount > 0)`,
		fix: `DROP POLICY p ON gs_dr_blue.orders`, want: "gs_dr_blue.orders (blue): policy p added"},
	{name: "grant on the app name", change: `GRANT SELECT ON public.orders TO %[2]s`,
		fix: `GRANT SELECT ON gs_dr_blue.orders, gs_dr_green.orders TO %[2]s`, want: "GRANT SELECT ON public.orders TO %[2]s is not on gs_dr_green.orders",
		change2: `GRANT UPDATE ON public.orders TO %[2]s`, fix2: `REVOKE UPDATE ON public.orders FROM %[2]s`,
		want2: "GRANT UPDATE ON public.orders TO %[2]s is not on gs_dr_blue.orders"},
	{name: "revoke on the app name", change: `REVOKE SELECT ON public.orders FROM %[2]s`,
		fix: `REVOKE SELECT ON gs_dr_blue.orders, gs_dr_green.orders FROM %[2]s`, want: "GRANT SELECT ON gs_dr_blue.orders TO %[2]s is not on public.orders",
		change2: `GRANT SELECT ON gs_dr_blue.orders TO %[2]s`, fix2: `REVOKE SELECT ON gs_dr_blue.orders FROM %[2]s`,
		want2: "GRANT SELECT ON gs_dr_blue.orders TO %[2]s is not on public.orders"},
	{name: "default mirrored and accepted",
		change: `ALTER VIEW public.orders ALTER COLUMN note SET DEFAULT 'n/a'`,
		fix: `ALTER TABLE gs_dr_blue.orders ALTER COLUMN note SET DEFAULT 'n/a'; ALTER TABLE gs_dr_green.orders ALTER COLUMN note SET DEFAULT 'n/a';
		      ALTER VIEW public.orders ALTER COLUMN note SET DEFAULT 'n/a'`,
		want: "public.orders (the app view): column note default changed", accept: true,
		change2: `ALTER VIEW public.orders ALTER COLUMN note DROP DEFAULT`, want2: "public.orders (the app view): column note default changed from 'n/a'::text to none"},
}

// TestDriftRefusesCutoverAndFinalize (trap 16, issues 11.5 and 10.4): for
// each change an app deploy may make during the migration, verify, cutover
// and finalize refuse with exit 3 naming it, and nothing is changed (the
// app name reads the same table, blue still exists); rollback goes ahead
// with a warning; once the change is undone or mirrored they proceed. A
// role granted SELECT on the app name alone is shown to be denied through
// it (the view runs as the caller) until the grant is mirrored.
func TestDriftRefusesCutoverAndFinalize(t *testing.T) {
	t.Parallel()
	for _, c := range driftCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			testDriftCase(t, c)
		})
	}
}

func testDriftCase(t *testing.T, c driftCase) {
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	role := "drift_" + cfg.Database // roles are cluster-wide
	pgtest.Exec(t, dsn, driftSchema+`CREATE ROLE `+db.Ident(role)+` LOGIN;`)
	t.Cleanup(func() { coDropRole(dsn, role) })
	if strings.HasPrefix(c.name, "revoke") {
		pgtest.Exec(t, dsn, `GRANT SELECT ON orders TO `+db.Ident(role)) // before sync: on every shape
	}
	env := coEnv(t, dsn)
	spec := coSync(t, env, driftSpec)
	sql := func(s, reads string) string {
		return strings.NewReplacer("%[1]s", reads, "%[2]s", db.Ident(role), "%[3]s", driftViewWith(t)).Replace(s)
	}
	want := strings.ReplaceAll(c.want, "%[2]s", role)
	refused := func(what string, err error) {
		t.Helper()
		var de *DriftError
		if !errors.As(err, &de) || exitcode.Of(err) != exitcode.Blocked {
			t.Fatalf("%s after %q: want a drift refusal (exit 3), got %v", what, c.change, err)
		}
		if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "fix: ") {
			t.Fatalf("%s refusal does not name %q with a fix:\n%v", what, want, err)
		}
	}

	// Synced: the deploy changes something; verify and cutover refuse.
	pgtest.Exec(t, dsn, sql(c.change, "gs_dr_blue.orders"))
	before := coCatalog(t, pool)
	_, err = Verify(ctx, env, spec.Name, VerifyOptions{})
	refused("verify", err)
	_, err = Cutover(ctx, env, spec.Name, CutoverOptions{})
	refused("cutover", err)
	if after := coCatalog(t, pool); after != before {
		t.Fatalf("a refused cutover changed the catalog:\n%s", coDiff(before, after))
	}
	if st := coStr(t, pool, `SELECT state FROM greenswap.migrations WHERE name = 'dr'`); st != "synced" {
		t.Fatalf("state %s after refused cutover", st)
	}
	if def := coStr(t, pool, `SELECT pg_get_viewdef('public.orders'::regclass)`); !strings.Contains(def, "gs_dr_blue.orders") {
		t.Fatalf("the app name no longer reads blue: %s", def)
	}
	if n := coInt(t, pool, `SELECT count(*) FROM greenswap.events WHERE migration = 'dr' AND step = 'cutover' AND outcome = 'drift'`); n != 1 {
		t.Errorf("%d cutover drift events, want 1", n)
	}

	// Why a GRANT on the app name alone is drift: the view runs with the
	// caller's privileges, so the grantee still cannot read through it.
	asRole := func() error {
		rcfg := cfg.Copy()
		rcfg.User = role
		conn, err := pgx.ConnectConfig(ctx, rcfg)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var n int
		return conn.QueryRow(ctx, `SELECT count(*) FROM public.orders`).Scan(&n)
	}
	if c.name == "grant on the app name" && pgtest.ServerMajor(t) >= 15 {
		if err := asRole(); db.SQLState(err) != "42501" {
			t.Fatalf("%s reading through the app name granted alone: %v, want permission denied on blue", role, err)
		}
	}

	// Undone or mirrored: verify (accepting a mirrored change) and cutover proceed.
	pgtest.Exec(t, dsn, sql(c.fix, "gs_dr_blue.orders"))
	if c.name == "grant on the app name" {
		if err := asRole(); err != nil {
			t.Fatalf("%s reading through the app name once the grant is mirrored: %v", role, err)
		}
	}
	if c.accept {
		_, err = Verify(ctx, env, spec.Name, VerifyOptions{})
		refused("verify of a mirrored change before --accept-drift", err)
		if _, err := Verify(ctx, env, spec.Name, VerifyOptions{AcceptDrift: true}); err != nil {
			t.Fatalf("verify --accept-drift: %v", err)
		}
	}
	coVerify(t, env, spec)
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
		t.Fatalf("cutover once the change is fixed: %v", err)
	}

	// Cut over: the same change again; finalize refuses and blue stays.
	if c.change2 != "" {
		c.change, c.fix, want = c.change2, c.fix2, strings.ReplaceAll(c.want2, "%[2]s", role)
	}
	pgtest.Exec(t, dsn, sql(c.change, "gs_dr_green.orders"))
	fin := FinalizeOptions{Force: true, Yes: true}
	_, err = Finalize(ctx, env, spec.Name, fin)
	refused("finalize", err)
	if coInt(t, pool, `SELECT count(*) FROM pg_class WHERE oid = to_regclass('gs_dr_blue.orders')`) != 1 {
		t.Fatal("blue is gone after a refused finalize")
	}
	if st := coStr(t, pool, `SELECT state FROM greenswap.migrations WHERE name = 'dr'`); st != "cut_over" {
		t.Fatalf("state %s after refused finalize", st)
	}
	_, err = Verify(ctx, env, spec.Name, VerifyOptions{})
	refused("verify after cutover", err)

	if c.accept {
		// Rollback, the emergency exit, goes ahead and names the change.
		rb, err := Rollback(ctx, env, spec.Name, SwapCommandOptions{})
		if err != nil {
			t.Fatalf("rollback with drift: %v", err)
		}
		if !strings.Contains(strings.Join(rb.Warnings, "\n"), want) {
			t.Fatalf("rollback does not warn about %q: %v", want, rb.Warnings)
		}
		return
	}
	pgtest.Exec(t, dsn, sql(c.fix, "gs_dr_green.orders"))
	if _, err := Finalize(ctx, env, spec.Name, fin); err != nil {
		t.Fatalf("finalize once the change is fixed: %v", err)
	}
}

// TestDriftBaselineForOlderMigrations: a migration row without a
// fingerprint (made by a greenswap that did not record one) is not
// refused: the next check records the current objects as its baseline,
// and drift after that is caught.
func TestDriftBaselineForOlderMigrations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, driftSchema)
	env := coEnv(t, dsn)
	spec := coSync(t, env, driftSpec)
	coExec(t, pool, `UPDATE greenswap.migrations SET fingerprint = NULL WHERE name = 'dr'`)
	coVerify(t, env, spec)
	if n := coInt(t, pool, `SELECT count(*) FROM greenswap.migrations WHERE name = 'dr' AND fingerprint IS NOT NULL`); n != 1 {
		t.Fatal("verify recorded no baseline for a migration without a fingerprint")
	}
	pgtest.Exec(t, dsn, `ALTER TABLE gs_dr_blue.orders ADD COLUMN memo text`)
	var de *DriftError
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); !errors.As(err, &de) {
		t.Fatalf("cutover after drift on a baselined migration: %v", err)
	}
}

// TestRepairAfterCutoverKeepsGreenWrites (issue 11.1): after cutover green
// is primary. A row written to green alone (a broken path, simulated with
// the sync flag set so no trigger carries it) is repaired into blue, not
// erased; a row only blue has is reported and left alone unless
// DeleteExtra; a row that differs takes green's value.
func TestRepairAfterCutoverKeepsGreenWrites(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, driftSchema)
	env := coEnv(t, dsn)
	s := coSync(t, env, driftSpec)
	if _, err := Cutover(ctx, env, s.Name, CutoverOptions{}); err != nil {
		t.Fatal(err)
	}
	names := shadow.NamesFor("dr", spec.QualifiedName{Schema: "public", Name: "orders"})
	unsynced := func(sql string) {
		t.Helper()
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		fs, fa := trigger.SyncFlagSQL(names)
		coExec(t, tx, fs, fa...)
		coExec(t, tx, sql)
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	unsynced(`INSERT INTO gs_dr_green.orders VALUES (100001, 'only green', 7)`)
	unsynced(`INSERT INTO gs_dr_blue.orders VALUES (100002, 'only blue', 8)`)
	unsynced(`UPDATE gs_dr_green.orders SET note = 'green wins' WHERE id = 5`)

	res, err := Verify(ctx, env, s.Name, VerifyOptions{Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.SourceSide != "green" || res.Repair == nil {
		t.Fatalf("repair after cutover read from %s: %+v", res.SourceSide, res.Repair)
	}
	if n := coInt(t, pool, `SELECT count(*) FROM gs_dr_blue.orders WHERE id = 100001 AND note = 'only green' AND amount = 7`); n != 1 {
		t.Fatal("the row written only to green was not repaired into blue")
	}
	if n := coInt(t, pool, `SELECT count(*) FROM gs_dr_green.orders WHERE id = 100001`); n != 1 {
		t.Fatal("the row written only to green is gone from green")
	}
	if s := coStr(t, pool, `SELECT note FROM gs_dr_blue.orders WHERE id = 5`); s != "green wins" {
		t.Fatalf("blue's row 5 has %q, want green's value", s)
	}
	if res.OK || res.Repair.ExtraLeft != 1 || len(res.Repair.ExtraKeys) != 1 || res.Repair.ExtraKeys[0][0] != "100002" {
		t.Fatalf("the row only blue has is not reported as left: ok=%v %+v", res.OK, res.Repair)
	}
	if n := coInt(t, pool, `SELECT count(*) FROM gs_dr_blue.orders WHERE id = 100002`); n != 1 {
		t.Fatal("the row only blue has was deleted without --delete-extra")
	}
	ev := lastEvent(t, env, "dr")
	if ev.Outcome != "failed" || !strings.Contains(string(ev.Detail), `"extra_left": 1`) {
		t.Fatalf("event: %s %s", ev.Outcome, ev.Detail)
	}

	res, err = Verify(ctx, env, s.Name, VerifyOptions{Repair: true, DeleteExtra: true})
	if err != nil || !res.OK || res.Repair.Deleted != 1 {
		t.Fatalf("repair --delete-extra: %v %+v", err, res.Repair)
	}
	if n := coInt(t, pool, `SELECT count(*) FROM gs_dr_blue.orders WHERE id = 100002`); n != 0 {
		t.Fatal("--delete-extra left the row")
	}
	coVerify(t, env, s)
	// Independent of verify: both sides hold the same rows.
	if n := coInt(t, pool, `SELECT count(*) FROM ((SELECT id, note, amount::bigint FROM gs_dr_blue.orders EXCEPT SELECT * FROM gs_dr_green.orders)
		UNION ALL (SELECT * FROM gs_dr_green.orders EXCEPT SELECT id, note, amount::bigint FROM gs_dr_blue.orders)) d`); n != 0 {
		t.Fatalf("%d rows differ between blue and green after repair", n)
	}
}

// TestDriftSurvivesRollback: rollback goes ahead despite drift, but does
// not make it the new baseline: a column added to blue after cutover is
// still named when cutover is tried again, and once dropped, cutover and
// finalize proceed (the column would otherwise go with blue at finalize).
func TestDriftSurvivesRollback(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, driftSchema)
	env := coEnv(t, dsn)
	spec := coSync(t, env, driftSpec)
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, `ALTER TABLE gs_dr_blue.orders ADD COLUMN memo text`)
	rb, err := Rollback(ctx, env, spec.Name, SwapCommandOptions{})
	if err != nil {
		t.Fatalf("rollback with drift: %v", err)
	}
	const want = "gs_dr_blue.orders (blue): column memo text added"
	if !strings.Contains(strings.Join(rb.Warnings, "\n"), want) {
		t.Fatalf("rollback does not warn about the column: %v", rb.Warnings)
	}
	if n := coInt(t, pool, `SELECT count(*) FROM greenswap.events WHERE migration = 'dr' AND step = 'rollback' AND outcome = 'drift-warning'`); n != 1 {
		t.Errorf("%d rollback drift-warning events, want 1", n)
	}
	var de *DriftError
	_, err = Cutover(ctx, env, spec.Name, CutoverOptions{})
	if !errors.As(err, &de) || !strings.Contains(err.Error(), want) {
		t.Fatalf("cutover after a rollback that went ahead despite drift: %v", err)
	}
	if len(de.Drift) != 1 {
		t.Fatalf("the rollback's own changes read as drift: %v", de.Drift)
	}
	// The swap back builds the view from blue as it is (memo included):
	// undoing it means the view too, then accepting the result.
	pgtest.Exec(t, dsn, `DROP VIEW public.orders;
		CREATE VIEW public.orders `+driftViewWith(t)+` AS SELECT id, note, amount FROM gs_dr_blue.orders;
		ALTER TABLE gs_dr_blue.orders DROP COLUMN memo`)
	if _, err := Verify(ctx, env, spec.Name, VerifyOptions{AcceptDrift: true}); err != nil {
		t.Fatalf("verify --accept-drift once undone: %v", err)
	}
	coVerify(t, env, spec)
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Finalize(ctx, env, spec.Name, FinalizeOptions{Force: true, Yes: true}); err != nil {
		t.Fatal(err)
	}
}

// TestDriftDuringSyncIsNotAbsorbed: a change made while sync runs (here
// between green's creation and the backfill) is not recorded as
// greenswap's by the later sync phases: verify names it once synced.
func TestDriftDuringSyncIsNotAbsorbed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, driftSchema)
	env := coEnv(t, dsn)
	spec := syncSpec(t, driftSpec)
	if _, err := Sync(ctx, env, spec, SyncOptions{StopAfterSetup: true}); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, `ALTER TABLE gs_dr_blue.orders ADD COLUMN memo text; ALTER VIEW public.orders ALTER COLUMN note SET DEFAULT 'x'`)
	st, err := Sync(ctx, env, spec, SyncOptions{})
	if err != nil || st.State != "synced" {
		t.Fatalf("sync: %v", err)
	}
	_, err = Verify(ctx, env, spec.Name, VerifyOptions{})
	var de *DriftError
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "gs_dr_blue.orders (blue): column memo text added") ||
		!strings.Contains(err.Error(), "public.orders (the app view): column note default changed from none to 'x'::text") {
		t.Fatalf("verify after drift during sync: %v", err)
	}
}

// driftViewWith is the WITH clause of the app-name view as greenswap
// creates it for a table without column grants: security_invoker from
// PostgreSQL 15 on, which older servers lack.
func driftViewWith(t *testing.T) string {
	if pgtest.ServerMajor(t) >= 15 {
		return "WITH (security_invoker = true)"
	}
	return ""
}
