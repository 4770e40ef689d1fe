package runner

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// Build is what the setup phases produce: both tables as the catalog now
// sees them and the mapping between them. Plan builds it inside a
// transaction it rolls back; sync builds it for real.
type Build struct {
	Spec    *spec.Spec
	Names   shadow.Names
	Blue    *shadow.Table // at its version-schema location
	Green   *shadow.Table
	Mapping *shadow.Mapping
	Steps   []shadow.Step // what was executed, in order
}

// loadApp reads the app table before adopt. A missing table is bad input.
func loadApp(ctx context.Context, tx pgx.Tx, spec *spec.Spec) (*shadow.Table, error) {
	t, err := shadow.LoadTable(ctx, tx, spec.AppTable())
	if errors.Is(err, shadow.ErrTableNotFound) {
		return nil, spec.Errorf("table", "check the name and the database you are connected to", "table %s does not exist", spec.AppTable())
	}
	return t, err
}

// adoptTx runs the adopt step in tx: blue moves to its version schema and
// the app name becomes a view over it.
func adoptTx(ctx context.Context, tx pgx.Tx, spec *spec.Spec, n shadow.Names, major int) (shadow.Step, error) {
	app, err := loadApp(ctx, tx, spec)
	if err != nil {
		return shadow.Step{}, err
	}
	step := shadow.AdoptStep(n, app, major)
	own, err := schemaOwnerSQL(ctx, tx, n.BlueSchema, app.Owner)
	if err != nil {
		return step, err
	}
	step.SQL = append(step.SQL, own...)
	return step, execStep(ctx, tx, step)
}

// schemaOwnerSQL hands a version schema to the table's owner when greenswap
// connects as another role with the owner's rights (an operator granted the
// owner role): ALTER TABLE ... OWNER TO the owner needs the owner to be able
// to create in green's schema, and any member of the owner role must be
// able to drop both schemas at finalize or rollback. Nothing when the
// connecting role is the owner or a superuser (the schema is theirs, or
// nothing is checked).
func schemaOwnerSQL(ctx context.Context, tx pgx.Tx, schema, owner string) ([]string, error) {
	var other bool
	if err := tx.QueryRow(ctx, `SELECT current_user <> $1 AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)`, owner).Scan(&other); err != nil {
		return nil, err
	}
	if !other {
		return nil, nil
	}
	return []string{"ALTER SCHEMA " + db.Ident(schema) + " OWNER TO " + db.Ident(owner)}, nil
}

// createGreenTx creates green from the target DDL, fixes it up (owner,
// grants, shared sequences) and installs the sync triggers, all in tx. Blue
// must already be adopted.
func createGreenTx(ctx context.Context, tx pgx.Tx, spec *spec.Spec, n shadow.Names) (*Build, error) {
	return createMemberGreenTx(ctx, tx, spec, n, true)
}

