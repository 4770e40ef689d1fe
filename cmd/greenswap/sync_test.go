package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/runner"
)

// These tests need no database: every case fails (or prints) before connecting.

func syncRunCLI(args ...string) (int, string, string) {
	var out, errw bytes.Buffer
	code := run(append([]string{"greenswap"}, args...), &out, &errw)
	return code, out.String(), errw.String()
}

func TestSyncCommandsHaveUsageAndExample(t *testing.T) {
	for _, c := range []string{"sync", "pause", "resume"} {
		code, out, _ := syncRunCLI(c, "--help")
		if code != 0 || !strings.Contains(out, "Example:") || !strings.Contains(out, "greenswap "+c) {
			t.Errorf("%s --help: exit %d\n%s", c, code, out)
		}
	}
	_, out, _ := syncRunCLI("sync", "--help")
	for _, f := range []string{"--file", "--watch", "--batch-size", "--target-batch-time", "--max-replica-lag", "--lock-timeout", "--metrics-addr", "--nice-ratio"} {
		if !strings.Contains(out, f) {
			t.Errorf("sync --help lacks %s", f)
		}
	}
}

func TestSyncBadInputExits2(t *testing.T) {
	spec := filepath.Join(t.TempDir(), "s.yaml")
	os.WriteFile(spec, []byte("name: o\ntable: orders\nbogus: 1\ntarget:\n  ddl: CREATE TABLE orders (id int PRIMARY KEY)\n"), 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"sync"}, "sync -f FILE"},
		{[]string{"sync", "-f", "/nonexistent/spec.yaml"}, "cannot read the spec file"},
		{[]string{"sync", "-f", spec}, "s.yaml:3"},
		{[]string{"sync", "-f", spec, "--batch-size", "-5"}, "--batch-size must not be negative"},
		{[]string{"sync", "-f", spec, "--nice-ratio", "-1"}, "--nice-ratio must not be negative"},
		{[]string{"sync", "-f", spec, "--nice-ratio", "50"}, "--nice-ratio 50 is above 20"},
		{[]string{"sync", "-f", spec, "extra"}, "takes no arguments"},
		{[]string{"sync", "-f", spec, "--lock-timeout", "soon"}, "lock-timeout"},
		{[]string{"pause"}, "one migration name"},
		{[]string{"resume", "a", "b"}, "one migration name"},
	} {
		code, _, stderr := syncRunCLI(tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 containing %q", tc.args, code, stderr, tc.want)
		}
	}
}

func TestSyncLiveDisplay(t *testing.T) {
	var b bytes.Buffer
	d := &syncLiveDisplay{w: &b}
	p := runner.SyncProgress{Migration: "orders_v2", AppTable: "public.orders", State: state.Syncing, Phase: "backfill",
		RowsCopied: 1234567, RowsEstimate: 4000000, Percent: 30.86, RowsPerSec: 52311, ETA: 52 * time.Second,
		BatchSize: 8000, Throttle: "paused (greenswap resume orders_v2)", Captured: 12345}
	d.draw(p)
	first := b.String()
	for _, want := range []string{"orders_v2", "phase backfill", "1,234,567 / ~4,000,000 rows", "30.9%", "52,311 rows/s", "ETA 52s",
		"batch 8,000 rows", "throttle  paused", "12,345 changes captured"} {
		if !strings.Contains(first, want) {
			t.Errorf("display lacks %q:\n%s", want, first)
		}
	}
	if strings.Contains(first, "\x1b[5A") {
		t.Error("the first frame moves the cursor up")
	}
	b.Reset()
	d.draw(p)
	if !strings.HasPrefix(b.String(), "\x1b[5A") {
		t.Errorf("the second frame does not redraw in place: %q", b.String()[:10])
	}
}

func TestSyncThousands(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -12345: "-12,345"} {
		if got := thousands(n); got != want {
			t.Errorf("%d: %q, want %q", n, got, want)
		}
	}
}
