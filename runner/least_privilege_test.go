package runner

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/shadow"
)

// lpRole creates a LOGIN role unique to the test's database (roles are
// cluster-wide), with the extra attributes/grants given as SQL run as the
// superuser, and returns a DSN that connects as it. The role is dropped
// (with what it owns) before the database goes.
func lpRole(t *testing.T, dsn, prefix string, setup ...string) (role, roleDSN string) {
	t.Helper()
	role = testkit.RoleName(t, dsn, prefix)
	testkit.CreateRole(t, dsn, role, setup...)
	return role, testkit.DSNAs(t, dsn, role)
}

// lpOwner is the table owner of the least-privilege tests: not superuser,
// not REPLICATION, with CREATE on the database (the version schemas, the
// greenswap schema) and on the app schema (the app-name view), as a managed
// PostgreSQL's application owner typically is, and pg_read_all_stats
// (finalize's usage check must see other roles' sessions).
func lpOwner(t *testing.T, dsn string) (string, string) {
	t.Helper()
	u, _ := url.Parse(dsn)
	return lpRole(t, dsn, "owner",
		"GRANT CREATE ON DATABASE "+db.Ident(strings.TrimPrefix(u.Path, "/"))+" TO {role}",
		"GRANT CREATE ON SCHEMA public TO {role}", "GRANT pg_read_all_stats TO {role}")
}

// TestLeastPrivilegeTriggerLifecycle runs the whole trigger-mode lifecycle
// connected as the table's owner, who is no superuser and has no
// REPLICATION: plan → sync → verify → cutover → rollback → cutover →
// finalize, while clients (an application role with DML rights only, through the app name and both
// version schemas) write the table and a ledger in the same transactions.
// The ledger, read by an independent query, must equal the table at every
// phase.
func TestLeastPrivilegeTriggerLifecycle(t *testing.T) {
	t.Parallel()
	t.Run("as the owner", func(t *testing.T) { t.Parallel(); lpLifecycle(t, false, false) })
	// An operator role that was granted the owner's role, as the owner
	// role itself often cannot log in: the objects greenswap creates are
	// then owned by the operator.
	t.Run("as a member of the owner role", func(t *testing.T) { t.Parallel(); lpLifecycle(t, true, false) })
}

// TestLeastPrivilegeLogicalLifecycle is the same lifecycle in logical mode,
// as the owner with the REPLICATION attribute and no superuser.
func TestLeastPrivilegeLogicalLifecycle(t *testing.T) {
	t.Parallel()
	lpLifecycle(t, false, true)
}

