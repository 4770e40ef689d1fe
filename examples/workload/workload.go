// Package workload is a small application stand-in for the demo, the bench
// and the examples: N clients write through the app name (or, pinned by
// search_path, through a version schema) while greenswap migrates the table,
// and every write is mirrored into a ledger table in the same transaction.
// The ledger is the oracle: once the clients stop, Check compares the final
// table with it and counts the rows lost. Client errors are counted as they
// happen, and every transaction's start and end are kept so callers can ask
// for throughput and latency over any time window (before, during, after a
// cutover).
//
// Each client owns its keys (seeded keys k with k % Clients == client, plus
// the rows it inserts), so clients never race each other and the ledger's
// last word for a key is the truth for that key.
package workload

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Mix weighs the operations a client picks from.
type Mix struct {
	Insert, Update, Delete int
}

// Config describes a workload. Zero values take the defaults noted.
type Config struct {
	DSN   string
	Table string // the app name as clients write it, e.g. "orders" or "public.orders"
	Key   string // integer key column; default "id"
	Value string // integer-valued column the workload sets; default "amount"
	// InsertSQL inserts one row: $1 is the value; it must end with
	// RETURNING <key>. Default: INSERT INTO <Table> (<Value>) VALUES ($1) RETURNING <Key>.
	InsertSQL string
	Clients   int // default 4
	// SearchPath, when not empty, is cycled over the clients: client i runs
	// with search_path = SearchPath[i % len]. "" leaves the server default.
	// A client pinned to a version schema ("gs_orders_v2_blue, public")
	// writes blue's shape whatever the app name points at.
	SearchPath []string
	// KeyRange: keys 1..KeyRange exist before the workload starts and may be
	// updated and deleted (each by the client that owns it). 0: the clients
	// only touch rows they inserted.
	KeyRange int64
	Mix      Mix     // default {Insert: 2, Update: 6, Delete: 1}
	Ledger   string  // ledger table; "" = no ledger (pure throughput runs)
	Rate     float64 // transactions per second per client; 0 = as fast as possible
	// ExecMode is how statements reach the server. Default
	// pgx.QueryExecModeExec: unnamed statements, as behind a transaction
	// pooler. pgx.QueryExecModeCacheStatement gives named prepared
	// statements, which see one "cached plan must not change result type"
	// per statement when the app name's row type changes at cutover.
	ExecMode pgx.QueryExecMode
	AppName  string // application_name prefix; default "workload"
	Seed     uint64 // random seed; 0 = from the clock
	// MaxErrorsKept bounds the distinct error messages kept for the report.
	MaxErrorsKept int
}

func (c *Config) defaults() {
	if c.Key == "" {
		c.Key = "id"
	}
	if c.Value == "" {
		c.Value = "amount"
	}
	if c.Clients <= 0 {
		c.Clients = 4
	}
	if c.Mix == (Mix{}) {
		c.Mix = Mix{Insert: 2, Update: 6, Delete: 1}
	}
	if c.InsertSQL == "" {
		c.InsertSQL = fmt.Sprintf("INSERT INTO %s (%s) VALUES ($1) RETURNING %s", c.Table, ident(c.Value), ident(c.Key))
	}
	if c.ExecMode == 0 {
		c.ExecMode = pgx.QueryExecModeExec
	}
	if c.AppName == "" {
		c.AppName = "workload"
	}
	if c.Seed == 0 {
		c.Seed = uint64(time.Now().UnixNano())
	}
	if c.MaxErrorsKept == 0 {
		c.MaxErrorsKept = 20
	}
}

// ident quotes a plain column name.
func ident(s string) string { return pgx.Identifier{s}.Sanitize() }

// CreateLedger creates (or empties) the ledger table. It lives outside the
// migrated table, so greenswap never touches it.
func CreateLedger(ctx context.Context, dsn, ledger string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, `
		DROP TABLE IF EXISTS `+ledger+`;
		CREATE TABLE `+ledger+` (
			k       bigint PRIMARY KEY,
			v       bigint NOT NULL,
			deleted boolean NOT NULL,
			client  int NOT NULL,
			at      timestamptz NOT NULL DEFAULT clock_timestamp()
		)`)
	return err
}

