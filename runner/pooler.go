package runner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/internal/exitcode"
)

// Poolers (issue 19).
//
// greenswap keeps state on its sessions for their whole life: the
// migration's advisory lock, the startup search_path, the index build's
// settings, prepared statements. Behind a transaction (or statement) pooler
// such as pgbouncer in pool_mode = transaction, a client's session is not
// one server backend: each transaction may run on another one, and what a
// transaction leaves on its backend serves the next client of the pool. So
// before the pool is opened, two bare probe sessions (simple protocol, only
// SELECTs, no setting) check that each keeps its own backend:
//
//   - probe A reads pg_backend_pid() and goes idle;
//   - probe B opens a transaction and reads it: a pooler hands B the backend
//     A just gave back (pgbouncer reuses the most recently used one);
//   - probe A reads it again while B's transaction holds B's backend: a
//     pooler must give A another one (or make it wait, with pool_size 1);
//   - probe B reads it again after its commit.
//
// Any backend seen by both probes, or two backends seen by one, is a pooler
// and greenswap refuses (*PoolerError, exit 2) before it opens the pool,
// takes a lock or changes anything. A session pooler passes: each client
// keeps one backend until it disconnects, which is all greenswap needs.
//
// pgbouncer also refuses startup parameters it does not track, search_path
// among them ("unsupported startup parameter", 08P01), in every pool mode;
// with ignore_startup_parameters = search_path it drops it silently. The
// probe then connects without it, and a session pooler gets the path set
// per session instead (AfterConnect): a session greenswap owns until it
// disconnects, whose state the pooler's server_reset_query clears then.

// PoolerError: greenswap is connected through a pooler that does not give
// it one backend per session. Exit 2.
type PoolerError struct {
	Target   string // host=… port=… of the DSN
	Evidence string
}

func (e *PoolerError) Error() string {
	return fmt.Sprintf("%s is a transaction-pooling proxy (pgbouncer or similar), not one server session per connection (%s), so nothing was changed: "+
		"greenswap keeps its migration lock and settings on its sessions; connect directly to the PostgreSQL server, or through a pool in session mode (pgbouncer: pool_mode = session for greenswap's database alias or user)",
		e.Target, e.Evidence)
}

func (e *PoolerError) ExitCode() exitcode.Code { return exitcode.BadInput }

// poolerProbe is what the probe sessions found.
type poolerProbe struct {
	proxied       bool // the BackendKeyData pid is not the backend's: a proxy relays the session
	startupRefuse bool // search_path as a startup parameter was refused
	pathDropped   bool // accepted, but the session does not have it (ignored by a proxy)
}

// poolerProbeWait bounds probe A's second read, made while probe B holds a
// transaction: behind a pooler whose pool is full it waits for B's backend.
const poolerProbeWait = 3 * time.Second

func isStartupParamRefused(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && strings.Contains(pe.Message, "unsupported startup parameter")
}

// probeConnect opens one probe session: with the startup search_path,
// or, when the other end refuses it, without.
func probeConnect(ctx context.Context, cc *pgx.ConnConfig, p *poolerProbe) (*pgx.Conn, error) {
	cfg := cc.Copy()
	cfg.RuntimeParams = map[string]string{}
	for k, v := range cc.RuntimeParams {
		cfg.RuntimeParams[k] = v
	}
	if p.startupRefuse {
		delete(cfg.RuntimeParams, "search_path")
	}
	cfg.AfterConnect = nil
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil && !p.startupRefuse && isStartupParamRefused(err) {
		p.startupRefuse = true
		delete(cfg.RuntimeParams, "search_path")
		conn, err = pgx.ConnectConfig(ctx, cfg)
	}
	return conn, err
}

func backendPID(ctx context.Context, c *pgx.Conn) (uint32, error) {
	var pid uint32
	err := c.QueryRow(ctx, `SELECT pg_catalog.pg_backend_pid()`, pgx.QueryExecModeSimpleProtocol).Scan(&pid)
	return pid, err
}

