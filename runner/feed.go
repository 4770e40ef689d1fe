package runner

import (
	"context"
	gosync "sync"
	"time"

	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	"github.com/greenswap/greenswap/trigger"
	"github.com/greenswap/greenswap/verify"
)

// changeFeed is how blue's changes reach green while a migration is in
// sync: the forward trigger (triggerFeed) or a logical replication stream
// (logicalFeed, feed_logical.go). The runner chooses one from the
// migration's mode (feedFor) and programs against this alone: no command
// asks which mode it runs in. Green → blue is trigger mode's in both (the
// reverse triggers), and so is everything from the cutover on: handOver
// makes the forward direction a trigger too.
//
// The feed lives in runner rather than a package of its own because every
// method works on runner's own types (the sync run's phase and state, a
// Migration with its Build, StreamProgress): a feed package would have to
// import them back or duplicate them.
type changeFeed interface {
	// installStep is the sync trigger step created with green (sync's
	// create-green phase and plan's rehearsal run the same one).
	installStep(n shadow.Names, m *shadow.Mapping, owner string) shadow.Step
	// start runs once green exists, before the backfill's first batch:
	// whatever commits from then on must reach green.
	start(ctx context.Context, r *syncRun) error
	// catchUp is sync's last phase: apply what committed so far, then
	// stop feeding (sync --watch goes on: watch).
	catchUp(ctx context.Context, r *syncRun) error
	// drain waits, bounded, until the feed has applied what committed
	// before it was called: sync calls it before the settle, so the VACUUM
	// covers what the stream wrote while the copy ran (not pages the
	// backlog's apply dirties again after it), and before synced, so the
	// application does not pay for applying a backlog after synced. It
	// returns what it did for the phase's event (nil: nothing to wait for);
	// a stream still behind when the bound passes is said there and in the
	// log, and sync goes on (its last phase waits for the stream again).
	drain(ctx context.Context, r *syncRun) (map[string]any, error)
	// consistent runs fn while every green is an exact copy of its blue
	// and stays one, and goes on feeding after it: the foreign keys among
	// the greens of several tables are added (NOT VALID) in fn, when no
	// green row lacks a row it references.
	consistent(ctx context.Context, r *syncRun, fn func(context.Context) error) error
	// stop releases what start started, keeping its figures; Sync defers
	// it, so every way out of a sync calls it. Idempotent.
	stop(r *syncRun)
	// settle prepares verify's snapshot: the waiter verify calls once it
	// has exported its snapshot (nil: nothing to wait for) and a release
	// to defer.
	settle(ctx context.Context, m *Migration, b *Build, lock shadow.LockOptions) (verify.StreamWaiter, func(), error)
	// readyForCutover refuses a cutover the feed could not hand over in
	// bounded time (bound: CutoverOptions.MaxStreamBacklog), changing nothing.
	readyForCutover(ctx context.Context, m *Migration, bound int64) error
	// handOver runs just before the cutover swap: from its return on both
	// directions run by trigger, and the feed holds nothing (no slot).
	handOver(ctx context.Context, m *Migration, lock shadow.LockOptions, printf func(string, ...any)) error
	// drop removes whatever the feed keeps on the server (trap 9: a slot
	// never outlives its migration): rollback, finalize, and a rollback of
	// a migration already rolled back call it.
	drop(ctx context.Context, m *Migration) error
	// progress is the feed's part of SyncProgress (nil: nothing to show).
	progress(ctx context.Context, m *Migration) (*StreamProgress, error)
	// streaming reports whether the feed has a live stream with a backlog
	// worth sampling (status).
	streaming(ctx context.Context, n shadow.Names) (bool, error)
	// watch is sync --watch's work besides reporting: handled is false
	// when there is nothing to run, and the caller only reports.
	watch(ctx context.Context, m *Migration, every time.Duration, fn func(SyncProgress)) (handled bool, err error)
}

// feedFor is the feed of a migration in mode (env may be nil for
// installStep alone, as plan's rehearsal and setup use it).
func feedFor(env *Env, mode spec.Mode) changeFeed {
	if mode == spec.ModeLogical {
		return &logicalFeed{env: env}
	}
	return triggerFeed{}
}

// feedOf is the feed of a stored migration.
func (e *Env) feedOf(m *Migration) changeFeed { return feedFor(e, spec.Mode(m.Row.Mode)) }

// installStepFor is the sync trigger step for spec's mode (setup.go).
func installStepFor(spec *spec.Spec, n shadow.Names, m *shadow.Mapping, owner string) shadow.Step {
	return feedFor(nil, spec.Mode).installStep(n, m, owner)
}

// triggerFeed: the forward trigger, created enabled with green, carries
// every change in the writer's own transaction, so there is nothing to
// start, wait for, hand over or drop.
type triggerFeed struct{}

func (triggerFeed) installStep(n shadow.Names, m *shadow.Mapping, owner string) shadow.Step {
	return trigger.InstallStep(n, m, owner)
}
func (triggerFeed) start(context.Context, *syncRun) error   { return nil }
func (triggerFeed) catchUp(context.Context, *syncRun) error { return nil }

// drain: the triggers wrote green in each writer's transaction; nothing waits.
func (triggerFeed) drain(context.Context, *syncRun) (map[string]any, error) { return nil, nil }

// consistent: the triggers write green in the writer's own transaction,
// so green is blue's copy at every commit.
func (triggerFeed) consistent(ctx context.Context, _ *syncRun, fn func(context.Context) error) error {
	return fn(ctx)
}
func (triggerFeed) stop(*syncRun) {}
func (triggerFeed) settle(context.Context, *Migration, *Build, shadow.LockOptions) (verify.StreamWaiter, func(), error) {
	return nil, func() {}, nil
}
func (triggerFeed) readyForCutover(context.Context, *Migration, int64) error { return nil }
func (triggerFeed) handOver(context.Context, *Migration, shadow.LockOptions, func(string, ...any)) error {
	return nil
}
func (triggerFeed) drop(context.Context, *Migration) error { return nil }
func (triggerFeed) progress(context.Context, *Migration) (*StreamProgress, error) {
	return nil, nil
}
func (triggerFeed) streaming(context.Context, shadow.Names) (bool, error) { return false, nil }
func (triggerFeed) watch(context.Context, *Migration, time.Duration, func(SyncProgress)) (bool, error) {
	return false, nil
}

// registry holds this process's per-migration values of one kind (the
// streamers an Env runs, the backlog samples it took), safe for concurrent
// use; the zero value is empty and ready.
type registry[T comparable] struct {
	mu gosync.Mutex
	m  map[string]T
}

func (r *registry[T]) get(name string) (T, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.m[name]
	return v, ok
}

// getOrPut returns name's value, making it with mk first if there is none.
func (r *registry[T]) getOrPut(name string, mk func() T) T {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v, ok := r.m[name]; ok {
		return v
	}
	if r.m == nil {
		r.m = map[string]T{}
	}
	v := mk()
	r.m[name] = v
	return v
}

func (r *registry[T]) put(name string, v T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string]T{}
	}
	r.m[name] = v
}

// takeAll removes every value and returns them.
func (r *registry[T]) takeAll() []T {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []T
	for _, v := range r.m {
		out = append(out, v)
	}
	r.m = nil
	return out
}

// take removes name's value and returns it.
func (r *registry[T]) take(name string) (T, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.m[name]
	delete(r.m, name)
	return v, ok
}

// remove deletes name's value if it is still v (a later one stays).
func (r *registry[T]) remove(name string, v T) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur, ok := r.m[name]; ok && cur == v {
		delete(r.m, name)
	}
}
