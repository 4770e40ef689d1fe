// Package verify proves that green holds exactly what blue holds: it
// compares blue, mapped through the forward expressions and cast to green's
// column types, with green, chunk by chunk over key ranges, every chunk read
// under one exported snapshot; it narrows a mismatching chunk to the exact
// keys, and repairs them on request. See README.md.
package verify

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/rowsql"
	"github.com/greenswap/greenswap/shadow"
)

// Direction says which table is the source (mapped) and which the target
// (read as it is).
type Direction string

const (
	// Forward maps blue through the forward expressions and compares with green.
	Forward Direction = "forward"
	// Reverse maps green through the reverse expressions and compares with
	// blue: the natural check once green is the primary side (after cutover).
	Reverse Direction = "reverse"
)

// Defaults for Options' zero values.
const (
	DefaultWorkers     = 2
	DefaultChunkRows   = 50000
	DefaultMaxReported = 1000
	DefaultImageWidth  = 200
)

// StreamWaiter is the logical-mode hook. Before any chunk is read, Run calls
// WaitApplied with the WAL position current when the snapshot was exported;
// it must return once every change committed up to lsn has been applied to
// the target and is visible to that snapshot's readers. Trigger mode needs
// no waiter: the triggers write the target in the same transaction as each
// source write, so one snapshot sees both sides consistent.
type StreamWaiter interface {
	WaitApplied(ctx context.Context, lsn string) error
}

// StreamWaiterFunc adapts a function to StreamWaiter.
type StreamWaiterFunc func(ctx context.Context, lsn string) error

// WaitApplied calls f.
func (f StreamWaiterFunc) WaitApplied(ctx context.Context, lsn string) error { return f(ctx, lsn) }

// Options tune a verification. Zero values take the defaults.
type Options struct {
	Direction Direction // Forward (default) or Reverse
	Workers   int       // concurrent readers, each in its own transaction on the shared snapshot (default 2)
	ChunkRows int       // target rows per chunk (default 50000)
	// Repair re-copies every missing or different key from the source
	// through the mapping, then verifies the affected chunks again under a
	// new snapshot. The source must be the primary side (the one the app
	// name reads): its rows are the truth. Target rows whose key the source
	// lacks ("extra") may be writes that reached only the target: they are
	// reported in RepairResult and left alone unless DeleteExtra.
	Repair bool
	// DeleteExtra lets Repair delete the extra target rows too.
	DeleteExtra bool
	// Bidirectional accepts a target row that differs from the mapped
	// source row when the source row equals the target row mapped back
	// through the opposite direction: a row written on the target side and
	// synced by the reverse trigger through a lossy mapping (numeric(12,2)
	// → round()::int). Set it once reverse sync is on (synced, cut_over).
	Bidirectional bool
	// Exact compares the text output of every value instead of each type's
	// equality: it also reports -0 vs 0, 1.0 vs 1.00 in an unconstrained
	// numeric, and array lower bounds, at about twice the CPU cost.
	Exact       bool
	MaxReported int // differing keys kept in Result.Differences (all are counted and repaired; default 1000)
	ImageWidth  int // row images are cut to this many characters (default 200)
	Stream      StreamWaiter
	// Snapshot, when set, is the snapshot the first pass compares under
	// (ExportSnapshot: shared by the Runs over several tables, the caller
	// closes it; Stream is not waited for again). A repair's recheck takes
	// a new one all the same.
	Snapshot *Snapshot
	// Progress, when set, is called after each unit of work (from worker
	// goroutines, one call at a time).
	Progress func(Progress)
	Log      *zerolog.Logger
}

func (o Options) withDefaults() Options {
	if o.Direction == "" {
		o.Direction = Forward
	}
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.ChunkRows <= 0 {
		o.ChunkRows = DefaultChunkRows
	}
	if o.MaxReported <= 0 {
		o.MaxReported = DefaultMaxReported
	}
	if o.ImageWidth <= 0 {
		o.ImageWidth = DefaultImageWidth
	}
	if o.Log == nil {
		nop := zerolog.Nop()
		o.Log = &nop
	}
	return o
}

