package spec

import (
	"fmt"
	"time"

	"github.com/greenswap/greenswap/internal/exitcode"
)

// Mode says how blue's changes reach green while the migration is syncing.
type Mode string

const (
	ModeTrigger Mode = "trigger"
	ModeLogical Mode = "logical"
)

// QualifiedName is a schema-qualified relation name, unquoted: the spec's
// table, and every relation the catalog describes.
type QualifiedName struct {
	Schema string `json:"schema"`
	Name   string `json:"name"`
}

func (q QualifiedName) String() string { return q.Schema + "." + q.Name }

// Spec is one migration as the operator wrote it (YAML or JSON). It is
// decoded strictly: an unknown field is an error naming file, line and field.
type Spec struct {
	Name  string   `yaml:"name" json:"name"`
	Table string   `yaml:"table" json:"table"`
	Mode  Mode     `yaml:"mode" json:"mode"`
	Key   []string `yaml:"key" json:"key,omitempty"`
	// Alter is the change as ALTER TABLE (and CREATE INDEX) statements,
	// instead of Target: greenswap derives green from it by rehearsal
	// (package alter) and runs in place what needs no new table. Forward
	// and Reverse, when given, override the derived mappings.
	Alter   string            `yaml:"alter,omitempty" json:"alter,omitempty"`
	Target  Target            `yaml:"target" json:"target"`
	Forward map[string]string `yaml:"forward" json:"forward,omitempty"`
	Reverse map[string]string `yaml:"reverse" json:"reverse,omitempty"`
	Sync    SyncOptions       `yaml:"sync" json:"sync"`
	// Tables is the several-tables form (two or more entries), instead of
	// Table, Key, Target, Forward and Reverse at the top level; Members
	// turns it into single-table specs.
	Tables []TableSpec `yaml:"tables,omitempty" json:"tables,omitempty"`
	// Split is a table split (issue 15): Table (blue) becomes these
	// greens, instead of one Target; Drop lists blue columns no green
	// carries, and Reverse maps blue columns from the joined greens
	// (spec/split.go).
	Split []SplitTable `yaml:"split,omitempty" json:"split,omitempty"`
	Drop  []string     `yaml:"drop,omitempty" json:"drop,omitempty"`
	Guard GuardOptions `yaml:"guard" json:"guard"` // the circuit breaker's bounds (spec/guard.go)

	// File is where the spec was read from ("" when it came from the state
	// table); Lines maps a field path ("forward.email", "target.ddl", "key")
	// to its line in File, so later checks against the database can still
	// point at the line to fix.
	File  string         `yaml:"-" json:"-"`
	Lines map[string]int `yaml:"-" json:"-"`
	// prefix is "tables[i]." on a member of a multi-table spec: errors
	// about its own fields name them where they are in the file.
	prefix string
	// splitItem marks a split's green (SplitMember): its target fields are
	// written split[i].ddl and split[i].indexes.
	splitItem bool
}

// Target is the green table as the DBA would write it.
type Target struct {
	DDL     string   `yaml:"ddl" json:"ddl"`
	Indexes []string `yaml:"indexes" json:"indexes,omitempty"`
	// Partitions are CREATE TABLE <name> PARTITION OF <green> ... statements,
	// run right after DDL in the same transaction and with the same
	// search_path, so they land in green's schema (a partitioned green
	// without partitions would reject every row). Names are unqualified; a
	// partition may be the parent of a later one (sub-partitioning).
	Partitions []string `yaml:"partitions" json:"partitions,omitempty"`
}