// tx is one transaction as a client saw it.
type tx struct {
	start, end time.Time
	ok         bool
	op         byte // 'i', 'u', 'd'
}

type client struct {
	mu   sync.Mutex
	txs  []tx
	errs map[string]int
}

// Workload is a running set of clients.
type Workload struct {
	cfg     Config
	started time.Time
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	clients []*client

	mu        sync.Mutex
	connErrs  []error
	stoppedAt time.Time
}

// Start connects every client and sets them going. It returns once all are
// connected (an error then stops them all).
func Start(ctx context.Context, cfg Config) (*Workload, error) {
	cfg.defaults()
	if cfg.Table == "" {
		return nil, errors.New("workload: Config.Table is required")
	}
	conns := make([]*pgx.Conn, cfg.Clients)
	closeAll := func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.Background())
			}
		}
	}
	for i := range conns {
		pc, err := pgx.ParseConfig(cfg.DSN)
		if err != nil {
			return nil, err
		}
		pc.DefaultQueryExecMode = cfg.ExecMode
		pc.RuntimeParams["application_name"] = fmt.Sprintf("%s-%d", cfg.AppName, i)
		if len(cfg.SearchPath) > 0 {
			if sp := cfg.SearchPath[i%len(cfg.SearchPath)]; sp != "" {
				pc.RuntimeParams["search_path"] = sp
			}
		}
		if conns[i], err = pgx.ConnectConfig(ctx, pc); err != nil {
			closeAll()
			return nil, fmt.Errorf("workload: connect client %d: %w", i, err)
		}
	}
	runCtx, cancel := context.WithCancel(context.Background())
	w := &Workload{cfg: cfg, started: time.Now(), cancel: cancel}
	for i, conn := range conns {
		c := &client{errs: map[string]int{}}
		w.clients = append(w.clients, c)
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			defer conn.Close(context.Background())
			w.run(runCtx, i, conn, c)
		}()
	}
	return w, nil
}

// run is one client's loop.
func (w *Workload) run(ctx context.Context, idx int, conn *pgx.Conn, c *client) {
	cfg := &w.cfg
	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(idx)))
	var own []int64             // keys this client inserted and has not deleted
	deleted := map[int64]bool{} // seeded keys this client deleted
	total := cfg.Mix.Insert + cfg.Mix.Update + cfg.Mix.Delete
	var interval time.Duration
	if cfg.Rate > 0 {
		interval = time.Duration(float64(time.Second) / cfg.Rate)
	}
	next := time.Now()
	// pickKey returns a live key this client owns (and whether it is one of own).
	pickKey := func() (int64, int, bool) {
		nSeeded := int64(0)
		if cfg.KeyRange > 0 {
			nSeeded = (cfg.KeyRange-int64(idx)-1)/int64(cfg.Clients) + 1
			if int64(idx)+1 > cfg.KeyRange {
				nSeeded = 0
			}
		}
		for range 8 {
			if len(own) > 0 && (nSeeded == 0 || rng.IntN(4) == 0) {
				i := rng.IntN(len(own))
				return own[i], i, true
			}
			if nSeeded > 0 {
				k := int64(idx) + 1 + rng.Int64N(nSeeded)*int64(cfg.Clients)
				if !deleted[k] {
					return k, -1, true
				}
			}
		}
		return 0, -1, false
	}
	for ctx.Err() == nil {
		if interval > 0 {
			if d := time.Until(next); d > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
			}
			next = next.Add(interval)
			if time.Until(next) < -time.Second { // fell far behind: do not burst
				next = time.Now()
			}
		}
		r := rng.IntN(total)
		op := byte('i')
		var key int64
		ownIdx := -1
		switch {
		case r < cfg.Mix.Insert:
		case r < cfg.Mix.Insert+cfg.Mix.Update:
			op = 'u'
		default:
			op = 'd'
		}
		if op != 'i' {
			var ok bool
			if key, ownIdx, ok = pickKey(); !ok {
				op = 'i'
			}
		}
		val := int64(1 + rng.IntN(100000))
		start := time.Now()
		newKey, err := w.once(ctx, conn, idx, op, key, val)
		end := time.Now()
		if ctx.Err() != nil && err != nil {
			return // stopped mid-transaction: not a client error
		}
		c.mu.Lock()
		c.txs = append(c.txs, tx{start: start, end: end, ok: err == nil, op: op})
		if err != nil {
			msg := err.Error()
			if _, seen := c.errs[msg]; seen || len(c.errs) < cfg.MaxErrorsKept {
				c.errs[msg]++
			} else {
				c.errs["(other errors)"]++
			}
		}
		c.mu.Unlock()
		if err != nil {
			if conn.IsClosed() {
				w.mu.Lock()
				w.connErrs = append(w.connErrs, fmt.Errorf("client %d: connection lost: %w", idx, err))
				w.mu.Unlock()
				return
			}
			continue
		}
		switch op {
		case 'i':
			own = append(own, newKey)
		case 'd':
			if ownIdx >= 0 && ownIdx < len(own) && own[ownIdx] == key {
				own = slices.Delete(own, ownIdx, ownIdx+1)
			} else {
				deleted[key] = true
			}
		}
	}
}

