//go:build unix

package pgtest

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The order of preference, decided from its inputs alone: the machine that
// runs this has binaries and no Docker, so every other combination is here.
func TestChooseOrder(t *testing.T) {
	t.Parallel()
	noBin := ErrNoServerBinaries
	noDocker := errors.New("no Docker daemon answers at unix:///var/run/docker.sock: connect: no such file or directory")
	for _, tc := range []struct {
		name    string
		in      selectionInput
		want    selection
		wantErr []string // substrings of the error; nil = no error
	}{
		{
			name: "DSN wins over binaries and Docker",
			in:   selectionInput{DSN: "postgres://u@h/db", BinDir: "/pg/bin", DockerHost: DefaultDockerHost},
			want: selection{Source: fromDSN, DSN: "postgres://u@h/db"},
		},
		{
			name: "binaries win over Docker",
			in:   selectionInput{BinDir: "/pg/bin", DockerHost: DefaultDockerHost},
			want: selection{Source: fromBinaries, BinDir: "/pg/bin"},
		},
		{
			name: "binaries of the asked major",
			in:   selectionInput{WantMajor: 17, BinDir: "/pg17/bin", BinMajor: 17, DockerHost: DefaultDockerHost},
			want: selection{Source: fromBinaries, BinDir: "/pg17/bin"},
		},
		{
			name: "no binaries, Docker answers: container of the default major",
			in:   selectionInput{BinDirErr: noBin, DockerHost: "unix:///run/user/1000/docker.sock"},
			want: selection{Source: fromContainer, DockerHost: "unix:///run/user/1000/docker.sock", Major: 15},
		},
		{
			name: "found binaries of another major, Docker answers: container of the asked major",
			in:   selectionInput{WantMajor: 17, BinDir: "/usr/lib/postgresql/15/bin", BinMajor: 15, DockerHost: DefaultDockerHost},
			want: selection{Source: fromContainer, DockerHost: DefaultDockerHost, Major: 17},
		},
		{
			name:    "no binaries, no Docker: all three ways named, with why each failed",
			in:      selectionInput{BinDirErr: noBin, DockerHost: DefaultDockerHost, DockerErr: noDocker},
			wantErr: []string{EnvDSN, "not set", EnvBinDir, "apt-get install postgresql-15", "scripts/pg-fetch.sh", noBin.Error(), EnvDockerHost, "testcontainers", "-tags testcontainers", noDocker.Error()},
		},
		{
			name:    "binaries of another major, no Docker",
			in:      selectionInput{WantMajor: 17, BinDir: "/usr/lib/postgresql/15/bin", BinMajor: 15, DockerHost: DefaultDockerHost, DockerErr: noDocker},
			wantErr: []string{EnvDSN, "are PostgreSQL 15", EnvPGMajor + "=17", noDocker.Error()},
		},
		{
			name:    "explicit bindir that is wrong: no fallback to Docker",
			in:      selectionInput{BinDirExplicit: true, BinDirErr: errors.New(EnvBinDir + ": stat /nope/postgres: no such file or directory"), DockerHost: DefaultDockerHost},
			wantErr: []string{EnvBinDir, "/nope/postgres"},
		},
		{
			name:    "explicit bindir of another major than asked: no fallback to Docker",
			in:      selectionInput{BinDirExplicit: true, WantMajor: 17, BinDir: "/x/bin", BinMajor: 16, DockerHost: DefaultDockerHost},
			wantErr: []string{EnvBinDir, "PostgreSQL 16", "scripts/pg-fetch.sh 17"},
		},
		{
			name:    "bad major",
			in:      selectionInput{WantMajorErr: errors.New(EnvPGMajor + `="x": want …`), DSN: "postgres://u@h/db"},
			wantErr: []string{EnvPGMajor},
		},
	} {
		got, err := choose(tc.in)
		if tc.wantErr == nil {
			if err != nil || got != tc.want {
				t.Errorf("%s: choose = %+v, %v; want %+v", tc.name, got, err, tc.want)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: choose = %+v, want an error", tc.name, got)
			continue
		}
		for _, w := range tc.wantErr {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error does not say %q:\n%v", tc.name, w, err)
			}
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error is not one line:\n%v", tc.name, err)
		}
	}
	// The causes stay inspectable.
	_, err := choose(selectionInput{BinDirErr: fmtErr(noBin), DockerHost: DefaultDockerHost, DockerErr: noDocker})
	if !errors.Is(err, ErrNoServerBinaries) || !errors.Is(err, noDocker) {
		t.Errorf("errors.Is through the no-server error: %v", err)
	}
}