// probePooler runs the probe described above. A connection error is
// returned as is (the caller says how to fix the DSN); a pooler as a
// *PoolerError.
func probePooler(ctx context.Context, cc *pgx.ConnConfig) (poolerProbe, error) {
	var p poolerProbe
	a, err := probeConnect(ctx, cc, &p)
	if err != nil {
		return p, err
	}
	defer a.Close(context.Background())
	b, err := probeConnect(ctx, cc, &p)
	if err != nil {
		return p, err
	}
	defer b.Close(context.Background())

	pooled := func(format string, args ...any) (poolerProbe, error) {
		ev := fmt.Sprintf(format, args...)
		if p.startupRefuse {
			ev += `; it also refused the startup parameter search_path ("unsupported startup parameter"), as pgbouncer does`
		}
		return p, &PoolerError{Target: describe(cc), Evidence: ev}
	}
	a1, err := backendPID(ctx, a)
	if err != nil {
		return p, fmt.Errorf("probe the session: %w", err)
	}
	p.proxied = a1 != a.PgConn().PID()
	if !p.startupRefuse {
		var path string
		if err := a.QueryRow(ctx, `SELECT pg_catalog.current_setting('search_path')`, pgx.QueryExecModeSimpleProtocol).Scan(&path); err != nil {
			return p, fmt.Errorf("probe the session's search_path: %w", err)
		}
		p.pathDropped = path != SessionSearchPath
	}
	tx, err := b.BeginTx(ctx, pgx.TxOptions{})
	if err != nil {
		// pgbouncer's statement mode refuses transactions outright.
		return pooled("a transaction cannot be opened: %v", err)
	}
	defer tx.Rollback(context.Background())
	b1, err := backendPID(ctx, b)
	if err != nil {
		return p, fmt.Errorf("probe the session: %w", err)
	}
	if b1 == a1 {
		return pooled("two of greenswap's connections were served by the same server backend, pid %d", a1)
	}
	// Only a proxy can make the read wait for a backend: connected
	// directly (the BackendKeyData names the backend itself) a slow server
	// is no evidence.
	wctx, cancel := ctx, context.CancelFunc(func() {})
	if p.proxied {
		wctx, cancel = context.WithTimeout(ctx, poolerProbeWait)
	}
	a2, err := backendPID(wctx, a)
	cancel()
	if err != nil {
		if p.proxied && ctx.Err() == nil && wctx.Err() != nil {
			return pooled("a connection's second query waited %s for a server backend while another connection held a transaction", poolerProbeWait)
		}
		return p, fmt.Errorf("probe the session: %w", err)
	}
	if a2 != a1 {
		return pooled("one connection's backend changed between two transactions, pid %d then %d", a1, a2)
	}
	if err := tx.Rollback(ctx); err != nil {
		return p, fmt.Errorf("probe the session: %w", err)
	}
	b2, err := backendPID(ctx, b)
	if err != nil {
		return p, fmt.Errorf("probe the session: %w", err)
	}
	if b2 != b1 {
		return pooled("one connection's backend changed between two transactions, pid %d then %d", b1, b2)
	}
	return p, nil
}

// setSessionPath is the AfterConnect of sessions behind a session pooler,
// which cannot take search_path at startup: the same path, set once per
// session (a session greenswap owns until it disconnects).
func setSessionPath(prev pgconn.AfterConnectFunc) pgconn.AfterConnectFunc {
	return func(ctx context.Context, pc *pgconn.PgConn) error {
		if prev != nil {
			if err := prev(ctx, pc); err != nil {
				return err
			}
		}
		_, err := pc.Exec(ctx, "SET search_path TO "+SessionSearchPath).ReadAll()
		if err != nil {
			return fmt.Errorf("set the session's search_path behind a session pooler: %w", err)
		}
		return nil
	}
}
