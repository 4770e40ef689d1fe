//go:build unix

package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Environment variables read by the harness.
const (
	// EnvDSN points the tests at an existing server instead of a throwaway one.
	EnvDSN = "GREENSWAP_TEST_DSN"
	// EnvBinDir names the directory holding postgres and initdb.
	EnvBinDir = "GREENSWAP_PG_BINDIR"
	// EnvLog, when set, is the file the throwaway server logs to (appended);
	// by default the log lives in the cluster's temp dir and is removed with it.
	EnvLog = "GREENSWAP_PG_LOG"
	// EnvUser is the unprivileged account initdb and postgres run as when the
	// tests run as root. Default "nobody".
	EnvUser = "GREENSWAP_PG_USER"
)

// SuperUser is the role initdb creates and every DSN of a throwaway cluster uses.
const SuperUser = "postgres"

const (
	readyTimeout = 30 * time.Second
	stopTimeout  = 20 * time.Second
	tempPrefix   = "greenswap-pgtest-"
)

// Options tunes StartCluster.
type Options struct {
	// BinDir holds postgres and initdb. "" = auto: $GREENSWAP_PG_BINDIR, then
	// `pg_config --bindir`, then the newest /usr/lib/postgresql/*/bin, then
	// postgres on $PATH.
	BinDir string
	// Settings are extra GUCs written to postgresql.conf after the harness
	// defaults (so they override them). Key "port" pins the port.
	Settings map[string]string
	// LogFile receives the server's log (appended). "" = a file in the
	// cluster's temp dir, removed by Stop.
	LogFile string
}

// Cluster is a throwaway PostgreSQL server started by StartCluster. It is
// owned by the process that started it; Stop shuts it down and deletes it.
type Cluster struct {
	Host    string // always 127.0.0.1
	Port    int
	BinDir  string
	DataDir string
	Version int    // server major version, e.g. 15
	Release string // full version string, e.g. "15.18"
	LogPath string // where the server logs

	root     string              // temp dir holding DataDir (and the log by default)
	cred     *syscall.Credential // the unprivileged user the server runs as; nil = as ourselves
	runAs    string              // that user's name, for messages
	pid      int
	exited   <-chan error
	stopOnce sync.Once
	stopErr  error

	standbyMu sync.Mutex
	standbys  []*Cluster // started by StartStandby; stopped before this server
}

// DSN returns a postgres:// URL for dbname as the superuser, no TLS.
func (c *Cluster) DSN(dbname string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(SuperUser),
		Host:     net.JoinHostPort(c.Host, strconv.Itoa(c.Port)),
		Path:     "/" + dbname,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// CreateDatabase creates database name from template0 and returns its DSN.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) (string, error) {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE template0"); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return c.DSN(name), nil
}

// DropDatabase drops database name, first terminating its sessions and
// dropping its logical replication slots.
func (c *Cluster) DropDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return dropDatabase(ctx, conn, name)
}

// Stop shuts the server down (fast shutdown: SIGINT; SIGKILL to its process
// group after 20s), waits for it and removes its temp dir. The standbys
// started from it (StartStandby) are stopped first, the same way. Safe to
// call twice.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() { c.stopErr = c.stop() })
	return c.stopErr
}

