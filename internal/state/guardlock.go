package state

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
)

// GuardLock is held by a cutover --guard process for its window and its
// own rollback, on a session of its own, so that status can tell a guard
// that is watching from one whose process is gone (break7 findings 01,
// 09): the events say what it last did, the lock says whether it still
// can. It is not the migration's lock (other keys), so rollback, finalize
// and status still run while a guard watches.
type GuardLock struct{ conn *pgx.Conn }

// guardLockKey: the two-int4 form under its own namespace.
const guardLockKey = `pg_catalog.hashtext('greenswap:guard'), pg_catalog.hashtext($1)`

// AcquireGuardLock takes the guard lock of migration without waiting; ok
// is false when another session holds it (another guard is watching).
func AcquireGuardLock(ctx context.Context, connConfig *pgx.ConnConfig, migration string) (_ *GuardLock, ok bool, _ error) {
	conn, err := pgx.ConnectConfig(ctx, sessionConfig(connConfig, migration, "guard"))
	if err != nil {
		return nil, false, fmt.Errorf("connect for the guard's lock: %w", err)
	}
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_try_advisory_lock(`+guardLockKey+`)`, migration).Scan(&ok); err != nil || !ok {
		conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			return nil, false, fmt.Errorf("take the guard lock of migration %s: %w", migration, err)
		}
		return nil, false, nil
	}
	return &GuardLock{conn: conn}, true, nil
}

// Release ends the lock's session (nil-safe).
func (l *GuardLock) Release(ctx context.Context) {
	if l != nil && l.conn != nil {
		l.conn.Close(ctx)
		l.conn = nil
	}
}

// GuardAlive says whether a session holds migration's guard lock: a
// cutover --guard process is still watching or rolling back.
func GuardAlive(ctx context.Context, q db.Querier, migration string) (bool, error) {
	var alive bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
		WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory' AND l.granted
		  AND l.database OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
		  AND l.classid::pg_catalog.int4 OPERATOR(pg_catalog.=) pg_catalog.hashtext('greenswap:guard')
		  AND l.objid::pg_catalog.int4 OPERATOR(pg_catalog.=) pg_catalog.hashtext($1) AND l.objsubid OPERATOR(pg_catalog.=) 2)`, migration).Scan(&alive)
	if err != nil {
		return false, fmt.Errorf("look for the guard of migration %s in pg_locks: %w", migration, err)
	}
	return alive, nil
}

// sessionConfig is connConfig for a lock's own session, named
// greenswap:<migration>:<what> so pg_stat_activity says whose it is.
func sessionConfig(connConfig *pgx.ConnConfig, migration, what string) *pgx.ConnConfig {
	cfg := connConfig.Copy()
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["application_name"] = "greenswap:" + migration + ":" + what
	return cfg
}
