package runner

import (
	"context"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// TestVolatilityPlanAndVerifyAgree: what plan's volatile_mapping hazard says
// verify skips is exactly what verify skips, naming the same functions
// (issue 13: plan and verify had two detectors). The columns cover the
// session-dependent built-ins (inet_client_port(), pg_trigger_depth(),
// current_setting()), a VOLATILE user function reached through an operator
// (no function call in the text: verify's old word scan compared it, and
// found differences), and an IMMUTABLE user random(int) in the app schema
// (verify's old scan skipped it for pg_catalog.random's volatility).
func TestVolatilityPlanAndVerifyAgree(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `
CREATE TABLE va (id int PRIMARY KEY, body text);
INSERT INTO va SELECT g, 'b' || g FROM generate_series(1, 200) g;
CREATE FUNCTION public.jitter_add(a int, b int) RETURNS int LANGUAGE sql VOLATILE
  AS 'SELECT a + b + (pg_catalog.random() * 1000000)::int';
CREATE OPERATOR public.%+% (LEFTARG = int, RIGHTARG = int, FUNCTION = public.jitter_add);
CREATE FUNCTION public.random(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x * 7';`)
	env := coEnv(t, dsn)
	s, err := spec.ParseSpec([]byte(`
name: vagree
table: public.va
target:
  ddl: CREATE TABLE va (id int PRIMARY KEY, body text, port int, depth int, app text, bump int, r int)
forward:
  port: inet_client_port()
  depth: pg_trigger_depth()
  app: current_setting('application_name')
  bump: id %+% 1
  r: random(id)
`), "va.yaml", "yaml")
	if err != nil {
		t.Fatal(err)
	}
	plan, err := Plan(ctx, env, s, PlanOptions{})
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	planCalls := regexp.MustCompile(`^forward\.(\w+) calls (.*): its value differs`)
	planSkips := map[string]string{}
	for _, h := range plan.Hazards {
		if h.Code != shadow.HazardVolatileMapping {
			continue
		}
		m := planCalls.FindStringSubmatch(h.Message)
		if m == nil {
			t.Fatalf("volatile_mapping message %q: no column and functions", h.Message)
		}
		planSkips[m[1]] = m[2]
	}

	if _, err := Sync(ctx, env, s, SyncOptions{}); err != nil {
		t.Fatalf("sync: %v", err)
	}
	// Rows written through the sync trigger (depth 1, another session's
	// port and application_name) as well as by the backfill.
	pgtest.Exec(t, dsn, `UPDATE va SET body = body || '!' WHERE id % 3 = 0; INSERT INTO va SELECT g, 'n' FROM generate_series(201, 260) g`)
	res, err := Verify(ctx, env, s.Name, VerifyOptions{})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	verifyCalls := regexp.MustCompile(` calls (.*); its value cannot be recomputed`)
	verifySkips := map[string]string{}
	for _, e := range res.Excluded {
		if e.Reason != "volatile" {
			continue
		}
		m := verifyCalls.FindStringSubmatch(e.Detail)
		if m == nil {
			t.Fatalf("excluded %s: detail %q names no functions", e.Column, e.Detail)
		}
		verifySkips[e.Column] = m[1]
	}

	want := map[string]bool{"port": true, "depth": true, "app": true, "bump": true, "r": false}
	for col, skipped := range want {
		p, inPlan := planSkips[col]
		v, inVerify := verifySkips[col]
		if inPlan != skipped || inVerify != skipped {
			t.Errorf("column %s: plan says verify skips it: %v (%q), verify skips it: %v (%q), want %v", col, inPlan, p, inVerify, v, skipped)
			continue
		}
		if p != v {
			t.Errorf("column %s: plan names %q, verify names %q", col, p, v)
		}
		if skipped == slices.Contains(res.Compared, col) {
			t.Errorf("column %s: compared %v", col, res.Compared)
		}
	}
	if !strings.Contains(planSkips["bump"], "jitter_add") {
		t.Errorf("bump: plan names %q, want the operator's function", planSkips["bump"])
	}
	if !res.OK {
		t.Errorf("verify found %d differences (a volatile column compared?): %+v", res.DifferenceCount, res.Differences)
	}
}
