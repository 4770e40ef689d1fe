package runner

import (
	"context"
	"strings"

	"github.com/greenswap/greenswap/guard"
	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	gssync "github.com/greenswap/greenswap/sync"
)

// guardOptions: the flags over the spec's guard: section over the defaults.
func (r *syncRun) guardOptions() guard.Options {
	return r.spec.Guard.Override(r.opts.Guard).WithDefaults()
}

// breaker is the sync run's circuit breaker (guard.Breaker), asked by the
// backfill as one more throttle. Its opening and closing are events
// ("guard-open" naming the tripped signals, "guard-close").
// One breaker serves the backfill and, in logical mode, the stream's
// apply, so both see one baseline and one open-since.
func (r *syncRun) breaker(ctx context.Context) *guard.Breaker {
	if r.brk != nil {
		return r.brk
	}
	all := []shadow.Names{r.names}
	if r.members != nil {
		all = all[:0]
		for _, m := range r.members {
			all = append(all, m.names)
		}
	}
	s := guardSampler(r.env, all, r.guardOptions())
	name, pool := r.spec.Name, r.env.Pool
	r.brk = &guard.Breaker{S: s, OnChange: func(tripped []guard.Signal) {
		step, detail := "guard-close", map[string]any{}
		if tripped != nil {
			step, detail = "guard-open", guard.Details(tripped)
			r.log.Warn().Str("signals", guard.Describe(tripped)).Msg("circuit breaker open: sync holds")
		} else {
			r.log.Info().Msg("circuit breaker closed: sync continues")
		}
		if err := state.Record(context.WithoutCancel(ctx), pool, name, step, "ok", 0, "", detail); err != nil {
			r.log.Warn().Err(err).Msg("record the circuit breaker's event")
		}
	}}
	return r.brk
}

// clearStaleGuardReason: a run the breaker stopped (exit 6) left its
// reason in the row; this run has not tripped yet, so neither status nor
// this run's first progress report may show it held. Called before the
// progress reporter starts, which reads the row.
func (r *syncRun) clearStaleGuardReason(ctx context.Context) {
	if r.row == nil || !strings.HasPrefix(r.row.Throttle, guard.ReasonPrefix) {
		return
	}
	if err := state.SetThrottle(context.WithoutCancel(ctx), r.env.Pool, r.spec.Name, ""); err != nil {
		r.log.Warn().Err(err).Msg("clear the last run's circuit breaker reason")
	}
	r.row.Throttle = ""
}

// guardSampler reads the signals of a migration of the tables all (the
// first one's app table names the application's statements); sync's
// breaker and cutover's guard window share it. Lock waits on any table of
// the migration count.
func guardSampler(env *Env, all []shadow.Names, o guard.Options) *guard.Sampler {
	var rels []string
	for _, n := range all {
		rels = append(rels, db.Ident(n.Blue.Schema, n.Blue.Name), db.Ident(n.Green.Schema, n.Green.Name), db.Ident(n.App.Schema, n.App.Name))
	}
	n := all[0]
	return &guard.Sampler{
		Q:          env.Pool,
		Relations:  rels,
		AppTable:   n.App.Name,
		Exclude:    strings.TrimSuffix(n.BlueSchema, "blue"),
		Opts:       o,
		ReplicaLag: gssync.ReadReplicaLag,
	}
}
