package shadow

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/spec"
)

// TestCreateGreenSQLPartitions: target.partitions run in green's schema
// right after the DDL, in order, and PartitionStatement maps each
// statement back to its item.
func TestCreateGreenSQLPartitions(t *testing.T) {
	t.Parallel()
	s, err := spec.LoadSpecFile(filepath.Join("..", "spec", "testdata", "partitioned.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	sql := CreateGreenSQL(NamesFor(s.Name, s.AppTable()), s)
	if len(sql) != 3+5+1 || sql[3] != s.Target.Partitions[0] || !strings.HasSuffix(sql[5], "TO (1000000)") || sql[8] != "RESET search_path" {
		t.Errorf("CreateGreenSQL: %q", sql)
	}
	for stmt, want := range map[int]int{0: -1, 2: -1, 3: 0, 7: 4, 8: -1} {
		if got := PartitionStatement(s, stmt); got != want {
			t.Errorf("PartitionStatement(%d) = %d, want %d", stmt, got, want)
		}
	}
}
