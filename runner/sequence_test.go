package runner

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/internal/pgtest"
)

// Sequences belong to the app (trap 14, issue 11.3): the tests below play
// an application that calls nextval('orders_id_seq') under search_path
// public and an ORM that asks pg_get_serial_sequence, through the whole
// lifecycle of a key widened from integer to bigint.

const seqIntMax = int64(1)<<31 - 1

// TestSequenceSerialWidenedAtFinalize is the flagship case: id serial with
// the sequence near 2^31, migrated to id bigint. During the migration the
// sequence stays public.orders_id_seq (nextval by its bare name works, and
// exhausts the integer range); after finalize it is owned by the table's
// column, AS bigint with bigint's MAXVALUE, and 50 more inserts through the
// app name all succeed past 2^31 - 1.
func TestSequenceSerialWidenedAtFinalize(t *testing.T) {
	t.Parallel()
	pool, dsn := pgtest.NewPool(t)
	ctx := context.Background()
	pgtest.Exec(t, dsn, `
		CREATE TABLE orders (id serial PRIMARY KEY, email text);
		INSERT INTO orders (email) SELECT 'u' || g FROM generate_series(1, 20) g;
		SELECT setval('orders_id_seq', 2147483647 - 10);`)
	env := coEnv(t, dsn)
	spec := coSync(t, env, `
name: seqw
table: public.orders
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text)
`)
	app := coConn(t, dsn, map[string]string{"search_path": "public"})
	if s := coStr(t, app, `SELECT relnamespace::regnamespace::text || '.' || relname FROM pg_class WHERE oid = 'orders_id_seq'::regclass`); s != "public.orders_id_seq" {
		t.Errorf("during the migration orders_id_seq resolves to %s, want public.orders_id_seq", s)
	}
	// The view is no serial column's table: NULL, as PostgreSQL says for views.
	var serial *string
	if err := app.QueryRow(ctx, `SELECT pg_get_serial_sequence('public.orders', 'id')`).Scan(&serial); err != nil || serial != nil {
		t.Errorf("pg_get_serial_sequence on the view during the migration: %v, %v; want NULL", serial, err)
	}
	// Both shapes and the bare name draw from the one sequence.
	a := coInt(t, app, `SELECT nextval('orders_id_seq')`)
	b := coInt(t, app, `INSERT INTO orders (email) VALUES ('app') RETURNING id`)
	c := coInt(t, app, `INSERT INTO gs_seqw_green.orders (email) VALUES ('green') RETURNING id`)
	if a != seqIntMax-9 || b != a+1 || c != b+1 {
		t.Errorf("values during the migration: nextval %d, app %d, green %d; want %d, +1, +2", a, b, c, seqIntMax-9)
	}
	for coInt(t, app, `SELECT last_value FROM orders_id_seq`) < seqIntMax {
		coInt(t, app, `SELECT nextval('orders_id_seq')`)
	}
	if _, err := app.Exec(ctx, `SELECT nextval('orders_id_seq')`); err == nil {
		t.Fatal("an integer sequence handed out a value past 2^31 - 1")
	}

	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
		t.Fatal(err)
	}
	res, err := Finalize(ctx, env, spec.Name, FinalizeOptions{QuietPeriod: -1, Yes: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Plan.Sequences) != 1 || res.Plan.Sequences[0].Action != "re-owned" {
		t.Errorf("finalize sequences: %+v", res.Plan.Sequences)
	}
	if s := coStr(t, app, `SELECT pg_get_serial_sequence('public.orders', 'id')`); s != "public.orders_id_seq" {
		t.Errorf("pg_get_serial_sequence after finalize = %s", s)
	}
	if s := coStr(t, app, `SELECT format_type(seqtypid, NULL) || ' ' || seqmax FROM pg_sequence WHERE seqrelid = 'public.orders_id_seq'::regclass`); s != "bigint 9223372036854775807" {
		t.Errorf("sequence after finalize: %s, want bigint 9223372036854775807", s)
	}
	for i := range 50 {
		id := coInt(t, app, `INSERT INTO orders (email) VALUES ($1) RETURNING id`, fmt.Sprint("after", i))
		if id <= seqIntMax {
			t.Fatalf("insert %d after finalize got id %d, want > 2^31 - 1", i, id)
		}
	}
	if n := coInt(t, pool, `SELECT count(*) FROM pg_class WHERE relkind = 'S' AND relnamespace <> 'greenswap'::regnamespace`); n != 1 {
		t.Errorf("%d sequences after finalize, want 1", n)
	}
}

