// Package clibuild builds the real greenswap binary for the programs that
// drive it as a subprocess (make bench, make demo), so they measure and show
// exactly what an operator runs.
package clibuild

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// ModuleRoot finds the directory holding go.mod, from the working directory up.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory: run from the greenswap repository")
		}
		dir = parent
	}
}

// Build builds cmd/greenswap of the module at root into dir and returns the
// binary's path.
func Build(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "greenswap")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/greenswap")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/greenswap: %w\n%s", err, out)
	}
	return bin, nil
}
