package shadow

import (
	"fmt"
	"slices"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/spec"
)

// Hazards: mode: logical prerequisites and publications.

// publications: publications that publish blue.
func (h *hazardScan) publications() {
	n, f := h.n, h.f
	if len(f.Publications) > 0 {
		h.add(publicationsHazard(n, f.Publications))
	}
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
