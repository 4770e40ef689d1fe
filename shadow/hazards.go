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
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/state"
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
	var hs []Hazard
	add := func(h Hazard) { hs = append(hs, h) }
	s, blue, green := in.Spec, in.Blue, in.Green
	n := NamesFor(s.Name, s.AppTable())
	f := in.Facts

	if len(f.Leftovers) > 0 {
		add(Hazard{Code: HazardLeftover, Severity: Blocking,
			Message: fmt.Sprintf("greenswap objects of an earlier or running migration of %s (or named %s) still exist", s.AppTable(), s.Name),
			Fix: "if that migration is live, continue it (see `greenswap status`); if it was abandoned, `greenswap rollback NAME`, " +
				"or remove the leftovers listed here by hand, then plan again",
			Objects: f.Leftovers})
	}
	if blue == nil {
		return SortHazards(hs)
	}

	// What the table is.
	switch f.Persistence {
	case "u":
		add(Hazard{Code: HazardUnlogged, Severity: Blocking,
			Message: fmt.Sprintf("%s is UNLOGGED: a crash empties it, so blue and green could not be kept equal", blue.Name),
			Fix:     fmt.Sprintf("ALTER TABLE %s SET LOGGED first (rewrites the table), or change it offline", db.Ident(blue.Name.Schema, blue.Name.Name))})
	case "t":
		add(Hazard{Code: HazardTemporary, Severity: Blocking,
			Message: fmt.Sprintf("%s is a temporary table: it lives in one session", blue.Name),
			Fix:     "greenswap migrates permanent tables only"})
	}
	if blue.Kind == "p" {
		add(Hazard{Code: HazardPartitioned, Severity: Blocking,
			Message: fmt.Sprintf("%s is partitioned (%s): migrating a partitioned blue table is not supported yet", blue.Name, blue.PartitionKey),
			Fix:     "not supported yet: change a partitioned table with ALTER TABLE, or build its new shape with another tool"})
	}
	if blue.PartitionOf != nil {
		add(Hazard{Code: HazardPartition, Severity: Blocking,
			Message: fmt.Sprintf("%s is a partition of %s: moving it behind a view would detach it from its parent's routing", blue.Name, blue.PartitionOf),
			Fix:     "a partition cannot be migrated on its own; see the partitioned table"})
	}

	// The key.
	if len(s.Key) == 0 && TableKey(blue) == nil {
		add(Hazard{Code: HazardNoKey, Severity: Blocking,
			Message: fmt.Sprintf("%s has no primary key and no unique index on NOT NULL columns: changes cannot be matched to green rows", blue.Name),
			Fix: fmt.Sprintf("add one without a long lock: CREATE UNIQUE INDEX CONCURRENTLY ... ON %s (...), then ALTER TABLE %s ADD PRIMARY KEY USING INDEX ...; or set key: [...] to a unique NOT NULL index's columns",
				db.Ident(blue.Name.Schema, blue.Name.Name), db.Ident(blue.Name.Schema, blue.Name.Name))})
	}

	// Row-level security.
	if blue.RLSEnabled && f.ServerMajor > 0 && f.ServerMajor < 15 {
		add(Hazard{Code: HazardRLSNeedsInvoker, Severity: Blocking,
			Message: fmt.Sprintf("%s has row-level security and PostgreSQL %d has no security_invoker views: the app-name view would read the table with its owner's rights and bypass the policies", blue.Name, f.ServerMajor),
			Fix:     "upgrade to PostgreSQL 15 or later, or migrate another way"})
	}
	if blue.RLSEnabled && blue.RLSForced && len(f.RLSSubjects) > 0 {
		add(Hazard{Code: HazardRLSForcedOnGreenswap, Severity: Blocking,
			Message: fmt.Sprintf("%s has FORCE ROW LEVEL SECURITY, which applies to %s (neither superuser nor BYPASSRLS): the policies would filter greenswap's own reads and writes (the copy, the sync triggers, the checksums), so rows they hide would be missing from green while verify, seeing the same subset on both sides, called them equal; finalize would then drop them with blue",
				blue.Name, strings.Join(f.RLSSubjects, " and ")),
			Fix: fmt.Sprintf("for the migration, ALTER TABLE %s NO FORCE ROW LEVEL SECURITY (the owner is then exempt, other roles stay restricted) and FORCE it again after finalize; or, as a superuser, ALTER ROLE ... BYPASSRLS for the roles named",
				db.Ident(blue.Name.Schema, blue.Name.Name)),
			Objects: f.RLSSubjects})
	}
	if blue.RLSEnabled && green != nil && !green.RLSEnabled {
		pols := make([]string, len(blue.Policies))
		for i, p := range blue.Policies {
			pols[i] = p.Def
		}
		add(Hazard{Code: HazardRLSNotOnGreen, Severity: Warning,
			Message: fmt.Sprintf("%s has row-level security (%d policies) but green has none until cutover, which enables it and creates blue's policies there: until then a role reading %s directly (green's version schema) sees every row",
				blue.Name, len(blue.Policies), n.Green),
			Fix: fmt.Sprintf("right after sync creates green, ALTER TABLE %s ENABLE ROW LEVEL SECURITY and create the policies listed ON %s; or grant green's schema to no role that RLS restricts",
				db.Ident(n.Green.Schema, n.Green.Name), db.Ident(n.Green.Schema, n.Green.Name)),
			Objects: pols})
	}

	// Foreign keys.
	if len(blue.ReferencedBy) > 0 {
		var objs, missing []string
		for _, fk := range blue.ReferencedBy {
			objs = append(objs, fmt.Sprintf("%s.%s: %s", fk.Table, fk.Name, fk.Def))
			if green != nil && !hasUniqueOn(green, fk.RefColumns) {
				missing = append(missing, fmt.Sprintf("%s.%s needs a unique key on (%s)", fk.Table, fk.Name, strings.Join(fk.RefColumns, ", ")))
			}
		}
		add(Hazard{Code: HazardReferencedByFKs, Severity: Warning,
			Message: fmt.Sprintf("%d foreign keys reference %s: they keep pointing at blue while syncing; cutover re-points them at green and rollback back at blue", len(objs), blue.Name),
			Fix:     "expect a validation scan of the referencing tables at cutover; widen referencing columns too if the key's type changes (e.g. int → bigint)",
			Objects: objs})
		if len(missing) > 0 {
			add(Hazard{Code: HazardReferencedKeyMissing, Severity: Blocking,
				Message: "green has no unique key on the columns that foreign keys of other tables reference: they could not be re-pointed at cutover",
				Fix:     "add a PRIMARY KEY / UNIQUE constraint in target.ddl (or a CREATE UNIQUE INDEX in target.indexes) on those columns",
				Objects: missing})
		}
	}
	if green != nil {
		var missing []string
		for _, fk := range blue.ForeignKeys {
			if !greenHasFK(fk, blue, green) {
				missing = append(missing, fmt.Sprintf("%s: %s", fk.Name, fk.Def))
			}
		}
		if len(missing) > 0 {
			add(Hazard{Code: HazardForeignKeysMissing, Severity: Warning,
				Message: fmt.Sprintf("%d foreign keys of %s are not in target.ddl: green (and the app name after cutover) would not enforce them", len(missing), blue.Name),
				Fix:     "add the REFERENCES clauses to target.ddl, or accept losing them",
				Objects: missing})
		}
	}

	// Objects that depend on the table.
	if len(blue.DependentViews) > 0 {
		var objs []string
		mat := false
		for _, v := range blue.DependentViews {
			o := v.Name.String()
			if v.Materialized {
				o += " (materialized)"
				mat = true
			}
			objs = append(objs, o)
		}
		fix := "nothing to do; views that must keep blue's shape should read gs_" + s.Name + "_blue." + blue.Name.Name + " explicitly"
		if mat {
			fix += "; refresh the materialized views after cutover"
		}
		add(Hazard{Code: HazardDependentViews, Severity: Warning,
			Message: fmt.Sprintf("%d views read %s: they read blue until cutover, which re-creates them over the app name (and rollback again)", len(objs), blue.Name),
			Fix:     fix, Objects: objs})
	}
	if len(blue.Triggers) > 0 {
		var objs []string
		for _, tg := range blue.Triggers {
			objs = append(objs, tg.Def)
		}
		add(Hazard{Code: HazardUserTriggers, Severity: Warning,
			Message: fmt.Sprintf("%s has %d user triggers: they fire on the primary side only (blue until cutover, green after), once per logical write; greenswap's own sync writes do not fire them again", blue.Name, len(objs)),
			Fix:     "check that they can run against green's shape after cutover (NEW.column names and types) and that they do not depend on firing for both shapes",
			Objects: objs})
	}
	if len(f.Publications) > 0 {
		add(publicationsHazard(n, f.Publications))
	}
	if len(f.InheritanceChildren) > 0 {
		add(Hazard{Code: HazardInheritanceChildren, Severity: Blocking,
			Message: fmt.Sprintf("%d tables inherit from %s: the backfill reads blue with its children and would copy their rows into green, but the sync triggers are on blue alone, so writes to the children never reach green, and at finalize the children lose their parent", len(f.InheritanceChildren), blue.Name),
			Fix:     fmt.Sprintf("migrate without inheritance: ALTER TABLE <child> NO INHERIT %s for each child listed (or move their rows into %s), then plan again", db.Ident(blue.Name.Schema, blue.Name.Name), blue.Name),
			Objects: f.InheritanceChildren})
	}
	if len(f.InheritanceParents) > 0 {
		add(Hazard{Code: HazardInheritanceParent, Severity: Blocking,
			Message: fmt.Sprintf("%s inherits from %s: the parent's queries include blue's rows in the old shape until finalize, then lose them all when blue is dropped (green inherits from nothing; making it inherit would show every row twice meanwhile)", blue.Name, strings.Join(f.InheritanceParents, ", ")),
			Fix:     fmt.Sprintf("ALTER TABLE %s NO INHERIT <parent> before the migration and re-attach the new table after finalize (ALTER TABLE ... INHERIT, which needs the parent's columns), or change it with ALTER TABLE", db.Ident(blue.Name.Schema, blue.Name.Name)),
			Objects: f.InheritanceParents})
	}
	for _, w := range f.WritableSchemas {
		where := fmt.Sprintf("which the sync functions (running as the owner) and greenswap's sessions search: %s", n.SearchPath())
		if w.Schema != n.App.Schema {
			where = "which holds functions that the spec's expressions call (" + strings.Join(w.Functions, ", ") + ")"
		}
		var roles []string
		for _, r := range w.Roles {
			if r == "PUBLIC" {
				roles = append(roles, "PUBLIC")
			} else {
				roles = append(roles, db.Ident(r))
			}
		}
		add(Hazard{Code: HazardWritableSchema, Severity: Warning,
			Message: fmt.Sprintf("roles other than the table's owner (%s) may CREATE in schema %s, %s. greenswap's own SQL qualifies every function it calls and its catalog sessions do not search %s, but the spec's forward and reverse expressions are evaluated with %s on the path, by the owner's triggers on every write: a function created there that matches a call's argument types better than the built-in (e.g. round(integer) for round(amount) on an integer column, where the built-in needs a cast to numeric) would run as the owner",
				blue.Owner, w.Schema, where, w.Schema, w.Schema),
			Fix:     fmt.Sprintf("REVOKE CREATE ON SCHEMA %s FROM %s; or write the spec's calls schema-qualified (pg_catalog.round(...), myschema.f(...))", db.Ident(w.Schema), strings.Join(roles, ", ")),
			Objects: w.Roles})
	}
	add(Hazard{Code: HazardCrossShapeDeadlock, Severity: Info,
		Message: fmt.Sprintf("once synced, a write through one shape updates the other in the same transaction: two clients writing the same rows at the same moment, one through blue's shape (old releases, %s before cutover) and one through green's, each hold their own row and wait for the other's through the sync trigger; PostgreSQL aborts one with SQLSTATE 40P01 (deadlock detected) after deadlock_timeout (default 1s) of stall",
			s.AppTable()),
		Fix: "route all writers of a given row through one shape (e.g. by tenant or by key range, or move writers to the new shape all at once), and retry transactions that fail with 40P01, as with any deadlock; see docs/runbook.md"})
	if len(blue.OwnedSequences) > 0 {
		var objs []string
		for _, sq := range blue.OwnedSequences {
			kind := "serial"
			if sq.Identity {
				kind = "identity, moves with blue to " + n.BlueSchema
			}
			objs = append(objs, fmt.Sprintf("%s.%s: %s (%s)", s.AppTable(), sq.Column, sq.Name, kind))
		}
		add(Hazard{Code: HazardSerialSequenceLookup, Severity: Warning,
			Message: fmt.Sprintf("from adopt until finalize %s is a view, so pg_get_serial_sequence(%s, column) returns NULL: ORMs and scripts that call it to find the id sequence (to reset it, or to read currval) get nothing; identity sequences move with blue into %s",
				s.AppTable(), db.Literal(db.Ident(s.AppTable().Schema, s.AppTable().Name)), n.BlueSchema),
			Fix: fmt.Sprintf("point such code at the sequence's name (listed) or at pg_get_serial_sequence(%s, column) for the migration; plain nextval/currval of a serial sequence by name and inserts through %s keep working",
				db.Literal(db.Ident(n.Blue.Schema, n.Blue.Name)), s.AppTable()),
			Objects: objs})
	}

	// Identity and generated columns.
	var ident, gen []string
	for _, c := range blue.Columns {
		switch {
		case c.Identity == "a":
			ident = append(ident, c.Name+" (GENERATED ALWAYS AS IDENTITY)")
		case c.Identity == "d":
			ident = append(ident, c.Name+" (GENERATED BY DEFAULT AS IDENTITY)")
		}
		if c.Generated != "" {
			gen = append(gen, "blue."+c.Name+": "+c.GenerationExpr)
		}
	}
	if green != nil {
		for _, c := range green.Columns {
			if c.Generated != "" {
				gen = append(gen, "green."+c.Name+": "+c.GenerationExpr)
			}
		}
	}
	if len(ident) > 0 {
		add(Hazard{Code: HazardIdentityColumns, Severity: Info,
			Message: "identity columns: both shapes draw new ids from blue's sequence while the migration runs (sync writes them with OVERRIDING SYSTEM VALUE), so ids never collide",
			Fix:     "nothing to do; green's own identity is restored at finalize",
			Objects: ident})
	}
	if len(gen) > 0 {
		add(Hazard{Code: HazardGeneratedColumns, Severity: Info,
			Message: "generated columns are never written by sync: each side computes them with its own expression",
			Fix:     "nothing to do; if the expressions differ the values differ too",
			Objects: gen})
	}

	// Volatility of the mapping.
	for _, v := range in.Volatility {
		if len(v.Volatile) > 0 {
			add(Hazard{Code: HazardVolatileMapping, Severity: Warning,
				Message: fmt.Sprintf("%s calls %s: its value differs each time it is computed (backfill, trigger, verify), so checksums cannot match; column excluded from verify",
					v.Field, strings.Join(v.Volatile, ", ")),
				Fix:     "use an immutable expression if the value must be checked; otherwise accept that verify skips this column",
				Objects: []string{v.Field}})
		} else if len(v.Stable) > 0 {
			add(Hazard{Code: HazardStableMapping, Severity: Info,
				Message: fmt.Sprintf("%s calls %s (STABLE): its value depends on session settings such as TimeZone or DateStyle", v.Field, strings.Join(v.Stable, ", ")),
				Fix:     "make sure every writer and greenswap itself run with the same settings",
				Objects: []string{v.Field}})
		}
	}

	if green != nil {
		if diffs := rowTypeDiffs(blue, green); len(diffs) > 0 {
			add(Hazard{Code: HazardRowTypeChange, Severity: Warning,
				Message: fmt.Sprintf("the row type of %s changes at cutover: a client holding a prepared statement on it gets one `cached plan must not change result type` error per statement, and code that expects the old columns or types breaks", s.AppTable()),
				Fix: fmt.Sprintf("use version schemas: pin old releases to blue's shape with SET search_path TO %s, %s (it keeps the old shape until finalize, and its writes reach green through the forward mapping); point new releases at %s or the app name; clients that stay on the app name should retry once on that error or re-prepare (DISCARD PLANS / reconnect); "+PoolerPinNote,
					db.Ident(n.BlueSchema), db.Ident(n.App.Schema), db.Ident(n.GreenSchema)),
				Objects: diffs})
		}
		stricter, uncovered := greenStricter(s, blue, green)
		if len(uncovered) > 0 {
			add(Hazard{Code: HazardSyncWriteCanFail, Severity: Warning,
				Message: "from the moment sync starts, a write to blue whose mapped row breaks one of green's rules below fails in the writer's own transaction (the sync trigger runs there); plan checked only a sample of today's rows",
				Fix:     "add a forward expression that makes every blue value fit (e.g. forward.col: coalesce(col, ...)), or make sure no writer produces such values before you sync",
				Objects: uncovered})
		}
		if len(stricter) > 0 {
			add(Hazard{Code: HazardGreenStricter, Severity: Warning,
				Message: fmt.Sprintf("green is stricter than blue: after cutover an old client's write through %s that blue accepted fails", s.AppTable()),
				Fix: fmt.Sprintf("upgrade those clients before cutover, or pin old releases to blue's shape with SET search_path TO %s, %s: their writes land in blue and the forward mapping (e.g. forward.email: coalesce(email, '...')) makes them fit green; "+PoolerPinNote,
					db.Ident(n.BlueSchema), db.Ident(n.App.Schema)),
				Objects: stricter})
		}
	}

	if len(f.NameClashes) > 0 {
		add(Hazard{Code: HazardFinalizeNameClash, Severity: Warning,
			Message: fmt.Sprintf("finalize moves green's partitions and indexes into schema %s, where these names are taken: finalize would refuse until they are free", n.App.Schema),
			Fix: fmt.Sprintf("rename the partition in target.partitions (or the index in target.indexes) before sync, or rename or drop the object in %s before finalize (ALTER TABLE / ALTER INDEX ... RENAME TO ...)",
				n.App.Schema),
			Objects: f.NameClashes})
	}

	add(Hazard{Code: HazardViewLimitations, Severity: Warning,
		Message: fmt.Sprintf("from adopt until finalize %s is a view: TRUNCATE, COPY ... FROM, COPY %s TO, ALTER TABLE (ADD/DROP/ALTER COLUMN, constraints), CREATE INDEX, REINDEX, CLUSTER, CREATE TRIGGER and new foreign keys referencing it fail; VACUUM (FULL) and ANALYZE skip it with a warning; LOCK TABLE locks the view and the table it reads now, not the other shape",
			s.AppTable(), s.AppTable()),
		Fix: fmt.Sprintf("point maintenance at %s / %s directly, use COPY (SELECT ...) TO for exports, and pause jobs that TRUNCATE or COPY into the table until finalize",
			db.Ident(n.Blue.Schema, n.Blue.Name), db.Ident(n.Green.Schema, n.Green.Name))})

	if s.Mode == spec.ModeLogical {
		hs = append(hs, logicalHazards(blue, in.Mapping, s, f)...)
	}
	return SortHazards(hs)
}

