package cutover

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// A client that sets the sync flag itself (as greenswap's sessions do, or as
// older greenswaps did) is still recorded as a blue user: the sensor's WHEN
// clause honours the flag only for members of the table owner.
func TestUsageSensorNotFooledBySpoofedFlag(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	role := "spoof_" + cfg.Database
	r := pgx.Identifier{role}.Sanitize()
	n := shadow.NamesFor("us", spec.QualifiedName{Schema: "public", Name: "acc"})
	pgtest.Exec(t, dsn, `CREATE SCHEMA gs_us_blue; CREATE TABLE gs_us_blue.acc (id int PRIMARY KEY);
		CREATE ROLE `+r+` LOGIN; GRANT USAGE ON SCHEMA gs_us_blue TO `+r+`; GRANT INSERT ON gs_us_blue.acc TO `+r)
	t.Cleanup(func() {
		if _, err := pool.Exec(context.Background(), `DROP OWNED BY `+r+`; DROP ROLE `+r); err != nil {
			t.Errorf("drop role: %v", err)
		}
	})
	for _, s := range usageInstallSQL(n, "postgres", usageObjects{}) {
		pgtest.Exec(t, dsn, s)
	}
	pgtest.Exec(t, dsn, usageSwitchSQL(n, true))
	since := time.Now()
	cfg.User = role
	for i, v := range []string{"0", "on", "1"} {
		cfg.RuntimeParams["application_name"] = "spoofer-" + v
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, `SELECT set_config('greenswap.sync_us', '`+v+`', true); INSERT INTO gs_us_blue.acc VALUES (`+string(rune('1'+i))+`)`); err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
	}
	cs, err := Usage(ctx, pool, n, since, nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, c := range cs {
		if strings.HasPrefix(c.How, "write") && c.User == role {
			seen[c.Application] = true
		}
	}
	for _, v := range []string{"0", "on", "1"} {
		if !seen["spoofer-"+v] {
			t.Errorf("a writer of blue that set the sync flag to %q was not recorded: %+v", v, cs)
		}
	}
}
