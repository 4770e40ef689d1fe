package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/pgtest"
)

func TestParseSize(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{
		"0": 0, "4096": 4096, "128MB": 128 << 20, "128 MB": 128 << 20, "128.0 MB": 128 << 20, "1.5GiB": 3 << 29,
		"64kB": 64 << 10, "2g": 2 << 30, "10 B": 10,
	} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "lots", "-1MB", "12 parsecs", "MB", "1e400"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

// The CLI's side of a logical stream's backlog: status prints it with its
// trend and catch-up (human and --json), and cutover above
// --max-stream-backlog exits 2 with one line naming the backlog and the
// bound (and, with --json, both as fields).
func TestLogicalBacklogCommands(t *testing.T) {
	t.Parallel()
	dsn := ordersDB(t)
	name := fmt.Sprintf("bkcli%d", os.Getpid()%100000) // slot names are cluster-wide
	raw, err := os.ReadFile(exampleSpec)
	if err != nil {
		t.Fatal(err)
	}
	spec := strings.Replace(strings.Replace(string(raw), "name: orders_v2", "name: "+name, 1), "mode: trigger", "mode: logical", 1)
	file := filepath.Join(t.TempDir(), "spec.yaml")
	if err := os.WriteFile(file, []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := gsCLI("--dsn", dsn, "sync", "-f", file); code != 0 {
		t.Fatalf("sync: exit %d\n%s%s", code, out, errOut)
	}
	t.Cleanup(func() { gsCLI("--dsn", dsn, "rollback", name) }) // drops the slot
	if code, out, errOut := gsCLI("--dsn", dsn, "verify", name); code != 0 {
		t.Fatalf("verify: exit %d\n%s%s", code, out, errOut)
	}
	pgtest.Exec(t, dsn, `UPDATE orders SET amount = amount + 1`) // 100k rows nothing streams

	code, out, errOut := gsCLI("--dsn", dsn, "status", name, "--sample", "1200ms")
	if code != 0 || !strings.Contains(out, "  backlog   ") || !strings.Contains(out, "catch-up never: nothing streams the slot") {
		t.Errorf("status: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = gsCLI("--dsn", dsn, "status", name, "--json", "--sample", "1200ms")
	var doc struct {
		Migrations []struct {
			StreamBacklog *struct {
				Bytes      int64    `json:"bytes"`
				Trend      string   `json:"trend"`
				Never      bool     `json:"never"`
				ETASeconds *float64 `json:"eta_seconds"`
				Streaming  bool     `json:"streaming"`
			} `json:"stream_backlog"`
		} `json:"migrations"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 0 || len(doc.Migrations) != 1 {
		t.Fatalf("status --json: exit %d, %v\n%s", code, err, out)
	}
	b := doc.Migrations[0].StreamBacklog
	if b == nil || b.Bytes < 1<<20 || b.Trend == "unknown" || b.Trend == "caught_up" || !b.Never || b.ETASeconds != nil || b.Streaming {
		t.Errorf("status --json backlog: %+v\n%s", b, out)
	}

	code, _, errOut = gsCLI("--dsn", dsn, "cutover", name, "--max-stream-backlog", "1MB")
	if code != 2 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 ||
		!strings.Contains(errOut, "--max-stream-backlog 1.0 MB") || !strings.Contains(errOut, "sync -f FILE --watch") {
		t.Errorf("cutover above the bound: exit %d, stderr %q", code, errOut)
	}
	code, out, _ = gsCLI("--dsn", dsn, "cutover", name, "--max-stream-backlog", "1MB", "--json")
	var refusal struct {
		Error struct {
			StreamBacklog *struct {
				Bytes int64 `json:"bytes"`
			} `json:"stream_backlog"`
			MaxStreamBacklog int64 `json:"max_stream_backlog"`
		} `json:"error"`
		ExitCode int `json:"exit_code"`
	}
	if err := json.Unmarshal([]byte(out), &refusal); err != nil || code != 2 || refusal.ExitCode != 2 ||
		refusal.Error.MaxStreamBacklog != 1<<20 || refusal.Error.StreamBacklog == nil || refusal.Error.StreamBacklog.Bytes <= 1<<20 {
		t.Errorf("cutover --json above the bound: exit %d, %v\n%s", code, err, out)
	}
	if code, out, _ := gsCLI("--dsn", dsn, "status", name, "--json", "--sample", "0"); code != 0 || !strings.Contains(out, `"state": "synced"`) {
		t.Errorf("after the refusals: exit %d\n%s", code, out)
	}
}