// createMemberGreenTx is createGreenTx for one table of a migration: the
// green schema is the migration's, created with the first table's green
// only (first).
func createMemberGreenTx(ctx context.Context, tx pgx.Tx, spec *spec.Spec, n shadow.Names, first bool) (*Build, error) {
	b := &Build{Spec: spec, Names: n}
	blue, err := shadow.LoadTable(ctx, tx, n.Blue)
	if err != nil {
		return nil, fmt.Errorf("read blue %s: %w", n.Blue, err)
	}
	b.Blue = blue
	desc := fmt.Sprintf("create schema %s and the green table from target.ddl", n.GreenSchema)
	if k := len(spec.Target.Partitions); k > 0 {
		desc += fmt.Sprintf(", with its %d partitions from target.partitions", k)
	}
	create := shadow.Step{
		Name:          "create-green",
		Description:   desc,
		SQL:           shadow.CreateGreenSQL(n, spec),
		Lock:          "none on blue (new objects only)",
		LockHold:      "-",
		Transactional: true,
	}
	for i, sql := range create.SQL {
		if i == 0 && !first && sql == "CREATE SCHEMA "+db.Ident(n.GreenSchema) {
			continue
		}
		if _, err := tx.Exec(ctx, sql); err != nil {
			// Name the item that failed: a partition that overlaps another
			// or does not fit the partition key is target.partitions[k].
			if k := shadow.PartitionStatement(spec, i); k >= 0 {
				return nil, spec.Errorf(fmt.Sprintf("target.partitions[%d]", k), "fix the CREATE TABLE ... PARTITION OF statement",
					"%s: %s", create.Name, shadow.ErrText(err))
			}
			return nil, spec.Errorf("target.ddl", "fix the CREATE TABLE statement", "%s", fmt.Errorf("%s: %w", create.Name, err))
		}
	}
	if !first {
		create.SQL = withoutSchema(create.SQL, n.GreenSchema)
	}
	b.Steps = append(b.Steps, create)
	green, err := shadow.LoadTable(ctx, tx, n.Green)
	if errors.Is(err, shadow.ErrTableNotFound) {
		return nil, spec.Errorf("target.ddl", "name the table "+n.App.Name+" (unqualified) in CREATE TABLE",
			"target.ddl did not create table %s in the green schema", n.App.Name)
	}
	if err != nil {
		return nil, err
	}
	if b.Mapping, err = shadow.BuildMapping(spec, blue, green); err != nil {
		return nil, err
	}
	if err := shadow.CheckPolicies(spec, blue, green); err != nil {
		return nil, err
	}
	own, err := schemaOwnerSQL(ctx, tx, n.GreenSchema, blue.Owner)
	if err != nil {
		return nil, err
	}
	fix := shadow.Step{
		Name:          "prepare-green",
		Description:   "give green blue's owner, grants and row-level security; share blue's sequences",
		SQL:           append(own, shadow.GreenFixupSQL(n, blue, green, b.Mapping)...),
		Lock:          "none on blue",
		LockHold:      "-",
		Transactional: true,
	}
	if err := execStep(ctx, tx, fix); err != nil {
		return nil, err
	}
	b.Steps = append(b.Steps, fix)
	// Defaults and identity changed: re-read green so the mapping sees it as it is.
	if b.Green, err = shadow.LoadTable(ctx, tx, n.Green); err != nil {
		return nil, err
	}
	if b.Mapping, err = shadow.BuildMapping(spec, blue, b.Green); err != nil {
		return nil, err
	}
	install := installStepFor(spec, n, b.Mapping, blue.Owner) // forward off in logical mode (feed.go)
	if err := execStep(ctx, tx, install); err != nil {
		return nil, spec.Errorf("forward", "check the forward and reverse expressions", "compiling the sync triggers failed: %s", err)
	}
	b.Steps = append(b.Steps, install)
	return b, nil
}

// loadBuild reads the Build of a migration whose green already exists.
func loadBuild(ctx context.Context, q db.Querier, spec *spec.Spec, n shadow.Names) (*Build, error) {
	b := &Build{Spec: spec, Names: n}
	var err error
	if b.Blue, err = shadow.LoadTable(ctx, q, n.Blue); err != nil {
		return nil, fmt.Errorf("read blue %s: %w", n.Blue, err)
	}
	if b.Green, err = shadow.LoadTable(ctx, q, n.Green); err != nil {
		return nil, fmt.Errorf("read green %s: %w", n.Green, err)
	}
	if b.Mapping, err = shadow.BuildMapping(spec, b.Blue, b.Green); err != nil {
		return nil, err
	}
	return b, nil
}

// execStep runs a step's SQL in tx, one statement at a time.
func execStep(ctx context.Context, tx pgx.Tx, s shadow.Step) error {
	for _, sql := range s.SQL {
		if _, err := tx.Exec(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
	}
	return nil
}

// badInput marks an error as exit code 2 unless it already has a code.
func badInput(err error) error {
	if err == nil || exitcode.Of(err) != exitcode.Failed {
		return err
	}
	return exitcode.With(exitcode.BadInput, err)
}
