package stream

import "testing"

// The visibility wait's reading of pg_current_snapshot(): a transaction is
// still in progress when the snapshot lists it, or when it is at or past
// the snapshot's xmax (its commit record already decoded, its backend not
// yet out of the proc array) — trap 8.
func TestSnapshotInProgress(t *testing.T) {
	s, err := parseSnapshot("100:105:100,103")
	if err != nil {
		t.Fatal(err)
	}
	for x, want := range map[uint64]bool{99: false, 100: true, 101: false, 103: true, 104: false, 105: true, 200: true} {
		if got := s.inProgress(x); got != want {
			t.Errorf("xid %d in 100:105:100,103: in progress %v, want %v", x, got, want)
		}
	}
	if s, err := parseSnapshot("7:7:"); err != nil || s.inProgress(6) || !s.inProgress(7) {
		t.Errorf("empty in-progress list: %+v, %v", s, err)
	}
	for _, bad := range []string{"", "1:2", "a:2:", "1:2:x"} {
		if _, err := parseSnapshot(bad); err == nil {
			t.Errorf("parseSnapshot(%q) accepted", bad)
		}
	}
}
