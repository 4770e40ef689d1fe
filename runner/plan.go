package runner

// plan: review a migration without changing anything. The whole setup that
// sync runs (adoptTx, createGreenTx) is rehearsed inside one transaction
// that is always rolled back; the mapping is then evaluated on a sample of
// real blue rows, through the same generated SQL, so a bad DDL, a bad
// expression or a failing cast is reported with the offending key before
// anything is touched.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/cutover"
	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/logx"
	"github.com/greenswap/greenswap/rowsql"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	gssync "github.com/greenswap/greenswap/sync"
	"github.com/greenswap/greenswap/trigger"
)

// PlanSchemaVersion is the version of plan's JSON document. Fields are only
// ever added; a rename or a removal bumps it.
const PlanSchemaVersion = 1

// PlanOptions tune plan. Zero values take the defaults noted.
type PlanOptions struct {
	SampleSize       int           // random rows evaluated through the mapping; default 1000
	EdgeRows         int           // first and last rows by key added to the sample; default 10
	StatementTimeout time.Duration // guard on every statement of the rehearsal; default 30s
	RowsPerSecond    float64       // conservative backfill rate for the estimate; default 10000
	// Lock bounds the rehearsal's wait for adopt's lock on the app table: a
	// lock request queued behind a long query blocks every later query on
	// the table (trap 7), and plan is only a review, so it waits less than
	// sync would. Default: the spec's lock_timeout capped at 500ms, 5 attempts.
	Lock shadow.LockOptions
}

func (o PlanOptions) withDefaults(s *spec.Spec) PlanOptions {
	if o.SampleSize <= 0 {
		o.SampleSize = 1000
	}
	if o.EdgeRows <= 0 {
		o.EdgeRows = 10
	}
	if o.StatementTimeout <= 0 {
		o.StatementTimeout = 30 * time.Second
	}
	if o.RowsPerSecond <= 0 {
		o.RowsPerSecond = 10000
	}
	if o.Lock.Timeout <= 0 {
		o.Lock = shadow.DefaultLockOptions()
		o.Lock.Timeout = min(s.Sync.WithDefaults().LockTimeout.Duration, 500*time.Millisecond)
		o.Lock.MaxAttempts = 5
	}
	return o
}

// PlanResult is plan's review; its JSON form is a stable document
// (PlanSchemaVersion).
type PlanResult struct {
	SchemaVersion int             `json:"schema_version"`
	Migration     string          `json:"migration"`
	SpecFile      string          `json:"spec_file"`
	Table         string          `json:"table"`
	Mode          spec.Mode       `json:"mode"`
	BlueSchema    string          `json:"blue_schema"`
	GreenSchema   string          `json:"green_schema"`
	GreenTable    string          `json:"green_table"`
	Server        ServerInfo      `json:"server"`
	Key           []string        `json:"key"`
	Rehearsal     Rehearsal       `json:"rehearsal"`
	Sample        SampleReport    `json:"sample"`
	Steps         []PlanStep      `json:"steps"`
	Estimate      Estimate        `json:"estimate"`
	Hazards       []shadow.Hazard `json:"hazards"`
	// Privileges are what the connecting role needs, per command, and
	// whether it has them: plan refuses (exit 2) when one that plan or sync
	// needs is missing; one only later commands need is a warning.
	Privileges []shadow.Privilege `json:"privileges"`
	Blocking   int                `json:"blocking"`
	Warnings   int                `json:"warnings"`
	Infos      int                `json:"infos"`
	Mapping    *shadow.Mapping    `json:"mapping,omitempty"`

	// Tables and Order are a spec with several tables (issue 14): one
	// section per table, each a one-table plan of its own, in Order
	// (referenced tables first); the top-level Steps are then what links
	// them (the greens' foreign keys), the counts and the estimate are the
	// sums, and Table and GreenTable list every table in Order.
	Tables []*PlanResult `json:"tables,omitempty"`
	Order  []string      `json:"order,omitempty"`
	// Split is a table split (issue 15): each green's data flow and the
	// rebuild of blue from them (runner/split.go).
	Split *SplitPlan `json:"split,omitempty"`
}

// ServerInfo identifies the PostgreSQL server plan ran against.
type ServerInfo struct {
	Version string `json:"version"` // server_version, e.g. "15.20 (Debian ...)"
	Major   int    `json:"major"`
}

// Rehearsal says what plan ran in its rolled-back transaction.
type Rehearsal struct {
	Done bool `json:"done"` // adopt, green, triggers, sample and indexes were rehearsed
	// Skipped says why not (blocking hazards that make a rehearsal meaningless).
	Skipped string `json:"skipped,omitempty"`
	// LockHeldMS is how long the rehearsal held ACCESS EXCLUSIVE on the app
	// table (from adopt to the rollback): the one moment plan is felt.
	LockHeldMS float64 `json:"lock_held_ms"`
	RolledBack bool    `json:"rolled_back"`
}

// SampleReport says how the mapping was checked on real rows.
type SampleReport struct {
	Method   string `json:"method"`
	Rows     int64  `json:"rows"`
	Forward  bool   `json:"forward_ok"`      // every forward expression evaluated and cast
	Inserted bool   `json:"green_insert_ok"` // the mapped rows satisfied green's constraints
	Reverse  bool   `json:"reverse_ok"`      // every reverse expression evaluated on those green rows
}

// PlanStep is one step of the migration as it will run.
type PlanStep struct {
	N int `json:"n"`
	shadow.Step
	Command string `json:"command"` // the greenswap command that runs it
	// Exact is true when SQL is verbatim what the command runs (the setup
	// steps were also executed in plan's rolled-back rehearsal); false when
	// the command generates it at run time and this shows its shape.
	Exact bool   `json:"exact"`
	Note  string `json:"note,omitempty"`
	// SQLLabels, when set, says what each statement of SQL is (same
	// length): the backfill shows several forms of its batch.
	SQLLabels []string `json:"sql_labels,omitempty"`
}

// Estimate is the disk and time a migration needs. Everything here is an
// estimate.
type Estimate struct {
	Rows            int64   `json:"rows"`
	BlueTableBytes  int64   `json:"blue_table_bytes"` // heap + TOAST
	BlueIndexBytes  int64   `json:"blue_index_bytes"`
	BlueRowWidth    float64 `json:"blue_row_width"`  // bytes, averaged over the sample
	GreenRowWidth   float64 `json:"green_row_width"` // bytes, averaged over the mapped sample
	GreenTableBytes int64   `json:"green_table_bytes"`
	GreenIndexBytes int64   `json:"green_index_bytes"`
	GreenTotalBytes int64   `json:"green_total_bytes"`
	// DiskNeededBytes is the 2× rule: green, its indexes, and as much again
	// for the WAL of the copy and the writes while it runs.
	DiskNeededBytes int64   `json:"disk_needed_bytes"`
	FreeBytes       *int64  `json:"free_bytes"` // not readable over SQL: always null
	RowsPerSecond   float64 `json:"rows_per_second"`
	BackfillSeconds float64 `json:"backfill_seconds"`
	// SettleSeconds is sync's VACUUM (FREEZE) of green at its pace: the
	// server's vacuum_cost_limit per vacuum_cost_delay (2 ms, autovacuum's,
	// raised by the nice ratio) with every page missed and dirtied.
	SettleSeconds float64 `json:"settle_seconds"`
	// WALBytes is about what the copy, its indexes, the row locks on blue
	// and the settle write to WAL (see estimate); not a bound.
	WALBytes int64 `json:"wal_bytes"`
	// Checkpoints is how many checkpoints that WAL requests (one per
	// max_wal_size ÷ (1 + checkpoint_completion_target) of it); PostgreSQL
	// spreads each over checkpoint_completion_target of the interval.
	Checkpoints int     `json:"checkpoints"`
	Settings    PlanWAL `json:"wal_settings"`
	Note        string  `json:"note"`
}

