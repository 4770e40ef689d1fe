// Package stream carries blue's changes to green through a logical
// replication slot (pgoutput) read with pglogrepl: the logical mode of a
// migration, where the application's writes on blue pay no trigger cost.
// See README.md for the design and its invariants.
package stream

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/logx"
	"github.com/greenswap/greenswap/internal/rate"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/trigger"
)

// ErrSlotLost: the slot is gone while the migration still depends on it;
// the changes since the last checkpoint cannot be recovered from the WAL.
var ErrSlotLost = errors.New("the migration's replication slot is gone")

// Options tune a Streamer. Zero values take the defaults.
type Options struct {
	MaxBatchKeys int // keys per apply transaction (default 1000)
	// ApplyWorkers is how many apply transactions of one batch run at once
	// (default 4). A batch bigger than MaxBatchKeys is a backlog: on a
	// server whose CPU the application already uses, each session gets
	// about one runnable process's share, so the number of sessions sets
	// how fast the stream catches up (see README: "Keeping up").
	ApplyWorkers   int
	MaxPendingKeys int // received but unapplied keys at which reading pauses (default 100000)
	// ApplyInterval is the least time between the starts of two apply
	// batches while fewer than MaxBatchKeys keys wait (default 10ms): a
	// steady trickle of one-row transactions is then applied a batch at a
	// time instead of one apply transaction each, which costs the server
	// several statements and a commit per application write. Green lags by
	// at most this much more.
	ApplyInterval     time.Duration
	StatusInterval    time.Duration // a standby status update at least this often (default 1s; wal_sender_timeout is 60s by default)
	LockTimeout       time.Duration // per apply transaction, for row and table locks (default 500ms)
	ApplyAttempts     int           // tries of one apply transaction on lock timeouts and deadlocks (default 30)
	VisibilityTimeout time.Duration // bound of the wait for a streamed commit to become visible (trap 8; default 30s)
	MinBackoff        time.Duration // reconnect backoff (default 200ms) ...
	MaxBackoff        time.Duration // ... doubling up to this (default 10s)
	// takeOver terminates another walsender holding the slot instead of
	// waiting for it to let go (Retire).
	takeOver bool
	// OnApply, when set, is called after every applied batch with the
	// current figures (from the applying goroutine).
	OnApply func(Stats)
	// Hold, when set, is asked before every apply batch; while it gives a
	// reason the batch waits (changes keep arriving up to MaxPendingKeys,
	// the slot keeps the rest). Sync's circuit breaker (guard.Breaker).
	// An error counts as no reason: the backfill asks the same breaker and
	// stops sync on it.
	Hold func(ctx context.Context) (string, error)
}

func (o Options) withDefaults() Options {
	if o.MaxBatchKeys <= 0 {
		o.MaxBatchKeys = 1000
	}
	if o.ApplyWorkers <= 0 {
		o.ApplyWorkers = 4
	}
	if o.MaxPendingKeys <= 0 {
		o.MaxPendingKeys = 100000
	}
	if o.ApplyInterval <= 0 {
		o.ApplyInterval = 10 * time.Millisecond
	}
	if o.StatusInterval <= 0 {
		o.StatusInterval = time.Second
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = 500 * time.Millisecond
	}
	if o.ApplyAttempts <= 0 {
		o.ApplyAttempts = 30
	}
	if o.VisibilityTimeout <= 0 {
		o.VisibilityTimeout = 30 * time.Second
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 200 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 10 * time.Second
	}
	return o
}

// Config is one migration's stream.
type Config struct {
	Pool *pgxpool.Pool // the user's database: green writes, blue reads, checkpoints
	// Conn are the connection settings; the replication session is opened
	// from a copy with replication=database.
	Conn      *pgconn.Config
	Migration string
	// Names are the migration's names (slot, publication, sync flag,
	// trigger, echo token: one for all its tables); with one table, its
	// table's too.
	Names   shadow.Names
	Mapping *shadow.Mapping
	Blue    *shadow.Table // blue as it is (the key columns' types)
	// Tables, when set, are the migration's tables in dependency order
	// (referenced tables first), Names, Mapping and Blue then being the
	// first's: one slot and publication for every blue, and each apply
	// transaction writes every table it touches under one snapshot.
	Tables []Table
	// Start is the checkpoint to resume from (migrations.confirmed_lsn); the
	// server resumes from the slot's confirmed position if that is later.
	Start pglogrepl.LSN
	// Checkpoint records lsn inside the apply transaction that made green
	// current up to it (may be nil).
	Checkpoint func(ctx context.Context, tx pgx.Tx, lsn pglogrepl.LSN) error
	Log        zerolog.Logger
	Options    Options
}

