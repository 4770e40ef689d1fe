package runner

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/state"
)

// acceptDriftCase is one deploy's change to a synced migration's blue or
// green. refused: verify --accept-drift must refuse it (exit 3, one line
// naming want, nothing recorded) and undo brings the objects back;
// otherwise it is accepted and writers must keep green equal to blue.
type acceptDriftCase struct {
	name    string
	before  string // run first through the app name (data the change needs)
	change  string
	refused bool
	want    string // the refusal names it: table and column or object
	undo    string
}

var acceptDriftCases = []acceptDriftCase{
	{name: "blue rename", refused: true,
		change: `ALTER TABLE gs_ad_blue.orders RENAME COLUMN created_at TO made_at`,
		want:   "gs_ad_blue.orders (blue): column created_at renamed to made_at",
		undo:   `ALTER TABLE gs_ad_blue.orders RENAME COLUMN made_at TO created_at`},
	{name: "green rename", refused: true,
		change: `ALTER TABLE gs_ad_green.orders RENAME COLUMN note TO memo`,
		want:   "gs_ad_green.orders (green): column note renamed to memo",
		undo:   `ALTER TABLE gs_ad_green.orders RENAME COLUMN memo TO note`},
	{name: "green type change", refused: true,
		change: `ALTER TABLE gs_ad_green.orders ALTER COLUMN amount TYPE numeric(14,2)`,
		want:   "gs_ad_green.orders (green): column amount type changed from numeric(12,2) to numeric(14,2)",
		undo:   `ALTER TABLE gs_ad_green.orders ALTER COLUMN amount TYPE numeric(12,2)`},
	{name: "blue index added",
		change: `CREATE INDEX orders_tenant_idx ON gs_ad_blue.orders (tenant)`},
	{name: "green unique index on green alone", refused: true,
		change: `CREATE UNIQUE INDEX orders_id_tenant_key ON gs_ad_green.orders (id, tenant)`,
		want:   "gs_ad_green.orders (green): index orders_id_tenant_key added",
		undo:   `DROP INDEX gs_ad_green.orders_id_tenant_key`},
	{name: "green index dropped",
		change: `DROP INDEX gs_ad_green.orders_created_at_idx`},
	{name: "blue default changed",
		change: `ALTER TABLE gs_ad_blue.orders ALTER COLUMN note SET DEFAULT 'none'`},
	{name: "green NOT NULL where blue allows NULL", refused: true,
		before: `UPDATE public.orders SET note = '' WHERE note IS NULL`,
		change: `ALTER TABLE gs_ad_green.orders ALTER COLUMN note SET NOT NULL`,
		want:   "gs_ad_green.orders (green): column note is now NOT NULL",
		undo:   `ALTER TABLE gs_ad_green.orders ALTER COLUMN note DROP NOT NULL`},
	{name: "blue NOT NULL where green has it",
		before: `UPDATE public.orders SET email = 'unknown@invalid' WHERE email IS NULL`,
		change: `ALTER TABLE gs_ad_blue.orders ALTER COLUMN email SET NOT NULL`},
	{name: "enabled trigger on green", refused: true,
		change: `CREATE TRIGGER touch BEFORE INSERT OR UPDATE ON gs_ad_green.orders FOR EACH ROW EXECUTE FUNCTION public.ad_touch()`,
		want:   "gs_ad_green.orders (green): trigger touch added",
		undo:   `DROP TRIGGER touch ON gs_ad_green.orders`},
	{name: "trigger on blue, the primary side",
		change: `CREATE TRIGGER touch BEFORE INSERT OR UPDATE ON gs_ad_blue.orders FOR EACH ROW EXECUTE FUNCTION public.ad_touch()`},
	// Last: it cannot be undone.
	{name: "green drop column", refused: true,
		change: `ALTER TABLE gs_ad_green.orders DROP COLUMN note`,
		want:   "gs_ad_green.orders (green): column note text removed"},
}

// TestAcceptDriftKeepsSyncWriting (trap 16, issue 14): on a synced
// migration, for each kind of change a deploy makes to blue or green (a
// column renamed, retyped or dropped, an index added or dropped, a unique
// index on one shape, a default, NOT NULL, a user trigger on either side),
// verify --accept-drift either refuses it — exit 3, a one-line error
// naming the table and column or object and saying to replan, the
// recorded fingerprint and the objects untouched — or accepts it, and
// then concurrent writers through the app name keep green equal to blue
// (EXCEPT diff through the mapping) and the next verify passes.
func TestAcceptDriftKeepsSyncWriting(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := syncNewDB(t)
	coExec(t, pool, syncOrdersTable(3000, false)+`
		CREATE FUNCTION public.ad_touch() RETURNS trigger LANGUAGE plpgsql AS
		$$BEGIN NEW.note := upper(NEW.note); RETURN NEW; END$$;`)
	env := syncTestEnv(t, dsn)
	st, err := Sync(ctx, env, syncSpec(t, syncOrdersSpec("ad", false)), SyncOptions{BatchSize: 500})
	if err != nil || st.State != state.Synced {
		t.Fatalf("sync: %+v, %v", st, err)
	}
	verifyOK := func(what string) {
		t.Helper()
		rep, err := Verify(ctx, env, "ad", VerifyOptions{})
		if err != nil || !rep.OK {
			t.Fatalf("%s: verify: %+v, %v", what, rep, err)
		}
	}
	verifyOK("after sync")
	for i, c := range acceptDriftCases {
		if c.before != "" {
			coExec(t, pool, c.before)
			verifyOK(c.name + ": before the change")
		}
		fp, err := state.Fingerprint(ctx, pool, "ad")
		if err != nil {
			t.Fatal(err)
		}
		coExec(t, pool, c.change)
		_, err = Verify(ctx, env, "ad", VerifyOptions{AcceptDrift: true})
		if c.refused {
			var de *DriftError
			if !errors.As(err, &de) || !de.Uncarried || exitcode.Of(err) != exitcode.Blocked {
				t.Fatalf("%s: want --accept-drift refused (exit 3, uncarried), got %v", c.name, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, c.want) || strings.Contains(msg, "\n") || !strings.Contains(msg, "plan again") {
				t.Fatalf("%s: want one line naming %q and saying to plan again, got:\n%s", c.name, c.want, msg)
			}
			after, err := state.Fingerprint(ctx, pool, "ad")
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(fp, after) {
				t.Fatalf("%s: a refused --accept-drift recorded a fingerprint", c.name)
			}
			if c.undo == "" {
				continue
			}
			coExec(t, pool, c.undo)
			verifyOK(c.name + ": undone")
			continue
		}
		if err != nil {
			t.Fatalf("%s: --accept-drift: %v", c.name, err)
		}
		// Accepted: the sync must go on carrying every write.
		w := startSyncWorkloadOpt(t, dsn, "orders", false, true, 3, uint64(100+i))
		start := w.ops.Load()
		syncWaitFor(t, 60*time.Second, c.name+": 150 writes", func() bool { return w.ops.Load()-start >= 150 })
		if errs := w.stop(); len(errs) > 0 {
			t.Fatalf("%s: %d workload errors after accepting, first: %v", c.name, len(errs), errs[0])
		}
		if d := syncOrdersDiff(t, pool, "ad"); d != 0 {
			t.Fatalf("%s: accepted, then green differs from blue in %d rows", c.name, d)
		}
		verifyOK(c.name + ": accepted, after writers")
	}
}