// TestSequenceCustomMaxvalueReported: a sequence with its own MAXVALUE is
// widened to the column's type but keeps that MAXVALUE, and finalize says so.
func TestSequenceCustomMaxvalueReported(t *testing.T) {
	t.Parallel()
	pool, dsn := pgtest.NewPool(t)
	ctx := context.Background()
	pgtest.Exec(t, dsn, `
		CREATE TABLE orders (id serial PRIMARY KEY, email text);
		ALTER SEQUENCE orders_id_seq MAXVALUE 1000000;
		INSERT INTO orders (email) SELECT 'u' || g FROM generate_series(1, 5) g;`)
	env := coEnv(t, dsn)
	spec := coSync(t, env, `
name: seqm
table: public.orders
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text)
`)
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
		t.Fatal(err)
	}
	res, err := Finalize(ctx, env, spec.Name, FinalizeOptions{QuietPeriod: -1, Yes: true})
	if err != nil {
		t.Fatal(err)
	}
	if s := coStr(t, pool, `SELECT format_type(seqtypid, NULL) || ' ' || seqmax FROM pg_sequence WHERE seqrelid = 'public.orders_id_seq'::regclass`); s != "bigint 1000000" {
		t.Errorf("sequence after finalize: %s, want bigint 1000000", s)
	}
	found := false
	for _, w := range res.Plan.Warnings {
		if containsAll(w, "orders_id_seq", "MAXVALUE 1000000") {
			found = true
		}
	}
	if !found {
		t.Errorf("finalize did not report the custom MAXVALUE: %q", res.Plan.Warnings)
	}
}

// TestSequenceIdentityWidenedAtFinalize: id int GENERATED ALWAYS AS
// IDENTITY near 2^31 migrated to a bigint identity. PostgreSQL cannot
// detach an identity sequence, so during the migration it lives in blue's
// schema: the bare name no longer resolves (42P01) and
// pg_get_serial_sequence on the view is NULL. After finalize the column is
// an identity again, under the app schema's usual name, AS bigint, and it
// continues after the last value handed out.
func TestSequenceIdentityWidenedAtFinalize(t *testing.T) {
	t.Parallel()
	_, dsn := pgtest.NewPool(t)
	ctx := context.Background()
	pgtest.Exec(t, dsn, `
		CREATE TABLE orders (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text);
		INSERT INTO orders (email) SELECT 'u' || g FROM generate_series(1, 20) g;
		ALTER TABLE orders ALTER COLUMN id RESTART WITH 2147483638;`)
	env := coEnv(t, dsn)
	spec := coSync(t, env, `
name: seqi
table: public.orders
target:
  ddl: CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text)
`)
	app := coConn(t, dsn, map[string]string{"search_path": "public"})
	var pgErr *pgconn.PgError
	if _, err := app.Exec(ctx, `SELECT nextval('orders_id_seq')`); !errors.As(err, &pgErr) || pgErr.Code != "42P01" {
		t.Errorf("nextval('orders_id_seq') during the migration: %v; want 42P01 (the identity sequence moved with blue)", err)
	}
	if s := coStr(t, app, `SELECT coalesce(pg_get_serial_sequence('public.orders', 'id'), 'NULL') || ' ' ||
			pg_get_serial_sequence('gs_seqi_blue.orders', 'id')`); s != "NULL gs_seqi_blue.orders_id_seq" {
		t.Errorf("pg_get_serial_sequence on the view and on blue: %s", s)
	}
	// Exhaust the integer range through both shapes.
	last := coInt(t, app, `INSERT INTO orders (email) VALUES ('app') RETURNING id`)
	if last != 2147483638 {
		t.Errorf("first id during the migration %d, want 2147483638", last)
	}
	for last < seqIntMax {
		last = coInt(t, app, `INSERT INTO gs_seqi_green.orders (email) VALUES ('green') RETURNING id`)
	}

	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := Finalize(ctx, env, spec.Name, FinalizeOptions{QuietPeriod: -1, Yes: true}); err != nil {
		t.Fatal(err)
	}
	if s := coStr(t, app, `SELECT attidentity::text || ' ' || pg_get_serial_sequence('public.orders', 'id') FROM pg_attribute
			WHERE attrelid = 'public.orders'::regclass AND attname = 'id'`); s != "a public.orders_id_seq" {
		t.Errorf("after finalize: identity and sequence %s, want a public.orders_id_seq", s)
	}
	if s := coStr(t, app, `SELECT format_type(seqtypid, NULL) || ' ' || seqmax FROM pg_sequence WHERE seqrelid = 'public.orders_id_seq'::regclass`); s != "bigint 9223372036854775807" {
		t.Errorf("identity sequence after finalize: %s", s)
	}
	for i := range 50 {
		id := coInt(t, app, `INSERT INTO orders (email) VALUES ($1) RETURNING id`, fmt.Sprint("after", i))
		if id != seqIntMax+1+int64(i) {
			t.Fatalf("insert %d after finalize got id %d, want %d", i, id, seqIntMax+1+int64(i))
		}
	}
}

