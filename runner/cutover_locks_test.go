package runner

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
)

// maxLatency is the longest transaction a client started within [from, to].
func (c *wlClient) maxLatency(from, to time.Time) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var m time.Duration
	for _, l := range c.lats {
		if !l.at.Before(from) && !l.at.After(to) {
			m = max(m, l.lat)
		}
	}
	return m
}

// TestCutoverWaitsBoundedBehindALongTransaction: a long transaction holding
// a lock on blue makes cutover time out and retry without stalling the
// other clients for more than about the lock timeout; with too few attempts
// it exits 5 and nothing changed; once the transaction ends it succeeds.
// A user trigger makes the swap lock both blue and green (the pair loop),
// while clients write through the app name and both version schemas.
func TestCutoverWaitsBoundedBehindALongTransaction(t *testing.T) {
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, wlSchema+`
		CREATE TABLE audit (n bigserial PRIMARY KEY, op text, id bigint);
		CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS
			$$BEGIN INSERT INTO public.audit (op, id) VALUES (TG_OP, coalesce(NEW.id, OLD.id)); RETURN NULL; END$$;
		CREATE TRIGGER accounts_audit AFTER INSERT OR UPDATE OR DELETE ON accounts FOR EACH ROW EXECUTE FUNCTION audit_fn();`)
	ctx := context.Background()
	env := coEnv(t, dsn)
	spec := coSync(t, env, `
name: lk
table: public.accounts
target:
  ddl: CREATE TABLE accounts (id bigint PRIMARY KEY, value int NOT NULL, note text)
`)
	w := &workloadRun{t: t, dsn: dsn, stops: map[*wlClient]context.CancelFunc{}}
	simple := pgx.QueryExecModeSimpleProtocol
	clients := []*wlClient{
		w.start("app-simple", "app", simple, ""),
		w.start("app-prepared", "app", pgx.QueryExecModeCacheStatement, ""),
		w.start("blue-simple", "blue", simple, "gs_lk"),
		w.start("green-simple", "green", simple, "gs_lk"),
	}
	defer func() {
		for _, c := range w.clients {
			w.stop(c)
		}
		w.wg.Wait()
	}()

	// The long transaction: an open write through the blue version schema.
	long := coConn(t, dsn, map[string]string{"search_path": "gs_lk_blue, public", "application_name": "long-tx"})
	longTx, err := long.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := longTx.Exec(ctx, `UPDATE accounts SET note = 'held' WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	baseFrom := time.Now()
	time.Sleep(500 * time.Millisecond)
	baseTo := time.Now()

	const lockTimeout = 300 * time.Millisecond
	slack := 400 * time.Millisecond // a loaded 2-core machine
	before := coCatalog(t, pool)
	out := &coBuffer{}

	// Too few attempts: exit 5, nothing changed, the blocker named.
	t0 := time.Now()
	_, err = Cutover(ctx, env, spec.Name, CutoverOptions{SwapCommandOptions: SwapCommandOptions{Out: out, LockTimeout: lockTimeout, MaxAttempts: 2}})
	t1 := time.Now()
	var lt *shadow.LockTimeoutError
	if !errors.As(err, &lt) || exitcode.Of(err) != exitcode.LockTimeout {
		t.Fatalf("cutover with too few attempts: %v (exit %d), want a lock timeout (exit 5)\n%s", err, exitcode.Of(err), out)
	}
	if !strings.Contains(err.Error(), "long-tx") {
		t.Errorf("the error does not name the blocking session: %v", err)
	}
	if after := coCatalog(t, pool); after != before {
		t.Errorf("the catalog changed although cutover gave up:\n%s", coDiff(before, after))
	}
	m, err := state.Get(ctx, pool, spec.Name)
	if err != nil || m.State != state.Synced || m.PrimarySide != "blue" {
		t.Errorf("after giving up: state %v, primary %v, %v", m.State, m.PrimarySide, err)
	}
	for _, c := range clients {
		lat := c.maxLatency(t0, t1)
		baseLat := c.maxLatency(baseFrom, baseTo)
		t.Logf("%s: max latency %s while cutover gave up (%s before it)", c.name, lat.Round(time.Millisecond), baseLat.Round(time.Millisecond))
		if lat > lockTimeout+slack {
			t.Errorf("%s stalled %s behind cutover (lock timeout %s)", c.name, lat, lockTimeout)
		}
	}

	// Enough attempts: it retries until the long transaction ends.
	go func() {
		time.Sleep(1500 * time.Millisecond)
		longTx.Commit(context.Background())
	}()
	t0 = time.Now()
	res, err := Cutover(ctx, env, spec.Name, CutoverOptions{SwapCommandOptions: SwapCommandOptions{Out: out, LockTimeout: lockTimeout, MaxAttempts: 50}})
	t1 = time.Now()
	if err != nil {
		t.Fatalf("cutover: %v\n%s", err, out)
	}
	if res.Attempts < 2 || t1.Sub(t0) < time.Second {
		t.Errorf("cutover succeeded in %d attempt(s) after %s while a transaction held blue for 1.5s", res.Attempts, t1.Sub(t0))
	}
	t.Logf("cutover: %d attempts in %s, locks held %.1f ms", res.Attempts, t1.Sub(t0).Round(time.Millisecond), res.LockHoldMS)
	for _, c := range clients {
		lat := c.maxLatency(t0, t1)
		t.Logf("%s: max latency %s during cutover", c.name, lat.Round(time.Millisecond))
		if lat > lockTimeout+slack {
			t.Errorf("%s stalled %s behind cutover (lock timeout %s)", c.name, lat, lockTimeout)
		}
	}
	if !strings.Contains(out.String(), "blocked by pid") {
		t.Errorf("retries did not name the blocker:\n%s", out)
	}
	time.Sleep(200 * time.Millisecond)
	for _, c := range w.clients {
		w.stop(c)
	}
	w.wg.Wait()
	for _, c := range clients {
		for _, err := range c.errs {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	for k, d := range ledgerDiff(t, dsn, map[string]string{
		"app": `SELECT id, value::bigint FROM public.accounts`,
	}) {
		if d != 0 {
			t.Errorf("%s differs from the ledger in %d rows", k, d)
		}
	}
	// The user trigger fired once per write: one audit row per ledger row
	// written by the clients.
	if a, l := coInt(t, pool, `SELECT count(*) FROM audit`), coInt(t, pool, `SELECT count(*) FROM ledger WHERE via <> 'seed'`)+1; a != l {
		t.Errorf("%d audit rows for %d writes", a, l)
	}
}
