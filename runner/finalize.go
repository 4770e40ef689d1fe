package runner

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/cutover"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// DefaultQuietPeriod is how long finalize watches blue for clients.
const DefaultQuietPeriod = 10 * time.Minute

// FinalizeOptions tune Finalize.
type FinalizeOptions struct {
	SwapCommandOptions
	// QuietPeriod: finalize refuses if a client other than greenswap used
	// blue within it; it watches for this long (default 10m; negative: 0).
	QuietPeriod time.Duration
	SampleEvery time.Duration // sampling interval while watching (default 1s)
	// MaxLegacyShare: above 0, finalize watches the whole quiet period and
	// tolerates clients on blue while blue's share of the client sightings
	// on the migration's shapes (cutover.ShapeReport.LegacyShare) stays at
	// or under it; the clients are named as a warning. 0 (the default): any
	// client on blue refuses. Between 0 and 1.
	MaxLegacyShare float64
	// Force: finalize even though clients use blue (they are named as a
	// warning) and without watching for the quiet period.
	Force bool
	// Yes: do not ask. Without it Confirm is asked; with neither, finalize
	// refuses (exit 2): it is irreversible.
	Yes     bool
	Confirm func(question string) (bool, error)
}

// FinalizeResult is what finalize did. Its JSON form is the --json document.
type FinalizeResult struct {
	SchemaVersion int              `json:"schema_version"`
	Migration     string           `json:"migration"`
	State         state.State      `json:"state"`
	App           string           `json:"app"`
	QuietPeriodS  float64          `json:"quiet_period_s"`
	WatchedS      float64          `json:"watched_s"`
	Forced        bool             `json:"forced,omitempty"`
	Clients       []cutover.Client `json:"clients,omitempty"` // seen using blue
	// Shapes: with --max-legacy-share, the shape telemetry of the quiet
	// period the decision was taken on.
	Shapes     *cutover.ShapeReport  `json:"shapes,omitempty"`
	Plan       *cutover.FinalizePlan `json:"plan,omitempty"`
	Attempts   int                   `json:"attempts"`
	LockHoldMS float64               `json:"lock_hold_ms"`
	FinalizeMS float64               `json:"finalize_ms"`
	TotalMS    float64               `json:"total_ms"`
	Warnings   []string              `json:"warnings,omitempty"`
	Notes      []string              `json:"notes,omitempty"`
	// Validations are the foreign keys an interrupted swap left NOT VALID,
	// validated first (revalidate.go): finalize leaves them where they are.
	Validations []cutover.Validation `json:"validations,omitempty"`
}

