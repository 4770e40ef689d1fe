package cutover

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
	"github.com/greenswap/greenswap/trigger"
)

// Who still uses blue after cutover.
//
// Finalize must not drop blue while a client still uses it, but the
// statistics cannot tell: every write through green reaches blue through the
// reverse sync trigger, in the client's own session, so blue's counters
// (n_tup_*, idx_scan, even seq_scan on a small table) and its RowExclusive
// locks move with the app's traffic just as they would for a client of the
// blue version schema. Two signals are reliable:
//
//   - writes that start on blue: at cutover a statement-level trigger (the
//     usage sensor) is put on blue whose WHEN clause (trigger.EchoGuard) is
//     false for the reverse trigger's own writes only. It notes the
//     session (pid, application_name, user, client address, query, time) in
//     an unlogged table in the blue schema: one upsert per statement, only
//     for statements that write blue directly.
//   - reads: a session reading blue holds ACCESS SHARE (or ROW SHARE for
//     SELECT FOR UPDATE/SHARE) on it while its statement or transaction
//     runs; the reverse trigger never takes those. pg_locks is sampled, and
//     so is pg_stat_activity.query naming the blue schema (last query of
//     idle sessions included, with its start time).
//
// greenswap's own sessions are known by backend PID, never by name: any
// client may call itself application_name = 'greenswap…' (finding 03), and
// one that did went unseen and had blue dropped under it. The caller passes
// the PIDs of its own connections (OwnSessions); the sampling session is
// excluded by pg_backend_pid(). A session of another greenswap process
// (a `sync --watch`, a `status`) is a client like any other. A read shorter
// than the sampling interval, by a session that names the table without the
// schema (search_path), can be missed: the quiet period is what makes a
// regular client visible.

// usageObjects says which parts of the sensor exist.
type usageObjects struct {
	table, state, fn, trigger bool
}

func (u usageObjects) complete() bool { return u.table && u.state && u.fn && u.trigger }

func usageTable(n shadow.Names) spec.QualifiedName {
	return spec.QualifiedName{Schema: n.BlueSchema, Name: "gs_usage"}
}

// usageStateTable holds one row: whether the sensor records (blue is not
// primary). The swap flips it: a row update, no lock on blue.
func usageStateTable(n shadow.Names) spec.QualifiedName {
	return spec.QualifiedName{Schema: n.BlueSchema, Name: "gs_usage_state"}
}

func usageFunc(n shadow.Names) spec.QualifiedName {
	return spec.QualifiedName{Schema: n.BlueSchema, Name: "gs_usage_note"}
}

// usageTrigger is named like the sync triggers (gs_sync_ prefix) so catalog
// reads treat it as greenswap's own, never as a user trigger.
func usageTrigger(n shadow.Names) string { return n.Trigger + "_usage" }

func qident(q spec.QualifiedName) string { return db.Ident(q.Schema, q.Name) }

func usageState(ctx context.Context, q db.Querier, n shadow.Names, blueOID uint32) (usageObjects, error) {
	var u usageObjects
	err := q.QueryRow(ctx, `SELECT pg_catalog.to_regclass($1) IS NOT NULL, pg_catalog.to_regclass($2) IS NOT NULL, pg_catalog.to_regprocedure($3) IS NOT NULL,
		EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $4 AND tgname = $5)`,
		qident(usageTable(n)), qident(usageStateTable(n)), qident(usageFunc(n))+"()",
		blueOID, usageTrigger(n)).Scan(&u.table, &u.state, &u.fn, &u.trigger)
	return u, err
}