// Progress is reported while a pass runs.
type Progress struct {
	Phase   string        `json:"phase"` // "compare", "drill-down", "repair", "recheck"
	Done    int           `json:"done"`  // units of work done (chunks, or whole-table scans)
	Total   int           `json:"total"`
	Rows    int64         `json:"rows"` // rows read so far (both sides)
	Elapsed time.Duration `json:"elapsed"`
}

// Target is what to compare: the migration's names and mapping, and
// optionally both tables as already read from the catalog (nil: Run reads them).
type Target struct {
	Names   shadow.Names
	Mapping *shadow.Mapping
	Blue    *shadow.Table
	Green   *shadow.Table
}

// Excluded is a target column left out of the comparison.
type Excluded struct {
	Column string `json:"column"`
	Reason string `json:"reason"` // "volatile", "not mapped", "generated"
	Detail string `json:"detail,omitempty"`
}

// Difference is one key whose rows differ.
type Difference struct {
	Kind    string   `json:"kind"` // "missing" (in the target), "extra" (in the target), "different"
	Key     []string `json:"key"`  // key values as text, in Result.KeyColumns order
	Columns []string `json:"columns,omitempty"`
	// Source is the source row mapped to the target's columns (for Forward:
	// blue through the forward expressions, cast to green's types); Target
	// the target row. Both cut to ImageWidth characters; "" when absent.
	Source string `json:"source,omitempty"`
	Target string `json:"target,omitempty"`
}

// ChunkStat is one chunk of one pass.
type ChunkStat struct {
	Index      int      `json:"index"`
	From       []string `json:"from,omitempty"` // inclusive lower bound; absent: from the start
	To         []string `json:"to,omitempty"`   // exclusive upper bound; absent: to the end
	SourceRows int64    `json:"source_rows"`
	TargetRows int64    `json:"target_rows"`
	Match      bool     `json:"match"` // count and hash equal
	DurationMS float64  `json:"duration_ms"`
}

// ScanStat is one whole-table grouped scan (a side without an index on the
// key is read once for all chunks instead of once per chunk).
type ScanStat struct {
	Table      string  `json:"table"`
	Rows       int64   `json:"rows"`
	DurationMS float64 `json:"duration_ms"`
}

// Pass is one comparison under one snapshot.
type Pass struct {
	SnapshotAt       time.Time    `json:"snapshot_at"`
	SnapshotLSN      string       `json:"snapshot_lsn,omitempty"`
	SourceRows       int64        `json:"source_rows"`
	TargetRows       int64        `json:"target_rows"`
	Chunks           int          `json:"chunks"`
	MismatchedChunks int          `json:"mismatched_chunks"`
	DifferenceCount  int          `json:"difference_count"`
	Differences      []Difference `json:"differences,omitempty"`
	// Accepted counts rows equal only through the opposite direction (see
	// Options.Bidirectional).
	Accepted   int64         `json:"accepted_via_opposite_direction,omitempty"`
	ChunkStats []ChunkStat   `json:"chunk_stats"`
	Scans      []ScanStat    `json:"scans,omitempty"`
	Duration   time.Duration `json:"-"`
	DurationMS float64       `json:"duration_ms"`

	keys       [][]string // every missing or different key (for repair)
	extra      [][]string // every key only the target has (for repair)
	mismatched []int
}

// RepairResult says what --repair did.
type RepairResult struct {
	Keys     int   `json:"keys"`     // differing keys re-copied (extra ones included only with DeleteExtra)
	Upserted int64 `json:"upserted"` // target rows written from the source
	Deleted  int64 `json:"deleted"`  // target rows deleted (absent from the source)
	// ExtraLeft counts the target rows whose key the source lacks, left
	// alone because DeleteExtra was not set (a write that reached only
	// the target is never erased silently); ExtraKeys lists the first
	// MaxExtraKeys of them.
	ExtraLeft int        `json:"extra_left,omitempty"`
	ExtraKeys [][]string `json:"extra_keys,omitempty"`
	Recheck   *Pass      `json:"recheck"` // the affected chunks verified again
}

// MaxExtraKeys is how many left-alone extra keys RepairResult lists.
const MaxExtraKeys = 20

