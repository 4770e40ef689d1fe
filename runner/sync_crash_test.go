package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
)

// buildCLI builds cmd/greenswap into a temporary directory.
func syncBuildCLI(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "greenswap")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/greenswap").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

type syncCLIRun struct {
	cmd            *exec.Cmd
	stdout, stderr syncLockedBuffer
	done           chan error
}

// syncLockedBuffer is a bytes.Buffer safe to read while the process writes it.
type syncLockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func syncStartCLI(t *testing.T, bin, dsn string, args ...string) *syncCLIRun {
	t.Helper()
	r := &syncCLIRun{done: make(chan error, 1)}
	r.cmd = exec.Command(bin, append([]string{"--dsn", dsn, "--log-format", "json"}, args...)...)
	r.cmd.Stdout, r.cmd.Stderr = &r.stdout, &r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.done <- r.cmd.Wait() }()
	t.Cleanup(func() {
		if r.cmd.ProcessState == nil {
			r.cmd.Process.Kill()
		}
	})
	return r
}

// wait returns the exit code (failing the test after timeout).
func (r *syncCLIRun) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case err := <-r.done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(timeout):
		r.cmd.Process.Kill()
		t.Fatalf("greenswap did not finish within %s; stderr:\n%s", timeout, r.stderr.String())
		return -1
	}
}

func syncWriteSpec(t *testing.T, yaml string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "spec.yaml")
	if err := os.WriteFile(p, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// greenswap sync is killed with SIGKILL at random moments (during adopt,
// the backfill, the index builds), with an application workload running
// throughout, and re-run until it finishes: green must equal blue, the
// migration must be synced, and green's indexes valid.
func TestSyncCrashResume(t *testing.T) {
	t.Parallel()
	bin := syncBuildCLI(t)
	for _, seed := range syncSeeds(t, 2) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			pool, dsn := syncNewDB(t)
			pgtest.Exec(t, dsn, syncOrdersTable(30000, false))
			spec := syncWriteSpec(t, syncOrdersSpec("c", false))
			app := startSyncWorkload(t, dsn, "orders", false, 2, seed)
			rng := rand.New(rand.NewPCG(seed, 99))
			// When to kill each run: as soon as the row exists (adopt is
			// next or under way), as soon as the backfill starts, at random
			// moments, and as soon as the index builds start.
			phaseIs := func(ph string) func(*state.Migration) bool {
				return func(m *state.Migration) bool { return m != nil && m.Phase == ph }
			}
			random := func() func(*state.Migration) bool {
				at := time.Now().Add(time.Duration(50+rng.IntN(700)) * time.Millisecond)
				return func(*state.Migration) bool { return time.Now().After(at) }
			}
			kills := []func() func(*state.Migration) bool{
				func() func(*state.Migration) bool { return func(m *state.Migration) bool { return m != nil } },
				func() func(*state.Migration) bool { return phaseIs(PhaseBackfill) },
				random, random,
				func() func(*state.Migration) bool { return phaseIs(PhaseIndexes) },
				random,
			}
			var killedIn []string
			for run := 0; ; run++ {
				if run > 40 {
					t.Fatal("sync never finished")
				}
				r := syncStartCLI(t, bin, dsn, "sync", "-f", spec, "--batch-size", "100")
				if len(kills) > 0 {
					when := kills[0]()
					kills = kills[1:]
					killed := false
				poll:
					for {
						select {
						case err := <-r.done:
							r.done <- err // finished first: handled below
							break poll
						case <-time.After(3 * time.Millisecond):
						}
						m, err := state.Get(context.Background(), pool, "c")
						if err != nil {
							m = nil
						}
						if when(m) {
							r.cmd.Process.Signal(syscall.SIGKILL)
							<-r.done
							killed = true
							where := "planned"
							if m != nil {
								where = string(m.State) + "/" + m.Phase
							}
							killedIn = append(killedIn, where)
							break poll
						}
					}
					if killed {
						continue
					}
				}
				switch code := r.wait(t, 90*time.Second); code {
				case 0:
				case 4:
					// The killed run's session had not yet ended on the server.
					time.Sleep(100 * time.Millisecond)
					continue
				default:
					t.Fatalf("exit %d; stderr:\n%s", code, r.stderr.String())
				}
				break
			}
			if errs := app.stop(); len(errs) > 0 {
				t.Fatalf("%d workload errors, first: %v", len(errs), errs[0])
			}
			if d := syncOrdersDiff(t, pool, "c"); d != 0 {
				t.Fatalf("green differs from blue in %d rows", d)
			}
			m, err := state.Get(context.Background(), pool, "c")
			if err != nil || m.State != state.Synced {
				t.Fatalf("row %+v, %v", m, err)
			}
			if n := syncCount(t, pool, `SELECT count(*) FROM pg_index WHERE indrelid = 'gs_c_green.orders'::regclass AND indisvalid`); n != 3 {
				t.Fatalf("green has %d valid indexes, want 3", n)
			}
			if n := syncCount(t, pool, `SELECT count(*) FROM pg_index WHERE indrelid = 'gs_c_green.orders'::regclass`); n != 3 {
				t.Fatalf("green has %d indexes, want 3", n)
			}
			t.Logf("killed in: %s; %d app operations", strings.Join(killedIn, ", "), app.ops.Load())
		})
	}
}

