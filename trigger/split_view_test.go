package trigger_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/greenswap/greenswap/internal/testkit"
	"github.com/greenswap/greenswap/trigger"
)

// TestSplitOldShapeView: the old-shape view that cutover makes the app name
// (the greens joined back into blue's shape, written through the INSTEAD OF
// trigger on SplitViewFunctionSQL) carries every write kind to the greens
// and to blue, and behaves as plan's split_old_shape_view hazard says, on a
// real server: INSERT … RETURNING returns the row as written (the view's own
// default included), INSERT … ON CONFLICT (key) is refused and ON CONFLICT DO NOTHING raises the
// unique violation (the trigger inserts plainly), COPY into it works row
// by row through the trigger, UPDATE … WHERE CURRENT OF is refused.
func TestSplitOldShapeView(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := splitSetup(t, splitUsersTable, splitUsersSpec)
	m.backfill(t)
	m.reverseOn(t)
	n0 := m.names[0]
	m.exec(t, `DROP VIEW public.users;
		CREATE VIEW public.users AS
		SELECT u.id, u.email, u.name, p.bio, p.avatar_url, p.prefs, a.last_seen_at, b.legacy_col
		  FROM gs_us_green.users u LEFT JOIN gs_us_green.user_profiles p ON p.user_id = u.id
		  LEFT JOIN gs_us_green.user_activity a ON a.user_id = u.id LEFT JOIN gs_us_blue.users b ON b.id = u.id;
		ALTER VIEW public.users ALTER COLUMN id SET DEFAULT nextval('gs_us_blue.users_id_seq')`)
	m.exec(t, trigger.SplitViewFunctionSQL(n0, m.mapping, trigger.BlueWriteDirection(m.blue, m.mapping, n0.App))+";\n"+trigger.SplitViewTriggerSQL(n0, n0.App))
	for _, s := range []string{
		`INSERT INTO users (email, name, bio, last_seen_at) VALUES ('v@x', 'v', 'vb', now())`,
		`UPDATE users SET bio = 'through the view', last_seen_at = NULL WHERE id BETWEEN 2 AND 9`,
		`UPDATE users SET last_seen_at = now() WHERE id BETWEEN 11 AND 15`,
		`UPDATE users SET id = id + 40000 WHERE id BETWEEN 20 AND 22`,
		`DELETE FROM users WHERE id BETWEEN 30 AND 33`,
	} {
		m.exec(t, s)
		m.check(t, splitUsersChecks, s)
	}
	var id int64
	var email string
	if err := m.pool.QueryRow(ctx, `INSERT INTO users (email) VALUES ('r@x') RETURNING id, email`).Scan(&id, &email); err != nil || id == 0 || email != "r@x" {
		t.Errorf("INSERT … RETURNING through the view: id %d email %q err %v, want the row as written with the view's default id", id, email, err)
	}
	for s, want := range map[string]string{
		`INSERT INTO users (id, email) VALUES (1, 'c@x') ON CONFLICT (id) DO NOTHING`: "42P10", // no arbiter on a view
		`INSERT INTO users (id, email) VALUES (1, 'c@x') ON CONFLICT DO NOTHING`:      "23505", // the trigger's plain insert
		`INSERT INTO users (id, email) VALUES (1, 'c@x')`:                             "23505",
	} {
		if _, err := m.pool.Exec(ctx, s); pgCode(err) != want {
			t.Errorf("%s through the view: %v, want %s", s, err, want)
		}
	}
	if n := testkit.Count(t, m.pool, `SELECT count(*) FROM gs_us_green.users WHERE id = 1 AND email = 'c@x'`); n != 0 {
		t.Errorf("an INSERT of an existing key through the view overwrote the row")
	}
	conn, err := m.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := conn.Conn().PgConn().CopyFrom(ctx, strings.NewReader("90001\tcopy@x\tc\n90002\tcopy2@x\td\n"), `COPY users (id, email, name) FROM STDIN`)
	conn.Release()
	if err != nil || tag.RowsAffected() != 2 {
		t.Errorf("COPY into the view: %v (%d rows), want both rows through the trigger", err, tag.RowsAffected())
	}
	m.check(t, splitUsersChecks, "after COPY and RETURNING")
	// A write through the view of a row changed since the statement read
	// it is refused (40001), not applied over the other write.
	other, err := m.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec(ctx, `UPDATE gs_us_blue.users SET name = 'other' WHERE id = 41`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := m.pool.Exec(ctx, `UPDATE users SET name = name || '+view' WHERE id = 41`)
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	if err := other.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; pgCode(err) != "40001" {
		t.Errorf("an UPDATE through the view of a row changed meanwhile: %v, want 40001", err)
	}
	if n := testkit.Count(t, m.pool, `SELECT count(*) FROM gs_us_green.users WHERE id = 41 AND name = 'other'`); n != 1 {
		t.Errorf("the other write was lost")
	}
	if _, err := m.pool.Exec(ctx, `UPDATE users SET name = name || '+view' WHERE id = 41`); err != nil {
		t.Errorf("an UPDATE through the view of an unchanged row: %v", err)
	}
	m.check(t, splitUsersChecks, "after the refused stale write")
	tx, err := m.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `DECLARE c CURSOR FOR SELECT * FROM users WHERE id = 40; FETCH c`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE users SET name = 'cur' WHERE CURRENT OF c`); err == nil {
		t.Errorf("UPDATE … WHERE CURRENT OF through the view succeeded; plan says it is refused")
	} else {
		t.Logf("WHERE CURRENT OF: %v", err)
	}
}