// Result is the outcome of Run.
type Result struct {
	// OK: no differences (after repair, if requested: the recheck found none).
	OK         bool       `json:"ok"`
	Direction  Direction  `json:"direction"`
	Source     string     `json:"source"`
	Target     string     `json:"target"`
	SourceSide string     `json:"source_side"` // "blue" or "green"
	TargetSide string     `json:"target_side"`
	KeyColumns []string   `json:"key_columns"`
	Compared   []string   `json:"compared_columns"`
	Excluded   []Excluded `json:"excluded_columns,omitempty"`
	// With Bidirectional: the source columns the opposite-direction check
	// recomputes from the target row and compares, those it leaves out, and
	// the compared target columns it does not read (a row differing in one
	// of them is always reported).
	OppositeCompared []string   `json:"opposite_compared_columns,omitempty"`
	OppositeExcluded []Excluded `json:"opposite_excluded_columns,omitempty"`
	OneWay           []string   `json:"one_way_columns,omitempty"`
	Workers          int        `json:"workers"`
	ChunkRows        int        `json:"chunk_rows"`
	Warnings         []string   `json:"warnings,omitempty"`
	Exact            bool       `json:"exact"`          // values compared by text output, not by type equality
	SourceIndex      bool       `json:"source_indexed"` // chunks read by index range on the source
	TargetIndex      bool       `json:"target_indexed"`
	Pass
	Repair *RepairResult `json:"repair,omitempty"`
	// Rows is the number of source rows compared (the bench's figure).
	Rows     int64         `json:"rows"`
	Duration time.Duration `json:"-"`
	TotalMS  float64       `json:"total_ms"`
}

// Run compares the two tables of t. pool must allow Workers+1 connections
// (one holds the exported snapshot); Workers is lowered to fit.
// A completed comparison returns a Result (OK or not) and a nil error.
func Run(ctx context.Context, pool *pgxpool.Pool, t Target, opt Options) (*Result, error) {
	start := time.Now()
	opt = opt.withDefaults()
	if t.Mapping == nil {
		return nil, errors.New("verify: no mapping")
	}
	// One connection holds the pass's snapshot; a shared snapshot holds
	// one more while a repair's recheck exports its own.
	held := 1
	if opt.Snapshot != nil {
		held = 2
	}
	if maxConns := int(pool.Config().MaxConns); opt.Workers > maxConns-held {
		opt.Workers = max(1, maxConns-held)
		if maxConns < held+1 {
			return nil, fmt.Errorf("verify: the connection pool allows %d connection(s); it needs at least %d", maxConns, held+1)
		}
	}
	v, res, err := prepare(ctx, pool, t, opt)
	if err != nil {
		return nil, err
	}
	pass, err := v.run(ctx, nil, "compare")
	if err != nil {
		return nil, err
	}
	res.Pass = *pass
	res.OK = pass.DifferenceCount == 0
	if opt.Repair && !res.OK {
		rep, err := v.repair(ctx, pass)
		if err != nil {
			return nil, fmt.Errorf("repair: %w", err)
		}
		res.Repair = rep
		res.OK = rep.Recheck.DifferenceCount == 0
	}
	res.Rows = res.SourceRows
	res.Duration = time.Since(start)
	res.TotalMS = ms(res.Duration)
	return res, nil
}

// verifier is one Run's state shared by its passes.
type verifier struct {
	pool   *pgxpool.Pool
	p      *plan
	opt    Options
	names  shadow.Names
	chunks []chunk // the first pass's chunks; rechecks reuse them
}

