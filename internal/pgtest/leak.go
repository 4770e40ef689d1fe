//go:build unix

package pgtest

import (
	"fmt"

	"go.uber.org/goleak"
)

// findLeaks reports the goroutines still running besides the caller's, after
// goleak's retries (about a second in all, so goroutines that are merely
// finishing are not reported).
//
// It adds no ignores of its own: goleak's defaults already pass over the
// testing package's waiting goroutines and os/signal's loop (Main's
// signal.Notify), and pgx leaves none behind once its pools and connections
// are closed (pgxpool's health check and puddle's constructors end on
// Close). Any goroutine reported is one a test or the code under test
// started and did not stop. Should the runtime or a library ever leave one
// legitimately, ignore it here by its top function, with the reason.
func findLeaks(extra ...goleak.Option) error {
	if err := goleak.Find(extra...); err != nil {
		return fmt.Errorf("goroutines still running after the package's tests passed (stop them: close the pool or connection, cancel the context, wait for the worker): %w", err)
	}
	return nil
}