func lpLifecycle(t *testing.T, member, logical bool) {
	ctx := context.Background()
	_, dsn := pgtest.NewPool(t)
	owner, ownerDSN := lpOwner(t, dsn)
	// Replication slots are cluster-wide: the logical run's slot gs_<name>
	// must not look like a leftover to the trigger runs.
	name, mode := "lp", ""
	if logical {
		name = "lplog"
		pgtest.Exec(t, dsn, "ALTER ROLE "+db.Ident(owner)+" REPLICATION")
		mode = "mode: logical\n"
	}
	if member {
		var op string
		op, ownerDSN = lpRole(t, dsn, "operator", "GRANT "+db.Ident(owner)+" TO {role}")
		t.Logf("greenswap connects as %s, a member of %s", op, owner)
	}
	pgtest.Exec(t, dsn, wlSchema)
	pgtest.Exec(t, dsn, fmt.Sprintf(`ALTER TABLE accounts OWNER TO %[1]s; ALTER TABLE ledger OWNER TO %[1]s`, db.Ident(owner)))
	// The clients are a separate application role with DML rights only,
	// as in production: what they can do must not change across the shapes.
	_, appDSN := lpRole(t, dsn, "app",
		"GRANT SELECT, INSERT, UPDATE, DELETE ON accounts, ledger TO {role}",
		"GRANT USAGE ON SEQUENCE accounts_id_seq, ledger_seq_seq TO {role}")
	var super bool
	env := coEnv(t, ownerDSN)
	if err := env.Pool.QueryRow(ctx, `SELECT rolsuper OR (rolreplication AND NOT $1) OR rolcreatedb FROM pg_roles WHERE rolname = current_user`, logical).Scan(&super); err != nil || super {
		t.Fatalf("the test must connect as a plain role: super/replication=%v err=%v", super, err)
	}

	spec := parseSpec(t, `
name: `+name+`
table: public.accounts
`+mode+`target:
  ddl: CREATE TABLE accounts (id bigint PRIMARY KEY, value bigint NOT NULL CHECK (value >= 0), note text)
  indexes:
    - CREATE INDEX accounts_value_idx ON accounts (value)
`)
	res, err := Plan(ctx, env, spec, PlanOptions{})
	if err != nil {
		t.Fatalf("plan as %s: %v", owner, err)
	}
	if res.Blocking != 0 {
		t.Fatalf("plan as the owner found blocking hazards: %+v", res.Hazards)
	}

	w := &workloadRun{t: t, dsn: appDSN, stops: map[*wlClient]context.CancelFunc{}}
	simple, prepared := pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement
	w.start("app-simple", "app", simple, "")
	defer func() {
		for _, c := range w.clients {
			w.stop(c)
		}
		w.wg.Wait()
	}()

	st, err := Sync(ctx, env, spec, SyncOptions{})
	if err != nil {
		t.Fatalf("sync as %s: %v", owner, err)
	}
	if st.State != state.Synced {
		t.Fatalf("sync ended in %s", st.State)
	}
	coVerify(t, env, spec)
	blueP := w.start("blue-prepared", "blue", prepared, "gs_"+name)
	w.start("green-simple", "green", simple, "gs_"+name)
	run := func() { time.Sleep(300 * time.Millisecond) }
	consistent := func(phase string, shapes bool) {
		t.Helper()
		tables := map[string]string{"app": `SELECT id, value::bigint FROM public.accounts`}
		if shapes {
			tables["blue"] = `SELECT id, value::bigint FROM gs_` + name + `_blue.accounts`
			tables["green"] = `SELECT id, value::bigint FROM gs_` + name + `_green.accounts`
		}
		// The oracle reads as the superuser: it must not depend on what
		// greenswap granted.
		for k, d := range ledgerDiff(t, dsn, tables) {
			if d != 0 {
				t.Errorf("%s: %s differs from the ledger in %d rows", phase, k, d)
			}
		}
	}
	out := &coBuffer{}
	opts := SwapCommandOptions{Out: out, LockTimeout: 500 * time.Millisecond, MaxAttempts: 40}
	run()
	if logical {
		// The stream applies blue's writes to green after they commit, so
		// under a running workload green is never equal to the ledger at one
		// snapshot; cutover drains the slot and hands over to the triggers,
		// after which every shape must match it.
		for k, d := range ledgerDiff(t, dsn, map[string]string{"app": `SELECT id, value::bigint FROM public.accounts`,
			"blue": `SELECT id, value::bigint FROM gs_` + name + `_blue.accounts`}) {
			if d != 0 {
				t.Errorf("synced: %s differs from the ledger in %d rows", k, d)
			}
		}
	} else {
		consistent("synced", true)
	}
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{SwapCommandOptions: opts}); err != nil {
		t.Fatalf("cutover as %s: %v\n%s", owner, err, out)
	}
	run()
	consistent("cut over", true)
	if _, err := Rollback(ctx, env, spec.Name, opts); err != nil {
		t.Fatalf("rollback as %s: %v\n%s", owner, err, out)
	}
	run()
	consistent("rolled back", true)
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{SwapCommandOptions: opts}); err != nil {
		t.Fatalf("cutover again as %s: %v\n%s", owner, err, out)
	}
	run()
	consistent("cut over again", true)
	w.stop(blueP)
	time.Sleep(1200 * time.Millisecond)
	if _, err := Finalize(ctx, env, spec.Name, FinalizeOptions{SwapCommandOptions: opts, QuietPeriod: time.Second,
		SampleEvery: 100 * time.Millisecond, Yes: true}); err != nil {
		t.Fatalf("finalize as %s: %v\n%s", owner, err, out)
	}
	run()
	for _, c := range w.clients {
		w.stop(c)
	}
	w.wg.Wait()
	consistent("finalized", false)
	for _, c := range w.clients {
		if c.ops < 10 {
			t.Errorf("%s ran only %d transactions", c.name, c.ops)
		}
		for _, err := range c.errs {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	if got := coStr(t, env.Pool, `SELECT pg_get_userbyid(relowner)::text || ' ' || relkind::text FROM pg_class WHERE oid = 'public.accounts'::regclass`); got != owner+" r" {
		t.Errorf("after finalize public.accounts is %q, want a table owned by %s", got, owner)
	}
}

// Cutover, rollback and finalize check the privileges they need before
// anything: an owner that lost CREATE on the app schema after sync gets
// exit 2 naming the GRANT, and the catalog is as it was.
func TestLeastPrivilegeCutoverChecksFirst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, dsn := pgtest.NewPool(t)
	owner, ownerDSN := lpOwner(t, dsn)
	pgtest.Exec(t, dsn, wlSchema)
	pgtest.Exec(t, dsn, fmt.Sprintf(`ALTER TABLE accounts OWNER TO %[1]s; ALTER TABLE ledger OWNER TO %[1]s`, db.Ident(owner)))
	env := coEnv(t, ownerDSN)
	spec := coSync(t, env, `
name: lpc
table: public.accounts
target:
  ddl: CREATE TABLE accounts (id bigint PRIMARY KEY, value bigint NOT NULL, note text)
`)
	pgtest.Exec(t, dsn, "REVOKE CREATE ON SCHEMA public FROM PUBLIC, "+db.Ident(owner)) // PUBLIC: PostgreSQL ≤ 14's default
	super := coEnv(t, dsn)
	before := coCatalog(t, super.Pool)
	out := &coBuffer{}
	opts := SwapCommandOptions{Out: out, LockTimeout: 500 * time.Millisecond, MaxAttempts: 5}
	_, err := Cutover(ctx, env, spec.Name, CutoverOptions{SwapCommandOptions: opts})
	var pe *shadow.PrivilegeError
	if !errors.As(err, &pe) || exitcode.Of(err) != exitcode.BadInput || !strings.Contains(err.Error(), `GRANT CREATE ON SCHEMA "public" TO "`+owner+`"`) {
		t.Fatalf("cutover without CREATE on public: want exit 2 naming the grant, got exit %d: %v", exitcode.Of(err), err)
	}
	if after := coCatalog(t, super.Pool); after != before {
		t.Fatalf("the refused cutover changed the catalog:\n%s", coDiff(before, after))
	}
	// Read as the owner: the state schema is the owner's, which a superuser
	// does not trust (state.Check: its triggers would run as the superuser).
	if m, err := state.Get(ctx, env.Pool, spec.Name); err != nil || m.State != state.Synced {
		t.Fatalf("state after the refused cutover: %v %v", m, err)
	}
	pgtest.Exec(t, dsn, "GRANT CREATE ON SCHEMA public TO "+db.Ident(owner))

	// A view over the app name owned by another role: cutover re-creates
	// the views over it when the row type changes, which only that role
	// may do.
	// The grant goes to every shape: one on the app name alone is drift,
	// which cutover refuses before anything else.
	viewer, _ := lpRole(t, dsn, "viewer", "GRANT SELECT ON accounts, gs_lpc_blue.accounts, gs_lpc_green.accounts TO {role}",
		"GRANT USAGE ON SCHEMA gs_lpc_blue, gs_lpc_green TO {role}", "GRANT CREATE ON SCHEMA public TO {role}")
	pgtest.Exec(t, dsn, "CREATE VIEW public.accounts_report AS SELECT id, value FROM public.accounts; ALTER VIEW public.accounts_report OWNER TO "+db.Ident(viewer))
	before = coCatalog(t, super.Pool)
	_, err = Cutover(ctx, env, spec.Name, CutoverOptions{SwapCommandOptions: opts})
	if !errors.As(err, &pe) || exitcode.Of(err) != exitcode.BadInput || !strings.Contains(err.Error(), "view public.accounts_report") ||
		!strings.Contains(err.Error(), `GRANT "`+viewer+`" TO "`+owner+`"`) {
		t.Fatalf("cutover with another role's view: want exit 2 naming the view and the grant, got exit %d: %v", exitcode.Of(err), err)
	}
	if after := coCatalog(t, super.Pool); after != before {
		t.Fatalf("the refused cutover changed the catalog:\n%s", coDiff(before, after))
	}
	pgtest.Exec(t, dsn, "ALTER VIEW public.accounts_report OWNER TO "+db.Ident(owner))
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{SwapCommandOptions: opts}); err != nil {
		t.Fatalf("cutover once granted: %v\n%s", err, out)
	}
	if n := coInt(t, env.Pool, `SELECT count(*) FROM public.accounts_report`); n != coInt(t, env.Pool, `SELECT count(*) FROM gs_lpc_green.accounts`) {
		t.Errorf("the view reads %d rows after cutover", n)
	}
}
