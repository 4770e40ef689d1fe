package main

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/pgtest"
)

// TestSplitLifecycleCLI: the commands take examples/split-users through
// its lifecycle: sync, verify (one section per green and one for the old
// shape rebuilt from the greens, text and --json, exit 0), status, cutover
// (the greens' views named), rollback, cutover, finalize, each exit 0,
// status following the state.
func TestSplitLifecycleCLI(t *testing.T) {
	t.Parallel()
	dsn := pgtest.NewDB(t)
	seed, err := os.ReadFile("../../examples/split-users/seed.sql")
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, string(seed))
	specFile := "../../examples/split-users/spec.yaml"
	step := func(want string, args ...string) string {
		t.Helper()
		code, out, errOut := gsCLI(append([]string{"--dsn", dsn}, args...)...)
		if code != 0 || !strings.Contains(out+errOut, want) {
			t.Fatalf("greenswap %s: exit %d, want 0 and %q in\n%s%s", strings.Join(args, " "), code, want, out, errOut)
		}
		return out
	}
	step("", "sync", "-f", specFile)
	out := step("old shape rebuilt from the greens", "verify", "split_users")
	for _, g := range []string{"gs_split_users_green.users", "gs_split_users_green.user_profiles", "gs_split_users_green.user_activity"} {
		if !strings.Contains(out, g) {
			t.Errorf("verify's text lacks %s:\n%s", g, out)
		}
	}
	js := step("", "verify", "split_users", "--json")
	var doc struct {
		OK     bool `json:"ok"`
		Tables []struct {
			Table string `json:"table"`
			OK    bool   `json:"ok"`
		} `json:"tables"`
	}
	if err := json.Unmarshal([]byte(js), &doc); err != nil || !doc.OK || len(doc.Tables) != 4 {
		t.Errorf("verify --json: %+v, %v\n%s", doc, err, js)
	}
	step("synced", "status", "split_users")
	step("public.user_profiles", "cutover", "split_users")
	step("cut_over", "status", "split_users")
	step("", "rollback", "split_users")
	step("synced", "status", "split_users")
	step("", "cutover", "split_users", "--skip-verify")
	// finalize of a split is held back (break10 01–02): exit 2, one line,
	// the migration still cut over.
	code, _, errOut := gsCLI("--dsn", dsn, "finalize", "split_users", "--yes", "--quiet-period", "1s", "--sample-every", "200ms")
	if code != 2 || !strings.Contains(errOut, "finalize of a split is held back") || len(strings.Split(strings.TrimSpace(errOut), "\n")) != 1 {
		t.Errorf("finalize of a split: exit %d, stderr %q; want exit 2, one line saying it is held back", code, errOut)
	}
	step("cut_over", "status", "split_users")
}
