package shadow

import (
	"context"
	"fmt"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/exitcode"
)

// Seeing other sessions (issue 19).
//
// pg_stat_activity shows a role only its own sessions (and those of roles
// whose privileges it has) unless it is a superuser or has the privileges
// of pg_read_all_stats: every other row has no backend_type, no state and
// the query "<insufficient privilege>". pg_stat_replication likewise hides
// the lag columns. On managed PostgreSQL the table owner is usually such a
// role, and a check reading those views then sees nobody: finalize's usage
// check passed while a client read blue, the replica-lag throttle never
// held. pg_locks, pg_blocking_pids() and application_name are shown to every
// role, so the lock-wait throttle is not blind.

// PoolerPinNote ends every piece of advice to pin clients with SET
// search_path (no % in it: it is appended to format strings). Behind a
// transaction pooler a client's SET stays on the backend it ran on, not
// with the client (issue 19: 1-6 of 30 statements stayed pinned).
const PoolerPinNote = "behind a transaction pooler (pgbouncer pool_mode = transaction) a client's SET search_path does not stay with the client: pin by pooled database alias instead, one per shape, each pinned when its server connections are made (pgbouncer: connect_query='SET search_path = <version schema>, <app schema>'; docs/runbook.md, Poolers)"

// PrivReadAllStats is the Privilege code of seeing other roles' sessions.
const PrivReadAllStats = "read_all_stats"

// StatsVisibility reads whether the connecting role sees every session in
// pg_stat_activity and pg_stat_replication (superuser, or the privileges of
// pg_read_all_stats), and its name.
func StatsVisibility(ctx context.Context, q db.Querier) (visible bool, role string, err error) {
	err = q.QueryRow(ctx, `SELECT pg_catalog.pg_has_role('pg_read_all_stats', 'USAGE'), current_user::text`).Scan(&visible, &role)
	if err != nil {
		return false, "", fmt.Errorf("read whether the connecting role sees other sessions (pg_read_all_stats): %w", err)
	}
	return visible, role, nil
}

// StatsPrivilege is the Privilege plan lists for seeing other sessions:
// finalize refuses without it (exit 3, *BlindError), sync's replica-lag
// throttle warns that it is blind.
func StatsPrivilege(ctx context.Context, q db.Querier) (Privilege, error) {
	ok, role, err := StatsVisibility(ctx, q)
	if err != nil {
		return Privilege{}, err
	}
	return Privilege{Code: PrivReadAllStats, Granted: ok, Steps: []string{StepFinalize},
		Need: "the privileges of pg_read_all_stats (or superuser)",
		Why:  "finalize's usage check and sync's replica-lag throttle read other roles' sessions in pg_stat_activity and pg_stat_replication, which hide them from other roles: finalize refuses (exit 3) rather than drop blue unseen, the throttle warns and cannot hold the copy",
		Fix:  fmt.Sprintf("GRANT pg_read_all_stats TO %s (on managed services, as the provider's admin role)", db.Ident(role))}, nil
}

// BlindError: a check that must see other roles' sessions cannot. Exit 3:
// the check refuses rather than pass on what it could not see.
type BlindError struct {
	Role  string
	Check string // e.g. "finalize's usage check"
}

func (e *BlindError) Error() string {
	return fmt.Sprintf("%s cannot see other roles' sessions: role %s is neither superuser nor has the privileges of pg_read_all_stats, so pg_stat_activity hides every client but its own and the check would pass unseen; nothing was changed: GRANT pg_read_all_stats TO %s (on managed services, as the provider's admin role), then run it again",
		e.Check, e.Role, db.Ident(e.Role))
}

func (e *BlindError) ExitCode() exitcode.Code { return exitcode.Blocked }

// RequireStatsVisibility returns a *BlindError for check when the
// connecting role cannot see other roles' sessions.
func RequireStatsVisibility(ctx context.Context, q db.Querier, check string) error {
	ok, role, err := StatsVisibility(ctx, q)
	if err != nil {
		return err
	}
	if !ok {
		return &BlindError{Role: role, Check: check}
	}
	return nil
}
