package runner

import (
	"context"
	"testing"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/pgtest"
	"github.com/greenswap/greenswap/internal/testkit"
)

// TestReverseUpsertNeverTakesAnotherGreenRow (break11 trigger findings 2
// and 3): green's key (tenant_id, id) is wider than blue's (id), and
// nothing in green makes id unique. A client writing green's version schema
// inserts an id blue has under another tenant: the write fails with 23505
// (as the same insert into blue would) instead of the reverse sync
// overwriting the other tenant's blue row with the owner's rights; blue and
// green keep one row of that id, unchanged. Writes of green's own rows —
// a new id, an update, a tenant move — still reach blue.
func TestReverseUpsertNeverTakesAnotherGreenRow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, dsn := pgtest.NewPool(t)
	pgtest.Exec(t, dsn, `
		CREATE TABLE docs (id bigint PRIMARY KEY, tenant_id int NOT NULL, body text);
		INSERT INTO docs SELECT g, g % 3, 'b' || g FROM generate_series(1, 300) g;`)
	env := syncTestEnv(t, dsn)
	if _, err := Sync(ctx, env, syncSpec(t, `
name: rg
table: public.docs
target:
  ddl: |
    CREATE TABLE docs (id bigint NOT NULL, tenant_id int NOT NULL, body text, PRIMARY KEY (tenant_id, id))
`), SyncOptions{}); err != nil {
		t.Fatal(err)
	}
	green := coConn(t, dsn, map[string]string{"search_path": "gs_rg_green"})
	// id 1 is tenant 1's in blue: tenant 0 may not take it through green.
	_, err := green.Exec(ctx, `INSERT INTO docs (tenant_id, id, body) VALUES (0, 1, 'taken')`)
	if db.SQLState(err) != db.UniqueViolation {
		t.Fatalf("an insert through green of an id blue holds under another tenant: %v, want 23505", err)
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM gs_rg_blue.docs WHERE id = 1 AND tenant_id = 1 AND body = 'b1'`); n != 1 {
		t.Fatal("blue's row 1 was overwritten")
	}
	if n := testkit.Count(t, pool, `SELECT count(*) FROM gs_rg_green.docs WHERE id = 1`); n != 1 {
		t.Fatalf("green has %d rows of id 1, want 1", n)
	}
	// Green's own rows still reach blue.
	for _, q := range []string{
		`INSERT INTO docs (tenant_id, id, body) VALUES (2, 1000, 'new')`,
		`UPDATE docs SET body = 'edited' WHERE tenant_id = 2 AND id = 2`,
		`UPDATE docs SET tenant_id = 0 WHERE tenant_id = 1 AND id = 4`,
		`DELETE FROM docs WHERE tenant_id = 0 AND id = 3`,
	} {
		if _, err := green.Exec(ctx, q); err != nil {
			t.Fatalf("%s through green: %v", q, err)
		}
	}
	if d := testkit.Diff(t, pool, `SELECT id, tenant_id, body FROM gs_rg_blue.docs`, `SELECT id, tenant_id, body FROM gs_rg_green.docs`); d != 0 {
		t.Fatalf("%d rows differ between blue and green", d)
	}
}