// Finalize retires blue once no client uses it: it watches blue for the
// quiet period (see cutover.Usage for how) and refuses, naming them, if any
// client other than greenswap used it; then, confirmed, in one transaction
// the app-name view is dropped and green moves into the app schema under the
// app name, its sequences are re-owned and its identity columns restored,
// dependent views are created again over it, blue, the sync triggers and
// functions and both version schemas are dropped, and the state moves to
// finalized. It cannot be undone.
func Finalize(ctx context.Context, env *Env, name string, opts FinalizeOptions) (*FinalizeResult, error) {
	start := time.Now()
	if opts.QuietPeriod == 0 {
		opts.QuietPeriod = DefaultQuietPeriod
	}
	opts.QuietPeriod = max(opts.QuietPeriod, 0)
	if opts.MaxLegacyShare < 0 || opts.MaxLegacyShare >= 1 {
		return nil, exitcode.Errorf(exitcode.BadInput,
			"--max-legacy-share %g is out of range: give a share of blue's sightings between 0 (no client on blue, the default) and 1 (nothing was changed)", opts.MaxLegacyShare)
	}
	if !opts.Yes && opts.Confirm == nil {
		return nil, exitcode.Errorf(exitcode.BadInput,
			"finalize is irreversible and there is no terminal to ask on: pass --yes to confirm (nothing was changed)")
	}
	m, lock, err := loadLocked(ctx, env, name)
	if err != nil {
		return nil, err
	}
	defer lock.Release(context.WithoutCancel(ctx))
	res := &FinalizeResult{SchemaVersion: SwapSchemaVersion, Migration: name, App: m.Names.App.String(),
		QuietPeriodS: opts.QuietPeriod.Seconds(), Forced: opts.Force}
	defer func() { res.TotalMS = swapMS(time.Since(start)) }()
	switch m.Row.State {
	case state.CutOver:
	case state.Finalized:
		res.State = state.Finalized
		opts.printf("migration %s is already finalized: %s is the table\n", name, m.Names.App)
		return res, nil
	default:
		return nil, exitcode.Errorf(exitcode.BadInput, "migration %s is %s: finalize comes after cutover", name, m.Row.State)
	}
	if err := checkCommandPrivileges(ctx, env, m, shadow.StepFinalize); err != nil {
		return nil, err
	}
	lo := opts.lockOptions(m.Spec)
	if res.Validations, err = revalidatePending(ctx, env, m, lo, opts.printf); err != nil {
		return res, err
	}
	res.Warnings = append(res.Warnings, validationWarnings(res.Validations)...)
	// Finalize drops blue: a column or trigger added to it (or to the view)
	// outside greenswap would go with it (trap 16). Checked before the
	// quiet period and again after it; several tables: every table's.
	if err := refuseOnDrift(ctx, env, m, "finalize"); err != nil {
		return res, err
	}
	log := env.Log.With().Str("migration", name).Logger()
	var fr *cutover.FinalizeResult
	err = runPhase(ctx, env, log, name, "finalize", func(ctx context.Context, ev *phaseEvent) error {
		err := finalizePhase(ctx, env, m, opts, lock, lo, start, res, &fr)
		if err != nil {
			var ue *cutover.UsageError
			var refused *refusedError
			if errors.As(err, &ue) || errors.As(err, &refused) {
				ev.Outcome = "refused"
			}
			ev.Took = time.Since(start)
			ev.Detail = map[string]any{"clients": res.Clients}
			return err
		}
		ev.Took = fr.Duration
		ev.SQL = strings.Join(fr.Plan.Step().SQL, ";\n")
		ev.Detail = map[string]any{"lock_hold_ms": res.LockHoldMS, "attempts": fr.Attempts, "forced": opts.Force,
			"quiet_period_s": res.QuietPeriodS, "clients": res.Clients}
		return nil
	})
	if err != nil {
		var refused *refusedError
		if errors.As(err, &refused) {
			err = refused.err
		}
		return res, err
	}

	if err := env.feedOf(m).drop(ctx, m); err != nil { // an active slot too (feed_logical.go)
		res.Warnings = append(res.Warnings, "could not drop the replication slot: "+err.Error())
	}
	res.Warnings = append(res.Warnings, fr.Plan.Warnings...)
	if fr.SlotNote != "" {
		res.Notes = append(res.Notes, fr.SlotNote)
	}
	opts.printf("done: %s is the table (was %s); %s and the version schemas are gone (%d attempt%s, locks held %.1f ms, %s)\n",
		m.Names.App, m.Names.Green, m.Names.Blue, fr.Attempts, swapPlural(fr.Attempts), res.LockHoldMS, fr.Duration.Round(time.Millisecond))
	for _, w := range fr.Plan.Warnings {
		opts.printf("warning: %s\n", w)
	}
	for _, n := range res.Notes {
		opts.printf("%s\n", n)
	}
	return res, nil
}

func describeFinalize(o FinalizeOptions, p *cutover.FinalizePlan) {
	if o.Out == nil {
		return
	}
	o.printf("finalize %s: irreversible; in one transaction:\n", p.Migration)
	o.printf("  drop the view %s; move %s into %s as the table %s\n", p.App, p.Green, p.App.Schema, p.App)
	for _, s := range p.Sequences {
		switch s.Action {
		case "identity":
			o.printf("  column %s: identity again, continuing after %s\n", s.Column, s.Sequence)
		case "re-owned":
			o.printf("  column %s: sequence %s now owned by the table\n", s.Column, s.Sequence)
		case "new sequence":
			o.printf("  column %s: new sequence %s continuing blue's identity sequence\n", s.Column, s.Sequence)
		}
	}
	for _, v := range p.Views {
		o.printf("  dependent view %s: created again over the table\n", v.Name)
	}
	o.printf("  drop %s\n", strings.Join(p.Dropped, ", "))
}

func durOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// refusedError is a finalize that was refused before it changed
// anything for a reason runPhase cannot tell from the error (a plan that
// refuses, no confirmation): its event says "refused".
type refusedError struct{ err error }

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

