package stream

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/trigger"
)

// FullXid widens the 32-bit xid of a BEGIN message to the xid8 it denotes,
// given next, the next full transaction id (pg_snapshot_xmax of a current
// snapshot). A transaction in the stream is older than next and less than
// 2^31 transactions old (wraparound protection), so it belongs to next's
// epoch unless its low 32 bits are not below next's, in which case it
// belongs to the epoch before.
func FullXid(xid uint32, next uint64) uint64 {
	epoch := next >> 32
	if uint64(xid) >= next&0xffffffff && epoch > 0 {
		epoch--
	}
	return epoch<<32 | uint64(xid)
}

// relation is one relation the stream describes (only the blues of the
// migration's tables are published).
type relation struct {
	name   string
	table  int // the migration's table (Config.Tables) it is the blue of
	cols   []string
	keyIdx []int // position in cols of each sync key column, in key order
}

// entry is the last change of one key: its key values (text, blue's types)
// and whether it was an echo (the reverse trigger's write, which green
// already has).
type entry struct {
	table int // the migration's table (Config.Tables)
	key   []string
	echo  bool
	// gone: the change removed the key's row from blue (a delete, or a
	// re-key away from it). Only then does the applier delete green's row
	// when blue has none: a key blue lacks although its last change in the
	// batch left a row there was moved or deleted by a later change, still
	// in the stream, which will say what became of the row.
	gone bool
	// fresh (set by batch.work): blue's row under the key is new in the
	// batch, under a key the batch vacated; green's row there, if any, is
	// the old row's and must not be updated into the new one (its columns
	// only green has would carry over).
	fresh bool
}

// event is a change of a row's identity within a transaction, in order:
// a key update (from → to), a delete (from only) or an insert (to only).
// The batch composes them into moves (batch.moves).
type event struct {
	table    int
	from, to []string
	fk, tk   string // tableKey of from and to
	echo     bool
}

// txn is one transaction being received.
type txn struct {
	xid        uint32
	commitTime time.Time
	keys       map[string]*entry
	events     []event
	changes    int64
	inEcho     bool
	truncate   bool // a TRUNCATE of blue not made by the reverse trigger
	echoed     int64
	forged     bool // a message with the echo prefix that is not a genuine marker was seen
	tables     map[int]bool
}

// add records a change of key in the migration's first table (a one-table
// migration's only one).
func (t *txn) add(key []string, echo, gone bool) string { return t.addIn(0, key, echo, gone) }

// addIn records a change of key in table.
func (t *txn) addIn(table int, key []string, echo, gone bool) string {
	t.changes++
	if echo {
		t.echoed++
	}
	ks := tableKey(table, key)
	t.keys[ks] = &entry{table: table, key: key, echo: echo, gone: gone}
	if t.tables == nil {
		t.tables = map[int]bool{}
	}
	t.tables[table] = true
	return ks
}

// keyString is a map key for key values (text values never hold NUL).
func keyString(key []string) string { return strings.Join(key, "\x00") }

// tableKey is a map key for key values of one of the migration's tables:
// the same values in two tables are two keys.
func tableKey(table int, key []string) string { return strconv.Itoa(table) + "\x01" + keyString(key) }

// decoder turns pgoutput messages (protocol version 1, messages on) into
// committed transactions: the set of sync keys each one changed.
type decoder struct {
	tables     []decodedTable // the migration's tables, Config.Tables' order
	echoPrefix string         // transactional messages bracketing the reverse trigger's writes
	pingPrefix string         // non-transactional messages asking for a prompt confirmation
	// echoBegin and echoEnd are the only contents of an echo-prefixed
	// message that are markers: the marker letter and the migration's
	// secret token (trigger.EchoTokenSQL). Anything else under the prefix
	// was emitted by some other session and is ignored, so the changes
	// around it are applied as ordinary changes.
	echoBegin, echoEnd string
	log                zerolog.Logger
	forgedOutside      bool // a forgery outside a transaction was logged already
	rels               map[uint32]*relation
	tx                 *txn
}

// decodedTable is what the decoder knows of one of the migration's
// tables: its blue's name as pgoutput sends it, and its sync key columns.
type decodedTable struct {
	blue string // schema.name
	key  []string
}

