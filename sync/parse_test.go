package sync

import (
	"testing"
	"time"
)

func TestNextSize(t *testing.T) {
	o := Options{MinBatchSize: 100, MaxBatchSize: 10000, TargetBatchTime: 200 * time.Millisecond}
	if n := nextSize(1000, 100*time.Millisecond, o); n != 1500 {
		t.Errorf("fast batch: %d, want 1500 (at most x1.5)", n)
	}
	if n := nextSize(1000, 190*time.Millisecond, o); n != 1052 {
		t.Errorf("near target: %d", n)
	}
	if n := nextSize(1000, 2*time.Second, o); n != 500 {
		t.Errorf("slow batch: %d, want 500 (at most /2)", n)
	}
	if n := nextSize(150, 2*time.Second, o); n != 100 {
		t.Errorf("min bound: %d", n)
	}
	if n := nextSize(9000, time.Millisecond, o); n != 10000 {
		t.Errorf("max bound: %d", n)
	}
	if n := nextSize(100, 0, o); n != 150 {
		t.Errorf("instant batch: %d", n)
	}
}