// Table is one table of a migration of several tables (issue 14).
type Table struct {
	Names   shadow.Names
	Mapping *shadow.Mapping
	Blue    *shadow.Table
}

// tables are the migration's tables: Tables, or the one that Names,
// Mapping and Blue describe.
func (c Config) tables() []Table {
	if len(c.Tables) > 0 {
		return c.Tables
	}
	return []Table{{Names: c.Names, Mapping: c.Mapping, Blue: c.Blue}}
}

// Stats are a streamer's figures.
type Stats struct {
	Migration  string        `json:"migration"`
	Connected  bool          `json:"connected"`
	Txns       int64         `json:"transactions"`     // committed transactions received
	Changes    int64         `json:"changes"`          // row changes received
	Keys       int64         `json:"keys_applied"`     // keys re-copied (or deleted) in green
	Echoes     int64         `json:"echoes_skipped"`   // keys whose last change was the reverse trigger's own write
	Batches    int64         `json:"batches"`          // apply batches committed
	Applied    pglogrepl.LSN `json:"applied_lsn"`      // confirmed to the server: green is current up to here
	ServerLSN  pglogrepl.LSN `json:"server_lsn"`       // the server's WAL end as last reported
	LagBytes   int64         `json:"lag_bytes"`        // ServerLSN - Applied (as last reported)
	LagSeconds float64       `json:"lag_seconds"`      // age of the oldest commit received and not applied yet
	KeysPerSec float64       `json:"keys_per_sec"`     // apply rate over the last 10 s
	Pending    int           `json:"pending_keys"`     // keys received and not applied yet
	LastDelay  time.Duration `json:"last_apply_delay"` // commit → applied, for the newest transaction of the last batch
	Reconnects int           `json:"reconnects"`
	LastError  string        `json:"last_error,omitempty"`
	Since      time.Time     `json:"since"`
	LastApply  time.Time     `json:"last_apply,omitempty"`
}

// Streamer reads one migration's slot and applies it to green.
type Streamer struct {
	cfg Config
	opt Options
	ap  *applier
	log zerolog.Logger

	confirmed  atomic.Uint64 // green is current up to here (applied, or idle at a keepalive)
	statusDue  atomic.Bool   // send a status update now
	mu         sync.Mutex    // guards everything below
	pending    *batch
	applying   bool
	inTx       bool
	stats      Stats
	rate       rate.Window // MinSpan 1s (New)
	oldestOpen time.Time   // commit time of the oldest transaction being applied
}

// New prepares a streamer; nothing is connected until Run.
func New(cfg Config) (*Streamer, error) {
	if len(cfg.Tables) > 0 {
		cfg.Names, cfg.Mapping, cfg.Blue = cfg.Tables[0].Names, cfg.Tables[0].Mapping, cfg.Tables[0].Blue
	}
	if cfg.Pool == nil || cfg.Conn == nil || cfg.Mapping == nil || cfg.Blue == nil {
		return nil, errors.New("stream: Pool, Conn, Mapping and Blue (or Tables) are required")
	}
	var tables []*tableSQL
	for _, t := range cfg.tables() {
		if t.Mapping == nil || t.Blue == nil {
			return nil, fmt.Errorf("stream: table %s has no mapping or blue", t.Names.App)
		}
		sql, err := buildSQL(t.Names, t.Mapping, t.Blue)
		if err != nil {
			return nil, err
		}
		tables = append(tables, &tableSQL{names: t.Names, mapping: t.Mapping, blue: t.Blue, sql: sql})
	}
	opt := cfg.Options.withDefaults()
	s := &Streamer{cfg: cfg, opt: opt, log: cfg.Log, pending: newBatch(), rate: rate.Window{MinSpan: time.Second}}
	s.ap = &applier{pool: cfg.Pool, names: cfg.Names, migration: cfg.Migration, sql: tables[0].sql, tables: tables,
		searchPath: cfg.Names.SearchPath(), opt: opt, checkpoint: cfg.Checkpoint}
	s.confirmed.Store(uint64(cfg.Start))
	s.stats = Stats{Migration: cfg.Migration, Since: time.Now(), Applied: cfg.Start}
	return s, nil
}