// finalizePhase is Finalize's one phase: the quiet period, the
// confirmation, the drift check again and the finalize transaction.
func finalizePhase(ctx context.Context, env *Env, m *Migration, opts FinalizeOptions, lock *state.Lock, lo shadow.LockOptions,
	start time.Time, res *FinalizeResult, out **cutover.FinalizeResult) error {
	name := m.Spec.Name
	in, err := finalizeInput(ctx, env, m, lo)
	if err != nil {
		return err
	}
	names := MemberNames(m.Spec)
	if m.Spec.IsSplit() {
		// One blue; a client of any green (its reverse trigger writes
		// blue) is on the app side.
		names = shadow.SplitNames(m.Spec)
	}
	blues, short := make([]string, len(names)), make([]string, len(names))
	for i, n := range names {
		blues[i], short[i] = n.Blue.String(), n.Blue.Name
	}
	blues, short = slices.Compact(blues), slices.Compact(short) // a split's one blue
	blue := strings.Join(blues, ", ")
	tx, err := env.Pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	plan, err := cutover.PlanFinalize(ctx, tx, in)
	tx.Rollback(ctx)
	if err != nil {
		return &refusedError{err} // the plan refused: the migration cannot finalize as it is
	}
	res.Plan = plan
	describeFinalize(opts, plan)

	// The quiet period. greenswap's own sessions are this process's
	// connections, by PID: a client calling itself greenswap is a client.
	since := start.Add(-opts.QuietPeriod) // from the invocation: the checks before took time
	own := cutover.OwnSessions(ctx, env.Pool, lock.PID())
	var clients []cutover.Client
	var sampler int32
	tolerant := opts.MaxLegacyShare > 0 && !opts.Force
	switch {
	case opts.Force:
		clients, err = cutover.UsageMembers(ctx, env.Pool, names, since, own)
	case tolerant:
		clients, err = legacyShareWatch(ctx, env, names, own, opts, res)
	default:
		opts.printf("watching %s for clients other than greenswap for %s (sampled every %s) ...\n",
			blue, opts.QuietPeriod, durOr(opts.SampleEvery, time.Second))
		lastTick := time.Now()
		clients, err = cutover.WatchUsageMembers(ctx, env.Pool, names, cutover.WatchOptions{
			Period: opts.QuietPeriod, Interval: opts.SampleEvery, Since: since, Own: own,
			Sampler: func(pid int32) { sampler = pid },
			Tick: func(left time.Duration, seen []cutover.Client) {
				if len(seen) == 0 && left > 0 && time.Since(lastTick) >= 30*time.Second {
					lastTick = time.Now()
					opts.printf("  no client so far; %s left\n", left.Round(time.Second))
				}
			},
		})
	}
	res.WatchedS = time.Since(start).Seconds()
	res.Clients = clients
	if err != nil {
		return interrupted(ctx, err)
	}
	if tolerant && len(clients) > 0 && res.Shapes.LegacyShare <= opts.MaxLegacyShare {
		for _, c := range clients {
			w := fmt.Sprintf("--max-legacy-share %g: finalizing although this client used blue (blue's share of sightings %.3f): %s",
				opts.MaxLegacyShare, res.Shapes.LegacyShare, c)
			res.Warnings = append(res.Warnings, w)
			opts.printf("warning: %s\n", w)
		}
	} else if len(clients) > 0 {
		if !opts.Force {
			uerr := &cutover.UsageError{Blue: m.Names.Blue, Period: opts.QuietPeriod, Clients: clients}
			if tolerant {
				uerr.Share, uerr.MaxShare = res.Shapes.LegacyShare, opts.MaxLegacyShare
			}
			if len(names) > 1 {
				uerr.Blue = spec.QualifiedName{Schema: m.Names.BlueSchema, Name: strings.Join(short, ", ")}
			}
			opts.printf("refusing: %d client(s) used %s within the quiet period:\n", len(clients), blue)
			for _, c := range clients {
				opts.printf("  %s\n", c)
			}
			return uerr
		}
		for _, c := range clients {
			w := "--force: finalizing although this client used blue: " + c.String()
			res.Warnings = append(res.Warnings, w)
			opts.printf("warning: %s\n", w)
		}
	} else if !opts.Force {
		opts.printf("no client used %s for %s\n", blue, opts.QuietPeriod)
	}

	if !opts.Yes {
		ok, err := opts.Confirm(fmt.Sprintf("finalize %s: drop %s for good and make %s the table %s; this cannot be undone. Continue?",
			name, blue, m.Names.Green, m.Names.App))
		if err != nil {
			return &refusedError{exitcode.With(exitcode.BadInput, err)}
		}
		if !ok {
			return &refusedError{exitcode.Errorf(exitcode.BadInput, "finalize not confirmed: nothing was changed")}
		}
	}

	if err := refuseOnDrift(ctx, env, m, "finalize"); err != nil {
		return err
	}
	if !opts.Force && !tolerant {
		in.Since = since
	}
	// Again: the pool may have opened connections since.
	// The watch's sampling session too: it may be busy elsewhere now.
	in.Own = cutover.OwnSessions(ctx, env.Pool, lock.PID(), uint32(sampler))
	log := env.Log.With().Str("migration", name).Logger()
	fr, err := cutover.Finalize(ctx, env.Pool, in, cutover.SwapOptions{
		Lock: lo, OnRetry: lockRetry(log, "finalize", lo.Timeout, opts.printf),
	}, func(ctx context.Context, tx pgx.Tx, _ *cutover.FinalizePlan) error {
		return state.Transition(ctx, tx, name, state.Finalized)
	})
	*out = fr
	res.Attempts, res.FinalizeMS = fr.Attempts, swapMS(fr.Duration)
	if fr.Plan != nil {
		res.Plan = fr.Plan
	}
	if err != nil {
		var lt *shadow.LockTimeoutError
		var ue *cutover.UsageError
		switch {
		case errors.As(err, &lt):
			opts.printf("gave up after %d attempts: nothing was changed\n", fr.Attempts)
		case errors.As(err, &ue):
			res.Clients = ue.Clients
		}
		return err
	}
	res.State, res.LockHoldMS = state.Finalized, swapMS(fr.LockHold)
	return nil
}

