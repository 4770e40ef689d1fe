package stream

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
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

// relation is one relation the stream describes (only blue is published).
type relation struct {
	name   string
	cols   []string
	keyIdx []int // position in cols of each sync key column, in key order
}

// entry is the last change of one key: its key values (text, blue's types)
// and whether it was an echo (the reverse trigger's write, which green
// already has).
type entry struct {
	key  []string
	echo bool
}

// txn is one transaction being received.
type txn struct {
	xid        uint32
	commitTime time.Time
	keys       map[string]*entry
	changes    int64
	inEcho     bool
	truncate   bool // a TRUNCATE of blue not made by the reverse trigger
	echoed     int64
}

func (t *txn) add(key []string, echo bool) {
	t.changes++
	if echo {
		t.echoed++
	}
	t.keys[keyString(key)] = &entry{key: key, echo: echo}
}

// keyString is a map key for key values (text values never hold NUL).
func keyString(key []string) string { return strings.Join(key, "\x00") }

// decoder turns pgoutput messages (protocol version 1, messages on) into
// committed transactions: the set of sync keys each one changed.
type decoder struct {
	key        []string // the sync key columns
	echoPrefix string   // transactional messages bracketing the reverse trigger's writes
	pingPrefix string   // non-transactional messages asking for a prompt confirmation
	rels       map[uint32]*relation
	tx         *txn
}

func newDecoder(key []string, echoPrefix string) *decoder {
	return &decoder{key: key, echoPrefix: echoPrefix, pingPrefix: PingPrefix(echoPrefix), rels: map[uint32]*relation{}}
}

// PingPrefix is the prefix of the non-transactional message WaitApplied
// emits so that an idle stream confirms past a position promptly.
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
		r := &relation{name: m.Namespace + "." + m.RelationName}
		for _, c := range m.Columns {
			r.cols = append(r.cols, c.Name)
		}
		for _, k := range d.key {
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
		d.tx.add(k, d.tx.inEcho)
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
			// The key changed (trap 3): the row under the old key is gone.
			d.tx.add(old, d.tx.inEcho)
		}
		d.tx.add(k, d.tx.inEcho)
	case *pglogrepl.DeleteMessage:
		r, err := d.rel(m.RelationID)
		if err != nil {
			return decoded{}, err
		}
		k, err := r.keyOf(m.OldTuple, nil)
		if err != nil {
			return decoded{}, fmt.Errorf("delete from %s: %w", r.name, err)
		}
		d.tx.add(k, d.tx.inEcho)
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
			case echoBegin:
				d.tx.inEcho = true
			case echoEnd:
				d.tx.inEcho = false
			}
		case !m.Transactional && m.Prefix == d.pingPrefix:
			return decoded{ping: true}, nil
		}
	}
	return decoded{}, nil
}

// Echo marker contents (trigger.EchoBegin, trigger.EchoEnd; not imported
// to keep this package's dependencies to shadow and below).
const (
	echoBegin = "b"
	echoEnd   = "e"
)

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
	keys     map[string]*entry
	truncate bool
	xids     []uint32
	txns     int64
	changes  int64
	echoed   int64
	endLSN   pglogrepl.LSN // end of the last commit: confirm up to here once applied
	oldest   time.Time     // commit time of the oldest transaction in it
	newest   time.Time
}

func newBatch() *batch { return &batch{keys: map[string]*entry{}} }

func (b *batch) empty() bool { return b.txns == 0 }

// add merges a committed transaction.
func (b *batch) add(t *txn, c *pglogrepl.CommitMessage) {
	if t.truncate {
		b.truncate = true
	}
	for k, e := range t.keys {
		b.keys[k] = e
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

// work splits the batch into what has to be applied: the keys whose last
// change is not an echo, in chunks of at most n.
func (b *batch) work(n int) (chunks [][][]string, echoes int) {
	var cur [][]string
	for _, e := range b.keys {
		if e.echo {
			echoes++
			continue
		}
		cur = append(cur, e.key)
		if len(cur) >= n {
			chunks = append(chunks, cur)
			cur = nil
		}
	}
	if len(cur) > 0 {
		chunks = append(chunks, cur)
	}
	return chunks, echoes
}
