// Package verifytest builds a migration's blue and green tables with their
// sync triggers and state row, the way sync leaves them, for tests and
// benchmark programs that need a migration to verify without running sync.
package verifytest

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/rowsql"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	"github.com/greenswap/greenswap/trigger"
)

// Fixture is a built migration.
type Fixture struct {
	Spec    *spec.Spec
	Names   shadow.Names
	Blue    *shadow.Table
	Green   *shadow.Table
	Mapping *shadow.Mapping
}

// TxBeginner is *pgx.Conn or *pgxpool.Pool.
type TxBeginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Setup adopts the app table of specYAML (blue moves to its version schema,
// the app name becomes a view), creates green from target.ddl, gives it
// blue's owner, grants and sequences, and installs the sync triggers
// (forward on, reverse off), in one committed transaction. Green is empty:
// call Copy for the backfill.
func Setup(ctx context.Context, conn TxBeginner, specYAML string, serverMajor int) (*Fixture, error) {
	spec, err := spec.ParseSpec([]byte(specYAML), "test.yaml", "yaml")
	if err != nil {
		return nil, err
	}
	f := &Fixture{Spec: spec, Names: shadow.NamesFor(spec.Name, spec.AppTable())}
	n := f.Names
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	app, err := shadow.LoadTable(ctx, tx, n.App)
	if err != nil {
		return nil, err
	}
	if err := execAll(ctx, tx, shadow.AdoptStep(n, app, serverMajor).SQL); err != nil {
		return nil, fmt.Errorf("adopt: %w", err)
	}
	if err := execAll(ctx, tx, shadow.CreateGreenSQL(n, spec)); err != nil {
		return nil, fmt.Errorf("create green: %w", err)
	}
	if f.Blue, err = shadow.LoadTable(ctx, tx, n.Blue); err != nil {
		return nil, err
	}
	if f.Green, err = shadow.LoadTable(ctx, tx, n.Green); err != nil {
		return nil, err
	}
	if f.Mapping, err = shadow.BuildMapping(spec, f.Blue, f.Green); err != nil {
		return nil, err
	}
	if err := execAll(ctx, tx, shadow.GreenFixupSQL(n, f.Blue, f.Green, f.Mapping)); err != nil {
		return nil, fmt.Errorf("prepare green: %w", err)
	}
	if f.Green, err = shadow.LoadTable(ctx, tx, n.Green); err != nil {
		return nil, err
	}
	if f.Mapping, err = shadow.BuildMapping(spec, f.Blue, f.Green); err != nil {
		return nil, err
	}
	if err := execAll(ctx, tx, trigger.InstallStep(n, f.Mapping, f.Blue.Owner).SQL); err != nil {
		return nil, fmt.Errorf("install triggers: %w", err)
	}
	return f, tx.Commit(ctx)
}

// Load reads the Fixture of a migration Setup built earlier (in another
// process, say): both tables from the catalog and the mapping.
func Load(ctx context.Context, q db.Querier, specYAML string) (*Fixture, error) {
	spec, err := spec.ParseSpec([]byte(specYAML), "test.yaml", "yaml")
	if err != nil {
		return nil, err
	}
	f := &Fixture{Spec: spec, Names: shadow.NamesFor(spec.Name, spec.AppTable())}
	if f.Blue, err = shadow.LoadTable(ctx, q, f.Names.Blue); err != nil {
		return nil, err
	}
	if f.Green, err = shadow.LoadTable(ctx, q, f.Names.Green); err != nil {
		return nil, err
	}
	if f.Mapping, err = shadow.BuildMapping(spec, f.Blue, f.Green); err != nil {
		return nil, err
	}
	return f, nil
}

// Copy is a one-statement backfill: every blue row through the forward
// mapping into green (the backfill's batch statement, rowsql.CopyBatch,
// over the whole key range), with the sync flag set. Run it while nothing writes blue.
func (f *Fixture) Copy(ctx context.Context, conn TxBeginner) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	flag, args := trigger.SyncFlagSQL(f.Names)
	if _, err := tx.Exec(ctx, flag, args...); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, rowsql.SelectSettings(rowsql.SearchPath("$1")), f.Names.SearchPath()); err != nil {
		return err
	}
	// The backfill's own batch statement, over the whole key range.
	m := f.Mapping
	k, err := rowsql.WalkKey(f.Blue, m.Key)
	if err != nil {
		return err
	}
	sql := rowsql.For(&m.Forward).CopyBatch(k, m.SourceRowLock(), false, false, true).SQL
	if _, err := tx.Exec(ctx, sql); err != nil {
		return fmt.Errorf("copy blue to green: %w", err)
	}
	return tx.Commit(ctx)
}

// Register writes the migration's state row as sync would leave it in
// state st: syncing with the backfill done (backfillDone), synced (reverse
// triggers on), or cut_over (primary side green; the app view is not moved).
func (f *Fixture) Register(ctx context.Context, conn TxBeginner, st state.State, backfillDone bool) error {
	if err := state.Ensure(ctx, conn); err != nil {
		return err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := state.Create(ctx, tx, f.Spec.Name, f.Names.App.String(), string(f.Spec.Mode), f.Spec); err != nil {
		return err
	}
	path := map[state.State][]state.State{
		state.Syncing: {state.Syncing},
		state.Synced:  {state.Syncing, state.Synced},
		state.CutOver: {state.Syncing, state.Synced, state.CutOver},
	}[st]
	if path == nil && st != state.Planned {
		return errors.New("verifytest: Register supports planned, syncing, synced and cut_over")
	}
	for _, s := range path {
		if err := state.Transition(ctx, tx, f.Spec.Name, s); err != nil {
			return err
		}
	}
	if st != state.Planned {
		if _, err := tx.Exec(ctx, `UPDATE greenswap.migrations SET backfill_started_at = clock_timestamp(), phase = 'backfill' WHERE name = $1`, f.Spec.Name); err != nil {
			return err
		}
	}
	if backfillDone || st == state.Synced || st == state.CutOver {
		if _, err := tx.Exec(ctx, `UPDATE greenswap.migrations SET backfill_done_at = clock_timestamp(), phase = 'done' WHERE name = $1`, f.Spec.Name); err != nil {
			return err
		}
	}
	if st == state.Synced || st == state.CutOver {
		if err := execAll(ctx, tx, trigger.SetReverseSQL(f.Names, true)); err != nil {
			return err
		}
	}
	if st == state.CutOver {
		if err := state.Update(ctx, tx, f.Spec.Name, map[string]any{"primary_side": "green"}); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

func execAll(ctx context.Context, tx pgx.Tx, sql []string) error {
	for _, s := range sql {
		if _, err := tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}