func prepare(ctx context.Context, pool *pgxpool.Pool, t Target, opt Options) (*verifier, *Result, error) {
	var err error
	blue, green := t.Blue, t.Green
	if blue == nil {
		if blue, err = shadow.LoadTable(ctx, pool, t.Names.Blue); err != nil {
			return nil, nil, err
		}
	}
	if green == nil {
		if green, err = shadow.LoadTable(ctx, pool, t.Names.Green); err != nil {
			return nil, nil, err
		}
	}
	m := t.Mapping
	p := &plan{appSchema: t.Names.App.Schema}
	var srcT, dstT *shadow.Table
	switch opt.Direction {
	case Forward:
		p.dir, p.other, srcT, dstT = &m.Forward, &m.Reverse, blue, green
		p.src.label, p.dst.label = "blue", "green"
	case Reverse:
		p.dir, p.other, srcT, dstT = &m.Reverse, &m.Forward, green, blue
		p.src.label, p.dst.label = "green", "blue"
	default:
		return nil, nil, fmt.Errorf("verify: unknown direction %q", opt.Direction)
	}
	if !opt.Bidirectional {
		p.other = nil
	}
	p.src.name, p.dst.name = srcT.Name, dstT.Name
	p.src.rel, p.dst.rel = db.Ident(srcT.Name.Schema, srcT.Name.Name), db.Ident(dstT.Name.Schema, dstT.Name.Name)
	res := &Result{Direction: opt.Direction, Source: srcT.Name.String(), Target: dstT.Name.String(),
		SourceSide: p.src.label, TargetSide: p.dst.label, Workers: opt.Workers, ChunkRows: opt.ChunkRows}

	// Columns: hash every mapped target column whose expression can be
	// recomputed; say which are left out and why.
	vol, err := volatileColumns(ctx, pool, p.dir, string(opt.Direction), p.appSchema)
	if err != nil {
		return nil, nil, fmt.Errorf("verify: check expressions: %w", err)
	}
	for _, c := range p.dir.Columns {
		if why, ok := vol[c.Target]; ok && !slices.Contains(m.Key, c.Target) {
			res.Excluded = append(res.Excluded, Excluded{Column: c.Target, Reason: "volatile",
				Detail: fmt.Sprintf("%s = %s calls %s; its value cannot be recomputed, so it is not verified", c.Target, c.Expr, strings.Join(why, ", "))})
			continue
		}
		p.compared = append(p.compared, c.Target)
	}
	for _, c := range dstT.Columns {
		if p.dir.Column(c.Name) != nil {
			continue
		}
		if c.Generated != "" {
			res.Excluded = append(res.Excluded, Excluded{Column: c.Name, Reason: "generated", Detail: "stored generated column: computed by " + p.dst.label + " itself"})
		} else {
			res.Excluded = append(res.Excluded, Excluded{Column: c.Name, Reason: "not mapped",
				Detail: "no " + string(opt.Direction) + " expression and no " + p.src.label + " column of that name: filled by its default"})
		}
	}
	if p.other != nil {
		other := Reverse
		if opt.Direction == Reverse {
			other = Forward
		}
		ovol, err := volatileColumns(ctx, pool, p.other, string(other), p.appSchema)
		if err != nil {
			return nil, nil, fmt.Errorf("verify: check expressions: %w", err)
		}
		reads, err := columnReads(ctx, pool, p.other, string(other), p.appSchema)
		if err != nil {
			return nil, nil, fmt.Errorf("verify: check expressions: %w", err)
		}
		// A target column is checked by the opposite direction only if a
		// compared opposite expression reads it: a row that differs in any
		// other column is reported, never accepted (a volatile reverse
		// mapping must not make a forward-compared column unverifiable).
		read := map[string]bool{}
		for _, c := range p.other.Columns {
			if why, ok := ovol[c.Target]; ok {
				res.OppositeExcluded = append(res.OppositeExcluded, Excluded{Column: c.Target, Reason: "volatile",
					Detail: fmt.Sprintf("%s = %s calls %s; its value cannot be recomputed, so the %s check leaves it out", c.Target, c.Expr, strings.Join(why, ", "), other)})
				continue
			}
			p.otherCols = append(p.otherCols, c.Target)
			for _, r := range reads[c.Target] {
				read[r] = true
			}
		}
		res.OppositeCompared = p.otherCols
		p.covered = make([]bool, len(p.compared))
		for i, c := range p.compared {
			p.covered[i] = read[c]
			if !read[c] && !slices.Contains(m.Key, c) {
				res.OneWay = append(res.OneWay, c)
			}
		}
		if len(res.OneWay) > 0 {
			w := fmt.Sprintf("%s compared %s → %s only: no %s expression that can be recomputed reads %s, so a row written on %s that differs there is reported, not accepted through the %s mapping",
				strings.Join(res.OneWay, ", "), p.src.label, p.dst.label, other, plural(len(res.OneWay), "it", "them"), p.dst.label, other)
			res.Warnings = append(res.Warnings, w)
			opt.Log.Warn().Strs("columns", res.OneWay).Msg(w)
		}
	}
	res.Compared = p.compared
	for _, e := range res.Excluded {
		if e.Reason == "volatile" {
			w := "column " + e.Column + " is not verified: " + e.Detail
			res.Warnings = append(res.Warnings, w)
			opt.Log.Warn().Str("column", e.Column).Msg(w)
		} else {
			opt.Log.Info().Str("column", e.Column).Str("reason", e.Reason).Msg("column not compared: " + e.Detail)
		}
	}

	// Key: chunk order follows the source's key index.
	p.key = rowsql.KeyOrder(srcT, m.Key)
	res.KeyColumns = p.key
	for _, k := range p.key {
		sc, dc := srcT.Column(k), dstT.Column(k)
		if sc == nil || dc == nil {
			return nil, nil, fmt.Errorf("verify: key column %s missing from %s or %s", k, srcT.Name, dstT.Name)
		}
		p.srcType = append(p.srcType, sc.Type)
		p.src.keyType = append(p.src.keyType, sc.Type)
		p.src.keyRef = append(p.src.keyRef, db.Ident(k))
		p.dst.keyType = append(p.dst.keyType, dc.Type)
		ref := db.Ident(k)
		if dc.Collation != sc.Collation {
			coll := sc.Collation
			if coll == "" {
				coll = "default"
			}
			ref += " COLLATE " + db.Ident(coll)
		}
		p.dst.keyRef = append(p.dst.keyRef, ref)
	}
	p.src.indexed = rowsql.HasIndexOn(srcT, p.key)
	p.dst.indexed = rowsql.HasIndexOn(dstT, p.key) && !slices.ContainsFunc(p.dst.keyRef, func(r string) bool { return strings.Contains(r, " COLLATE ") })
	if !slices.Equal(p.src.keyType, p.dst.keyType) && !comparable(ctx, pool, p.dst.rel, p.dst.keyRef, p.srcType) {
		p.castKeys = true
		p.dst.indexed = false
		for i := range p.dst.keyRef {
			p.dst.keyRef[i] = "CAST(" + p.dst.keyRef[i] + " AS " + p.srcType[i] + ")"
		}
	}
	res.SourceIndex, res.TargetIndex = p.src.indexed, p.dst.indexed
	for _, s := range []*side{&p.src, &p.dst} {
		if !s.indexed {
			w := fmt.Sprintf("%s has no btree index on (%s): it is read once, grouped by chunk, instead of by key range", s.name, strings.Join(p.key, ", "))
			res.Warnings = append(res.Warnings, w)
			opt.Log.Info().Msg(w)
		}
	}
	// Comparison semantics: each type's own equality and extended hash
	// (hash_record_extended, PostgreSQL 14+), the text output for types
	// without them, or the whole row's text in exact mode.
	var version int
	if err := pool.QueryRow(ctx, `SELECT pg_catalog.current_setting('server_version_num')::int`).Scan(&version); err != nil {
		return nil, nil, err
	}
	p.textRow = opt.Exact || version < 140000
	p.asText = make([]bool, len(p.compared))
	probed := map[string]bool{}
	for i, c := range p.compared {
		typ := p.dir.Column(c).Type
		if p.textRow {
			p.asText[i] = true
			continue
		}
		ok, seen := probed[typ]
		if !seen {
			ok = hashable(ctx, pool, typ) && catalogEquality(ctx, pool, typ)
			probed[typ] = ok
		}
		p.asText[i] = !ok
	}
	srcCols := make([]string, len(p.compared))
	dstCols := make([]string, len(p.compared))
	for i, c := range p.compared {
		srcCols[i] = p.dir.CompareExpr(c)
		dstCols[i] = db.Ident(c)
	}
	p.src.hash = p.rowHash(srcCols)
	p.dst.hash = p.rowHash(dstCols)
	res.Exact = p.textRow
	return &verifier{pool: pool, p: p, opt: opt, names: t.Names}, res, nil
}

