//go:build unix

package pgtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Environment variables read by the selection of the server (the others are
// in cluster.go).
const (
	// EnvPGMajor asks for a server of this major version (e.g. 17). It picks
	// the image postgres:<major> on the container path, and local binaries
	// found by the automatic search are passed over when they are another
	// major. Default: any local major; 15 for the image.
	EnvPGMajor = "GREENSWAP_TEST_PG_MAJOR"
	// EnvDockerHost is the Docker daemon's address, as the docker CLI and
	// testcontainers-go read it.
	EnvDockerHost = "DOCKER_HOST"
)

// DefaultDockerHost is the daemon's address when DOCKER_HOST is unset.
const DefaultDockerHost = "unix:///var/run/docker.sock"

// DefaultImageMajor is the major of the postgres image when EnvPGMajor is unset.
const DefaultImageMajor = 15

// dockerPingTimeout bounds the daemon detection: a machine without Docker
// must not wait for it before hearing that there is no server.
const dockerPingTimeout = 2 * time.Second

// ErrNoServerBinaries is wrapped by FindBinDir (and so StartCluster) when no
// postgres + initdb were found, so callers that need a cluster of their own
// (standbys, a second server) can skip on a machine that has only Docker.
var ErrNoServerBinaries = errors.New("pgtest: no PostgreSQL server binaries found (postgres + initdb)")

// serverSource is where the package's server comes from.
type serverSource int

const (
	fromDSN serverSource = iota + 1
	fromBinaries
	fromContainer
)

// selectionInput is everything the choice of the server depends on.
// gatherSelection fills it from the machine, choose decides from it alone,
// so the order can be tested on a machine that has only one of the ways.
type selectionInput struct {
	DSN string // GREENSWAP_TEST_DSN

	WantMajor    int   // GREENSWAP_TEST_PG_MAJOR; 0 = unset
	WantMajorErr error // GREENSWAP_TEST_PG_MAJOR is not a usable number

	BinDir         string // local server binaries; "" = none found
	BinDirErr      error  // why BinDir is "" (or why the explicit one is wrong)
	BinDirExplicit bool   // GREENSWAP_PG_BINDIR is set: no fallback past it
	BinMajor       int    // the major of BinDir's postgres; 0 = not asked

	DockerHost string // the daemon's address that was (or would be) pinged
	DockerErr  error  // nil = it answered GET /_ping
}

// selection is choose's verdict.
type selection struct {
	Source     serverSource
	DSN        string // fromDSN
	BinDir     string // fromBinaries
	DockerHost string // fromContainer
	Major      int    // fromContainer: the image's major
}

// choose applies the order of preference: GREENSWAP_TEST_DSN, then local
// server binaries, then a container when a Docker daemon answers. An
// explicit GREENSWAP_PG_BINDIR or GREENSWAP_TEST_PG_MAJOR that cannot be
// honoured is an error rather than a silent fallback to another server.
func choose(in selectionInput) (selection, error) {
	if in.WantMajorErr != nil {
		return selection{}, in.WantMajorErr
	}
	if in.DSN != "" {
		return selection{Source: fromDSN, DSN: in.DSN}, nil
	}
	binWhy := in.BinDirErr
	if in.BinDir != "" {
		if in.WantMajor == 0 || in.BinMajor == in.WantMajor {
			return selection{Source: fromBinaries, BinDir: in.BinDir}, nil
		}
		binWhy = fmt.Errorf("the binaries in %s are PostgreSQL %d, and %s=%d asks for %d", in.BinDir, in.BinMajor, EnvPGMajor, in.WantMajor, in.WantMajor)
		if in.BinDirExplicit {
			return selection{}, fmt.Errorf("pgtest: %w: point %s at PostgreSQL %d binaries (scripts/pg-fetch.sh %d prints a directory), or unset one of the two", binWhy, EnvBinDir, in.WantMajor, in.WantMajor)
		}
	} else if in.BinDirExplicit {
		return selection{}, in.BinDirErr
	}
	if in.DockerErr == nil && in.DockerHost != "" {
		major := in.WantMajor
		if major == 0 {
			major = DefaultImageMajor
		}
		return selection{Source: fromContainer, DockerHost: in.DockerHost, Major: major}, nil
	}
	return selection{}, &noServerError{bin: binWhy, docker: in.DockerErr, dockerHost: in.DockerHost}
}

// noServerError says that none of the three ways to get a server works, why
// each does not, and how to get any one of them.
type noServerError struct {
	bin        error
	docker     error
	dockerHost string
}

func (e *noServerError) Error() string {
	host := e.dockerHost
	if host == "" {
		host = DefaultDockerHost
	}
	return fmt.Sprintf("pgtest: no PostgreSQL server for the tests; any one of three ways will do: "+
		"(1) %s=postgres://… naming a superuser on a server with wal_level=logical (not set); "+
		"(2) local server binaries (postgres + initdb: apt-get install postgresql-15, or %s=$(scripts/pg-fetch.sh 17)) (%v); "+
		"(3) a Docker daemon for testcontainers-go (%s, default %s; then `make test`, which adds -tags testcontainers) (%v)",
		EnvDSN, EnvBinDir, e.bin, EnvDockerHost, DefaultDockerHost, e.docker)
}

func (e *noServerError) Unwrap() []error {
	var errs []error
	for _, err := range []error{e.bin, e.docker} {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// gatherSelection reads the machine for choose, lazily: binaries are looked
// for only without a DSN, and the daemon is pinged only when no usable
// binaries were found. getenv is os.Getenv except in tests.
func gatherSelection(ctx context.Context, getenv func(string) string) selectionInput {
	var in selectionInput
	in.WantMajor, in.WantMajorErr = wantMajor(getenv)
	if in.DSN = getenv(EnvDSN); in.DSN != "" || in.WantMajorErr != nil {
		return in
	}
	in.BinDirExplicit = getenv(EnvBinDir) != ""
	in.BinDir, in.BinDirErr = findBinDir(getenv)
	if in.BinDir != "" && in.WantMajor != 0 {
		major, _, err := binaryVersion(ctx, in.BinDir)
		if err != nil {
			in.BinDir, in.BinDirErr = "", err
		}
		in.BinMajor = major
	}
	if in.BinDir != "" && (in.WantMajor == 0 || in.BinMajor == in.WantMajor) {
		return in
	}
	if in.BinDirExplicit {
		return in // it is used, or it is the error: never a fallback past it
	}
	in.DockerHost = getenv(EnvDockerHost)
	if in.DockerHost == "" {
		in.DockerHost = DefaultDockerHost
	}
	in.DockerErr = pingDocker(ctx, in.DockerHost, getenv)
	return in
}

func wantMajor(getenv func(string) string) (int, error) {
	v := getenv(EnvPGMajor)
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 13 {
		return 0, fmt.Errorf("pgtest: %s=%q: want a PostgreSQL major version, 13 or newer (e.g. 17); the harness needs DROP DATABASE … WITH (FORCE)", EnvPGMajor, v)
	}
	return n, nil
}

// pingDocker reports whether a Docker (or Docker-compatible) daemon answers
// GET /_ping at host (unix://path or tcp://host:port; TLS when
// DOCKER_TLS_VERIFY is set, with the certificates in DOCKER_CERT_PATH). It
// uses net/http rather than a Docker client so that the default build of
// the harness does not link one.
func pingDocker(ctx context.Context, host string, getenv func(string) string) error {
	ctx, cancel := context.WithTimeout(ctx, dockerPingTimeout)
	defer cancel()
	u, err := url.Parse(host)
	if err != nil {
		return fmt.Errorf("%s=%q is not a URL: %w", EnvDockerHost, host, err)
	}
	tr := &http.Transport{DisableKeepAlives: true}
	base := ""
	switch u.Scheme {
	case "unix":
		path := u.Path
		if path == "" {
			path = u.Opaque
		}
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		base = "http://docker"
	case "tcp", "http", "https":
		scheme := "http"
		if u.Scheme == "https" || getenv("DOCKER_TLS_VERIFY") != "" {
			cfg, err := dockerTLS(getenv)
			if err != nil {
				return err
			}
			tr.TLSClientConfig = cfg
			scheme = "https"
		}
		base = scheme + "://" + u.Host
	default:
		return fmt.Errorf("%s=%q: the harness pings only unix:// and tcp:// daemons (scheme %q); use one of those, or %s", EnvDockerHost, host, u.Scheme, EnvDSN)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/_ping", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("no Docker daemon answers at %s: %w", host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the Docker daemon at %s answers GET /_ping with %s", host, resp.Status)
	}
	return nil
}

// dockerTLS is the client side of a daemon with DOCKER_TLS_VERIFY: the CA
// and client pair in DOCKER_CERT_PATH (default ~/.docker), as the docker CLI
// reads them.
func dockerTLS(getenv func(string) string) (*tls.Config, error) {
	dir := getenv("DOCKER_CERT_PATH")
	if dir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return nil, fmt.Errorf("DOCKER_TLS_VERIFY is set, DOCKER_CERT_PATH is not, and there is no home directory: %w", err)
		}
		dir = filepath.Join(home, ".docker")
	}
	ca, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, fmt.Errorf("DOCKER_TLS_VERIFY is set: %w (set DOCKER_CERT_PATH to the directory of ca.pem, cert.pem, key.pem)", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("DOCKER_TLS_VERIFY is set: no certificate in %s", filepath.Join(dir, "ca.pem"))
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		return nil, fmt.Errorf("DOCKER_TLS_VERIFY is set: client certificate in %s: %w", dir, err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

// containerServer is a PostgreSQL in a container started by startContainer
// (container_tc.go; container_notc.go without -tags testcontainers).
type containerServer struct {
	Image     string // e.g. postgres:15
	DSN       string // postgres:// URL of the superuser, database postgres
	terminate func() error
}

// Stop removes the container. Safe to call twice.
func (c *containerServer) Stop() error {
	if c == nil || c.terminate == nil {
		return nil
	}
	f := c.terminate
	c.terminate = nil
	return f()
}

// containerSpec is what startContainer asks Docker for. It is built here,
// in the default build, so that it is tested where no daemon runs.
type containerSpec struct {
	Image string
	Cmd   []string          // postgres -c k=v …
	Env   map[string]string // the image's POSTGRES_* variables
	// InitScript runs once as the image's init script, after its initdb;
	// $PGDATA is set.
	InitScript     string
	InitScriptPath string
}

// hbaScript: the image trusts every host for ordinary connections
// (POSTGRES_HOST_AUTH_METHOD=trust) but replication connections only from
// inside the container, and the tests open them from the host, through the
// mapped port.
const hbaScript = `#!/bin/sh
set -e
echo 'host replication all all trust' >> "$PGDATA/pg_hba.conf"
`

func newContainerSpec(major int) containerSpec {
	// The settings of a throwaway cluster, minus where it listens: the
	// image's entrypoint needs its socket, and inside the container postgres
	// listens on every address.
	settings := serverSettings()
	delete(settings, "listen_addresses")
	delete(settings, "unix_socket_directories")
	cmd := []string{"postgres"}
	for _, k := range slices.Sorted(maps.Keys(settings)) {
		cmd = append(cmd, "-c", k+"="+settings[k])
	}
	return containerSpec{
		Image: "postgres:" + strconv.Itoa(major),
		Cmd:   cmd,
		Env: map[string]string{
			"POSTGRES_USER":             SuperUser,
			"POSTGRES_HOST_AUTH_METHOD": "trust",
			// The encoding and collation of a local cluster's initdb.
			"POSTGRES_INITDB_ARGS": "--encoding=UTF8 --no-locale",
		},
		InitScript:     hbaScript,
		InitScriptPath: "/docker-entrypoint-initdb.d/greenswap-replication-hba.sh",
	}
}
