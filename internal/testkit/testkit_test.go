package testkit

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// The oracle counts a row missing on either side, and a row that differs
// in one column twice (once each way); equal sets give 0.
func TestDiffCountsBothWays(t *testing.T) {
	t.Parallel()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE TABLE a (id int, v text); CREATE TABLE b (id int, v text);
		INSERT INTO a VALUES (1, 'x'), (2, 'y'), (3, 'z'); INSERT INTO b VALUES (1, 'x'), (2, 'Y'), (4, 'w')`)
	if n := Diff(t, pool, "SELECT id, v FROM a", "SELECT id, v FROM b"); n != 4 {
		t.Errorf("Diff = %d, want 4 (2 differs both ways, 3 only in a, 4 only in b)", n)
	}
	if n := Diff(t, pool, "SELECT id, v FROM a", "SELECT id, v FROM a"); n != 0 {
		t.Errorf("Diff of a with itself = %d", n)
	}
}

// A role made by CreateRole logs in, has exactly the grants given, and is
// gone once its test has ended.
func TestCreateRole(t *testing.T) {
	t.Parallel()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `CREATE TABLE granted (x int); CREATE TABLE other (x int)`)
	role := RoleName(t, dsn, "tk_reader")
	t.Run("as the role", func(t *testing.T) {
		CreateRole(t, dsn, role, "GRANT SELECT ON granted TO {role}")
		c := ConnectAs(t, dsn, role)
		var who string
		if err := c.QueryRow(context.Background(), "SELECT current_user").Scan(&who); err != nil || who != role {
			t.Fatalf("current_user = %q (%v), want %q", who, err, role)
		}
		if _, err := c.Exec(context.Background(), "SELECT * FROM granted"); err != nil {
			t.Errorf("the granted table: %v", err)
		}
		_, err := c.Exec(context.Background(), "SELECT * FROM other")
		if code := db.SQLState(err); code != "42501" {
			t.Errorf("another table: %v (SQLSTATE %q), want 42501", err, code)
		}
	})
	if n := Count(t, pool, "SELECT count(*) FROM pg_roles WHERE rolname = $1", role); n != 0 {
		t.Errorf("role %s still exists after its test", role)
	}
}

// Both mixes write (and only through the table named), report no errors
// on a plain table, and stop with Stop.
func TestWorkload(t *testing.T) {
	t.Parallel()
	for _, mix := range []Mix{MixApp, MixStream} {
		pool, dsn := pgtest.NewPool(t)
		pgtest.Exec(t, dsn, `CREATE TABLE orders (id bigserial PRIMARY KEY, tenant int NOT NULL, email text, amount int NOT NULL,
			note text, created_at timestamptz NOT NULL DEFAULT now());
			INSERT INTO orders (tenant, amount) SELECT g % 7, g FROM generate_series(1, 200) g`)
		w := StartWorkload(t, dsn, WorkloadOptions{Table: "orders", Workers: 2, Seed: 1, Mix: mix, NoNulls: true})
		WaitFor(t, 30*time.Second, "200 operations", func() bool { return w.Ops.Load() >= 200 })
		if errs := w.Stop(); len(errs) > 0 {
			t.Fatalf("mix %d: %d errors, first %v", mix, len(errs), errs[0])
		}
		n := w.Ops.Load()
		time.Sleep(100 * time.Millisecond)
		if w.Ops.Load() != n {
			t.Errorf("mix %d: operations went on after Stop", mix)
		}
		if nulls := Count(t, pool, "SELECT count(*) FROM orders WHERE email IS NULL AND id > 200"); nulls != 0 {
			t.Errorf("mix %d: NoNulls, yet %d rows inserted with a NULL email", mix, nulls)
		}
		if changed := Count(t, pool, "SELECT count(*) FROM orders WHERE id < 0 OR id > 200 OR email IS NOT NULL"); changed == 0 {
			t.Errorf("mix %d: %d operations changed nothing", mix, n)
		}
	}
}

func TestSeeds(t *testing.T) {
	for _, c := range []struct {
		env  string
		want []uint64
	}{
		{"", []uint64{1, 2, 3}},
		{"2", []uint64{1, 2}},
		{"7, 9", []uint64{7, 9}},
	} {
		t.Setenv("GREENSWAP_SEEDS", c.env)
		if got := Seeds(t, 3); !slices.Equal(got, c.want) {
			t.Errorf("GREENSWAP_SEEDS=%q: %v, want %v", c.env, got, c.want)
		}
	}
}
