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
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
)

// TestFinalizeSeesClientsNamedGreenswap: finding 03. A client may call
// itself application_name = 'greenswap…'; finalize knows its own sessions
// by backend PID, so such a client writing blue through blue's schema, or
// only reading it, still makes finalize refuse, naming it. greenswap's own
// sessions, which read blue too, do not.
func TestFinalizeSeesClientsNamedGreenswap(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE TABLE acc (id bigserial PRIMARY KEY, v int NOT NULL);
		INSERT INTO acc (v) SELECT g FROM generate_series(1, 100) g;`)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	role, _ := lpRole(t, dsn, "client", "GRANT SELECT, INSERT, UPDATE ON acc TO {role}", "GRANT USAGE ON SEQUENCE acc_id_seq TO {role}")
	u.User = url.User(role)
	clientDSN := u.String()
	env := coEnv(t, dsn)
	spec := coSync(t, env, `
name: fan
table: public.acc
target:
  ddl: CREATE TABLE acc (id bigint PRIMARY KEY, v bigint NOT NULL)
`)
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
		t.Fatal(err)
	}
	quiet := FinalizeOptions{QuietPeriod: time.Second, SampleEvery: 100 * time.Millisecond, Yes: true}
	refused := func(what, app, how string) {
		t.Helper()
		// A minute's look-back: the watch stops at the first sample that
		// sees the client, and with one second the writer's record could
		// age out before a loaded machine got finalize to sample.
		long := quiet
		long.QuietPeriod = time.Minute
		_, err := Finalize(ctx, env, spec.Name, long)
		var ue *cutover.UsageError
		if !errors.As(err, &ue) || exitcode.Of(err) != exitcode.Blocked {
			t.Fatalf("finalize with %s: want a refusal (exit 3), got exit %d: %v", what, exitcode.Of(err), err)
		}
		named := false
		for _, c := range ue.Clients {
			named = named || c.Application == app && c.User == role && strings.HasPrefix(c.How, how)
		}
		if !named || !strings.Contains(err.Error(), app) {
			t.Fatalf("finalize with %s: the refusal does not name %s (%s): %v", what, app, how, err)
		}
	}

	// Only reading blue, in transactions, pinned to blue's schema.
	reader := coConn(t, clientDSN, map[string]string{"search_path": "gs_fan_blue", "application_name": "greenswap"})
	rctx, stopReader := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for rctx.Err() == nil {
			tx, err := reader.Begin(rctx)
			if err != nil {
				return
			}
			tx.Exec(rctx, `SELECT count(*) FROM acc`)
			time.Sleep(150 * time.Millisecond)
			tx.Commit(context.Background())
			time.Sleep(20 * time.Millisecond)
		}
	}()
	refused("a reader calling itself greenswap", "greenswap", "lock")
	stopReader()
	<-done
	reader.Close(ctx)

	// Writing blue through its schema, one statement, then gone.
	writer := coConn(t, clientDSN, map[string]string{"application_name": "greenswap-old-api"})
	coExec(t, writer, `UPDATE gs_fan_blue.acc SET v = v + 1 WHERE id = 1`)
	writer.Close(ctx)
	refused("a writer calling itself greenswap", "greenswap-old-api", "write")

	if st := coStr(t, pool, `SELECT state FROM greenswap.migrations WHERE name = 'fan'`); st != "cut_over" {
		t.Fatalf("state %s after the refusals, want cut_over", st)
	}
	if n := coInt(t, pool, `SELECT count(*) FROM gs_fan_blue.acc`); n != 100 {
		t.Fatalf("blue has %d rows, want 100", n)
	}

	// greenswap's own sessions: a pool connection of this greenswap whose
	// last query read blue by its schema, as verify's do, is not a client.
	time.Sleep(1100 * time.Millisecond) // the writer's record ages out of the quiet period
	coExec(t, env.Pool, `SELECT count(*) FROM `+db.Ident("gs_fan_blue", "acc"))
	res, err := Finalize(ctx, env, spec.Name, quiet)
	if err != nil {
		t.Fatalf("finalize with only greenswap's own sessions about: %v", err)
	}
	if res.State != state.Finalized || len(res.Clients) != 0 {
		t.Fatalf("finalize: state %s, clients %v; want finalized, none", res.State, res.Clients)
	}
}
