package state

import (
	"context"

	"github.com/greenswap/greenswap/internal/db"
)

// SetConfirmedLSN records that green is current up to lsn (a pg_lsn in text
// form) for migration name's logical stream. It never moves the checkpoint
// back: two streamers of one slot (one being taken over) may finish their
// batches in either order. Run it in the apply transaction.
func SetConfirmedLSN(ctx context.Context, q db.Querier, name, lsn string) error {
	_, err := q.Exec(ctx, `UPDATE greenswap.migrations
		SET confirmed_lsn = greatest(confirmed_lsn, $2::text::pg_lsn), updated_at = pg_catalog.now()
		WHERE name = $1`, name, lsn)
	return err
}
