package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/jackc/pgx/v5"
)

// gsCLI runs the greenswap CLI in-process: exit code, stdout, stderr.
func gsCLI(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(append([]string{"greenswap"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

// ordersDB is a database seeded with examples/orders.
func ordersDB(t *testing.T) string {
	t.Helper()
	dsn := pgtest.NewDB(t)
	seed, err := os.ReadFile("../../examples/orders/seed.sql")
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, string(seed))
	pgtest.Exec(t, dsn, "ANALYZE orders")
	return dsn
}

const exampleSpec = "../../examples/orders/spec.yaml"

func TestPlanCommand(t *testing.T) {
	t.Parallel()
	dsn := ordersDB(t)

	code, out, errOut := gsCLI("--dsn", dsn, "plan", "-f", exampleSpec)
	if code != 0 {
		t.Fatalf("plan: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	for _, want := range []string{
		"greenswap plan: orders_v2 — public.orders → gs_orders_v2_green.orders (trigger mode)",
		"Rehearsed in one transaction and rolled back: nothing was changed",
		"\nSteps\n", "  1. adopt (greenswap sync)", `ALTER TABLE "public"."orders" SET SCHEMA "gs_orders_v2_blue"`,
		"CREATE INDEX CONCURRENTLY orders_created_at_idx", "7. settle (greenswap sync)", "11. finalize",
		"  settle: VACUUM (FREEZE) of ~", "greenswap requests none",
		"\nEstimate (an estimate, not a promise)\n", "free disk space is unknown",
		"\nHazards\n", "WARNING  row_type_change", "cached plan must not change result type",
		"WARNING  green_stricter", "email: NOT NULL on green", "fix: ", "Nothing blocking.",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan output lacks %q:\n%s", want, out)
		}
	}
	if errOut != "" {
		t.Errorf("stderr: %s", errOut)
	}

	code, out, _ = gsCLI("--dsn", dsn, "plan", "-f", exampleSpec, "--json")
	if code != 0 {
		t.Fatalf("plan --json: exit %d", code)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("plan --json is not JSON: %v\n%s", err, out)
	}
	for _, f := range []string{"schema_version", "migration", "table", "key", "rehearsal", "sample", "steps", "estimate",
		"hazards", "blocking", "warnings", "mapping"} {
		if _, ok := doc[f]; !ok {
			t.Errorf("plan --json lacks %q", f)
		}
	}
	if doc["schema_version"] != float64(1) || doc["blocking"] != float64(0) {
		t.Errorf("schema_version %v, blocking %v", doc["schema_version"], doc["blocking"])
	}
	steps, _ := doc["steps"].([]any)
	if len(steps) != 11 {
		t.Errorf("%d steps", len(steps))
	} else if s0, _ := steps[0].(map[string]any); s0["name"] != "adopt" || s0["lock"] == "" || s0["sql"] == nil {
		t.Errorf("first step = %v", s0)
	}
	hs, _ := doc["hazards"].([]any)
	if len(hs) == 0 {
		t.Error("no hazards in JSON")
	} else if h, _ := hs[0].(map[string]any); h["code"] == nil || h["severity"] == nil || h["message"] == nil || h["fix"] == nil {
		t.Errorf("hazard = %v", h)
	}

	// The table is untouched.
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var kind string
	if err := conn.QueryRow(ctx, `SELECT relkind::text FROM pg_class WHERE oid = 'public.orders'::regclass`).Scan(&kind); err != nil || kind != "r" {
		t.Errorf("public.orders relkind %q (%v) after plan", kind, err)
	}
	if ok, _ := state.Exists(ctx, conn); ok {
		t.Error("plan created the state schema")
	}
}

var fileLineRE = regexp.MustCompile(`^greenswap: [^\s:]+\.yaml:\d+: `)

func TestPlanBadInputExits2(t *testing.T) {
	t.Parallel()
	dsn := ordersDB(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	broken := write("broken.yaml", "name: orders_v2\ntable: public.orders\ntarget:\n  ddl: CREATE TABLE orders (id bigint PRIMARY KEY)\n  indxes: []\n")
	missing := write("missing.yaml", "name: nope_v2\ntable: public.nope\ntarget:\n  ddl: CREATE TABLE nope (id bigint PRIMARY KEY)\n")
	badExpr := write("badexpr.yaml", "name: orders_v2\ntable: public.orders\ntarget:\n  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, amount int)\nforward:\n  amount: amount / 0\n")

	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"broken spec", []string{"--dsn", dsn, "plan", "-f", broken}, "broken.yaml:5: target.indxes: unknown field"},
		{"missing table", []string{"--dsn", dsn, "plan", "-f", missing}, "missing.yaml:2: table: table public.nope does not exist"},
		{"failing expression", []string{"--dsn", dsn, "plan", "-f", badExpr}, "badexpr.yaml:6: forward.amount: forward.amount fails on the row with key (id)="},
	} {
		code, out, errOut := gsCLI(c.args...)
		if code != 2 {
			t.Errorf("%s: exit %d, want 2\n%s%s", c.name, code, out, errOut)
		}
		if !fileLineRE.MatchString(errOut) || !strings.Contains(errOut, c.want) || strings.Count(errOut, "\n") != 1 {
			t.Errorf("%s: stderr is not one line naming file:line with %q: %q", c.name, c.want, errOut)
		}
		if out != "" {
			t.Errorf("%s: stdout %q", c.name, out)
		}
	}

	// --json prints the error as a document too.
	code, out, _ := gsCLI("--dsn", dsn, "plan", "-f", broken, "--json")
	var doc struct {
		SchemaVersion int `json:"schema_version"`
		Error         struct {
			File  string `json:"file"`
			Line  int    `json:"line"`
			Field string `json:"field"`
		} `json:"error"`
		ExitCode int `json:"exit_code"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 2 || doc.Error.Line != 5 || doc.Error.Field != "target.indxes" || doc.ExitCode != 2 {
		t.Errorf("plan --json on a broken spec: exit %d, %+v (%v)\n%s", code, doc, err, out)
	}

	for _, args := range [][]string{
		{"--dsn", dsn, "plan"},
		{"--dsn", dsn, "plan", exampleSpec},
		{"--dsn", "postgres://nobody@127.0.0.1:1/none?connect_timeout=2", "plan", "-f", exampleSpec},
	} {
		if code, _, errOut := gsCLI(args...); code != 2 || strings.Count(errOut, "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q; want exit 2 and one line", args, code, errOut)
		}
	}
}

func TestPlanBlockedExits3(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDB(t)
	pgtest.Exec(t, dsn, `CREATE TABLE heap (a int, b text)`)
	spec := filepath.Join(t.TempDir(), "heap.yaml")
	if err := os.WriteFile(spec, []byte("name: heap_v2\ntable: heap\ntarget:\n  ddl: CREATE TABLE heap (a int PRIMARY KEY, b text)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := gsCLI("--dsn", dsn, "plan", "-f", spec)
	if code != 3 || !strings.Contains(out, "BLOCKING no_key") || !strings.Contains(out, "BLOCKED:") ||
		!strings.Contains(errOut, "1 blocking hazard") {
		t.Errorf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	code, out, _ = gsCLI("--dsn", dsn, "plan", "-f", spec, "--json")
	var doc struct {
		Blocking int `json:"blocking"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 3 || doc.Blocking != 1 {
		t.Errorf("--json: exit %d, %+v, %v", code, doc, err)
	}
}

func TestStatusCommand(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDB(t)

	code, out, errOut := gsCLI("--dsn", dsn, "status")
	if code != 0 || !strings.Contains(out, "no migrations") {
		t.Errorf("status on a fresh database: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = gsCLI("--dsn", dsn, "status", "--json")
	if code != 0 || strings.TrimSpace(out) != "{\n  \"schema_version\": 1,\n  \"migrations\": []\n}" {
		t.Errorf("status --json on a fresh database: exit %d\n%s", code, out)
	}
	if code, _, errOut := gsCLI("--dsn", dsn, "status", "nope"); code != 2 || !strings.Contains(errOut, `"nope"`) {
		t.Errorf("status nope: exit %d, %q", code, errOut)
	}

	ctx := t.Context()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := state.Ensure(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if _, err := state.Create(ctx, conn, "orders_v2", "public.orders", "trigger", map[string]string{}); err != nil {
		t.Fatal(err)
	}
	if err := state.Update(ctx, conn, "orders_v2", map[string]any{"rows_copied": int64(500), "rows_estimate": int64(1000)}); err != nil {
		t.Fatal(err)
	}
	if err := state.Record(ctx, conn, "orders_v2", "plan", "ok", 0, "", nil); err != nil {
		t.Fatal(err)
	}
	code, out, _ = gsCLI("--dsn", dsn, "status")
	for _, want := range []string{"orders_v2  public.orders  trigger mode  planned  primary: blue", "500 of ~1,000 rows (50.0%)",
		"verify    not run yet", "last      plan: ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	if code != 0 {
		t.Errorf("exit %d", code)
	}
	code, out, _ = gsCLI("--dsn", dsn, "status", "orders_v2", "--json")
	var doc struct {
		SchemaVersion int `json:"schema_version"`
		Migrations    []struct {
			Name     string `json:"name"`
			State    string `json:"state"`
			Progress struct {
				Percent float64 `json:"percent"`
			} `json:"progress"`
			LastEvent struct {
				Step string `json:"step"`
			} `json:"last_event"`
		} `json:"migrations"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 0 || len(doc.Migrations) != 1 ||
		doc.Migrations[0].State != "planned" || doc.Migrations[0].Progress.Percent != 50 || doc.Migrations[0].LastEvent.Step != "plan" {
		t.Errorf("status --json: exit %d, %+v, %v\n%s", code, doc, err, out)
	}
}

func TestPlanAndStatusHelp(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"plan", "status"} {
		code, out, _ := gsCLI(cmd, "--help")
		if code != 0 || !strings.Contains(out, "Example:") || !strings.Contains(out, "greenswap "+cmd) || !strings.Contains(out, "--json") {
			t.Errorf("%s --help: exit %d\n%s", cmd, code, out)
		}
	}
	if code, out, _ := gsCLI("help", "exit-codes"); code != 0 || !strings.Contains(out, "3  plan") {
		t.Errorf("help exit-codes: exit %d\n%s", code, out)
	}
}

// TestShellCompletion is not parallel: urfave/cli reads the word being
// completed from os.Args, which it sets for the duration.
func TestShellCompletion(t *testing.T) {
	complete := func(args ...string) string {
		saved := os.Args
		defer func() { os.Args = saved }()
		os.Args = append([]string{"greenswap"}, args...)
		code, out, errOut := gsCLI(args...)
		if code != 0 {
			t.Errorf("%v: exit %d, %s", args, code, errOut)
		}
		return out
	}
	out := complete("--generate-bash-completion")
	for _, c := range []string{"plan", "sync", "verify", "cutover", "rollback", "finalize", "status", "help"} {
		if !regexp.MustCompile(`(?m)^` + c + `$`).MatchString(out) {
			t.Errorf("completion lacks %q:\n%s", c, out)
		}
	}
	if out := complete("plan", "--j", "--generate-bash-completion"); !strings.Contains(out, "--json") {
		t.Errorf("plan flag completion:\n%s", out)
	}
	if out := complete("status", "--j", "--generate-bash-completion"); !strings.Contains(out, "--json") {
		t.Errorf("status flag completion:\n%s", out)
	}
}

// TestIndexOnAnotherTableExits2: a target.indexes item naming a table other
// than green is a spec error at its line for plan and sync alike (exit 2),
// and sync touches nothing: no index on that table, blue not adopted.
func TestIndexOnAnotherTableExits2(t *testing.T) {
	t.Parallel()
	dsn := ordersDB(t)
	pgtest.Exec(t, dsn, "CREATE TABLE other (v text)")
	p := filepath.Join(t.TempDir(), "other.yaml")
	body := "name: orders_v2\ntable: public.orders\ntarget:\n  ddl: CREATE TABLE orders (id bigint PRIMARY KEY)\n  indexes:\n    - CREATE INDEX i1 ON other (v)\n"
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"plan", "sync"} {
		code, _, errOut := gsCLI("--dsn", dsn, cmd, "-f", p)
		if code != 2 || strings.Count(errOut, "\n") != 1 ||
			!strings.Contains(errOut, `other.yaml:6: target.indexes[0]: ON "other" is not green ("orders", the table of target.ddl)`) {
			t.Errorf("%s: exit %d, stderr %q; want exit 2 and one line naming other.yaml:6 target.indexes[0]", cmd, code, errOut)
		}
	}
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var idx, schemas int
	var kind string
	if err := conn.QueryRow(t.Context(), `SELECT
		(SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'other'),
		(SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'gs\_%'),
		(SELECT relkind::text FROM pg_class WHERE oid = 'public.orders'::regclass)`).Scan(&idx, &schemas, &kind); err != nil {
		t.Fatal(err)
	}
	if idx != 0 || schemas != 0 || kind != "r" {
		t.Errorf("database changed: %d indexes on public.other, %d gs_ schemas, public.orders relkind %q", idx, schemas, kind)
	}
}
