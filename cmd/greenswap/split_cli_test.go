package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
)

// splitCLIExample is a split example as the CLI test takes it through,
// with what an app role does once it is finalized.
type splitCLIExample struct {
	dir, name, table string
	greens           []string // the greens' names in the app schema
	insert           string   // through the app name, omitting the key, RETURNING id
}

var splitCLIExamples = []splitCLIExample{
	{"split-users", "split_users", "users", []string{"users", "user_profiles", "user_activity"},
		`INSERT INTO public.users (email, name) VALUES ('cli@x', 'cli') RETURNING id`},
	{"archive-orders", "archive_orders", "orders", []string{"orders", "orders_archive"},
		`INSERT INTO public.orders (customer_id) VALUES (7) RETURNING id`},
}

// TestSplitLifecycleCLI: the commands take each split example
// (examples/split-users, examples/archive-orders), whose table an app
// role may write and a reader role may only read, through its lifecycle:
// sync, verify (one section per green and one for the old shape rebuilt
// from the greens, text and --json, exit 0), status, cutover (the greens'
// views named), rollback, cutover, finalize, each exit 0, status following
// the state. After finalize the app keeps working: the table's key has its
// sequence (pg_get_serial_sequence), the app role's insert through the app
// name gets an id past every one there and its reads, updates and deletes
// of every green work; the reader can read every green and write none
// (42501).
func TestSplitLifecycleCLI(t *testing.T) {
	t.Parallel()
	for _, ex := range splitCLIExamples {
		t.Run(ex.dir, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			dsn := pgtest.NewDB(t)
			seed, err := os.ReadFile("../../examples/" + ex.dir + "/seed.sql")
			if err != nil {
				t.Fatal(err)
			}
			pgtest.Exec(t, dsn, string(seed))
			appRole, reader := testkit.RoleName(t, dsn, "cli_app"), testkit.RoleName(t, dsn, "cli_reader")
			testkit.CreateRole(t, dsn, appRole, "GRANT SELECT, INSERT, UPDATE, DELETE ON "+ex.table+" TO {role}",
				"GRANT USAGE ON SEQUENCE "+ex.table+"_id_seq TO {role}")
			testkit.CreateRole(t, dsn, reader, "GRANT SELECT ON "+ex.table+" TO {role}")
			specFile := "../../examples/" + ex.dir + "/spec.yaml"
			step := func(want string, args ...string) string {
				t.Helper()
				code, out, errOut := gsCLI(append([]string{"--dsn", dsn}, args...)...)
				if code != 0 || !strings.Contains(out+errOut, want) {
					t.Fatalf("greenswap %s: exit %d, want 0 and %q in\n%s%s", strings.Join(args, " "), code, want, out, errOut)
				}
				return out
			}
			step("", "sync", "-f", specFile)
			out := step("old shape rebuilt from the greens", "verify", ex.name)
			for _, g := range ex.greens {
				if q := "gs_" + ex.name + "_green." + g; !strings.Contains(out, q) {
					t.Errorf("verify's text lacks %s:\n%s", q, out)
				}
			}
			js := step("", "verify", ex.name, "--json")
			var doc struct {
				OK     bool `json:"ok"`
				Tables []struct {
					Table string `json:"table"`
					OK    bool   `json:"ok"`
				} `json:"tables"`
			}
			if err := json.Unmarshal([]byte(js), &doc); err != nil || !doc.OK || len(doc.Tables) != len(ex.greens)+1 {
				t.Errorf("verify --json: %+v, %v\n%s", doc, err, js)
			}
			step("synced", "status", ex.name)
			step("public."+ex.greens[1], "cutover", ex.name)
			step("cut_over", "status", ex.name)
			step("", "rollback", ex.name)
			step("synced", "status", ex.name)
			step("", "cutover", ex.name, "--skip-verify")
			fin := step("", "finalize", ex.name, "--yes", "--quiet-period", "1s", "--sample-every", "200ms")
			for _, l := range strings.Split(fin, "\n") {
				if strings.HasPrefix(l, "done:") || strings.HasPrefix(l, "  column") {
					t.Log(l) // the lock hold, and what became of blue's sequences
				}
			}
			step("finalized", "status", ex.name)

			app := testkit.ConnectAs(t, dsn, appRole)
			var seq *string
			if err := app.QueryRow(ctx, `SELECT pg_get_serial_sequence('public.`+ex.table+`', 'id')`).Scan(&seq); err != nil || seq == nil {
				t.Errorf("after finalize pg_get_serial_sequence('public.%s', 'id') = %v, %v", ex.table, seq, err)
			}
			var maxID, id int64
			if err := app.QueryRow(ctx, `SELECT max(id) FROM public.`+ex.table).Scan(&maxID); err != nil {
				t.Fatal(err)
			}
			if err := app.QueryRow(ctx, ex.insert).Scan(&id); err != nil || id <= maxID {
				t.Errorf("after finalize the app role's %s: id %d (max %d), %v", ex.insert, id, maxID, err)
			}
			rd := testkit.ConnectAs(t, dsn, reader)
			for _, g := range ex.greens {
				rel := "public." + g
				var n int64
				if err := app.QueryRow(ctx, `SELECT count(*) FROM `+rel).Scan(&n); err != nil {
					t.Errorf("the app role reading %s: %v", rel, err)
				}
				if err := rd.QueryRow(ctx, `SELECT count(*) FROM `+rel).Scan(&n); err != nil {
					t.Errorf("the reader reading %s: %v", rel, err)
				}
				key := "id"
				if _, err := app.Exec(ctx, `SELECT user_id FROM `+rel+` LIMIT 0`); err == nil {
					key = "user_id"
				}
				upd := `UPDATE ` + rel + ` SET ` + key + ` = ` + key + ` WHERE ` + key + ` = (SELECT min(` + key + `) FROM ` + rel + `)`
				del := `DELETE FROM ` + rel + ` WHERE ` + key + ` = (SELECT max(` + key + `) FROM ` + rel + `)`
				for _, w := range []string{upd, del} {
					if _, err := app.Exec(ctx, w); err != nil {
						t.Errorf("the app role after finalize: %s: %v", w, err)
					}
					var pe *pgconn.PgError
					if _, err := rd.Exec(ctx, w); !errors.As(err, &pe) || pe.Code != "42501" {
						t.Errorf("the reader after finalize: %s: %v, want 42501", w, err)
					}
				}
			}
		})
	}
}
