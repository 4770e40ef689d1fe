package main

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// latencyStats summarise pgbench's per-transaction log (-l). Under -R a
// logged latency runs from the transaction's scheduled start, so time spent
// waiting behind a slow server counts (no coordinated omission): the honest
// figure at a fixed arrival rate.
type latencyStats struct {
	n         int
	failed    int // logged as failed/skipped/serialization/deadlock rather than a time
	mean, p99 time.Duration
	max       time.Duration
	span      time.Duration // first to last completion: n / span is the rate achieved
	// points are the completed transactions (completion time, latency),
	// for the per-interval series of the aftermath rows.
	points []txPoint
}

// txPoint is one completed transaction of a per-transaction log.
type txPoint struct {
	at  time.Time
	lat float64 // µs
}

func (l latencyStats) rate() float64 {
	if l.span <= 0 {
		return 0
	}
	return float64(l.n) / l.span.Seconds()
}

// readTxLogs reads pgbench per-transaction log files, whose lines are
// "client_id transaction_no time script_no time_epoch time_us [schedule_lag ...]"
// with time in microseconds (or a word for a transaction that did not
// complete).
func readTxLogs(files []string) (latencyStats, error) {
	var s latencyStats
	var lat []float64
	var first, last float64 = math.Inf(1), math.Inf(-1)
	for _, path := range files {
		f, err := os.Open(path)
		if err != nil {
			return s, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 6 {
				continue
			}
			us, err := strconv.ParseFloat(fs[2], 64)
			if err != nil {
				s.failed++
				continue
			}
			sec, err1 := strconv.ParseFloat(fs[4], 64)
			usec, err2 := strconv.ParseFloat(fs[5], 64)
			if err1 == nil && err2 == nil {
				t := sec + usec/1e6
				first, last = min(first, t), max(last, t)
				s.points = append(s.points, txPoint{at: time.Unix(int64(sec), int64(usec)*1000), lat: us})
			}
			lat = append(lat, us)
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return s, fmt.Errorf("read %s: %w", path, err)
		}
	}
	if len(lat) == 0 {
		return s, fmt.Errorf("pgbench's per-transaction log has no completed transaction (%d failed)", s.failed)
	}
	slices.Sort(lat)
	var sum float64
	for _, v := range lat {
		sum += v
	}
	us := func(v float64) time.Duration { return time.Duration(v * float64(time.Microsecond)) }
	s.n = len(lat)
	s.mean = us(sum / float64(len(lat)))
	s.p99 = us(percentile(lat, 0.99))
	s.max = us(lat[len(lat)-1])
	if last > first {
		s.span = time.Duration((last - first) * float64(time.Second))
	}
	return s, nil
}

// percentile of sorted v (nearest rank).
func percentile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// intervalStats are one interval of a window's series.
type intervalStats struct {
	n         int
	mean, p99 time.Duration
}

// series cuts the completed transactions into intervals of every from the
// first completion on (a window's first seconds apart from its last).
func (l latencyStats) series(every time.Duration) []intervalStats {
	if len(l.points) == 0 || every <= 0 {
		return nil
	}
	t0 := l.points[0].at
	for _, p := range l.points {
		if p.at.Before(t0) {
			t0 = p.at
		}
	}
	var buckets [][]float64
	for _, p := range l.points {
		i := int(p.at.Sub(t0) / every)
		for len(buckets) <= i {
			buckets = append(buckets, nil)
		}
		buckets[i] = append(buckets[i], p.lat)
	}
	us := func(v float64) time.Duration { return time.Duration(v * float64(time.Microsecond)) }
	out := make([]intervalStats, len(buckets))
	for i, b := range buckets {
		if len(b) == 0 {
			continue
		}
		slices.Sort(b)
		var sum float64
		for _, v := range b {
			sum += v
		}
		out[i] = intervalStats{n: len(b), mean: us(sum / float64(len(b))), p99: us(percentile(b, 0.99))}
	}
	return out
}
