package main

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
)

func TestRunCommandHelpAndBadInput(t *testing.T) {
	code, out, _ := syncRunCLI("run", "--help")
	if code != 0 || !strings.Contains(out, "Example:") || !strings.Contains(out, "greenswap run --alter") {
		t.Fatalf("run --help: exit %d\n%s", code, out)
	}
	for _, f := range []string{"--alter", "--alter-file", "--until", "--lock-timeout", "--max-attempts", "--name"} {
		if !strings.Contains(out, f) {
			t.Errorf("run --help lacks %s", f)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"run"}, "run needs the change"},
		{[]string{"run", "--alter", "x", "--alter-file", "y"}, "not both"},
		{[]string{"run", "--alter-file", "/nonexistent.sql"}, "--alter-file"},
		{[]string{"run", "--alter", "ALTER TABLE t ADD COLUMN c int", "--until", "verified"}, "--until"},
		{[]string{"run", "--alter", "ALTER TABLE t ADD COLUMN c int", "extra"}, "takes no arguments"},
		{[]string{"run", "--alter", "ALTER TABLE t ADD COLUMN c int", "--max-attempts", "-1"}, "must not be negative"},
	} {
		code, _, stderr := syncRunCLI(tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 containing %q", tc.args, code, stderr, tc.want)
		}
	}
}

// TestRunAlterCLI: through the binary's entry point on a real server,
// an ALTER PostgreSQL refuses exits 2 and changes nothing; a transaction
// holding the table makes the in-place step give up with exit 5, nothing
// changed; once it ends the same command resumes and finishes (exit 0),
// and a third run has nothing left to do.
func TestRunAlterCLI(t *testing.T) {
	pool, dsn := pgtest.NewPool(t)
	ctx := context.Background()
	pgtest.Exec(t, dsn, `CREATE TABLE public.items (id int PRIMARY KEY, email text);
INSERT INTO public.items SELECT g, 'e' || g FROM generate_series(1, 1000) g;`)
	cols := func() int64 {
		return testkit.Count(t, pool, `SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.items'::regclass AND attnum > 0 AND NOT attisdropped`)
	}
	if code, _, stderr := syncRunCLI("--dsn", dsn, "run", "--alter", "ALTER TABLE public.items ADD COLUMN n int, ADD COLUMN n text"); code != 2 {
		t.Fatalf("a refused ALTER: exit %d, %s", code, stderr)
	}
	if cols() != 2 {
		t.Fatal("the refused ALTER changed the table")
	}
	holder, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	if _, err := holder.Exec(ctx, "BEGIN; SELECT count(*) FROM public.items"); err != nil {
		t.Fatal(err)
	}
	args := []string{"--dsn", dsn, "run", "--alter", "ALTER TABLE public.items ADD COLUMN note text, ALTER COLUMN email SET NOT NULL",
		"--lock-timeout", "100ms", "--max-attempts", "2"}
	code, out, stderr := syncRunCLI(args...)
	if code != 5 || !strings.Contains(stderr, "gave up after 2 attempts") || !strings.Contains(stderr, "run the same command again") {
		t.Fatalf("blocked: exit %d, stdout %s, stderr %s", code, out, stderr)
	}
	if cols() != 2 {
		t.Fatal("the table changed though the step gave up")
	}
	if _, err := holder.Exec(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = syncRunCLI(args...)
	if code != 0 || !strings.Contains(out, "resuming") || !strings.Contains(out, "done in place") {
		t.Fatalf("resumed: exit %d, stdout %s, stderr %s", code, out, stderr)
	}
	if cols() != 3 || testkit.Count(t, pool, `SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.items'::regclass AND attname = 'email' AND attnotnull`) != 1 {
		t.Fatal("the resumed run did not finish the ALTER")
	}
	code, out, _ = syncRunCLI(args...)
	if code != 0 || strings.Contains(out, "  ran in ") || !strings.Contains(out, "done before") {
		t.Fatalf("third run: exit %d, ran something again:\n%s", code, out)
	}
}
