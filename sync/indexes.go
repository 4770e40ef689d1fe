package sync

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/logx"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// IndexEvent is one thing IndexBuild did, for the event log.
type IndexEvent struct {
	// Action: "build" (a statement is done), "drop-invalid", "drop-leftover";
	// on a partitioned table also "create-parent" (an index ON ONLY a
	// partitioned table or partition), "build-partition" (one leaf
	// partition's index, CONCURRENTLY) and "attach".
	Action    string
	Statement int    // index into target.indexes; -1 for drops of indexes no statement accounts for
	Index     string // the index name
	SQL       string
	Took      time.Duration
}

// IndexBuild builds target.indexes on green, concurrently, resumably.
type IndexBuild struct {
	ConnConfig *pgx.ConnConfig // a dedicated session is opened from it
	Migration  string
	Names      shadow.Names
	Statements []string
	// Built maps a statement's position to the index it created, as
	// recorded by earlier runs (needed for statements that name no index).
	Built map[int]string
	// OnEvent records what was done (required: unnamed statements are found
	// again through it after a crash).
	OnEvent func(ctx context.Context, ev IndexEvent) error
	// Lock bounds the waits of the two short catalog-only steps of a build
	// on a partitioned table, which take locks writers queue behind (trap
	// 7): CREATE INDEX ... ON ONLY takes SHARE on the table, ALTER INDEX ...
	// ATTACH PARTITION ACCESS EXCLUSIVE on the partition's index. Each runs
	// through shadow.RunWithLockRetry. Zero: shadow.DefaultLockOptions().
	Lock shadow.LockOptions
	// Participants, when > 1, is how many processes each build may sort
	// with (the session and Participants-1 parallel maintenance workers,
	// which the server grants only within max_parallel_workers and
	// max_worker_processes): see ParallelSQL. 0 or 1: the server's own
	// settings.
	Participants int
	Log          zerolog.Logger
}

// minSortMemKB is what PostgreSQL wants of maintenance_work_mem for each
// participant of a parallel index build (32 MB): with less it plans fewer
// workers than max_parallel_maintenance_workers allows.
const minSortMemKB = 32 * 1024

// ParallelSQL sets a build session's parallelism for n participants:
// max_parallel_maintenance_workers = n-1 and maintenance_work_mem raised,
// when below, to 32 MB per participant (else the server plans fewer
// workers than allowed). Session-level: the index session is greenswap's
// own. Args: $1 n-1, $2 n × 32 MB in kB.
const ParallelSQL = `SELECT pg_catalog.set_config('max_parallel_maintenance_workers', $1::int::text, false),
	pg_catalog.set_config('maintenance_work_mem',
		greatest((SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'maintenance_work_mem'), $2::bigint)::text || 'kB', false)`

type greenIndex struct {
	name        string
	valid       bool
	constraint  bool
	partitioned bool // relkind I: an index of a partitioned table
}

const greenIndexesSQL = `SELECT c.relname::text, i.indisvalid,
	EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid),
	c.relkind = 'I'
	FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
	WHERE i.indrelid = pg_catalog.to_regclass($1) ORDER BY c.relname`

func listGreenIndexes(ctx context.Context, q db.Querier, n shadow.Names) (map[string]greenIndex, error) {
	rows, err := q.Query(ctx, greenIndexesSQL, db.Ident(n.Green.Schema, n.Green.Name))
	if err != nil {
		return nil, err
	}
	out := map[string]greenIndex{}
	var x greenIndex
	_, err = pgx.ForEachRow(rows, []any{&x.name, &x.valid, &x.constraint, &x.partitioned}, func() error {
		out[x.name] = x
		return nil
	})
	return out, err
}