func fmtErr(err error) error { return errors.Join(err, errors.New("searched …")) }

func TestWantMajor(t *testing.T) {
	t.Parallel()
	for v, want := range map[string]int{"": 0, "17": 17, " 13 ": 13} {
		if got, err := wantMajor(envMap{EnvPGMajor: v}.get); err != nil || got != want {
			t.Errorf("wantMajor(%q) = %d, %v; want %d", v, got, err, want)
		}
	}
	for _, v := range []string{"x", "12", "-1", "17.2"} {
		if _, err := wantMajor(envMap{EnvPGMajor: v}.get); err == nil || !strings.Contains(err.Error(), EnvPGMajor) {
			t.Errorf("wantMajor(%q): error %v, want one naming %s", v, err, EnvPGMajor)
		}
	}
}

// envMap stands in for the process environment, so that tests of the
// selection can run in parallel (t.Setenv cannot).
type envMap map[string]string

func (m envMap) get(k string) string { return m[k] }

// fakeDocker is a stand-in for the Docker daemon's GET /_ping, on a Unix
// socket: there is no daemon on the project's machines, and the detection
// only ever asks this one question. (Not a stand-in for PostgreSQL: the
// database behaviour of every test still comes from a real server.)
type fakeDocker struct {
	host  string // unix://…
	pings atomic.Int64
	other atomic.Int64 // requests for anything but /_ping
}

func startFakeDocker(t *testing.T, status int) *fakeDocker {
	t.Helper()
	// A short path: sun_path holds 108 bytes, and t.TempDir's can be longer.
	dir, err := os.MkdirTemp("", "gs-docker-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDocker{host: "unix://" + sock}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/_ping" {
			f.other.Add(1)
			http.NotFound(w, r)
			return
		}
		f.pings.Add(1)
		w.WriteHeader(status)
		_, _ = w.Write([]byte("OK"))
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return f
}

// DOCKER_HOST at a socket where something answers /_ping: with no usable
// binaries the selection picks a container of the asked major, and this
// binary (without -tags testcontainers) says how to get one built.
func TestDockerAnswersSelectsContainer(t *testing.T) {
	t.Parallel()
	d := startFakeDocker(t, http.StatusOK)
	// Major 99: no local binaries are that, so the search passes them over.
	env := envMap{EnvDockerHost: d.host, EnvPGMajor: "99"}
	in := gatherSelection(t.Context(), env.get)
	if in.DockerErr != nil || in.DockerHost != d.host {
		t.Fatalf("detection: host %q, err %v; want %q answering", in.DockerHost, in.DockerErr, d.host)
	}
	if d.pings.Load() != 1 || d.other.Load() != 0 {
		t.Errorf("the fake daemon got %d pings and %d other requests; want exactly one GET /_ping", d.pings.Load(), d.other.Load())
	}
	sel, err := choose(in)
	if err != nil || sel != (selection{Source: fromContainer, DockerHost: d.host, Major: 99}) {
		t.Fatalf("choose = %+v, %v; want the container postgres:99 via %s", sel, err, d.host)
	}
	if containerSupport {
		return // starting it would talk to the fake daemon beyond /_ping
	}
	_, err = setup(env.get)
	for _, w := range []string{d.host, "-tags testcontainers", "make test", "postgres:99"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("setup without the tag: error %v, want it to say %q", err, w)
		}
	}
}

// No daemon where DOCKER_HOST points, and no usable binaries: the harness
// falls through to the error naming all three ways, with why the daemon did
// not answer.
func TestNoDaemonNoBinariesNamesAllWays(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "gs-docker-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	host := "unix://" + filepath.Join(dir, "nobody-listens.sock")
	env := envMap{EnvDockerHost: host, EnvPGMajor: "99"}
	_, err = setup(env.get)
	var nse *noServerError
	if !errors.As(err, &nse) {
		t.Fatalf("setup: %v; want the no-server error", err)
	}
	for _, w := range []string{EnvDSN, EnvBinDir, "apt-get install postgresql-15", EnvDockerHost, "testcontainers", host, "no such file"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not say %q:\n%v", w, err)
		}
	}
}

