package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// The pgbench figures (issue 12): TPC-B-like, scale 10, 8 clients, the
// migration of pgbench_accounts.abalance int → bigint open in trigger mode
// (synced, before cutover) or streaming in logical mode, against no
// migration, each on a clone of the same freshly initialised database.
const (
	pgbMigration = "pgb"
	pgbScale     = 10
	pgbClients   = 8
	pgbThreads   = 2 // one per core of the machine the bench was written for
	pgbDB        = "bench_pgb"
)

const pgbSpecYAML = `name: pgb
table: public.pgbench_accounts
mode: trigger
target:
  ddl: |
    CREATE TABLE pgbench_accounts (
      aid      integer PRIMARY KEY,
      bid      integer,
      abalance bigint,
      filler   character(84)
    )
reverse:
  abalance: abalance::integer
`

var pgbNames = shadow.NamesFor(pgbMigration, spec.QualifiedName{Schema: "public", Name: "pgbench_accounts"})

// errNoPgbench marks a server bindir without pgbench (the npm builds of
// other majors ship only the server).
var errNoPgbench = errors.New("no pgbench")

// pgbenchTool runs the server's own pgbench against the bench's cluster.
type pgbenchTool struct {
	bin  string
	host string
	port int
	tmp  string
}

func (b *bench) pgbenchTool() (pgbenchTool, error) {
	dir := b.cluster.BinDir
	if dir == "" {
		d, err := pgtest.FindBinDir()
		if err != nil {
			return pgbenchTool{}, fmt.Errorf("%w: %v", errNoPgbench, err)
		}
		dir = d
	}
	bin := filepath.Join(dir, "pgbench")
	if st, err := os.Stat(bin); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return pgbenchTool{}, fmt.Errorf("%w in the server's bindir %s: install the PostgreSQL client tools of that version (e.g. postgresql-contrib / postgresql-client) or point GREENSWAP_PG_BINDIR at a full installation", errNoPgbench, dir)
	}
	return pgbenchTool{bin: bin, host: b.cluster.Host, port: b.cluster.Port, tmp: b.tmp}, nil
}