// Run builds every statement not yet built. First it drops what a crash
// can leave behind: INVALID indexes (a CREATE INDEX CONCURRENTLY that did
// not finish) and, when some statement names no index, valid indexes that
// no statement accounts for (built, but killed before it was recorded).
// Green's only other indexes back its constraints, from target.ddl.
//
// A statement on a partitioned table is built partition by partition (see
// buildPartitioned): its parent index, created ON ONLY, is INVALID until
// the index of every partition is attached, so an invalid index of a
// partitioned table is never dropped: the build goes on with it.
//
// The session runs with lock_timeout and statement_timeout off: CREATE
// INDEX CONCURRENTLY takes SHARE UPDATE EXCLUSIVE, which blocks no reads or
// writes, and waits for older transactions through lock waits that a short
// lock_timeout would turn into a failed, INVALID index.
func (ib *IndexBuild) Run(ctx context.Context) error {
	stmts := make([]spec.IndexStmt, len(ib.Statements))
	for i, s := range ib.Statements {
		st, err := spec.ParseIndexStmt(s)
		if err != nil {
			return fmt.Errorf("target.indexes[%d]: %w", i, err)
		}
		stmts[i] = st
	}
	cfg := ib.ConnConfig.Copy()
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["application_name"] = "greenswap:" + ib.Migration + ":index"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to build indexes: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "SET lock_timeout = 0; SET statement_timeout = 0; SET search_path TO pg_catalog, "+
		db.Ident(ib.Names.GreenSchema)+", "+db.Ident(ib.Names.App.Schema)+", pg_temp", pgx.QueryExecModeSimpleProtocol); err != nil {
		return err
	}
	if n := ib.Participants; n > 1 {
		if _, err := conn.Exec(ctx, ParallelSQL, n-1, int64(n)*minSortMemKB); err != nil {
			return fmt.Errorf("index builds: set parallel maintenance workers: %w", err)
		}
	}
	targets := make([]relInfo, len(stmts))
	for i, st := range stmts {
		if targets[i], err = resolveRel(ctx, conn, st.Table); err != nil {
			return fmt.Errorf("target.indexes[%d]: %w", i, err)
		}
		if targets[i].kind == "p" && st.Name == "" {
			return fmt.Errorf("target.indexes[%d]: %s is partitioned: name the index (greenswap names the index of each partition after it)",
				i, targets[i].qualified())
		}
	}
	have, err := listGreenIndexes(ctx, conn, ib.Names)
	if err != nil {
		return err
	}
	drop := func(action string, statement int, schema, name string) error {
		sql := "DROP INDEX CONCURRENTLY IF EXISTS " + db.Ident(schema, name)
		t0 := time.Now()
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("drop index %s: %w", name, err)
		}
		if schema == ib.Names.Green.Schema {
			delete(have, name)
		}
		ib.Log.Info().Str("index", name).Str("action", action).Msg("dropped an index left by an interrupted build")
		return ib.OnEvent(ctx, IndexEvent{Action: action, Statement: statement, Index: name, SQL: sql, Took: time.Since(t0)})
	}
	for _, name := range slices.Sorted(maps.Keys(have)) {
		if x := have[name]; !x.valid && !x.partitioned {
			if err := drop("drop-invalid", -1, ib.Names.Green.Schema, name); err != nil {
				return err
			}
		}
	}
	known := map[string]bool{}
	var todo []int
	unnamedTodo := false
	for i, st := range stmts {
		name := st.Name
		if name == "" {
			name = ib.Built[i]
		}
		if name != "" {
			known[name] = true
		}
		if t := targets[i]; name != "" && t.oid != 0 {
			// Found by name next to its table, which need not be green
			// itself (an index of one partition, say).
			ix, err := lookupIndex(ctx, conn, t.schema, name)
			if err != nil {
				return err
			}
			if ix != nil && ix.table != t.oid {
				return fmt.Errorf("target.indexes[%d]: index %s exists, but not on %s: rename it", i, ix.qualified(), t.qualified())
			}
			if ix != nil && ix.valid {
				continue
			}
			if ix != nil && !ix.partitioned && ix.table == t.oid && ix.attachedTo == 0 {
				if err := drop("drop-invalid", i, t.schema, name); err != nil {
					return err
				}
			}
		} else if _, ok := have[name]; name != "" && ok {
			continue
		}
		todo = append(todo, i)
		if st.Name == "" {
			unnamedTodo = true
		}
	}
	if unnamedTodo {
		for _, name := range slices.Sorted(maps.Keys(have)) {
			if x := have[name]; !x.constraint && !x.partitioned && !known[name] {
				if err := drop("drop-leftover", -1, ib.Names.Green.Schema, name); err != nil {
					return err
				}
			}
		}
	}
	for _, i := range todo {
		st := stmts[i]
		if targets[i].kind == "p" {
			if err := ib.buildPartitioned(ctx, conn, i, st, targets[i]); err != nil {
				return err
			}
			continue
		}
		ib.Log.Info().Int("statement", i).Str("sql", st.SQL).Msg("building index")
		t0 := time.Now()
		if _, err := conn.Exec(ctx, st.SQL); err != nil {
			return fmt.Errorf("target.indexes[%d]: %s: %w", i, oneLineStmt(st.SQL), err)
		}
		took := time.Since(t0)
		after, err := listGreenIndexes(ctx, conn, ib.Names)
		if err != nil {
			return err
		}
		name := st.Name
		if name == "" {
			for n := range after {
				if _, old := have[n]; !old {
					name = n
				}
			}
		}
		have = after
		if err := ib.OnEvent(ctx, IndexEvent{Action: "build", Statement: i, Index: name, SQL: st.SQL, Took: took}); err != nil {
			return err
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Partitioned tables.
//
// PostgreSQL refuses CREATE INDEX CONCURRENTLY on a partitioned table, and
// a plain CREATE INDEX on one holds SHARE on every partition (writers wait)
// for the whole build. The standard way, done here:
//
//  1. CREATE INDEX name ON ONLY parent (...): catalog only, instant, and
//     INVALID (it covers no partition yet); a partition that is itself
//     partitioned gets its own ON ONLY index the same way;
//  2. per leaf partition, CREATE INDEX CONCURRENTLY of the same definition
//     (the statement's tail) under PartitionIndexName(name, partition),
//     then ALTER INDEX <its parent's index> ATTACH PARTITION <that index>;
//  3. the indexes of sub-partitioned partitions, deepest first, attached to
//     their parent's. Once every partition's index is attached (and valid),
//     PostgreSQL marks the parent index valid by itself.
//
// Every step checks the catalog first, so a re-run after a crash continues
// where it stopped: the ON ONLY indexes are kept (invalid on purpose), a
// partition's index left INVALID by a crashed CONCURRENTLY build is
// dropped and built again, one that is built but not attached is attached.

// relInfo is one relation of a partition tree.
type relInfo struct {
	oid    uint32
	schema string
	name   string
	kind   string // relkind
	parent uint32 // the partitioned table it is a partition of (0: the root)
}

func (r relInfo) qualified() string { return db.Ident(r.schema, r.name) }

// resolveRel finds the relation an index statement names, under the
// session's search_path; oid 0 when there is none (the statement then
// fails with PostgreSQL's own error).
func resolveRel(ctx context.Context, q db.Querier, table []string) (relInfo, error) {
	var r relInfo
	err := q.QueryRow(ctx, `SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = pg_catalog.to_regclass($1)`,
		db.Ident(table...)).Scan(&r.oid, &r.schema, &r.name, &r.kind)
	if errors.Is(err, pgx.ErrNoRows) {
		return relInfo{}, nil
	}
	if err != nil {
		return relInfo{}, fmt.Errorf("look up table %s: %w", db.Ident(table...), err)
	}
	return r, nil
}

// partitionTree lists the partitions below root, every level, parents
// before their partitions.
func partitionTree(ctx context.Context, q db.Querier, root uint32) ([]relInfo, error) {
	rows, err := q.Query(ctx, `SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, t.parentrelid::oid
		FROM pg_catalog.pg_partition_tree($1::oid::regclass) t JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE t.level > 0 ORDER BY t.level, c.relname`, root)
	if err != nil {
		return nil, fmt.Errorf("read the partitions: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (relInfo, error) {
		var x relInfo
		err := r.Scan(&x.oid, &x.schema, &x.name, &x.kind, &x.parent)
		return x, err
	})
}

// indexInfo is an index found by name.
type indexInfo struct {
	oid         uint32
	name        string
	schema      string
	table       uint32 // pg_index.indrelid
	valid       bool
	partitioned bool   // relkind I
	attachedTo  uint32 // the partitioned index it is attached to (0: none)
}

func (x *indexInfo) qualified() string { return db.Ident(x.schema, x.name) }

// lookupIndex finds the index called name in schema; nil when there is none.
func lookupIndex(ctx context.Context, q db.Querier, schema, name string) (*indexInfo, error) {
	x := &indexInfo{name: name, schema: schema}
	err := q.QueryRow(ctx, `SELECT c.oid, i.indrelid, i.indisvalid, c.relkind = 'I',
		coalesce((SELECT h.inhparent FROM pg_inherits h WHERE h.inhrelid = c.oid), 0)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_index i ON i.indexrelid = c.oid
		WHERE n.nspname = $1 AND c.relname = $2`, schema, name).Scan(&x.oid, &x.table, &x.valid, &x.partitioned, &x.attachedTo)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up index %s: %w", db.Ident(schema, name), err)
	}
	return x, nil
}

// maxIdentLen is PostgreSQL's NAMEDATALEN - 1: longer names are truncated.
const maxIdentLen = 63

// PartitionIndexName is the name of the index greenswap builds on
// partition for the target.indexes statement whose index is called index
// (at every level of the tree: partition names are unique in green's
// schema, so the pair is too): "<index>_<partition>". A name longer than
// PostgreSQL's 63 bytes would be truncated, and two partitions could then
// collide, so it is cut (on a character boundary) and ends with 8 hex
// digits of a hash of the full name instead. Deterministic, so a re-run
// finds what an earlier run built.
func PartitionIndexName(index, partition string) string {
	name := index + "_" + partition
	if len(name) <= maxIdentLen {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	suffix := "_" + hex.EncodeToString(sum[:4])
	cut := maxIdentLen - len(suffix)
	for cut > 0 && !utf8.RuneStart(name[cut]) {
		cut--
	}
	return name[:cut] + suffix
}

func attachSQL(parent, child *indexInfo) string {
	return "ALTER INDEX " + parent.qualified() + " ATTACH PARTITION " + child.qualified()
}

// uniqueHint explains PostgreSQL's refusal of a unique index on a
// partitioned table that lacks a partition key column.
func uniqueHint(st spec.IndexStmt, err error) string {
	if st.Unique && db.SQLState(err) == "0A000" {
		return "; a unique index on a partitioned table must include every column of its partition key"
	}
	return ""
}

func (ib *IndexBuild) lockOptions() shadow.LockOptions {
	if ib.Lock.Timeout > 0 {
		return ib.Lock
	}
	return shadow.DefaultLockOptions()
}

// short runs one catalog-only statement with a bounded lock wait, retried.
func (ib *IndexBuild) short(ctx context.Context, conn *pgx.Conn, step, sql string) error {
	return shadow.RunWithLockRetry(ctx, conn, step, ib.lockOptions(),
		func(attempt int, _ []shadow.Blocker, wait time.Duration) {
			ib.Log.Warn().Str("sql", sql).Int("attempt", attempt).Float64("retry_in_ms", logx.Ms(wait)).Msg("lock wait timed out; rolled back, retrying")
		},
		func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, sql)
			return err
		})
}