// finalizeInput is what cutover.Finalize needs: the names and target.ddl's
// identity columns of the table, or of every table of several (their
// target.ddl without the foreign keys among them, which a scratch schema
// could not resolve).
func finalizeInput(ctx context.Context, env *Env, m *Migration, lo shadow.LockOptions) (cutover.FinalizeInput, error) {
	in := cutover.FinalizeInput{Migration: m.Spec.Name, Names: m.Names}
	if m.Spec.IsSplit() {
		in.Split = m.Spec // the greens carry their own identity columns
		return in, nil
	}
	if !m.Spec.MultiTable() {
		identity, err := cutover.TargetIdentity(ctx, env.Pool, m.Names, m.Spec, lo)
		if err != nil {
			return in, fmt.Errorf("read target.ddl's identity columns: %w", err)
		}
		in.Identity = identity
		return in, nil
	}
	for _, i := range m.Spec.Order() {
		ms := m.Spec.Member(i)
		ms.Target.DDL = shadow.MemberGreenDDL(m.Spec, i)
		n := shadow.MemberNamesFor(m.Spec.Name, ms.AppTable(), true)
		identity, err := cutover.TargetIdentity(ctx, env.Pool, n, ms, lo)
		if err != nil {
			return in, fmt.Errorf("read the identity columns of %s's target.ddl: %w", ms.AppTable(), err)
		}
		in.Members = append(in.Members, cutover.FinalizeInput{Migration: m.Spec.Name, Names: n, Identity: identity})
	}
	in.Names, in.Identity = in.Members[0].Names, in.Members[0].Identity
	return in, nil
}

// legacyShareWatch is the quiet period under --max-legacy-share: the shapes
// of every table are sampled for the whole period (cutover.WatchShapes,
// into res.Shapes), then blue's users since its start are read once
// (cutover.UsageMembers: the sensor's writes, reading locks, queries naming
// the blue schema) and joined by the blue clients the shape samples saw.
func legacyShareWatch(ctx context.Context, env *Env, names []shadow.Names, own []int32, opts FinalizeOptions, res *FinalizeResult) ([]cutover.Client, error) {
	start := time.Now()
	opts.printf("watching the shapes of %d table(s) for %s (sampled every %s); blue may keep up to %.1f%% of the client sightings ...\n",
		len(names), opts.QuietPeriod, durOr(opts.SampleEvery, time.Second), 100*opts.MaxLegacyShare)
	members := make([]cutover.ShapeMember, len(names))
	for i, n := range names {
		members[i] = cutover.ShapeMember{Names: n, CutOver: true}
	}
	w, err := cutover.WatchShapes(ctx, env.Pool, members, own, opts.QuietPeriod, durOr(opts.SampleEvery, time.Second))
	if err != nil {
		return nil, err
	}
	r := w.NamesUntrusted().Report() // a client calling itself greenswap is a client
	res.Shapes = &r
	clients, err := cutover.UsageMembers(ctx, env.Pool, names, start, own)
	if err != nil {
		return nil, err
	}
	for _, c := range r.BlueClients() {
		if !slices.ContainsFunc(clients, func(k cutover.Client) bool { return k.PID == c.PID && k.Application == c.Application }) {
			clients = append(clients, cutover.Client{PID: c.PID, Application: c.Application, User: c.User, ClientAddr: c.ClientAddr,
				LastSeen: c.LastSeen, How: fmt.Sprintf("shape sample (%d read, %d write sightings)", c.Reads, c.Writes)})
		}
	}
	opts.printf("blue's share of the client sightings: %.1f%% (bound %.1f%%)\n", 100*r.LegacyShare, 100*opts.MaxLegacyShare)
	return clients, nil
}