func (c *Cluster) stop() error {
	var errs []error
	c.standbyMu.Lock()
	standbys := c.standbys
	c.standbys = nil
	c.standbyMu.Unlock()
	for _, s := range standbys {
		if err := s.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("standby on port %d: %w", s.Port, err))
		}
	}
	if c.exited != nil {
		select {
		case <-c.exited: // already gone
		default:
			_ = syscall.Kill(c.pid, syscall.SIGINT)
			select {
			case <-c.exited:
			case <-time.After(stopTimeout):
				errs = append(errs, fmt.Errorf("postgres (pid %d) did not stop within %s; killed", c.pid, stopTimeout))
				_ = killGroup(c.pid, syscall.SIGKILL)
				select {
				case <-c.exited:
				case <-time.After(5 * time.Second):
					errs = append(errs, fmt.Errorf("postgres (pid %d) still running after SIGKILL", c.pid))
				}
			}
		}
	}
	if c.root != "" {
		if err := os.RemoveAll(c.root); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// StartCluster initdb's a new cluster in a temp dir and starts postgres on
// 127.0.0.1 with a free port. When running as root, initdb and postgres run as
// the unprivileged user $GREENSWAP_PG_USER (default nobody). The caller must
// call Stop; if the calling process dies, Linux kills postgres (Pdeathsig) and
// the next StartCluster removes the stale temp dir.
func StartCluster(ctx context.Context, opts Options) (_ *Cluster, err error) {
	binDir := opts.BinDir
	if binDir == "" {
		if binDir, err = FindBinDir(); err != nil {
			return nil, err
		}
	} else if err := checkBinDir(binDir); err != nil {
		return nil, err
	}
	major, release, err := binaryVersion(ctx, binDir)
	if err != nil {
		return nil, err
	}

	cred, runAs, err := serverUser()
	if err != nil {
		return nil, err
	}
	if cred != nil && !traversable(binDir, cred) {
		return nil, fmt.Errorf("pgtest: %s is not reachable by user %s (initdb/postgres run as %s because we are root): make its parent directories world-traversable (chmod o+x) and the tree world-readable, or set %s", binDir, runAs, runAs, EnvBinDir)
	}

	base := os.TempDir()
	if cred != nil && !traversable(base, cred) {
		base = "/tmp"
		if !traversable(base, cred) {
			return nil, fmt.Errorf("pgtest: neither $TMPDIR nor /tmp is traversable by user %s", runAs)
		}
	}
	sweepStale(base)

	c := &Cluster{
		Host:    "127.0.0.1",
		BinDir:  binDir,
		Version: major,
		Release: release,
		LogPath: opts.LogFile,
		cred:    cred,
		runAs:   runAs,
	}
	defer func() {
		if err != nil {
			_ = c.Stop()
		}
	}()
	if err := c.makeRoot(base); err != nil {
		return nil, err
	}
	root := c.root

	// initdb
	initdb := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"),
		"-D", c.DataDir, "-U", SuperUser, "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
	initdb.Dir = root
	initdb.Env = childEnv()
	setProcAttrs(initdb, cred)
	if out, err := runTied(initdb); err != nil {
		hint := ""
		if runAs != "" {
			hint = fmt.Sprintf(" (ran as %s)", runAs)
		}
		return nil, fmt.Errorf("pgtest: initdb%s failed: %w\n%s", hint, err, tail(out, 40))
	}

	if err := c.configureAndStart(ctx, "postgresql.conf", serverSettings(), opts.Settings); err != nil {
		return nil, err
	}
	return c, nil
}

// serverSettings are the GUCs every server of the harness gets (a
// container too, minus where it listens): logical decoding with room for
// the suite's slots and walsenders, and durability traded for speed.
func serverSettings() map[string]string {
	return map[string]string{
		"listen_addresses":        "127.0.0.1",
		"unix_socket_directories": "",
		"wal_level":               "logical",
		"max_replication_slots":   "20",
		"max_wal_senders":         "20",
		"fsync":                   "off",
		"synchronous_commit":      "off",
		"full_page_writes":        "off",
		"max_connections":         "200",
		"shared_buffers":          "128MB",
	}
}

// configureAndStart appends settings, then extra (which win; its key
// "port" pins the port instead), to the data directory's file conf, and
// starts the server.
func (c *Cluster) configureAndStart(ctx context.Context, conf string, settings, extra map[string]string) error {
	fixedPort := 0
	for k, v := range extra {
		if k == "port" {
			p, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("pgtest: bad port setting %q", v)
			}
			fixedPort = p
			continue
		}
		settings[k] = v
	}
	if err := appendConf(filepath.Join(c.DataDir, conf), settings); err != nil {
		return err
	}
	return c.startOnPort(ctx, fixedPort)
}

