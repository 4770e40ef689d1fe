package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// These tests need no database: every case fails (or prints) before connecting.

func runCutoverCLI(args ...string) (int, string, string) {
	var out, errw bytes.Buffer
	code := run(append([]string{"greenswap", "--dsn", "postgres://nobody@127.0.0.1:1/none?connect_timeout=1"}, args...), &out, &errw)
	return code, out.String(), errw.String()
}

func TestSwapCommandsHaveUsageAndExample(t *testing.T) {
	for cmd, flags := range map[string][]string{
		"cutover":  {"--lock-timeout", "--max-attempts", "--skip-verify", "--max-stream-backlog", "--json"},
		"rollback": {"--lock-timeout", "--max-attempts", "--json"},
		"finalize": {"--quiet-period", "--force", "--yes", "--json", "--lock-timeout", "--max-attempts"},
	} {
		code, out, _ := runCutoverCLI(cmd, "--help")
		if code != 0 || !strings.Contains(out, "Example:") || !strings.Contains(out, "greenswap "+cmd+" orders_v2") || !strings.Contains(out, "Exit codes:") {
			t.Errorf("%s --help: exit %d\n%s", cmd, code, out)
		}
		for _, f := range flags {
			if !strings.Contains(out, f) {
				t.Errorf("%s --help lacks %s", cmd, f)
			}
		}
	}
	_, out, _ := runCutoverCLI("cutover", "--help")
	if !strings.Contains(out, "(default: 2s)") || !strings.Contains(out, "(default: 10)") || !strings.Contains(out, `(default: "64.0 MB")`) {
		t.Errorf("cutover --help does not show the defaults:\n%s", out)
	}
	_, out, _ = runCutoverCLI("finalize", "--help")
	if !strings.Contains(out, "(default: 10m0s)") || !strings.Contains(out, "irreversible") {
		t.Errorf("finalize --help:\n%s", out)
	}
}

func TestSwapCommandsBadInputExits2(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"cutover"}, "cutover takes one migration name"},
		{[]string{"rollback", "a", "b"}, "rollback takes one migration name"},
		{[]string{"finalize"}, "finalize takes one migration name"},
		{[]string{"cutover", "x", "--lock-timeout", "soon"}, "lock-timeout"},
		{[]string{"cutover", "x", "--max-stream-backlog", "lots"}, "--max-stream-backlog"},
		{[]string{"finalize", "x"}, "pass --yes"},
	} {
		code, _, stderr := runCutoverCLI(tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 containing %q", tc.args, code, stderr, tc.want)
		}
	}
	// --json: the error is a JSON document on stdout too.
	code, out, _ := runCutoverCLI("finalize", "x", "--json")
	var doc struct {
		Error    struct{ Message string }
		ExitCode int `json:"exit_code"`
	}
	if code != 2 || json.Unmarshal([]byte(out), &doc) != nil || doc.ExitCode != 2 || !strings.Contains(doc.Error.Message, "--yes") {
		t.Errorf("finalize --json without --yes: exit %d, %q", code, out)
	}
}

func TestConfirmWantsTheName(t *testing.T) {
	var w bytes.Buffer
	ok, err := confirmOn(&w, strings.NewReader("orders_v2\n"), "orders_v2")("finalize?")
	if !ok || err != nil || !strings.Contains(w.String(), "Type the migration name (orders_v2)") {
		t.Errorf("typed the name: %v %v %q", ok, err, w.String())
	}
	if ok, _ := confirmOn(&w, strings.NewReader("yes\n"), "orders_v2")("finalize?"); ok {
		t.Error("confirmed without the name")
	}
	if _, err := confirmOn(&w, strings.NewReader(""), "orders_v2")("finalize?"); err == nil {
		t.Error("no error on an empty stdin")
	}
}