// PlanWAL are the server settings the settle and WAL estimates read.
type PlanWAL struct {
	MaxWALBytes                int64   `json:"max_wal_size_bytes"`
	CheckpointTimeoutS         int     `json:"checkpoint_timeout_s"`
	CheckpointCompletionTarget float64 `json:"checkpoint_completion_target"`
	VacuumCostLimit            int     `json:"vacuum_cost_limit"`
	VacuumCostPage             int     `json:"vacuum_cost_page"` // page_miss + page_dirty
}

// errRolledBack ends the rehearsal transaction: RunWithLockRetry rolls back
// on any error, and this one means "done".
var errRolledBack = errors.New("plan rehearsal rolled back")

// rehearseRolledBack runs fn in one transaction that is always rolled back,
// retried on lock timeouts (what names what plan waits for a lock on), and
// returns fn's result marked rolled back. A statement over plan's
// statement_timeout is an error that says which flag raises it.
func rehearseRolledBack(ctx context.Context, env *Env, opts PlanOptions, what string, fn func(tx pgx.Tx) (*PlanResult, error)) (*PlanResult, error) {
	var res *PlanResult
	onRetry := func(attempt int, blockers []shadow.Blocker, wait time.Duration) {
		ev := env.Log.Warn().Int("attempt", attempt).Float64("retry_in_ms", logx.Ms(wait))
		for _, b := range blockers {
			ev = ev.Str("blocked_by", b.String())
		}
		ev.Msgf("plan: waiting for a lock on %s (lock_timeout %s)", what, opts.Lock.Timeout)
	}
	err := shadow.RunWithLockRetry(ctx, env.Pool, "plan", opts.Lock, onRetry, func(tx pgx.Tx) error {
		r, err := fn(tx)
		if err != nil {
			return err
		}
		res = r
		return errRolledBack
	})
	if !errors.Is(err, errRolledBack) {
		if db.SQLState(err) == db.QueryCanceled && ctx.Err() == nil {
			return nil, fmt.Errorf("plan: a rehearsal statement ran longer than statement_timeout %s (raise --statement-timeout): %w", opts.StatementTimeout, err)
		}
		return nil, err
	}
	res.Rehearsal.RolledBack = true
	return res, nil
}

// Plan reviews spec against the database and changes nothing. A spec that
// cannot work (bad DDL, failing expression or cast, NULL into NOT NULL) is a
// *spec.SpecError naming the spec line and the offending key (exit 2).
// Blocking hazards are in the result (the CLI exits 3), not an error.
func Plan(ctx context.Context, env *Env, spec *spec.Spec, opts PlanOptions) (*PlanResult, error) {
	if spec.IsSplit() {
		return planSplit(ctx, env, spec, opts) // runner/split.go
	}
	if spec.MultiTable() {
		return planTables(ctx, env, spec, opts)
	}
	if spec.Alter != "" {
		return planAlterSpec(ctx, env, spec, opts) // runner/plan_alter.go
	}
	opts = opts.withDefaults(spec)
	res, err := rehearseRolledBack(ctx, env, opts, spec.AppTable().String(), func(tx pgx.Tx) (*PlanResult, error) {
		p := &planner{env: env, spec: spec, opts: opts, tx: tx, n: shadow.NamesFor(spec.Name, spec.AppTable())}
		if err := p.run(ctx); err != nil {
			return nil, err
		}
		return p.res, nil
	})
	if err != nil {
		return nil, err
	}
	res.Rehearsal.RolledBack = true
	res.countHazards()
	return res, nil
}

func (res *PlanResult) countHazards() {
	for _, h := range res.Hazards {
		switch h.Severity {
		case shadow.Blocking:
			res.Blocking++
		case shadow.Warning:
			res.Warnings++
		default:
			res.Infos++
		}
	}
}

type planner struct {
	env  *Env
	spec *spec.Spec
	opts PlanOptions
	tx   pgx.Tx
	n    shadow.Names
	res  *PlanResult

	app      *shadow.Table // the app table before adopt
	key      []string
	build    *Build
	facts    shadow.HazardFacts
	vols     []shadow.Volatility
	extra    []shadow.Hazard // found on the sample
	lockFrom time.Time
	swap     *cutover.SwapPlan // cutover's plan on the rehearsed catalog
	swapErr  error
	ixSQL    [][]string // per target.indexes item: the SQL sync runs (a partitioned green: several statements)
	// members are every table of a multi-table migration: their foreign
	// keys to this one are declared among the greens, not moved at cutover.
	members []spec.QualifiedName
	parts   []spec.QualifiedName // green's partitions (the whole tree), as the rehearsal created them
}

// skipRehearsal are the blocking hazards that make a rehearsal impossible
// or meaningless.
var skipRehearsal = []string{shadow.HazardLeftover, shadow.HazardNoKey, shadow.HazardTemporary,
	shadow.HazardPartitioned, shadow.HazardPartition}

