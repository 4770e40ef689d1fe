package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	gosync "sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/exitcode"
)

// lockedBuffer is a bytes.Buffer the CLI writes while the test reads it.
type lockedBuffer struct {
	mu gosync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// metricsLogAddr finds the endpoint's address in the CLI's JSON log.
func metricsLogAddr(log string) string {
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		var line struct{ Message, Addr string }
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Message == "serving Prometheus metrics" {
			return line.Addr
		}
	}
	return ""
}

// metricsScrape returns the greenswap_ samples of one scrape, by series
// (`name{label="value",...}` as exposed).
func metricsScrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s\n%s", resp.Status, body)
	}
	out := map[string]float64{}
	for _, l := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(l, "greenswap_") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			t.Fatalf("scrape line %q: %v", l, err)
		}
		out[l[:i]] = v
	}
	return out
}

// sync --watch --metrics-addr serves the migration's figures while it
// runs, logs where, and stops serving when the command ends (Ctrl-C,
// exit 0).
func TestSyncMetricsEndpoint(t *testing.T) {
	t.Parallel()
	dsn := ordersDB(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr lockedBuffer
	done := make(chan error, 1)
	go func() {
		// newApp, not run: run listens for SIGINT itself; cancel is the test's Ctrl-C.
		done <- newApp(&stdout, &stderr).RunContext(ctx, []string{"greenswap", "--dsn", dsn, "--log-format", "json",
			"sync", "-f", exampleSpec, "--watch", "--metrics-addr", "127.0.0.1:0"})
	}()
	var addr string
	deadline := time.Now().Add(10 * time.Second)
	for addr == "" {
		if time.Now().After(deadline) {
			t.Fatalf("no \"serving Prometheus metrics\" log line with the address:\n%s", stderr.String())
		}
		select {
		case err := <-done:
			t.Fatalf("sync ended: %v\n%s", err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		addr = metricsLogAddr(stderr.String())
	}
	url := "http://" + addr + "/metrics"
	var s map[string]float64
	deadline = time.Now().Add(60 * time.Second)
	for s["greenswap_state{migration=\"orders_v2\",state=\"synced\"}"] != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("the scrape never said synced: %v\n%s", s, stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
		s = metricsScrape(t, url)
	}
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var recorded int64
	if err := conn.QueryRow(context.Background(), `SELECT rows_copied FROM greenswap.migrations WHERE name = 'orders_v2'`).Scan(&recorded); err != nil {
		t.Fatal(err)
	}
	for series, want := range map[string]float64{
		`greenswap_scrape_error{migration="orders_v2"}`:         0,
		`greenswap_backfill_rows_copied{migration="orders_v2"}`: float64(recorded),
		`greenswap_backfill_done{migration="orders_v2"}`:        1,
		`greenswap_phase{migration="orders_v2",phase="none"}`:   1,
		`greenswap_paused{migration="orders_v2"}`:               0,
	} {
		if got, ok := s[series]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	if recorded != 100000 {
		t.Errorf("rows_copied %d, want 100000", recorded)
	}

	cancel()
	select {
	case err := <-done:
		if code := exitcode.Of(err); code != exitcode.OK {
			t.Fatalf("sync --watch after Ctrl-C: exit %d (%v), want 0", code, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("sync --watch did not end after Ctrl-C")
	}
	if resp, err := http.Get(url); err == nil {
		resp.Body.Close()
		t.Error("the endpoint still answers after sync ended")
	}
}

// An address already in use is bad input: exit 2, and nothing was changed.
func TestSyncMetricsAddrInUse(t *testing.T) {
	t.Parallel()
	dsn := ordersDB(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	code, _, stderr := gsCLI("--dsn", dsn, "sync", "-f", exampleSpec, "--watch", "--metrics-addr", ln.Addr().String())
	if code != 2 || !strings.Contains(stderr, "address already in use") || !strings.Contains(stderr, "--metrics-addr") {
		t.Fatalf("exit %d, stderr %q; want exit 2 naming the address in use", code, stderr)
	}
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var state, kind *string
	if err := conn.QueryRow(context.Background(),
		`SELECT to_regnamespace('greenswap')::text, (SELECT relkind::text FROM pg_class WHERE oid = to_regclass('public.orders'))`).Scan(&state, &kind); err != nil {
		t.Fatal(err)
	}
	if state != nil || kind == nil || *kind != "r" {
		t.Errorf("something changed: greenswap schema %v, public.orders relkind %v", state, kind)
	}
}
