package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSyncGuardFlags: the --guard-* flags are documented in sync --help
// with their defaults, and a bad value exits 2 naming the flag before
// anything connects. (Their effect on a real sync: runner's
// TestSyncBreaker* tests, guard/README.md.)
func TestSyncGuardFlags(t *testing.T) {
	_, out, _ := syncRunCLI("sync", "--help")
	for _, f := range []string{"--guard-rollback-rate", "--guard-deadlocks", "--guard-lock-waits", "--guard-lock-wait-time",
		"--guard-latency-ratio", "--guard-replica-lag", "--guard-probe-sql", "--guard-probe-cmd", "--guard-probe-timeout",
		"--guard-max-open", "else 30s", "else 5m", "exit code 6"} {
		if !strings.Contains(out, f) {
			t.Errorf("sync --help lacks %s", f)
		}
	}
	spec := filepath.Join(t.TempDir(), "s.yaml")
	if err := os.WriteFile(spec, []byte("name: o\ntable: orders\ntarget:\n  ddl: CREATE TABLE orders (id int PRIMARY KEY)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--guard-rollback-rate", "1.5"}, "--guard-rollback-rate must be a share between 0 and 1"},
		{[]string{"--guard-latency-ratio", "0.5"}, "--guard-latency-ratio must be above 1"},
		{[]string{"--guard-probe-sql", " "}, "--guard-probe-sql is blank"},
		{[]string{"--guard-probe-timeout", "-1s"}, "--guard-probe-timeout must not be negative"},
		{[]string{"--guard-max-open", "soon"}, "guard-max-open"},
	} {
		code, _, stderr := syncRunCLI(append([]string{"sync", "-f", spec}, tc.args...)...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 containing %q", tc.args, code, stderr, tc.want)
		}
	}
}
