//go:build unix && testcontainers

package pgtest

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/moby/moby/api/types/container"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

// containerSupport: see container_notc.go.
const containerSupport = true

// startContainer starts the official postgres:<major> image with the
// harness's settings, and returns once a connection from here succeeds.
// dockerHost is the address that answered the ping; testcontainers-go finds
// the daemon by itself (DOCKER_HOST, ~/.testcontainers.properties, the
// default socket). The container is removed by Stop, and by
// testcontainers' reaper (Ryuk) if this process dies first.
func startContainer(ctx context.Context, dockerHost string, major int) (_ *containerServer, err error) {
	spec := newContainerSpec(major)
	image := spec.Image
	ctr, err := testcontainers.Run(ctx, image,
		testcontainers.WithExposedPorts("5432/tcp"),
		testcontainers.WithEnv(spec.Env),
		testcontainers.WithCmd(spec.Cmd...),
		testcontainers.WithFiles(testcontainers.ContainerFile{
			Reader:            strings.NewReader(spec.InitScript),
			ContainerFilePath: spec.InitScriptPath,
			FileMode:          0o755,
		}),
		testcontainers.WithLabels(map[string]string{"greenswap.pgtest.pid": strconv.Itoa(os.Getpid())}),
		// Docker's default 64MB /dev/shm is too small for parallel query
		// workers next to 128MB of shared_buffers.
		testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) { hc.ShmSize = 512 << 20 }),
		// The entrypoint starts a temporary server for its init scripts
		// first: ready is the second "ready" line, then the port.
		testcontainers.WithWaitStrategyAndDeadline(3*time.Minute,
			wait.ForLog("database system is ready to accept connections").WithOccurrence(2),
			wait.ForListeningPort("5432/tcp")),
	)
	cs := &containerServer{Image: image}
	if ctr != nil {
		cs.terminate = func() error { return testcontainers.TerminateContainer(ctr) }
	}
	defer func() {
		if err != nil {
			_ = cs.Stop()
		}
	}()
	if err != nil {
		return nil, fmt.Errorf("pgtest: start container %s through the Docker daemon at %s: %w (is the image pullable? `docker pull %s`)", image, dockerHost, err, image)
	}
	endpoint, err := ctr.PortEndpoint(ctx, "5432/tcp", "")
	if err != nil {
		return nil, fmt.Errorf("pgtest: container %s: the host port of 5432: %w", image, err)
	}
	cs.DSN = "postgres://" + SuperUser + "@" + endpoint + "/postgres?sslmode=disable"
	if err := waitConnectable(ctx, cs.DSN); err != nil {
		return nil, fmt.Errorf("pgtest: container %s is up, but %s does not accept connections from here: %w", image, endpoint, err)
	}
	return cs, nil
}

// waitConnectable polls until a connection succeeds: the log line and the
// port can precede the proxy's forwarding on some Docker setups.
func waitConnectable(ctx context.Context, dsn string) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, dsn)
		if err == nil {
			err = conn.Ping(cctx)
			conn.Close(context.Background())
		}
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
