package pgtest

import (
	"bytes"
	"os/exec"
)

// runTied is cmd.CombinedOutput for a child started with setProcAttrs: the
// child is forked from a goroutine locked to its thread (startTied). On
// Linux the parent-death signal fires when the forking thread exits, and a
// thread that forked a short-lived child (initdb, pg_basebackup) from an
// unlocked goroutine can later be taken by a startTied goroutine and
// destroyed with it when another test's cluster stops: the child, still
// running, was killed (initdb "signal: killed" in a CI run).
func runTied(cmd *exec.Cmd) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	exited, err := startTied(cmd)
	if err != nil {
		return nil, err
	}
	err = <-exited
	return out.Bytes(), err
}