func logicalHazards(blue *Table, m *Mapping, s *spec.Spec, f HazardFacts) []Hazard {
	var hs []Hazard
	if f.ServerMajor > 0 && f.ServerMajor < 14 {
		hs = append(hs, Hazard{Code: HazardLogicalServerVersion, Severity: Blocking,
			Message: fmt.Sprintf("mode: logical needs PostgreSQL 14 or later (the stream skips the echoes of writes through green by logical decoding messages, which pgoutput passes from 14 on); the server is %d", f.ServerMajor),
			Fix:     "use mode: trigger, or upgrade the server"})
	}
	if f.WalLevel != "logical" {
		hs = append(hs, Hazard{Code: HazardLogicalWalLevel, Severity: Blocking,
			Message: fmt.Sprintf("mode: logical needs wal_level = logical; the server has %q", f.WalLevel),
			Fix:     "ALTER SYSTEM SET wal_level = logical and restart the server (or use mode: trigger)"})
	}
	if f.MaxReplicationSlots-f.UsedReplicationSlots < 1 {
		hs = append(hs, Hazard{Code: HazardLogicalNoSlot, Severity: Blocking,
			Message: fmt.Sprintf("no free replication slot: %d of max_replication_slots = %d in use", f.UsedReplicationSlots, f.MaxReplicationSlots),
			Fix:     "drop an unused slot (SELECT pg_catalog.pg_drop_replication_slot(...)) or raise max_replication_slots (restart)"})
	}
	if f.MaxWalSenders-f.UsedWalSenders < 1 {
		hs = append(hs, Hazard{Code: HazardLogicalNoWalSender, Severity: Blocking,
			Message: fmt.Sprintf("no free WAL sender: %d of max_wal_senders = %d in use", f.UsedWalSenders, f.MaxWalSenders),
			Fix:     "raise max_wal_senders (restart)"})
	}
	if !f.CanReplicate {
		hs = append(hs, Hazard{Code: HazardLogicalReplPrivilege, Severity: Blocking,
			Message: "the connecting role has neither REPLICATION nor superuser: it cannot create a replication slot or stream",
			Fix:     "ALTER ROLE ... REPLICATION (on managed services: grant the provider's replication role), or use mode: trigger"})
	}
	if !f.CanCreateInDB {
		hs = append(hs, Hazard{Code: HazardLogicalCreatePrivilege, Severity: Blocking,
			Message: "the connecting role has no CREATE privilege on the database: it cannot create the migration's publication",
			Fix:     "GRANT CREATE ON DATABASE ... TO the role, or use mode: trigger"})
	}
	key := s.Key
	if m != nil {
		key = m.Key
	} else if len(key) == 0 {
		key = TableKey(blue)
	}
	if len(key) > 0 {
		var missing []string
		for _, k := range key {
			if !slices.Contains(f.ReplicaIdentityColumns, k) {
				missing = append(missing, k)
			}
		}
		if len(missing) > 0 {
			what := map[string]string{"d": "DEFAULT (the primary key)", "n": "NOTHING", "f": "FULL", "i": "USING INDEX"}[blue.ReplicaIdentity]
			hs = append(hs, Hazard{Code: HazardLogicalReplicaIdentity, Severity: Blocking,
				Message: fmt.Sprintf("replica identity of %s is %s and does not log key column(s) %s: updates and deletes could not be applied to green", blue.Name, what, strings.Join(missing, ", ")),
				Fix:     fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY USING INDEX <the unique index on (%s)>", db.Ident(blue.Name.Schema, blue.Name.Name), strings.Join(key, ", ")),
			})
		}
	}
	return hs
}

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

