package sync_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/pgtest"
	gssync "github.com/greenswap/greenswap/sync"
)

// laggingSubscriber is a logical replication connection that receives the
// stream but never confirms past where it started, so the primary's
// pg_stat_replication shows its replay_lag growing, as for a subscriber
// (or greenswap's own stream) that cannot keep up.
func laggingSubscriber(t *testing.T, dsn, appName, slot string) {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("replication", "database")
	q.Set("application_name", appName)
	u.RawQuery = q.Encode()
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := pgconn.Connect(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, conn, slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	start, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		t.Fatal(err)
	}
	if err := pglogrepl.StartReplication(ctx, conn, slot, start, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'churn'"}}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			// Report the start position again and again: received, never applied.
			_ = pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: start})
			rctx, rcancel := context.WithTimeout(ctx, 100*time.Millisecond)
			_, err := conn.ReceiveMessage(rctx)
			rcancel()
			if err != nil && !pgconn.Timeout(err) && !errors.Is(err, context.DeadlineExceeded) {
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		conn.Close(context.Background())
	})
}

// The replica-lag throttle does not count greenswap's own logical stream:
// held behind the stream's lag, the copy waited for itself (issue 12). A
// real subscriber that lags still holds it, and is named.
func TestReplicaLagIgnoresGreenswapStream(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cluster, err := pgtest.StartCluster(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Stop() })
	dsn, err := cluster.CreateDatabase(ctx, "app")
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, `CREATE TABLE churn (id bigserial PRIMARY KEY, payload text NOT NULL);
		CREATE PUBLICATION churn FOR TABLE churn`)
	rs := &replicaSet{dsn: dsn}
	if rs.pool, err = pgxpool.New(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.pool.Close)
	rs.churn(t)

	laggingSubscriber(t, dsn, "greenswap:o:stream", "gs_o")
	lagOf := func(name string) time.Duration {
		var secs float64
		err := rs.pool.QueryRow(ctx, `SELECT coalesce(extract(epoch FROM replay_lag), 0)::float8
			FROM pg_stat_replication WHERE application_name = $1`, name).Scan(&secs)
		if err != nil {
			t.Fatalf("pg_stat_replication of %s: %v", name, err)
		}
		return time.Duration(secs * float64(time.Second))
	}
	const max = time.Second
	waitLag := func(name string) {
		deadline := time.Now().Add(60 * time.Second)
		for lagOf(name) <= 2*max {
			if time.Now().After(deadline) {
				t.Fatalf("%s never showed a replay lag over %s", name, 2*max)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitLag("greenswap:o:stream")
	th := &gssync.ReplicaLag{Q: rs.pool, Max: max, Every: time.Millisecond}
	if reason, err := th.Hold(ctx); err != nil || reason != "" {
		t.Fatalf("held behind greenswap's own stream (lag %s): %q, %v", lagOf("greenswap:o:stream"), reason, err)
	}

	laggingSubscriber(t, dsn, "reporting", "reporting_sub")
	waitLag("reporting")
	reason, err := th.Hold(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(reason, "replica reporting replay lag") {
		t.Fatalf("a lagging subscriber did not hold the copy: %q", reason)
	}
}