func newDecoder(tables []decodedTable, echoPrefix, token string, log zerolog.Logger) *decoder {
	return &decoder{tables: tables, echoPrefix: echoPrefix, pingPrefix: PingPrefix(echoPrefix),
		echoBegin: trigger.EchoBegin + token, echoEnd: trigger.EchoEnd + token,
		log: log, rels: map[uint32]*relation{}}
}

// PingPrefix is the prefix of the non-transactional message WaitApplied
// emits so that an idle stream confirms past a position promptly. Any role
// can emit one too: a ping only makes the stream send a standby status
// update (asking for a keepalive when idle), and the position it reports
// moves only after green has applied everything before it, so a forged or
// flooded ping can neither confirm an unapplied change nor hold one back.
func PingPrefix(echoPrefix string) string { return echoPrefix + ".ping" }

// decoded is what one message amounted to.
type decoded struct {
	commit *pglogrepl.CommitMessage // set with tx when a transaction committed
	tx     *txn
	ping   bool
}

func (d *decoder) inTx() bool { return d.tx != nil }

// handle decodes one pgoutput message.
func (d *decoder) handle(data []byte) (decoded, error) {
	if len(data) == 0 {
		return decoded{}, nil
	}
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return decoded{}, fmt.Errorf("decode pgoutput message %q: %w", data[0], err)
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		r := &relation{name: m.Namespace + "." + m.RelationName, table: -1}
		for i, t := range d.tables {
			if t.blue == r.name {
				r.table = i
			}
		}
		if r.table < 0 {
			return decoded{}, fmt.Errorf("the stream describes %s, which is not the blue of a table of this migration", r.name)
		}
		for _, c := range m.Columns {
			r.cols = append(r.cols, c.Name)
		}
		for _, k := range d.tables[r.table].key {
			i := slices.Index(r.cols, k)
			if i < 0 {
				return decoded{}, fmt.Errorf("the stream describes %s without key column %s", r.name, k)
			}
			r.keyIdx = append(r.keyIdx, i)
		}
		d.rels[m.RelationID] = r
	case *pglogrepl.BeginMessage:
		d.tx = &txn{xid: m.Xid, commitTime: m.CommitTime, keys: map[string]*entry{}}
	case *pglogrepl.CommitMessage:
		if d.tx == nil {
			return decoded{}, fmt.Errorf("COMMIT at %s without BEGIN", m.CommitLSN)
		}
		t := d.tx
		d.tx = nil
		return decoded{commit: m, tx: t}, nil
	case *pglogrepl.InsertMessage:
		r, err := d.rel(m.RelationID)
		if err != nil {
			return decoded{}, err
		}
		k, err := r.keyOf(m.Tuple, nil)
		if err != nil {
			return decoded{}, fmt.Errorf("insert into %s: %w", r.name, err)
		}
		tk := d.tx.addIn(r.table, k, d.tx.inEcho, false)
		d.tx.events = append(d.tx.events, event{table: r.table, to: k, tk: tk, echo: d.tx.inEcho})
	case *pglogrepl.UpdateMessage:
		r, err := d.rel(m.RelationID)
		if err != nil {
			return decoded{}, err
		}
		var old []string
		if m.OldTuple != nil {
			if old, err = r.keyOf(m.OldTuple, nil); err != nil {
				return decoded{}, fmt.Errorf("update of %s, old key: %w", r.name, err)
			}
		}
		k, err := r.keyOf(m.NewTuple, old)
		if err != nil {
			return decoded{}, fmt.Errorf("update of %s: %w", r.name, err)
		}
		if old != nil && !slices.Equal(old, k) {
			// The key changed (trap 3): the row under the old key is gone,
			// and green's row there moves to the new key (trap 13).
			fk := d.tx.addIn(r.table, old, d.tx.inEcho, true)
			tk := d.tx.addIn(r.table, k, d.tx.inEcho, false)
			d.tx.events = append(d.tx.events, event{table: r.table, from: old, to: k, fk: fk, tk: tk, echo: d.tx.inEcho})
		} else {
			d.tx.addIn(r.table, k, d.tx.inEcho, false)
		}
	case *pglogrepl.DeleteMessage:
		r, err := d.rel(m.RelationID)
		if err != nil {
			return decoded{}, err
		}
		k, err := r.keyOf(m.OldTuple, nil)
		if err != nil {
			return decoded{}, fmt.Errorf("delete from %s: %w", r.name, err)
		}
		fk := d.tx.addIn(r.table, k, d.tx.inEcho, true)
		d.tx.events = append(d.tx.events, event{table: r.table, from: k, fk: fk, echo: d.tx.inEcho})
	case *pglogrepl.TruncateMessage:
		if d.tx == nil {
			return decoded{}, fmt.Errorf("TRUNCATE outside a transaction")
		}
		d.tx.changes++
		if !d.tx.inEcho {
			d.tx.truncate = true
		}
	case *pglogrepl.LogicalDecodingMessage:
		switch {
		case m.Transactional && m.Prefix == d.echoPrefix && d.tx != nil:
			switch string(m.Content) {
			case d.echoBegin:
				d.tx.inEcho = true
			case d.echoEnd:
				d.tx.inEcho = false
			default:
				d.forgery(m)
			}
		case m.Prefix == d.echoPrefix:
			d.forgery(m)
		case !m.Transactional && m.Prefix == d.pingPrefix:
			return decoded{ping: true}, nil
		}
	}
	return decoded{}, nil
}