// Stats returns the current figures.
func (s *Streamer) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.statsLocked()
}

func (s *Streamer) statsLocked() Stats {
	st := s.stats
	st.Applied = pglogrepl.LSN(s.confirmed.Load())
	if st.ServerLSN > st.Applied {
		st.LagBytes = int64(st.ServerLSN - st.Applied)
	} else {
		st.LagBytes = 0
	}
	oldest := s.oldestOpen
	if !s.pending.empty() && (oldest.IsZero() || s.pending.oldest.Before(oldest)) {
		oldest = s.pending.oldest
	}
	st.LagSeconds = 0
	if !oldest.IsZero() {
		st.LagSeconds = max(time.Since(oldest).Seconds(), 0)
	}
	st.Pending = len(s.pending.keys)
	st.KeysPerSec = s.rate.PerSec(time.Now(), s.stats.Keys)
	return st
}

// Applied is the position up to which green is current.
func (s *Streamer) Applied() pglogrepl.LSN { return pglogrepl.LSN(s.confirmed.Load()) }

// Run streams until ctx is cancelled (then it returns nil once the batch in
// flight is applied and confirmed), the stream is retired (ErrRetired), or
// a fatal error (ErrSlotLost, a privilege error, bad data). Connection
// losses and server restarts are retried with a jittered backoff.
func (s *Streamer) Run(ctx context.Context) error { return s.run(ctx, 0) }

// RunUntil is Run that returns nil as soon as green is current up to lsn.
func (s *Streamer) RunUntil(ctx context.Context, lsn pglogrepl.LSN) error {
	if lsn == 0 {
		lsn = 1
	}
	return s.run(ctx, lsn)
}

func (s *Streamer) run(ctx context.Context, until pglogrepl.LSN) error {
	token, err := ReadEchoToken(ctx, s.cfg.Pool, s.cfg.Names)
	if err != nil {
		return err
	}
	if err := s.ap.loadReferences(ctx, s.cfg.Pool); err != nil {
		return err
	}
	// The apply sessions get a pool of their own, as many connections as
	// ApplyWorkers: draining a backlog keeps every worker busy, and on the
	// caller's pool they took every connection the backfill (and anything
	// else sharing it) needed, which then waited for the stream's backlog
	// to end. A copy of the caller's configuration: the same server, role
	// and session settings.
	pcfg := s.cfg.Pool.Config()
	pcfg.MaxConns, pcfg.MinConns = int32(s.opt.ApplyWorkers), 0
	applyPool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return fmt.Errorf("stream %s: the apply sessions' pool: %w", s.cfg.Names.Slot, err)
	}
	defer applyPool.Close()
	s.ap.pool = applyPool
	defer func() { s.ap.pool = s.cfg.Pool }()
	backoff := s.opt.MinBackoff
	for {
		t0 := time.Now()
		err := s.session(ctx, until, token)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrRetired) || errors.Is(err, ErrSlotLost) {
			return err
		}
		if st := db.SQLState(err); st == "42501" || st == "28000" || st == "28P01" {
			return fmt.Errorf("stream %s: %w", s.cfg.Names.Slot, err)
		}
		if g, gerr := s.gone(ctx); gerr == nil && g != nil {
			return g
		}
		s.mu.Lock()
		s.stats.Reconnects++
		s.stats.LastError = err.Error()
		s.stats.Connected = false
		s.mu.Unlock()
		if time.Since(t0) > 30*time.Second {
			backoff = s.opt.MinBackoff
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		ev := s.log.Warn()
		if db.SQLState(err) == db.ObjectInUse {
			ev = s.log.Info() // another greenswap streams this slot; wait for it to let go
			if s.opt.takeOver {
				if terr := TakeOver(ctx, s.cfg.Pool, s.cfg.Names.Slot); terr == nil {
					backoff = s.opt.MinBackoff
				}
			}
		}
		ev.Err(err).Float64("retry_in_ms", logx.Ms(wait)).Str("slot", s.cfg.Names.Slot).Msg("logical stream interrupted; reconnecting")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		backoff = min(2*backoff, s.opt.MaxBackoff)
	}
}