// TestSequenceRollbackKeepsIt: rollback after cutover and rollback before
// cutover (blue moved back) leave the serial sequence in the app schema
// under its name, owned by the table's column again, continuing.
func TestSequenceRollbackKeepsIt(t *testing.T) {
	t.Parallel()
	_, dsn := pgtest.NewPool(t)
	ctx := context.Background()
	pgtest.Exec(t, dsn, `
		CREATE TABLE orders (id serial PRIMARY KEY, email text);
		INSERT INTO orders (email) SELECT 'u' || g FROM generate_series(1, 20) g;`)
	env := coEnv(t, dsn)
	spec := coSync(t, env, `
name: seqr
table: public.orders
target:
  ddl: CREATE TABLE orders (id bigint PRIMARY KEY, email text)
`)
	app := coConn(t, dsn, map[string]string{"search_path": "public"})
	if _, err := Cutover(ctx, env, spec.Name, CutoverOptions{}); err != nil {
		t.Fatal(err)
	}
	if id := coInt(t, app, `INSERT INTO orders (email) VALUES ('on green') RETURNING id`); id != 21 {
		t.Errorf("id after cutover %d, want 21", id)
	}
	if _, err := Rollback(ctx, env, spec.Name, SwapCommandOptions{}); err != nil {
		t.Fatal(err)
	}
	if id := coInt(t, app, `SELECT nextval('orders_id_seq')`); id != 22 {
		t.Errorf("nextval after rollback %d, want 22", id)
	}
	if _, err := Rollback(ctx, env, spec.Name, SwapCommandOptions{}); err != nil { // before cutover now: teardown
		t.Fatal(err)
	}
	if s := coStr(t, app, `SELECT pg_get_serial_sequence('public.orders', 'id')`); s != "public.orders_id_seq" {
		t.Errorf("pg_get_serial_sequence after teardown = %s", s)
	}
	if id := coInt(t, app, `INSERT INTO orders (email) VALUES ('back') RETURNING id`); id != 23 {
		t.Errorf("id after teardown %d, want 23", id)
	}
	if n := coInt(t, app, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'gs\_seqr\_%'`); n != 0 {
		t.Errorf("%d version schemas left after teardown", n)
	}
}

func containsAll(s string, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}