// worker is one reader: a connection in a REPEATABLE READ transaction that
// imported the coordinator's snapshot.
type worker struct {
	conn *pgxpool.Conn
	tx   pgx.Tx
}

func (v *verifier) beginWorker(ctx context.Context, snapshot string) (*worker, error) {
	conn, err := v.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err == nil {
		_, err = tx.Exec(ctx, "SET TRANSACTION SNAPSHOT "+db.Literal(snapshot))
	}
	if err == nil {
		err = v.sessionSettings(ctx, tx)
	}
	if err != nil {
		if tx != nil {
			_ = tx.Rollback(ctx)
		}
		conn.Release()
		return nil, fmt.Errorf("verify: join snapshot %s: %w", snapshot, err)
	}
	return &worker{conn: conn, tx: tx}, nil
}

// sessionSettings are rowsql.CompareSettings: the mapping expressions
// resolve as in the triggers (search_path = pg_catalog, app schema,
// pg_temp), floats print exactly, no statement_timeout, no row security.
func (v *verifier) sessionSettings(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, rowsql.SelectSettings(rowsql.CompareSettings("$1")...), shadow.SearchPathFor(v.p.appSchema))
	return err
}

func (w *worker) close(ctx context.Context) {
	_ = w.tx.Rollback(context.WithoutCancel(ctx))
	w.conn.Release()
}