// serverUser is the account initdb, postgres and pg_basebackup run as: nil
// (ourselves) unless we are root, which they refuse; then $GREENSWAP_PG_USER,
// default nobody.
func serverUser() (*syscall.Credential, string, error) {
	if os.Geteuid() != 0 {
		return nil, "", nil
	}
	name := os.Getenv(EnvUser)
	if name == "" {
		name = "nobody"
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, "", fmt.Errorf("pgtest: running as root, and initdb/postgres refuse root; need user %q to run them as: %w", name, err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, name, nil
}

// makeRoot creates the server's temp dir under base (owned by the server's
// user, with owner.pid for sweepStale) and sets root, DataDir and, unless
// set, LogPath.
func (c *Cluster) makeRoot(base string) error {
	root, err := os.MkdirTemp(base, tempPrefix)
	if err != nil {
		return err
	}
	c.root = root
	c.DataDir = filepath.Join(root, "data")
	if c.LogPath == "" {
		c.LogPath = filepath.Join(root, "postgres.log")
	}
	if err := os.WriteFile(filepath.Join(root, "owner.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	if c.cred != nil {
		if err := os.Chown(root, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return err
		}
	}
	return nil
}

// startOnPort starts postgres on fixedPort, or (0) on a free port with a few
// tries in case another test binary grabs the port between our probe and
// the server's bind.
func (c *Cluster) startOnPort(ctx context.Context, fixedPort int) error {
	for attempt := 1; ; attempt++ {
		port := fixedPort
		if port == 0 {
			var err error
			if port, err = freePort(); err != nil {
				return err
			}
		}
		c.Port = port
		logStart, startErr := c.startServer(ctx, c.cred)
		if startErr == nil {
			return nil
		}
		if fixedPort == 0 && attempt < 5 && strings.Contains(c.logTailFrom(logStart), "could not bind") {
			continue
		}
		return startErr
	}
}

// startServer starts postgres and waits until it accepts connections. It
// returns the log offset at which this attempt started.
func (c *Cluster) startServer(ctx context.Context, cred *syscall.Credential) (int64, error) {
	logf, err := os.OpenFile(c.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	var logStart int64
	if st, err := logf.Stat(); err == nil {
		logStart = st.Size()
	}
	cmd := exec.Command(filepath.Join(c.BinDir, "postgres"), "-D", c.DataDir, "-p", strconv.Itoa(c.Port))
	cmd.Dir = c.root
	cmd.Env = childEnv()
	cmd.Stdout = logf
	cmd.Stderr = logf
	setProcAttrs(cmd, cred)
	exited, err := startTied(cmd)
	logf.Close() // the child has its own copy
	if err != nil {
		return logStart, fmt.Errorf("pgtest: start postgres: %w", err)
	}
	c.pid = cmd.Process.Pid
	c.exited = exited

	deadline := time.Now().Add(readyTimeout)
	var lastErr error
	for {
		select {
		case werr := <-exited:
			c.exited = nil
			return logStart, fmt.Errorf("pgtest: postgres exited during startup (%v); log %s:\n%s", werr, c.LogPath, c.logTailFrom(logStart))
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, c.DSN("postgres"))
		if err == nil {
			err = conn.Ping(cctx)
			conn.Close(context.Background())
		}
		cancel()
		if err == nil {
			return logStart, nil
		}
		lastErr = err
		if ctx.Err() != nil || time.Now().After(deadline) {
			_ = c.kill()
			return logStart, fmt.Errorf("pgtest: postgres not accepting connections on %s:%d after %s (last error: %v); log %s:\n%s",
				c.Host, c.Port, readyTimeout, lastErr, c.LogPath, c.logTailFrom(logStart))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill stops a server that failed to come up, without removing anything.
func (c *Cluster) kill() error {
	if c.exited == nil {
		return nil
	}
	_ = killGroup(c.pid, syscall.SIGKILL)
	select {
	case <-c.exited:
	case <-time.After(5 * time.Second):
	}
	c.exited = nil
	return nil
}

func (c *Cluster) logTailFrom(off int64) string {
	b, err := os.ReadFile(c.LogPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if off > 0 && off <= int64(len(b)) {
		b = b[off:]
	}
	return tail(b, 40)
}

// FindBinDir locates PostgreSQL server binaries (a directory holding postgres
// and initdb): $GREENSWAP_PG_BINDIR, `pg_config --bindir`, the newest
// /usr/lib/postgresql/*/bin, postgres on $PATH.
func FindBinDir() (string, error) { return findBinDir(os.Getenv) }

func findBinDir(getenv func(string) string) (string, error) {
	if d := getenv(EnvBinDir); d != "" {
		if err := checkBinDir(d); err != nil {
			return "", fmt.Errorf("%s: %w", EnvBinDir, err)
		}
		return d, nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if d := strings.TrimSpace(string(out)); checkBinDir(d) == nil {
			return d, nil
		}
	}
	if d := newestDebianBinDir(); d != "" {
		return d, nil
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		if d := filepath.Dir(p); checkBinDir(d) == nil {
			return d, nil
		}
	}
	return "", fmt.Errorf("%w (%s unset; searched `pg_config --bindir`, /usr/lib/postgresql/*/bin, $PATH). "+
		"Install them (Debian: apt-get install postgresql-15), or set %s"+
		" to a directory holding postgres and initdb (scripts/pg-fetch.sh 17 prints one), or set %s"+
		" to a postgres:// URL of a superuser on a server with wal_level=logical", ErrNoServerBinaries, EnvBinDir, EnvBinDir, EnvDSN)
}

func newestDebianBinDir() string {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	best, bestV := "", -1
	for _, m := range matches {
		d := filepath.Dir(m)
		v, err := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		if err != nil || v <= bestV || checkBinDir(d) != nil {
			continue
		}
		best, bestV = d, v
	}
	return best
}

func checkBinDir(d string) error {
	for _, name := range []string{"postgres", "initdb"} {
		st, err := os.Stat(filepath.Join(d, name))
		if err != nil {
			return err
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return fmt.Errorf("%s is not executable", filepath.Join(d, name))
		}
	}
	return nil
}

var versionRE = regexp.MustCompile(`\(PostgreSQL\) (\d+)(\.\d+)?`)

func binaryVersion(ctx context.Context, binDir string) (int, string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "postgres"), "--version")
	cmd.Env = childEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, "", fmt.Errorf("pgtest: %s --version: %w\n%s (missing shared libraries? try ldd)", filepath.Join(binDir, "postgres"), err, tail(out, 10))
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return 0, "", fmt.Errorf("pgtest: cannot parse postgres --version output %q", out)
	}
	major, _ := strconv.Atoi(string(m[1]))
	return major, string(m[1]) + string(m[2]), nil
}

func childEnv() []string {
	env := make([]string, 0, len(os.Environ())+2)
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		// Keep the server's behaviour independent of the caller's libpq
		// settings and locale.
		if strings.HasPrefix(k, "PG") || strings.HasPrefix(k, "LC_") || k == "LANG" || k == "LANGUAGE" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "LANG=C")
}

func appendConf(path string, settings map[string]string) error {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	b.WriteString("\n# --- added by greenswap internal/pgtest ---\n")
	for _, k := range keys {
		// The config file reads backslash escapes inside quoted values.
		v := strings.ReplaceAll(strings.ReplaceAll(settings[k], `\`, `\\`), "'", "''")
		fmt.Fprintf(&b, "%s = '%s'\n", k, v)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(b.Bytes()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// traversable reports whether every directory from / down to dir can be
// searched by the user in cred.
func traversable(dir string, cred *syscall.Credential) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	for {
		st, err := os.Stat(dir)
		if err != nil {
			return false
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if !ok {
			return true
		}
		perm := st.Mode().Perm()
		var ok2 bool
		switch {
		case sys.Uid == cred.Uid:
			ok2 = perm&0o100 != 0
		case sys.Gid == cred.Gid:
			ok2 = perm&0o010 != 0
		default:
			ok2 = perm&0o001 != 0
		}
		if !ok2 {
			return false
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// sweepStale removes temp dirs left by test binaries that were killed before
// they could stop their cluster (Pdeathsig already killed the server). A dir
// is removed only when neither its owner process nor its postmaster lives.
func sweepStale(base string) {
	dirs, _ := filepath.Glob(filepath.Join(base, tempPrefix+"*"))
	for _, d := range dirs {
		owner, ok := readPid(filepath.Join(d, "owner.pid"))
		if !ok || alive(owner) {
			continue
		}
		if pm, ok := readPid(filepath.Join(d, "data", "postmaster.pid")); ok && alive(pm) {
			continue
		}
		_ = os.RemoveAll(d)
	}
}

func readPid(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	return pid, err == nil && pid > 0
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func tail(b []byte, lines int) string {
	s := strings.TrimRight(string(b), "\n")
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = append([]string{"..."}, parts[len(parts)-lines:]...)
	}
	return strings.Join(parts, "\n")
}
