package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
)

// Schema is where greenswap keeps its state in the user's database.
const Schema = "greenswap"

// ddl creates the state schema idempotently. It runs under a transaction-level
// advisory lock so two first invocations cannot race on CREATE ... IF NOT EXISTS.
var ddl = []string{
	`SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('greenswap'), 0)`,
	`CREATE SCHEMA IF NOT EXISTS greenswap`,
	`CREATE TABLE IF NOT EXISTS greenswap.migrations (
		name              text PRIMARY KEY,
		app_table         text NOT NULL,
		mode              text NOT NULL,
		spec              jsonb NOT NULL,
		state             text NOT NULL,
		phase             text NOT NULL DEFAULT '',
		cursor            jsonb,
		rows_copied       bigint NOT NULL DEFAULT 0,
		rows_estimate     bigint NOT NULL DEFAULT 0,
		batch_size        integer NOT NULL DEFAULT 0,
		rows_per_sec      double precision NOT NULL DEFAULT 0,
		throttle          text NOT NULL DEFAULT '',
		paused            boolean NOT NULL DEFAULT false,
		backfill_started_at timestamptz,
		backfill_done_at  timestamptz,
		verified_at       timestamptz,
		verify_ok         boolean,
		slot_name         text,
		confirmed_lsn     pg_lsn,
		primary_side      text NOT NULL DEFAULT 'blue',
		created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
		updated_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
		state_changed_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
	)`,
	`CREATE TABLE IF NOT EXISTS greenswap.events (
		id          bigserial PRIMARY KEY,
		at          timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
		migration   text NOT NULL,
		step        text NOT NULL,
		actor       text NOT NULL DEFAULT current_user,
		client_addr text DEFAULT pg_catalog.inet_client_addr()::text,
		host        text NOT NULL DEFAULT '',
		outcome     text NOT NULL,
		duration_ms double precision NOT NULL DEFAULT 0,
		sql         text NOT NULL DEFAULT '',
		detail      jsonb
	)`,
	// Upgrades of a state schema made by an older greenswap: columns added
	// later, each guarded by a catalog check so an up-to-date schema takes
	// no lock on the table.
	`DO $$BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'greenswap.migrations'::regclass
		               AND attname = 'fingerprint' AND NOT attisdropped) THEN
			ALTER TABLE greenswap.migrations ADD COLUMN fingerprint jsonb;
		END IF;
	END$$`,
	// indexes_built: target.indexes statement position → the index it
	// built. A row written before the column existed recorded them only in
	// the event log: the upgrade carries them over once, so no reader
	// scrapes the log (a build of a migration started over after a
	// rollback is older than the row's created_at and does not count).
	`DO $$BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'greenswap.migrations'::regclass
		               AND attname = 'indexes_built' AND NOT attisdropped) THEN
			ALTER TABLE greenswap.migrations ADD COLUMN indexes_built jsonb NOT NULL DEFAULT '{}'::jsonb;
			UPDATE greenswap.migrations m SET indexes_built = coalesce((
				SELECT pg_catalog.jsonb_object_agg(e.detail ->> 'statement', e.detail ->> 'index' ORDER BY e.id)
				  FROM greenswap.events e
				 WHERE e.migration = m.name AND e.step = 'build-index' AND e.outcome = 'ok'
				   AND e.at >= m.created_at AND coalesce(e.detail ->> 'index', '') <> ''
				   AND e.detail ->> 'statement' IS NOT NULL), '{}'::jsonb);
		END IF;
	END$$`,
	// tables: a migration of several tables keeps each member's backfill
	// (cursor, rows, estimate, done, indexes built) here, keyed by the
	// member's app table; green_fks: the foreign keys among its greens,
	// created after the copy (see TableProgress, GreenFK). A one-table
	// migration leaves both empty and uses the row's own columns.
	`DO $$BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'greenswap.migrations'::regclass
		               AND attname = 'tables' AND NOT attisdropped) THEN
			ALTER TABLE greenswap.migrations ADD COLUMN tables jsonb NOT NULL DEFAULT '{}'::jsonb,
				ADD COLUMN green_fks jsonb NOT NULL DEFAULT '[]'::jsonb;
		END IF;
	END$$`,
	`CREATE INDEX IF NOT EXISTS events_migration_idx ON greenswap.events (migration, id)`,
	// The event log is append-only: refuse UPDATE and DELETE outright.
	`CREATE OR REPLACE FUNCTION greenswap.events_append_only() RETURNS trigger LANGUAGE plpgsql AS
	 $$BEGIN RAISE EXCEPTION 'greenswap.events is append-only'; END$$`,
	`DO $$BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'events_append_only'
		               AND tgrelid = 'greenswap.events'::regclass) THEN
			CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON greenswap.events
			FOR EACH ROW EXECUTE FUNCTION greenswap.events_append_only();
		END IF;
	END$$`,
}

