package state

import (
	"context"
	"errors"
	"fmt"
	"slices"
	gosync "sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/exitcode"
)

// Lock is a held per-migration advisory lock. It lives on its own dedicated
// session: the lock is released when Release is called or the session ends
// (so a crashed greenswap never leaves it behind).
//
// The lock belongs to one server backend, so the session must keep that
// backend for the whole command: behind a transaction pooler (pgbouncer in
// pool_mode = transaction) the lock would stay on a pooled backend serving
// other clients, outlive greenswap and block every later command, while
// greenswap's next statement runs elsewhere (issue 19). Acquire checks, in
// a second transaction, that its backend still holds the lock; Verify (run
// by Watch periodically and by Release) checks it again.
type Lock struct {
	mu        gosync.Mutex
	conn      *pgx.Conn
	migration string
	backend   uint32 // the server backend holding the lock (pg_backend_pid())
	lost      error  // the first failed Verify
	onLost    func(error)
	stopWatch chan struct{}
}

// LostError: the lock's session no longer runs on the backend that took the
// lock, or that backend no longer holds it. The command must stop: another
// greenswap may now take the migration. Exit 1.
type LostError struct {
	Migration string
	Backend   uint32 // the backend that took the lock
	Now       uint32 // the backend answering now (0: none)
	Reason    string
}

func (e *LostError) Error() string {
	s := fmt.Sprintf("the advisory lock of migration %s was taken by server backend %d but %s", e.Migration, e.Backend, e.Reason)
	return s + ": a transaction pooler is between greenswap and the server; stop, run greenswap connected directly to the server (or through a session-mode pool), " +
		fmt.Sprintf("and if another command reports the migration held by pid %d, end that backend (SELECT pg_terminate_backend(%d))", e.Backend, e.Backend)
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
	conn, err := pgx.ConnectConfig(ctx, sessionConfig(connConfig, migration, "lock"))
	if err != nil {
		return nil, exitcode.With(exitcode.BadInput, fmt.Errorf("connect for migration lock: %w", err))
	}
	var got bool
	var backend uint32
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_try_advisory_lock(`+lockKey+`), pg_catalog.pg_backend_pid()`,
		migration).Scan(&got, &backend); err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("take the advisory lock of migration %s: %w", migration, err)
	}
	if got {
		l := &Lock{conn: conn, migration: migration, backend: backend}
		if err := l.Verify(ctx); err != nil {
			conn.Close(ctx)
			return nil, err
		}
		return l, nil
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

// PID is the server backend PID of the lock's session (0 once released),
// so a caller can tell this session of its own from a client's. It is the
// server's pg_backend_pid(), not the PID of the connection's BackendKeyData,
// which a proxy makes up.
func (l *Lock) PID() uint32 {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return 0
	}
	return l.backend
}

// verifySQL: the backend answering now, and whether it holds the lock.
const verifySQL = `SELECT pg_catalog.pg_backend_pid(), EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
	WHERE l.pid = pg_catalog.pg_backend_pid() AND l.locktype = 'advisory' AND l.granted
	  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
	  AND l.classid::int = pg_catalog.hashtext('greenswap') AND l.objid::int = pg_catalog.hashtext($1) AND l.objsubid = 2)`

// Verify checks, in a transaction of its own, that the lock's session still
// runs on the backend that took the lock and that this backend holds it; a
// *LostError otherwise (and every later Verify returns it too).
func (l *Lock) Verify(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.verifyLocked(ctx)
}

func (l *Lock) verifyLocked(ctx context.Context) error {
	if l.lost != nil || l.conn == nil {
		return l.lost
	}
	var now uint32
	var held bool
	if err := l.conn.QueryRow(ctx, verifySQL, l.migration).Scan(&now, &held); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("check the advisory lock of migration %s: %w", l.migration, err)
	}
	switch {
	case now != l.backend:
		l.lost = &LostError{Migration: l.migration, Backend: l.backend, Now: now,
			Reason: fmt.Sprintf("the lock's session now runs on backend %d", now)}
	case !held:
		l.lost = &LostError{Migration: l.migration, Backend: l.backend, Now: now, Reason: "that backend no longer holds it"}
	default:
		return nil
	}
	if l.onLost != nil {
		l.onLost(l.lost)
	}
	return l.lost
}

// Watch runs Verify every interval until Release, and calls onLost (once)
// if it fails with a *LostError, so a command can say so at once rather
// than at its end.
func (l *Lock) Watch(every time.Duration, onLost func(error)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil || l.stopWatch != nil {
		return
	}
	l.onLost = onLost
	stop := make(chan struct{})
	l.stopWatch = stop
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			// Generous: a cancelled query closes the lock's session.
			ctx, cancel := context.WithTimeout(context.Background(), max(every, 30*time.Second))
			err := l.Verify(ctx)
			cancel()
			var lost *LostError
			if errors.As(err, &lost) {
				return
			}
		}
	}()
}

// Release gives the lock back and closes its session. It first verifies the
// lock (a *LostError if it was lost: the unlock would run on some other
// backend) and reports an unlock that found no lock to release.
func (l *Lock) Release(ctx context.Context) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return nil
	}
	if l.stopWatch != nil {
		close(l.stopWatch)
		l.stopWatch = nil
	}
	verr := l.verifyLocked(ctx)
	var err error
	if verr == nil {
		var released bool
		err = l.conn.QueryRow(ctx, `SELECT pg_catalog.pg_advisory_unlock(`+lockKey+`)`, l.migration).Scan(&released)
		if err == nil && !released {
			err = &LostError{Migration: l.migration, Backend: l.backend, Reason: "its session held no such lock at release"}
		}
	}
	cerr := l.conn.Close(ctx)
	l.conn = nil
	return errors.Join(verr, err, cerr)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
