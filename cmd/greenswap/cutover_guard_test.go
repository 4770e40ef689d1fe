package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/runner"
)

// TestCutoverGuardFlags: --guard and its bounds are in cutover --help with
// the window's defaults; a bound without --guard, a negative window or a
// bad bound exits 2 before connecting.
func TestCutoverGuardFlags(t *testing.T) {
	_, out, _ := runCutoverCLI("cutover", "--help")
	for _, f := range []string{"--guard DURATION", "--guard-rollback-rate", "--guard-lock-waits", "--guard-lock-wait-time",
		"--guard-latency-ratio", "--guard-probe-sql", "--guard-probe-cmd", "--guard-every", "else 0.1", "else 10s", "else 3",
		"7 --guard rolled back"} {
		if !strings.Contains(out, f) {
			t.Errorf("cutover --help lacks %q", f)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"cutover", "x", "--guard-probe-cmd", "false"}, "--guard-probe-cmd needs --guard DURATION"},
		{[]string{"cutover", "--guard-lock-waits", "3", "x"}, "--guard-lock-waits needs --guard DURATION"},
		{[]string{"cutover", "x", "--guard", "-1s"}, "--guard -1s: the window must be positive"},
		{[]string{"cutover", "x", "--guard", "1m", "--guard-rollback-rate", "1.5"}, "--guard-rollback-rate must be a share between 0 and 1"},
		{[]string{"cutover", "x", "--guard", "1m", "--guard-every", "-1s"}, "--guard-every"},
	} {
		code, _, stderr := runCutoverCLI(tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 containing %q", tc.args, code, stderr, tc.want)
		}
	}
}

// TestCutoverGuardInterruptedLine: Ctrl-C in the guard window prints the
// window's own line (still cut over), not the swap's.
func TestCutoverGuardInterruptedLine(t *testing.T) {
	err := &runner.GuardInterruptedError{Migration: "o2", Watched: 3 * time.Second, Of: time.Minute, App: "public.orders",
		Green: "gs_o2_green.orders", InterruptedErr: context.Canceled}
	line := interruptedLine([]string{"greenswap", "cutover", "o2", "--guard", "1m"}, err)
	if !strings.Contains(line, "stays cut over") || !strings.Contains(line, "greenswap rollback o2") || strings.Contains(line, "either committed") {
		t.Errorf("interrupted line %q", line)
	}
}

// TestCutoverGuardCommand: through the CLI on a real server, a passing
// window exits 0 cut over; after a rollback, a failing probe makes the
// next guarded cutover roll back by itself: exit 7, one line naming the
// signal, the migration synced again.
func TestCutoverGuardCommand(t *testing.T) {
	dsn := pgtest.NewDB(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE orders (id bigserial PRIMARY KEY, amount int NOT NULL);
		INSERT INTO orders (amount) SELECT g FROM generate_series(1, 500) g`); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	spec := filepath.Join(dir, "o.yaml")
	if err := os.WriteFile(spec, []byte("name: gcli\ntable: public.orders\ntarget:\n  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, amount bigint NOT NULL)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cli := func(args ...string) (int, string, string) {
		return syncRunCLI(append([]string{"--dsn", dsn}, args...)...)
	}
	for _, args := range [][]string{{"sync", "-f", spec}, {"verify", "gcli"}} {
		if code, out, stderr := cli(args...); code != 0 {
			t.Fatalf("%q: exit %d\n%s\n%s", args, code, out, stderr)
		}
	}
	quiet := []string{"--guard-every", "100ms", "--guard-rollback-rate", "-1", "--guard-lock-wait-time", "-1s", "--guard-replica-lag", "-1s"}
	code, out, stderr := cli(append([]string{"cutover", "gcli", "--guard", "1s", "--guard-probe-cmd", "true"}, quiet...)...)
	if code != 0 || !strings.Contains(out, "guard: 1s passed") {
		t.Fatalf("passing window: exit %d\n%s\n%s", code, out, stderr)
	}
	if code, out, stderr := cli("rollback", "gcli"); code != 0 {
		t.Fatalf("rollback: exit %d\n%s\n%s", code, out, stderr)
	}
	code, out, stderr = cli(append([]string{"cutover", "gcli", "--guard", "30s", "--guard-probe-cmd", "echo down >&2; exit 4"}, quiet...)...)
	if code != 7 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "probe_cmd=4 > 0") ||
		!strings.Contains(stderr, "reads gs_gcli_blue.orders again") {
		t.Fatalf("failing probe: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, stderr)
	}
	var st string
	if err := conn.QueryRow(ctx, `SELECT state FROM greenswap.migrations WHERE name = 'gcli'`).Scan(&st); err != nil || st != "synced" {
		t.Fatalf("state %q after the guard's rollback (%v), want synced", st, err)
	}
}