// hasUniqueOn reports whether t has a valid, non-partial unique index on exactly cols.
func hasUniqueOn(t *Table, cols []string) bool {
	for _, ix := range t.Indexes {
		if ix.Unique && ix.Valid && !ix.Partial && !ix.Expression && sameSet(ix.Columns, cols) {
			return true
		}
	}
	return false
}

// greenHasFK reports whether green has an FK matching blue's fk: same
// columns, same referenced table (blue itself maps to green) and columns.
func greenHasFK(fk ForeignKey, blue, green *Table) bool {
	ref := fk.RefTable
	if ref == blue.Name {
		ref = green.Name
	}
	for _, g := range green.ForeignKeys {
		if slices.Equal(g.Columns, fk.Columns) && g.RefTable == ref && slices.Equal(g.RefColumns, fk.RefColumns) {
			return true
		}
	}
	return false
}

// rowTypeDiffs lists how the app name's columns change when it moves from
// blue to green: types, columns dropped or added, and order.
func rowTypeDiffs(blue, green *Table) []string {
	var out []string
	var common []string
	for _, b := range blue.Columns {
		g := green.Column(b.Name)
		if g == nil {
			out = append(out, fmt.Sprintf("%s: dropped (%s)", b.Name, b.Type))
			continue
		}
		common = append(common, b.Name)
		if g.Type != b.Type {
			out = append(out, fmt.Sprintf("%s: %s → %s", b.Name, b.Type, g.Type))
		}
	}
	var greenCommon []string
	for _, g := range green.Columns {
		if blue.Column(g.Name) == nil {
			out = append(out, fmt.Sprintf("%s: added (%s)", g.Name, g.Type))
			continue
		}
		greenCommon = append(greenCommon, g.Name)
	}
	if !slices.Equal(common, greenCommon) {
		out = append(out, fmt.Sprintf("column order: (%s) → (%s)", strings.Join(common, ", "), strings.Join(greenCommon, ", ")))
	}
	return out
}