// buildPartitioned builds statement i on the partitioned table root (see
// above) and records it as built once its index is valid.
func (ib *IndexBuild) buildPartitioned(ctx context.Context, conn *pgx.Conn, i int, st spec.IndexStmt, root relInfo) error {
	t0 := time.Now()
	event := func(action, index, sql string, took time.Duration) error {
		return ib.OnEvent(ctx, IndexEvent{Action: action, Statement: i, Index: index, SQL: sql, Took: took})
	}
	fail := func(sql string, err error) error {
		return fmt.Errorf("target.indexes[%d]: %s: %w%s", i, oneLineStmt(sql), err, uniqueHint(st, err))
	}
	// only finds or creates the ON ONLY index name of the partitioned rel.
	only := func(rel relInfo, name string) (*indexInfo, error) {
		ix, err := lookupIndex(ctx, conn, rel.schema, name)
		if err != nil || ix != nil {
			return ix, err
		}
		sql := st.Create(name, rel.qualified(), true, false)
		ib.Log.Info().Int("statement", i).Str("sql", sql).Msg("creating a partitioned index")
		t := time.Now()
		if err := ib.short(ctx, conn, "create index "+name, sql); err != nil {
			return nil, fail(sql, err)
		}
		if err := event("create-parent", name, sql, time.Since(t)); err != nil {
			return nil, err
		}
		return lookupIndex(ctx, conn, rel.schema, name)
	}
	parent, err := only(root, st.Name)
	if err != nil {
		return err
	}
	if parent == nil || parent.table != root.oid {
		return fmt.Errorf("target.indexes[%d]: an index %s exists, but not on %s: rename it", i, db.Ident(root.schema, st.Name), root.qualified())
	}
	tree, err := partitionTree(ctx, conn, root.oid)
	if err != nil {
		return err
	}
	indexOf := map[uint32]*indexInfo{root.oid: parent}
	attach := func(p relInfo, ix *indexInfo) error {
		up := indexOf[p.parent]
		if up == nil {
			return fmt.Errorf("target.indexes[%d]: partition %s: the index of its parent is missing", i, p.qualified())
		}
		if ix.attachedTo == up.oid {
			return nil
		}
		if ix.attachedTo != 0 {
			return fmt.Errorf("target.indexes[%d]: index %s is attached to another index than %s", i, ix.qualified(), up.qualified())
		}
		sql := attachSQL(up, ix)
		t := time.Now()
		if err := ib.short(ctx, conn, "attach index "+ix.name, sql); err != nil {
			return fail(sql, err)
		}
		ix.attachedTo = up.oid
		return event("attach", ix.name, sql, time.Since(t))
	}
	// Pass 1, top down: the ON ONLY index of each sub-partitioned partition
	// (not attached yet, see pass 3).
	for _, p := range tree {
		name := PartitionIndexName(st.Name, p.name)
		ix, err := lookupIndex(ctx, conn, p.schema, name)
		if err != nil {
			return err
		}
		if ix != nil && ix.table != p.oid {
			return fmt.Errorf("target.indexes[%d]: the index of partition %s would be %s, but that name belongs to an index of another table: rename it",
				i, p.qualified(), ix.qualified())
		}
		switch p.kind {
		case "p":
			if ix == nil {
				if ix, err = only(p, name); err != nil {
					return err
				}
			}
		case "r":
		default:
			return fmt.Errorf("target.indexes[%d]: partition %s is not a table (relkind %s): it cannot have an index", i, p.qualified(), p.kind)
		}
		indexOf[p.oid] = ix // nil for a leaf not built yet
	}
	// Pass 2: each leaf's index, CONCURRENTLY, attached to its parent's.
	for _, p := range tree {
		if p.kind != "r" {
			continue
		}
		name := PartitionIndexName(st.Name, p.name)
		ix := indexOf[p.oid]
		if ix != nil && !ix.valid {
			if ix.attachedTo != 0 {
				return fmt.Errorf("target.indexes[%d]: index %s of partition %s is INVALID but attached: REINDEX INDEX CONCURRENTLY %s, then sync again",
					i, ix.qualified(), p.qualified(), ix.qualified())
			}
			// A CONCURRENTLY build that did not finish.
			sql := "DROP INDEX CONCURRENTLY IF EXISTS " + ix.qualified()
			t := time.Now()
			if _, err := conn.Exec(ctx, sql); err != nil {
				return fmt.Errorf("drop index %s: %w", ix.qualified(), err)
			}
			ib.Log.Info().Str("index", name).Msg("dropped an invalid partition index left by an interrupted build")
			if err := event("drop-invalid", name, sql, time.Since(t)); err != nil {
				return err
			}
			ix = nil
		}
		if ix == nil {
			sql := st.Create(name, p.qualified(), false, true)
			ib.Log.Info().Int("statement", i).Str("sql", sql).Msg("building a partition's index")
			t := time.Now()
			if _, err := conn.Exec(ctx, sql); err != nil {
				return fail(sql, err)
			}
			if err := event("build-partition", name, sql, time.Since(t)); err != nil {
				return err
			}
			var err error
			if ix, err = lookupIndex(ctx, conn, p.schema, name); err != nil {
				return err
			}
			if ix == nil {
				return fmt.Errorf("target.indexes[%d]: index %s of partition %s was not created", i, db.Ident(p.schema, name), p.qualified())
			}
			indexOf[p.oid] = ix
		}
		if err := attach(p, ix); err != nil {
			return err
		}
	}
	// Pass 3, bottom up: each sub-partitioned partition's index, complete
	// (valid) by now, attached to its parent's. Attaching the last missing
	// index under an index that is itself attached makes PostgreSQL
	// re-validate the one above with ACCESS EXCLUSIVE on its table: writers
	// holding a lock on the index being attached would deadlock with that.
	// Attaching bottom up, an index is only ever attached once everything
	// below it is, so no attachment reaches beyond its own parent.
	for k := len(tree) - 1; k >= 0; k-- {
		if p := tree[k]; p.kind == "p" {
			if err := attach(p, indexOf[p.oid]); err != nil {
				return err
			}
		}
	}
	done, err := lookupIndex(ctx, conn, root.schema, st.Name)
	if err != nil {
		return err
	}
	if done == nil || !done.valid {
		return fmt.Errorf("target.indexes[%d]: index %s is still INVALID after the index of every partition was attached (a partition added meanwhile?); sync again",
			i, db.Ident(root.schema, st.Name))
	}
	return event("build", st.Name, st.Create(st.Name, root.qualified(), true, false), time.Since(t0))
}