// forgery reports an echo-prefixed message that is not a genuine marker,
// once per transaction. The content is never logged: a near miss could
// contain the token.
func (d *decoder) forgery(m *pglogrepl.LogicalDecodingMessage) {
	if d.tx != nil {
		if d.tx.forged {
			return
		}
		d.tx.forged = true
	} else {
		if d.forgedOutside {
			return
		}
		d.forgedOutside = true
	}
	ev := d.log.Warn().Str("prefix", m.Prefix).Bool("transactional", m.Transactional).Int("content_bytes", len(m.Content)).Stringer("lsn", m.LSN)
	if d.tx != nil {
		ev = ev.Uint32("xid", d.tx.xid)
	}
	ev.Msg("logical stream: a session emitted a message with greenswap's echo prefix that is not a greenswap echo marker " +
		"(an attempt to hide writes from green?); it is ignored and the transaction's changes are applied to green; " +
		"find the session by the xid in pg_stat_activity or the server log")
}

func (d *decoder) rel(id uint32) (*relation, error) {
	if d.tx == nil {
		return nil, fmt.Errorf("row change outside a transaction")
	}
	r := d.rels[id]
	if r == nil {
		return nil, fmt.Errorf("row change for relation %d before its RELATION message", id)
	}
	return r, nil
}

// keyOf reads the sync key from a tuple. A key column sent as an unchanged
// TOAST value ('u') takes its value from fallback (the old key tuple, which
// the server logs when the replica identity has toasted values).
func (r *relation) keyOf(t *pglogrepl.TupleData, fallback []string) ([]string, error) {
	if t == nil {
		return nil, fmt.Errorf("no tuple")
	}
	k := make([]string, len(r.keyIdx))
	for i, ci := range r.keyIdx {
		if ci >= len(t.Columns) {
			return nil, fmt.Errorf("tuple has %d columns, key column %s is number %d", len(t.Columns), r.cols[ci], ci+1)
		}
		c := t.Columns[ci]
		switch c.DataType {
		case pglogrepl.TupleDataTypeText:
			k[i] = string(c.Data)
		case pglogrepl.TupleDataTypeToast:
			if fallback == nil {
				return nil, fmt.Errorf("key column %s arrived as an unchanged TOAST value without an old key", r.cols[ci])
			}
			k[i] = fallback[i]
		case pglogrepl.TupleDataTypeNull:
			return nil, fmt.Errorf("key column %s is NULL in the stream (is the replica identity logging it?)", r.cols[ci])
		default:
			return nil, fmt.Errorf("key column %s arrived in format %q", r.cols[ci], c.DataType)
		}
	}
	return k, nil
}