// gone says why the stream cannot go on, if it cannot: ErrRetired when the
// forward triggers are on or green is gone, ErrSlotLost when the slot is
// missing although the migration still needs it; nil otherwise.
func (s *Streamer) gone(ctx context.Context) (error, error) {
	n := s.cfg.Names
	var fwd string
	var green bool
	if err := s.cfg.Pool.QueryRow(ctx, s.ap.sql.live, db.Ident(n.Blue.Schema, n.Blue.Name), n.Trigger,
		db.Ident(n.Green.Schema, n.Green.Name)).Scan(&fwd, &green); err != nil {
		return nil, err
	}
	if !green || fwd != "D" {
		return ErrRetired, nil
	}
	exists, _, _, err := SlotInfo(ctx, s.cfg.Pool, n.Slot)
	if err != nil {
		return nil, err
	}
	if !exists {
		return fmt.Errorf("%w: slot %s does not exist (dropped by hand, or invalidated by max_slot_wal_keep_size): "+
			"changes to blue since %s cannot reach green; roll the migration back and sync it again", ErrSlotLost, n.Slot, s.Applied()), nil
	}
	return nil, nil
}

// ReadEchoToken reads the migration's echo token (trigger.EchoTokenSQL),
// which tells the reverse functions' echo markers from messages any
// session can emit. Read once per Run: it never changes while the stream
// exists, so a restarted stream reads the same one. It needs the table
// owner's (or a superuser's) connection, as greenswap's is.
func ReadEchoToken(ctx context.Context, q db.Querier, n shadow.Names) (string, error) {
	var tokens []string
	rows, err := q.Query(ctx, trigger.ReadEchoTokenSQL(n))
	if err == nil {
		tokens, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	switch {
	case db.SQLState(err) == "42P01": // undefined_table
		return "", fmt.Errorf("stream %s: the echo token table %s is missing: the migration was synced by an older greenswap "+
			"whose echo markers any role can forge; roll it back (greenswap rollback) and sync it again: %w", n.Slot, n.EchoToken, err)
	case db.SQLState(err) == "42501": // insufficient_privilege
		return "", fmt.Errorf("stream %s: cannot read the echo token %s: connect as the table's owner or a superuser: %w", n.Slot, n.EchoToken, err)
	case err != nil:
		return "", fmt.Errorf("stream %s: read the echo token %s: %w", n.Slot, n.EchoToken, err)
	case len(tokens) != 1 || tokens[0] == "":
		return "", fmt.Errorf("stream %s: the echo token table %s has %d rows, want one non-empty token: "+
			"it was changed by hand; roll the migration back and sync it again", n.Slot, n.EchoToken, len(tokens))
	}
	return tokens[0], nil
}

// connect opens the replication session.
func (s *Streamer) connect(ctx context.Context) (*pgconn.PgConn, error) {
	cfg := s.cfg.Conn.Copy()
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = "greenswap:" + s.cfg.Migration + ":stream"
	for k, v := range replicationParams {
		cfg.RuntimeParams[k] = v
	}
	return pgconn.ConnectConfig(ctx, cfg)
}

// pluginArgs are pgoutput's options: protocol 1, our publication, and the
// logical decoding messages (the echo markers and pings; PostgreSQL 14+).
func (s *Streamer) pluginArgs() []string {
	return []string{"proto_version '1'", "publication_names " + quoteLiteral(s.cfg.Names.Publication), "messages 'true'"}
}

func quoteLiteral(v string) string { return db.Literal(v) }

// session is one replication connection: it receives, hands committed
// transactions to the applier goroutine, and reports the confirmed
// position. It returns nil when ctx is done or until is reached.
func (s *Streamer) session(ctx context.Context, until pglogrepl.LSN, token string) error {
	conn, err := s.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	start := pglogrepl.LSN(max(s.confirmed.Load(), uint64(s.cfg.Start)))
	if err := pglogrepl.StartReplication(ctx, conn, s.cfg.Names.Slot, start,
		pglogrepl.StartReplicationOptions{Mode: pglogrepl.LogicalReplication, PluginArgs: s.pluginArgs()}); err != nil {
		if db.SQLState(err) == "42704" { // undefined_object: no such slot
			if g, gerr := s.gone(context.WithoutCancel(ctx)); gerr == nil && g != nil {
				return g
			}
		}
		return fmt.Errorf("start replication from slot %s at %s: %w", s.cfg.Names.Slot, start, err)
	}
	s.log.Debug().Str("slot", s.cfg.Names.Slot).Stringer("from", start).Msg("logical stream started")
	s.mu.Lock()
	s.pending = newBatch()
	s.inTx = false
	s.applying = false // a batch that failed in the last session is streamed again
	s.stats.Connected = true
	s.mu.Unlock()

	actx, stopApply := context.WithCancel(ctx)
	kick := make(chan struct{}, 1)
	applyErr := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.applyLoop(actx, kick, applyErr)
	}()
	stop := func() {
		stopApply()
		wg.Wait()
	}
	defer stop()

	var dts []decodedTable
	for _, t := range s.ap.tables {
		dts = append(dts, decodedTable{blue: t.names.Blue.Schema + "." + t.names.Blue.Name, key: t.mapping.Key})
	}
	dec := newDecoder(dts, trigger.EchoPrefix(s.cfg.Names), token, s.log)
	nextStatus := time.Now()
	lastReply := time.Time{}
	for {
		select {
		case err := <-applyErr:
			return err
		default:
		}
		if ctx.Err() != nil {
			// Let the batch in flight finish, then confirm it.
			stop()
			select {
			case err := <-applyErr:
				if !errors.Is(err, context.Canceled) {
					s.log.Warn().Err(err).Msg("logical stream: last batch not applied; it is streamed again next time")
				}
			default:
			}
			_ = s.sendStatus(conn, false)
			return nil
		}
		idle := s.idle()
		if until != 0 && s.Applied() >= until {
			_ = s.sendStatus(conn, false)
			return nil
		}
		now := time.Now()
		if s.statusDue.Swap(false) || !now.Before(nextStatus) {
			// While idle, ask for a keepalive: it carries the server's WAL
			// end, which an idle stream may confirm (nothing is pending).
			reply := idle && (until != 0 || now.Sub(lastReply) >= s.opt.StatusInterval)
			if reply {
				lastReply = now
			}
			if err := s.sendStatus(conn, reply); err != nil {
				return err
			}
			nextStatus = now.Add(s.opt.StatusInterval)
		}
		if s.pendingKeys() >= s.opt.MaxPendingKeys {
			// Backpressure: stop reading until the applier catches up; the
			// status updates above keep the session alive meanwhile.
			select {
			case err := <-applyErr:
				return err
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		wait := 200 * time.Millisecond
		if until != 0 && idle {
			wait = 50 * time.Millisecond
		}
		deadline := now.Add(wait)
		if nextStatus.Before(deadline) {
			deadline = nextStatus
		}
		// The deadline goes on the socket, not on a context: pgconn watches
		// a cancellable context with a goroutine per call, which at tens of
		// thousands of messages a second was most of the stream's CPU. A
		// read timeout is not fatal to the connection (pgconn keeps what it
		// has read so far), and ctx is checked on every turn of the loop.
		if err := conn.Conn().SetReadDeadline(deadline); err != nil {
			return fmt.Errorf("set the stream's read deadline: %w", err)
		}
		raw, err := conn.ReceiveMessage(context.Background())
		if err != nil {
			if pgconn.Timeout(err) || ctx.Err() != nil {
				continue
			}
			return fmt.Errorf("receive from slot %s: %w", s.cfg.Names.Slot, err)
		}
		switch msg := raw.(type) {
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("parse keepalive: %w", err)
				}
				s.serverAt(pkm.ServerWALEnd)
				if !dec.inTx() && s.idle() {
					// Everything before the keepalive was received and
					// applied: green is current up to the server's WAL end.
					s.advance(pkm.ServerWALEnd)
				}
				if pkm.ReplyRequested {
					s.statusDue.Store(true)
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("parse XLogData: %w", err)
				}
				s.serverAt(xld.ServerWALEnd)
				d, err := dec.handle(xld.WALData)
				if err != nil {
					return err
				}
				s.mu.Lock()
				s.inTx = dec.inTx()
				if d.commit != nil {
					s.pending.add(d.tx, d.commit)
					s.stats.Txns++
					s.stats.Changes += d.tx.changes
				}
				s.mu.Unlock()
				if d.commit != nil {
					select {
					case kick <- struct{}{}:
					default:
					}
				}
				if d.ping {
					s.statusDue.Store(true)
				}
			}
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(msg)
		case *pgproto3.CopyDone:
			return errors.New("the server ended the replication stream")
		}
	}
}

