package runner

import (
	"context"
	"fmt"
	"math/rand/v2"
	gosync "sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/pgtest"
)

// The pinning recipe for clients behind a transaction pooler (docs/runbook.md,
// Poolers): one pgbouncer database alias per shape, whose server connections
// are pinned when they are made (connect_query = SET search_path …), so a
// pin never depends on which pooled backend a transaction lands on. A
// client's own SET search_path does not work there: under load only 1-6 of
// 30 statements stayed pinned, and a client that set nothing inherited
// someone else's pin (issue 19).
//
// Under load (many clients per alias, a pool smaller than the clients,
// simple and extended protocol, writes and reads, a cutover in the middle),
// every statement of every client of the blue alias sees blue's shape,
// every one of the green alias green's, and every one of the plain alias
// the app name (blue's shape before the cutover, green's after).
func TestPgbouncerPinningRecipe(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	coExec(t, pool, syncOrdersTable(2000, false))
	env := coEnv(t, dsn)
	spec := coSync(t, env, syncOrdersSpec("pin", false))
	pcfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := pcfg.Database
	pb := pgtest.StartPgbouncer(t, dsn, pgtest.PgbouncerOptions{
		Aliases: map[string]string{
			db + "_blue":  "connect_query='SET search_path = gs_pin_blue, public'",
			db + "_green": "connect_query='SET search_path = gs_pin_green, public'",
		},
		Settings: map[string]string{"default_pool_size": "3"},
	})

	type client struct {
		alias string
		want  func(cutOver bool) string // current_schema() and amount's type
		mode  pgx.QueryExecMode
	}
	blueShape := func(bool) string { return "gs_pin_blue integer" }
	greenShape := func(bool) string { return "gs_pin_green numeric" }
	appShape := func(cut bool) string {
		if cut {
			return "public numeric"
		}
		return "public integer"
	}
	var clients []client
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		for range 4 {
			clients = append(clients, client{db + "_blue", blueShape, mode}, client{db + "_green", greenShape, mode},
				client{db, appShape, mode})
		}
	}

	var (
		mu        gosync.Mutex
		cutOver   bool // set once the cutover committed
		cutting   bool // the cutover is running: the app name may be either
		wrong     []string
		stmts     int
		cutoverAt = make(chan struct{})
	)
	var wg gosync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func(i int, c client) {
			defer wg.Done()
			cfg, err := pgx.ParseConfig(pb.DSN(c.alias, pgtest.SuperUser))
			if err != nil {
				t.Error(err)
				return
			}
			cfg.DefaultQueryExecMode = c.mode
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			for round := range 2 {
				if round == 1 {
					<-cutoverAt
				}
				conn, err := pgx.ConnectConfig(ctx, cfg)
				if err != nil {
					t.Error(err)
					return
				}
				for n := range 30 {
					mu.Lock()
					before, during := cutOver, cutting
					mu.Unlock()
					var got string
					if rng.IntN(3) == 0 {
						err = conn.QueryRow(ctx, `INSERT INTO orders (tenant, email, amount) VALUES ($1, $2, 1)
							RETURNING current_schema()::text || ' ' || pg_typeof(amount)::text`, n, fmt.Sprintf("pin%d@x", i)).Scan(&got)
					} else {
						err = conn.QueryRow(ctx, `SELECT current_schema()::text || ' ' || pg_typeof(amount)::text FROM orders WHERE id = $1
							UNION ALL SELECT current_schema()::text || ' ' || pg_typeof(amount)::text FROM orders LIMIT 1`, rng.IntN(2000)+1).Scan(&got)
					}
					mu.Lock()
					after := cutOver
					stmts++
					switch {
					case err != nil:
						wrong = append(wrong, fmt.Sprintf("%s client %d statement %d: %v", c.alias, i, n, err))
					case got == c.want(before) || got == c.want(after) || during && c.alias == db:
					default:
						wrong = append(wrong, fmt.Sprintf("%s client %d (%s) statement %d resolved orders as %q, want %q",
							c.alias, i, c.mode, n, got, c.want(before)))
					}
					mu.Unlock()
					time.Sleep(time.Duration(rng.IntN(5)) * time.Millisecond)
				}
				conn.Close(ctx)
			}
		}(i, c)
	}
	time.Sleep(300 * time.Millisecond)
	mu.Lock()
	cutting = true
	mu.Unlock()
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
		t.Fatalf("cutover: %v", err)
	}
	mu.Lock()
	cutting, cutOver = false, true
	mu.Unlock()
	close(cutoverAt)
	wg.Wait()
	for i, w := range wrong {
		if i < 10 {
			t.Error(w)
		}
	}
	if len(wrong) > 0 {
		t.Fatalf("%d of %d statements not pinned as their alias says", len(wrong), stmts)
	}
	if want := len(clients) * 60; stmts != want {
		t.Fatalf("%d statements ran, want %d", stmts, want)
	}
	t.Logf("%d statements by %d clients through 3 aliases, every one pinned", stmts, len(clients))
}
