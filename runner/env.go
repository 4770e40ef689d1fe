// Package runner is greenswap's orchestration layer: each command (plan,
// sync, verify, cutover, rollback, finalize, status) is a list of phases, each
// a small function calling the lifecycle packages (shadow, trigger, sync,
// verify, cutover). It is the only package that imports all of them; the CLI
// calls nothing else.
package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/logx"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	"github.com/greenswap/greenswap/sync/stream"
)

// Env is a connected greenswap: the pool for the user's database, the
// config to open dedicated sessions (locks, replication), and the logger.
type Env struct {
	Pool        *pgxpool.Pool
	ConnConfig  *pgx.ConnConfig
	Log         zerolog.Logger
	ServerMajor int
	DSN         string // for redaction only; never logged
	// Proxied: a session-mode proxy relays the connections (the backend
	// PIDs pgx reports are the proxy's, not the server's).
	Proxied bool

	// Stream tunes the logical-mode streamers this Env starts (zero
	// fields: package stream's defaults; tests shorten them).
	Stream stream.Options
	// StreamCatchUp bounds how long a sync without --watch waits, once
	// synced, for the stream to apply everything committed until then
	// (0: DefaultStreamCatchUp).
	StreamCatchUp time.Duration
	// BacklogWindow is how long the logical stream's backlog must grow
	// before a warning, and how far back its samples go (its rates run
	// over the last third; 0: DefaultBacklogWindow; backlog.go).
	BacklogWindow time.Duration

	// streams are the streamers running on this Env, by migration, so that
	// progress reports can show their in-memory figures (lag in seconds,
	// rate) and the metrics endpoint of the same process can too.
	streams registry[*stream.Streamer]
	// kept are the streamers a Sync with KeepStreaming handed over, by
	// migration, until WatchSync takes them (feed_logical.go).
	kept registry[*logicalSync]
	// backlogs are this process's samples of each logical migration's
	// backlog, by migration (backlog.go).
	backlogs registry[*backlogWindow]

	// afterSwapCommit, when set (tests only), runs once a swap committed
	// and before it validates the foreign keys it moved; an error ends the
	// command there, as a greenswap killed at that point would
	// (revalidate.go).
	afterSwapCommit func() error
	// syncPoint, when set (tests only), is called at points of sync's last
	// phases: "settle" (the phase begins), "settled" (its VACUUMs are
	// done), "analyzed" (analyze is recorded) and "synced" (inside the
	// transaction that records synced, before it commits); an error ends
	// the sync there.
	syncPoint func(ctx context.Context, point string) error
}

// atSyncPoint calls the test hook syncPoint, if any.
func (e *Env) atSyncPoint(ctx context.Context, point string) error {
	if e.syncPoint == nil {
		return nil
	}
	return e.syncPoint(ctx, point)
}

// SessionSearchPath is the search_path every connection greenswap opens
// starts with (the pool, the lock session, the index and replication
// sessions, which copy Env.ConnConfig): no schema a client can write to.
const SessionSearchPath = "pg_catalog, pg_temp"

// DefaultStreamCatchUp is Env.StreamCatchUp's default.
const DefaultStreamCatchUp = 5 * time.Minute

