package stream_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/sync/stream"
	"github.com/greenswap/greenswap/trigger"
)

// roleSQL creates a login role granted privs on the app table before the
// fixture adopts it, so adopt mirrors the grants to blue as it does for a
// real application role. Roles are cluster-wide: the name is unique per
// test (name is), and dropRole removes it again.
func roleSQL(role, privs string) string {
	r := pgx.Identifier{role}.Sanitize()
	return fmt.Sprintf(`;CREATE ROLE %[1]s LOGIN; GRANT %[2]s ON orders TO %[1]s; GRANT USAGE ON SEQUENCE orders_id_seq TO %[1]s;`, r, privs)
}

// dropRole drops role at the end of the test (before the database goes:
// Cleanup runs last-in first-out, so the role's privileges are dropped
// first, in the database that holds them).
func dropRole(t *testing.T, dsn, role string) {
	t.Cleanup(func() {
		if err := testkit.DropRole(dsn, role); err != nil {
			t.Log(err)
		}
	})
}

// connectAs opens a connection as role (the test cluster trusts every role).
func connectAs(t *testing.T, dsn, role string) *pgx.Conn {
	t.Helper()
	return testkit.ConnectAs(t, dsn, role)
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// TestForgedEchoMarkersApplied: a writer role (INSERT/UPDATE/DELETE on the
// app name only) brackets its own writes to blue with messages under the
// echo prefix — the old contents 'b'/'e', empty ones, correctly prefixed
// long random ones, a non-transactional one, a forged ping — hoping the
// stream skips them as echoes and green never gets them. It cannot read
// the echo token; the stream applies every one of its writes, and green
// equals blue by a full EXCEPT diff. Genuine echoes are still skipped.
func TestForgedEchoMarkersApplied(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := uniqueName("forge")
	role := "gs_writer_" + name
	f := setup(t, ordersTable(300)+roleSQL(role, "SELECT, INSERT, UPDATE, DELETE"), ordersSpec(name), name)
	dropRole(t, f.dsn, role)
	f.backfill(1000)
	f.exec(strings.Join(trigger.SetReverseSQL(f.names, true), ";"))
	r := f.run(stream.Options{})
	prefix := trigger.EchoPrefix(f.names)
	w := connectAs(t, f.dsn, role)

	// The token is out of the writer's reach.
	var tok string
	err := w.QueryRow(ctx, trigger.ReadEchoTokenSQL(f.names)).Scan(&tok)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" {
		t.Fatalf("the writer read the echo token (err %v)", err)
	}

	guesses := [][2]string{
		{"b", "e"}, // the markers of greenswap before the token
		{"", ""},
		{"b" + randomHex(t, 16), "e" + randomHex(t, 16)},
		{"b" + randomHex(t, 200), "e" + randomHex(t, 200)},
		{"b" + strings.Repeat("0", 36), "e" + strings.Repeat("0", 36)},
	}
	id := int64(10)
	for i, g := range guesses {
		err := pgx.BeginFunc(ctx, w, func(tx pgx.Tx) error {
			stmts := []struct {
				sql  string
				args []any
			}{
				{`SELECT pg_logical_emit_message(true, $1, $2)`, []any{prefix, g[0]}},
				{`UPDATE orders SET amount = amount + 1000, note = 'forged' WHERE id = $1`, []any{id}},
				{`DELETE FROM orders WHERE id = $1`, []any{id + 1}},
				{`INSERT INTO orders (tenant, email, amount, note) VALUES (1, 'forger@x', $1, 'forged')`, []any{i}},
				{`UPDATE orders SET id = -id WHERE id = $1`, []any{id + 2}},
				{`SELECT pg_logical_emit_message(false, $1, $2)`, []any{prefix, g[0]}},
				{`SELECT pg_logical_emit_message(false, $1, '')`, []any{stream.PingPrefix(prefix)}},
				{`SELECT pg_logical_emit_message(true, $1, $2)`, []any{prefix, g[1]}},
			}
			for _, s := range stmts {
				if _, err := tx.Exec(ctx, s.sql, s.args...); err != nil {
					return fmt.Errorf("%s: %w", s.sql, err)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("guess %d: %v", i, err)
		}
		id += 10
	}
	// A genuine echo among them: a write through green (by the owner),
	// with a value the lossy reverse mapping keeps (the diff compares
	// through the mapping).
	green := fmt.Sprintf("gs_%s_green.orders", name)
	f.exec(`UPDATE ` + green + ` SET amount = 12 WHERE id = 5`)
	f.waitApplied(10 * time.Second)
	if d := f.diff(); d != 0 {
		t.Fatalf("green differs from blue in %d rows: writes bracketed by forged echo markers were skipped", d)
	}
	if st := r.s.Stats(); st.Echoes != 1 {
		t.Fatalf("echoes skipped: %d, want the one genuine echo: %+v", st.Echoes, st)
	}
	if n := f.count(`SELECT count(*) FROM ` + green + ` WHERE note = 'forged'`); n != 2*len(guesses) {
		t.Fatalf("green has %d of the forger's %d rows", n, 2*len(guesses))
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
}

// TestEchoTokenSurvivesRestart: the token is read from its table by every
// streamer, so one started after another still tells genuine echoes from
// the rest; a streamer of a migration without the token table (made by an
// older greenswap) refuses to start and says what to do.
func TestEchoTokenSurvivesRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := uniqueName("tok")
	f := setup(t, ordersTable(50), ordersSpec(name), name)
	f.backfill(1000)
	f.exec(strings.Join(trigger.SetReverseSQL(f.names, true), ";"))
	tok, err := stream.ReadEchoToken(ctx, f.pool, f.names)
	if err != nil || len(tok) < 32 {
		t.Fatalf("token %q, %v", tok, err)
	}
	// The install step again (a resumed sync) keeps the token.
	err = pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error {
		return execAll(ctx, tx, trigger.EchoTokenSQL(f.names, f.blue.Owner))
	})
	if err != nil {
		t.Fatal(err)
	}
	if again, err := stream.ReadEchoToken(ctx, f.pool, f.names); err != nil || again != tok {
		t.Fatalf("the token changed on re-install: %v", err)
	}
	green := fmt.Sprintf("gs_%s_green.orders", name)
	r := f.run(stream.Options{})
	f.exec(`UPDATE ` + green + ` SET amount = 1.11 WHERE id = 3`)
	f.waitApplied(10 * time.Second)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	f.exec(`UPDATE ` + green + ` SET amount = 2.22 WHERE id = 4`)
	r = f.run(stream.Options{})
	f.waitApplied(10 * time.Second)
	if n := f.count(`SELECT count(*) FROM ` + green + ` WHERE (id = 3 AND amount = 1.11) OR (id = 4 AND amount = 2.22)`); n != 2 {
		t.Fatal("an echo was applied after the restart: green's values came back rounded")
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}

	f.exec(`DROP TABLE ` + pgx.Identifier{f.names.EchoToken.Schema, f.names.EchoToken.Name}.Sanitize())
	s, err := stream.New(f.config(stream.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err = s.Run(rctx)
	if err == nil || !strings.Contains(err.Error(), "older greenswap") || !strings.Contains(err.Error(), "42P01") {
		t.Fatalf("a stream without its echo token: %v, want a clear error", err)
	}
}

// TestSelectOnlyRoleCannotAttachReverse: a role with SELECT on the app
// name attaches logical mode's reverse function (which writes blue as the
// owner) to a temp table of its own and writes that table: it must fail,
// and blue must be unchanged. (EXECUTE is revoked and the function checks
// which table fired it: trigger.go.)
func TestSelectOnlyRoleCannotAttachReverse(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := uniqueName("attach")
	role := "gs_reader_" + name
	f := setup(t, ordersTable(50)+roleSQL(role, "SELECT"), ordersSpec(name), name)
	dropRole(t, f.dsn, role)
	f.backfill(1000)
	f.exec(strings.Join(trigger.SetReverseSQL(f.names, true), ";"))
	blue := fmt.Sprintf("gs_%s_blue.orders", name)
	before := f.count(`SELECT count(*) FROM ` + blue + ` WHERE id = 1 AND amount = 1`)
	c := connectAs(t, f.dsn, role)
	fn := pgx.Identifier{f.names.ReverseFunc.Schema, f.names.ReverseFunc.Name}.Sanitize()
	tfn := pgx.Identifier{f.names.ReverseFunc.Schema, f.names.ReverseFunc.Name + "_truncate"}.Sanitize()
	attack := []string{
		`CREATE TEMP TABLE evil (id bigint, tenant int, email text, amount numeric(12,2), note text, created_at timestamptz)`,
		`CREATE TRIGGER evil AFTER INSERT OR UPDATE OR DELETE ON evil FOR EACH ROW EXECUTE FUNCTION ` + fn + `()`,
		`CREATE TRIGGER evil_t AFTER TRUNCATE ON evil FOR EACH STATEMENT EXECUTE FUNCTION ` + tfn + `()`,
		`INSERT INTO evil VALUES (1, 1, 'x', 999, 'evil', now())`,
		`DELETE FROM evil`,
		`TRUNCATE evil`,
	}
	var failed error
	for _, s := range attack {
		if _, err := c.Exec(ctx, s); err != nil {
			failed = err
			break
		}
	}
	if failed == nil {
		t.Fatal("a SELECT-only role attached the reverse function to its own table and wrote through it")
	}
	var pe *pgconn.PgError
	if !errors.As(failed, &pe) || strings.HasPrefix(pe.Code, "42") && pe.Code != "42501" {
		t.Fatalf("the attack failed for the wrong reason (the test is broken): %v", failed)
	}
	t.Logf("the attack failed as it should: %v", failed)
	if n := f.count(`SELECT count(*) FROM ` + blue); n != 50 {
		t.Fatalf("blue has %d rows, want 50", n)
	}
	if n := f.count(`SELECT count(*) FROM ` + blue + ` WHERE id = 1 AND amount = 1`); n != before {
		t.Fatal("blue's row 1 was changed by the attack")
	}
	if d := f.diff(); d != 0 {
		t.Fatalf("green differs from blue in %d rows", d)
	}
}
