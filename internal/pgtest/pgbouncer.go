//go:build unix

package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PgbouncerOptions tunes StartPgbouncer.
type PgbouncerOptions struct {
	// PoolMode is the default pool_mode: "" = transaction, the mode that
	// breaks session state (the one production poolers run).
	PoolMode string
	// Users may log in besides the superuser (auth_type = trust still wants
	// every user name in auth_file).
	Users []string
	// Aliases are extra [databases] entries: alias → settings appended to
	// the alias's "host=… port=… dbname=<the test database>", e.g.
	// "connect_query='SET search_path = s, public'". The test database's
	// own name is always an alias, with no extra settings.
	Aliases map[string]string
	// Settings are extra [pgbouncer] settings (they override the defaults).
	Settings map[string]string
}

// Pgbouncer is a pgbouncer started by StartPgbouncer in front of one test
// database; it is stopped in t.Cleanup (before the database is dropped).
type Pgbouncer struct {
	Port    int
	LogPath string
	DBName  string // the test database, also an alias of the same name
}

// EnvPgbouncer names the pgbouncer binary (default: pgbouncer on $PATH, else
// /usr/sbin/pgbouncer, where Debian's package puts it).
const EnvPgbouncer = "GREENSWAP_PGBOUNCER"

const pgbouncerPrefix = "greenswap-pgbouncer-"

// PgbouncerBinary finds the pgbouncer binary ("" when there is none).
func PgbouncerBinary() string {
	if p := os.Getenv(EnvPgbouncer); p != "" {
		return p
	}
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p
	}
	if st, err := os.Stat("/usr/sbin/pgbouncer"); err == nil && !st.IsDir() {
		return "/usr/sbin/pgbouncer"
	}
	return ""
}

// StartPgbouncer starts a pgbouncer (as nobody when we are root: it refuses
// root) on a free port of 127.0.0.1, auth_type trust, in front of the
// database of dsn (a NewDB DSN). Without a pgbouncer binary the test is
// skipped, except under CI (CI=true), where it fails: .ci/run installs one.
func StartPgbouncer(t testing.TB, dsn string, opts PgbouncerOptions) *Pgbouncer {
	t.Helper()
	bin := PgbouncerBinary()
	if bin == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("pgtest: no pgbouncer binary under CI (.ci/run installs Debian's pgbouncer; or set " + EnvPgbouncer + ")")
		}
		t.Skip("pgtest: no pgbouncer binary: apt-get install pgbouncer (or set " + EnvPgbouncer + ") to run this test")
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("pgtest: pgbouncer: parse %s: %v", dsn, err)
	}
	cred, _, err := serverUser()
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.MkdirTemp("", pgbouncerPrefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if cred != nil {
		if err := os.Chown(root, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
		if !traversable(root, cred) {
			t.Fatalf("pgtest: pgbouncer: %s is not reachable by uid %d", root, cred.Uid)
		}
	}
	pb := &Pgbouncer{LogPath: filepath.Join(root, "pgbouncer.log"), DBName: cfg.Database}

	users := append([]string{cfg.User, SuperUser}, opts.Users...)
	var auth strings.Builder
	for _, u := range users {
		fmt.Fprintf(&auth, "%q \"\"\n", u)
	}
	authFile := filepath.Join(root, "userlist.txt")
	if err := os.WriteFile(authFile, []byte(auth.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	target := fmt.Sprintf("host=%s port=%d dbname=%s", cfg.Host, cfg.Port, cfg.Database)
	aliases := map[string]string{cfg.Database: ""}
	for a, extra := range opts.Aliases {
		aliases[a] = extra
	}
	mode := opts.PoolMode
	if mode == "" {
		mode = "transaction"
	}
	settings := map[string]string{
		"listen_addr":       "127.0.0.1",
		"unix_socket_dir":   "",
		"auth_type":         "trust",
		"auth_file":         authFile,
		"pool_mode":         mode,
		"logfile":           pb.LogPath,
		"admin_users":       SuperUser,
		"max_client_conn":   "500",
		"default_pool_size": "20",
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}

	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		settings["listen_port"] = strconv.Itoa(port)
		ini := filepath.Join(root, "pgbouncer.ini")
		if err := os.WriteFile(ini, []byte(pgbouncerIni(aliases, target, settings)), 0o644); err != nil {
			t.Fatal(err)
		}
		pb.Port = port
		stop, err := pb.start(t.Context(), bin, ini, root, cred)
		if err == nil {
			t.Cleanup(stop)
			return pb
		}
		if attempt < 5 && strings.Contains(err.Error(), "in use") {
			continue
		}
		t.Fatal(err)
	}
}

func pgbouncerIni(aliases map[string]string, target string, settings map[string]string) string {
	var b strings.Builder
	b.WriteString("[databases]\n")
	names := make([]string, 0, len(aliases))
	for a := range aliases {
		names = append(names, a)
	}
	sort.Strings(names)
	for _, a := range names {
		fmt.Fprintf(&b, "%s = %s %s\n", a, target, aliases[a])
	}
	b.WriteString("\n[pgbouncer]\n")
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, settings[k])
	}
	return b.String()
}

// start runs pgbouncer in the foreground and waits until it answers; the
// returned func stops it (SIGTERM: immediate shutdown; SIGKILL after 5 s).
func (pb *Pgbouncer) start(ctx context.Context, bin, ini, dir string, cred *syscall.Credential) (func(), error) {
	cmd := exec.Command(bin, ini)
	cmd.Dir = dir
	cmd.Env = childEnv()
	out, err := os.Create(filepath.Join(dir, "stderr.log"))
	if err != nil {
		return nil, err
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	setProcAttrs(cmd, cred)
	exited, err := startTied(cmd)
	if err != nil {
		return nil, fmt.Errorf("pgtest: start pgbouncer: %w", err)
	}
	pid := cmd.Process.Pid
	stop := func() {
		_ = killGroup(pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = killGroup(pid, syscall.SIGKILL)
			<-exited
		}
	}
	deadline := time.Now().Add(readyTimeout)
	for {
		select {
		case werr := <-exited:
			return nil, fmt.Errorf("pgtest: pgbouncer exited during startup (%v):\n%s", werr, pb.logs(dir))
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, pb.DSN(pb.DBName, SuperUser))
		if err == nil {
			_, err = conn.Exec(cctx, "SELECT 1", pgx.QueryExecModeSimpleProtocol)
			conn.Close(context.Background())
		}
		cancel()
		if err == nil {
			return stop, nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("pgtest: pgbouncer not answering on port %d (last error: %v):\n%s", pb.Port, err, pb.logs(dir))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (pb *Pgbouncer) logs(dir string) string {
	var s string
	for _, f := range []string{filepath.Join(dir, "stderr.log"), pb.LogPath} {
		if b, err := os.ReadFile(f); err == nil {
			s += tail(b, 20)
		}
	}
	return s
}

// DSN is a postgres:// URL for alias through this pgbouncer, as user.
func (pb *Pgbouncer) DSN(alias, user string) string {
	u := url.URL{Scheme: "postgres", User: url.User(user), Host: "127.0.0.1:" + strconv.Itoa(pb.Port), Path: "/" + alias,
		RawQuery: "sslmode=disable"}
	return u.String()
}