func TestDockerPing(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	t.Run("tcp", func(t *testing.T) {
		t.Parallel()
		var pings atomic.Int64
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/_ping" {
				pings.Add(1)
				_, _ = w.Write([]byte("OK"))
			}
		}))
		defer srv.Close()
		host := "tcp://" + srv.Listener.Addr().String()
		if err := pingDocker(ctx, host, envMap{}.get); err != nil || pings.Load() != 1 {
			t.Errorf("ping %s: %v after %d pings", host, err, pings.Load())
		}
	})
	t.Run("unix, not OK", func(t *testing.T) {
		t.Parallel()
		d := startFakeDocker(t, http.StatusServiceUnavailable)
		if err := pingDocker(ctx, d.host, envMap{}.get); err == nil || !strings.Contains(err.Error(), "503") {
			t.Errorf("ping of a daemon answering 503: %v", err)
		}
	})
	t.Run("TLS without certificates", func(t *testing.T) {
		t.Parallel()
		env := envMap{"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": t.TempDir()}
		if err := pingDocker(ctx, "tcp://127.0.0.1:2376", env.get); err == nil || !strings.Contains(err.Error(), "ca.pem") {
			t.Errorf("ping with DOCKER_TLS_VERIFY and no ca.pem: %v", err)
		}
	})
	t.Run("unsupported scheme", func(t *testing.T) {
		t.Parallel()
		if err := pingDocker(ctx, "ssh://me@box", envMap{}.get); err == nil || !strings.Contains(err.Error(), "ssh") {
			t.Errorf("ping over ssh: %v", err)
		}
	})
	t.Run("silent socket times out", func(t *testing.T) {
		t.Parallel()
		dir, err := os.MkdirTemp("", "gs-docker-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		l, err := net.Listen("unix", filepath.Join(dir, "s.sock"))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() { // accept and never answer
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
			}
		}()
		start := time.Now()
		err = pingDocker(ctx, "unix://"+filepath.Join(dir, "s.sock"), envMap{}.get)
		if took := time.Since(start); err == nil || took > dockerPingTimeout+time.Second {
			t.Errorf("ping of a silent socket: %v after %s; want an error within %s", err, took, dockerPingTimeout)
		}
	})
}

// Docker is asked only when the earlier ways fail: a set DSN, found local
// binaries, or an explicit GREENSWAP_PG_BINDIR (even a wrong one) mean no
// ping at all.
func TestDockerNotAskedWhenEarlierWayDecides(t *testing.T) {
	t.Parallel()
	d := startFakeDocker(t, http.StatusOK)
	ctx := context.Background()

	in := gatherSelection(ctx, envMap{EnvDSN: "postgres://u@h/db", EnvDockerHost: d.host}.get)
	if sel, err := choose(in); err != nil || sel.Source != fromDSN {
		t.Errorf("with a DSN: %+v, %v", sel, err)
	}
	in = gatherSelection(ctx, envMap{EnvBinDir: "/nonexistent/bin", EnvDockerHost: d.host}.get)
	if _, err := choose(in); err == nil || !strings.Contains(err.Error(), EnvBinDir) {
		t.Errorf("with a wrong %s: %v; want an error naming it", EnvBinDir, err)
	}
	if _, err := findBinDir(envMap{}.get); err == nil { // found without GREENSWAP_PG_BINDIR, as gatherSelection below looks
		in = gatherSelection(ctx, envMap{EnvDockerHost: d.host}.get)
		if sel, err := choose(in); err != nil || sel.Source != fromBinaries || sel.BinDir == "" {
			t.Errorf("with local binaries: %+v, %v", sel, err)
		}
	}
	if n := d.pings.Load(); n != 0 {
		t.Errorf("the daemon was pinged %d times; an earlier way had decided", n)
	}
}

// scripts/docker-answers.sh (which decides the Makefile's -tags
// testcontainers) gives the same answer as pingDocker, for the same daemons.
func TestDockerAnswersScriptAgrees(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("the script needs curl")
	}
	up := startFakeDocker(t, http.StatusOK)
	down := startFakeDocker(t, http.StatusInternalServerError)
	for _, host := range []string{up.host, down.host, "unix:///nonexistent/docker.sock", "ssh://me@box"} {
		cmd := exec.Command("bash", "../../scripts/docker-answers.sh")
		cmd.Env = append(os.Environ(), EnvDockerHost+"="+host, "DOCKER_TLS_VERIFY=")
		scriptSays := cmd.Run() == nil
		goSays := pingDocker(t.Context(), host, envMap{}.get) == nil
		if scriptSays != goSays {
			t.Errorf("DOCKER_HOST=%s: the script says answers=%v, pingDocker says %v", host, scriptSays, goSays)
		}
		if want := host == up.host; goSays != want {
			t.Errorf("DOCKER_HOST=%s: answers=%v, want %v", host, goSays, want)
		}
	}
}

