package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cli runs the real greenswap binary as a subprocess.
type cli struct {
	bin string
}

// result is one finished greenswap run.
type result struct {
	Args     []string
	Stdout   string
	Stderr   string
	Code     int
	Took     time.Duration
	MaxRSSKB int64 // peak RSS of the child in KiB: VmHWM polled from /proc (see peakRSS), else ru_maxrss
	// RusageMaxRSSKB is the child's ru_maxrss as wait4 reports it. On Linux
	// it is not the child's own peak: Go starts children with
	// clone(CLONE_VM|CLONE_VFORK), and at exec the kernel folds the hiwater
	// RSS of the mm the child leaves — the bench's own — into the child's
	// maxrss, so it reads max(bench's lifetime peak, child's peak).
	RusageMaxRSSKB int64
	RSSFromProc    bool // MaxRSSKB is VmHWM from /proc
}

func (r result) String() string {
	return fmt.Sprintf("greenswap %s: exit %d after %s\n%s%s", strings.Join(r.Args, " "), r.Code, r.Took.Round(time.Millisecond), r.Stdout, r.Stderr)
}

// run runs greenswap with args and waits for it. A non-zero exit is not an
// error here; the caller reads Code.
func (c cli) run(ctx context.Context, dsn string, args ...string) (result, error) {
	full := append([]string{"--dsn", dsn, "--log-format", "json"}, args...)
	cmd := exec.CommandContext(ctx, c.bin, full...)
	cmd.Env = append(os.Environ(), "NO_COLOR=1")
	cmd.WaitDelay = 10 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Start()
	var peak *peakRSS
	if err == nil {
		peak = watchPeakRSS(cmd.Process.Pid, filepath.Base(c.bin))
		err = cmd.Wait()
	}
	r := result{Args: args, Stdout: out.String(), Stderr: errb.String(), Took: time.Since(start)}
	if peak != nil {
		r.MaxRSSKB = peak.stop()
		r.RSSFromProc = r.MaxRSSKB > 0
	}
	if cmd.ProcessState != nil {
		r.Code = cmd.ProcessState.ExitCode()
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			r.RusageMaxRSSKB = ru.Maxrss
			if r.MaxRSSKB == 0 {
				r.MaxRSSKB = ru.Maxrss // no /proc: the inflated figure is all there is
			}
		}
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		return r, err
	}
	return r, nil
}

// has reports whether the binary implements command (the skeleton's
// placeholders say "not yet implemented" in their usage).
func (c cli) has(ctx context.Context, command string) bool {
	out, err := exec.CommandContext(ctx, c.bin, command, "--help").CombinedOutput()
	if err != nil {
		return false
	}
	return !strings.Contains(string(out), "not yet implemented")
}

// notBuilt reports whether a run failed because the command is a placeholder.
func notBuilt(r result) bool {
	return strings.Contains(r.Stderr, "not implemented yet") || strings.Contains(r.Stdout, "not implemented yet")
}

// peakRSS polls a running child's VmHWM (its own peak resident set, KiB) from
// /proc/PID/status. ru_maxrss from wait4 cannot be used (see
// result.RusageMaxRSSKB). VmHWM only grows, so the last reading before the
// child exits is its peak up to pollRSS before the end.
type peakRSS struct {
	quit chan struct{}
	done chan int64
}

const pollRSS = 20 * time.Millisecond

func watchPeakRSS(pid int, name string) *peakRSS {
	p := &peakRSS{quit: make(chan struct{}), done: make(chan int64, 1)}
	path := fmt.Sprintf("/proc/%d/status", pid)
	go func() {
		var most int64
		t := time.NewTicker(pollRSS)
		defer t.Stop()
		for {
			if kb := vmHWM(path, name); kb > most {
				most = kb
			}
			select {
			case <-p.quit:
				p.done <- most
				return
			case <-t.C:
			}
		}
	}()
	return p
}

// stop ends the polling (call it once the child has been waited for) and
// returns the highest VmHWM seen, 0 when none could be read.
func (p *peakRSS) stop() int64 {
	close(p.quit)
	return <-p.done
}

// vmHWM reads VmHWM from a /proc status file, 0 when it is missing (no
// /proc, an exited child) or the process is not name (the pid was reused).
func vmHWM(path, name string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	var kb int64
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Name":
			if len(name) > 15 {
				name = name[:15] // the kernel's comm is 15 bytes
			}
			if v != name {
				return 0
			}
		case "VmHWM":
			if n, err := strconv.ParseInt(strings.TrimSuffix(v, " kB"), 10, 64); err == nil {
				kb = n
			}
		}
	}
	return kb
}

// bgRun is a greenswap command running in the background (sync --watch).
type bgRun struct {
	cmd      *exec.Cmd
	out, err *bytes.Buffer
	start    time.Time
	done     chan error
	ended    chan struct{} // closed once the command has exited
}

// start starts greenswap with args without waiting for it.
func (c cli) start(ctx context.Context, dsn string, args ...string) (*bgRun, error) {
	full := append([]string{"--dsn", dsn, "--log-format", "json"}, args...)
	cmd := exec.CommandContext(ctx, c.bin, full...)
	cmd.Env = append(os.Environ(), "NO_COLOR=1")
	cmd.WaitDelay = 10 * time.Second
	r := &bgRun{cmd: cmd, out: &bytes.Buffer{}, err: &bytes.Buffer{}, start: time.Now(), done: make(chan error, 1), ended: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = r.out, r.err
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		r.done <- cmd.Wait()
		close(r.ended)
	}()
	return r, nil
}

// exited reports whether the command has ended on its own (its output may
// then be read only through stop).
func (r *bgRun) exited() bool {
	select {
	case <-r.ended:
		return true
	default:
		return false
	}
}

// stop interrupts the command as Ctrl-C would and waits for it to exit.
func (r *bgRun) stop(args []string) result {
	_ = r.cmd.Process.Signal(os.Interrupt)
	err := <-r.done
	res := result{Args: args, Stdout: r.out.String(), Stderr: r.err.String(), Took: time.Since(r.start)}
	if r.cmd.ProcessState != nil {
		res.Code = r.cmd.ProcessState.ExitCode()
	} else if err != nil {
		res.Code = -1
	}
	return res
}
