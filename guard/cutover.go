package guard

import (
	"time"

	"github.com/greenswap/greenswap/spec"
)

// Defaults of cutover's guard window (greenswap cutover --guard), for the
// bounds neither the spec's guard: section nor a flag sets. After a
// cutover the baseline is the same application on blue minutes before, so
// a relative bound means something it does not during sync: a rise in
// the share of rolled-back transactions or in statement latency is what a
// shape the application does not fit looks like. Lock waits are bounded
// tighter than sync's 30s: the swap itself waits at most a lock timeout,
// so a 10s queue on the new table is the application's, not greenswap's.
const (
	DefaultCutoverRollbackRate = 0.1 // ten points above the baseline's share
	DefaultCutoverLatencyRatio = 3   // where pg_stat_statements is preloaded
	DefaultCutoverLockWaitTime = 10 * time.Second
)

// WithCutoverDefaults is o with the cutover window's defaults in the
// zero fields, then the shared defaults (spec.GuardOptions.WithDefaults).
// A bound switched off (spec.GuardOff) stays off.
func WithCutoverDefaults(o spec.GuardOptions) spec.GuardOptions {
	if o.RollbackRate == 0 {
		o.RollbackRate = DefaultCutoverRollbackRate
	}
	if o.LatencyRatio == 0 {
		o.LatencyRatio = DefaultCutoverLatencyRatio
	}
	if o.LockWaitTime.Duration == 0 {
		o.LockWaitTime.Duration = DefaultCutoverLockWaitTime
	}
	return o.WithDefaults()
}

// Tripped returns the signals of sigs past their bound (nil: none).
func Tripped(sigs []Signal) []Signal {
	var out []Signal
	for _, s := range sigs {
		if s.Tripped {
			out = append(out, s)
		}
	}
	return out
}

// Details is the event log's form of sigs: each signal's value, bound,
// baseline and reason under its name.
func Details(sigs []Signal) map[string]any {
	d := make(map[string]any, len(sigs))
	for _, s := range sigs {
		d[s.Name] = map[string]any{"value": s.Value, "bound": s.Bound, "baseline": s.Baseline, "reason": s.Reason}
	}
	return d
}
