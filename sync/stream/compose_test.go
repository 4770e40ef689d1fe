package stream

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// A transaction of events for batch.add: "u A B" re-keys A to B, "d A"
// deletes A, "i A" inserts A; a trailing "*" marks an echo.
func testTxn(evs ...string) *txn {
	t := &txn{keys: map[string]*entry{}}
	for _, e := range evs {
		var op, a, b string
		fmt.Sscan(e, &op, &a, &b)
		echo := e[len(e)-1] == '*'
		if echo {
			b = trimStar(b)
			a = trimStar(a)
		}
		switch op {
		case "u":
			fk := t.add([]string{a}, echo, true)
			tk := t.add([]string{b}, echo, false)
			t.events = append(t.events, event{from: []string{a}, to: []string{b}, fk: fk, tk: tk, echo: echo})
		case "d":
			fk := t.add([]string{a}, echo, true)
			t.events = append(t.events, event{from: []string{a}, fk: fk, echo: echo})
		case "i":
			tk := t.add([]string{a}, echo, false)
			t.events = append(t.events, event{to: []string{a}, tk: tk, echo: echo})
		}
	}
	return t
}

func trimStar(s string) string {
	if len(s) > 0 && s[len(s)-1] == '*' {
		return s[:len(s)-1]
	}
	return s
}

func movesOf(b *batch) string {
	var out []string
	for _, c := range func() []chunk { c, _ := b.work(1000); return c }() {
		for _, m := range c.moves() {
			out = append(out, m.from[0]+">"+m.to[0])
		}
	}
	sort.Strings(out)
	return fmt.Sprint(out)
}

// TestComposeMoves: the batch's key updates become the moves of green's
// rows that the applier makes by UPDATE (trap 13), across transactions.
func TestComposeMoves(t *testing.T) {
	commit := &pglogrepl.CommitMessage{CommitTime: time.Now()}
	for _, c := range []struct {
		txns [][]string
		want string
	}{
		{[][]string{{"u A B"}}, "[A>B]"},
		{[][]string{{"u A B", "u B C"}}, "[A>C]"},
		{[][]string{{"u A B"}, {"u B C"}}, "[A>C]"},      // across transactions
		{[][]string{{"u A B", "u B A"}}, "[]"},           // back where it was
		{[][]string{{"u A B", "d B"}}, "[]"},             // deleted: nothing to move
		{[][]string{{"u A B", "i A"}}, "[A>B]"},          // a new row under the old key stays
		{[][]string{{"u A B", "i A", "u A C"}}, "[A>B]"}, // the new row is not in green: it moves nowhere
		{[][]string{{"d A", "i A", "u A C"}}, "[]"},      // green's A is the deleted row
		{[][]string{{"i N", "u N M"}}, "[N>M]"},          // green lacks N: the applier's guard falls back
		{[][]string{{"u A B*"}}, "[]"},                   // an echo: green moved it already
		{[][]string{{"u A B*"}, {"u B C"}}, "[B>C]"},     // green has it under B
		{[][]string{{"u A B", "u C A"}}, "[A>B C>A]"},    // both land (applyMoves repeats)
	} {
		b := newBatch()
		for _, tx := range c.txns {
			b.add(testTxn(tx...), commit)
		}
		if got := movesOf(b); got != c.want {
			t.Errorf("%v: moves %s, want %s", c.txns, got, c.want)
		}
	}
}

// TestTogetherUnits: the keys of a transaction that changed several of
// the migration's tables (an order and its items; an order deleted with
// its items) land in one chunk however small the chunks are, also when a
// later transaction of one table only touches one of them; keys of
// one-table transactions are chunked as before, and the same values in
// two tables are two keys.
func TestTogetherUnits(t *testing.T) {
	commit := &pglogrepl.CommitMessage{CommitTime: time.Now()}
	tx := func(changes ...[2]any) *txn {
		x := &txn{keys: map[string]*entry{}}
		for _, c := range changes {
			x.addIn(c[0].(int), []string{c[1].(string)}, false, false)
		}
		return x
	}
	b := newBatch()
	b.add(tx([2]any{0, "1"}, [2]any{1, "10"}, [2]any{1, "11"}, [2]any{1, "12"}), commit) // order 1 with its items
	b.add(tx([2]any{1, "11"}), commit)                                                   // an item alone, later
	b.add(tx([2]any{0, "2"}, [2]any{1, "20"}), commit)                                   // order 2 with its item
	b.add(tx([2]any{0, "3"}), commit)                                                    // orders alone
	b.add(tx([2]any{0, "4"}), commit)
	b.add(tx([2]any{1, "1"}), commit) // an item whose key equals order 1's
	chunks, _ := b.work(1)
	where := map[string]int{}
	keys := 0
	for i, c := range chunks {
		for _, u := range c {
			for _, e := range u.keys {
				where[tableKey(e.table, e.key)] = i
				keys++
			}
		}
	}
	if keys != 9 {
		t.Fatalf("%d keys in the chunks, want 9 (order 1's key and item 1's are two)", keys)
	}
	same := func(a, b string) bool { return where[a] == where[b] }
	o1, o2 := tableKey(0, []string{"1"}), tableKey(0, []string{"2"})
	for _, k := range []string{"10", "11", "12"} {
		if !same(o1, tableKey(1, []string{k})) {
			t.Errorf("item %s is not in order 1's chunk: %v", k, where)
		}
	}
	if !same(o2, tableKey(1, []string{"20"})) || same(o1, o2) {
		t.Errorf("order 2's unit: %v", where)
	}
	if same(tableKey(0, []string{"3"}), tableKey(0, []string{"4"})) {
		t.Errorf("one-table keys joined in one chunk of size 1: %v", where)
	}
	if len(chunks) != 5 { // {order 1 + 3 items}, {order 2 + item}, {3}, {4}, {item 1}
		t.Errorf("%d chunks, want 5: %v", len(chunks), where)
	}
}