// batch is every committed transaction received and not applied yet,
// coalesced: for each key only its last change counts, since the applier
// re-reads the key's row from blue anyway.
type batch struct {
	keys map[string]*entry
	// moves are the key updates of the batch, composed: for a key whose
	// row another key held at the start of the batch, moves[key] names
	// that key (from). Green's row under from is then the same row as
	// blue's under key, and the applier moves it by an UPDATE (trap 13)
	// instead of deleting it and inserting a new one.
	moves map[string]*move
	// fresh are the keys whose blue row is new in the batch (inserted
	// under a key the batch vacated, or re-keyed from such a key): green's
	// row under such a key, if any, is another row's. vacated are the keys
	// whose row the batch deleted or re-keyed away. An insert under a key
	// the batch did not vacate is not recorded: green has no row there.
	fresh, vacated map[string]bool
	// together are the keys of each transaction that changed more than one
	// of the migration's tables (a parent and its children): applied in
	// one apply transaction, so green never has one without the other.
	together [][]string
	truncate bool
	xids     []uint32
	txns     int64
	changes  int64
	echoed   int64
	endLSN   pglogrepl.LSN // end of the last commit: confirm up to here once applied
	oldest   time.Time     // commit time of the oldest transaction in it
	newest   time.Time
}

// move is one re-keyed row: green holds it under from, blue under to.
type move struct {
	table    int
	from, to []string
	fk       string // tableKey(from)
}

func newBatch() *batch {
	return &batch{keys: map[string]*entry{}, moves: map[string]*move{}, fresh: map[string]bool{}, vacated: map[string]bool{}}
}

func (b *batch) empty() bool { return b.txns == 0 }

// add merges a committed transaction.
func (b *batch) add(t *txn, c *pglogrepl.CommitMessage) {
	if t.truncate {
		b.truncate = true
		clear(b.moves) // green's rows under the old keys are gone with blue's
		clear(b.fresh)
		clear(b.vacated)
		b.together = nil
	}
	for _, ev := range t.events {
		b.compose(ev)
	}
	for k, e := range t.keys {
		b.keys[k] = e
	}
	if len(t.tables) > 1 {
		b.together = append(b.together, slices.Collect(maps.Keys(t.keys)))
	}
	if len(t.keys) > 0 || t.truncate {
		b.xids = append(b.xids, t.xid)
	}
	if b.txns == 0 {
		b.oldest = c.CommitTime
	}
	b.newest = c.CommitTime
	b.txns++
	b.changes += t.changes
	b.echoed += t.echoed
	b.endLSN = c.TransactionEndLSN
}

// compose folds one event into the batch's moves. Green holds a key's row
// as of the batch's start; the row blue has under a key now came from
// moves[key].from, or is new (fresh), or is the one under that key at the
// start. A row re-keyed A → B → C moves from A to C; re-keyed back to A it
// does not move; a row inserted in the batch (under a key another row has
// just left, too) is not in green and does not move; a deleted row moves
// nowhere. An echo was made on green first: green's row is where blue's
// is already, so it neither moves nor is fresh.
func (b *batch) compose(ev event) {
	// Where green holds the row blue has under ev.from: under key ofrom
	// (ofk), or nowhere (!held).
	var ofrom []string
	var ofk string
	held := false
	if ev.from != nil {
		ofrom, ofk, held = ev.from, ev.fk, true
		if m, ok := b.moves[ev.fk]; ok {
			ofrom, ofk = m.from, m.fk
		} else if b.fresh[ev.fk] {
			held = false
		}
		delete(b.moves, ev.fk)
		delete(b.fresh, ev.fk)
		b.vacated[ev.fk] = true
	}
	switch {
	case ev.to == nil: // a delete
	case ev.from == nil: // an insert
		if !ev.echo && b.vacated[ev.tk] {
			b.fresh[ev.tk] = true
		}
	default: // a key update
		delete(b.moves, ev.tk)
		delete(b.fresh, ev.tk)
		switch {
		case ev.echo:
		case !held:
			b.fresh[ev.tk] = true
		case ofk != ev.tk:
			b.moves[ev.tk] = &move{table: ev.table, from: ofrom, fk: ofk, to: ev.to}
		}
	}
}

// unit is what must be applied together: one key, or moves and their
// keys (each move's from and to, and moves sharing a key: A → B while
// C → A), which the applier must see in one transaction.
type unit struct {
	keys  []*entry
	moves []*move
}

// chunk is one apply transaction's work.
type chunk []unit