// Ensure creates the state schema if it is missing. Safe to call concurrently.
func Ensure(ctx context.Context, conn interface {
	Begin(context.Context) (pgx.Tx, error)
}) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	// Checked under the advisory lock, before the DDL (which would run
	// CREATE OR REPLACE FUNCTION and DO blocks in a planted schema) and
	// again after it, in the same transaction, for a schema another
	// session created in between.
	if _, err := tx.Exec(ctx, ddl[0]); err != nil {
		return fmt.Errorf("create greenswap state schema: %w", err)
	}
	if err := Check(ctx, tx); err != nil {
		return err
	}
	for _, s := range ddl[1:] {
		if _, err := tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("create greenswap state schema: %w", err)
		}
	}
	if err := Check(ctx, tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// Exists reports whether the state schema has been created in this
// database. A schema greenswap must not use (see Check) is an
// *UntrustedError (exit 2): every reader and writer of the state goes
// through here first (Get, List, Upgrade).
func Exists(ctx context.Context, q db.Querier) (bool, error) {
	// Checked first: to_regclass fails (42501) for a role without USAGE
	// on a schema someone else made, which would hide who made it.
	if err := Check(ctx, q); err != nil {
		return false, err
	}
	if err := checkAccess(ctx, q); err != nil {
		return false, err
	}
	var ok bool
	err := q.QueryRow(ctx, `SELECT pg_catalog.to_regclass('greenswap.migrations') IS NOT NULL`).Scan(&ok)
	return ok, err
}

// Migration is one row of greenswap.migrations.
type Migration struct {
	Name              string          `json:"name"`
	AppTable          string          `json:"app_table"`
	Mode              string          `json:"mode"`
	Spec              json.RawMessage `json:"spec"`
	State             State           `json:"state"`
	Phase             string          `json:"phase"`
	Cursor            json.RawMessage `json:"cursor,omitempty"`
	RowsCopied        int64           `json:"rows_copied"`
	RowsEstimate      int64           `json:"rows_estimate"`
	BatchSize         int             `json:"batch_size"`
	RowsPerSec        float64         `json:"rows_per_sec"`
	Throttle          string          `json:"throttle,omitempty"`
	Paused            bool            `json:"paused"`
	BackfillStartedAt *time.Time      `json:"backfill_started_at,omitempty"`
	BackfillDoneAt    *time.Time      `json:"backfill_done_at,omitempty"`
	VerifiedAt        *time.Time      `json:"verified_at,omitempty"`
	VerifyOK          *bool           `json:"verify_ok,omitempty"`
	SlotName          *string         `json:"slot_name,omitempty"`
	ConfirmedLSN      *string         `json:"confirmed_lsn,omitempty"`
	PrimarySide       string          `json:"primary_side"`
	CreatedAt         time.Time       `json:"created_at"`
	UpdatedAt         time.Time       `json:"updated_at"`
	StateChangedAt    time.Time       `json:"state_changed_at"`
	// IndexesBuilt: the target.indexes built so far, as JSON (a statement's
	// position → its index); see BuiltIndexes. Read through to_jsonb of
	// the row, so a state schema from before the column loads ({}).
	IndexesBuilt json.RawMessage `json:"indexes_built,omitempty"`
	// TablesJSON and GreenFKsJSON: a migration of several tables (see
	// Tables, GreenFKs); read through to_jsonb like IndexesBuilt.
	TablesJSON   json.RawMessage `json:"tables,omitempty"`
	GreenFKsJSON json.RawMessage `json:"green_fks,omitempty"`
}

const migrationCols = `name, app_table, mode, spec, state, phase, cursor, rows_copied, rows_estimate,
	batch_size, rows_per_sec, throttle, paused, backfill_started_at, backfill_done_at, verified_at,
	verify_ok, slot_name, confirmed_lsn::text, primary_side, created_at, updated_at, state_changed_at,
	coalesce(pg_catalog.to_jsonb(m) -> 'indexes_built', '{}'::jsonb),
	coalesce(pg_catalog.to_jsonb(m) -> 'tables', '{}'::jsonb), coalesce(pg_catalog.to_jsonb(m) -> 'green_fks', '[]'::jsonb)`

func scanMigration(row pgx.Row) (*Migration, error) {
	var m Migration
	var st string
	err := row.Scan(&m.Name, &m.AppTable, &m.Mode, &m.Spec, &st, &m.Phase, &m.Cursor, &m.RowsCopied,
		&m.RowsEstimate, &m.BatchSize, &m.RowsPerSec, &m.Throttle, &m.Paused, &m.BackfillStartedAt,
		&m.BackfillDoneAt, &m.VerifiedAt, &m.VerifyOK, &m.SlotName, &m.ConfirmedLSN, &m.PrimarySide,
		&m.CreatedAt, &m.UpdatedAt, &m.StateChangedAt, &m.IndexesBuilt, &m.TablesJSON, &m.GreenFKsJSON)
	m.State = State(st)
	return &m, err
}

// ErrNotFound is returned by Get for a migration name with no row.
var ErrNotFound = errors.New("migration not found")

// Get reads one migration. A missing row (or a missing state schema) is
// ErrNotFound with exit code 2.
func Get(ctx context.Context, q db.Querier, name string) (*Migration, error) {
	ok, err := Exists(ctx, q)
	if err != nil {
		return nil, err
	}
	if ok {
		m, err := scanMigration(q.QueryRow(ctx, `SELECT `+migrationCols+` FROM greenswap.migrations m WHERE name = $1`, name))
		if err == nil {
			return m, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return nil, err
		}
	}
	return nil, exitcode.With(exitcode.BadInput, fmt.Errorf("%w: %q (see `greenswap status` for the migrations in this database)", ErrNotFound, name))
}

// List reads every migration, oldest first. No state schema means none.
func List(ctx context.Context, q db.Querier) ([]*Migration, error) {
	ok, err := Exists(ctx, q)
	if err != nil || !ok {
		return nil, err
	}
	rows, err := q.Query(ctx, `SELECT `+migrationCols+` FROM greenswap.migrations m ORDER BY created_at, name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Migration
	for rows.Next() {
		m, err := scanMigration(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// Create inserts a new migration in state Planned. If a row of that name
// exists in RolledBack it is reset to Planned with the new spec (a migration
// may start over after a rollback); any other existing row is an error.
func Create(ctx context.Context, q db.Querier, name, appTable, mode string, spec any) (*Migration, error) {
	js, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	m, err := scanMigration(q.QueryRow(ctx, `
		INSERT INTO greenswap.migrations AS m (name, app_table, mode, spec, state)
		VALUES ($1, $2, $3, $4::jsonb, 'planned')
		ON CONFLICT (name) DO UPDATE SET
			app_table = EXCLUDED.app_table, mode = EXCLUDED.mode, spec = EXCLUDED.spec,
			state = 'planned', phase = '', cursor = NULL, rows_copied = 0, rows_estimate = 0,
			batch_size = 0, rows_per_sec = 0, throttle = '', paused = false,
			backfill_started_at = NULL, backfill_done_at = NULL, verified_at = NULL, verify_ok = NULL,
			slot_name = NULL, confirmed_lsn = NULL, primary_side = 'blue', fingerprint = NULL, indexes_built = '{}'::jsonb,
			tables = '{}'::jsonb, green_fks = '[]'::jsonb,
			created_at = pg_catalog.now(), updated_at = pg_catalog.now(), state_changed_at = pg_catalog.now()
		WHERE m.state = 'rolled_back'
		RETURNING `+migrationCols, name, appTable, mode, string(js)))
	if errors.Is(err, pgx.ErrNoRows) {
		cur, gerr := Get(ctx, q, name)
		if gerr != nil {
			return nil, gerr
		}
		return nil, exitcode.Errorf(exitcode.BadInput, "migration %s already exists (state %s); use `greenswap status %s`, or roll it back first", name, cur.State, name)
	}
	return m, err
}

// Transition moves a migration to state to, checking the lifecycle. It runs
// through q so a caller can make it part of the step's own transaction.
func Transition(ctx context.Context, q db.Querier, name string, to State) error {
	var cur string
	if err := q.QueryRow(ctx, `SELECT state FROM greenswap.migrations WHERE name = $1 FOR UPDATE`, name).Scan(&cur); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return exitcode.With(exitcode.BadInput, fmt.Errorf("%w: %q", ErrNotFound, name))
		}
		return err
	}
	from := State(cur)
	if from != to && !from.CanMoveTo(to) {
		return exitcode.With(exitcode.BadInput, &TransitionError{Migration: name, From: from, To: to})
	}
	_, err := q.Exec(ctx, `UPDATE greenswap.migrations SET state = $2, updated_at = pg_catalog.now(),
		state_changed_at = CASE WHEN state = $2 THEN state_changed_at ELSE pg_catalog.now() END WHERE name = $1`, name, string(to))
	return err
}

// Update sets the given columns of a migration row. Column names come only
// from this module's code (never from input); values are bound.
func Update(ctx context.Context, q db.Querier, name string, cols map[string]any) error {
	if len(cols) == 0 {
		return nil
	}
	sql := `UPDATE greenswap.migrations SET updated_at = pg_catalog.now()`
	args := []any{name}
	for _, c := range sortedKeys(cols) {
		v, cast := cols[c], ""
		if jsonColumn(c) && v != nil {
			js, err := jsonText(v)
			if err != nil {
				return fmt.Errorf("encode %s of %s: %w", c, name, err)
			}
			v, cast = js, "::jsonb"
		}
		args = append(args, v)
		sql += fmt.Sprintf(", %s = $%d%s", db.Ident(c), len(args), cast)
	}
	_, err := q.Exec(ctx, sql+` WHERE name = $1`, args...)
	return err
}

// Event is one line of the append-only event log.
type Event struct {
	ID         int64           `json:"id"`
	At         time.Time       `json:"at"`
	Migration  string          `json:"migration"`
	Step       string          `json:"step"`
	Actor      string          `json:"actor"`
	ClientAddr *string         `json:"client_addr,omitempty"`
	Host       string          `json:"host"`
	Outcome    string          `json:"outcome"`
	DurationMS float64         `json:"duration_ms"`
	SQL        string          `json:"sql,omitempty"`
	Detail     json.RawMessage `json:"detail,omitempty"`
}

// Record appends an event. detail may be nil.
func Record(ctx context.Context, q db.Querier, migration, step, outcome string, took time.Duration, sql string, detail any) error {
	var js *string
	if detail != nil {
		v, err := jsonText(detail)
		if err != nil {
			return err
		}
		js = &v
	}
	host, _ := os.Hostname()
	_, err := q.Exec(ctx, `INSERT INTO greenswap.events (migration, step, host, outcome, duration_ms, sql, detail)
		VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)`,
		migration, step, host, outcome, float64(took.Microseconds())/1000, sql, js)
	return err
}

// Events returns the last limit events of a migration, newest last.
func Events(ctx context.Context, q db.Querier, migration string, limit int) ([]Event, error) {
	rows, err := q.Query(ctx, `SELECT * FROM (
		SELECT id, at, migration, step, actor, client_addr, host, outcome, duration_ms, sql, detail
		FROM greenswap.events WHERE migration = $1 ORDER BY id DESC LIMIT $2) e ORDER BY id`, migration, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Event, error) {
		var e Event
		err := r.Scan(&e.ID, &e.At, &e.Migration, &e.Step, &e.Actor, &e.ClientAddr, &e.Host, &e.Outcome, &e.DurationMS, &e.SQL, &e.Detail)
		return e, err
	})
}

// EventDetails are the details of every event of a migration's step with
// outcome, oldest first (events without a detail are left out).
func EventDetails(ctx context.Context, q db.Querier, migration, step, outcome string) ([]json.RawMessage, error) {
	rows, err := q.Query(ctx, `SELECT detail FROM greenswap.events
		WHERE migration = $1 AND step = $2 AND outcome = $3 AND detail IS NOT NULL ORDER BY id`, migration, step, outcome)
	if err != nil {
		return nil, fmt.Errorf("read the %s events of migration %s: %w", step, migration, err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[json.RawMessage])
}

// LastEventOf is the id of the migration's newest event of one of steps
// with outcome (0: none). The guarded cutover uses it to know whether the
// swap it watches is still the migration's latest.
func LastEventOf(ctx context.Context, q db.Querier, migration, outcome string, steps ...string) (int64, error) {
	var id int64
	err := q.QueryRow(ctx, `SELECT COALESCE(max(id), 0) FROM greenswap.events WHERE migration = $1 AND outcome = $2 AND step = ANY($3)`,
		migration, outcome, steps).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("read the last %s event of migration %s: %w", strings.Join(steps, "/"), migration, err)
	}
	return id, nil
}

// Upgrade brings a state schema made by an older greenswap up to date
// (Ensure's guarded column additions); no state schema is left alone.
// Commands other than sync call it before they read or write a column
// added later.
func Upgrade(ctx context.Context, conn interface {
	db.Querier
	Begin(context.Context) (pgx.Tx, error)
}) error {
	ok, err := Exists(ctx, conn)
	if err != nil || !ok {
		return err
	}
	var have bool
	if err := conn.QueryRow(ctx, `SELECT count(*) = 4 FROM pg_attribute WHERE attrelid = 'greenswap.migrations'::regclass
		AND attname IN ('fingerprint', 'indexes_built', 'tables', 'green_fks') AND NOT attisdropped`).Scan(&have); err != nil || have {
		return err
	}
	return Ensure(ctx, conn)
}

// Fingerprint reads the recorded fingerprint of a migration (see
// shadow.Fingerprint): nil when none was recorded, as for a migration
// started by a greenswap that did not record one, or when the state
// schema predates the column.
func Fingerprint(ctx context.Context, q db.Querier, name string) (json.RawMessage, error) {
	var js json.RawMessage
	err := q.QueryRow(ctx, `SELECT pg_catalog.to_jsonb(m) -> 'fingerprint' FROM greenswap.migrations m WHERE name = $1`, name).Scan(&js)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, exitcode.With(exitcode.BadInput, fmt.Errorf("%w: %q", ErrNotFound, name))
	}
	if err != nil {
		return nil, fmt.Errorf("read the recorded fingerprint of %s: %w", name, err)
	}
	if string(js) == "null" {
		js = nil
	}
	return js, nil
}

// SetFingerprint records fp (JSON-encoded) as the migration's fingerprint,
// through q: the caller's transaction, so the step that changed the
// objects and the record of them commit together.
func SetFingerprint(ctx context.Context, q db.Querier, name string, fp any) error {
	js, err := jsonText(fp)
	if err != nil {
		return err
	}
	if _, err := q.Exec(ctx, `UPDATE greenswap.migrations SET fingerprint = $2::jsonb, updated_at = pg_catalog.now() WHERE name = $1`, name, js); err != nil {
		return fmt.Errorf("record the fingerprint of %s: %w", name, err)
	}
	return nil
}

// jsonColumn tells the jsonb columns of greenswap.migrations.
func jsonColumn(c string) bool {
	return c == "spec" || c == "cursor" || c == "fingerprint" || c == "indexes_built" || c == "tables" || c == "green_fks"
}

// jsonText is v as JSON text, bound as a string and cast to jsonb in the
// SQL. Under the simple protocol and pgx's exec mode no parameter type is
// known, so bytes went as a bytea literal and a []string as a text[] one,
// neither of them JSON (22P02). Bytes that are JSON already
// (json.RawMessage) are sent as they are.
func jsonText(v any) (string, error) {
	switch b := v.(type) {
	case json.RawMessage:
		return string(b), nil
	case []byte:
		return string(b), nil
	}
	js, err := json.Marshal(v)
	return string(js), err
}
