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
