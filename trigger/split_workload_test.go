package trigger_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
)

// TestSplitWorkloadBothShapes: ten writers on blue race the backfill of
// the three greens (trap 1: a row the batch copies while a writer deletes
// it or moves it out of a green's where must not stay there), then, with
// the reverse direction switched on under load, ten writers on blue and
// the greens at once, on 30 shared hot keys. At the end, with SQL written
// here: each green equals blue mapped forward (EXCEPT both ways), blue
// equals the old shape rebuilt from the greens, and blue and green users
// both hold exactly the ledger's names.
func TestSplitWorkloadBothShapes(t *testing.T) {
	t.Parallel()
	for _, seed := range testkit.Seeds(t, 1) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			m := splitSetup(t, splitUsersTable, splitUsersSpec)
			pgtest.Exec(t, m.dsn, `CREATE TABLE ledger (id bigint PRIMARY KEY, name text); INSERT INTO ledger SELECT id, name FROM gs_us_blue.users`)
			w := &testkit.SplitWriters{Pool: m.pool, Green: "gs_us_green", Hot: 30}
			w.Start(10, seed)
			time.Sleep(300 * time.Millisecond)
			m.backfill(t)
			time.Sleep(500 * time.Millisecond)
			m.reverseOn(t)
			w.Greens.Store(true)
			time.Sleep(4 * time.Second)
			w.Halt(t)
			w.LogKinds(t, 500)
			testkit.CheckSplitUsers(t, m.pool, "us", "after the workload")
		})
	}
}