// greenStricter lists what green rejects that blue accepted; uncovered is
// the part no explicit forward expression deals with, so a blue write can
// break it during sync.
func greenStricter(s *spec.Spec, blue, green *Table) (out, uncovered []string) {
	defer func() {
		for _, o := range out {
			if !strings.Contains(o, "(forward.") {
				uncovered = append(uncovered, o)
			}
		}
	}()
	for _, g := range green.Columns {
		b := blue.Column(g.Name)
		if b == nil {
			if g.NotNull && g.Default == "" && g.Identity == "" && g.Generated == "" {
				out = append(out, fmt.Sprintf("%s: new NOT NULL column without a default: inserts that do not name it fail", g.Name))
			}
			continue
		}
		if g.NotNull && !b.NotNull {
			note := ""
			if e, ok := s.Forward[g.Name]; ok {
				note = fmt.Sprintf(" (forward.%s: %s applies to writes through blue's shape only)", g.Name, e)
			}
			out = append(out, fmt.Sprintf("%s: NOT NULL on green, nullable on blue%s", g.Name, note))
		}
		if g.Type != b.Type && !typeWidens(b.Type, g.Type) {
			note := ""
			if e, ok := s.Forward[g.Name]; ok {
				note = fmt.Sprintf(" (forward.%s: %s)", g.Name, e)
			}
			out = append(out, fmt.Sprintf("%s: %s → %s may reject values blue accepts%s", g.Name, b.Type, g.Type, note))
		}
	}
	blueChecks := map[string]bool{}
	for _, c := range blue.Constraints {
		if c.Type == "c" {
			blueChecks[normalizeCheck(c.Def)] = true
		}
	}
	for _, c := range green.Constraints {
		if c.Type == "c" && !blueChecks[normalizeCheck(c.Def)] {
			out = append(out, fmt.Sprintf("%s: %s (blue has no such CHECK)", c.Name, c.Def))
		}
	}
	for _, ix := range green.Indexes {
		if !ix.Unique || ix.Expression {
			continue
		}
		if !blueUniqueCovers(blue, ix) {
			out = append(out, fmt.Sprintf("%s: UNIQUE (%s) (not unique on blue)", ix.Name, strings.Join(ix.Columns, ", ")))
		}
	}
	return out, nil
}

