// Package alter is greenswap's ALTER TABLE front door (issue 18): it parses
// the ALTER TABLE (and CREATE INDEX) statements a DBA would write, decides
// per subcommand the cheapest safe way to apply it by rehearsing it on an
// empty scratch copy of the table, and derives the blue-green spec for the
// subcommands that need the full lifecycle.
//
// Parse only splits and names subcommands; what a subcommand costs on this
// server major (a rewrite, an index rebuild, the lock it takes) is never
// guessed from its text: Classify reads it back from the catalog after
// running it on the scratch copy.
package alter

import (
	"slices"
	"strings"

	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// Kind is what a subcommand does, as far as the choice of strategy cares.
type Kind string

const (
	AddColumn               Kind = "add column"
	DropColumn              Kind = "drop column"
	AlterType               Kind = "alter column type"
	SetDefault              Kind = "set default"
	DropDefault             Kind = "drop default"
	SetNotNull              Kind = "set not null"
	DropNotNull             Kind = "drop not null"
	AddCheck                Kind = "add check"
	AddForeignKey           Kind = "add foreign key"
	AddUnique               Kind = "add unique"
	AddPrimaryKey           Kind = "add primary key"
	AddPrimaryKeyUsingIndex Kind = "add primary key using index"
	CreateIndex             Kind = "create index"
	RenameColumn            Kind = "rename column"
	RenameTable             Kind = "rename table"
	// PartitionBy is not an ALTER TABLE subcommand PostgreSQL has: it is
	// the target change "make this table partitioned", written
	// PARTITION BY … in the ALTER, and always goes blue-green.
	PartitionBy Kind = "partition by"
	Other       Kind = "other"
)

// Subcommand is one comma-separated action of an ALTER TABLE, or one
// CREATE INDEX.
type Subcommand struct {
	Kind Kind `json:"kind"`
	// Text is the subcommand exactly as written (no table name, no
	// trailing comma): "ALTER COLUMN id TYPE bigint". For CreateIndex it
	// is the whole statement.
	Text string `json:"text"`
	// Column is the column the subcommand is about (unquoted, folded), ""
	// when it is not about one column.
	Column string `json:"column,omitempty"`
	// Constraint is the constraint or index name given, "" when unnamed.
	Constraint string `json:"constraint,omitempty"`
	// NewName is the target of RenameColumn / RenameTable.
	NewName string `json:"new_name,omitempty"`
	// Using is the USING expression of an AlterType, "" when none.
	Using string `json:"using,omitempty"`
	// TypeName is the new type of an AlterType or the type of an
	// AddColumn, as written.
	TypeName string `json:"type,omitempty"`
	// Concurrently is set on a CREATE INDEX CONCURRENTLY.
	Concurrently bool `json:"concurrently,omitempty"`
	// Unique is set on a CREATE UNIQUE INDEX.
	Unique bool `json:"unique,omitempty"`
}

// Statement is one ALTER TABLE (or CREATE INDEX) of the input.
type Statement struct {
	// Text is the statement as written, without its semicolon.
	Text string `json:"text"`
	// Table is the table it names, unquoted; Schema is "" when unqualified.
	Table spec.QualifiedName `json:"table"`
	// IfExists and Only are the ALTER TABLE options.
	IfExists bool         `json:"if_exists,omitempty"`
	Only     bool         `json:"only,omitempty"`
	Subs     []Subcommand `json:"subcommands"`
}

// Strategy is how one subcommand is applied.
type Strategy string

const (
	// InPlace runs the subcommand as is under a short lock_timeout,
	// retried with backoff: it changes metadata only.
	InPlace Strategy = "in place"
	// NotValidThenValidate adds the constraint NOT VALID (brief lock),
	// then VALIDATEs it (SHARE UPDATE EXCLUSIVE: writes go on).
	NotValidThenValidate Strategy = "not valid, then validate"
	// CheckThenSetNotNull adds CHECK (col IS NOT NULL) NOT VALID,
	// validates it, sets NOT NULL (which uses the validated check instead
	// of a scan) and drops the check.
	CheckThenSetNotNull Strategy = "check, then set not null"
	// Concurrently builds the index with CREATE INDEX CONCURRENTLY (an
	// INVALID leftover of an earlier try is dropped and rebuilt), then
	// attaches the constraint USING INDEX.
	Concurrently Strategy = "concurrently"
	// BlueGreen needs the full lifecycle: the subcommand rewrites the
	// table or changes its key.
	BlueGreen Strategy = "blue-green"
)

// Lock is the heaviest lock a step takes on the table and how long it is
// held.
type Lock struct {
	// Mode is the pg_locks mode: "AccessExclusiveLock", "ShareUpdateExclusiveLock", …
	Mode string `json:"mode"`
	// Held says for how long: "brief, metadata only", "scan under
	// SHARE UPDATE EXCLUSIVE (writes go on)", "scan under ACCESS EXCLUSIVE", …
	Held string `json:"held"`
}

// Step is what the plan does for one subcommand.
type Step struct {
	Sub      Subcommand `json:"subcommand"`
	Strategy Strategy   `json:"strategy"`
	Lock     Lock       `json:"lock"`
	// Why is one sentence: what the rehearsal showed.
	Why string `json:"why"`
	// SQL is the exact statements the in-place path runs, in order (empty
	// for BlueGreen: the lifecycle runs those).
	SQL []string `json:"sql,omitempty"`
	// Warnings are things the operator must know (a rename breaks old
	// clients that still use the old name).
	Warnings []string `json:"warnings,omitempty"`
	// Rewrite and IndexRebuild are what the rehearsal read back: the
	// table's relfilenode changed, an index's relfilenode changed.
	Rewrite      bool `json:"rewrite"`
	IndexRebuild bool `json:"index_rebuild"`
}

// Order is when the in-place steps run relative to the blue-green part.
type Order string

const (
	// InPlaceOnly: no blue-green part.
	InPlaceOnly Order = "in place only"
	// BlueGreenOnly: nothing runs in place.
	BlueGreenOnly Order = "blue-green only"
	// InPlaceFirst: the in-place steps run on blue before the blue-green
	// lifecycle starts, so green (derived from blue with every subcommand
	// applied) and blue agree on them.
	InPlaceFirst Order = "in place first, then blue-green"
)

// Plan is what Classify decided for a parsed ALTER.
type Plan struct {
	Table spec.QualifiedName `json:"table"`
	Steps []Step             `json:"steps"`
	// BlueGreen is the derived spec for the subcommands that need the
	// blue-green lifecycle, nil when none does.
	BlueGreen *spec.Spec `json:"blue_green,omitempty"`
	Order     Order      `json:"order"`
	// ServerMajor is the server major the rehearsal ran on: the decisions
	// hold for it.
	ServerMajor int `json:"server_major"`
	// Hazards are what the ALTER's blue-green part cannot do as the ALTER
	// would (convert.go): a blocking one stops plan, run and sync like
	// the derived spec's own.
	Hazards []shadow.Hazard `json:"hazards,omitempty"`
}

// Overridden drops the hazards about a forward or reverse mapping the
// caller's spec gives itself (its own expression replaces the derived one).
func (p *Plan) Overridden(forward, reverse map[string]string) {
	p.Hazards = slices.DeleteFunc(p.Hazards, func(h shadow.Hazard) bool {
		for _, o := range h.Objects {
			dir, col, _ := strings.Cut(o, ".")
			if (dir == "forward" && forward[col] != "") || (dir == "reverse" && reverse[col] != "") {
				return true
			}
		}
		return false
	})
}