// once runs one transaction: the write through the app name and, when a
// ledger is configured, the ledger row, committed together.
func (w *Workload) once(ctx context.Context, conn *pgx.Conn, idx int, op byte, key, val int64) (int64, error) {
	cfg := &w.cfg
	t, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer t.Rollback(context.Background())
	deleted := false
	switch op {
	case 'i':
		if err := t.QueryRow(ctx, cfg.InsertSQL, val).Scan(&key); err != nil {
			return 0, fmt.Errorf("insert: %w", err)
		}
	case 'u':
		tag, err := t.Exec(ctx, "UPDATE "+cfg.Table+" SET "+ident(cfg.Value)+" = $2 WHERE "+ident(cfg.Key)+" = $1", key, val)
		if err != nil {
			return 0, fmt.Errorf("update: %w", err)
		}
		if tag.RowsAffected() == 0 {
			// The key is gone (seeded row missing): record nothing.
			return key, t.Commit(ctx)
		}
	case 'd':
		tag, err := t.Exec(ctx, "DELETE FROM "+cfg.Table+" WHERE "+ident(cfg.Key)+" = $1", key)
		if err != nil {
			return 0, fmt.Errorf("delete: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return key, t.Commit(ctx)
		}
		deleted = true
	}
	if cfg.Ledger != "" {
		if _, err := t.Exec(ctx, "INSERT INTO "+cfg.Ledger+` (k, v, deleted, client) VALUES ($1, $2, $3, $4)
			ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, deleted = EXCLUDED.deleted, client = EXCLUDED.client, at = clock_timestamp()`,
			key, val, deleted, idx); err != nil {
			return 0, fmt.Errorf("ledger: %w", err)
		}
	}
	return key, t.Commit(ctx)
}

// Stop stops every client after its current transaction and waits for them.
// Safe to call twice.
func (w *Workload) Stop() {
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	if w.stoppedAt.IsZero() {
		w.stoppedAt = time.Now()
	}
	w.mu.Unlock()
}

// Stats is what the clients saw in a time window.
type Stats struct {
	From, To   time.Time
	Commits    int           // transactions that committed with their end in the window
	Errors     int           // transactions that failed with their end in the window
	TPS        float64       // Commits / window length
	MaxLatency time.Duration // longest transaction overlapping the window
	P99Latency time.Duration // over transactions ending in the window
	AvgLatency time.Duration
}

// Window reports what happened between from and to (zero to = now).
func (w *Workload) Window(from, to time.Time) Stats {
	if to.IsZero() {
		to = time.Now()
	}
	s := Stats{From: from, To: to}
	var lats []time.Duration
	var sum time.Duration
	for _, c := range w.clients {
		c.mu.Lock()
		for _, t := range c.txs {
			if t.end.Before(from) || t.start.After(to) {
				continue
			}
			lat := t.end.Sub(t.start)
			s.MaxLatency = max(s.MaxLatency, lat)
			if t.end.After(to) {
				continue
			}
			if t.ok {
				s.Commits++
			} else {
				s.Errors++
			}
			lats = append(lats, lat)
			sum += lat
		}
		c.mu.Unlock()
	}
	if d := to.Sub(from).Seconds(); d > 0 {
		s.TPS = float64(s.Commits) / d
	}
	if len(lats) > 0 {
		slices.Sort(lats)
		s.P99Latency = lats[(len(lats)*99)/100]
		s.AvgLatency = sum / time.Duration(len(lats))
	}
	return s
}

// Totals reports the whole run so far.
func (w *Workload) Totals() Stats { return w.Window(w.started, time.Time{}) }

// Errors returns the distinct client error messages with their counts,
// plus any lost connections.
func (w *Workload) Errors() map[string]int {
	out := map[string]int{}
	for _, c := range w.clients {
		c.mu.Lock()
		for m, n := range c.errs {
			out[m] += n
		}
		c.mu.Unlock()
	}
	w.mu.Lock()
	for _, e := range w.connErrs {
		out[e.Error()]++
	}
	w.mu.Unlock()
	return out
}

// Report is the ledger compared with a table.
type Report struct {
	Relation string // what was checked
	Checked  int64  // ledger rows compared
	Missing  int64  // the ledger says the row exists; the table lacks it
	Stale    int64  // the row exists with another value than the ledger's last write
	Ghosts   int64  // the ledger says deleted; the table still has it
}

// Lost is every ledger row the table does not reflect.
func (r Report) Lost() int64 { return r.Missing + r.Stale + r.Ghosts }

func (r Report) String() string {
	return fmt.Sprintf("%s: %d ledger rows checked, %d missing, %d stale, %d deleted-but-present",
		r.Relation, r.Checked, r.Missing, r.Stale, r.Ghosts)
}

// Check compares relation (the app name, or blue or green directly) with
// the ledger: every key the workload wrote must hold its last value, and
// every key it deleted must be gone. Values compare as numeric, so a shape
// that widened the column (int → numeric) still matches.
func Check(ctx context.Context, dsn, ledger, relation, key, value string) (Report, error) {
	if key == "" {
		key = "id"
	}
	if value == "" {
		value = "amount"
	}
	r := Report{Relation: relation}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return r, err
	}
	defer conn.Close(context.Background())
	q := `SELECT count(*),
	        count(*) FILTER (WHERE NOT l.deleted AND t.k IS NULL),
	        count(*) FILTER (WHERE NOT l.deleted AND t.k IS NOT NULL AND t.v IS DISTINCT FROM l.v::numeric),
	        count(*) FILTER (WHERE l.deleted AND t.k IS NOT NULL)
	      FROM ` + ledger + ` l
	      LEFT JOIN (SELECT ` + ident(key) + `::bigint AS k, ` + ident(value) + `::numeric AS v FROM ` + relation + `) t ON t.k = l.k`
	err = conn.QueryRow(ctx, q).Scan(&r.Checked, &r.Missing, &r.Stale, &r.Ghosts)
	return r, err
}

// Summary is the one line the demo ends with.
func Summary(errors int, lost int64) string {
	plural := func(n int64, one, many string) string {
		if n == 1 {
			return one
		}
		return many
	}
	return fmt.Sprintf("%d client %s, %d %s lost", errors, plural(int64(errors), "error", "errors"), lost, plural(lost, "row", "rows"))
}

// ErrorList formats Errors() for people, most frequent first.
func ErrorList(errs map[string]int) string {
	type kv struct {
		msg string
		n   int
	}
	var l []kv
	for m, n := range errs {
		l = append(l, kv{m, n})
	}
	slices.SortFunc(l, func(a, b kv) int { return b.n - a.n })
	var b strings.Builder
	for _, e := range l {
		fmt.Fprintf(&b, "  %6d × %s\n", e.n, e.msg)
	}
	return b.String()
}
