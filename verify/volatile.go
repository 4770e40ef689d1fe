package verify

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/shadow"
)

// volatileColumns returns, for each column of d whose expression cannot be
// recomputed to the value that was written, the functions that make it so,
// as plan names them: it asks shadow.DirectionVolatility, the detector
// behind plan's volatile_mapping hazard, so verify skips exactly the
// columns plan said it would. field is "forward" or "reverse". Columns the
// plan flagged (ColumnMap.Volatile) are included; columns mapped by name
// never are.
//
// The probe compiles each expression into a view in the source's version
// schema (owned by the table owner, whose rights verify needs anyway; a
// temporary view would need TEMP on the database), under the search_path
// the triggers evaluate it with, in a transaction that is rolled back.
func volatileColumns(ctx context.Context, pool *pgxpool.Pool, d *shadow.Direction, field, appSchema string) (map[string][]string, error) {
	out := map[string][]string{}
	explicit := false
	for _, c := range d.Columns {
		if c.Volatile {
			out[c.Target] = []string{"flagged by plan"}
		}
		explicit = explicit || c.Explicit
	}
	if !explicit {
		return out, nil
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.set_config('search_path', $1, true)`, shadow.SearchPathFor(appSchema)); err != nil {
		return nil, fmt.Errorf("set the evaluation search_path: %w", err)
	}
	vols, err := shadow.DirectionVolatility(ctx, tx, d.Source.Schema, d, field)
	if err != nil {
		return nil, err
	}
	for col, v := range vols {
		if len(v.Volatile) > 0 {
			out[col] = slices.Clone(v.Volatile)
		}
	}
	return out, nil
}

// columnReads returns, for every column of d, the source columns its
// expression reads (shadow.DirectionReads), probed as volatileColumns does.
func columnReads(ctx context.Context, pool *pgxpool.Pool, d *shadow.Direction, field, appSchema string) (map[string][]string, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.set_config('search_path', $1, true)`, shadow.SearchPathFor(appSchema)); err != nil {
		return nil, fmt.Errorf("set the evaluation search_path: %w", err)
	}
	return shadow.DirectionReads(ctx, tx, d.Source.Schema, d, field)
}
