package stream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// MinServerMajor is the oldest PostgreSQL logical mode runs on: pgoutput
// passes logical decoding messages (the echo markers) from 14 on.
const MinServerMajor = 14

// Setup creates the migration's publication (blue only) and logical slot,
// in that order: the publication must exist in the catalog before the
// slot's starting point, or pgoutput cannot see it for the first changes.
// It returns the slot's consistent point: every transaction committing after
// it is in the stream. Call it before the backfill starts, so that whatever
// committed before the slot is seen by the backfill's snapshots.
//
// fresh drops a slot of that name first (one left from an earlier run of
// the migration: it starts too early, at a point whose changes the backfill
// will see anyway). If the slot cannot be created the publication is
// dropped again, so a failed setup leaves nothing behind. q must not be in
// a transaction (slot creation waits for running transactions to finish,
// and cannot run in one that has written).
func Setup(ctx context.Context, q *pgxpool.Pool, n shadow.Names, m *shadow.Mapping, fresh bool, log zerolog.Logger) (pglogrepl.LSN, error) {
	return SetupTables(ctx, q, []Table{{Names: n, Mapping: m}}, fresh, log)
}

// SetupTables is Setup for the tables of a migration (Config.Tables; the
// first one's names are the migration's): one publication of every blue,
// one slot.
func SetupTables(ctx context.Context, q *pgxpool.Pool, tables []Table, fresh bool, log zerolog.Logger) (pglogrepl.LSN, error) {
	n := tables[0].Names
	var blues []shadow.Names
	for _, t := range tables {
		if err := CheckServer(ctx, q, t.Names, t.Mapping); err != nil {
			return 0, err
		}
		blues = append(blues, t.Names)
	}
	if _, err := createPublication(ctx, q, n.Publication, blues); err != nil {
		return 0, err
	}
	if fresh {
		if err := dropSlot(ctx, q, n.Slot); err != nil {
			return 0, err
		}
	}
	exists, _, _, err := SlotInfo(ctx, q, n.Slot)
	if err != nil {
		return 0, err
	}
	if exists {
		var lsn pglogrepl.LSN
		err := q.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, n.Slot).Scan(&lsn)
		return lsn, err
	}
	lsn, err := createSlot(ctx, q, n.Slot, log)
	if err != nil {
		if derr := dropPublication(context.WithoutCancel(ctx), q, n); derr != nil {
			err = errors.Join(err, derr)
		}
		return 0, err
	}
	return lsn, nil
}

// CheckServer checks what logical mode needs at run time (plan reports the
// same as hazards): wal_level = logical, PostgreSQL 14+, a replica identity
// that logs the sync key, no slot of the same name in another database.
func CheckServer(ctx context.Context, q db.Querier, n shadow.Names, m *shadow.Mapping) error {
	var walLevel string
	var major int
	var otherDB *string
	err := q.QueryRow(ctx, `SELECT pg_catalog.current_setting('wal_level'), pg_catalog.current_setting('server_version_num')::int / 10000,
		(SELECT database::text FROM pg_replication_slots WHERE slot_name = $1 AND database IS DISTINCT FROM pg_catalog.current_database())`,
		n.Slot).Scan(&walLevel, &major, &otherDB)
	if err != nil {
		return err
	}
	if walLevel != "logical" {
		return fmt.Errorf("mode: logical needs wal_level = logical; the server has %s (ALTER SYSTEM SET wal_level = logical and restart, or use mode: trigger)", walLevel)
	}
	if major < MinServerMajor {
		return fmt.Errorf("mode: logical needs PostgreSQL %d or later (pgoutput messages); the server is %d: use mode: trigger", MinServerMajor, major)
	}
	if otherDB != nil {
		return fmt.Errorf("replication slot %s already belongs to database %s (slot names are cluster-wide): rename the migration", n.Slot, *otherDB)
	}
	cols, err := ReplicaIdentityColumns(ctx, q, n.Blue)
	if err != nil {
		return err
	}
	var missing []string
	for _, k := range m.Key {
		if !slices.Contains(cols, k) {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the replica identity of %s does not log key column(s) %s, so deletes and key changes could not reach green: "+
			"ALTER TABLE %s REPLICA IDENTITY USING INDEX <a unique index on the key>, or use mode: trigger",
			n.Blue, strings.Join(missing, ", "), db.Ident(n.Blue.Schema, n.Blue.Name))
	}
	return nil
}

