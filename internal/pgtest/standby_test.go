//go:build unix

package pgtest

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// A standby streams from its primary: it is listed as streaming under its
// application name, is in recovery, sees a row committed on the primary, and
// is stopped and deleted by its own Stop, or by the primary's.
func TestStartStandby(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	primary, err := StartCluster(ctx, Options{})
	if errors.Is(err, ErrNoServerBinaries) {
		t.Skip(err) // a machine with only Docker: no binaries to start a primary and standby from
	}
	if err != nil {
		t.Fatal(err)
	}
	defer primary.Stop()
	const name = "pgtest standby's"
	standby, err := primary.StartStandby(ctx, name, StandbyOptions{})
	if errors.Is(err, ErrNoBaseBackup) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer standby.Stop()
	if standby.Port == primary.Port || standby.DataDir == primary.DataDir || standby.Version != primary.Version {
		t.Fatalf("standby %+v of primary %+v", standby, primary)
	}

	pdsn, sdsn := primary.DSN("postgres"), standby.DSN("postgres")
	if got := queryString(t, pdsn, "SELECT state FROM pg_stat_replication WHERE application_name = $1", name); got != "streaming" {
		t.Fatalf("pg_stat_replication state %q", got)
	}
	if got := queryString(t, sdsn, "SELECT pg_is_in_recovery()::text"); got != "true" {
		t.Fatalf("standby pg_is_in_recovery = %s", got)
	}
	if got := queryString(t, sdsn, "SELECT current_setting('wal_receiver_status_interval')"); got != "1s" {
		t.Errorf("standby wal_receiver_status_interval = %s", got)
	}

	Exec(t, pdsn, `CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'written on the primary')`)
	conn, err := pgx.Connect(ctx, sdsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	deadline := time.Now().Add(30 * time.Second)
	for {
		var v string
		err := conn.QueryRow(ctx, "SELECT v FROM t WHERE id = $1", 1).Scan(&v)
		if err == nil {
			if v != "written on the primary" {
				t.Fatalf("standby reads %q", v)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the row never reached the standby (last error: %v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO t VALUES (2, 'x')"); err == nil {
		t.Error("the standby accepted a write")
	}
	conn.Close(ctx)

	if err := standby.Stop(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, standby)

	// A second standby, left to the primary's Stop.
	second, err := primary.StartStandby(ctx, "second", StandbyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, pdsn, "SELECT string_agg(application_name, ',') FROM pg_stat_replication"); got != "second" {
		t.Errorf("pg_stat_replication lists %q, want only the second standby", got)
	}
	if err := primary.Stop(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, second)
	assertGone(t, primary)
}

// assertGone checks that c's server no longer answers and its temp dir is gone.
func assertGone(t *testing.T, c *Cluster) {
	t.Helper()
	if _, err := os.Stat(c.DataDir); !os.IsNotExist(err) {
		t.Errorf("data dir %s still there after Stop (%v)", c.DataDir, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if conn, err := pgx.Connect(ctx, c.DSN("postgres")); err == nil {
		conn.Close(ctx)
		t.Errorf("server on port %d still accepts connections after Stop", c.Port)
	}
}
