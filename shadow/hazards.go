package shadow

// Hazards: what plan tells the operator before anything is touched. Each
// hazard is blocking (the migration must not start), a warning (it can run,
// but someone has to act or accept a consequence) or info.
//
// Hazards is a pure function over the catalog (blue as it is today, green as
// the rehearsal created it), the mapping and a few server facts; the facts
// are read by LoadHazardFacts and the mapping's volatility by
// DetectVolatility, both inside plan's rolled-back transaction.

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/spec"
)

// Severity says whether a hazard stops the migration.
type Severity string

const (
	Blocking Severity = "blocking" // plan exits 3; sync refuses to start
	Warning  Severity = "warning"  // the migration can run; read the fix
	Info     Severity = "info"     // worth knowing; nothing to do
)

// Hazard codes. They are part of plan's JSON document: never rename one.
const (
	HazardNoKey                  = "no_key"
	HazardRLSNeedsInvoker        = "rls_without_security_invoker"
	HazardRLSNotOnGreen          = "rls_not_on_green"
	HazardRLSForcedOnGreenswap   = "rls_forced_on_greenswap"
	HazardReferencedByFKs        = "referenced_by_foreign_keys"
	HazardReferencedKeyMissing   = "referenced_key_missing_on_green"
	HazardForeignKeysMissing     = "foreign_keys_missing_on_green"
	HazardDependentViews         = "dependent_views"
	HazardUserTriggers           = "user_triggers"
	HazardPublications           = "publications"
	HazardIdentityColumns        = "identity_columns"
	HazardGeneratedColumns       = "generated_columns"
	HazardVolatileMapping        = "volatile_mapping"
	HazardStableMapping          = "stable_mapping"
	HazardRowTypeChange          = "row_type_change"
	HazardGreenStricter          = "green_stricter"
	HazardSyncWriteCanFail       = "sync_write_can_fail"
	HazardNarrowingByName        = "narrowing_by_name"
	HazardViewLimitations        = "view_limitations"
	HazardPartitioned            = "partitioned_table"
	HazardPartition              = "partition"
	HazardUnlogged               = "unlogged_table"
	HazardTemporary              = "temporary_table"
	HazardLogicalWalLevel        = "logical_wal_level"
	HazardLogicalNoSlot          = "logical_no_free_slot"
	HazardLogicalNoWalSender     = "logical_no_free_wal_sender"
	HazardLogicalReplPrivilege   = "logical_replication_privilege"
	HazardLogicalCreatePrivilege = "logical_create_privilege"
	HazardLogicalReplicaIdentity = "logical_replica_identity"
	HazardLogicalServerVersion   = "logical_server_version" // sync/stream: pgoutput messages need 14+
	HazardLeftover               = "leftover_migration"
	HazardFinalizeNameClash      = "finalize_name_clash"
	HazardInheritanceChildren    = "inheritance_children"
	HazardInheritanceParent      = "inheritance_parent"
	HazardWritableSchema         = "writable_schema_on_path"
	HazardCrossShapeDeadlock     = "cross_shape_deadlock"
	HazardSerialSequenceLookup   = "serial_sequence_lookup"
	// Found by evaluating the mapping on sampled rows (runner.Plan).
	HazardGreenKeyNotUnique = "green_key_not_unique"
	HazardLossyMapping      = "lossy_mapping"
	HazardEmptySample       = "empty_sample"
	// The cutover package's planner, run on the rehearsed catalog, refuses.
	HazardCutoverRefuses = "cutover_would_refuse"
	// The connecting role lacks privileges only later commands need (plan
	// itself refuses with exit 2 when plan or sync would lack one).
	HazardMissingPrivileges = "missing_privileges"
)

// Hazard is one finding of plan.
type Hazard struct {
	Code     string   `json:"code"`
	Severity Severity `json:"severity"`
	Message  string   `json:"message"`
	Fix      string   `json:"fix"`
	Objects  []string `json:"objects,omitempty"` // what it is about: views, triggers, columns, leftovers...
}

