package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/verify/verifytest"
)

func verifyCLI(args ...string) (int, string, string) {
	var out, errw bytes.Buffer
	code := run(append([]string{"greenswap"}, args...), &out, &errw)
	return code, out.String(), errw.String()
}

// These fail before connecting.
func TestVerifyBadInputExits2(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"verify"}, "one migration name"},
		{[]string{"verify", "a", "b"}, "one migration name"},
		{[]string{"verify", "--workers", "0", "a"}, "--workers must be at least 1"},
		{[]string{"verify", "--chunk-rows", "x", "a"}, "chunk-rows"},
		{[]string{"verify", "a", "--workers", "0"}, "--workers must be at least 1"},
		{[]string{"verify", "a", "--bogus"}, "bogus"},
		{[]string{"verify", "a", "--repair", "b"}, "one migration name"},
		{[]string{"verify", "a", "--delete-extra"}, "--delete-extra only means something with --repair"},
		{[]string{"--dsn", "postgres://nobody@127.0.0.1:1/none?connect_timeout=2", "verify", "a"}, "cannot connect"},
	} {
		code, _, stderr := verifyCLI(tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 containing %q", tc.args, code, stderr, tc.want)
		}
	}
	code, out, _ := verifyCLI("verify", "--json")
	var doc struct {
		ExitCode int `json:"exit_code"`
	}
	if code != 2 || json.Unmarshal([]byte(out), &doc) != nil || doc.ExitCode != 2 {
		t.Errorf("--json bad input: exit %d, stdout %q", code, out)
	}
	if code, out, _ := verifyCLI("verify", "--help"); code != 0 || !strings.Contains(out, "Example:") || !strings.Contains(out, "--repair") {
		t.Errorf("verify --help: exit %d\n%s", code, out)
	}
}

// verifyDB gives this test a fresh database: on GREENSWAP_TEST_DSN's server
// if set, else on a throwaway cluster of its own (this package has no
// pgtest.Main, so it cannot use pgtest.NewDB).
func verifyDB(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	admin := os.Getenv(pgtest.EnvDSN)
	if admin == "" {
		c, err := pgtest.StartCluster(ctx, pgtest.Options{})
		if err != nil {
			t.Fatalf("start a PostgreSQL for the CLI test: %v", err)
		}
		t.Cleanup(func() { _ = c.Stop() })
		dsn, err := c.CreateDatabase(ctx, "cli_verify")
		if err != nil {
			t.Fatal(err)
		}
		return dsn
	}
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	name := fmt.Sprintf("gs_cli_verify_%d", os.Getpid())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), admin)
		if err == nil {
			_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			c.Close(context.Background())
		}
	})
	cfg, err := pgx.ParseConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Database = name
	return cfg.ConnString()
}

