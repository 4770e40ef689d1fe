// Package rate turns samples of a growing total (rows copied, keys
// applied) into a recent per-second figure for progress displays.
package rate

import "time"

// DefaultSpan is how far back a Window looks when Span is zero.
const DefaultSpan = 10 * time.Second

// Window keeps the samples of the last Span. The zero value is ready to use.
type Window struct {
	Span time.Duration // samples older than this are dropped (0: DefaultSpan)
	// MinSpan is the least time a rate is computed over, so a first burst
	// right after the start does not read as a huge rate (0: none).
	MinSpan time.Duration

	t []time.Time
	n []int64
}

func (w *Window) span() time.Duration {
	if w.Span > 0 {
		return w.Span
	}
	return DefaultSpan
}

// Add records total n at time t (samples in time order).
func (w *Window) Add(t time.Time, n int64) {
	w.t = append(w.t, t)
	w.n = append(w.n, n)
	i := 0
	for i < len(w.t)-1 && t.Sub(w.t[i+1]) >= w.span() {
		i++
	}
	w.t, w.n = w.t[i:], w.n[i:]
}

// PerSec is the rate from the oldest kept sample to total n at now; 0
// without samples, or when the newest is older than Span (nothing moved).
func (w *Window) PerSec(now time.Time, n int64) float64 {
	if len(w.t) == 0 || now.Sub(w.t[len(w.t)-1]) > w.span() {
		return 0
	}
	d := max(now.Sub(w.t[0]), w.MinSpan).Seconds()
	if d <= 0 {
		return 0
	}
	return float64(n-w.n[0]) / d
}
