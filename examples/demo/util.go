package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// ---- narration ----

const width = 78

func title(s string) {
	fmt.Printf("\n%s\n  %s\n%s\n", strings.Repeat("═", width), s, strings.Repeat("═", width))
}

func section(s string) {
	fmt.Printf("\n── %s %s\n", s, strings.Repeat("─", max(3, width-4-len([]rune(s)))))
}

// say prints a paragraph, wrapped.
func say(s string) {
	fmt.Println()
	line := "  "
	for _, w := range strings.Fields(s) {
		if len([]rune(line))+len([]rune(w)) > width {
			fmt.Println(strings.TrimRight(line, " "))
			line = "  "
		}
		line += w + " "
	}
	fmt.Println(strings.TrimRight(line, " "))
}

func doing(format string, args ...any) { fmt.Printf("  … "+format+"\n", args...) }
func done(format string, args ...any)  { fmt.Printf("  ✓ "+format+"\n", args...) }
func note(format string, args ...any) {
	fmt.Println()
	say("! " + fmt.Sprintf(format, args...))
}
func cmdline(s string) { fmt.Printf("\n  $ %s\n", s) }

// showSpec prints the spec file, indented, without its comment lines.
func showSpec(path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	fmt.Println()
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		fmt.Println("    " + line)
	}
}

func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	for i := len(s) - 3; i > 0 && s[i-1] != '-'; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func rel(root, p string) string {
	if r, err := filepath.Rel(root, p); err == nil {
		return r
	}
	return p
}

// ---- the greenswap binary ----

type cli struct {
	bin string
	dsn string
	dir string // working directory: the module root, so spec paths read as in the docs
}

// output says how a command's output is shown.
type output struct {
	maxLines int // 0 = all
	// skip names sections (an unindented heading line) whose body is not
	// shown, e.g. plan's "Steps" with every SQL statement.
	skip []string
}

type runResult struct {
	code    int
	took    time.Duration
	stopped bool // the demo interrupted it (sync --watch once synced)
}

// help returns `greenswap COMMAND --help`.
func (c cli) help(ctx context.Context, command string) string {
	out, _ := exec.CommandContext(ctx, c.bin, command, "--help").CombinedOutput()
	return string(out)
}

// has reports whether command is implemented (placeholders say "not yet implemented").
func (c cli) has(ctx context.Context, command string) bool {
	h := c.help(ctx, command)
	return h != "" && !strings.Contains(h, "not yet implemented") && !strings.Contains(h, "No help topic")
}

func (c cli) run(ctx context.Context, o output, args ...string) (runResult, error) {
	return c.runUntil(ctx, o, nil, args...)
}

// runUntil runs greenswap, showing its output indented. When done is not
// nil it is polled; once it reports true and the command has not exited
// within a few seconds, the command gets SIGINT (a Ctrl-C), as an operator
// would stop `sync --watch` once it says synced.
func (c cli) runUntil(ctx context.Context, o output, done func(context.Context) bool, args ...string) (runResult, error) {
	full := append([]string{"--dsn", c.dsn, "--log-format", "console"}, args...)
	cmd := exec.CommandContext(ctx, c.bin, full...)
	cmd.Env = append(os.Environ(), "NO_COLOR=1")
	cmd.Dir = c.dir
	// Its own process group: a Ctrl-C at the terminal reaches the demo,
	// which passes it on (Cancel) and then cleans up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 15 * time.Second
	pw := newPrefixWriter("    │ ", o.maxLines)
	pw.skip = o.skip
	cmd.Stdout, cmd.Stderr = pw, pw
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return runResult{}, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var res runResult
	var werr error
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var doneSince time.Time
wait:
	for {
		select {
		case werr = <-exited:
			break wait
		case <-tick.C:
			if done == nil || res.stopped {
				continue
			}
			if !doneSince.IsZero() {
				if time.Since(doneSince) > 4*time.Second {
					res.stopped = true
					_ = cmd.Process.Signal(os.Interrupt)
				}
				continue
			}
			if done(ctx) {
				doneSince = time.Now()
			}
		}
	}
	pw.Flush()
	res.took = time.Since(start)
	if cmd.ProcessState != nil {
		res.code = cmd.ProcessState.ExitCode()
	}
	var exitErr *exec.ExitError
	if werr != nil && !errors.As(werr, &exitErr) {
		return res, werr
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	return res, nil
}

// prefixWriter indents each line and stops showing after max lines.
type prefixWriter struct {
	mu       sync.Mutex
	prefix   string
	max      int
	lines    int
	partial  []byte
	skip     []string
	skipping bool
}

func newPrefixWriter(prefix string, maxLines int) *prefixWriter {
	return &prefixWriter{prefix: prefix, max: maxLines}
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := strings.IndexByte(string(w.partial), '\n')
		if i < 0 {
			break
		}
		w.line(string(w.partial[:i]))
		w.partial = w.partial[i+1:]
	}
	return len(p), nil
}

