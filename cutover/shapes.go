package cutover

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
)

// Shape telemetry: which clients use which shape of each table (issue 16).
//
// The shapes are the app name (the view clients use), blue and green (the
// tables in their version schemas). Where the samples come from, and why:
//
//   - pg_locks of client backends: a session holds a lock on each relation
//     its open transaction touched, until it ends. A statement through the
//     app name locks the view itself; one through a version schema locks
//     only the tables. Reads take AccessShare (RowShare for FOR UPDATE/
//     SHARE), writes RowExclusive.
//   - pg_stat_activity for who the session is: application_name, user,
//     client address, state.
//   - a write through either version schema locks both tables: the sync
//     trigger copies it to the other in the client's own session. After
//     cutover the usage sensor on blue (usage.go) records the sessions whose
//     writes start on blue, which tells the two apart once such a write has
//     committed (until then the record is the writer's own); before cutover
//     they are one bucket, "blue|green".
//   - a session holding a lock on some app name of the migration is a client
//     of the app name: its locks on the other tables of the migration without
//     their view are the foreign key checks and cascades its writes fire
//     (the sync's writes into a parent's or a child's blue), not a client of
//     their version schemas (break5 finding 01). Likewise a session that
//     writes one table and holds only RowShare on another's tables: the
//     foreign key check (FOR KEY SHARE) of its write, not a read.
//   - pg_stat_user_tables' n_tup_ins/upd/del per table over the window: every
//     row written, by any path. With triggers each write lands on both tables
//     (the client's and the sync's copy), so those counts say how busy a table
//     is, never whose writes they are; the split by shape is the sessions'.
//
// What the sampling misses: a statement that begins and commits between two
// samples holds its locks for less than the interval and is not seen; a
// session idle between transactions holds no lock and is seen only while a
// transaction is open. The shares are of sightings (a session seen on a shape
// in one sample), so a client with long transactions weighs more than one with
// many short ones.
//
// A sample is one statement reading pg_locks, pg_stat_activity and
// pg_stat_user_tables: no lock beyond AccessShare on catalogs and views.

// Shape names.
const (
	ShapeApp   = "app"
	ShapeBlue  = "blue"
	ShapeGreen = "green"
	// ShapeVersion is a write through blue's or green's schema before
	// cutover: both tables are locked and the usage sensor is not on yet.
	ShapeVersion = "blue|green"
)

// ShapeMisses is what every shape report says it cannot see.
const ShapeMisses = "sampled from pg_locks and pg_stat_activity: a statement that starts and commits between two samples, " +
	"or a session idle between transactions, is not seen; shares are of sightings (a session on a shape in one sample)"

// ShapeMember is one table of a migration to sample.
type ShapeMember struct {
	Names shadow.Names
	// CutOver: the app name reads green and the usage sensor on blue
	// records the writes that start there.
	CutOver bool
}

// ShapeSighting is one session seen on one shape of one table in one sample.
type ShapeSighting struct {
	Table       string
	Shape       string
	PID         int32
	Application string
	User        string
	ClientAddr  string
	State       string
	Writing     bool
	// Greenswap: its application_name starts with greenswap (a sync, a
	// backfill). status lists it apart and leaves it out of the shares;
	// finalize does not trust the name (usage.go, NamesUntrusted).
	Greenswap bool
}

// ShapeRows is one table's n_tup_ins+n_tup_upd+n_tup_del, by any path.
type ShapeRows struct {
	Table string
	Shape string // blue or green
	Rows  int64
}

type shapeRelations struct {
	table            string
	app, blue, green uint32
	sensor           string // the usage table's quoted name, "" when absent
	cutOver          bool
}