func TestVerifyCommand(t *testing.T) {
	dsn := verifyDB(t)
	ctx := t.Context()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	exec := func(sql string) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	exec(`CREATE TABLE orders (id serial PRIMARY KEY, email text, amount int NOT NULL, made_at timestamptz NOT NULL DEFAULT now());
		INSERT INTO orders (email, amount) SELECT CASE WHEN g % 4 = 0 THEN NULL ELSE 'u' || g END, g FROM generate_series(1, 3000) g`)
	var major int
	if err := pool.QueryRow(ctx, "SELECT current_setting('server_version_num')::int / 10000").Scan(&major); err != nil {
		t.Fatal(err)
	}
	f, err := verifytest.Setup(ctx, pool, `
name: o2
table: public.orders
target:
  ddl: |
    CREATE TABLE orders (id bigint PRIMARY KEY, email text NOT NULL, amount numeric(12,2) NOT NULL,
      made_at timestamptz NOT NULL, copied_at timestamptz NOT NULL)
forward:
  email: coalesce(email, '')
  copied_at: clock_timestamp()
reverse:
  amount: round(amount)::int
`, major)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Copy(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if err := f.Register(ctx, pool, state.Syncing, false); err != nil {
		t.Fatal(err)
	}

	// Backfill not finished: exit 2.
	code, _, stderr := verifyCLI("--dsn", dsn, "verify", "o2")
	if code != 2 || !strings.Contains(stderr, "backfill has not finished") {
		t.Fatalf("before backfill: exit %d: %s", code, stderr)
	}
	exec(`UPDATE greenswap.migrations SET backfill_done_at = now(), state = 'synced'`)

	code, out, stderr := verifyCLI("--dsn", dsn, "verify", "o2", "--chunk-rows", "500")
	if code != 0 || !strings.Contains(out, "IDENTICAL") || !strings.Contains(out, "3,000 blue, 3,000 green") ||
		!strings.Contains(out, "copied_at (volatile)") || !strings.Contains(out, "clock_timestamp") {
		t.Fatalf("equal: exit %d\n%s\n%s", code, out, stderr)
	}

	// Damage green; exit 1 with the keys listed, in text and in JSON.
	exec(`SET session_replication_role = replica;
		DELETE FROM gs_o2_green.orders WHERE id = 42;
		UPDATE gs_o2_green.orders SET amount = 0 WHERE id = 2999;
		INSERT INTO gs_o2_green.orders VALUES (9999, 'ghost', 1, now(), now());
		SET session_replication_role = origin`)
	code, out, _ = verifyCLI("--dsn", dsn, "verify", "o2", "--chunk-rows", "500")
	for _, want := range []string{"id=42", "missing in green", "id=2999", "different: amount", "id=9999", "extra in green", "DIFFERENT: 3 difference(s)"} {
		if !strings.Contains(out, want) {
			t.Errorf("damaged output lacks %q", want)
		}
	}
	if code != 1 {
		t.Fatalf("damaged: exit %d, want 1\n%s", code, out)
	}
	code, out, _ = verifyCLI("--dsn", dsn, "verify", "o2", "--json", "--workers", "1", "--chunk-rows", "500")
	var doc struct {
		Migration       string `json:"migration"`
		OK              bool   `json:"ok"`
		Rows            int64  `json:"rows"`
		DifferenceCount int    `json:"difference_count"`
		Differences     []struct {
			Kind string   `json:"kind"`
			Key  []string `json:"key"`
		} `json:"differences"`
		ChunkStats []struct {
			DurationMS float64 `json:"duration_ms"`
			Match      bool    `json:"match"`
		} `json:"chunk_stats"`
		Excluded []struct {
			Column string `json:"column"`
		} `json:"excluded_columns"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if code != 1 || doc.OK || doc.Migration != "o2" || doc.DifferenceCount != 3 || len(doc.Differences) != 3 ||
		doc.Differences[0].Key[0] != "42" || len(doc.ChunkStats) < 5 || len(doc.Excluded) != 1 {
		t.Fatalf("--json: exit %d %+v", code, doc)
	}

	// Repair, then a clean verify; cutover's check passes.
	// The row only green has is listed and kept (exit 1) until --delete-extra.
	code, out, _ = verifyCLI("--dsn", dsn, "verify", "o2", "--repair", "--chunk-rows", "500")
	if code != 1 || !strings.Contains(out, "2 rows copied from blue, 0 extra rows deleted") ||
		!strings.Contains(out, "left alone      1 row(s) only green has") || !strings.Contains(out, "(9999)") {
		t.Fatalf("repair without --delete-extra: exit %d\n%s", code, out)
	}
	code, out, _ = verifyCLI("--dsn", dsn, "verify", "o2", "--repair", "--delete-extra", "--chunk-rows", "500")
	if code != 0 || !strings.Contains(out, "REPAIRED") || !strings.Contains(out, "0 rows copied from blue, 1 extra rows deleted") {
		t.Fatalf("repair: exit %d\n%s", code, out)
	}
	if code, out, _ = verifyCLI("--dsn", dsn, "verify", "o2"); code != 0 {
		t.Fatalf("after repair: exit %d\n%s", code, out)
	}

	// A column added to blue outside greenswap: exit 3, named, in text and
	// in --json; dropped again, verify passes.
	exec(`ALTER TABLE gs_o2_blue.orders ADD COLUMN memo text`)
	code, out, stderr = verifyCLI("--dsn", dsn, "verify", "o2")
	if code != 3 || !strings.Contains(out, "\n  gs_o2_blue.orders (blue): column memo text added\n      fix: ") ||
		!strings.Contains(out, "BLOCKED") || !strings.Contains(stderr, "1 change(s) made outside greenswap") {
		t.Fatalf("drift: exit %d\n%s\n%s", code, out, stderr)
	}
	code, out, _ = verifyCLI("--dsn", dsn, "verify", "o2", "--json")
	var driftDoc struct {
		ExitCode int `json:"exit_code"`
		Drift    []struct {
			Object, Kind, Change, Fix string
		} `json:"drift"`
	}
	if err := json.Unmarshal([]byte(out), &driftDoc); err != nil || code != 3 || driftDoc.ExitCode != 3 || len(driftDoc.Drift) != 1 ||
		driftDoc.Drift[0].Kind != "column" || driftDoc.Drift[0].Change != "column memo text added" {
		t.Fatalf("drift --json: exit %d %v\n%s", code, err, out)
	}
	exec(`ALTER TABLE gs_o2_blue.orders DROP COLUMN memo`)
	if code, out, _ = verifyCLI("--dsn", dsn, "verify", "o2"); code != 0 {
		t.Fatalf("drift undone: exit %d\n%s", code, out)
	}

	// A second verify while one holds the lock: exit 4.
	lock, err := state.Acquire(ctx, pool.Config().ConnConfig, "o2")
	if err != nil {
		t.Fatal(err)
	}
	code, _, stderr = verifyCLI("--dsn", dsn, "verify", "o2")
	_ = lock.Release(ctx)
	if code != 4 {
		t.Fatalf("busy: exit %d: %s", code, stderr)
	}

	// Concurrent writes through the app name while verify runs: still identical.
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; wctx.Err() == nil; i++ {
			_, _ = pool.Exec(wctx, `UPDATE orders SET amount = amount + 1 WHERE id = $1`, 1+i%3000)
			_, _ = pool.Exec(wctx, `INSERT INTO orders (email, amount) VALUES (NULL, 5)`)
			time.Sleep(time.Millisecond)
		}
	}()
	code, out, _ = verifyCLI("--dsn", dsn, "verify", "o2", "--chunk-rows", "300", "--workers", "3")
	stop()
	wg.Wait()
	if code != 0 {
		t.Fatalf("under writes: exit %d\n%s", code, out)
	}
}