func (c chunk) size() int {
	n := 0
	for _, u := range c {
		n += len(u.keys)
	}
	return n
}

// keys are the chunk's keys, gone says which of them the batch removed
// from blue (entry.gone), and moves are its moves.
func (c chunk) keys() (keys [][]string, gone []bool) {
	for _, u := range c {
		for _, e := range u.keys {
			keys = append(keys, e.key)
			gone = append(gone, e.gone)
		}
	}
	return keys, gone
}

// freshKeys are the keys of the chunk whose green row must go before the
// re-copy (entry.fresh).
func (c chunk) freshKeys() [][]string {
	var out [][]string
	for _, u := range c {
		for _, e := range u.keys {
			if e.fresh {
				out = append(out, e.key)
			}
		}
	}
	return out
}

// tablePart is a chunk's work on one of the migration's tables.
type tablePart struct {
	keys  [][]string
	gone  []bool
	fresh [][]string
	moves []*move
}

// byTable splits the chunk's work by table (n tables).
func (c chunk) byTable(n int) []tablePart {
	parts := make([]tablePart, n)
	for _, u := range c {
		for _, e := range u.keys {
			p := &parts[e.table]
			p.keys = append(p.keys, e.key)
			p.gone = append(p.gone, e.gone)
			if e.fresh {
				p.fresh = append(p.fresh, e.key)
			}
		}
		for _, m := range u.moves {
			parts[m.table].moves = append(parts[m.table].moves, m)
		}
	}
	return parts
}

func (c chunk) moves() []*move {
	var out []*move
	for _, u := range c {
		out = append(out, u.moves...)
	}
	return out
}

// work splits the batch into what has to be applied: the keys whose last
// change is not an echo, in chunks of about n keys (a unit's keys stay in
// one chunk), with entry.fresh set. A move is applied only when neither of
// its keys' last change is an echo: an echo at its from key means green
// wrote a new row there, which must not move.
func (b *batch) work(n int) (chunks []chunk, echoes int) {
	var cur chunk
	size := 0
	push := func(u unit) {
		cur = append(cur, u)
		size += len(u.keys)
		if size >= n {
			chunks = append(chunks, cur)
			cur, size = nil, 0
		}
	}
	for k := range b.fresh {
		if e := b.keys[k]; e != nil {
			e.fresh = !e.echo
		}
	}
	// Moves sharing a key form one unit, and so do the keys of a
	// transaction that changed several of the migration's tables, with
	// whatever unit one of their keys is in already (a small union of key
	// sets).
	done := map[string]bool{}
	owner := map[string]*unit{}
	var units []*unit
	join := func(ks []string, m *move) {
		var u *unit
		for _, k := range ks {
			v := owner[k]
			switch {
			case v == nil || v == u:
			case u == nil:
				u = v
			default: // two units: merge v into u
				u.keys = append(u.keys, v.keys...)
				u.moves = append(u.moves, v.moves...)
				for _, e := range v.keys {
					owner[tableKey(e.table, e.key)] = u
				}
				v.keys, v.moves = nil, nil
			}
		}
		if u == nil {
			u = &unit{}
			units = append(units, u)
		}
		if m != nil {
			u.moves = append(u.moves, m)
		}
		for _, k := range ks {
			if owner[k] == nil {
				owner[k] = u
				u.keys = append(u.keys, b.keys[k])
				done[k] = true
			}
		}
	}
	for tk, m := range b.moves {
		te, fe := b.keys[tk], b.keys[m.fk]
		if te == nil || fe == nil || te.echo || fe.echo {
			continue
		}
		join([]string{tk, m.fk}, m)
	}
	for _, g := range b.together {
		ks := slices.DeleteFunc(slices.Clone(g), func(k string) bool { e := b.keys[k]; return e == nil || e.echo })
		if len(ks) > 1 {
			join(ks, nil)
		}
	}
	for _, u := range units {
		if len(u.keys) > 0 {
			push(*u)
		}
	}
	for k, e := range b.keys {
		if e.echo {
			echoes++
			continue
		}
		if done[k] {
			continue
		}
		push(unit{keys: []*entry{e}})
	}
	if len(cur) > 0 {
		chunks = append(chunks, cur)
	}
	return chunks, echoes
}
