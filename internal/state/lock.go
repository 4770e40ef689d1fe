package state

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/exitcode"
)

// Lock is a held per-migration advisory lock. It lives on its own dedicated
// session: the lock is released when Release is called or the session ends
// (so a crashed greenswap never leaves it behind).
type Lock struct {
	conn      *pgx.Conn
	migration string
}

// HolderError says who holds a migration's lock. Exit code 4.
type HolderError struct {
	Migration   string
	PID         int32
	Application string
	ClientAddr  string
	Since       *time.Time
}

func (e *HolderError) Error() string {
	s := fmt.Sprintf("migration %s is held by another greenswap (pid %d", e.Migration, e.PID)
	if e.Application != "" {
		s += ", application " + e.Application
	}
	if e.ClientAddr != "" {
		s += ", from " + e.ClientAddr
	}
	if e.Since != nil {
		s += ", since " + e.Since.Format(time.RFC3339)
	}
	return s + "); wait for it to finish or stop it, then retry"
}

func (e *HolderError) ExitCode() exitcode.Code { return exitcode.Busy }

// lockKey: the two-int4 advisory-lock form, namespaced by hashtext('greenswap')
// so it cannot collide with the application's own single-bigint locks.
const lockKey = `hashtext('greenswap'), hashtext($1)`

// Acquire takes the migration's advisory lock without waiting, on a new
// session opened from connConfig. If another session holds it, it returns a
// *HolderError naming that session.
func Acquire(ctx context.Context, connConfig *pgx.ConnConfig, migration string) (*Lock, error) {
	cfg := connConfig.Copy()
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["application_name"] = "greenswap:" + migration + ":lock"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, exitcode.With(exitcode.BadInput, fmt.Errorf("connect for migration lock: %w", err))
	}
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_try_advisory_lock(`+lockKey+`)`, migration).Scan(&got); err != nil {
		conn.Close(ctx)
		return nil, err
	}
	if got {
		return &Lock{conn: conn, migration: migration}, nil
	}
	defer conn.Close(ctx)
	h := &HolderError{Migration: migration}
	var app, addr *string
	err = conn.QueryRow(ctx, `
		SELECT l.pid, a.application_name, a.client_addr::text, a.backend_start
		FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = pg_catalog.current_database())
		  AND l.classid::int = pg_catalog.hashtext('greenswap') AND l.objid::int = pg_catalog.hashtext($1) AND l.objsubid = 2
		LIMIT 1`, migration).Scan(&h.PID, &app, &addr, &h.Since)
	if err != nil && err != pgx.ErrNoRows {
		return nil, err
	}
	if app != nil {
		h.Application = *app
	}
	if addr != nil {
		h.ClientAddr = *addr
	}
	return nil, h
}

// PID is the backend PID of the lock's session (0 once released), so a
// caller can tell this session of its own from a client's.
func (l *Lock) PID() uint32 {
	if l == nil || l.conn == nil {
		return 0
	}
	return l.conn.PgConn().PID()
}

// Release gives the lock back and closes its session.
func (l *Lock) Release(ctx context.Context) error {
	if l == nil || l.conn == nil {
		return nil
	}
	_, err := l.conn.Exec(ctx, `SELECT pg_catalog.pg_advisory_unlock(`+lockKey+`)`, l.migration)
	cerr := l.conn.Close(ctx)
	l.conn = nil
	if err != nil {
		return err
	}
	return cerr
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