func resolveShapes(ctx context.Context, q db.Querier, members []ShapeMember) ([]shapeRelations, error) {
	out := make([]shapeRelations, 0, len(members))
	for _, m := range members {
		n := m.Names
		r := shapeRelations{table: n.App.String(), cutOver: m.CutOver}
		var sensor bool
		if err := q.QueryRow(ctx, `SELECT coalesce(pg_catalog.to_regclass($1)::oid, 0), coalesce(pg_catalog.to_regclass($2)::oid, 0),
			coalesce(pg_catalog.to_regclass($3)::oid, 0), pg_catalog.to_regclass($4) IS NOT NULL`,
			qident(n.App), qident(n.Blue), qident(n.Green), qident(usageTable(n))).Scan(&r.app, &r.blue, &r.green, &sensor); err != nil {
			return nil, fmt.Errorf("resolve the shapes of %s: %w", n.App, err)
		}
		if sensor {
			r.sensor = qident(usageTable(n))
		}
		out = append(out, r)
	}
	return out, nil
}

// shapeLocksSQL: every client session's relation locks on the shapes, one
// row per session and table. %s is the union of the usage tables of the
// members that have one (pid, at), or an empty relation.
const shapeLocksSQL = `
WITH m AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::oid[]), pg_catalog.unnest($3::oid[]), pg_catalog.unnest($4::oid[])) AS m(tbl, app, blue, green)),
sensor AS (%s),
l AS (
    SELECT l.pid, m.tbl,
           pg_catalog.bool_or(l.relation = m.app) AS on_app,
           pg_catalog.bool_or(l.relation = m.app AND l.mode = 'RowExclusiveLock') AS app_w,
           pg_catalog.bool_or(l.relation = m.blue) AS on_blue,
           pg_catalog.bool_or(l.relation = m.blue AND l.mode = 'RowExclusiveLock') AS blue_w,
           pg_catalog.bool_or(l.relation = m.green) AS on_green,
           pg_catalog.bool_or(l.relation = m.green AND l.mode = 'RowExclusiveLock') AS green_w,
           pg_catalog.bool_and(l.mode = 'RowShareLock') AS key_share_only
      FROM pg_catalog.pg_locks l JOIN m ON l.relation IN (m.app, m.blue, m.green)
     WHERE l.locktype = 'relation' AND l.granted
       AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
     GROUP BY l.pid, m.tbl
)
SELECT l.tbl, a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''), coalesce(pg_catalog.host(a.client_addr), 'local'),
       coalesce(a.state, ''), l.on_app, l.app_w, l.on_blue, l.blue_w, l.on_green, l.green_w,
       EXISTS (SELECT 1 FROM sensor s WHERE s.pid = a.pid AND s.at >= $6),
       pg_catalog.bool_or(l.on_app) OVER (PARTITION BY a.pid),
       l.key_share_only AND pg_catalog.bool_or(l.app_w OR l.blue_w OR l.green_w) OVER (PARTITION BY a.pid)
  FROM l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
 WHERE a.pid <> pg_catalog.pg_backend_pid() AND a.backend_type = 'client backend' AND a.pid <> ALL ($5::int4[])`