// HazardFacts is what Hazards needs beyond the two tables' catalog entries.
type HazardFacts struct {
	ServerMajor int `json:"server_major"`
	// Persistence is blue's pg_class.relpersistence: p, u (unlogged), t (temporary).
	Persistence string `json:"persistence"`
	// ReplicaIdentityColumns are the columns blue's replica identity logs
	// for UPDATE and DELETE (all columns for FULL, none for NOTHING).
	ReplicaIdentityColumns []string `json:"replica_identity_columns"`
	WalLevel               string   `json:"wal_level"`
	MaxReplicationSlots    int      `json:"max_replication_slots"`
	UsedReplicationSlots   int      `json:"used_replication_slots"`
	MaxWalSenders          int      `json:"max_wal_senders"`
	UsedWalSenders         int      `json:"used_wal_senders"`
	CanReplicate           bool     `json:"can_replicate"`    // REPLICATION or superuser
	CanCreateInDB          bool     `json:"can_create_in_db"` // CREATE on the database (publications)
	// Leftovers are greenswap objects of an earlier or running migration of
	// this table or under this name, each with the SQL or command to clear it.
	Leftovers []string `json:"leftovers,omitempty"`
	// NameClashes are green's partitions and indexes whose names are taken
	// in the app schema, where finalize would move them (LoadNameClashes on
	// the rehearsed green; plan fills it after its rehearsal).
	NameClashes []string `json:"name_clashes,omitempty"`
	// Publications publish blue (greenswap's own gs_<m> excluded).
	Publications []PublicationRef `json:"publications,omitempty"`
	// InheritanceChildren inherit from blue (it is not partitioned);
	// InheritanceParents are what blue inherits from (it is no partition).
	InheritanceChildren []string `json:"inheritance_children,omitempty"`
	InheritanceParents  []string `json:"inheritance_parents,omitempty"`
	// WritableSchemas: schemas on the sync functions' search path in which
	// roles other than the table owner may CREATE.
	WritableSchemas []WritableSchema `json:"writable_schemas,omitempty"`
	// RLSSubjects are the roles greenswap works as (the table owner, whom
	// the sync triggers run as, and the connecting role, which copies and
	// checksums) that blue's FORCE ROW LEVEL SECURITY would filter: neither
	// superuser nor BYPASSRLS.
	RLSSubjects []string `json:"rls_subjects,omitempty"`
}

// Volatility is what DetectVolatility found for one mapped column.
type Volatility struct {
	Field    string   `json:"field"`              // "forward.email", "reverse.amount"
	Volatile []string `json:"volatile,omitempty"` // functions making the value differ per evaluation
	Stable   []string `json:"stable,omitempty"`   // functions depending on session settings only
	// Schemas hold the user functions the expression calls (any
	// volatility): one where others may CREATE could get a better-matching
	// overload (LoadWritableSchemas).
	Schemas []string `json:"schemas,omitempty"`
}

// HazardInput is everything Hazards looks at. Green, Mapping and Volatility
// are nil when plan could not rehearse the setup.
type HazardInput struct {
	Spec       *spec.Spec
	Blue       *Table // the app table as it is today (before adopt); nil when it is not a table
	Green      *Table // green as target.ddl (and target.indexes) create it
	Mapping    *Mapping
	Volatility []Volatility
	Facts      HazardFacts
}

// Hazards lists every hazard of migrating in.Blue to in.Green, blocking ones
// first, in a stable order.
func Hazards(in HazardInput) []Hazard {
	h := &hazardScan{in: in, s: in.Spec, blue: in.Blue, green: in.Green, n: NamesFor(in.Spec.Name, in.Spec.AppTable()), f: in.Facts}
	h.leftovers()
	if h.blue == nil {
		return SortHazards(h.hs)
	}
	h.tableKind()
	h.key()
	h.rowSecurity()
	h.foreignKeys()
	h.dependents()
	h.publications()
	h.inheritance()
	h.writableSchemas()
	h.crossShapeDeadlock()
	h.sequences()
	h.identityGenerated()
	h.volatility()
	h.shapeChange()
	h.nameClashes()
	h.viewLimitations()
	if h.s.Mode == spec.ModeLogical {
		h.hs = append(h.hs, logicalHazards(h.blue, in.Mapping, h.s, h.f)...)
	}
	return SortHazards(h.hs)
}

// hazardScan is what every family of checks (hazards_*.go) reads, and the
// list they add to, in the order Hazards calls them.
type hazardScan struct {
	in          HazardInput
	s           *spec.Spec
	blue, green *Table
	n           Names
	f           HazardFacts
	hs          []Hazard
}

func (h *hazardScan) add(x Hazard) { h.hs = append(h.hs, x) }

var severityRank = map[Severity]int{Blocking: 0, Warning: 1, Info: 2}