// Connect opens the pool. A bad or unreachable DSN is bad input (exit 2),
// and the error never contains the password.
func Connect(ctx context.Context, dsn string, log zerolog.Logger) (*Env, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, exitcode.Errorf(exitcode.BadInput, "bad connection string %s: %s (use --dsn, DATABASE_URL or the PG* variables)",
			logx.RedactDSN(dsn), logx.Redact(err.Error(), dsn))
	}
	if cfg.ConnConfig.RuntimeParams["application_name"] == "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = "greenswap"
	}
	// Every session greenswap opens starts with only pg_catalog and pg_temp
	// (last) on its path: a role with CREATE on the app schema could
	// otherwise create an exact-match overload of a built-in that our
	// catalog queries call with an implicit cast (col_description(oid,
	// int2), pg_relation_size(oid)), and PostgreSQL prefers that exact
	// match over pg_catalog's, running the attacker's code as us. Sessions
	// that evaluate spec expressions set shadow.SearchPathFor(app)
	// themselves and qualify what greenswap itself calls.
	cfg.ConnConfig.RuntimeParams["search_path"] = SessionSearchPath
	// Before the pool opens anything: a transaction pooler in between
	// would spread our session state over other clients (pooler.go).
	probe, err := probePooler(ctx, cfg.ConnConfig)
	var poolerErr *PoolerError
	if errors.As(err, &poolerErr) {
		return nil, err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" { // insufficient_privilege: no CONNECT on the database
		return nil, exitcode.Errorf(exitcode.BadInput, "role %s may not connect to database %s (%s, SQLSTATE %s), which every greenswap command needs, so nothing was changed: GRANT CONNECT ON DATABASE %s TO %s, as the database's owner",
			cfg.ConnConfig.User, cfg.ConnConfig.Database, pgErr.Message, pgErr.Code, db.Ident(cfg.ConnConfig.Database), db.Ident(cfg.ConnConfig.User))
	}
	if err != nil {
		return nil, exitcode.Errorf(exitcode.BadInput, "cannot connect to %s: %s (check --dsn / DATABASE_URL / PG* variables and that the server is running)",
			describe(cfg.ConnConfig), logx.Redact(err.Error(), dsn))
	}
	if probe.startupRefuse || probe.pathDropped {
		delete(cfg.ConnConfig.RuntimeParams, "search_path")
		cfg.ConnConfig.AfterConnect = setSessionPath(cfg.ConnConfig.AfterConnect)
	}
	cfg.MaxConns = max(cfg.MaxConns, 8)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		return nil, exitcode.Errorf(exitcode.BadInput, "cannot connect to %s: %s (check --dsn / DATABASE_URL / PG* variables and that the server is running)",
			describe(cfg.ConnConfig), logx.Redact(err.Error(), dsn))
	}
	var num string
	if err := pool.QueryRow(ctx, "SHOW server_version_num").Scan(&num); err != nil {
		pool.Close()
		return nil, err
	}
	n, _ := strconv.Atoi(num)
	if probe.proxied {
		log.Info().Str("target", describe(cfg.ConnConfig)).Msg("connected through a session-mode proxy: every connection keeps its own server backend")
	}
	return &Env{Pool: pool, ConnConfig: cfg.ConnConfig, Log: log, ServerMajor: n / 10000, DSN: dsn, Proxied: probe.proxied}, nil
}

func describe(c *pgx.ConnConfig) string {
	return fmt.Sprintf("host=%s port=%d dbname=%s user=%s", c.Host, c.Port, c.Database, c.User)
}

// Close releases the pool.
func (e *Env) Close() {
	for _, ls := range e.kept.takeAll() {
		ls.stop()
	}
	e.Pool.Close()
}

// Target identifies the database the Env is connected to, for log lines.
func (e *Env) Target() string { return describe(e.ConnConfig) }

// LockCheckEvery is how often a held migration lock verifies that its
// session still has the backend that took it (state.Lock.Watch).
const LockCheckEvery = 10 * time.Second

// Lock takes the migration's advisory lock (exit 4 if held elsewhere) and
// watches it: a lock that lost its backend (a pooler moved the session) is
// logged as an error at once, and Release returns it.
func (e *Env) Lock(ctx context.Context, migration string) (*state.Lock, error) {
	l, err := state.Acquire(ctx, e.ConnConfig, migration)
	if err != nil {
		return nil, err
	}
	log := e.Log
	l.Watch(LockCheckEvery, func(err error) {
		log.Error().Str("migration", migration).Msg(err.Error())
	})
	return l, nil
}

// Migration is a stored migration with its spec decoded and names derived.
type Migration struct {
	Row   *state.Migration
	Spec  *spec.Spec
	Names shadow.Names
}

// LoadMigration reads a migration by name (exit 2 if there is none).
func (e *Env) LoadMigration(ctx context.Context, name string) (*Migration, error) {
	row, err := state.Get(ctx, e.Pool, name)
	if err != nil {
		return nil, err
	}
	var spec spec.Spec
	if err := json.Unmarshal(row.Spec, &spec); err != nil {
		return nil, fmt.Errorf("decode stored spec of %s: %w", name, err)
	}
	return &Migration{Row: row, Spec: &spec, Names: namesOf(&spec)}, nil
}
