//go:build unix

package pgtest

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// parkedWorker stands for a goroutine a test forgot to stop: it blocks until
// stop is closed. Its name is what the leak report must show.
func parkedWorker(started chan<- struct{}, stop <-chan struct{}) {
	close(started)
	<-stop
}

// Not parallel: the check looks at every goroutine of the binary, and a
// sequential test runs while the parallel ones are still parked.
func TestFindLeaksReportsALeakedGoroutine(t *testing.T) {
	before := goleak.IgnoreCurrent()
	started, stop := make(chan struct{}), make(chan struct{})
	go parkedWorker(started, stop)
	<-started

	err := findLeaks(before)
	if err == nil {
		close(stop)
		t.Fatal("findLeaks returned nil while a goroutine was parked in parkedWorker")
	}
	if !strings.Contains(err.Error(), "pgtest.parkedWorker") {
		t.Errorf("the report does not name the leaked goroutine's function:\n%v", err)
	}

	close(stop)
	if err := findLeaks(before); err != nil {
		t.Errorf("after the goroutine ended, findLeaks still reports:\n%v", err)
	}
}

const envLeakChild = "GREENSWAP_PGTEST_LEAK_CHILD"

// TestLeakChild is run only by TestMainFailsOnLeak, as a child process: it
// leaks a goroutine and passes, so only Main's check can fail the binary.
func TestLeakChild(t *testing.T) {
	if os.Getenv(envLeakChild) == "" {
		t.Skip("run by TestMainFailsOnLeak in a child process")
	}
	started := make(chan struct{})
	go parkedWorker(started, make(chan struct{}))
	<-started
}

// The wiring end to end: a package whose tests all pass but leave a
// goroutine behind exits non-zero, and says why on stderr.
func TestMainFailsOnLeak(t *testing.T) {
	t.Parallel()
	for _, leak := range []bool{false, true} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestLeakChild$", "-test.count=1")
		cmd.Env = os.Environ()
		if leak {
			cmd.Env = append(cmd.Env, envLeakChild+"=1")
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		switch {
		case !leak && err != nil:
			t.Errorf("without a leak the child failed: %v\n%s", err, stderr.String())
		case leak && !errors.As(err, &exit):
			t.Errorf("with a leaked goroutine the child exited %v, want a non-zero exit\n%s", err, stderr.String())
		case leak && !strings.Contains(stderr.String(), "goroutines still running") || leak && !strings.Contains(stderr.String(), "parkedWorker"):
			t.Errorf("the child's stderr does not report the leak in parkedWorker:\n%s", stderr.String())
		}
	}
}
