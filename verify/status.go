package verify

import (
	"context"
	"time"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/spec"
)

// LastVerifyPassed reports whether migration name has a passing verify
// since its last backfill: verify_ok is true and verified_at (the time of
// the snapshot that verify compared) is not before backfill_done_at.
// cutover refuses to run without one unless told to skip verification.
// A missing migration is an error with exit code 2.
func LastVerifyPassed(ctx context.Context, q db.Querier, name string) (bool, error) {
	m, err := state.Get(ctx, q, name)
	if err != nil {
		return false, err
	}
	return Passed(m), nil
}

// Passed is LastVerifyPassed for an already loaded migration row.
func Passed(m *state.Migration) bool {
	if m.VerifyOK == nil || !*m.VerifyOK || m.VerifiedAt == nil {
		return false
	}
	return m.BackfillDoneAt == nil || !m.VerifiedAt.Before(*m.BackfillDoneAt)
}

// HashScan times one plain hash scan of a whole table,
// SELECT sum(hashtextextended(t::text, 0)) FROM table t: the yardstick the
// bench compares verify with (a verify reads each table about once).
func HashScan(ctx context.Context, q db.Querier, table spec.QualifiedName) (time.Duration, error) {
	start := time.Now()
	var sum *string
	err := q.QueryRow(ctx, "SELECT pg_catalog.sum(pg_catalog.hashtextextended(t::pg_catalog.text, 0::pg_catalog.int8))::text FROM "+db.Ident(table.Schema, table.Name)+" AS t").Scan(&sum)
	return time.Since(start), err
}
