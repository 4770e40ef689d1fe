package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/examples/workload"
	"github.com/greenswap/greenswap/internal/db"
)

func (d *demo) plan(ctx context.Context) error {
	say("First the operator asks greenswap what it would do. `plan` reads the table from the catalog, builds the new table " +
		"inside a transaction it rolls back, and prints the steps, the exact SQL, the locks each step takes and any hazards. " +
		"It changes nothing.")
	cmdline("greenswap plan -f " + d.specShown)
	r, err := d.gs.run(ctx, output{maxLines: 60, skip: []string{"Steps"}}, "plan", "-f", d.specShown)
	if err != nil {
		return err
	}
	switch r.code {
	case 0:
		done("nothing blocks this migration (exit 0)")
	case 3:
		note("plan found blocking hazards (exit 3), so a careful operator stops here; so does the demo.")
		return errStop
	default:
		note("plan exited %d", r.code)
		return errStop
	}
	return d.pause(ctx, 2*time.Second)
}

func (d *demo) sync(ctx context.Context) error {
	say(fmt.Sprintf("`sync` builds the new shape while the application keeps writing. In one short transaction it moves today's "+
		"table into the schema %s and puts a view with the same columns under the name %s (adopt), so clients notice nothing. "+
		"It creates the green table in %s and triggers that copy every new write across, then copies the existing rows "+
		"in small batches ordered by the key, and builds the secondary indexes afterwards. --watch shows progress.",
		d.names.BlueSchema, d.spec.AppTable(), d.names.GreenSchema))
	cmdline("greenswap sync -f " + d.specShown + " --watch")
	r, err := d.gs.runUntil(ctx, output{maxLines: 40}, func(ctx context.Context) bool {
		st, _ := d.state(ctx)
		return st == "synced"
	}, "sync", "-f", d.specShown, "--watch")
	if err != nil {
		return err
	}
	st, err := d.state(ctx)
	if err != nil {
		return err
	}
	if st != "synced" {
		note("sync exited %d and the migration is %q, not synced; the demo stops here.", r.code, st)
		return errStop
	}
	if r.stopped {
		done("synced (the demo stopped the watch with Ctrl-C once the state said synced)")
	} else {
		done("synced")
	}
	say("From now on both tables stay equal, in both directions: a write to either shape reaches the other in the same transaction.")
	d.ledgerCheck(ctx, true)
	return d.pause(ctx, 2*time.Second)
}

func (d *demo) verify(ctx context.Context) error {
	say("Before anyone switches, `verify` proves it: it hashes every blue row through the mapping and every green row, " +
		"chunk by chunk over the key, all under one snapshot so the running application cannot cause false alarms.")
	cmdline("greenswap verify " + d.spec.Name)
	r, err := d.gs.run(ctx, output{maxLines: 30}, "verify", d.spec.Name)
	if err != nil {
		return err
	}
	if r.code != 0 {
		note("verify exited %d: the tables differ, so the demo stops before cutover.", r.code)
		return errStop
	}
	done("blue and green are identical (exit 0)")
	return d.pause(ctx, time.Second)
}

func (d *demo) cutover(ctx context.Context) error {
	say(fmt.Sprintf("`cutover` is one short transaction: the view %s now reads the green table. It waits at most a short "+
		"lock timeout for the application's locks and retries with backoff, so the application is never queued behind it for long.",
		d.spec.AppTable()))
	return d.swap(ctx, "cutover", "green")
}

func (d *demo) rollback(ctx context.Context) error {
	say("Something looks wrong with the new version? `rollback` is the same swap backwards. Every write made on green since the " +
		"cutover already reached blue through the reverse triggers, so nothing is lost.")
	return d.swap(ctx, "rollback", "blue")
}

func (d *demo) cutoverAgain(ctx context.Context) error {
	say("The problem is fixed; cut over again. A migration can go back and forth as often as needed until it is finalized.")
	return d.swap(ctx, "cutover", "green")
}

// swap runs cutover or rollback and shows which table the app name reads.
func (d *demo) swap(ctx context.Context, command, want string) error {
	cmdline("greenswap " + command + " " + d.spec.Name)
	before := time.Now()
	r, err := d.gs.run(ctx, output{maxLines: 30}, command, d.spec.Name)
	if err != nil {
		return err
	}
	if r.code != 0 {
		note("%s exited %d; the demo stops here.", command, r.code)
		return errStop
	}
	side, err := d.appReads(ctx)
	if err != nil {
		return err
	}
	done("%s now reads the %s table (%s took %s)", d.spec.AppTable(), side, command, r.took.Round(time.Millisecond))
	if side != want {
		note("expected the app name to read %s", want)
	}
	if err := d.pause(ctx, 6*time.Second); err != nil {
		return err
	}
	w := d.wl.Window(before, time.Time{})
	if d.old != nil {
		o := d.old.Window(before, time.Time{})
		w.Commits += o.Commits
		w.Errors += o.Errors
		w.MaxLatency = max(w.MaxLatency, o.MaxLatency)
	}
	say(fmt.Sprintf("Meanwhile the application kept writing: %d writes since the %s, %d errors, slowest write %s.",
		w.Commits, command, w.Errors, w.MaxLatency.Round(time.Millisecond)))
	d.ledgerCheck(ctx, true)
	return nil
}