// ReplicaIdentityColumns are the columns table t's replica identity logs
// for updates and deletes: the primary key (DEFAULT), the index's columns
// (USING INDEX), every column (FULL), none (NOTHING, or DEFAULT without a
// primary key).
func ReplicaIdentityColumns(ctx context.Context, q db.Querier, t spec.QualifiedName) ([]string, error) {
	rows, err := q.Query(ctx, `
SELECT a.attname::text
  FROM pg_class c
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE c.oid = pg_catalog.to_regclass($1)
   AND (c.relreplident = 'f'
        OR (c.relreplident = 'd' AND a.attnum = ANY (SELECT pg_catalog.unnest(i.indkey) FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
        OR (c.relreplident = 'i' AND a.attnum = ANY (SELECT pg_catalog.unnest(i.indkey) FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)))
 ORDER BY a.attnum`, db.Ident(t.Schema, t.Name))
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// CreatePublication creates the publication for blue alone, if it is
// missing. Partition changes are published as blue's own
// (publish_via_partition_root). On PostgreSQL 15+ it publishes only the
// replica identity's columns (which hold the sync key): the stream needs
// nothing but the keys, since the applier reads the rows from blue, and the
// walsender then never sends the other columns — TOAST-sized values above
// all. It returns the statement it ran ("" if the publication existed).
func CreatePublication(ctx context.Context, q db.Querier, n shadow.Names) (string, error) {
	return createPublication(ctx, q, n.Publication, []shadow.Names{n})
}

// createPublication is CreatePublication of publication pub for the blues
// of tables (a migration of several tables publishes each of its blues).
func createPublication(ctx context.Context, q db.Querier, pub string, tables []shadow.Names) (string, error) {
	var exists bool
	var major int
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1),
		pg_catalog.current_setting('server_version_num')::int / 10000`, pub).Scan(&exists, &major); err != nil {
		return "", err
	}
	if exists {
		return "", nil
	}
	rels := make([]string, len(tables))
	for i, n := range tables {
		var ident string
		if err := q.QueryRow(ctx, `SELECT coalesce((SELECT relreplident::text FROM pg_class WHERE oid = pg_catalog.to_regclass($1)), '')`,
			db.Ident(n.Blue.Schema, n.Blue.Name)).Scan(&ident); err != nil {
			return "", err
		}
		var cols []string
		if major >= 15 && ident != "f" {
			var err error
			if cols, err = ReplicaIdentityColumns(ctx, q, n.Blue); err != nil {
				return "", err
			}
		}
		rels[i] = publishedRelation(n, cols)
	}
	sql := "CREATE PUBLICATION " + db.Ident(pub) + " FOR TABLE " + strings.Join(rels, ", ") + " WITH (publish_via_partition_root = true)"
	_, err := q.Exec(ctx, sql)
	if err != nil && db.SQLState(err) != "42710" { // duplicate_object: a concurrent creation won
		return "", fmt.Errorf("create publication %s: %w", pub, err)
	}
	return sql, nil
}

// publishedRelation is blue with its column list, as FOR TABLE names it.
func publishedRelation(n shadow.Names, cols []string) string {
	list := ""
	if len(cols) > 0 {
		list = " (" + db.IdentList(cols) + ")"
	}
	return db.Ident(n.Blue.Schema, n.Blue.Name) + list
}

// SlotSQL is what creates the slot (for plan's listing).
func SlotSQL(n shadow.Names) string {
	return "SELECT pg_catalog.pg_create_logical_replication_slot(" + db.Literal(n.Slot) + ", 'pgoutput')"
}

func createSlot(ctx context.Context, q *pgxpool.Pool, slot string, log zerolog.Logger) (pglogrepl.LSN, error) {
	// Slot creation waits for every transaction running now to end. Say
	// which ones, if that takes a while.
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-done:
			return
		case <-time.After(5 * time.Second):
		}
		rows, err := q.Query(context.WithoutCancel(ctx), `
SELECT pid, coalesce(application_name, ''), coalesce(state, ''), pg_catalog.date_trunc('second', pg_catalog.now() - xact_start)::text
  FROM pg_stat_activity
 WHERE backend_xid IS NOT NULL AND pid <> pg_catalog.pg_backend_pid() AND backend_type = 'client backend'
 ORDER BY xact_start LIMIT 5`)
		if err != nil {
			return
		}
		defer rows.Close()
		var who []string
		for rows.Next() {
			var pid int32
			var app, st, age string
			if rows.Scan(&pid, &app, &st, &age) == nil {
				who = append(who, fmt.Sprintf("pid %d (%s, %s, open %s)", pid, app, st, age))
			}
		}
		log.Warn().Str("slot", slot).Strs("waiting_for", who).Msg("creating the replication slot waits for these open transactions to end")
	}()
	var lsn pglogrepl.LSN
	err := q.QueryRow(ctx, `SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')`, slot).Scan(&lsn)
	if err != nil {
		return 0, fmt.Errorf("create replication slot %s: %w", slot, err)
	}
	return lsn, nil
}