// SortHazards orders hazards blocking first, then warnings, then info,
// keeping the order within each severity.
func SortHazards(hs []Hazard) []Hazard {
	slices.SortStableFunc(hs, func(a, b Hazard) int { return severityRank[a.Severity] - severityRank[b.Severity] })
	return hs
}

// HasBlocking reports whether any hazard is blocking.
func HasBlocking(hs []Hazard) bool {
	return slices.ContainsFunc(hs, func(h Hazard) bool { return h.Severity == Blocking })
}

// ---------------------------------------------------------------------------
// Facts from the database.

// LoadHazardFacts reads the server and leftover facts Hazards needs. blue is
// the app table (nil when the app name is not a table, e.g. already a
// greenswap view); then only server facts and leftovers are read.
func LoadHazardFacts(ctx context.Context, q db.Querier, s *spec.Spec, blue *Table) (HazardFacts, error) {
	var f HazardFacts
	var version int
	err := q.QueryRow(ctx, `
SELECT pg_catalog.current_setting('server_version_num')::int,
       pg_catalog.current_setting('wal_level'),
       pg_catalog.current_setting('max_replication_slots')::int,
       (SELECT pg_catalog.count(*) FROM pg_replication_slots)::int,
       pg_catalog.current_setting('max_wal_senders')::int,
       (SELECT pg_catalog.count(*) FROM pg_stat_activity WHERE backend_type = 'walsender')::int,
       coalesce((SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), false),
       pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE')`).Scan(
		&version, &f.WalLevel, &f.MaxReplicationSlots, &f.UsedReplicationSlots,
		&f.MaxWalSenders, &f.UsedWalSenders, &f.CanReplicate, &f.CanCreateInDB)
	if err != nil {
		return f, fmt.Errorf("read server facts: %w", err)
	}
	f.ServerMajor = version / 10000
	if blue != nil {
		if err := q.QueryRow(ctx, `SELECT relpersistence::text FROM pg_class WHERE oid = $1`, blue.OID).Scan(&f.Persistence); err != nil {
			return f, fmt.Errorf("read persistence of %s: %w", blue.Name, err)
		}
		switch blue.ReplicaIdentity {
		case "f":
			for _, c := range blue.Columns {
				f.ReplicaIdentityColumns = append(f.ReplicaIdentityColumns, c.Name)
			}
		case "d":
			if blue.PrimaryKey != nil {
				f.ReplicaIdentityColumns = slices.Clone(blue.PrimaryKey.Columns)
			}
		case "i":
			rows, err := q.Query(ctx, `
SELECT a.attname::text
  FROM pg_index i
  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
 WHERE i.indrelid = $1 AND i.indisreplident
 ORDER BY a.attnum`, blue.OID)
			if err != nil {
				return f, err
			}
			if f.ReplicaIdentityColumns, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
				return f, err
			}
		}
	}
	f.Leftovers, err = loadLeftovers(ctx, q, s, blue)
	if err != nil || blue == nil {
		return f, err
	}
	n := NamesFor(s.Name, s.AppTable())
	if f.Publications, err = loadPublicationRefs(ctx, q, blue, f.ServerMajor, n.Publication); err != nil {
		return f, err
	}
	if f.InheritanceChildren, f.InheritanceParents, err = loadInheritance(ctx, q, blue); err != nil {
		return f, err
	}
	if f.WritableSchemas, err = LoadWritableSchemas(ctx, q, []string{blue.Name.Schema}, blue.Owner); err != nil {
		return f, err
	}
	if blue.RLSForced {
		rows, err := q.Query(ctx, `SELECT CASE WHEN r.rolname = current_user AND r.rolname <> $1 THEN 'the connecting role ' ELSE 'the table owner ' END || r.rolname
			FROM pg_catalog.pg_roles r WHERE r.rolname IN ($1, current_user) AND NOT (r.rolsuper OR r.rolbypassrls) ORDER BY r.rolname <> $1`, blue.Owner)
		if err != nil {
			return f, fmt.Errorf("read the RLS bypass of %s's owner: %w", blue.Name, err)
		}
		if f.RLSSubjects, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return f, err
		}
	}
	return f, nil
}

// ErrText is a PostgreSQL error's message with its detail and hint,
// without the driver's decoration; other errors as they are.
func ErrText(err error) string {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err.Error()
	}
	msg := pe.Message
	if pe.Detail != "" {
		msg += ": " + pe.Detail
	}
	if pe.Hint != "" {
		msg += " (hint: " + pe.Hint + ")"
	}
	return msg
}
