package verify

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Snapshot is an exported snapshot held open by its own REPEATABLE READ
// READ ONLY transaction, for as long as the caller needs it: several Runs
// given the same Snapshot (Options.Snapshot) compare their first pass
// under it, so the tables of one migration are checked at one instant. A
// parent and its children written in one transaction are then counted in
// every table or in none.
type Snapshot struct {
	ID  string    // pg_export_snapshot()'s name, what the workers SET TRANSACTION SNAPSHOT to
	At  time.Time // now() in the exporting transaction
	LSN string    // the WAL position current at export (replay LSN on a standby)

	// mu serializes the passes' use of tx (chunk boundaries, settings):
	// one transaction is one connection.
	mu   sync.Mutex
	conn *pgxpool.Conn
	tx   pgx.Tx
}

// ExportSnapshot exports a snapshot on a connection of pool and holds it
// until Close. stream (nil in trigger mode) is waited for before it
// returns, as Run does for a snapshot of its own. It takes one connection:
// a Run sharing it needs Workers more.
func ExportSnapshot(ctx context.Context, pool *pgxpool.Pool, stream StreamWaiter) (*Snapshot, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("verify: connect to export a snapshot: %w", err)
	}
	s := &Snapshot{conn: conn}
	ok := false
	defer func() {
		if !ok {
			s.Close(ctx)
		}
	}()
	if s.tx, err = conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}); err != nil {
		return nil, fmt.Errorf("verify: begin the snapshot's transaction: %w", err)
	}
	// The holder sits idle while the workers read: a server-side idle
	// timeout would end the snapshot under them.
	if _, err := s.tx.Exec(ctx, `SELECT pg_catalog.set_config('idle_in_transaction_session_timeout', '0', true)`); err != nil {
		return nil, err
	}
	if err := s.tx.QueryRow(ctx, `SELECT pg_catalog.pg_export_snapshot(), pg_catalog.now(),
		CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END::text`).Scan(&s.ID, &s.At, &s.LSN); err != nil {
		return nil, fmt.Errorf("verify: export snapshot: %w", err)
	}
	if stream != nil {
		if err := stream.WaitApplied(ctx, s.LSN); err != nil {
			return nil, fmt.Errorf("verify: wait for the stream to reach %s: %w", s.LSN, err)
		}
	}
	ok = true
	return s, nil
}

// Close ends the snapshot's transaction and gives its connection back.
// A Run using the snapshot must have returned.
func (s *Snapshot) Close(ctx context.Context) {
	if s == nil || s.conn == nil {
		return
	}
	if s.tx != nil {
		_ = s.tx.Rollback(context.WithoutCancel(ctx))
	}
	s.conn.Release()
	s.conn, s.tx = nil, nil
}