func (s *Streamer) idle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.inTx && !s.applying && s.pending.empty()
}

func (s *Streamer) pendingKeys() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending.keys)
}

func (s *Streamer) serverAt(lsn pglogrepl.LSN) {
	s.mu.Lock()
	if lsn > s.stats.ServerLSN {
		s.stats.ServerLSN = lsn
	}
	s.mu.Unlock()
}

// advance moves the confirmed position forward (never back).
func (s *Streamer) advance(lsn pglogrepl.LSN) {
	for {
		cur := s.confirmed.Load()
		if uint64(lsn) <= cur || s.confirmed.CompareAndSwap(cur, uint64(lsn)) {
			return
		}
	}
}

// sendStatus reports the confirmed position as written, flushed and applied.
func (s *Streamer) sendStatus(conn *pgconn.PgConn, reply bool) error {
	lsn := s.Applied()
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: lsn, WALFlushPosition: lsn, WALApplyPosition: lsn, ReplyRequested: reply})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	return nil
}

// hold waits while Options.Hold gives a reason; false once ctx has ended.
func (s *Streamer) hold(ctx context.Context) bool {
	for s.opt.Hold != nil {
		if reason, err := s.opt.Hold(ctx); err != nil || reason == "" {
			break
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(250 * time.Millisecond):
		}
	}
	return ctx.Err() == nil
}

