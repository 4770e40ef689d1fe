package main

import (
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/pgtest"
)

// plan lists the connecting role's privileges (text and --json); a role
// lacking one exits 2 with one line naming it, and --json carries what is
// missing.
func TestPlanPrivilegesCommand(t *testing.T) {
	t.Parallel()
	dsn := ordersDB(t)
	u, _ := url.Parse(dsn)
	dbname := strings.TrimPrefix(u.Path, "/")
	role := "planner_" + dbname
	pgtest.Exec(t, dsn, `CREATE ROLE `+role+` LOGIN; GRANT CREATE ON SCHEMA public TO `+role+`; ALTER TABLE orders OWNER TO `+role)
	t.Cleanup(func() { // t's context is cancelled by now: pgtest.Exec would not connect
		ctx := context.Background()
		if c, err := pgx.Connect(ctx, dsn); err == nil {
			_, _ = c.Exec(ctx, `DROP OWNED BY `+role+`; DROP ROLE `+role)
			c.Close(ctx)
		}
	})
	u.User = url.User(role)
	roleDSN := u.String()

	code, out, errOut := gsCLI("--dsn", roleDSN, "plan", "-f", exampleSpec)
	if code != 2 {
		t.Fatalf("plan without CREATE on the database: exit %d, want 2\n%s\n%s", code, out, errOut)
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if len(lines) != 1 || !strings.Contains(errOut, "CREATE on database "+dbname) || !strings.Contains(errOut, `GRANT CREATE ON DATABASE "`+dbname+`" TO "`+role+`"`) {
		t.Errorf("stderr should be one line naming the privilege and the grant:\n%s", errOut)
	}
	code, out, _ = gsCLI("--dsn", roleDSN, "plan", "-f", exampleSpec, "--json")
	var doc struct {
		Error struct {
			Missing []struct {
				Code, Fix string
			} `json:"missing_privileges"`
		} `json:"error"`
		ExitCode int `json:"exit_code"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 2 || doc.ExitCode != 2 {
		t.Fatalf("plan --json: exit %d, %v\n%s", code, err, out)
	}
	if len(doc.Error.Missing) != 1 || doc.Error.Missing[0].Code != "create_on_database" {
		t.Errorf("missing_privileges = %+v", doc.Error.Missing)
	}

	// Every privilege: finalize's usage check also needs to see other
	// roles' sessions (read_all_stats).
	pgtest.Exec(t, dsn, `GRANT CREATE ON DATABASE `+dbname+` TO `+role+`; GRANT pg_read_all_stats TO `+role)
	code, out, errOut = gsCLI("--dsn", roleDSN, "plan", "-f", exampleSpec)
	if code != 0 || !strings.Contains(out, "Privileges of the connecting role") || strings.Contains(out, "MISSING") {
		t.Fatalf("plan with the privileges: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, _ = gsCLI("--dsn", roleDSN, "plan", "-f", exampleSpec, "--json")
	var ok struct {
		Privileges []struct {
			Code    string
			Granted bool
			Steps   []string
		} `json:"privileges"`
	}
	if err := json.Unmarshal([]byte(out), &ok); err != nil || code != 0 || len(ok.Privileges) < 4 {
		t.Fatalf("plan --json privileges: exit %d, %v: %+v", code, err, ok.Privileges)
	}
	for _, p := range ok.Privileges {
		if !p.Granted || len(p.Steps) == 0 {
			t.Errorf("privilege %+v", p)
		}
	}
}