// SyncOptions are per-migration defaults for sync; command-line flags
// override them. Zero values mean "use the built-in default".
type SyncOptions struct {
	BatchSize       int      `yaml:"batch_size" json:"batch_size,omitempty"`
	MinBatchSize    int      `yaml:"min_batch_size" json:"min_batch_size,omitempty"`
	MaxBatchSize    int      `yaml:"max_batch_size" json:"max_batch_size,omitempty"`
	TargetBatchTime Duration `yaml:"target_batch_time" json:"target_batch_time,omitempty"`
	MaxReplicaLag   Duration `yaml:"max_replica_lag" json:"max_replica_lag,omitempty"`
	LockTimeout     Duration `yaml:"lock_timeout" json:"lock_timeout,omitempty"`
	// NiceRatio makes the backfill yield: after each batch it sleeps this
	// many times the batch's duration (0, the default: no pause). On a
	// server short of CPU it gives the application its share back.
	NiceRatio float64 `yaml:"nice_ratio" json:"nice_ratio,omitempty"`
	// ApplyWorkers is how many sessions the logical stream applies a
	// backlog on at once (mode: logical; 0: the stream's default, 4). More
	// drain a backlog faster and take that much more of the server's CPU
	// while they do; a stream that is caught up uses one.
	ApplyWorkers int `yaml:"apply_workers" json:"apply_workers,omitempty"`
	// Workers is how many sessions copy key ranges of blue at once (0: the
	// default, DefaultWorkers; 1: one cursor, as before parallel copies).
	// Each takes about one core of the server while it copies: more than
	// the server's cores only queue. A small table is copied by one
	// whatever this says.
	Workers int `yaml:"workers" json:"workers,omitempty"`
}

// DefaultWorkers is sync.workers' default: two cores of a server that
// has at least two, without taking all of a small one's.
const DefaultWorkers = 2

// MaxWorkers bounds sync.workers and --workers: each is a connection, and
// its batch watcher another.
const MaxWorkers = 16

// MaxApplyWorkers bounds sync.apply_workers: each is a connection.
const MaxApplyWorkers = 32

// MaxNiceRatio bounds sync.nice_ratio and --nice-ratio: beyond it the copy
// would mostly sleep, and a pause (greenswap pause) says that better.
const MaxNiceRatio = 20.0

// Duration is a time.Duration written as "200ms", "2s", "5m" in specs.
type Duration struct{ time.Duration }

// Built-in defaults applied by WithDefaults.
const (
	DefaultBatchSize       = 1000
	DefaultMinBatchSize    = 100
	DefaultMaxBatchSize    = 50000
	DefaultTargetBatchTime = 200 * time.Millisecond
	DefaultMaxReplicaLag   = 10 * time.Second
	DefaultLockTimeout     = 2 * time.Second
)

// WithDefaults returns the options with every zero field set to its default.
func (o SyncOptions) WithDefaults() SyncOptions {
	if o.BatchSize == 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.MinBatchSize == 0 {
		o.MinBatchSize = DefaultMinBatchSize
	}
	if o.MaxBatchSize == 0 {
		o.MaxBatchSize = DefaultMaxBatchSize
	}
	if o.TargetBatchTime.Duration == 0 {
		o.TargetBatchTime.Duration = DefaultTargetBatchTime
	}
	if o.MaxReplicaLag.Duration == 0 {
		o.MaxReplicaLag.Duration = DefaultMaxReplicaLag
	}
	if o.LockTimeout.Duration == 0 {
		o.LockTimeout.Duration = DefaultLockTimeout
	}
	if o.Workers == 0 {
		o.Workers = DefaultWorkers
	}
	return o
}

// SpecError is bad input in a spec: it names the file, the line, the field,
// what is wrong and what to do. The CLI maps it to exit code 2.
type SpecError struct {
	File  string
	Line  int // 0 when unknown
	Field string
	Msg   string
	Fix   string
}

func (e *SpecError) Error() string {
	loc := e.File
	if loc == "" {
		loc = "spec"
	}
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d", loc, e.Line)
	}
	s := loc + ": "
	if e.Field != "" {
		s += e.Field + ": "
	}
	s += e.Msg
	if e.Fix != "" {
		s += " (" + e.Fix + ")"
	}
	return s
}

// Errorf builds a SpecError for field, taking the line from s.Lines.
func (s *Spec) Errorf(field, fix, format string, args ...any) *SpecError {
	return &SpecError{File: s.File, Line: s.Lines[field], Field: s.fieldPath(field), Msg: fmt.Sprintf(format, args...), Fix: fix}
}

// ExitCode makes every spec error exit 2 (bad input).
func (e *SpecError) ExitCode() exitcode.Code { return exitcode.BadInput }

// NewError is a SpecError whose message and fix are made one line (line
// breaks written as \n) and whose field is quoted when it would not print
// cleanly: for checks outside this package that find bad input.
func NewError(file string, line int, field, msg, fix string) *SpecError {
	return newSpecError(file, line, field, msg, fix)
}