// sampleShapes is one sample of the sessions on the shapes.
//
// The sensor's record of a write is the writer's own until it commits, so
// a session is told a blue writer by a committed write to blue since
// sensorSince: a new client of blue counts as green until its first
// transaction on blue has committed.
func sampleShapes(ctx context.Context, q db.Querier, rels []shapeRelations, own []int32, sensorSince time.Time) ([]ShapeSighting, error) {
	var tbls []string
	var app, blue, green []uint32
	var sensors []string
	cut := map[string]bool{}
	for _, r := range rels {
		tbls, app, blue, green = append(tbls, r.table), append(app, r.app), append(blue, r.blue), append(green, r.green)
		if r.sensor != "" && !slices.Contains(sensors, r.sensor) {
			sensors = append(sensors, r.sensor)
		}
		cut[r.table] = r.cutOver
	}
	src := `SELECT NULL::int AS pid, NULL::timestamptz AS at WHERE false`
	if len(sensors) > 0 {
		parts := make([]string, len(sensors))
		for i, s := range sensors {
			parts[i] = "SELECT pid, at FROM " + s
		}
		src = strings.Join(parts, " UNION ALL ")
	}
	if own == nil {
		own = []int32{}
	}
	rows, err := q.Query(ctx, fmt.Sprintf(shapeLocksSQL, src), tbls, app, blue, green, own, sensorSince)
	if err != nil {
		return nil, fmt.Errorf("sample the sessions on the shapes: %w", err)
	}
	defer rows.Close()
	var out []ShapeSighting
	for rows.Next() {
		var s ShapeSighting
		var onApp, appW, onBlue, blueW, onGreen, greenW, wroteBlue, anyApp, fkCheck bool
		if err := rows.Scan(&s.Table, &s.PID, &s.Application, &s.User, &s.ClientAddr, &s.State,
			&onApp, &appW, &onBlue, &blueW, &onGreen, &greenW, &wroteBlue, &anyApp, &fkCheck); err != nil {
			return nil, err
		}
		s.Greenswap = strings.HasPrefix(strings.ToLower(s.Application), "greenswap")
		switch {
		case onApp:
			s.Shape, s.Writing = ShapeApp, appW
		case anyApp, fkCheck:
			continue // foreign key checks and cascades of a write to another table
		case blueW && greenW:
			s.Writing = true
			switch {
			case wroteBlue:
				s.Shape = ShapeBlue
			case cut[s.Table]:
				s.Shape = ShapeGreen
			default:
				s.Shape = ShapeVersion
			}
		case onBlue && !onGreen:
			s.Shape, s.Writing = ShapeBlue, blueW
		case onGreen && !onBlue:
			s.Shape, s.Writing = ShapeGreen, greenW
		default: // reads of both in one transaction: one sighting each
			out = append(out, withShape(s, ShapeBlue, blueW))
			s.Shape, s.Writing = ShapeGreen, greenW
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

func withShape(s ShapeSighting, shape string, writing bool) ShapeSighting {
	s.Shape, s.Writing = shape, writing
	return s
}

// shapeRows reads each blue's and green's write counters.
func shapeRows(ctx context.Context, q db.Querier, rels []shapeRelations) ([]ShapeRows, error) {
	var out []ShapeRows
	for _, r := range rels {
		for _, side := range []struct {
			shape string
			oid   uint32
		}{{ShapeBlue, r.blue}, {ShapeGreen, r.green}} {
			if side.oid == 0 {
				continue
			}
			var n int64
			err := q.QueryRow(ctx, `SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::int8
				FROM pg_catalog.pg_stat_user_tables WHERE relid = $1`, side.oid).Scan(&n)
			if err != nil {
				return nil, fmt.Errorf("read the write counters of %s: %w", r.table, err)
			}
			out = append(out, ShapeRows{Table: r.table, Shape: side.shape, Rows: n})
		}
	}
	return out, nil
}

// sensorLookBack is how far before a watch a committed write to blue still
// marks its session as a client of blue.
const sensorLookBack = time.Minute

// ShapeWatch is what WatchShapes saw.
type ShapeWatch struct {
	Window    time.Duration
	Samples   int
	Sightings []ShapeSighting // every sighting of every sample
	SeenAt    []time.Time     // SeenAt[i] is when Sightings[i] was sampled
	// RowsBefore and RowsAfter are the counters at the window's two ends.
	RowsBefore, RowsAfter []ShapeRows
}

// WatchShapes samples the sessions on members' shapes every interval
// (default 100ms) for window (at least one sample), in one session, and
// reads the write counters at both ends. own are the caller's own backend
// PIDs (OwnSessions), left out.
func WatchShapes(ctx context.Context, q db.Querier, members []ShapeMember, own []int32, window, interval time.Duration) (*ShapeWatch, error) {
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	q, release, err := oneSession(ctx, q)
	if err != nil {
		return nil, err
	}
	defer release()
	rels, err := resolveShapes(ctx, q, members)
	if err != nil {
		return nil, err
	}
	w := &ShapeWatch{}
	if w.RowsBefore, err = shapeRows(ctx, q, rels); err != nil {
		return nil, err
	}
	start := time.Now()
	for {
		at := time.Now()
		ss, err := sampleShapes(ctx, q, rels, own, start.Add(-sensorLookBack))
		if err != nil {
			return nil, err
		}
		w.Samples++
		for _, s := range ss {
			w.Sightings, w.SeenAt = append(w.Sightings, s), append(w.SeenAt, at)
		}
		left := window - time.Since(start)
		if left <= 0 {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(min(interval, left)):
		}
	}
	w.Window = time.Since(start)
	if w.RowsAfter, err = shapeRows(ctx, q, rels); err != nil {
		return nil, err
	}
	return w, nil
}

// ShapeReport is a watch summed up per table and shape: the status --json
// document's "shapes" and the basis of finalize's --max-legacy-share.
type ShapeReport struct {
	WindowS float64 `json:"window_s"`
	Samples int     `json:"samples"`
	Misses  string  `json:"misses"` // what the sampling cannot see
	// WriteShare is each shape's share of the client write sightings over
	// every table (app, blue, green, blue|green); empty when none was seen.
	WriteShare map[string]float64 `json:"write_share"`
	// LegacyShare is blue's share of every client sighting, reads and
	// writes, over every table: what finalize's --max-legacy-share bounds.
	LegacyShare float64       `json:"legacy_share"`
	Tables      []TableShapes `json:"tables"`
	// Greenswap: sessions whose application_name says greenswap (sync,
	// backfill): listed, not counted in any share.
	Greenswap []ShapeClient `json:"greenswap,omitempty"`
}

// TableShapes is one table's shapes.
type TableShapes struct {
	Table  string     `json:"table"`
	Shapes []ShapeUse `json:"shapes"`
}

// ShapeUse is one shape of one table over the window.
type ShapeUse struct {
	Shape string `json:"shape"`
	// RowsWritten: the table's n_tup_ins+upd+del over the window, every
	// path (with triggers each client write is counted on both tables);
	// absent for the app name, a view.
	RowsWritten *int64        `json:"rows_written,omitempty"`
	Reads       int           `json:"read_sightings"`
	Writes      int           `json:"write_sightings"`
	WriteShare  float64       `json:"write_share"` // of this table's client write sightings
	Clients     []ShapeClient `json:"clients"`
}

// ShapeClient is one session on one shape.
type ShapeClient struct {
	PID         int32     `json:"pid"`
	Application string    `json:"application_name"`
	User        string    `json:"user"`
	ClientAddr  string    `json:"client_addr"`
	Shape       string    `json:"shape,omitempty"` // in Greenswap only
	Table       string    `json:"table,omitempty"` // in Greenswap only
	Reads       int       `json:"read_sightings"`
	Writes      int       `json:"write_sightings"`
	LastSeen    time.Time `json:"last_seen"`
}

func (c ShapeClient) String() string {
	app := c.Application
	if app == "" {
		app = "(no application_name)"
	}
	return fmt.Sprintf("%s (user %s, from %s, pid %d): %d read and %d write sightings, last %s",
		app, c.User, c.ClientAddr, c.PID, c.Reads, c.Writes, c.LastSeen.Format("15:04:05"))
}

// Report sums the watch up; tables in members' order, shapes app, blue,
// green, blue|green (those with a sighting or a table).
func (w *ShapeWatch) Report() ShapeReport {
	r := ShapeReport{WindowS: w.Window.Seconds(), Samples: w.Samples, Misses: ShapeMisses, WriteShare: map[string]float64{}}
	rows := func(list []ShapeRows, table, shape string) (int64, bool) {
		for _, x := range list {
			if x.Table == table && x.Shape == shape {
				return x.Rows, true
			}
		}
		return 0, false
	}
	var tables []string
	for _, x := range w.RowsBefore {
		if !slices.Contains(tables, x.Table) {
			tables = append(tables, x.Table)
		}
	}
	for _, s := range w.Sightings {
		if !slices.Contains(tables, s.Table) {
			tables = append(tables, s.Table)
		}
	}
	add := func(list []ShapeClient, s ShapeSighting, at time.Time, withWhere bool) []ShapeClient {
		i := slices.IndexFunc(list, func(c ShapeClient) bool {
			return c.PID == s.PID && c.Application == s.Application && (!withWhere || c.Shape == s.Shape && c.Table == s.Table)
		})
		if i < 0 {
			c := ShapeClient{PID: s.PID, Application: s.Application, User: s.User, ClientAddr: s.ClientAddr}
			if withWhere {
				c.Shape, c.Table = s.Shape, s.Table
			}
			list, i = append(list, c), len(list)
		}
		if s.Writing {
			list[i].Writes++
		} else {
			list[i].Reads++
		}
		if at.After(list[i].LastSeen) {
			list[i].LastSeen = at
		}
		return list
	}
	writes, all, blueAll := map[string]int{}, 0, 0
	for _, t := range tables {
		ts := TableShapes{Table: t}
		byShape := map[string]*ShapeUse{}
		order := []string{ShapeApp, ShapeBlue, ShapeGreen, ShapeVersion}
		for _, sh := range order {
			byShape[sh] = &ShapeUse{Shape: sh, Clients: []ShapeClient{}}
			b, ok1 := rows(w.RowsBefore, t, sh)
			a, ok2 := rows(w.RowsAfter, t, sh)
			if ok1 && ok2 {
				d := max(a-b, 0)
				byShape[sh].RowsWritten = &d
			}
		}
		tableWrites := 0
		for i, s := range w.Sightings {
			if s.Table != t {
				continue
			}
			if s.Greenswap {
				r.Greenswap = add(r.Greenswap, s, w.SeenAt[i], true)
				continue
			}
			u := byShape[s.Shape]
			u.Clients = add(u.Clients, s, w.SeenAt[i], false)
			all++
			if s.Shape == ShapeBlue {
				blueAll++
			}
			if s.Writing {
				u.Writes++
				writes[s.Shape]++
				tableWrites++
			} else {
				u.Reads++
			}
		}
		for _, sh := range order {
			u := byShape[sh]
			if u.Reads+u.Writes == 0 && u.RowsWritten == nil && sh != ShapeApp {
				continue
			}
			if tableWrites > 0 {
				u.WriteShare = float64(u.Writes) / float64(tableWrites)
			}
			ts.Shapes = append(ts.Shapes, *u)
		}
		r.Tables = append(r.Tables, ts)
	}
	total := 0
	for _, n := range writes {
		total += n
	}
	for sh, n := range writes {
		r.WriteShare[sh] = float64(n) / float64(total)
	}
	if all > 0 {
		r.LegacyShare = float64(blueAll) / float64(all)
	}
	return r
}

// BlueClients are the clients the report saw on blue, every table.
func (r ShapeReport) BlueClients() []ShapeClient {
	var out []ShapeClient
	for _, t := range r.Tables {
		for _, u := range t.Shapes {
			if u.Shape == ShapeBlue {
				out = append(out, u.Clients...)
			}
		}
	}
	return out
}

// NamesUntrusted is the watch with no session told greenswap's by its
// application_name: every sighting counts as a client's. What finalize
// gates on: any client may call itself greenswap, and the caller's own
// sessions are already left out by PID (own).
func (w *ShapeWatch) NamesUntrusted() *ShapeWatch {
	out := *w
	out.Sightings = slices.Clone(w.Sightings)
	for i := range out.Sightings {
		out.Sightings[i].Greenswap = false
	}
	return &out
}

// Only is the watch restricted to the given tables (app names).
func (w *ShapeWatch) Only(tables []string) *ShapeWatch {
	out := &ShapeWatch{Window: w.Window, Samples: w.Samples}
	for i, s := range w.Sightings {
		if slices.Contains(tables, s.Table) {
			out.Sightings, out.SeenAt = append(out.Sightings, s), append(out.SeenAt, w.SeenAt[i])
		}
	}
	keep := func(list []ShapeRows) []ShapeRows {
		var o []ShapeRows
		for _, x := range list {
			if slices.Contains(tables, x.Table) {
				o = append(o, x)
			}
		}
		return o
	}
	out.RowsBefore, out.RowsAfter = keep(w.RowsBefore), keep(w.RowsAfter)
	return out
}
