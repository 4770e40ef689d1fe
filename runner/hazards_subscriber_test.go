package runner

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/state"
	"github.com/greenswap/greenswap/shadow"
)

// subscriberPair is a publisher database whose publication feed (FOR TABLE
// accounts, other) a real subscription in a second database of the same
// cluster reads through the slot sub_<publisher db>.
type subscriberPair struct {
	pub, sub string // DSNs
	slot     string
}

func newSubscriberPair(t *testing.T) *subscriberPair {
	t.Helper()
	p := &subscriberPair{pub: pgtest.NewDB(t), sub: pgtest.NewDB(t)}
	u, _ := url.Parse(p.pub)
	pubDB := strings.TrimPrefix(u.Path, "/")
	p.slot = "sub_" + pubDB
	pgtest.Exec(t, p.pub, wlSchema+`CREATE TABLE other (id int PRIMARY KEY, v text);
		CREATE PUBLICATION feed FOR TABLE accounts, other`)
	// CREATE SUBSCRIPTION cannot create its slot on its own cluster (it
	// would wait for itself): the slot is made first.
	pgtest.Exec(t, p.pub, `SELECT pg_create_logical_replication_slot('`+p.slot+`', 'pgoutput')`)
	pgtest.Exec(t, p.sub, `CREATE TABLE accounts (id bigint PRIMARY KEY, value int NOT NULL, note text);
		CREATE TABLE other (id int PRIMARY KEY, v text)`)
	conn := "host=" + u.Hostname() + " port=" + u.Port() + " dbname=" + pubDB + " user=postgres"
	pgtest.Exec(t, p.sub, `CREATE SUBSCRIPTION feed_sub CONNECTION '`+conn+`' PUBLICATION feed
		WITH (create_slot = false, slot_name = '`+p.slot+`', copy_data = false)`)
	// Registered after both databases: runs before they are dropped (a
	// database with a subscription cannot be).
	t.Cleanup(func() {
		ctx := context.Background()
		c, err := pgx.Connect(ctx, p.sub)
		if err != nil {
			return
		}
		defer c.Close(ctx)
		_, _ = c.Exec(ctx, `ALTER SUBSCRIPTION feed_sub DISABLE`)
		_, _ = c.Exec(ctx, `ALTER SUBSCRIPTION feed_sub SET (slot_name = NONE)`)
		_, _ = c.Exec(ctx, `DROP SUBSCRIPTION feed_sub`)
	})
	return p
}

// arrives waits until sql (a count) on the subscriber reaches want.
func (p *subscriberPair) arrives(t *testing.T, sql string, want int64, within time.Duration) bool {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, p.sub)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	deadline := time.Now().Add(within)
	for {
		var n int64
		if err := c.QueryRow(ctx, sql).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n >= want {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Trap 15 with a real subscriber: plan blocks naming the publication and
// the subscriber's slot, sync refuses (exit 3) with the subscription still
// streaming; following the hazard's fix (ALTER PUBLICATION ... DROP TABLE)
// the migration runs and the subscription keeps receiving its other tables
// throughout.
func TestHazardsPublicationRealSubscriber(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := newSubscriberPair(t)
	pgtest.Exec(t, p.pub, `INSERT INTO other VALUES (1, 'before')`)
	if !p.arrives(t, `SELECT count(*) FROM other`, 1, 20*time.Second) {
		t.Fatal("the subscription does not stream (setup)")
	}
	env := testEnv(t, p.pub)
	spec := parseSpec(t, "name: hzs\ntable: public.accounts\ntarget:\n  ddl: CREATE TABLE accounts (id bigint PRIMARY KEY, value bigint NOT NULL, note text)\n")
	res, err := Plan(ctx, env, spec, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h := hazard(res, shadow.HazardPublications)
	objs := strings.Join(h.Objects, "\n")
	if h == nil || h.Severity != shadow.Blocking || !strings.Contains(objs, "feed (FOR TABLE)") || !strings.Contains(objs, p.slot) {
		t.Fatalf("publications hazard = %+v", h)
	}
	if _, err := Sync(ctx, env, spec, SyncOptions{}); exitcode.Of(err) != exitcode.Blocked {
		t.Fatalf("sync: want exit 3, got %d: %v", exitcode.Of(err), err)
	}
	pgtest.Exec(t, p.pub, `INSERT INTO other VALUES (2, 'after the refused sync')`)
	if !p.arrives(t, `SELECT count(*) FROM other`, 2, 20*time.Second) {
		t.Fatal("the subscription stopped after a refused sync")
	}

	// The fix the hazard gives.
	pgtest.Exec(t, p.pub, `ALTER PUBLICATION feed DROP TABLE public.accounts`)
	st, err := Sync(ctx, env, spec, SyncOptions{})
	if err != nil || st.State != state.Synced {
		t.Fatalf("sync after the fix: %v", err)
	}
	pgtest.Exec(t, p.pub, `INSERT INTO accounts (value) VALUES (7); UPDATE accounts SET value = value + 1 WHERE id < 10;
		INSERT INTO other VALUES (3, 'during the migration')`)
	if !p.arrives(t, `SELECT count(*) FROM other`, 3, 20*time.Second) {
		t.Fatal("the subscription stalled during the migration although the table left the publication")
	}
}

// What the hazard prevents, shown for real (the adopt that sync ran before
// publications blocked): once the table moves to gs_<m>_blue, the FOR TABLE
// subscriber's apply worker fails on that relation, and the subscription's
// other tables stop arriving.
func TestHazardsPublicationAdoptStallsSubscriber(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	p := newSubscriberPair(t)
	pgtest.Exec(t, p.pub, `INSERT INTO other VALUES (1, 'before')`)
	if !p.arrives(t, `SELECT count(*) FROM other`, 1, 20*time.Second) {
		t.Fatal("the subscription does not stream (setup)")
	}
	env := testEnv(t, p.pub)
	spec := parseSpec(t, "name: hzb\ntable: public.accounts\ntarget:\n  ddl: CREATE TABLE accounts (id bigint PRIMARY KEY, value bigint NOT NULL, note text)\n")
	err := pgx.BeginFunc(ctx, env.Pool, func(tx pgx.Tx) error {
		_, err := adoptTx(ctx, tx, spec, shadow.NamesFor(spec.Name, spec.AppTable()), env.ServerMajor)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, p.pub, `UPDATE accounts SET value = value + 1 WHERE id = 1`)
	pgtest.Exec(t, p.pub, `INSERT INTO other VALUES (2, 'after adopt')`)
	if p.arrives(t, `SELECT count(*) FROM other`, 2, 5*time.Second) {
		t.Fatal("the subscriber kept up after adopt: the publications hazard would be unfounded")
	}
	if pgtest.ServerMajor(t) >= 15 {
		if !p.arrives(t, `SELECT coalesce(sum(apply_error_count), 0) FROM pg_stat_subscription_stats`, 1, 10*time.Second) {
			t.Error("no apply error counted on the subscriber")
		}
	}
}