// blueUniqueCovers reports whether blue already enforces the uniqueness of
// green's index gix: some unique index of blue on a subset of its columns.
func blueUniqueCovers(blue *Table, gix Index) bool {
	for _, ix := range blue.Indexes {
		if !ix.Unique || ix.Expression || (ix.Partial && !gix.Partial) || len(ix.Columns) == 0 {
			continue
		}
		all := true
		for _, c := range ix.Columns {
			if !slices.Contains(gix.Columns, c) {
				all = false
			}
		}
		if all {
			return true
		}
	}
	return false
}

var notValidSuffix = regexp.MustCompile(`\s+NOT VALID$`)

func normalizeCheck(def string) string {
	return notValidSuffix.ReplaceAllString(strings.TrimSpace(def), "")
}

var typmodRE = regexp.MustCompile(`^([a-z ]+?)(?:\((\d+)(?:,(\d+))?\))?$`)

// parseType splits a format_type name into base name and typmods.
func parseType(t string) (base string, mods []int) {
	m := typmodRE.FindStringSubmatch(t)
	if m == nil {
		return t, nil
	}
	for _, s := range m[2:] {
		if s != "" {
			v, _ := strconv.Atoi(s)
			mods = append(mods, v)
		}
	}
	return m[1], mods
}

var intDigits = map[string]int{"smallint": 5, "integer": 10, "bigint": 19}