// SlotInfo reports the slot of this database named slot: whether it exists,
// whether a walsender is streaming it, and the WAL it retains (the current
// WAL position minus its restart_lsn; trap 9).
func SlotInfo(ctx context.Context, q db.Querier, slot string) (exists, active bool, retainedBytes int64, err error) {
	err = q.QueryRow(ctx, `
SELECT active, coalesce(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn), 0)::int8
  FROM pg_replication_slots WHERE slot_name = $1 AND database = pg_catalog.current_database()`, slot).Scan(&active, &retainedBytes)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, false, 0, nil
	}
	if err != nil {
		return false, false, 0, err
	}
	return true, active, retainedBytes, nil
}

// DropSlotAndPublication removes the migration's slot and publication if
// they exist (every exit path of a logical-mode migration: rollback,
// finalize, a failed setup, the stream's retirement at cutover). An active
// slot is ours (a greenswap streaming this migration): its walsender is
// terminated and the drop retried until it lets go (bounded: 30 s). q must
// not be in a transaction: dropping a slot cannot be rolled back.
func DropSlotAndPublication(ctx context.Context, q db.Querier, n shadow.Names) error {
	if err := dropSlot(ctx, q, n.Slot); err != nil {
		return err
	}
	return dropPublication(ctx, q, n)
}

func dropPublication(ctx context.Context, q db.Querier, n shadow.Names) error {
	if b, ok := q.(interface {
		Begin(context.Context) (pgx.Tx, error)
	}); ok {
		for attempt := 0; attempt < 20; attempt++ {
			err := dropPublicationLocked(ctx, b, n)
			if err == nil {
				return nil
			}
			if st := db.SQLState(err); st != db.LockNotAvailable && st != db.DeadlockDetected {
				return fmt.Errorf("drop publication %s: %w", n.Publication, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(10+attempt*10) * time.Millisecond):
			}
		}
		// The tables stayed busy: drop it as before, unlocked.
	}
	if _, err := q.Exec(ctx, "DROP PUBLICATION IF EXISTS "+db.Ident(n.Publication)); err != nil {
		return fmt.Errorf("drop publication %s: %w", n.Publication, err)
	}
	return nil
}