type agg struct {
	count int64
	sum   string
	done  bool
}

// run is one pass under a fresh snapshot over every chunk (only == nil) or
// the chunks whose index is in only.
func (v *verifier) run(ctx context.Context, only map[int]bool, phase string) (*Pass, error) {
	start := time.Now()
	p := v.p
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// The snapshot: the caller's shared one for the first pass, else one
	// of the pass's own, held until every worker is done.
	snap := v.opt.Snapshot
	if snap == nil || only != nil {
		own, err := ExportSnapshot(ctx, v.pool, v.opt.Stream)
		if err != nil {
			return nil, err
		}
		defer own.Close(ctx)
		snap = own
	}
	pass := &Pass{SnapshotAt: snap.At, SnapshotLSN: snap.LSN}
	snapshot := snap.ID
	snap.mu.Lock()
	if snap.tx == nil {
		snap.mu.Unlock()
		return nil, errors.New("verify: the shared snapshot was closed before the comparison")
	}
	err := v.sessionSettings(ctx, snap.tx)
	if err == nil && v.chunks == nil {
		v.chunks, _, err = p.boundaries(ctx, snap.tx, v.opt.ChunkRows)
	}
	snap.mu.Unlock()
	if err != nil {
		return nil, err
	}
	chunks := v.chunks

	// Work list: a chunk on both sides, a chunk on one side, or a whole side
	// grouped by chunk when that side has no index on the key.
	type task struct {
		c       chunk
		sides   []*side
		grouped *side
	}
	var tasks []task
	for _, s := range []*side{&p.src, &p.dst} {
		if !s.indexed {
			tasks = append(tasks, task{grouped: s})
		}
	}
	var perChunk []*side
	for _, s := range []*side{&p.src, &p.dst} {
		if s.indexed {
			perChunk = append(perChunk, s)
		}
	}
	selected := make([]chunk, 0, len(chunks))
	for _, c := range chunks {
		if only == nil || only[c.idx] {
			selected = append(selected, c)
		}
	}
	if len(perChunk) > 0 {
		for _, c := range selected {
			tasks = append(tasks, task{c: c, sides: perChunk})
		}
	}
	srcAgg := make([]agg, len(chunks))
	dstAgg := make([]agg, len(chunks))
	durs := make([]time.Duration, len(chunks))
	aggOf := func(s *side) []agg {
		if s == &p.src {
			return srcAgg
		}
		return dstAgg
	}

	nWorkers := min(v.opt.Workers, max(1, len(tasks)))
	workers := make([]*worker, 0, nWorkers)
	defer func() {
		for _, w := range workers {
			w.close(ctx)
		}
	}()
	for range nWorkers {
		w, err := v.beginWorker(ctx, snapshot)
		if err != nil {
			return nil, err
		}
		workers = append(workers, w)
	}

	var mu sync.Mutex
	var rowsRead int64
	done := 0
	report := func(phase string, total int, rows int64) {
		mu.Lock()
		defer mu.Unlock()
		done++
		rowsRead += rows
		if v.opt.Progress != nil {
			v.opt.Progress(Progress{Phase: phase, Done: done, Total: total, Rows: rowsRead, Elapsed: time.Since(start)})
		}
	}
	// Phase 1: counts and hashes.
	taskCh := make(chan task)
	err = runWorkers(ctx, cancel, workers, func(ctx context.Context, w *worker) error {
		for t := range taskCh {
			t0 := time.Now()
			var rows int64
			if t.grouped != nil {
				sql, args := p.groupedSQL(t.grouped, chunks)
				r, err := w.tx.Query(ctx, sql, args...)
				if err != nil {
					return fmt.Errorf("verify: read %s: %w", t.grouped.name, err)
				}
				a := aggOf(t.grouped)
				for r.Next() {
					var b int
					var cnt int64
					var sum string
					if err := r.Scan(&b, &cnt, &sum); err != nil {
						r.Close()
						return err
					}
					rows += cnt
					mu.Lock()
					a[b] = agg{count: cnt, sum: sum, done: true}
					mu.Unlock()
				}
				r.Close()
				if err := r.Err(); err != nil {
					return fmt.Errorf("verify: read %s: %w", t.grouped.name, err)
				}
				mu.Lock()
				pass.Scans = append(pass.Scans, ScanStat{Table: t.grouped.name.String(), Rows: rows, DurationMS: ms(time.Since(t0))})
				mu.Unlock()
			} else {
				for _, s := range t.sides {
					sql, args := p.chunkSQL(s, t.c)
					var a agg
					if err := w.tx.QueryRow(ctx, sql, args...).Scan(&a.count, &a.sum); err != nil {
						return fmt.Errorf("verify: chunk %d of %s: %w", t.c.idx, s.name, err)
					}
					a.done = true
					rows += a.count
					mu.Lock()
					aggOf(s)[t.c.idx] = a
					mu.Unlock()
				}
				mu.Lock()
				durs[t.c.idx] = time.Since(t0)
				mu.Unlock()
			}
			report(phase, len(tasks), rows)
		}
		return nil
	}, func(ctx context.Context) {
		defer close(taskCh)
		for _, t := range tasks {
			select {
			case taskCh <- t:
			case <-ctx.Done():
				return
			}
		}
	})
	if err != nil {
		return nil, err
	}

	// Compare.
	for _, c := range selected {
		s, d := srcAgg[c.idx], dstAgg[c.idx] // an empty bucket is absent from a grouped scan: zero
		if s.sum == "" {
			s.sum = "0"
		}
		if d.sum == "" {
			d.sum = "0"
		}
		match := s.count == d.count && s.sum == d.sum
		pass.ChunkStats = append(pass.ChunkStats, ChunkStat{Index: c.idx, From: c.lo, To: c.hi,
			SourceRows: s.count, TargetRows: d.count, Match: match, DurationMS: ms(durs[c.idx])})
		pass.SourceRows += s.count
		pass.TargetRows += d.count
		if !match {
			pass.mismatched = append(pass.mismatched, c.idx)
		}
	}
	pass.Chunks = len(selected)
	pass.MismatchedChunks = len(pass.mismatched)

	// Phase 2: narrow mismatching chunks to keys. With both sides indexed
	// each chunk is its own range read; otherwise adjacent ones are merged
	// so an unindexed side is not scanned once per chunk.
	if len(pass.mismatched) > 0 {
		var spans []chunk
		for _, idx := range pass.mismatched {
			c := chunks[idx]
			if n := len(spans); n > 0 && (!p.src.indexed || !p.dst.indexed) && spans[n-1].idx+1 == idx {
				spans[n-1].hi = c.hi
				spans[n-1].idx = idx
				continue
			}
			spans = append(spans, c)
		}
		done = 0
		spanCh := make(chan chunk)
		err = runWorkers(ctx, cancel, workers, func(ctx context.Context, w *worker) error {
			for c := range spanCh {
				if err := v.drill(ctx, w, c, pass, &mu); err != nil {
					return err
				}
				report("drill-down", len(spans), 0)
			}
			return nil
		}, func(ctx context.Context) {
			defer close(spanCh)
			for _, c := range spans {
				select {
				case spanCh <- c:
				case <-ctx.Done():
					return
				}
			}
		})
		if err != nil {
			return nil, err
		}
		sort.Slice(pass.Differences, func(i, j int) bool { return lessKey(pass.Differences[i].Key, pass.Differences[j].Key) })
		if len(pass.Differences) > v.opt.MaxReported {
			pass.Differences = pass.Differences[:v.opt.MaxReported]
		}
	}
	pass.Duration = time.Since(start)
	pass.DurationMS = ms(pass.Duration)
	return pass, nil
}