func (w *prefixWriter) line(s string) {
	s = strings.TrimRight(strings.ReplaceAll(s, "\r", ""), " ")
	if s != "" && !strings.HasPrefix(s, " ") {
		w.skipping = false
		for _, h := range w.skip {
			if s == h {
				w.skipping = true
				s += " (not shown here: plan prints every step with its exact SQL and locks)"
			}
		}
	} else if w.skipping {
		return
	}
	w.lines++
	if w.max > 0 && w.lines > w.max {
		return
	}
	fmt.Println(w.prefix + s)
}

func (w *prefixWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.partial) > 0 {
		w.line(string(w.partial))
		w.partial = nil
	}
	if w.max > 0 && w.lines > w.max {
		fmt.Printf("%s… (%d more lines)\n", w.prefix, w.lines-w.max)
	}
}

var _ io.Writer = (*prefixWriter)(nil)

// ---- the example's table ----

// seed runs seed.sql (statement by statement when it contains commands
// that cannot run in a transaction block) and returns the app table's rows.
func (d *demo) seed(ctx context.Context, path string) (int64, error) {
	sql, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	conn, err := pgx.Connect(ctx, d.dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	t0 := time.Now()
	if _, err := conn.Exec(ctx, string(sql)); err != nil {
		return 0, fmt.Errorf("examples/orders/seed.sql: %w", err)
	}
	app := d.spec.AppTable()
	var n int64
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+db.Ident(app.Schema, app.Name)).Scan(&n); err != nil {
		return 0, err
	}
	done("loaded in %s", time.Since(t0).Round(100*time.Millisecond))
	return n, nil
}

// topUp copies existing rows (new keys from the key's default) until the
// table holds want rows, so the demo has a few hundred thousand rows
// whatever the example's seed.sql loads.
func (d *demo) topUp(ctx context.Context, have, want int64) (int64, error) {
	if want <= have || have == 0 {
		return have, nil
	}
	conn, err := pgx.Connect(ctx, d.dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	cols := strings.Join(d.app.copyCols, ", ")
	for have < want {
		n := min(have, want-have)
		_, err := conn.Exec(ctx, fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM %s ORDER BY %s LIMIT %d",
			d.app.table, cols, cols, d.app.table, db.Ident(d.app.key), n))
		if err != nil {
			return 0, fmt.Errorf("adding rows: %w", err)
		}
		have += n
	}
	if _, err := conn.Exec(ctx, "VACUUM ANALYZE "+d.app.table); err != nil {
		return 0, err
	}
	err = conn.QueryRow(ctx, "SELECT coalesce(max("+db.Ident(d.app.key)+"), 0)::bigint FROM "+d.app.table).Scan(&d.app.maxKey)
	return have, err
}

// appShape is what the workload needs to know about the app table.
type appShape struct {
	table        string // quoted app name
	key          string
	value        string
	insertSQL    string
	oldInsertSQL string // the old release's insert, through search_path
	maxKey       int64
	copyCols     []string // every column but the key, for topping up the seed
}

