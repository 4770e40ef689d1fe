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