// drill lists the differing rows of chunk range c into pass.
func (v *verifier) drill(ctx context.Context, w *worker, c chunk, pass *Pass, mu *sync.Mutex) error {
	p := v.p
	sql, args := p.drillSQL(c, v.opt.ImageWidth)
	rows, err := w.tx.Query(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("verify: narrow chunk %d to keys: %w", c.idx, err)
	}
	defer rows.Close()
	n := len(p.key)
	for rows.Next() {
		var inS, inT, accepted bool
		key := make([]string, n)
		var sImg, tImg string
		var cols []int32
		dest := []any{&inS, &inT}
		for i := range key {
			dest = append(dest, &key[i])
		}
		dest = append(dest, &sImg, &tImg, &cols, &accepted)
		if err := rows.Scan(dest...); err != nil {
			return err
		}
		if accepted {
			for _, i := range cols {
				if !p.covered[i-1] {
					accepted = false
				}
			}
		}
		mu.Lock()
		if accepted {
			pass.Accepted++
			mu.Unlock()
			continue
		}
		pass.DifferenceCount++
		if v.opt.Repair {
			if inS {
				pass.keys = append(pass.keys, key)
			} else {
				pass.extra = append(pass.extra, key)
			}
		}
		// Keep a bounded list; sorted and cut after the pass.
		if len(pass.Differences) < 4*v.opt.MaxReported {
			d := Difference{Key: key}
			switch {
			case !inT:
				d.Kind, d.Source = "missing", cut(sImg, v.opt.ImageWidth)
			case !inS:
				d.Kind, d.Target = "extra", cut(tImg, v.opt.ImageWidth)
			default:
				d.Kind, d.Source, d.Target = "different", cut(sImg, v.opt.ImageWidth), cut(tImg, v.opt.ImageWidth)
				for _, i := range cols {
					d.Columns = append(d.Columns, p.compared[i-1])
				}
			}
			pass.Differences = append(pass.Differences, d)
		}
		mu.Unlock()
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("verify: narrow chunk %d to keys: %w", c.idx, err)
	}
	return nil
}

// runWorkers runs fn on every worker concurrently while feed sends work;
// the first error cancels the rest and is returned.
func runWorkers(ctx context.Context, cancel context.CancelFunc, workers []*worker,
	fn func(context.Context, *worker) error, feed func(context.Context)) error {
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for _, w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx, w); err != nil {
				once.Do(func() { first = err; cancel() })
			}
		}()
	}
	feed(ctx)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}

// cut shortens s to width characters, marking the cut with "…".
func cut(s string, width int) string {
	if utf8.RuneCountInString(s) <= width {
		return s
	}
	r := []rune(s)
	return string(r[:width]) + "…"
}

// lessKey orders keys for display: numerically when both parse as
// integers of the same length class, else as text.
func lessKey(a, b []string) bool {
	for i := range a {
		if a[i] == b[i] {
			continue
		}
		if len(a[i]) != len(b[i]) && isInt(a[i]) && isInt(b[i]) {
			return len(a[i]) < len(b[i])
		}
		return a[i] < b[i]
	}
	return false
}

func isInt(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
