package runner

import (
	"context"
	"strings"
	"testing"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/pgtest"
)

// TestPlanTablesRefusesCascadingKeyUpdateOnIdentity: a foreign key among
// the migration's tables with ON UPDATE CASCADE to a key that is GENERATED
// ALWAYS AS IDENTITY in blue is refused at plan (and so at sync's plan
// gate), exit 2, nothing touched: an outside test lost a child row from
// green when such a key was updated through green after cutover
// (break5/findings/03). ON UPDATE NO ACTION, or a plain key, passes.
func TestPlanTablesRefusesCascadingKeyUpdateOnIdentity(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `
CREATE TABLE p (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
CREATE TABLE ch (id int PRIMARY KEY, p_id int NOT NULL REFERENCES p ON UPDATE CASCADE ON DELETE CASCADE);
CREATE TABLE q (id int PRIMARY KEY, v text);
CREATE TABLE qch (id int PRIMARY KEY, q_id int NOT NULL REFERENCES q ON UPDATE CASCADE);`)
	env := testEnv(t, dsn)
	specFor := func(parent, parentDDL, child, childDDL string) string {
		return "name: fka\ntables:\n  - table: " + parent + "\n    target:\n      ddl: " + parentDDL +
			"\n  - table: " + child + "\n    target:\n      ddl: " + childDDL + "\n"
	}
	_, err := Plan(ctx, env, parseSpec(t, specFor("p", "CREATE TABLE p (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text)",
		"ch", "CREATE TABLE ch (id bigint PRIMARY KEY, p_id bigint NOT NULL REFERENCES p ON UPDATE CASCADE ON DELETE CASCADE)")), PlanOptions{})
	if exitcode.Of(err) != exitcode.BadInput || err == nil || !strings.Contains(err.Error(), "tables[1].target.ddl") ||
		!strings.Contains(err.Error(), "GENERATED ALWAYS AS IDENTITY") || !strings.Contains(err.Error(), "ON UPDATE NO ACTION") {
		t.Errorf("ON UPDATE CASCADE to an identity key: got %v (exit %d), want exit 2 naming the field and what to write", err, exitcode.Of(err))
	}
	var kind string
	if err := pool.QueryRow(ctx, `SELECT relkind::text FROM pg_catalog.pg_class WHERE oid = 'public.p'::regclass`).Scan(&kind); err != nil || kind != "r" {
		t.Errorf("public.p after the refusal: relkind %q, %v", kind, err)
	}
	if _, err := Plan(ctx, env, parseSpec(t, specFor("p", "CREATE TABLE p (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text)",
		"ch", "CREATE TABLE ch (id bigint PRIMARY KEY, p_id bigint NOT NULL REFERENCES p ON DELETE CASCADE)")), PlanOptions{}); err != nil {
		t.Errorf("ON UPDATE NO ACTION to an identity key: %v, want a plan", err)
	}
	if _, err := Plan(ctx, env, parseSpec(t, specFor("q", "CREATE TABLE q (id bigint PRIMARY KEY, v text)",
		"qch", "CREATE TABLE qch (id bigint PRIMARY KEY, q_id bigint NOT NULL REFERENCES q ON UPDATE CASCADE)")), PlanOptions{}); err != nil {
		t.Errorf("ON UPDATE CASCADE to a plain key: %v, want a plan", err)
	}
}

// TestPlanTablesRefusesQualifiedReferenceToAMigratedTable: a foreign key
// naming another migrated table by its schema-qualified name passed plan
// and failed in sync, after adopt (an outside test); plan refuses it,
// exit 2, saying to write it unqualified, and the unqualified form plans.
func TestPlanTablesRefusesQualifiedReferenceToAMigratedTable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `
CREATE SCHEMA s1; CREATE SCHEMA s2;
CREATE TABLE s1.a (id int PRIMARY KEY);
CREATE TABLE s2.b (id int PRIMARY KEY, a_id int REFERENCES s1.a);`)
	env := testEnv(t, dsn)
	specFor := func(ref string) string {
		return "name: qr\ntables:\n  - table: s1.a\n    target:\n      ddl: CREATE TABLE a (id bigint PRIMARY KEY)\n" +
			"  - table: s2.b\n    target:\n      ddl: CREATE TABLE b (id bigint PRIMARY KEY, a_id bigint REFERENCES " + ref + " (id))\n"
	}
	_, err := Plan(ctx, env, parseSpec(t, specFor("s1.a")), PlanOptions{})
	if exitcode.Of(err) != exitcode.BadInput || err == nil || !strings.Contains(err.Error(), "tables[1].target.ddl") || !strings.Contains(err.Error(), "unqualified") {
		t.Errorf("a qualified reference to a migrated table: got %v (exit %d), want exit 2 saying to write it unqualified", err, exitcode.Of(err))
	}
	var kind string
	if err := pool.QueryRow(ctx, `SELECT relkind::text FROM pg_catalog.pg_class WHERE oid = 's1.a'::regclass`).Scan(&kind); err != nil || kind != "r" {
		t.Errorf("s1.a after the refusal: relkind %q, %v", kind, err)
	}
	if _, err := Plan(ctx, env, parseSpec(t, specFor("a")), PlanOptions{}); err != nil {
		t.Errorf("the unqualified reference: %v, want a plan", err)
	}
}