// The CLI end to end: Ctrl-C (SIGINT) exits 130 with the command to
// resume and the checkpoint intact; pause and resume from another
// process; a re-run finishes; a third run has nothing to do.
func TestSyncCLIInterruptPauseResume(t *testing.T) {
	t.Parallel()
	bin := syncBuildCLI(t)
	pool, dsn := syncNewDB(t)
	pgtest.Exec(t, dsn, syncOrdersTable(30000, false))
	spec := syncWriteSpec(t, syncOrdersSpec("i", false))

	r := syncStartCLI(t, bin, dsn, "sync", "-f", spec, "--batch-size", "100")
	syncWaitFor(t, 30*time.Second, "rows copied", func() bool { return syncRowsCopied(pool, "i") >= 1000 })
	r.cmd.Process.Signal(os.Interrupt)
	if code := r.wait(t, 30*time.Second); code != 130 {
		t.Fatalf("exit %d after SIGINT, want 130; stderr:\n%s", code, r.stderr.String())
	}
	if e := r.stderr.String(); !strings.Contains(e, "interrupted during sync") || !strings.Contains(e, "sync -f "+spec) ||
		!strings.Contains(e, "again to resume") || strings.Contains(e, "context canceled") {
		t.Fatalf("no resume hint in:\n%s", r.stderr.String())
	}
	m, err := state.Get(context.Background(), pool, "i")
	if err != nil {
		t.Fatal(err)
	}
	if m.Phase != PhaseBackfill || syncCount(t, pool, `SELECT count(*) FROM gs_i_green.orders`) != m.RowsCopied {
		t.Fatalf("after SIGINT: phase %q, rows_copied %d", m.Phase, m.RowsCopied)
	}

	// The last row stays locked until the pause has been seen: the copy
	// cannot finish first, however the machine's load shares the time
	// between it and the pause command. Unpinned, a backfill that finished
	// before the pause committed left nothing to hold (pause still exits 0
	// while the migration is syncing), and the wait below timed out.
	pin, err := pool.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer pin.Rollback(context.Background())
	if _, err := pin.Exec(context.Background(), `SELECT 1 FROM gs_i_blue.orders WHERE id = (SELECT max(id) FROM gs_i_blue.orders) FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	r = syncStartCLI(t, bin, dsn, "sync", "-f", spec, "--batch-size", "100")
	n := m.RowsCopied
	syncWaitFor(t, 30*time.Second, "the resumed backfill", func() bool { return syncRowsCopied(pool, "i") > n+500 })
	p := syncStartCLI(t, bin, dsn, "pause", "i")
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("pause: exit %d: %s", code, p.stderr.String())
	}
	// A condition, not a clock: the hold, or one of the ways it can be
	// missed, each failing with what happened.
	hold := time.Now()
	for {
		m, err := state.Get(context.Background(), pool, "i")
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(m.Throttle, "paused") {
			break
		}
		if m.Phase != PhaseBackfill || m.BackfillDoneAt != nil {
			t.Fatalf("paused, but the backfill went on to phase %q (rows_copied %d); stderr:\n%s", m.Phase, m.RowsCopied, r.stderr.String())
		}
		if len(r.done) > 0 {
			t.Fatalf("the resumed sync exited before holding; stderr:\n%s", r.stderr.String())
		}
		if time.Since(hold) > 2*time.Minute {
			t.Fatalf("paused, but the backfill neither held nor finished within 2m (throttle %q, rows_copied %d); stderr:\n%s",
				m.Throttle, m.RowsCopied, r.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := pin.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	held := syncRowsCopied(pool, "i")
	time.Sleep(500 * time.Millisecond)
	if got := syncRowsCopied(pool, "i"); got != held {
		t.Fatalf("paused, but rows_copied moved from %d to %d", held, got)
	}
	p = syncStartCLI(t, bin, dsn, "resume", "i")
	if code := p.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("resume: exit %d: %s", code, p.stderr.String())
	}
	if code := r.wait(t, 90*time.Second); code != 0 {
		t.Fatalf("resumed sync: exit %d; stderr:\n%s", code, r.stderr.String())
	}
	if !strings.Contains(r.stdout.String(), "i is synced") {
		t.Fatalf("stdout:\n%s", r.stdout.String())
	}
	// The resumed run's summary counts every run's rows, not only its own
	// (break9 05: "0 rows copied in 0s" after a resume).
	if m := regexp.MustCompile(`i is synced: ([0-9,]+) rows copied in all \(([0-9,]+) by this run`).FindStringSubmatch(r.stdout.String()); m == nil ||
		strings.ReplaceAll(m[1], ",", "") != fmt.Sprint(syncRowsCopied(pool, "i")) || m[2] == m[1] {
		t.Errorf("resumed sync's summary %q: want the rows copied in all (%d) and this run's share", r.stdout.String(), syncRowsCopied(pool, "i"))
	}
	if d := syncOrdersDiff(t, pool, "i"); d != 0 {
		t.Fatalf("%d rows differ", d)
	}
	r = syncStartCLI(t, bin, dsn, "sync", "-f", spec)
	if code := r.wait(t, 30*time.Second); code != 0 || !strings.Contains(r.stdout.String(), "i is synced") {
		t.Fatalf("third run: exit %d: %s %s", code, r.stdout.String(), r.stderr.String())
	}
	// --watch after synced keeps reporting until Ctrl-C, which exits 0.
	r = syncStartCLI(t, bin, dsn, "sync", "-f", spec, "--watch")
	syncWaitFor(t, 10*time.Second, "a status line", func() bool {
		return strings.Count(r.stderr.String(), `"sync status"`) >= 2 // Sync's own, then WatchSync's
	})
	r.cmd.Process.Signal(os.Interrupt)
	if code := r.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("--watch after synced, Ctrl-C: exit %d; stderr:\n%s", code, r.stderr.String())
	}
	// pause of a synced migration is refused with exit 2.
	p = syncStartCLI(t, bin, dsn, "pause", "i")
	if code := p.wait(t, 10*time.Second); code != 2 {
		t.Fatalf("pause of a synced migration: exit %d", code)
	}
}