func (p *planner) run(ctx context.Context) error {
	s, tx := p.spec, p.tx
	p.res = &PlanResult{
		SchemaVersion: PlanSchemaVersion, Migration: s.Name, SpecFile: s.File, Table: s.AppTable().String(),
		Mode: s.Mode, BlueSchema: p.n.BlueSchema, GreenSchema: p.n.GreenSchema, GreenTable: p.n.Green.String(),
		Steps: []PlanStep{}, Hazards: []shadow.Hazard{}, Key: []string{}, Privileges: []shadow.Privilege{},
	}
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.set_config('statement_timeout', $1, true)`,
		fmt.Sprintf("%dms", p.opts.StatementTimeout.Milliseconds())); err != nil {
		return err
	}
	if err := tx.QueryRow(ctx, `SELECT pg_catalog.current_setting('server_version')`).Scan(&p.res.Server.Version); err != nil {
		return err
	}
	p.res.Server.Major = p.env.ServerMajor

	// What is the app name now?
	var kind, persistence string
	app := s.AppTable()
	err := tx.QueryRow(ctx, `
SELECT c.relkind::text, c.relpersistence::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2`, app.Schema, app.Name).Scan(&kind, &persistence)
	if errors.Is(err, pgx.ErrNoRows) {
		return specErr(s, "table", "check the name and the database you are connected to (--dsn)", "table %s does not exist", app)
	}
	if err != nil {
		return err
	}
	if kind != "r" && kind != "p" {
		facts, err := shadow.LoadHazardFacts(ctx, tx, s, nil)
		if err != nil {
			return err
		}
		if len(facts.Leftovers) == 0 {
			return specErr(s, "table", "name a table", "%s is not a table (pg_class.relkind %q)", app, kind)
		}
		p.res.Hazards = shadow.Hazards(shadow.HazardInput{Spec: s, Facts: facts})
		p.res.Rehearsal.Skipped = fmt.Sprintf("%s is not a table but a greenswap view: a migration of it exists", app)
		return nil
	}
	if persistence == "t" {
		// Another session's temporary table cannot even be read.
		p.res.Hazards = shadow.Hazards(shadow.HazardInput{Spec: s, Blue: &shadow.Table{Name: app, Kind: kind},
			Facts: shadow.HazardFacts{ServerMajor: p.env.ServerMajor, Persistence: "t"}})
		p.res.Rehearsal.Skipped = "temporary table"
		return nil
	}

	if p.app, err = loadApp(ctx, tx, s); err != nil {
		return err
	}
	if p.members != nil {
		p.app.ReferencedBy = slices.DeleteFunc(slices.Clone(p.app.ReferencedBy), func(fk shadow.ForeignKey) bool {
			return slices.Contains(p.members, fk.Table)
		})
	}
	if err := p.privileges(ctx); err != nil {
		return err
	}
	if p.facts, err = shadow.LoadHazardFacts(ctx, tx, s, p.app); err != nil {
		return err
	}
	if err := p.sizes(ctx); err != nil {
		return err
	}
	pre := shadow.Hazards(shadow.HazardInput{Spec: s, Blue: p.app, Facts: p.facts})
	for _, h := range pre {
		if h.Severity == shadow.Blocking && slices.Contains(skipRehearsal, h.Code) {
			p.res.Hazards = pre
			p.res.Rehearsal.Skipped = "blocking hazard " + h.Code + ": nothing to rehearse until it is fixed"
			adopt := shadow.AdoptStep(p.n, p.app, p.env.ServerMajor)
			p.res.Steps = append(p.res.Steps, PlanStep{N: 1, Step: adopt, Command: "sync"})
			p.estimate()
			return nil
		}
	}
	if len(s.Key) > 0 {
		// The sample is ordered by the key before the mapping (which checks
		// the key fully) exists: the columns must at least be there.
		for _, k := range s.Key {
			if p.app.Column(k) == nil {
				return specErr(s, "key", "name columns of the table", "column %s does not exist in %s", k, p.app.Name)
			}
		}
		p.key = slices.Clone(s.Key)
	} else {
		p.key = shadow.TableKey(p.app)
	}
	p.res.Key = p.key

	if err := p.takeSample(ctx); err != nil {
		return err
	}

	// Phase 1: the setup, exactly as sync runs it, in a savepoint. adopt
	// locks the app table ACCESS EXCLUSIVE; rolling back to the savepoint
	// releases that lock at once, so this is the only moment plan is felt.
	if _, err := tx.Exec(ctx, "SAVEPOINT gs_plan_setup"); err != nil {
		return err
	}
	p.lockFrom = time.Now()
	adopt, err := adoptTx(ctx, tx, s, p.n, p.env.ServerMajor)
	if err != nil {
		return err
	}
	if p.build, err = createGreenTx(ctx, tx, s, p.n); err != nil {
		return err
	}
	reverseOn := trigger.SetReverseSQL(p.n, true)
	for _, q := range reverseOn {
		if _, err := tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("rehearse enabling reverse sync: %w", err)
		}
	}
	// What cutover will run, from the cutover package's own planner, on
	// this rehearsed catalog (it only reads). If it refuses, the reason is
	// a hazard already; the step then shows the swap's shape.
	if err := p.savepoint(ctx, func() error {
		var err error
		p.swap, err = cutover.PlanSwap(ctx, tx, cutover.SwapInput{Migration: s.Name, Names: p.n,
			Direction: cutover.ToGreen, ServerMajor: p.env.ServerMajor})
		return err
	}); err != nil {
		p.swapErr = err
	}
	if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT gs_plan_setup"); err != nil {
		return err
	}
	p.res.Rehearsal.LockHeldMS = float64(time.Since(p.lockFrom).Microseconds()) / 1000
	p.env.Log.Debug().Float64("ms", p.res.Rehearsal.LockHeldMS).Msgf("plan: released the lock on %s", s.AppTable())
	p.res.Key = p.build.Mapping.Key

	// Phase 2: the mapping on real rows. Blue is back where it was and
	// unlocked; green is created again from target.ddl (the same SQL) to
	// receive the mapped sample, with no trigger on either side.
	for _, q := range shadow.CreateGreenSQL(p.n, s) {
		if _, err := tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("re-create green for the sample: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, rowsql.SelectSettings(rowsql.SearchPath("$1")), p.n.SearchPath()); err != nil {
		return err
	}
	// Forward expressions are probed over the sample, which has blue's
	// columns. The copy shares Columns with the mapping, so Volatile flags
	// land in p.build.Mapping.
	probe := *p.build.Mapping
	probe.Forward.Source = spec.QualifiedName{Schema: "pg_temp", Name: "gs_plan_sample"}
	if p.vols, err = shadow.DetectVolatility(ctx, tx, s, "pg_temp", &probe); err != nil {
		return err
	}
	// Schemas of user functions the expressions call, writable by others.
	if p.facts.WritableSchemas, err = shadow.FunctionSchemas(ctx, tx, p.n.App.Schema, p.app.Owner, p.vols, p.facts.WritableSchemas); err != nil {
		return err
	}
	if err := p.evalForward(ctx); err != nil {
		return err
	}
	if err := p.insertGreen(ctx); err != nil {
		return err
	}
	if err := p.rehearseIndexes(ctx); err != nil {
		return err
	}
	if err := p.evalReverse(ctx); err != nil {
		return err
	}
	green, err := shadow.LoadTable(ctx, tx, p.n.Green) // as target.ddl and target.indexes make it
	if err != nil {
		return err
	}
	if err := p.greenWidths(ctx, green); err != nil {
		return err
	}
	// finalize moves green's partitions and indexes into the app schema: a
	// name taken there would make it refuse, so say it now. Blue's own
	// relations do not count (adopt moves them out of the app schema).
	if p.facts.NameClashes, err = shadow.LoadNameClashes(ctx, tx, green.OID, p.n.App.Schema, p.app.OID); err != nil {
		return err
	}
	if err := p.loadPartitions(ctx, green.OID); err != nil {
		return err
	}
	p.res.Rehearsal.Done = true
	p.res.Mapping = p.build.Mapping
	if p.swapErr != nil {
		p.extra = append(p.extra, shadow.Hazard{Code: shadow.HazardCutoverRefuses, Severity: shadow.Warning,
			Message: "planning the cutover on the rehearsed migration fails: " + shadow.ErrText(p.swapErr),
			Fix:     "fix what it names before the cutover; sync can start"})
	}
	p.res.Hazards = append(shadow.Hazards(shadow.HazardInput{Spec: s, Blue: p.app, Green: green,
		Mapping: p.build.Mapping, Volatility: p.vols, Facts: p.facts}), p.extra...)
	p.res.Hazards = shadow.SortHazards(p.res.Hazards)
	p.steps(adopt, p.build.Green, reverseOn)
	p.estimate()
	return nil
}

// privileges reads what the connecting role needs (shadow.LoadPrivileges)
// before anything is rehearsed: one that plan or sync needs and the role
// lacks ends plan with a *shadow.PrivilegeError (exit 2) naming it; one only
// verify, cutover, rollback or finalize need is a warning, as those commands
// check again and refuse up front.
func (p *planner) privileges(ctx context.Context) error {
	ps, err := shadow.LoadPrivileges(ctx, p.tx, p.spec, p.app)
	if err != nil {
		return err
	}
	// Seeing other roles' sessions: finalize refuses without it (exit 3,
	// not 2), so it is listed here and not checked up front by the steps.
	stats, err := shadow.StatsPrivilege(ctx, p.tx)
	if err != nil {
		return err
	}
	ps = append(ps, stats)
	p.res.Privileges = ps
	if err := shadow.CheckPrivileges(ctx, p.tx, ps, shadow.StepPlan, shadow.StepSync); err != nil {
		return err
	}
	var later []string
	for _, pr := range ps {
		if !pr.Granted {
			later = append(later, fmt.Sprintf("%s, for %s (%s): %s", pr.Need, strings.Join(pr.Steps, ", "), pr.Why, pr.Fix))
		}
	}
	if len(later) > 0 {
		p.extra = append(p.extra, shadow.Hazard{Code: shadow.HazardMissingPrivileges, Severity: shadow.Warning,
			Message: "the connecting role lacks privileges that later commands need: they will refuse (exit 2) before changing anything",
			Fix:     "grant them before those commands, as listed", Objects: later})
	}
	return nil
}

// checkCommandPrivileges is the up-front check of verify, cutover,
// rollback and finalize on a migration under way: the privileges step needs
// (shadow.LoadPrivileges on blue wherever it is now, read by the cheap
// LoadPrivilegeSubject), or a
// *shadow.PrivilegeError (exit 2) before anything is changed.
func checkCommandPrivileges(ctx context.Context, env *Env, m *Migration, step string) error {
	tbl, err := shadow.LoadPrivilegeSubject(ctx, env.Pool, m.Names.Blue)
	if errors.Is(err, shadow.ErrTableNotFound) { // not adopted (yet, or any more)
		tbl, err = shadow.LoadPrivilegeSubject(ctx, env.Pool, m.Names.App)
	}
	if errors.Is(err, shadow.ErrTableNotFound) {
		return nil // the command itself says what is missing
	}
	if err != nil {
		return err
	}
	ps, err := shadow.LoadPrivileges(ctx, env.Pool, m.Spec, tbl)
	if err != nil {
		return err
	}
	return shadow.CheckPrivileges(ctx, env.Pool, ps, step)
}

// specErr builds a SpecError for field, with the nearest line the spec has.
func specErr(s *spec.Spec, field, fix, format string, args ...any) *spec.SpecError {
	return &spec.SpecError{File: s.File, Line: s.Line(field), Field: s.FieldPath(field), Fix: fix,
		Msg: strings.Join(strings.Fields(fmt.Sprintf(format, args...)), " ")}
}

// ---------------------------------------------------------------------------
// The sample.

const (
	sampleTable = "pg_temp.gs_plan_sample" // blue rows
	fwdTable    = "pg_temp.gs_plan_forward"
	revTable    = "pg_temp.gs_plan_reverse"
)

// randomScanRows: up to this many rows, ORDER BY random() (a full scan, a
// few tens of milliseconds) samples the whole table evenly.
const randomScanRows = 50000

// takeSample copies a sample of blue into a temporary table before adopt
// (only an ACCESS SHARE lock is needed for it): random rows — ORDER BY
// random() on small tables, TABLESAMPLE SYSTEM (a few random pages: cheap
// on any size) on big ones —
// plus the first and last rows by key, where edge values live.
func (p *planner) takeSample(ctx context.Context) error {
	rel := db.Ident(p.app.Name.Schema, p.app.Name.Name)
	// The first and last rows in the order the backfill walks the key.
	walk := rowsql.KeyOrder(p.app, p.key)
	key := db.IdentList(walk)
	desc := make([]string, len(walk))
	for i, k := range walk {
		desc[i] = db.Ident(k) + " DESC"
	}
	n, e := p.opts.SampleSize, p.opts.EdgeRows
	var random string
	if est := p.app.RowEstimate; est <= max(int64(10*n), randomScanRows) {
		random = fmt.Sprintf("SELECT * FROM %s ORDER BY pg_catalog.random() LIMIT %d", rel, n)
		p.res.Sample.Method = fmt.Sprintf("ORDER BY random() LIMIT %d, plus the first and last %d rows by key", n, e)
	} else {
		pct := math.Min(100, 300*float64(n)/float64(est))
		random = fmt.Sprintf("SELECT * FROM %s TABLESAMPLE SYSTEM (%g) LIMIT %d", rel, pct, n)
		p.res.Sample.Method = fmt.Sprintf("TABLESAMPLE SYSTEM (%g%%) LIMIT %d, plus the first and last %d rows by key", pct, n, e)
	}
	q := fmt.Sprintf(`CREATE TEMPORARY TABLE gs_plan_sample ON COMMIT DROP AS
SELECT DISTINCT ON (%[1]s) * FROM (
  (%[2]s)
  UNION ALL (SELECT * FROM %[3]s ORDER BY %[1]s LIMIT %[4]d)
  UNION ALL (SELECT * FROM %[3]s ORDER BY %[5]s LIMIT %[4]d)
) s ORDER BY %[1]s`, key, random, rel, e, strings.Join(desc, ", "))
	if _, err := p.tx.Exec(ctx, q); err != nil {
		return fmt.Errorf("sample %s: %w", p.app.Name, err)
	}
	return p.tx.QueryRow(ctx, `SELECT pg_catalog.count(*), coalesce(pg_catalog.avg(pg_catalog.pg_column_size(s.*)), 0)::float8 FROM `+sampleTable+` s`).
		Scan(&p.res.Sample.Rows, &p.res.Estimate.BlueRowWidth)
}

// evalForward computes green rows from the sampled blue rows with the
// mapping's own SELECT list, then checks NOT NULL and green's key.
func (p *planner) evalForward(ctx context.Context) error {
	m := p.build.Mapping
	err := p.savepoint(ctx, func() error {
		_, err := p.tx.Exec(ctx, "CREATE TEMPORARY TABLE gs_plan_forward ON COMMIT DROP AS SELECT "+
			m.Forward.SelectList()+" FROM "+sampleTable)
		return err
	})
	if err != nil {
		return p.narrow(ctx, "forward", &m.Forward, sampleTable, err)
	}
	p.res.Sample.Forward = true
	if err := p.checkNotNull(ctx, "forward", &m.Forward, p.build.Green, fwdTable); err != nil {
		return err
	}
	// Green's key over the mapped sample.
	tk := db.IdentList(m.Forward.TargetKey)
	rows, err := p.tx.Query(ctx, fmt.Sprintf(`SELECT CAST(ROW(%[1]s) AS text), pg_catalog.count(*) FROM %[2]s
 GROUP BY %[1]s HAVING pg_catalog.count(*) > 1 ORDER BY pg_catalog.count(*) DESC LIMIT 5`, tk, fwdTable))
	if err != nil {
		return err
	}
	type dup struct {
		key string
		n   int64
	}
	dups, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (dup, error) {
		var d dup
		err := r.Scan(&d.key, &d.n)
		return d, err
	})
	if err != nil {
		return err
	}
	if len(dups) > 0 {
		var objs []string
		for _, d := range dups {
			objs = append(objs, fmt.Sprintf("(%s)=%s: %d sampled rows", strings.Join(m.Forward.TargetKey, ", "), d.key, d.n))
		}
		p.extra = append(p.extra, shadow.Hazard{Code: shadow.HazardGreenKeyNotUnique, Severity: shadow.Warning,
			Message: fmt.Sprintf("green's key (%s) is not unique over the mapped sample: blue rows that map to the same green key would overwrite each other in green",
				strings.Join(m.Forward.TargetKey, ", ")),
			Fix:     "make green's key a function of blue's key (keep blue's key columns in green's key), or fix the mapping of its columns",
			Objects: objs})
	}
	if p.res.Sample.Rows == 0 {
		p.extra = append(p.extra, shadow.Hazard{Code: shadow.HazardEmptySample, Severity: shadow.Info,
			Message: fmt.Sprintf("%s has no rows: the mapping compiled but was not evaluated on data", p.app.Name),
			Fix:     "nothing to do; plan again once the table has rows to check the expressions on them"})
	}
	return nil
}

// insertGreen writes the mapped sample into the (rolled-back) green table
// the way a backfill batch does, so green's constraints (NOT NULL, CHECK,
// UNIQUE, foreign keys, domains) judge real rows.
func (p *planner) insertGreen(ctx context.Context) error {
	m := p.build.Mapping
	flag, args := trigger.SyncFlagSQL(p.n)
	if _, err := p.tx.Exec(ctx, flag, args...); err != nil {
		return err
	}
	// The backfill's insert (rowsql.Builder.Insert), over the mapped
	// sample instead of through the mapping. green here is target.ddl as
	// written: an identity column that sync turns into a plain default is
	// still an identity, hence OVERRIDING.
	b := rowsql.For(&m.Forward)
	b.Into = db.Ident(p.n.Green.Schema, p.n.Green.Name)
	b.Premapped, b.Overriding = true, true
	ins := func(where string) string { return b.Insert(fwdTable+where, rowsql.DoNothing, "") }
	err := p.savepoint(ctx, func() error { _, err := p.tx.Exec(ctx, ins("")); return err })
	if err == nil {
		p.res.Sample.Inserted = true
		return nil
	}
	if !isDataError(err) {
		return fmt.Errorf("insert the mapped sample into green: %w", err)
	}
	ctid, ferr := p.bisect(ctx, fwdTable, func(where string) error {
		_, err := p.tx.Exec(ctx, ins(where))
		return err
	})
	if ferr != nil {
		return ferr
	}
	key := "(unknown)"
	if ctid != "" {
		key = p.keyOf(ctx, fwdTable, ctid)
	}
	field, fix := "target.ddl", "relax target.ddl, change the forward mapping so the value fits, or fix the row in blue"
	var pe *pgconn.PgError
	if noPartitionFor(err) {
		// green is partitioned and no partition takes the row.
		field = "target.partitions"
		if len(p.spec.Target.Partitions) == 0 {
			field = "target.ddl"
		}
		fix = "add a partition for it to target.partitions (or a DEFAULT partition), or change the forward mapping of the partition key"
	} else if errors.As(err, &pe) && pe.ColumnName != "" && m.Forward.Column(pe.ColumnName) != nil {
		if cm := m.Forward.Column(pe.ColumnName); cm.Explicit {
			field = "forward." + pe.ColumnName
		}
		fix = fmt.Sprintf("map it: forward.%s: coalesce(%s, <a value>), or relax target.ddl", pe.ColumnName, db.Ident(pe.ColumnName))
	}
	return specErr(p.spec, field, fix, "green rejects the blue row with key %s: %s", key, shadow.ErrText(err))
}

// rehearseIndexes builds target.indexes (without CONCURRENTLY) on the green
// table holding the sample: a bad statement, or a unique index the sampled
// rows violate, is reported before sync starts. On a partitioned table it
// does what sync does (gssync.RehearsePartitioned: ON ONLY the parent, an
// index per partition under the name sync gives it, attached), so a unique
// index without the partition key fails here and the names finalize will
// move are the real ones.
func (p *planner) rehearseIndexes(ctx context.Context) error {
	p.ixSQL = make([][]string, len(p.spec.Target.Indexes))
	for i, ix := range p.spec.Target.Indexes {
		field := fmt.Sprintf("target.indexes[%d]", i)
		st, perr := spec.ParseIndexStmt(ix)
		var shown []string
		err := p.savepoint(ctx, func() error {
			if _, err := p.tx.Exec(ctx, rowsql.SelectSettings(rowsql.SearchPath("$1")),
				db.Ident(p.n.GreenSchema)+", "+db.Ident(p.n.App.Schema)); err != nil {
				return err
			}
			if perr == nil {
				partitioned, sql, err := gssync.RehearsePartitioned(ctx, p.tx, st)
				if partitioned || err != nil {
					shown = sql
					return err
				}
				shown = []string{st.SQL}
			}
			_, err := p.tx.Exec(ctx, strings.TrimRight(strings.TrimSpace(ix), ";"))
			return err
		})
		if err == nil && perr != nil {
			err = perr // PostgreSQL took it, but sync could not build it
		}
		if err != nil {
			fix := "fix the CREATE INDEX statement; it runs with search_path " + p.n.GreenSchema + ", " + p.n.App.Schema
			if db.SQLState(err) == "0A000" && st.Unique {
				fix = "green is partitioned: a unique index must include every column of the partition key (" + p.build.Green.PartitionKey + ")"
			}
			return specErr(p.spec, field, fix, "%s", shadow.ErrText(err))
		}
		p.ixSQL[i] = shown
	}
	_, err := p.tx.Exec(ctx, rowsql.SelectSettings(rowsql.SearchPath("$1")), p.n.SearchPath())
	return err
}

// loadPartitions reads green's partition tree as the rehearsal created it
// (for the finalize step, which moves every partition).
func (p *planner) loadPartitions(ctx context.Context, green uint32) error {
	rows, err := p.tx.Query(ctx, `SELECT n.nspname::text, c.relname::text
		FROM pg_catalog.pg_partition_tree($1::oid::regclass) t JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE t.level > 0 ORDER BY t.level, c.relname`, green)
	if err != nil {
		return err
	}
	p.parts, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (spec.QualifiedName, error) {
		var q spec.QualifiedName
		err := r.Scan(&q.Schema, &q.Name)
		return q, err
	})
	return err
}

// noPartitionFor: PostgreSQL found no partition of a partitioned table for
// a row (SQLSTATE 23514, like a CHECK violation; told apart by its text).
func noPartitionFor(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23514" && strings.HasPrefix(pe.Message, "no partition of relation")
}

// evalReverse computes blue rows from the green rows the forward mapping
// produced, checks blue's NOT NULL and CHECK constraints on them, and
// compares them with the original rows (a lossy round trip is info).
func (p *planner) evalReverse(ctx context.Context) error {
	m := p.build.Mapping
	green := db.Ident(p.n.Green.Schema, p.n.Green.Name)
	err := p.savepoint(ctx, func() error {
		_, err := p.tx.Exec(ctx, "CREATE TEMPORARY TABLE gs_plan_reverse ON COMMIT DROP AS SELECT "+
			m.Reverse.SelectList()+" FROM "+green)
		return err
	})
	if err != nil {
		return p.narrow(ctx, "reverse", &m.Reverse, green, err)
	}
	p.res.Sample.Reverse = true
	if err := p.checkNotNull(ctx, "reverse", &m.Reverse, p.app, revTable); err != nil {
		return err
	}
	keyText := "CAST(ROW(" + db.IdentList(m.Key) + ") AS text)"
	for _, c := range p.app.Constraints {
		if c.Type != "c" {
			continue
		}
		expr := strings.TrimSuffix(strings.TrimPrefix(c.Def, "CHECK "), " NOT VALID")
		var key string
		err := p.savepoint(ctx, func() error {
			return p.tx.QueryRow(ctx, "SELECT "+keyText+" FROM "+revTable+" WHERE NOT "+expr+" LIMIT 1").Scan(&key)
		})
		if err == nil {
			return specErr(p.spec, "reverse", "change the reverse mapping so its values satisfy blue's constraint",
				"blue's constraint %s %s rejects the reverse-mapped row with key (%s)=%s", c.Name, c.Def, strings.Join(m.Key, ", "), key)
		}
		// No row (pgx.ErrNoRows), or the CHECK names a column the reverse
		// mapping does not write: nothing to report.
	}

	// Round trip: blue → green → blue.
	var cols []string
	for _, c := range m.Reverse.Columns {
		if !slices.Contains(m.Key, c.Target) {
			cols = append(cols, c.Target)
		}
	}
	if len(cols) == 0 || p.res.Sample.Rows == 0 {
		return nil
	}
	var sel []string
	for _, c := range cols {
		diff := fmt.Sprintf("CAST(r.%[1]s AS text) IS DISTINCT FROM CAST(s.%[1]s AS text)", db.Ident(c))
		sel = append(sel, fmt.Sprintf("pg_catalog.count(*) FILTER (WHERE %s), coalesce(pg_catalog.min(CAST(ROW(%s) AS text)) FILTER (WHERE %s), '')",
			diff, prefixed("s.", m.Key), diff))
	}
	// JOIN … USING would compare the keys with whatever = the search_path
	// finds for their exact type (an operator planted for varchar).
	on := make([]string, len(m.Key))
	for i, k := range m.Key {
		on[i] = "r." + db.Ident(k) + " " + rowsql.Op("=") + " s." + db.Ident(k)
	}
	q := fmt.Sprintf("SELECT %s FROM %s r JOIN %s s ON %s", strings.Join(sel, ", "), revTable, sampleTable, strings.Join(on, " AND "))
	counts := make([]int64, len(cols))
	examples := make([]string, len(cols))
	dest := make([]any, 0, 2*len(cols))
	for i := range cols {
		dest = append(dest, &counts[i], &examples[i])
	}
	if err := p.savepoint(ctx, func() error { return p.tx.QueryRow(ctx, q).Scan(dest...) }); err != nil {
		return nil // a type without a text form: skip the comparison, nothing is wrong with the mapping
	}
	var objs []string
	for i, c := range cols {
		if counts[i] > 0 {
			objs = append(objs, fmt.Sprintf("%s: %d of %d sampled rows differ after blue → green → blue (e.g. key (%s)=%s)",
				c, counts[i], p.res.Sample.Rows, strings.Join(m.Key, ", "), examples[i]))
		}
	}
	if len(objs) > 0 {
		p.extra = append(p.extra, shadow.Hazard{Code: shadow.HazardLossyMapping, Severity: shadow.Info,
			Message: "the mapping does not round-trip: a row written through green's shape reaches blue with these values, so after a rollback blue holds them",
			Fix:     "expected for normalizing mappings (e.g. coalesce); otherwise make reverse the inverse of forward",
			Objects: objs})
	}
	return nil
}

func prefixed(prefix string, cols []string) string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = prefix + db.Ident(c)
	}
	return strings.Join(out, ", ")
}

// checkNotNull reports the first mapped NULL bound for a NOT NULL column of
// target, naming the key.
func (p *planner) checkNotNull(ctx context.Context, side string, d *shadow.Direction, target *shadow.Table, rel string) error {
	var nn []string
	for _, c := range d.Columns {
		if tc := target.Column(c.Target); tc != nil && tc.NotNull {
			nn = append(nn, c.Target)
		}
	}
	if len(nn) == 0 {
		return nil
	}
	conds := make([]string, len(nn))
	for i, c := range nn {
		conds[i] = db.Ident(c) + " IS NULL"
	}
	var key string
	flags := make([]bool, len(nn))
	dest := []any{&key}
	for i := range flags {
		dest = append(dest, &flags[i])
	}
	err := p.tx.QueryRow(ctx, fmt.Sprintf("SELECT CAST(ROW(%s) AS text), %s FROM %s WHERE %s LIMIT 1",
		db.IdentList(p.build.Mapping.Key), strings.Join(conds, ", "), rel, strings.Join(conds, " OR "))).Scan(dest...)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	col := nn[slices.Index(flags, true)]
	field := side + "." + col
	cm := d.Column(col)
	fix := fmt.Sprintf("add %s: coalesce(%s, <a value>)", field, db.Ident(col))
	if cm.Explicit {
		fix = fmt.Sprintf("make %s return a value for every row, e.g. coalesce(...)", field)
	} else if side == "forward" {
		field = "target.ddl"
	} else {
		field = "reverse"
	}
	other := map[string]string{"forward": "green", "reverse": "blue"}[side]
	f := specErr(p.spec, field, fix, "%s maps the row with key (%s)=%s to NULL, but %s.%s is NOT NULL",
		side+"."+col, strings.Join(p.build.Mapping.Key, ", "), key, other, col)
	f.Field = p.spec.FieldPath(side + "." + col)
	return f
}

// narrow turns a failed evaluation of direction d over rel into a spec
// error naming the expression and, for a run-time failure, the row's key.
func (p *planner) narrow(ctx context.Context, side string, d *shadow.Direction, rel string, whole error) error {
	if !isDataError(whole) {
		return fmt.Errorf("evaluate the %s mapping on the sample: %w", side, whole)
	}
	// Which column? Compile each alone first, then evaluate it.
	for _, c := range d.Columns {
		expr := d.ValueExpr(c.Target)
		field, fix := p.exprField(side, c)
		if err := p.savepoint(ctx, func() error {
			_, err := p.tx.Exec(ctx, "SELECT "+expr+" FROM "+rel+" LIMIT 0")
			return err
		}); err != nil {
			return specErr(p.spec, field, fix, "%s.%s does not compile: %s", side, c.Target, shadow.ErrText(err))
		}
		colErr := p.savepoint(ctx, func() error {
			_, err := p.tx.Exec(ctx, "SELECT pg_catalog.count("+expr+") FROM "+rel)
			return err
		})
		if colErr == nil {
			continue
		}
		ctid, err := p.bisect(ctx, rel, func(where string) error {
			_, err := p.tx.Exec(ctx, "SELECT pg_catalog.count("+expr+") FROM "+rel+where)
			return err
		})
		if err != nil {
			return err
		}
		key := "(unknown)"
		if ctid != "" {
			key = p.keyOf(ctx, rel, ctid)
		}
		e := specErr(p.spec, field, fix, "%s.%s fails on the row with key %s: %s", side, c.Target, key, shadow.ErrText(colErr))
		e.Field = p.spec.FieldPath(side + "." + c.Target)
		return e
	}
	return specErr(p.spec, side, "check the "+side+" expressions", "evaluating the %s mapping fails: %s", side, shadow.ErrText(whole))
}

// exprField is where a column's expression lives in the spec, and the fix.
func (p *planner) exprField(side string, c shadow.ColumnMap) (string, string) {
	if c.Explicit {
		return side + "." + c.Target, "fix the expression, or guard it (CASE WHEN ... / NULLIF / a safe cast)"
	}
	src := map[string]string{"forward": "blue", "reverse": "green"}[side]
	field := "target.ddl"
	if side == "reverse" {
		field = "reverse"
	}
	return field, fmt.Sprintf("%s.%s maps %s.%s by name with a cast to %s; write %s.%s: <expression> to convert it",
		side, c.Target, src, c.Target, c.Type, side, c.Target)
}

// bisect finds one row of rel for which try fails: try gets a WHERE clause
// restricting rel to a set of rows (by ctid) and runs in a savepoint. It
// returns that row's ctid, or "" when no single row fails.
func (p *planner) bisect(ctx context.Context, rel string, try func(where string) error) (string, error) {
	rows, err := p.tx.Query(ctx, "SELECT CAST(ctid AS text) FROM "+rel+" ORDER BY ctid")
	if err != nil {
		return "", err
	}
	ctids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", err
	}
	fails := func(set []string) bool {
		err := p.savepoint(ctx, func() error {
			return try(fmt.Sprintf(" WHERE ctid = ANY ('{%s}'::tid[])", strings.Join(quoteAll(set), ",")))
		})
		return err != nil
	}
	for len(ctids) > 1 {
		half := ctids[:len(ctids)/2]
		if fails(half) {
			ctids = half
		} else {
			ctids = ctids[len(ctids)/2:]
		}
	}
	if len(ctids) == 1 && fails(ctids) {
		return ctids[0], nil
	}
	return "", nil
}

func quoteAll(ctids []string) []string {
	out := make([]string, len(ctids))
	for i, c := range ctids {
		out[i] = `"` + c + `"`
	}
	return out
}

// keyOf describes the key of the row at ctid in rel as "(id)=(42)".
func (p *planner) keyOf(ctx context.Context, rel, ctid string) string {
	var k string
	err := p.savepoint(ctx, func() error {
		return p.tx.QueryRow(ctx, "SELECT CAST(ROW("+db.IdentList(p.build.Mapping.Key)+") AS text) FROM "+rel+" WHERE ctid = $1::tid", ctid).Scan(&k)
	})
	if err != nil {
		return "(row " + ctid + ")"
	}
	return "(" + strings.Join(p.build.Mapping.Key, ", ") + ")=" + k
}

// savepoint runs fn in a savepoint, rolled back if fn fails.
func (p *planner) savepoint(ctx context.Context, fn func() error) error {
	if _, err := p.tx.Exec(ctx, "SAVEPOINT gs_plan"); err != nil {
		return err
	}
	if err := fn(); err != nil {
		if _, rerr := p.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT gs_plan"); rerr != nil {
			return errors.Join(err, rerr)
		}
		return err
	}
	_, err := p.tx.Exec(ctx, "RELEASE SAVEPOINT gs_plan")
	return err
}

// isDataError: the failure is about the expressions or the data (classes 22
// data exception, 23 integrity, 42 syntax/undefined, P0 raised, 2F/39
// function errors), not the session.
func isDataError(err error) bool {
	st := db.SQLState(err)
	if len(st) < 2 {
		return false
	}
	switch st[:2] {
	case "22", "23", "42", "P0", "2F", "39", "0L", "44":
		return true
	}
	return false
}

// ---------------------------------------------------------------------------
// Sizes and the estimate.

func (p *planner) sizes(ctx context.Context) error {
	e := &p.res.Estimate
	e.Rows = p.app.RowEstimate
	w := &e.Settings
	return p.tx.QueryRow(ctx, `SELECT pg_catalog.pg_table_size($1::oid), pg_catalog.pg_indexes_size($1::oid),
		pg_catalog.pg_size_bytes(pg_catalog.current_setting('max_wal_size')),
		(SELECT setting::int FROM pg_catalog.pg_settings WHERE name = 'checkpoint_timeout'),
		pg_catalog.current_setting('checkpoint_completion_target')::float8,
		pg_catalog.current_setting('vacuum_cost_limit')::int,
		pg_catalog.current_setting('vacuum_cost_page_miss')::int + pg_catalog.current_setting('vacuum_cost_page_dirty')::int`, p.app.OID).
		Scan(&e.BlueTableBytes, &e.BlueIndexBytes, &w.MaxWALBytes, &w.CheckpointTimeoutS, &w.CheckpointCompletionTarget,
			&w.VacuumCostLimit, &w.VacuumCostPage)
}

// greenWidths measures green's rows and index keys as the sample filled them.
func (p *planner) greenWidths(ctx context.Context, green *shadow.Table) error {
	e := &p.res.Estimate
	rel := db.Ident(p.n.Green.Schema, p.n.Green.Name)
	if err := p.tx.QueryRow(ctx, "SELECT coalesce(pg_catalog.avg(pg_catalog.pg_column_size(g.*)), 0)::float8 FROM "+rel+" g").Scan(&e.GreenRowWidth); err != nil {
		return err
	}
	widths := map[string]float64{}
	if len(green.Columns) > 0 {
		sel := make([]string, len(green.Columns))
		dest := make([]any, len(green.Columns))
		vals := make([]float64, len(green.Columns))
		for i, c := range green.Columns {
			sel[i] = "coalesce(avg(pg_column_size(" + db.Ident(c.Name) + ")), 0)::float8"
			dest[i] = &vals[i]
		}
		if err := p.tx.QueryRow(ctx, "SELECT "+strings.Join(sel, ", ")+" FROM "+rel).Scan(dest...); err != nil {
			return err
		}
		for i, c := range green.Columns {
			widths[c.Name] = vals[i]
		}
	}
	// A btree entry: 8-byte tuple header + 4-byte line pointer + key,
	// aligned, in pages filled to 90%.
	var ixBytes float64
	for _, ix := range green.Indexes {
		w := 0.0
		for _, c := range ix.Columns {
			w += widths[c]
		}
		if ix.Expression || w == 0 {
			w += 8
		}
		ixBytes += float64(e.Rows) * (12 + math.Ceil(w/8)*8) / 0.9
	}
	e.GreenIndexBytes = int64(ixBytes)
	return nil
}

func (p *planner) estimate() {
	e := &p.res.Estimate
	e.RowsPerSecond = p.opts.RowsPerSecond
	ratio := 1.0
	if e.BlueRowWidth > 0 && e.GreenRowWidth > 0 {
		ratio = e.GreenRowWidth / e.BlueRowWidth
	}
	e.GreenTableBytes = int64(float64(e.BlueTableBytes) * ratio)
	if e.GreenIndexBytes == 0 {
		e.GreenIndexBytes = e.BlueIndexBytes
	}
	e.GreenTotalBytes = e.GreenTableBytes + e.GreenIndexBytes
	e.DiskNeededBytes = 2 * e.GreenTotalBytes
	nice := max(p.spec.Sync.WithDefaults().NiceRatio, 0)
	// The nice ratio makes every batch sleep that many times its length.
	e.BackfillSeconds = float64(e.Rows) / e.RowsPerSecond * (1 + nice)
	if w := e.Settings; w.VacuumCostLimit > 0 && w.VacuumCostPage > 0 {
		delay := gssync.DefaultSettleCostDelay.Seconds() * (1 + nice)
		pagesPerSec := float64(w.VacuumCostLimit) / float64(w.VacuumCostPage) / delay
		e.SettleSeconds = float64(e.GreenTableBytes) / 8192 / pagesPerSec
	}
	// The copy's WAL: green and its indexes; blue once more for the row
	// locks the batches take (each first change to a page after a
	// checkpoint logs the whole page); green's heap once more for the
	// freeze (the same full pages). An autovacuum of green during the copy
	// (its insert threshold) can add green's heap again.
	e.WALBytes = e.GreenTotalBytes + e.BlueTableBytes + e.GreenTableBytes
	if w := e.Settings; w.MaxWALBytes > 0 {
		e.Checkpoints = int(float64(e.WALBytes) / (float64(w.MaxWALBytes) / (1 + w.CheckpointCompletionTarget)))
	}
	e.Note = fmt.Sprintf("estimates: rows from the planner statistics, green's size from blue's scaled by the sampled row widths, "+
		"the copy at a conservative %.0f rows/s (sync adapts its batches; throttling and index builds add time). "+
		"Free disk space cannot be read over SQL: keep at least 2 × green and its indexes free (%s) for the copy, its WAL and the writes meanwhile",
		e.RowsPerSecond, HumanBytes(e.DiskNeededBytes))
}

// HumanBytes formats n as "12.3 MB".
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTP"[exp])
}

// ---------------------------------------------------------------------------
// The steps as they will run.

func (p *planner) steps(adopt shadow.Step, green *shadow.Table, reverseOn []string) {
	n, m, s := p.n, p.build.Mapping, p.spec
	add := func(st shadow.Step, cmd string, exact bool, note string) {
		p.res.Steps = append(p.res.Steps, PlanStep{N: len(p.res.Steps) + 1, Step: st, Command: cmd, Exact: exact, Note: note})
	}
	add(adopt, "sync", true, "")
	for _, st := range p.build.Steps {
		add(st, "sync", true, "")
	}

	opt := s.Sync.WithDefaults()
	batch, err := gssync.BatchPreview(n, m, p.build.Blue, fmt.Sprintf("%dms", opt.LockTimeout.Milliseconds()))
	note := fmt.Sprintf("every statement the backfill sends, as sync sends it. Each batch is one transaction: "+
		"the sync flag, the settings, the query finding its range's upper end (none for the last batch: when it finds no row, "+
		"fewer than a batch are left), then one batch statement. A batch runs in the plain form; "+
		"when it fails with a unique violation (a key of its range is in green already, written by the trigger) "+
		"it is rolled back and redone in the ON CONFLICT DO NOTHING form, which the next %d batches keep. "+
		"In a batch, $1..$%d are the last key copied (not in the first batch), then the range's upper key (not in the last); "+
		"in an upper-end query, the last key copied (not for the first range), then the batch size minus one", gssync.ConflictSpell, 2*len(m.Key))
	if err != nil {
		note = "cannot show the batch: " + err.Error()
	}
	waits := "a DELETE or key UPDATE of those rows waits for the batch"
	if m.SourceRowLock() != "FOR KEY SHARE" {
		waits = "any UPDATE of those rows waits for the batch: green's key reads a column outside blue's key"
	}
	add(shadow.Step{
		Name:        "backfill",
		Description: fmt.Sprintf("copy blue's rows into green in key order, one short transaction per batch of %d–%d rows (adaptive, aiming at %s per batch), checkpointing the cursor", opt.MinBatchSize, opt.MaxBatchSize, opt.TargetBatchTime.Duration),
		SQL:         batch,
		Lock:        fmt.Sprintf("%s row locks on the batch's blue rows (%s)", m.SourceRowLock(), waits),
		LockHold:    fmt.Sprintf("one batch (~%s)", opt.TargetBatchTime.Duration), Transactional: true,
	}, "sync", err == nil, note)
	if err == nil {
		p.res.Steps[len(p.res.Steps)-1].SQLLabels = gssync.BatchPreviewLabels()
	}

	var ixSQL []string
	for i, src := range s.Target.Indexes {
		switch {
		case i < len(p.ixSQL) && len(p.ixSQL[i]) > 0:
			ixSQL = append(ixSQL, p.ixSQL[i]...)
		default:
			if st, err := spec.ParseIndexStmt(src); err == nil {
				ixSQL = append(ixSQL, st.SQL)
			} else {
				ixSQL = append(ixSQL, src)
			}
		}
	}
	if len(ixSQL) > 0 {
		ixSQL = append([]string{"SET search_path TO " + db.Ident(n.GreenSchema) + ", " + db.Ident(n.App.Schema)}, ixSQL...)
		desc := "build target.indexes on green, CONCURRENTLY, after the copy (rehearsed without CONCURRENTLY on the sampled rows)"
		lock := "SHARE UPDATE EXCLUSIVE on " + n.Green.String() + " (reads and writes continue; blue untouched)"
		note := "each index is its own statement outside a transaction; an invalid leftover from a crash is dropped and rebuilt"
		if green.Kind == "p" {
			desc = "build target.indexes on the partitioned green: each index ON ONLY the parent (catalog only, invalid), " +
				"then CONCURRENTLY on each partition, attached; the parent index becomes valid once every partition's is attached " +
				"(rehearsed without CONCURRENTLY on the sampled rows)"
			lock = "ON ONLY: SHARE on " + n.Green.String() + ", ATTACH PARTITION: ACCESS EXCLUSIVE on the partition's new index " +
				"(both catalog only, with lock_timeout, retried); CONCURRENTLY: SHARE UPDATE EXCLUSIVE on the partition (reads and writes continue)"
			note = "each statement is its own transaction; after a crash the ON ONLY index is kept (invalid until its partitions' indexes are attached) " +
				"and the build goes on, an INVALID partition index is dropped and rebuilt"
		}
		add(shadow.Step{
			Name:        "build-indexes",
			Description: desc,
			SQL:         ixSQL,
			Lock:        lock,
			LockHold:    "while each index builds (scales with the table)",
		}, "sync", false, note)
	}
	settle := gssync.VacuumSQL(db.Ident(n.Green.Schema, n.Green.Name))
	if green.Kind == "p" {
		settle = gssync.VacuumSQL("<each partition of " + n.Green.String() + ">")
	}
	add(shadow.Step{
		Name: "settle",
		Description: "vacuum the filled green before synced, one table (or partition) at a time between the backfill's throttles, " +
			"at autovacuum's pace (vacuum_cost_delay 2ms, raised by the nice ratio), after any transaction older than the copy's end " +
			"(it would keep VACUUM from freezing the copied rows; waited for up to " + gssync.DefaultSettleHorizonWait.String() + ", named in status): " +
			"hint bits, the visibility map and frozen rows are written now, not by autovacuum and the first readers under the application's traffic " +
			"(sync --no-settle skips it)",
		SQL:      []string{settle},
		Lock:     "SHARE UPDATE EXCLUSIVE on " + n.Green.String() + " (reads and writes continue; lock_timeout, retried)",
		LockHold: "while it vacuums (scales with green's size; the estimate below)",
	}, "sync", true, "")
	add(shadow.Step{
		Name:        "analyze",
		Description: "collect planner statistics on green",
		SQL:         []string{"ANALYZE " + db.Ident(n.Green.Schema, n.Green.Name)},
		Lock:        "SHARE UPDATE EXCLUSIVE on " + n.Green.String() + " (reads and writes continue)",
		LockHold:    "seconds (a sample scan)",
	}, "sync", true, "")
	add(shadow.Step{
		Name:        "enable-reverse-sync",
		Description: "green equals blue: switch on green → blue sync, so green's shape can take writes and a later rollback loses nothing (state synced)",
		SQL:         reverseOn,
		Lock:        "SHARE ROW EXCLUSIVE on " + n.Green.String(),
		LockHold:    "milliseconds", Transactional: true,
	}, "sync", true, "")

	if p.swap != nil {
		st := p.swap.Step()
		st.Description = fmt.Sprintf("one transaction: the app name %s now reads green (rollback: the same swap back to blue)", n.App)
		st.Lock += fmt.Sprintf(" (lock_timeout %s per attempt, retried with backoff and jitter)", opt.LockTimeout.Duration)
		note := "as the cutover command plans it on this rehearsed catalog; it plans again at run time"
		if len(p.swap.After) > 0 {
			st.SQL = append(st.SQL, p.swap.After...)
			note += fmt.Sprintf("; the last %d statements run after the swap commits, each in its own transaction", len(p.swap.After))
		}
		if len(p.swap.Warnings) > 0 {
			note += "; " + strings.Join(p.swap.Warnings, "; ")
		}
		add(st, "cutover", true, note)
	} else {
		cut := []string{
			"LOCK TABLE " + db.Ident(n.App.Schema, n.App.Name) + " IN ACCESS EXCLUSIVE MODE",
			"DROP VIEW " + db.Ident(n.App.Schema, n.App.Name),
		}
		cut = append(cut, shadow.ViewSQL(n.App, n.Green, green, p.env.ServerMajor)...)
		note := "the cutover command generates this at run time"
		if p.swapErr != nil {
			note += "; on this rehearsal it refused: " + shadow.ErrText(p.swapErr)
		}
		add(shadow.Step{
			Name:        "cutover",
			Description: fmt.Sprintf("one transaction: the app name %s now reads green (rollback: the same swap back to blue)", n.App),
			SQL:         cut,
			Lock:        "ACCESS EXCLUSIVE on the view " + n.App.String() + fmt.Sprintf(" (lock_timeout %s, retried with backoff and jitter)", opt.LockTimeout.Duration),
			LockHold:    "milliseconds (catalog changes only)", Transactional: true,
		}, "cutover", false, note)
	}

	app := db.Ident(n.App.Schema, n.App.Name)
	fin := []string{"DROP VIEW " + app, "ALTER TABLE " + db.Ident(n.Green.Schema, n.Green.Name) + " SET SCHEMA " + db.Ident(n.App.Schema)}
	// SET SCHEMA moves a partitioned table without its partitions.
	for _, part := range p.parts {
		fin = append(fin, "ALTER TABLE "+db.Ident(part.Schema, part.Name)+" SET SCHEMA "+db.Ident(n.App.Schema))
	}
	fin = append(fin, trigger.RemoveSQL(n, n.App)...)
	for _, seq := range shadow.SharedSequences(p.build.Blue, green, m) {
		fin = append(fin, "ALTER SEQUENCE "+db.Ident(seq.Name.Schema, seq.Name.Name)+" OWNED BY "+app+"."+db.Ident(seq.Column),
			"ALTER SEQUENCE "+db.Ident(seq.Name.Schema, seq.Name.Name)+" SET SCHEMA "+db.Ident(n.App.Schema))
	}
	fin = append(fin, "DROP SCHEMA "+db.Ident(n.BlueSchema)+" CASCADE", "DROP SCHEMA "+db.Ident(n.GreenSchema)+" CASCADE")
	add(shadow.Step{
		Name:        "finalize",
		Description: "once no client has used blue for a quiet period: green becomes the app's table under its own name; blue, the sync triggers and the version schemas are dropped",
		SQL:         fin,
		Lock:        "ACCESS EXCLUSIVE on " + n.App.String() + ", " + n.Blue.String() + " and " + n.Green.String(),
		LockHold:    "milliseconds (catalog changes only)", Transactional: true,
	}, "finalize", false, "the finalize command generates this at run time (it also restores green's identity columns)")
}