// applyLoop applies whatever is pending whenever kicked, until ctx ends.
// The database work of a batch runs to completion even when ctx ends, so a
// stop never abandons a batch half-way (it would only be redone).
func (s *Streamer) applyLoop(ctx context.Context, kick <-chan struct{}, errs chan<- error) {
	dbctx := context.WithoutCancel(ctx)
	var lastStart time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
		}
		for ctx.Err() == nil {
			if wait := time.Until(lastStart.Add(s.opt.ApplyInterval)); wait > 0 && s.pendingKeys() < s.opt.MaxBatchKeys {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
			if !s.hold(ctx) {
				return
			}
			lastStart = time.Now()
			s.mu.Lock()
			b := s.pending
			if b.empty() {
				s.mu.Unlock()
				break
			}
			s.pending = newBatch()
			s.applying = true
			s.oldestOpen = b.oldest
			s.mu.Unlock()

			written, echoes, err := s.ap.apply(dbctx, b)
			s.mu.Lock()
			s.oldestOpen = time.Time{}
			if err != nil {
				// applying stays true until the session ends: the failed
				// batch is no longer pending, and an idle-looking streamer
				// would confirm a keepalive's WAL end past it (lost changes).
				s.stats.LastError = err.Error()
				s.mu.Unlock()
				errs <- err
				return
			}
			s.applying = false
			now := time.Now()
			s.stats.Keys += int64(written)
			s.stats.Echoes += int64(echoes)
			s.stats.Batches++
			s.stats.LastApply = now
			s.stats.LastDelay = now.Sub(b.newest)
			s.rate.Add(now, s.stats.Keys)
			s.advance(b.endLSN)
			st := s.statsLocked()
			s.mu.Unlock()
			s.statusDue.Store(true)
			if s.opt.OnApply != nil {
				s.opt.OnApply(st)
			}
		}
	}
}
