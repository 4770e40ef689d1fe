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

// TestGuardFlagsRefuseZero (break7 finding 06): every guard flag of sync
// and of cutover given as zero, which silently meant its default (for
// --guard: no guard window at all), exits 2 before connecting, one line
// naming the flag and what to write.
func TestGuardFlagsRefuseZero(t *testing.T) {
	spec := filepath.Join(t.TempDir(), "s.yaml")
	if err := os.WriteFile(spec, []byte("name: o\ntable: orders\ntarget:\n  ddl: CREATE TABLE orders (id int PRIMARY KEY)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	durations := []string{"--guard-probe-timeout", "--guard-lock-wait-time", "--guard-replica-lag"}
	numbers := []string{"--guard-rollback-rate", "--guard-deadlocks", "--guard-latency-ratio", "--guard-lock-waits"}
	var cases [][]string
	for _, f := range append([]string{"--guard-max-open"}, durations...) {
		cases = append(cases, []string{"sync", "-f", spec, f, "0s"})
	}
	for _, f := range numbers {
		cases = append(cases, []string{"sync", "-f", spec, f, "0"})
	}
	cases = append(cases, []string{"cutover", "x", "--guard", "0s"}, []string{"cutover", "x", "--guard", "0"},
		[]string{"cutover", "x", "--guard", "1m", "--guard-every", "0s"})
	for _, f := range durations {
		cases = append(cases, []string{"cutover", "x", "--guard", "1m", f, "0s"})
	}
	for _, f := range numbers {
		cases = append(cases, []string{"cutover", "x", "--guard", "1m", f, "0"})
	}
	for _, args := range cases {
		flag := args[len(args)-2]
		code, _, stderr := syncRunCLI(args...)
		line := strings.TrimSpace(stderr)
		if code != 2 || strings.Contains(line, "\n") || !strings.Contains(line, flag+" 0") || !strings.Contains(line, "zero is not a value here") ||
			!strings.Contains(line, "e.g.") {
			t.Errorf("%q: exit %d, stderr %q; want exit 2, one line naming %s and what to write", args, code, stderr, flag)
		}
	}
}