// usageInstallSQL creates the usage sensor on blue, inert (state false).
// Only CREATE TRIGGER needs a lock on blue (SHARE ROW EXCLUSIVE).
func usageInstallSQL(n shadow.Names, owner string, u usageObjects) []string {
	tbl, st, fn := qident(usageTable(n)), qident(usageStateTable(n)), qident(usageFunc(n))
	own := db.Ident(owner)
	sql := []string{
		"CREATE UNLOGGED TABLE IF NOT EXISTS " + tbl + ` (
	pid              int PRIMARY KEY,
	application_name text NOT NULL,
	usename          text NOT NULL,
	client_addr      text NOT NULL,
	query            text NOT NULL,
	at               timestamptz NOT NULL)`,
		"ALTER TABLE " + tbl + " OWNER TO " + own,
		"CREATE TABLE IF NOT EXISTS " + st + " (active boolean NOT NULL)",
		"ALTER TABLE " + st + " OWNER TO " + own,
		"INSERT INTO " + st + " (active) SELECT false WHERE NOT EXISTS (SELECT 1 FROM " + st + ")",
	}
	// Like the sync functions (package trigger) the sensor runs as the owner
	// and trusts nothing of its caller: EXECUTE revoked from PUBLIC in the
	// same transaction, a raise unless fired by its own trigger on blue,
	// every name qualified and pg_temp last on its search_path.
	body := `
BEGIN
	IF TG_NAME <> ` + db.Literal(usageTrigger(n)) + ` OR TG_TABLE_SCHEMA <> ` + db.Literal(n.Blue.Schema) + ` OR TG_WHEN <> 'AFTER' OR TG_LEVEL <> 'STATEMENT' THEN
		RAISE EXCEPTION ` + db.Literal(strings.ReplaceAll(fn+"() is greenswap's usage sensor of "+n.Blue.String()+" and runs only as trigger "+usageTrigger(n)+" on it, not as ", "%", "%%")+"% on %.%") + `,
			TG_NAME, TG_TABLE_SCHEMA, TG_TABLE_NAME USING ERRCODE = '42501';
	END IF;
	IF NOT COALESCE((SELECT active FROM ` + st + ` LIMIT 1), false) THEN
		RETURN NULL; -- blue is primary: its writes are the app's
	END IF;
	INSERT INTO ` + tbl + ` AS u (pid, application_name, usename, client_addr, query, at)
	VALUES (pg_catalog.pg_backend_pid(), pg_catalog.current_setting('application_name'), session_user,
	        COALESCE(pg_catalog.host(pg_catalog.inet_client_addr()), 'local'), pg_catalog."left"(pg_catalog.current_query(), 500),
	        pg_catalog.clock_timestamp())
	ON CONFLICT (pid) DO UPDATE SET application_name = EXCLUDED.application_name, usename = EXCLUDED.usename,
		client_addr = EXCLUDED.client_addr, query = EXCLUDED.query, at = EXCLUDED.at;
	RETURN NULL;
END`
	sql = append(sql, "CREATE OR REPLACE FUNCTION "+fn+"() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = "+
		shadow.SearchPathFor(n.App.Schema)+" AS $gs$"+body+"$gs$",
		"ALTER FUNCTION "+fn+"() OWNER TO "+own,
		"REVOKE ALL ON FUNCTION "+fn+"() FROM PUBLIC")
	if !u.trigger {
		// Not the reverse trigger's own writes, nor what they cascade into
		// (trigger.UsageGuard); a client that sets the sync flag itself is
		// still recorded.
		sql = append(sql, "CREATE TRIGGER "+db.Ident(usageTrigger(n))+" AFTER INSERT OR UPDATE OR DELETE ON "+qident(n.Blue)+
			" FOR EACH STATEMENT WHEN ("+trigger.UsageGuard(n, owner)+") EXECUTE FUNCTION "+fn+"()")
	}
	return sql
}

// usageSwitchSQL turns the sensor on (cutover) or off (rollback).
func usageSwitchSQL(n shadow.Names, on bool) string {
	return fmt.Sprintf("UPDATE %s SET active = %t", qident(usageStateTable(n)), on)
}

// Client is a session seen using blue.
type Client struct {
	PID         int32     `json:"pid"`
	Application string    `json:"application_name"`
	User        string    `json:"user"`
	ClientAddr  string    `json:"client_addr"`
	LastSeen    time.Time `json:"last_seen"` // last write, lock sample or query start
	How         string    `json:"how"`       // "write", "lock <modes>", "query"
	Query       string    `json:"query"`
}

func (c Client) String() string {
	q := strings.Join(strings.Fields(c.Query), " ")
	if len(q) > 100 {
		q = q[:100] + "…"
	}
	app := c.Application
	if app == "" {
		app = "(no application_name)"
	}
	return fmt.Sprintf("%s (user %s, from %s, pid %d, %s at %s): %s", app, c.User, c.ClientAddr, c.PID, c.How,
		c.LastSeen.Format(time.RFC3339), q)
}