// typeWidens reports whether every value of type from is accepted by type
// to (possibly rounded, never rejected). Unknown pairs are "no".
func typeWidens(from, to string) bool {
	if from == to {
		return true
	}
	fb, fm := parseType(from)
	tb, tm := parseType(to)
	isString := func(b string) bool { return b == "text" || b == "character varying" || b == "character" }
	switch {
	case tb == "text" || (tb == "character varying" && len(tm) == 0):
		return true // every value has a text form
	case isString(tb):
		return isString(fb) && fb != "text" && len(fm) == 1 && len(tm) == 1 && tm[0] >= fm[0] &&
			!(tb == "character" && fb != "character")
	case tb == "double precision" || tb == "real":
		_, isInt := intDigits[fb]
		return isInt || fb == "numeric" || fb == "real" || fb == "double precision"
	case tb == "numeric":
		if len(tm) == 0 {
			_, isInt := intDigits[fb]
			return isInt || fb == "numeric"
		}
		intPart := tm[0]
		if len(tm) > 1 {
			intPart -= tm[1]
		}
		if d, ok := intDigits[fb]; ok {
			return intPart >= d
		}
		if fb == "numeric" && len(fm) > 0 {
			fi := fm[0]
			if len(fm) > 1 {
				fi -= fm[1]
			}
			return intPart >= fi
		}
		return false
	case intDigits[tb] > 0:
		d, ok := intDigits[fb]
		return ok && intDigits[tb] >= d
	case tb == "timestamp with time zone" || tb == "timestamp without time zone":
		return fb == "timestamp with time zone" || fb == "timestamp without time zone" || fb == "date"
	case tb == "jsonb":
		return fb == "json"
	}
	return false
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

// publicationsHazard says, per kind of publication, what moving blue out of
// its schema breaks for the subscribers (trap 15) and what to do.
func publicationsHazard(n Names, pubs []PublicationRef) Hazard {
	app := db.Ident(n.App.Schema, n.App.Name)
	var objs, breaks, fixes []string
	var slots []string
	for _, p := range pubs {
		objs = append(objs, p.Name+" ("+p.Via+")")
		slots = p.Slots
		pub := db.Ident(p.Name)
		switch p.Via {
		case PubForTable:
			breaks = append(breaks, fmt.Sprintf("%s names the table: from adopt its changes are published as relation %s, a subscriber's apply worker fails on that relation in a loop, every table of its subscription stalls and this server's slot retains WAL until the disk fills", p.Name, n.Blue))
			fixes = append(fixes, fmt.Sprintf("ALTER PUBLICATION %s DROP TABLE %s before sync; after finalize ALTER PUBLICATION %s ADD TABLE %s and on each subscriber ALTER SUBSCRIPTION ... REFRESH PUBLICATION (copy_data = true, into an emptied copy, to bring it up to date)", pub, app, pub, app))
		case PubForSchema:
			breaks = append(breaks, fmt.Sprintf("%s publishes schema %s: from adopt the table is in %s and is silently no longer published, so subscribers miss every change until finalize and stay behind after it", p.Name, n.App.Schema, n.BlueSchema))
			fixes = append(fixes, fmt.Sprintf("stop the subscribers' use of %s for the migration (for example replace %s by a FOR TABLE publication of the schema's other tables), and resynchronize the table on the subscribers after finalize (ALTER SUBSCRIPTION ... REFRESH PUBLICATION WITH (copy_data = true) into an emptied copy)", p.Name, pub))
		default:
			breaks = append(breaks, fmt.Sprintf("%s publishes all tables: from adopt the table's changes are published as %s, green's as %s and greenswap's state tables too; subscribers have no such relations, so their apply workers fail in a loop and this server's slot retains WAL", p.Name, n.Blue, n.Green))
			fixes = append(fixes, fmt.Sprintf("disable the subscriptions of %s (ALTER SUBSCRIPTION ... DISABLE) for the migration, or create matching tables %s, %s and schema greenswap on each subscriber first; after finalize REFRESH PUBLICATION and resynchronize the table", p.Name, n.Blue, n.Green))
		}
	}
	for _, sl := range slots {
		objs = append(objs, "logical slot "+sl+" (a subscriber that may read them)")
	}
	return Hazard{Code: HazardPublications, Severity: Blocking,
		Message: fmt.Sprintf("%s is published and adopt moves it to schema %s: %s", n.App, n.BlueSchema, strings.Join(breaks, "; ")),
		Fix:     strings.Join(fixes, "; ") + "; then plan again",
		Objects: objs}
}

// loadLeftovers finds objects of another (or an abandoned) greenswap
// migration of this table or under this name.
func loadLeftovers(ctx context.Context, q db.Querier, s *spec.Spec, blue *Table) ([]string, error) {
	n := NamesFor(s.Name, s.AppTable())
	var out []string
	rows, err := q.Query(ctx, `SELECT nspname::text FROM pg_namespace WHERE nspname = ANY ($1) ORDER BY 1`,
		[]string{n.BlueSchema, n.GreenSchema})
	if err != nil {
		return nil, err
	}
	schemas, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	for _, sc := range schemas {
		out = append(out, fmt.Sprintf("schema %s exists: DROP SCHEMA %s CASCADE", sc, db.Ident(sc)))
	}

	slots := []string{n.Slot}
	migs, err := state.List(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("read greenswap.migrations: %w", err)
	}
	app := s.AppTable()
	for _, m := range migs {
		sameTable := m.AppTable == app.String() || m.AppTable == s.Table || m.AppTable == db.Ident(app.Schema, app.Name)
		switch {
		case m.Name == s.Name && m.State != state.RolledBack:
			out = append(out, fmt.Sprintf("migration %s exists in state %s (table %s): see `greenswap status %s`", m.Name, m.State, m.AppTable, m.Name))
		case m.Name != s.Name && sameTable && m.State != state.RolledBack && m.State != state.Finalized:
			out = append(out, fmt.Sprintf("migration %s of the same table is in state %s: see `greenswap status %s`", m.Name, m.State, m.Name))
		default:
			continue
		}
		if m.SlotName != nil && *m.SlotName != "" && !slices.Contains(slots, *m.SlotName) {
			slots = append(slots, *m.SlotName)
		}
	}

	rows, err = q.Query(ctx, `
SELECT slot_name::text, active,
       coalesce(pg_catalog.pg_wal_lsn_diff(CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END, restart_lsn), 0)::int8
  FROM pg_replication_slots WHERE slot_name = ANY ($1) ORDER BY 1`, slots)
	if err != nil {
		return nil, err
	}
	type slot struct {
		name     string
		active   bool
		retained int64
	}
	found, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (slot, error) {
		var sl slot
		err := r.Scan(&sl.name, &sl.active, &sl.retained)
		return sl, err
	})
	if err != nil {
		return nil, err
	}
	for _, sl := range found {
		st := "inactive"
		if sl.active {
			st = "active"
		}
		out = append(out, fmt.Sprintf("replication slot %s exists (%s, retains %d bytes of WAL): SELECT pg_catalog.pg_drop_replication_slot(%s)",
			sl.name, st, sl.retained, db.Literal(sl.name)))
	}

	var pub bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, n.Publication).Scan(&pub); err != nil {
		return nil, err
	}
	if pub {
		out = append(out, fmt.Sprintf("publication %s exists: DROP PUBLICATION %s", n.Publication, db.Ident(n.Publication)))
	}

	if blue != nil {
		rows, err := q.Query(ctx, `SELECT tgname::text FROM pg_trigger WHERE tgrelid = $1 AND pg_catalog.left(tgname::text, 8) = 'gs_sync_' ORDER BY 1`, blue.OID)
		if err != nil {
			return nil, err
		}
		tgs, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, err
		}
		for _, tg := range tgs {
			out = append(out, fmt.Sprintf("greenswap sync trigger %s is on %s: DROP TRIGGER %s ON %s", tg, blue.Name, db.Ident(tg), db.Ident(blue.Name.Schema, blue.Name.Name)))
		}
	}
	return out, nil
}

