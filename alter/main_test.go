package alter

import (
	"os"
	"testing"

	"github.com/greenswap/greenswap/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
