package runner

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/greenswap/greenswap/cutover"
	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
)

// Finalize as a table owner that is no superuser and lacks
// pg_read_all_stats (managed PostgreSQL): pg_stat_activity hides every
// other role's session, so the usage check saw nobody and dropped blue
// under a client reading it (issue 19: 336 × relation does not exist).
// Now plan lists the privilege, finalize refuses with exit 3 naming it and
// changes nothing; granted, finalize sees the reader and refuses for it;
// once the reader has gone, finalize runs.
func TestFinalizeBlindWithoutReadAllStats(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	u, _ := url.Parse(dsn)
	dbname := strings.TrimPrefix(u.Path, "/")
	owner, ownerDSN := lpRole(t, dsn, "owner",
		"GRANT CREATE ON DATABASE "+db.Ident(dbname)+" TO {role}", "GRANT CREATE ON SCHEMA public TO {role}")
	coExec(t, pool, syncOrdersTable(500, false))
	coExec(t, pool, "ALTER TABLE orders OWNER TO "+db.Ident(owner))
	reader, readerDSN := lpRole(t, dsn, "reader", "GRANT SELECT ON orders TO {role}")
	env := coEnv(t, ownerDSN)

	spec := syncSpec(t, syncOrdersSpec("sv", false))
	res, err := Plan(ctx, env, spec, PlanOptions{})
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	var listed bool
	for _, p := range res.Privileges {
		if p.Code == shadow.PrivReadAllStats {
			listed = !p.Granted && strings.Contains(p.Fix, "GRANT pg_read_all_stats TO")
		}
	}
	if !listed {
		t.Fatalf("plan does not list pg_read_all_stats as missing: %+v", res.Privileges)
	}
	var warned bool
	for _, h := range res.Hazards {
		warned = warned || h.Code == shadow.HazardMissingPrivileges && strings.Contains(strings.Join(h.Objects, " "), "pg_read_all_stats")
	}
	if !warned {
		t.Fatalf("plan's hazards do not warn about pg_read_all_stats: %+v", res.Hazards)
	}
	// Where plan advises pinning by SET search_path it warns about poolers.
	var pinAdvice int
	for _, h := range res.Hazards {
		if strings.Contains(h.Fix, "SET search_path") {
			pinAdvice++
			if !strings.Contains(h.Fix, "transaction pooler") || !strings.Contains(h.Fix, "connect_query") {
				t.Errorf("hazard %s advises SET search_path without the pooler caveat: %s", h.Code, h.Fix)
			}
		}
	}
	if pinAdvice == 0 {
		t.Errorf("plan advises no pinning for a row type change: %+v", res.Hazards)
	}

	coSync(t, env, syncOrdersSpec("sv", false))
	if _, err := Cutover(ctx, env, "sv", CutoverOptions{}); err != nil {
		t.Fatalf("cutover: %v", err)
	}
	// A client of another role still reads blue through its version schema.
	client := coConn(t, readerDSN, map[string]string{"application_name": "old-reader"})
	read := func() {
		t.Helper()
		coInt(t, client, `SELECT count(*) FROM gs_sv_blue.orders`)
	}
	read()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := client.Exec(context.Background(), `SELECT count(*) FROM gs_sv_blue.orders`); err != nil {
				t.Errorf("reader: %v", err)
				return
			}
		}
	}()
	stopped := false
	stopReader := func() {
		if !stopped {
			stopped = true
			close(stop)
			<-done
		}
	}
	defer stopReader()

	fin := FinalizeOptions{QuietPeriod: time.Second, SampleEvery: 100 * time.Millisecond, Yes: true}
	_, err = Finalize(ctx, env, "sv", fin)
	var blind *shadow.BlindError
	if !errors.As(err, &blind) || exitcode.Of(err) != exitcode.Blocked {
		t.Fatalf("finalize without pg_read_all_stats = exit %d %v, want a *shadow.BlindError (exit 3)", exitcode.Of(err), err)
	}
	for _, want := range []string{"pg_read_all_stats", "GRANT pg_read_all_stats TO " + db.Ident(owner), "nothing was changed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if m, err := state.Get(ctx, env.Pool, "sv"); err != nil || m.State != state.CutOver {
		t.Fatalf("after the refusal: %+v, %v", m, err)
	}
	if coInt(t, pool, `SELECT count(*) FROM pg_class WHERE oid = to_regclass('gs_sv_blue.orders')`) != 1 {
		t.Fatal("blue is gone")
	}

	coExec(t, pool, "GRANT pg_read_all_stats TO "+db.Ident(owner))
	_, err = Finalize(ctx, env, "sv", fin)
	var ue *cutover.UsageError
	if !errors.As(err, &ue) || exitcode.Of(err) != exitcode.Blocked || !strings.Contains(err.Error(), reader) {
		t.Fatalf("finalize with pg_read_all_stats while %s reads blue = %v, want a *cutover.UsageError naming it", reader, err)
	}
	stopReader()
	client.Close(ctx)
	time.Sleep(1200 * time.Millisecond)
	if _, err := Finalize(ctx, env, "sv", fin); err != nil {
		t.Fatalf("finalize once the reader has gone: %v", err)
	}
	if m, err := state.Get(ctx, env.Pool, "sv"); err != nil || m.State != state.Finalized {
		t.Fatalf("after finalize: %+v, %v", m, err)
	}
}