// nameClashesSQL: $1 green, $2 the app schema, $3 a table whose own
// relations (itself, its indexes, the sequences it owns) do not count — at
// plan time blue, which adopt moves out of the app schema before finalize
// (0 for none). The relations that move are those of green's schema in its
// partition tree, each with its indexes (the root keeps the app name: the
// app-name view is dropped first). A table's row type also needs its name
// free among the schema's types (a composite type has a pg_class row too,
// so only types without one are read from pg_type).
const nameClashesSQL = `
WITH RECURSIVE tree(oid) AS (
	SELECT $1::oid
	UNION
	SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.oid
), moving AS (
	SELECT c.oid, c.relname, c.relkind, c.relnamespace FROM pg_class c
	 WHERE c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = $1)
	   AND (c.oid IN (SELECT oid FROM tree WHERE oid <> $1)
	        OR c.oid IN (SELECT x.indexrelid FROM pg_index x JOIN tree t ON x.indrelid = t.oid))
), excluded(oid) AS (
	SELECT $3::oid
	UNION SELECT indexrelid FROM pg_index WHERE indrelid = $3::oid
	UNION SELECT d.objid FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
	        AND d.refobjid = $3::oid AND d.deptype IN ('a', 'i')
), app AS (
	SELECT oid FROM pg_namespace WHERE nspname = $2
)
SELECT m.relkind::text, n.nspname::text, m.relname::text, c.relkind::text
  FROM moving m JOIN pg_namespace n ON n.oid = m.relnamespace
  JOIN pg_class c ON c.relname = m.relname AND c.relnamespace = (SELECT oid FROM app)
 WHERE c.oid <> m.oid AND c.oid NOT IN (SELECT oid FROM excluded)
UNION ALL
SELECT m.relkind::text, n.nspname::text, m.relname::text, 'type'
  FROM moving m JOIN pg_namespace n ON n.oid = m.relnamespace
  JOIN pg_type t ON t.typname = m.relname AND t.typnamespace = (SELECT oid FROM app) AND t.typrelid = 0
 WHERE m.relkind IN ('r', 'p')
 ORDER BY 3`

// LoadNameClashes lists the relations finalize would move from green's
// schema into appSchema — green's partitions (the whole tree) and the
// indexes of green and of every partition — whose name is already taken
// there, each as one line naming both. ALTER TABLE ... SET SCHEMA fails on
// such a name, so finalize refuses up front and plan warns. exclude is a
// table whose own relations do not count (plan: blue, which leaves the app
// schema at adopt); 0 for none.
func LoadNameClashes(ctx context.Context, q db.Querier, green uint32, appSchema string, exclude uint32) ([]string, error) {
	rows, err := q.Query(ctx, nameClashesSQL, green, appSchema, exclude)
	if err != nil {
		return nil, fmt.Errorf("read names taken in schema %s: %w", appSchema, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var kind, schema, name, taken string
		if err := r.Scan(&kind, &schema, &name, &taken); err != nil {
			return "", err
		}
		what := "index"
		if kind == "r" || kind == "p" {
			what = "partition"
		}
		holder := relkindNames[taken]
		switch {
		case taken == "type":
			holder = "a type"
		case holder == "":
			holder = "a relation"
		}
		return fmt.Sprintf("%s %s would become %s, but %s of that name exists there",
			what, db.Ident(schema, name), db.Ident(appSchema, name), holder), nil
	})
}

// ---------------------------------------------------------------------------
// Volatility of the mapping.

// sessionDependent are built-in functions (and SQL value keywords, which
// take no parentheses) whose value is not a function of the row: the time,
// the writing session, its transaction or its settings. Most are STABLE, not
// VOLATILE, in pg_proc, so the catalog alone would not flag them; recomputed
// by verify in its own session they differ from what the trigger or the
// backfill wrote. Read by the one detector (DirectionVolatility) that plan
// and verify both call.
var sessionDependent = map[string]bool{
	"now": true, "transaction_timestamp": true, "statement_timestamp": true,
	"clock_timestamp": true, "timeofday": true,
	"current_timestamp": true, "current_time": true, "current_date": true,
	"localtime": true, "localtimestamp": true,
	"current_user": true, "session_user": true, "user": true, "current_role": true,
	"current_setting": true, "pg_backend_pid": true, "pg_trigger_depth": true,
	"inet_client_addr": true, "inet_client_port": true, "inet_server_addr": true, "inet_server_port": true,
	"txid_current": true, "txid_current_if_assigned": true, "pg_current_xact_id": true,
	"pg_current_xact_id_if_assigned": true, "pg_postmaster_start_time": true, "pg_conf_load_time": true,
}

// isSessionDependent reports whether the function or SQL value keyword name
// (lower case, unqualified) is one whose value depends on the session, its
// transaction, its settings or the time (see sessionDependent).
func isSessionDependent(name string) bool { return sessionDependent[name] }

var (
	funcIDRE   = regexp.MustCompile(`:(?:funcid|opfuncid|aggfnoid|winfnoid) (\d+)`)
	sqlValueRE = regexp.MustCompile(`\{SQLVALUEFUNCTION :op (\d+)`)
)

// sqlValueFunctions names SQLValueFunction ops (PostgreSQL's enum
// SQLValueFunctionOp, stable since 10) for messages.
var sqlValueFunctions = []string{"CURRENT_DATE", "CURRENT_TIME", "CURRENT_TIME", "CURRENT_TIMESTAMP", "CURRENT_TIMESTAMP",
	"LOCALTIME", "LOCALTIME", "LOCALTIMESTAMP", "LOCALTIMESTAMP", "CURRENT_ROLE", "CURRENT_USER", "USER",
	"SESSION_USER", "CURRENT_CATALOG", "CURRENT_SCHEMA"}

