package spec

import (
	"strings"
	"testing"
	"time"
)

const guardBase = `name: orders_v2
table: public.orders
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY)
`

// TestGuardSection: the guard: section decodes strictly; "off" switches a
// bound off; the defaults fill what is left out; the flags override field
// by field.
func TestGuardSection(t *testing.T) {
	t.Parallel()
	s, err := ParseSpec([]byte(guardBase+`guard:
  rollback_rate: 0.2
  lock_waits: 5
  lock_wait_time: off
  latency_ratio: 3
  probe_cmd: curl -fsS http://app/health
  max_open: 10m
`), "orders.yaml", "")
	if err != nil {
		t.Fatal(err)
	}
	g := s.Guard
	if g.RollbackRate != 0.2 || g.LockWaits != 5 || g.LockWaitTime.Duration != GuardOff || g.LatencyRatio != 3 ||
		g.ProbeCmd != "curl -fsS http://app/health" || g.MaxOpen.Duration != 10*time.Minute {
		t.Fatalf("decoded %+v", g)
	}
	d := g.WithDefaults()
	if d.LockWaitTime.Duration != 0 || d.ReplicaLag.Duration != DefaultGuardReplicaLag || d.Every.Duration != DefaultGuardEvery ||
		d.ProbeTimeout.Duration != DefaultGuardProbeTimeout {
		t.Fatalf("with defaults %+v: lock_wait_time off, the others default", d)
	}
	o := g.Override(GuardOptions{LockWaits: GuardOff, ProbeSQL: "SELECT true"}).WithDefaults()
	if o.LockWaits != 0 || o.ProbeSQL != "SELECT true" || o.RollbackRate != 0.2 {
		t.Fatalf("override %+v", o)
	}
	if z := (GuardOptions{}).WithDefaults(); z.LockWaitTime.Duration != DefaultGuardLockWaitTime || z.RollbackRate != 0 || z.MaxOpen.Duration != DefaultGuardMaxOpen {
		t.Fatalf("defaults %+v", z)
	}
}

// TestGuardSectionErrors: each bad value is a spec error naming the file,
// the line and the field.
func TestGuardSectionErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ body, want string }{
		{"guard:\n  rollbak_rate: 0.2\n", "orders.yaml:6: guard.rollbak_rate: unknown field"},
		{"guard:\n  rollback_rate: 1.5\n", "orders.yaml:6: guard.rollback_rate: must be a share between 0 and 1"},
		{"guard:\n  latency_ratio: 0.5\n", "orders.yaml:6: guard.latency_ratio: must be above 1"},
		{"guard:\n  lock_waits: -3\n", "orders.yaml:6: guard.lock_waits: must not be negative"},
		{"guard:\n  every: 1s\n  max_open: -5s\n", "orders.yaml:7: guard.max_open: must not be negative"},
		{"guard:\n  probe_sql: '  '\n", "orders.yaml:6: guard.probe_sql: is blank"},
		{"guard:\n  deadlocks: many\n", "orders.yaml:6: guard.deadlocks"},
		{"guard: 3\n", "orders.yaml:5: guard: must be a mapping"},
	} {
		_, err := ParseSpec([]byte(guardBase+c.body), "orders.yaml", "")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want %q", c.body, err, c.want)
		}
	}
}