// inspectApp reads the app table from the catalog: its key (one integer
// column with a default), an integer-valued column for the workload to set,
// and an INSERT that fills every other NOT NULL column without a default.
func inspectApp(ctx context.Context, dsn string, spec *spec.Spec) (appShape, error) {
	var a appShape
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return a, err
	}
	defer conn.Close(context.Background())
	name := spec.AppTable()
	t, err := shadow.LoadTable(ctx, conn, name)
	if err != nil {
		return a, err
	}
	a.table = db.Ident(name.Schema, name.Name)
	key := spec.Key
	if len(key) == 0 {
		key = shadow.TableKey(t)
	}
	if len(key) != 1 {
		return a, fmt.Errorf("the demo's workload needs a one-column key on %s, found %v", name, key)
	}
	a.key = key[0]
	kc := t.Column(a.key)
	if kc.Default == "" && kc.Identity == "" {
		return a, fmt.Errorf("the demo's workload needs %s.%s to have a default (serial or identity)", name, a.key)
	}
	for _, pref := range []string{"amount", "quantity", "qty", "total"} {
		if c := t.Column(pref); c != nil && isNumber(c.Type) && c.Generated == "" {
			a.value = pref
			break
		}
	}
	if a.value == "" {
		for _, c := range t.Columns {
			if c.Name != a.key && c.Generated == "" && isNumber(c.Type) {
				a.value = c.Name
				break
			}
		}
	}
	if a.value == "" {
		return a, fmt.Errorf("the demo's workload needs a numeric column in %s to update", name)
	}
	// The application writes complete rows: every column without a default
	// gets a value (NOT NULL or not), as the current release does.
	// The old release writes only what it must: the NOT NULL columns.
	cols := []string{db.Ident(a.value)}
	vals := []string{"$1"}
	oldCols, oldVals := []string{db.Ident(a.value)}, []string{"$1"}
	for _, c := range t.Columns {
		if c.Name == a.key || c.Name == a.value || c.Default != "" || c.Identity != "" || c.Generated != "" {
			continue
		}
		v, ok := filler(c)
		if !ok {
			if c.NotNull {
				return a, fmt.Errorf("the demo's workload cannot fill NOT NULL column %s (%s)", c.Name, c.Type)
			}
			continue
		}
		cols = append(cols, db.Ident(c.Name))
		vals = append(vals, v)
		if c.NotNull {
			oldCols, oldVals = append(oldCols, db.Ident(c.Name)), append(oldVals, v)
		}
	}
	// Unqualified: search_path decides which shape it writes.
	a.oldInsertSQL = fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s) RETURNING %s",
		db.Ident(name.Name), strings.Join(oldCols, ", "), strings.Join(oldVals, ", "), db.Ident(a.key))
	for _, c := range t.Columns {
		if c.Name != a.key && c.Identity == "" && c.Generated == "" {
			a.copyCols = append(a.copyCols, db.Ident(c.Name))
		}
	}
	a.insertSQL = fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s) RETURNING %s",
		a.table, strings.Join(cols, ", "), strings.Join(vals, ", "), db.Ident(a.key))
	err = conn.QueryRow(ctx, "SELECT coalesce(max("+db.Ident(a.key)+"), 0)::bigint FROM "+a.table).Scan(&a.maxKey)
	return a, err
}

func isNumber(t string) bool {
	for _, p := range []string{"integer", "bigint", "smallint", "numeric"} {
		if strings.HasPrefix(t, p) {
			return true
		}
	}
	return false
}

// filler is a plausible value for a NOT NULL column the workload does not care about.
func filler(c shadow.Column) (string, bool) {
	t := c.Type
	switch {
	case strings.Contains(c.Name, "email"):
		return "'app-' || (random() * 1000000)::int || '@example.com'", true
	case t == "text" || strings.HasPrefix(t, "character"):
		return "'demo'", true
	case isNumber(t) || strings.HasPrefix(t, "double") || t == "real":
		return "1", true
	case strings.HasPrefix(t, "timestamp"):
		return "now()", true
	case t == "date":
		return "current_date", true
	case t == "boolean":
		return "false", true
	case t == "uuid":
		return "gen_random_uuid()", true
	case t == "jsonb" || t == "json":
		return "'{}'", true
	}
	return "", false
}