// usageSQL is one sample: the sensor's writes since $3, sessions holding a
// reading lock on blue now, and sessions whose query since $3 names the
// blue schema. A RowShare lock on blue held by a session that also holds a
// lock on an app name or a green of the migration ($5) is the foreign key
// check of a sync write (a child row the reverse trigger inserted into a
// blue key-share-locks its parent there; break5 finding 01), not a
// client's SELECT FOR UPDATE/SHARE.
const usageSQL = `
WITH me AS (SELECT oid FROM pg_database WHERE datname = pg_catalog.current_database()),
others AS (
    SELECT * FROM pg_stat_activity a
     WHERE a.pid <> pg_catalog.pg_backend_pid() AND a.backend_type = 'client backend'
       AND a.pid <> ALL ($4::int4[])
       AND a.datid = (SELECT oid FROM me)
),
-- One read of pg_locks for both uses below: a second read could see a
-- committing session's lock on blue gone from one and not the other.
locks AS MATERIALIZED (
    SELECT l.pid, l.relation, l.mode FROM pg_locks l
     WHERE l.locktype = 'relation' AND l.database = (SELECT oid FROM me)
)
SELECT pid, application_name, usename, client_addr, at, 'write', query FROM %s
 WHERE at >= $3 AND pid <> pg_catalog.pg_backend_pid() AND pid <> ALL ($4::int4[])
UNION ALL
SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), coalesce(host(a.client_addr), 'local'),
       pg_catalog.now(), 'lock ' || pg_catalog.string_agg(DISTINCT l.mode, '+'), coalesce(a.query, '')
  FROM locks l JOIN others a ON a.pid = l.pid
 WHERE l.relation = $1 AND l.mode <> 'RowExclusiveLock'
   AND NOT (l.mode = 'RowShareLock' AND EXISTS (SELECT 1 FROM locks g WHERE g.pid = l.pid AND g.relation = ANY ($5::oid[])))
 GROUP BY a.pid, a.application_name, a.usename, a.client_addr, a.query
UNION ALL
SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), coalesce(host(a.client_addr), 'local'),
       a.query_start, 'query', a.query
  FROM others a
 WHERE pg_catalog.strpos(pg_catalog.lower(a.query), pg_catalog.lower($2)) > 0 AND a.query_start >= $3`

// Usage takes one sample of who uses blue (see the comment above). since
// bounds the sensor's records and the query start times considered; own
// are the backend PIDs of the caller's own sessions (OwnSessions), left
// out besides the sampling session itself.
//
// A role that cannot see other roles' sessions (no pg_read_all_stats) gets
// a *shadow.BlindError (exit 3): pg_stat_activity would hide every client
// of another role, and finalize dropped blue under one (issue 19).
func Usage(ctx context.Context, q db.Querier, n shadow.Names, since time.Time, own []int32) ([]Client, error) {
	q, release, err := oneSession(ctx, q)
	if err != nil {
		return nil, err
	}
	defer release()
	appSide, err := appSideOIDs(ctx, q, []shadow.Names{n})
	if err != nil {
		return nil, err
	}
	return usageOf(ctx, q, n, since, own, appSide)
}

// appSideOIDs are the relations a client of the app names touches: each
// member's view and green.
func appSideOIDs(ctx context.Context, q db.Querier, members []shadow.Names) ([]uint32, error) {
	out := []uint32{}
	for _, n := range members {
		var app, green uint32
		if err := q.QueryRow(ctx, `SELECT coalesce(pg_catalog.to_regclass($1)::oid, 0), coalesce(pg_catalog.to_regclass($2)::oid, 0)`,
			qident(n.App), qident(n.Green)).Scan(&app, &green); err != nil {
			return nil, fmt.Errorf("resolve the app name and green of %s: %w", n.App, err)
		}
		out = append(out, app, green)
	}
	return out, nil
}