// The container's command line, given to a real postgres of the local
// binaries (-C prints a setting as the server would have it and exits): every
// harness setting takes effect, and nothing decides where it listens.
func TestContainerSpec(t *testing.T) {
	t.Parallel()
	spec := newContainerSpec(17)
	if spec.Image != "postgres:17" || spec.Cmd[0] != "postgres" {
		t.Fatalf("spec %+v", spec)
	}
	for k, want := range map[string]string{"POSTGRES_USER": SuperUser, "POSTGRES_HOST_AUTH_METHOD": "trust", "POSTGRES_INITDB_ARGS": "--encoding=UTF8 --no-locale"} {
		if got := spec.Env[k]; got != want {
			t.Errorf("env %s = %q, want %q", k, got, want)
		}
	}
	args := strings.Join(spec.Cmd, " ")
	for _, k := range []string{"listen_addresses", "unix_socket_directories"} {
		if strings.Contains(args, k) {
			t.Errorf("the container's command sets %s: %s", k, args)
		}
	}
	c := ensure(t).cluster
	if c == nil {
		t.Skip("no local cluster to run postgres -C against")
	}
	for k, want := range serverSettings() {
		if k == "listen_addresses" || k == "unix_socket_directories" {
			continue
		}
		if !strings.Contains(args, "-c "+k+"="+want) {
			t.Errorf("the container's command lacks -c %s=%s: %s", k, want, args)
		}
		cmd := exec.Command(filepath.Join(c.BinDir, "postgres"), append([]string{"-C", k, "-D", c.DataDir}, spec.Cmd[1:]...)...)
		cmd.Env = childEnv()
		out, err := cmd.CombinedOutput()
		// -C prints base units (shared_buffers in 8kB pages): compare with the
		// running cluster, which got the same settings from its config file.
		want = queryString(t, c.DSN("postgres"), "SELECT setting FROM pg_settings WHERE name = $1", k)
		if got := strings.TrimSpace(string(out)); err != nil || got != want {
			t.Errorf("postgres -C %s with the container's command: %q, %v; the local cluster has %q", k, got, err, want)
		}
	}
}

// The container's init script, run as the image would run it ($PGDATA set,
// after initdb) on a real data directory: PostgreSQL parses the line it adds
// as trust for replication connections from any host.
func TestContainerHBAScript(t *testing.T) {
	t.Parallel()
	c := ensure(t).cluster
	if c == nil {
		t.Skip("no local cluster whose pg_hba.conf to check")
	}
	dir := t.TempDir()
	hba := filepath.Join(dir, "pg_hba.conf")
	orig, err := os.ReadFile(filepath.Join(c.DataDir, "pg_hba.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hba, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", newContainerSpec(15).InitScript)
	cmd.Env = append(os.Environ(), "PGDATA="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("init script: %v\n%s", err, out)
	}
	after, err := os.ReadFile(hba)
	if err != nil {
		t.Fatal(err)
	}
	added := strings.TrimPrefix(string(after), string(orig))
	if added == string(after) || strings.Count(added, "\n") != 1 {
		t.Fatalf("the script should append one line to pg_hba.conf; it added %q", added)
	}
	// Parse it the way the server does: as the cluster's own hba file, read
	// by pg_hba_file_rules (from disk, not what is loaded), then put back.
	live := filepath.Join(c.DataDir, "pg_hba.conf")
	if err := os.WriteFile(live, after, 0); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := os.WriteFile(live, orig, 0); err != nil {
			t.Errorf("restore %s: %v", live, err)
		}
	}()
	got := queryString(t, c.DSN("postgres"), `
		SELECT count(*) FILTER (WHERE error IS NOT NULL) || ' errors, ' ||
		       count(*) FILTER (WHERE type = 'host' AND database = '{replication}' AND user_name = '{all}' AND address = 'all' AND auth_method = 'trust')
		FROM pg_hba_file_rules`)
	if got != "0 errors, 1" {
		t.Errorf("pg_hba_file_rules with the script's line: %s; want 0 errors, 1 trust rule for replication from all hosts", got)
	}
}
