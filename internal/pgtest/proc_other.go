//go:build unix && !linux

package pgtest

import (
	"os/exec"
	"syscall"
)

// Outside Linux there is no Pdeathsig: a test binary killed with SIGKILL may
// leave its postgres running (Main still stops it on SIGINT/SIGTERM). CI and
// the project's machines are Linux.
func setProcAttrs(cmd *exec.Cmd, cred *syscall.Credential) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
}

func startTied(cmd *exec.Cmd) (<-chan error, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	return exited, nil
}

func killGroup(pid int, sig syscall.Signal) error {
	return syscall.Kill(-pid, sig)
}