// A role that is not the owner, and lacks what a step needs, gets one line
// naming the privilege and the step, exit 2, and nothing changes, at every
// command (issue 19: bare "permission denied for schema greenswap",
// "permission denied for database", and, resuming sync with the state
// readable, "create greenswap state schema: permission denied for
// database").
func TestNonOwnerRefusedInOneLine(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	coExec(t, pool, syncOrdersTable(200, false))
	env := coEnv(t, dsn)
	coSync(t, env, syncOrdersSpec("no", false))
	role, roleDSN := lpRole(t, dsn, "stranger")
	renv := coEnv(t, roleDSN)
	spec := syncSpec(t, syncOrdersSpec("no", false))
	other := syncSpec(t, syncOrdersSpec("no2", false))

	commands := []struct {
		name string
		run  func() error
	}{
		{"status", func() error { _, err := Status(ctx, renv, ""); return err }},
		{"plan", func() error { _, err := Plan(ctx, renv, other, PlanOptions{}); return err }},
		{"sync", func() error { _, err := Sync(ctx, renv, spec, SyncOptions{}); return err }},
		{"verify", func() error { _, err := Verify(ctx, renv, "no", VerifyOptions{}); return err }},
		{"cutover", func() error { _, err := Cutover(ctx, renv, "no", CutoverOptions{}); return err }},
		{"rollback", func() error { _, err := Rollback(ctx, renv, "no", SwapCommandOptions{}); return err }},
		{"pause", func() error { return Pause(ctx, renv, "no") }},
	}
	check := func(phase, cmd string, err error, wants ...string) {
		t.Helper()
		if exitcode.Of(err) != exitcode.BadInput {
			t.Errorf("%s: %s = exit %d %v, want exit 2", phase, cmd, exitcode.Of(err), err)
			return
		}
		msg := err.Error()
		if strings.Contains(msg, "\n") || !strings.Contains(msg, "nothing was changed") {
			t.Errorf("%s: %s: not one line saying nothing was changed: %q", phase, cmd, msg)
		}
		for _, w := range wants {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: %s: error lacks %q: %s", phase, cmd, w, msg)
			}
		}
	}
	before := coCatalog(t, pool)
	for _, c := range commands {
		check("no grants", c.name, c.run(), "lacks USAGE on schema greenswap", "GRANT USAGE ON SCHEMA greenswap TO "+db.Ident(role))
	}
	r := db.Ident(role)
	coExec(t, pool, "GRANT USAGE ON SCHEMA greenswap TO "+r+"; GRANT SELECT, INSERT, UPDATE ON greenswap.migrations TO "+r+
		"; GRANT SELECT, INSERT ON greenswap.events TO "+r+"; GRANT USAGE ON SEQUENCE greenswap.events_id_seq TO "+r)
	if _, err := Status(ctx, renv, ""); err != nil {
		t.Errorf("status with the state grants: %v", err)
	}
	for _, c := range commands[2:6] {
		check("state readable", c.name, c.run(), "lacks what "+c.name+" needs", "the owner of gs_no_blue.orders")
	}
	if after := coCatalog(t, pool); after != before {
		t.Fatalf("the catalog changed:\n%s", coDiff(before, after))
	}
	var dbname string
	if err := pool.QueryRow(ctx, `SELECT current_database()`).Scan(&dbname); err != nil {
		t.Fatal(err)
	}
	coExec(t, pool, "REVOKE CONNECT ON DATABASE "+db.Ident(dbname)+" FROM PUBLIC")
	_, err := Connect(ctx, roleDSN, env.Log)
	check("no CONNECT", "connect", err, "GRANT CONNECT ON DATABASE "+db.Ident(dbname)+" TO "+r)
}
