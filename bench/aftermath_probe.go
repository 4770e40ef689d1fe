package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// What runs on the server during an aftermath window, second by second:
// where the CPU goes (per kind of server process, and the greenswap
// process itself), the WAL written, the slot's lag, checkpoints and the
// load average. Sampled from the bench's own connection and /proc (the
// bench runs on the server's machine), so a figure can be explained, not
// only stated.

// clockTicks is USER_HZ, the unit of /proc/PID/stat's CPU times (100 on
// every Linux the bench runs on).
const clockTicks = 100

type probeSample struct {
	t           time.Time
	load        float64
	walBytes    float64 // pg_current_wal_lsn() − 0/0
	slotLag     float64 // −1: no slot
	checkpoints int64
	cpu         map[string]float64 // seconds of CPU per group, cumulative since the probe started
}

// aftermathProbe samples every second in the background.
type aftermathProbe struct {
	conn    *pgx.Conn
	slot    string
	extra   map[string]int // group name → pid of a process outside the server (the greenswap CLI)
	mu      sync.Mutex
	samples []probeSample
	seen    map[int]float64 // pid → its CPU seconds when first seen
	first   bool
	cancel  context.CancelFunc
	done    chan struct{}
}

func startAftermathProbe(ctx context.Context, dsn, slot string, extra map[string]int) (*aftermathProbe, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &aftermathProbe{conn: conn, slot: slot, extra: extra, seen: map[int]float64{}, first: true, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer conn.Close(context.Background())
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			if s, err := p.sample(ctx); err == nil {
				p.mu.Lock()
				p.samples = append(p.samples, s)
				p.mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return p, nil
}

func (p *aftermathProbe) stop() []probeSample {
	p.cancel()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.samples
}

// procCPU is a process's user + system CPU seconds, -1 when it is gone.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	if i < 0 {
		return -1
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return -1
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / clockTicks
}

func (p *aftermathProbe) sample(ctx context.Context) (probeSample, error) {
	s := probeSample{t: time.Now(), cpu: map[string]float64{}, slotLag: -1}
	if v, err := strconv.ParseFloat(loadAvg(), 64); err == nil {
		s.load = v
	}
	err := p.conn.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8,
		coalesce((SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) FROM pg_replication_slots WHERE slot_name = $1), -1)::float8,
		(SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)`, p.slot).Scan(&s.walBytes, &s.slotLag, &s.checkpoints)
	if err != nil {
		return s, err
	}
	rows, err := p.conn.Query(ctx, `SELECT pid, coalesce(backend_type, ''), coalesce(application_name, '') FROM pg_stat_activity WHERE pid <> pg_backend_pid()`)
	if err != nil {
		return s, err
	}
	type proc struct {
		pid        int
		kind, name string
	}
	procs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (proc, error) {
		var x proc
		err := r.Scan(&x.pid, &x.kind, &x.name)
		return x, err
	})
	if err != nil {
		return s, err
	}
	for name, pid := range p.extra {
		procs = append(procs, proc{pid: pid, kind: "extra", name: name})
	}
	for _, x := range procs {
		c := procCPU(x.pid)
		if c < 0 {
			continue
		}
		base, ok := p.seen[x.pid]
		if !ok {
			// A process there at the first sample counts from then on; one
			// that started later counts its whole life (all of it in the window).
			base = 0
			if p.first {
				base = c
			}
			p.seen[x.pid] = base
		}
		s.cpu[probeGroup(x.kind, x.name)] += c - base
	}
	p.first = false
	return s, nil
}

// probeGroup names the kind of process a CPU figure is summed under.
func probeGroup(kind, app string) string {
	switch {
	case kind == "extra":
		return app
	case kind == "walsender":
		return "walsender"
	case kind == "client backend" && app == "bench-pgbench":
		return "pgbench backends"
	case kind == "client backend":
		return "greenswap backends"
	case strings.HasPrefix(kind, "autovacuum"):
		return "autovacuum"
	default:
		return "background"
	}
}

// probeInterval is one interval of a probed window.
type probeInterval struct {
	cpu      map[string]float64 // CPU seconds per second, per group
	walMBs   float64
	lagMax   float64
	ckpts    int64
	loadLast float64
}

// intervals cuts the samples into intervals of every from the first one.
// A process seen in one sample and gone by the next loses its last second:
// the series is an explanation, not a figure.
func probeIntervals(samples []probeSample, every time.Duration) []probeInterval {
	if len(samples) < 2 {
		return nil
	}
	t0 := samples[0].t
	var out []probeInterval
	prev := samples[0]
	for _, s := range samples[1:] {
		i := int(s.t.Sub(t0) / every)
		for len(out) <= i {
			out = append(out, probeInterval{cpu: map[string]float64{}, lagMax: -1})
		}
		iv := &out[i]
		dt := s.t.Sub(prev.t).Seconds()
		if dt <= 0 {
			continue
		}
		secs := every.Seconds()
		for g, c := range s.cpu {
			if d := c - prev.cpu[g]; d > 0 {
				iv.cpu[g] += d / secs
			}
		}
		iv.walMBs += (s.walBytes - prev.walBytes) / 1e6 / secs
		iv.lagMax = max(iv.lagMax, s.slotLag)
		iv.ckpts += s.checkpoints - prev.checkpoints
		iv.loadLast = s.load
		prev = s
	}
	return out
}

// describe is one interval in a line: CPU by group (cores), WAL, lag.
func (iv probeInterval) describe() string {
	groups := make([]string, 0, len(iv.cpu))
	for g := range iv.cpu {
		groups = append(groups, g)
	}
	slices.Sort(groups)
	var cpu []string
	for _, g := range groups {
		if iv.cpu[g] >= 0.01 {
			cpu = append(cpu, fmt.Sprintf("%s %.2f", g, iv.cpu[g]))
		}
	}
	s := fmt.Sprintf("cpu cores: %s; wal %.1f MB/s", strings.Join(cpu, ", "), iv.walMBs)
	if iv.lagMax >= 0 {
		s += "; slot lag max " + fmtBytes(iv.lagMax)
	}
	if iv.ckpts > 0 {
		s += fmt.Sprintf("; %d checkpoint(s)", iv.ckpts)
	}
	return s + fmt.Sprintf("; load %.2f", iv.loadLast)
}

// cpuSeconds is the CPU every probed process used from the first sample to
// the last (the server's processes and the greenswap process).
func cpuSeconds(samples []probeSample) float64 {
	if len(samples) < 2 {
		return 0
	}
	var sum float64
	for g, c := range samples[len(samples)-1].cpu {
		sum += c - samples[0].cpu[g]
	}
	return sum
}

// probed runs fn with the probe sampling, and returns its run with the CPU
// the server (and extra) used meanwhile, and the probe's samples.
func probed(ctx context.Context, dsn string, extra map[string]int, fn func() (pgbenchRun, error)) (pgbenchRun, []probeSample, error) {
	p, err := startAftermathProbe(ctx, dsn, pgbNames.Slot, extra)
	if err != nil {
		return pgbenchRun{}, nil, err
	}
	r, err := fn()
	samples := p.stop()
	r.cpu = cpuSeconds(samples)
	return r, samples, err
}

// cpuPerTx is the server CPU per transaction logged, in ms.
func cpuPerTx(r pgbenchRun) float64 {
	if r.lat.n == 0 {
		return 0
	}
	return r.cpu * 1000 / float64(r.lat.n)
}
