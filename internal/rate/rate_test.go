package rate

import (
	"testing"
	"time"
)

func TestWindow(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var w Window
	if got := w.PerSec(t0, 5); got != 0 {
		t.Fatalf("no samples: %v", got)
	}
	w.Add(t0, 0)
	w.Add(t0.Add(2*time.Second), 200)
	if got := w.PerSec(t0.Add(4*time.Second), 400); got != 100 {
		t.Fatalf("rate over 4 s: %v, want 100", got)
	}
	// Samples older than the span are dropped but for the newest of them,
	// the window's start: at 35 s the rate runs from the sample at 21 s.
	w.Add(t0.Add(21*time.Second), 400)
	w.Add(t0.Add(30*time.Second), 1300)
	w.Add(t0.Add(35*time.Second), 1800)
	if got := w.PerSec(t0.Add(35*time.Second), 1800); got != 100 {
		t.Fatalf("recent rate: %v, want 100", got)
	}
	if len(w.t) != 3 {
		t.Fatalf("kept %d samples, want 3", len(w.t))
	}
	// Nothing for longer than the span: 0, not the old rate.
	if got := w.PerSec(t0.Add(50*time.Second), 1800); got != 0 {
		t.Fatalf("stale: %v", got)
	}
	m := Window{MinSpan: time.Second}
	m.Add(t0, 0)
	if got := m.PerSec(t0.Add(100*time.Millisecond), 50); got != 50 {
		t.Fatalf("MinSpan: %v, want 50", got)
	}
}

// A long steady run keeps a bounded number of samples.
func TestWindowBounded(t *testing.T) {
	t0 := time.Now()
	var w Window
	for i := range 100 {
		w.Add(t0.Add(time.Duration(i)*time.Second), int64(i)*10)
	}
	if len(w.t) > 12 {
		t.Fatalf("window keeps %d samples", len(w.t))
	}
	if r := w.PerSec(t0.Add(99*time.Second), 990); r != 10 {
		t.Fatalf("rate %v, want 10", r)
	}
}