// DetectVolatility checks every explicit expression of m (forward and
// reverse) for functions whose value is not a pure function of the row.
// It compiles each one into a throwaway view in schema (which must be
// disposable: plan passes the green schema of its rolled-back rehearsal),
// reads the functions the parse tree calls (pg_rewrite.ev_action: built-in
// functions are not recorded in pg_depend) and looks up their volatility.
// Volatile (or time/session-varying STABLE) expressions get
// ColumnMap.Volatile set. q must be a transaction: each probe runs in a
// savepoint that is rolled back. An expression that does not compile is a
// *SpecError pointing at its spec line.
func DetectVolatility(ctx context.Context, q db.Querier, s *spec.Spec, schema string, m *Mapping) ([]Volatility, error) {
	var out []Volatility
	for _, d := range []struct {
		field string
		dir   *Direction
	}{{"forward", &m.Forward}, {"reverse", &m.Reverse}} {
		vs, err := DirectionVolatility(ctx, q, schema, d.dir, d.field)
		if err != nil {
			var se *spec.SpecError
			if errors.As(err, &se) {
				se.File, se.Line = s.File, s.Line(se.Field)
				return nil, se
			}
			return nil, err
		}
		for i := range d.dir.Columns {
			c := &d.dir.Columns[i]
			v, ok := vs[c.Target]
			if !ok {
				continue
			}
			c.Volatile = len(v.Volatile) > 0
			if len(v.Volatile)+len(v.Stable)+len(v.Schemas) > 0 {
				out = append(out, v)
			}
		}
	}
	return out, nil
}

// DirectionVolatility is the one volatility detector: plan's hazards
// (through DetectVolatility) and verify's choice of the columns it compares
// both call it, so what plan says verify skips is what verify skips. It
// probes every explicit expression of d (field is "forward" or "reverse")
// and returns what it found per target column, Volatility.Field set; a
// column whose expression calls only IMMUTABLE functions has an entry with
// no names. q must be a transaction whose search_path is the one the
// expressions are evaluated under (Names.SearchPath); schema is where the
// throwaway view is created (each probe runs in a savepoint that is rolled
// back). An expression that does not compile is a *spec.SpecError naming
// its field (the caller adds file and line).
func DirectionVolatility(ctx context.Context, q db.Querier, schema string, d *Direction, field string) (map[string]Volatility, error) {
	out := map[string]Volatility{}
	for _, c := range d.Columns {
		if !c.Explicit {
			continue
		}
		f := field + "." + c.Target
		v, err := probeVolatility(ctx, q, schema, d, c.Target, sourceSide(field))
		if err != nil {
			var se *spec.SpecError
			if errors.As(err, &se) {
				se.Field = f
				return nil, se
			}
			return nil, fmt.Errorf("check volatility of %s: %w", f, err)
		}
		v.Field = f
		out[c.Target] = v
	}
	return out, nil
}

func probeVolatility(ctx context.Context, q db.Querier, schema string, d *Direction, col, side string) (v Volatility, err error) {
	if _, err := q.Exec(ctx, `SAVEPOINT gs_probe`); err != nil {
		return v, err
	}
	defer func() {
		if _, rerr := q.Exec(ctx, `ROLLBACK TO SAVEPOINT gs_probe`); rerr != nil && err == nil {
			err = rerr
		}
	}()
	view := db.Ident(schema, "gs_probe_volatility")
	_, err = q.Exec(ctx, "CREATE VIEW "+view+" AS SELECT "+d.ValueExpr(col)+" AS v FROM "+db.Ident(d.Source.Schema, d.Source.Name))
	if err != nil {
		return v, spec.NewError("", 0, "", "the expression does not compile: "+ErrText(err),
			"write one SQL expression over the "+side+" row's columns, named bare")
	}
	var tree string
	if err := q.QueryRow(ctx, `SELECT ev_action::text FROM pg_rewrite WHERE ev_class = $1::regclass`, view).Scan(&tree); err != nil {
		return v, err
	}
	seen := map[string]bool{}
	for _, m := range sqlValueRE.FindAllStringSubmatch(tree, -1) {
		op, _ := strconv.Atoi(m[1])
		name := "SQL value function"
		if op >= 0 && op < len(sqlValueFunctions) {
			name = sqlValueFunctions[op]
		}
		if !seen[name] {
			seen[name] = true
			v.Volatile = append(v.Volatile, name)
		}
	}
	var oids []uint32
	for _, m := range funcIDRE.FindAllStringSubmatch(tree, -1) {
		id, _ := strconv.ParseUint(m[1], 10, 32)
		if id != 0 {
			oids = append(oids, uint32(id))
		}
	}
	if len(oids) == 0 {
		return v, nil
	}
	rows, err := q.Query(ctx, `
SELECT DISTINCT n.nspname::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.oid = ANY ($1::oid[]) AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`, oids)
	if err != nil {
		return v, err
	}
	if v.Schemas, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return v, err
	}
	rows, err = q.Query(ctx, `
SELECT CASE WHEN n.nspname = 'pg_catalog' THEN p.proname::text ELSE n.nspname || '.' || p.proname END,
       p.proname::text, p.provolatile::text
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.oid = ANY ($1::oid[]) AND p.provolatile <> 'i'
 ORDER BY 1`, oids)
	if err != nil {
		return v, err
	}
	type fn struct{ display, name, vol string }
	fns, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (fn, error) {
		var f fn
		err := r.Scan(&f.display, &f.name, &f.vol)
		return f, err
	})
	if err != nil {
		return v, err
	}
	for _, f := range fns {
		name := f.display + "()"
		if seen[name] {
			continue
		}
		seen[name] = true
		if f.vol == "v" || isSessionDependent(f.name) {
			v.Volatile = append(v.Volatile, name)
		} else {
			v.Stable = append(v.Stable, name)
		}
	}
	return v, nil
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