func (p pgbenchTool) command(ctx context.Context, dbname string, args ...string) *exec.Cmd {
	full := append([]string{"-h", p.host, "-p", strconv.Itoa(p.port), "-U", pgtest.SuperUser}, args...)
	full = append(full, dbname)
	cmd := exec.CommandContext(ctx, p.bin, full...)
	cmd.Env = append(os.Environ(), "PGSSLMODE=disable", "PGAPPNAME=bench-pgbench")
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs pgbench to completion; a non-zero exit is an error carrying the
// end of its output (pgbench exits 2 when a client aborted).
func (p pgbenchTool) run(ctx context.Context, dbname string, args ...string) (string, error) {
	cmd := p.command(ctx, dbname, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("pgbench %s: %w: %s", strings.Join(args, " "), err, oneLine(lastLines(out.String(), 4), 400))
	}
	return out.String(), nil
}

// init fills dbname with pgbench's tables at scale; the data is generated
// server-side (-I G), then vacuumed and given its primary keys.
func (p pgbenchTool) init(ctx context.Context, dbname string, scale int) error {
	_, err := p.run(ctx, dbname, "-i", "-s", strconv.Itoa(scale), "-I", "dtGvp", "-q")
	return err
}

// pgbenchRun is what one pgbench run reported.
type pgbenchRun struct {
	tps      float64
	txns     int64
	failed   int64
	seconds  float64
	protocol string
	lat      latencyStats // from the per-transaction log, when -l
	cpu      float64      // CPU seconds the server used during the run, when probed (aftermath)
}

var (
	tpsRE    = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)`)
	tpsAnyRE = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	txnsRE   = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	failedRE = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
)

func parsePgbench(out string) (pgbenchRun, error) {
	var r pgbenchRun
	m := tpsRE.FindStringSubmatch(out)
	if m == nil {
		m = tpsAnyRE.FindStringSubmatch(out)
	}
	if m == nil {
		return r, fmt.Errorf("pgbench printed no tps line: %s", oneLine(lastLines(out, 4), 300))
	}
	r.tps, _ = strconv.ParseFloat(m[1], 64)
	if m := txnsRE.FindStringSubmatch(out); m != nil {
		r.txns, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := failedRE.FindStringSubmatch(out); m != nil {
		r.failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return r, nil
}

// seconds rounds a window up to pgbench's whole seconds (-T).
func seconds(d time.Duration) int { return max(1, int(math.Ceil(d.Seconds()))) }

// tps runs the TPC-B-like script as fast as 8 clients go for d.
func (p pgbenchTool) tps(ctx context.Context, dbname, protocol string, d time.Duration) (pgbenchRun, error) {
	out, err := p.run(ctx, dbname, "-n", "-c", strconv.Itoa(pgbClients), "-j", strconv.Itoa(pgbThreads),
		"-M", protocol, "-T", strconv.Itoa(seconds(d)))
	if err != nil {
		return pgbenchRun{}, err
	}
	r, err := parsePgbench(out)
	r.protocol, r.seconds = protocol, float64(seconds(d))
	return r, err
}

// fixedRate runs the script at rate tx/s (pgbench -R, no --latency-limit)
// with a per-transaction log, and reads mean and p99 latency from it.
func (p pgbenchTool) fixedRate(ctx context.Context, dbname string, rate float64, d time.Duration, tag string) (pgbenchRun, error) {
	prefix := filepath.Join(p.tmp, "pgbench_"+tag)
	out, err := p.run(ctx, dbname, "-n", "-c", strconv.Itoa(pgbClients), "-j", strconv.Itoa(pgbThreads),
		"-M", "prepared", "-T", strconv.Itoa(seconds(d)), "-R", strconv.FormatFloat(rate, 'f', 0, 64),
		"-l", "--log-prefix", prefix)
	if err != nil {
		return pgbenchRun{}, err
	}
	r, err := parsePgbench(out)
	if err != nil {
		return r, err
	}
	r.protocol, r.seconds = "prepared", float64(seconds(d))
	files, err := filepath.Glob(prefix + ".*")
	if err != nil || len(files) == 0 {
		return r, fmt.Errorf("pgbench -l wrote no per-transaction log at %s.*", prefix)
	}
	r.lat, err = readTxLogs(files)
	for _, f := range files {
		_ = os.Remove(f)
	}
	return r, err
}

// pgbenchWriter is pgbench running in the background with no end of its
// own (the clients writing through a whole logical-mode sequence).
type pgbenchWriter struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan error
}

// start starts clients pgbench clients with protocol, writing until stopped
// (or for at most an hour, should the bench itself be killed).
func (p pgbenchTool) start(ctx context.Context, dbname, protocol string, clients int) (*pgbenchWriter, error) {
	cmd := p.command(ctx, dbname, "-n", "-c", strconv.Itoa(clients), "-j", "1", "-M", protocol, "-T", "3600")
	w := &pgbenchWriter{cmd: cmd, out: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = w.out, w.out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() { w.done <- cmd.Wait() }()
	return w, nil
}

// stop ends the run (pgbench has no graceful stop before -T: SIGINT ends
// it) and returns the client errors it printed, "" for none.
func (w *pgbenchWriter) stop() string {
	select {
	case err := <-w.done: // ended on its own: every client aborted
		return fmt.Sprintf("pgbench ended early (%v): %s", err, oneLine(lastLines(w.out.String(), 3), 300))
	default:
	}
	_ = w.cmd.Process.Signal(os.Interrupt)
	<-w.done
	return clientErrors(w.out.String())
}

// clientErrors summarises the aborted clients pgbench reported.
func clientErrors(out string) string {
	var n int
	var first string
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "aborted") || strings.Contains(line, "error:") {
			n++
			if first == "" {
				first = strings.TrimSpace(line)
			}
		}
	}
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("%d error lines, first: %s", n, oneLine(first, 200))
}