func usageOf(ctx context.Context, q db.Querier, n shadow.Names, since time.Time, own []int32, appSide []uint32) ([]Client, error) {
	if err := shadow.RequireStatsVisibility(ctx, q, "finalize's usage check of "+n.Blue.String()); err != nil {
		return nil, err
	}
	blue, err := findRelation(ctx, q, n.Blue)
	if err != nil || blue == nil {
		return nil, err
	}
	u, err := usageState(ctx, q, n, blue.OID)
	if err != nil {
		return nil, err
	}
	src := `(SELECT NULL::int AS pid, ''::text AS application_name, ''::text AS usename, ''::text AS client_addr,
		NULL::timestamptz AS at, ''::text AS query WHERE false) s`
	if u.table {
		src = qident(usageTable(n))
	}
	if own == nil {
		own = []int32{}
	}
	rows, err := q.Query(ctx, fmt.Sprintf(usageSQL, src), blue.OID, n.BlueSchema, since, own, appSide)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Client, error) {
		var c Client
		err := r.Scan(&c.PID, &c.Application, &c.User, &c.ClientAddr, &c.LastSeen, &c.How, &c.Query)
		return c, err
	})
}

// oneSession pins q to one connection when it is a pool, so that a sample's
// statements (and its trace in pg_stat_activity) stay in the one session it
// excludes by pg_backend_pid().
func oneSession(ctx context.Context, q db.Querier) (db.Querier, func(), error) {
	p, ok := q.(*pgxpool.Pool)
	if !ok {
		return q, func() {}, nil
	}
	c, err := p.Acquire(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("acquire a session for the usage check of blue: %w", err)
	}
	return c, c.Release, nil
}

// mergeClients adds b to a, one entry per (pid, how kind), the latest kept.
func mergeClients(a, b []Client) []Client {
	for _, c := range b {
		kind := strings.Fields(c.How)[0]
		found := false
		for i := range a {
			if a[i].PID == c.PID && strings.Fields(a[i].How)[0] == kind && a[i].Application == c.Application {
				if c.LastSeen.After(a[i].LastSeen) {
					a[i] = c
				}
				found = true
				break
			}
		}
		if !found {
			a = append(a, c)
		}
	}
	return a
}

// WatchOptions tune WatchUsage.
type WatchOptions struct {
	Period   time.Duration // how long to watch (the quiet period)
	Interval time.Duration // sampling interval (default 1s)
	// Since bounds the sensor records considered (default: now - Period).
	Since time.Time
	// Tick, when set, is called after each sample with the time left.
	Tick func(left time.Duration, seen []Client)
	// Own: the backend PIDs of the caller's own sessions (see Usage).
	Own []int32
	// Sampler, when set, is told the backend PID of the one session every
	// sample ran in: a later check (finalize's, in its transaction) must
	// count it as the caller's own, as that session's last query, the
	// sample, names the blue schema.
	Sampler func(pid int32)
}

// OwnSessions returns the backend PIDs of pool's idle connections and of
// extra (dedicated sessions, such as the migration lock's): greenswap's
// own sessions in this process, known by what the server told it at
// connect time rather than by any name a client could also claim. A
// connection busy elsewhere at the time is not listed, so it would show as
// a client: the mistake this can make is a refusal, never a blind eye.
func OwnSessions(ctx context.Context, pool *pgxpool.Pool, extra ...uint32) []int32 {
	var own []int32
	for _, c := range pool.AcquireAllIdle(ctx) {
		// The server's PID, not the BackendKeyData's: behind a session-mode
		// proxy the latter is the proxy's invention.
		var pid int32
		if err := c.QueryRow(ctx, `SELECT pg_catalog.pg_backend_pid()`, pgx.QueryExecModeSimpleProtocol).Scan(&pid); err == nil {
			own = append(own, pid)
		}
		c.Release()
	}
	for _, pid := range extra {
		if pid != 0 {
			own = append(own, int32(pid))
		}
	}
	return own
}

// WatchUsage samples Usage every Interval for Period and returns every
// client seen. It stops early, at the first sample that sees one.
//
// Every sample runs in one session, held for the whole watch. Each sample
// reads the sensor table by its blue-schema name, so the session that ran
// it looks like a reader of blue to the next sample (the "query" kind).
// Given a pool, samples used to run in whichever connection was idle, and
// one that had been busy elsewhere in the process when the caller listed
// its own sessions (a `sync --watch` in the same process polls the pool)
// was later flagged by the next sample as a client of blue.
func WatchUsage(ctx context.Context, q db.Querier, n shadow.Names, opt WatchOptions) ([]Client, error) {
	return WatchUsageMembers(ctx, q, []shadow.Names{n}, opt)
}

