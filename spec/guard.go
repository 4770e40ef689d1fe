package spec

import (
	"fmt"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// GuardOptions are the health bounds of the circuit breaker (the guard
// package) that holds sync while the application suffers. Zero values
// mean "the built-in default" (WithDefaults); a signal is switched off by
// a negative bound in the flags or "off" in the spec (Off*).
type GuardOptions struct {
	// RollbackRate trips when the share of transactions rolled back over
	// one sample exceeds the baseline's share by more than this (0..1).
	RollbackRate float64 `yaml:"rollback_rate" json:"rollback_rate,omitempty"`
	// Deadlocks trips when deadlocks per second exceed the baseline's rate
	// by more than this.
	Deadlocks float64 `yaml:"deadlocks" json:"deadlocks,omitempty"`
	// LockWaits trips when at least this many sessions wait on a lock on
	// blue, green or the app view.
	LockWaits int `yaml:"lock_waits" json:"lock_waits,omitempty"`
	// LockWaitTime trips when one such session has waited longer.
	LockWaitTime Duration `yaml:"lock_wait_time" json:"lock_wait_time,omitempty"`
	// LatencyRatio trips when the mean execution time of the app's
	// statements on the table (pg_stat_statements) over one sample exceeds
	// the baseline's mean this many times.
	LatencyRatio float64 `yaml:"latency_ratio" json:"latency_ratio,omitempty"`
	// ReplicaLag trips when a standby's replay lag exceeds it.
	ReplicaLag Duration `yaml:"replica_lag" json:"replica_lag,omitempty"`
	// ProbeSQL must succeed (and, when its first column is a boolean,
	// return true) within ProbeTimeout, run on the migration's connection.
	ProbeSQL string `yaml:"probe_sql" json:"probe_sql,omitempty"`
	// ProbeCmd is run by /bin/sh -c and must exit 0 within ProbeTimeout.
	ProbeCmd     string   `yaml:"probe_cmd" json:"probe_cmd,omitempty"`
	ProbeTimeout Duration `yaml:"probe_timeout" json:"probe_timeout,omitempty"`
	// MaxOpen: a breaker open this long stops sync (checkpointed, exit 6).
	MaxOpen Duration `yaml:"max_open" json:"max_open,omitempty"`
	// Every is the least time between two samples.
	Every Duration `yaml:"every" json:"every,omitempty"`
}

// Built-in guard defaults. Only the signals that an application rarely
// trips by itself are on: lock waits of 30s on the migrated tables (a
// queue that long is an outage whoever caused it) and replica lag of a
// minute. Rollback rate, deadlocks and latency depend on the application
// (ORMs roll back read-only transactions; cold caches double latencies)
// and are off until the operator sets a bound.
const (
	DefaultGuardLockWaitTime = 30 * time.Second
	DefaultGuardReplicaLag   = 60 * time.Second
	DefaultGuardProbeTimeout = 5 * time.Second
	DefaultGuardMaxOpen      = 5 * time.Minute
	DefaultGuardEvery        = time.Second
)

// GuardOff, given as a bound, switches that signal off (a zero bound
// means "the default").
const GuardOff = -1

// WithDefaults fills zero fields with the defaults and turns GuardOff
// bounds into 0 (off) for the guard package.
func (o GuardOptions) WithDefaults() GuardOptions {
	if o.LockWaitTime.Duration == 0 {
		o.LockWaitTime.Duration = DefaultGuardLockWaitTime
	}
	if o.ReplicaLag.Duration == 0 {
		o.ReplicaLag.Duration = DefaultGuardReplicaLag
	}
	if o.ProbeTimeout.Duration <= 0 {
		o.ProbeTimeout.Duration = DefaultGuardProbeTimeout
	}
	if o.MaxOpen.Duration == 0 {
		o.MaxOpen.Duration = DefaultGuardMaxOpen
	}
	if o.Every.Duration <= 0 {
		o.Every.Duration = DefaultGuardEvery
	}
	off := func(f *float64) {
		if *f < 0 {
			*f = 0
		}
	}
	off(&o.RollbackRate)
	off(&o.Deadlocks)
	off(&o.LatencyRatio)
	if o.LockWaits < 0 {
		o.LockWaits = 0
	}
	for _, d := range []*Duration{&o.LockWaitTime, &o.ReplicaLag, &o.MaxOpen} {
		if d.Duration < 0 {
			d.Duration = 0
		}
	}
	return o
}

// Override returns o with every non-zero field of flags put over it.
func (o GuardOptions) Override(flags GuardOptions) GuardOptions {
	setF := func(dst *float64, v float64) {
		if v != 0 {
			*dst = v
		}
	}
	setD := func(dst *Duration, v Duration) {
		if v.Duration != 0 {
			*dst = v
		}
	}
	setF(&o.RollbackRate, flags.RollbackRate)
	setF(&o.Deadlocks, flags.Deadlocks)
	setF(&o.LatencyRatio, flags.LatencyRatio)
	if flags.LockWaits != 0 {
		o.LockWaits = flags.LockWaits
	}
	setD(&o.LockWaitTime, flags.LockWaitTime)
	setD(&o.ReplicaLag, flags.ReplicaLag)
	setD(&o.ProbeTimeout, flags.ProbeTimeout)
	setD(&o.MaxOpen, flags.MaxOpen)
	setD(&o.Every, flags.Every)
	if flags.ProbeSQL != "" {
		o.ProbeSQL = flags.ProbeSQL
	}
	if flags.ProbeCmd != "" {
		o.ProbeCmd = flags.ProbeCmd
	}
	return o
}

var guardFields = []string{"rollback_rate", "deadlocks", "lock_waits", "lock_wait_time", "latency_ratio", "replica_lag",
	"probe_sql", "probe_cmd", "probe_timeout", "max_open", "every"}

// guard decodes the spec's guard: section. "off" is accepted for every
// bound and stands for GuardOff.
func (d *specDecoder) guard(n *yaml.Node, path string, line int, o *GuardOptions) *SpecError {
	return d.object(n, path, line, guardFields, func(field, fpath string, fline int, v *yaml.Node) *SpecError {
		off := isOff(v)
		var err *SpecError
		switch field {
		case "rollback_rate", "deadlocks", "latency_ratio":
			f := map[string]*float64{"rollback_rate": &o.RollbackRate, "deadlocks": &o.Deadlocks, "latency_ratio": &o.LatencyRatio}[field]
			if off {
				*f = GuardOff
			} else {
				*f, err = d.float(v, fpath, fline)
			}
		case "lock_waits":
			if off {
				o.LockWaits = GuardOff
			} else {
				o.LockWaits, err = d.int(v, fpath, fline)
			}
		case "lock_wait_time", "replica_lag", "max_open":
			f := map[string]*Duration{"lock_wait_time": &o.LockWaitTime, "replica_lag": &o.ReplicaLag, "max_open": &o.MaxOpen}[field]
			if off {
				f.Duration = GuardOff
			} else {
				*f, err = d.duration(v, fpath, fline)
			}
		case "probe_timeout":
			o.ProbeTimeout, err = d.duration(v, fpath, fline)
		case "every":
			o.Every, err = d.duration(v, fpath, fline)
		case "probe_sql":
			o.ProbeSQL, err = d.str(v, fpath, fline)
		case "probe_cmd":
			o.ProbeCmd, err = d.str(v, fpath, fline)
		}
		return err
	})
}

func isOff(v *yaml.Node) bool {
	v = resolveAlias(v)
	return v.Kind == yaml.ScalarNode && strings.EqualFold(v.Value, "off")
}

// validateGuard checks the guard: section's values (after decoding, so
// a JSON spec is checked alike).
func (s *Spec) validateGuard() *SpecError {
	return ValidateGuard(s.Guard, func(field, fix, msg string) *SpecError {
		return s.specErr("guard."+field, fix, "%s", msg)
	})
}

// ValidateGuard checks o, reporting the first bad field through bad
// (the CLI's flags use it too, with their own error form).
func ValidateGuard[E any](o GuardOptions, bad func(field, fix, msg string) E) E {
	var zero E
	if r := o.RollbackRate; r != GuardOff && (r < 0 || r >= 1) {
		return bad("rollback_rate", "write a share between 0 and 1, e.g. 0.2 (20 points above the baseline's), or off",
			fmt.Sprintf("must be a share between 0 and 1, got %g", r))
	}
	if r := o.Deadlocks; r != GuardOff && r < 0 {
		return bad("deadlocks", "write a rate per second such as 0.5, or off", fmt.Sprintf("must not be negative, got %g", r))
	}
	if r := o.LatencyRatio; r != GuardOff && r != 0 && r <= 1 {
		return bad("latency_ratio", "write a ratio above 1, e.g. 3 (three times the baseline's mean), or off",
			fmt.Sprintf("must be above 1, got %g", r))
	}
	if o.LockWaits < GuardOff {
		return bad("lock_waits", "write a number of waiting sessions such as 10, or off", fmt.Sprintf("must not be negative, got %d", o.LockWaits))
	}
	for _, dd := range []struct {
		f   string
		v   time.Duration
		off bool
	}{{"lock_wait_time", o.LockWaitTime.Duration, true}, {"replica_lag", o.ReplicaLag.Duration, true}, {"max_open", o.MaxOpen.Duration, true},
		{"probe_timeout", o.ProbeTimeout.Duration, false}, {"every", o.Every.Duration, false}} {
		if dd.v < 0 && !(dd.off && dd.v == GuardOff) {
			return bad(dd.f, "write a positive duration such as \"5s\"", fmt.Sprintf("must not be negative, got %s", dd.v))
		}
	}
	if strings.TrimSpace(o.ProbeSQL) == "" && o.ProbeSQL != "" {
		return bad("probe_sql", "write a query such as SELECT pg_catalog.count(*) < 100 FROM app.jobs_failed, or leave it out", "is blank")
	}
	if strings.TrimSpace(o.ProbeCmd) == "" && o.ProbeCmd != "" {
		return bad("probe_cmd", "write a command such as curl -fsS http://app/health, or leave it out", "is blank")
	}
	return zero
}
