//go:build linux

package pgtest

import (
	"os/exec"
	"runtime"
	"syscall"
)

// setProcAttrs makes the child its own process group leader and asks the
// kernel to SIGKILL it when the thread that forked it dies. cred, when not nil,
// switches the child to an unprivileged user (initdb and postgres refuse root).
func setProcAttrs(cmd *exec.Cmd, cred *syscall.Credential) {
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: cred,
	}
}

// startTied starts cmd from a goroutine locked to its OS thread and keeps that
// goroutine (and so the thread) alive in cmd.Wait until the child exits.
// Pdeathsig fires when the *thread* that forked the child exits, not the
// process; Go may retire idle threads, so without the lock the parent-death
// signal could kill postgres in the middle of a test run. With the lock the
// signal fires exactly when the test binary dies.
func startTied(cmd *exec.Cmd) (<-chan error, error) {
	started := make(chan error, 1)
	exited := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: when this goroutine returns, the thread is
		// destroyed, which is fine because the child is gone by then.
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		exited <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return exited, nil
}

// killGroup sends sig to the child's whole process group (postmaster and its
// backends).
func killGroup(pid int, sig syscall.Signal) error {
	return syscall.Kill(-pid, sig)
}
