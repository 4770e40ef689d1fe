package main

import (
	"os"
	"testing"

	"github.com/greenswap/greenswap/internal/pgtest"
)

// TestMain gives the CLI tests a throwaway PostgreSQL (started lazily, on
// the first pgtest.NewDB) and stops it after the run.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