// WatchUsageMembers is WatchUsage over every blue of a migration: each
// sample looks at all of them, and it stops at the first client seen on
// any.
func WatchUsageMembers(ctx context.Context, q db.Querier, members []shadow.Names, opt WatchOptions) ([]Client, error) {
	if opt.Interval <= 0 {
		opt.Interval = time.Second
	}
	q, release, err := oneSession(ctx, q)
	if err != nil {
		return nil, err
	}
	defer release()
	if opt.Sampler != nil {
		var pid int32
		if err := q.QueryRow(ctx, `SELECT pg_catalog.pg_backend_pid()`).Scan(&pid); err != nil {
			return nil, fmt.Errorf("read the sampling session's PID: %w", err)
		}
		opt.Sampler(pid)
	}
	start := time.Now()
	since := opt.Since
	if since.IsZero() {
		since = start.Add(-opt.Period)
	}
	var seen []Client
	for {
		cs, err := UsageMembers(ctx, q, members, since, opt.Own)
		if err != nil {
			return seen, err
		}
		seen = mergeClients(seen, cs)
		left := opt.Period - time.Since(start)
		if opt.Tick != nil {
			opt.Tick(max(left, 0), seen)
		}
		if len(seen) > 0 || left <= 0 {
			return seen, nil
		}
		select {
		case <-ctx.Done():
			return seen, ctx.Err()
		case <-time.After(min(opt.Interval, left)):
		}
	}
}

// ---------------------------------------------------------------------------
// Sequences

// sequenceUse is a sequence a column default draws from.
type sequenceUse struct {
	Column      string             `json:"column"`
	Seq         spec.QualifiedName `json:"sequence"`
	SeqOID      uint32             `json:"-"`
	OwnerOID    uint32             `json:"-"` // the table owning the sequence (0: none)
	OwnerColumn string             `json:"-"`
	Identity    bool               `json:"identity"` // it is an identity column's sequence
}

func defaultSequences(ctx context.Context, q db.Querier, table uint32) ([]sequenceUse, error) {
	rows, err := q.Query(ctx, `
		SELECT DISTINCT a.attname::text, sn.nspname::text, s.relname::text, s.oid,
		       coalesce(o.refobjid, 0), coalesce(oa.attname::text, ''), coalesce(o.deptype = 'i', false), a.attnum
		  FROM pg_attrdef ad
		  JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
		  JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.refclassid = 'pg_class'::regclass
		  JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
		  JOIN pg_namespace sn ON sn.oid = s.relnamespace
		  LEFT JOIN pg_depend o ON o.classid = 'pg_class'::regclass AND o.objid = s.oid
		                       AND o.refclassid = 'pg_class'::regclass AND o.deptype IN ('a', 'i')
		  LEFT JOIN pg_attribute oa ON oa.attrelid = o.refobjid AND oa.attnum = o.refobjsubid
		 WHERE ad.adrelid = $1
		 ORDER BY a.attnum`, table)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (sequenceUse, error) {
		var s sequenceUse
		var num int16
		err := r.Scan(&s.Column, &s.Seq.Schema, &s.Seq.Name, &s.SeqOID, &s.OwnerOID, &s.OwnerColumn, &s.Identity, &num)
		return s, err
	})
}

// sequenceGrantSQL: a green column drawing from blue's identity sequence
// through nextval() needs USAGE on it for the inserting role (an identity
// column needs none), so every role that may INSERT into blue gets it.
func sequenceGrantSQL(seqs []sequenceUse, grants []shadow.Grant) []string {
	var sql []string
	for _, s := range seqs {
		if !s.Identity {
			continue
		}
		for _, g := range grants {
			if g.Privilege != "INSERT" {
				continue
			}
			to := "PUBLIC"
			if g.Grantee != "PUBLIC" {
				to = db.Ident(g.Grantee)
			}
			sql = append(sql, "GRANT USAGE ON SEQUENCE "+db.Ident(s.Seq.Schema, s.Seq.Name)+" TO "+to)
		}
	}
	return sql
}
