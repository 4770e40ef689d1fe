package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// moduleRoot finds the directory holding go.mod, from the working directory up.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory: run from the greenswap repository")
		}
		dir = parent
	}
}

// buildCLI builds cmd/greenswap once into dir and returns the binary's path.
func buildCLI(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "greenswap")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/greenswap")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/greenswap: %w\n%s", err, out)
	}
	return bin, nil
}

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
	MaxRSSKB int64 // getrusage ru_maxrss of the child (KiB on Linux)
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
	err := cmd.Run()
	r := result{Args: args, Stdout: out.String(), Stderr: errb.String(), Took: time.Since(start)}
	if cmd.ProcessState != nil {
		r.Code = cmd.ProcessState.ExitCode()
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			r.MaxRSSKB = ru.Maxrss
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