// RehearsePartitioned does in q's transaction, without CONCURRENTLY, what
// IndexBuild does for st when st's table is partitioned: the ON ONLY
// index, each partition's index under PartitionIndexName, attached. Plan
// runs it on the sampled rows, so a unique index without the partition key
// or a partition the index does not fit fails before sync, and green holds
// the names sync will give. q's search_path must be IndexBuild's (green's
// schema, then the app's). partitioned is false, and nothing ran, when the
// table is not partitioned; shown is the SQL as sync runs it.
func RehearsePartitioned(ctx context.Context, q db.Querier, st spec.IndexStmt) (partitioned bool, shown []string, err error) {
	root, err := resolveRel(ctx, q, st.Table)
	if err != nil || root.kind != "p" {
		return false, nil, err
	}
	if st.Name == "" {
		return true, nil, fmt.Errorf("%s is partitioned: name the index (greenswap names the index of each partition after it)", root.qualified())
	}
	run := func(sql, show string) error {
		shown = append(shown, show)
		if _, err := q.Exec(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w%s", oneLineStmt(sql), err, uniqueHint(st, err))
		}
		return nil
	}
	only := st.Create(st.Name, root.qualified(), true, false)
	if err := run(only, only); err != nil {
		return true, shown, err
	}
	tree, err := partitionTree(ctx, q, root.oid)
	if err != nil {
		return true, shown, err
	}
	// The order of IndexBuild's three passes.
	indexOf := map[uint32]*indexInfo{root.oid: {name: st.Name, schema: root.schema}}
	for _, p := range tree {
		indexOf[p.oid] = &indexInfo{name: PartitionIndexName(st.Name, p.name), schema: p.schema}
		if p.kind == "p" {
			sql := st.Create(indexOf[p.oid].name, p.qualified(), true, false)
			if err := run(sql, sql); err != nil {
				return true, shown, err
			}
		}
	}
	for _, p := range tree {
		if p.kind == "p" {
			continue
		}
		ix := indexOf[p.oid]
		if err := run(st.Create(ix.name, p.qualified(), false, false), st.Create(ix.name, p.qualified(), false, true)); err != nil {
			return true, shown, err
		}
		sql := attachSQL(indexOf[p.parent], ix)
		if err := run(sql, sql); err != nil {
			return true, shown, err
		}
	}
	for k := len(tree) - 1; k >= 0; k-- {
		if p := tree[k]; p.kind == "p" {
			sql := attachSQL(indexOf[p.parent], indexOf[p.oid])
			if err := run(sql, sql); err != nil {
				return true, shown, err
			}
		}
	}
	return true, shown, nil
}

// Analyze collects statistics on green (SHARE UPDATE EXCLUSIVE: blocks
// neither reads nor writes). It returns the SQL it ran.
func Analyze(ctx context.Context, q db.Querier, n shadow.Names) (string, error) {
	sql := "ANALYZE " + db.Ident(n.Green.Schema, n.Green.Name)
	_, err := q.Exec(ctx, sql)
	return sql, err
}

func oneLineStmt(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return s
}
