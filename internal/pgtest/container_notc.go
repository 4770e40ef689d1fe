//go:build unix && !testcontainers

package pgtest

import (
	"context"
	"fmt"
)

// containerSupport says whether this test binary can start a container: it
// needs -tags testcontainers, which keeps testcontainers-go (and the Docker
// client under it) out of every build that does not ask for it.
const containerSupport = false

func startContainer(_ context.Context, dockerHost string, major int) (*containerServer, error) {
	return nil, fmt.Errorf("pgtest: a Docker daemon answers at %s (and there is no other server), but this test binary was built without -tags testcontainers, so it cannot start postgres:%d; `make test` adds the tag when Docker answers, or run go test -tags testcontainers", dockerHost, major)
}