// dropPublicationLocked drops the publication while holding its tables
// IN SHARE MODE (taken as every lock set of greenswap's: shadow.LockInOrder,
// a short budget): a write to a published table that builds its
// publication list while the publication goes can fail with "cache lookup
// failed for publication" (XX000), an app error seen under load at cutover.
// Held off for the drop's milliseconds, the writers find it gone.
func dropPublicationLocked(ctx context.Context, b interface {
	Begin(context.Context) (pgx.Tx, error)
}, n shadow.Names) error {
	tx, err := b.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	rows, err := tx.Query(ctx, `SELECT pg_catalog.quote_ident(schemaname) || '.' || pg_catalog.quote_ident(tablename)
		FROM pg_catalog.pg_publication_tables WHERE pubname = $1 ORDER BY 1`, n.Publication)
	if err != nil {
		return err
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	var locks []shadow.OrderedLock
	for _, t := range tables {
		locks = append(locks, shadow.TableLock(t, "SHARE"))
	}
	if _, err := shadow.LockInOrder(ctx, tx, locks, 200*time.Millisecond); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "DROP PUBLICATION IF EXISTS "+db.Ident(n.Publication)); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

func dropSlot(ctx context.Context, q db.Querier, slot string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var pid *int32
		err := q.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND database = pg_catalog.current_database()`, slot).Scan(&pid)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		if pid != nil {
			if _, err := q.Exec(ctx, `SELECT pg_catalog.pg_terminate_backend($1)`, *pid); err != nil {
				return fmt.Errorf("stop the walsender (pid %d) of slot %s: %w", *pid, slot, err)
			}
		} else {
			_, err := q.Exec(ctx, `SELECT pg_catalog.pg_drop_replication_slot($1)`, slot)
			switch db.SQLState(err) {
			case "", "42704": // dropped, or gone meanwhile
				return nil
			case db.ObjectInUse: // a walsender took it meanwhile
			default:
				return fmt.Errorf("drop replication slot %s: %w", slot, err)
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("drop replication slot %s: still in use after 30s", slot)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TakeOver terminates the walsender streaming the slot, if any, so the
// caller can stream it (a cutover draining the stream itself). The other
// streamer reconnects with a backoff and then finds the slot busy or the
// stream retired.
func TakeOver(ctx context.Context, q db.Querier, slot string) error {
	_, err := q.Exec(ctx, `SELECT pg_catalog.pg_terminate_backend(active_pid) FROM pg_replication_slots
		WHERE slot_name = $1 AND database = pg_catalog.current_database() AND active_pid IS NOT NULL`, slot)
	return err
}

// CurrentLSN is the position up to which every committed transaction is in
// the WAL: the insert position, not pg_current_wal_lsn() (the write
// position), which lags it by up to wal_writer_delay for asynchronous
// commits (synchronous_commit = off): a transaction committed and visible
// can end beyond the write position. Wait for this one.
func CurrentLSN(ctx context.Context, q db.Querier) (pglogrepl.LSN, error) {
	var lsn pglogrepl.LSN
	err := q.QueryRow(ctx, `SELECT pg_catalog.pg_current_wal_insert_lsn()::text`).Scan(&lsn)
	return lsn, err
}

// ConfirmedLSN is how far the slot's consumer has confirmed (0 when there
// is no slot).
func ConfirmedLSN(ctx context.Context, q db.Querier, slot string) (pglogrepl.LSN, error) {
	var lsn *string
	err := q.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1 AND database = pg_catalog.current_database()`, slot).Scan(&lsn)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && lsn == nil) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return pglogrepl.ParseLSN(*lsn)
}

// WaitApplied waits until the slot's consumer has confirmed lsn (green is
// current up to lsn), for at most timeout (0: until ctx ends). It first
// emits a small non-transactional message (a ping) after lsn, which makes an
// idle streamer confirm promptly. Whoever streams the slot (this process or
// another greenswap) applies; nobody streaming means it times out.
func WaitApplied(ctx context.Context, q db.Querier, n shadow.Names, lsn pglogrepl.LSN, timeout time.Duration) error {
	var ping pglogrepl.LSN
	if err := q.QueryRow(ctx, `SELECT pg_catalog.pg_logical_emit_message(false, $1, '')::text`, PingPrefix(n.SyncFlag)).Scan(&ping); err != nil {
		return fmt.Errorf("emit stream ping: %w", err)
	}
	start := time.Now()
	sleep := 5 * time.Millisecond
	for {
		got, err := ConfirmedLSN(ctx, q, n.Slot)
		if err != nil {
			return err
		}
		if got >= lsn {
			return nil
		}
		if timeout > 0 && time.Since(start) > timeout {
			return &LagError{Slot: n.Slot, Target: lsn, Confirmed: got, Waited: time.Since(start)}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(sleep):
		}
		sleep = min(2*sleep, 100*time.Millisecond)
	}
}

// LagError: the stream did not reach a position in time.
type LagError struct {
	Slot      string
	Target    pglogrepl.LSN
	Confirmed pglogrepl.LSN
	Waited    time.Duration
}

func (e *LagError) Error() string {
	behind := int64(0)
	if e.Target > e.Confirmed {
		behind = int64(e.Target - e.Confirmed)
	}
	return fmt.Sprintf("the logical stream (slot %s) did not apply up to %s within %s: confirmed %s, %d bytes behind "+
		"(is `greenswap sync --watch` running for this migration?)", e.Slot, e.Target, e.Waited.Round(time.Millisecond), e.Confirmed, behind)
}