func (d *demo) finalize(ctx context.Context) error {
	say("Once no client uses the old shape any more, `finalize` retires it: the green table takes the application's name as " +
		"a real table, and blue, the triggers and the version schemas are dropped. This is the only step that cannot be undone, " +
		"so finalize first watches blue for a quiet period and refuses, naming them, if any client other than greenswap writes " +
		"blue, locks it or queries its version schema.")
	help := d.gs.help(ctx, "finalize")
	args := []string{"finalize"}
	if strings.Contains(help, "--quiet-period") {
		// The default quiet period is long; the demo watches for a few seconds.
		args = append(args, "--quiet-period", "5s")
	}
	if strings.Contains(help, "--yes") {
		args = append(args, "--yes") // no terminal to confirm on
	}
	args = append(args, d.spec.Name)
	if d.old != nil {
		say("The old release is still running. Try anyway:")
		cmdline("greenswap " + strings.Join(args, " "))
		r, err := d.gs.run(ctx, output{maxLines: 30}, args...)
		if err != nil {
			return err
		}
		if r.code == 0 {
			note("finalize did not notice the old release (exit 0).")
			return d.finalized(ctx)
		}
		done("finalize refused (exit %d) and named the old release; nothing changed", r.code)
		d.old.Stop()
		say("So the old release is retired: its client stops. After a quiet period, finalize again.")
		if err := d.pause(ctx, 6*time.Second); err != nil {
			return err
		}
	}
	cmdline("greenswap " + strings.Join(args, " "))
	r, err := d.gs.run(ctx, output{maxLines: 30}, args...)
	if err != nil {
		return err
	}
	if r.code != 0 {
		note("finalize exited %d; the migration stays cut over (the application is unaffected).", r.code)
		return errStop
	}
	return d.finalized(ctx)
}

func (d *demo) finalized(ctx context.Context) error {
	st, _ := d.state(ctx)
	done("migration %s is %s; %s is a plain table again, in the new shape", d.spec.Name, st, d.spec.AppTable())
	return d.pause(ctx, 2*time.Second)
}

// pause lets the application run for a while.
func (d *demo) pause(ctx context.Context, t time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(t):
	}
	tot := d.wl.Totals()
	if d.old != nil {
		o := d.old.Totals()
		tot.Commits += o.Commits
		tot.Errors += o.Errors
	}
	fmt.Printf("  · application: %s writes so far, %d errors\n", thousands(int64(tot.Commits)), tot.Errors)
	return nil
}

// state reads the migration's state ("" before sync created it).
func (d *demo) state(ctx context.Context) (string, error) {
	conn, err := pgx.Connect(ctx, d.dsn)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var st string
	err = conn.QueryRow(ctx, `SELECT state FROM greenswap.migrations WHERE name = $1`, d.spec.Name).Scan(&st)
	if err != nil && (err == pgx.ErrNoRows || db.SQLState(err) == "42P01") {
		return "", nil
	}
	return st, err
}

// appReads says which table the app-name view reads: "blue", "green", or
// "a table of its own" once finalized.
func (d *demo) appReads(ctx context.Context) (string, error) {
	conn, err := pgx.Connect(ctx, d.dsn)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	app := db.Ident(d.spec.AppTable().Schema, d.spec.AppTable().Name)
	var kind string
	if err := conn.QueryRow(ctx, `SELECT relkind::text FROM pg_class WHERE oid = $1::regclass`, app).Scan(&kind); err != nil {
		return "", err
	}
	if kind != "v" {
		return "a table of its own", nil
	}
	var def string
	if err := conn.QueryRow(ctx, `SELECT pg_get_viewdef($1::regclass)`, app).Scan(&def); err != nil {
		return "", err
	}
	switch {
	case strings.Contains(def, d.names.GreenSchema+"."):
		return "green", nil
	case strings.Contains(def, d.names.BlueSchema+"."):
		return "blue", nil
	}
	return "unknown", nil
}

// ledgerCheck compares the ledger with the app name and, while both exist,
// with blue and green directly: each is one snapshot, so a running
// application cannot make it disagree.
func (d *demo) ledgerCheck(ctx context.Context, both bool) {
	rels := []string{db.Ident(d.spec.AppTable().Schema, d.spec.AppTable().Name)}
	labels := []string{"app name"}
	if both {
		rels = append(rels, db.Ident(d.names.Blue.Schema, d.names.Blue.Name), db.Ident(d.names.Green.Schema, d.names.Green.Name))
		labels = append(labels, "blue", "green")
	}
	var parts []string
	for i, rel := range rels {
		r, err := workload.Check(ctx, d.dsn, ledger, rel, d.app.key, d.app.value)
		switch {
		case err != nil:
			parts = append(parts, labels[i]+" ?")
		case r.Lost() == 0:
			parts = append(parts, labels[i]+" ✓")
		default:
			parts = append(parts, fmt.Sprintf("%s ✗ (%d missing, %d stale, %d deleted-but-present)", labels[i], r.Missing, r.Stale, r.Ghosts))
		}
	}
	fmt.Printf("  · ledger check, every write so far: %s\n", strings.Join(parts, ", "))
}
