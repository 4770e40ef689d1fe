package verify

// Verify of a table split (issue 15): under one REPEATABLE READ snapshot,
// each green against blue's rows through the green's forward mapping and
// where, then blue against the old shape rebuilt from the greens
// (shadow.SplitMapping.RebuildSQL). Rows are compared by their text form
// (as --exact), keyed by blue's key; a split has no chunked checksums yet,
// every row is read once per comparison.

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
)

// SplitTarget is what a split's verify compares.
type SplitTarget struct {
	Names   []shadow.Names // per spec.Split entry (shadow.SplitNames)
	Mapping *shadow.SplitMapping
	// MaxReported bounds the differences listed per comparison (0: 20).
	MaxReported int
}

// SplitComparison is one comparison of a split's verify: a green ("the
// green's table") or the old shape ("rebuilt").
type SplitComparison struct {
	Table string
	*Result
}

// RebuiltTable names the old-shape comparison in a split's results.
const RebuiltTable = "old shape rebuilt from the greens"

// Split runs a split's comparisons under one snapshot, in write order (the
// greens parents first, then the old shape). A completed comparison is a
// result, OK or not, and a nil error.
func Split(ctx context.Context, pool *pgxpool.Pool, t SplitTarget) ([]SplitComparison, error) {
	if t.MaxReported <= 0 {
		t.MaxReported = 20
	}
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx)
	n0 := t.Names[0]
	if _, err := tx.Exec(ctx, "SET LOCAL search_path TO "+shadow.SearchPathFor(n0.App.Schema)); err != nil {
		return nil, err
	}
	var at time.Time
	if err := tx.QueryRow(ctx, `SELECT pg_catalog.now()`).Scan(&at); err != nil { // takes the snapshot
		return nil, err
	}
	m := t.Mapping
	blue := db.Ident(n0.Blue.Schema, n0.Blue.Name)
	var out []SplitComparison
	for k := range m.Greens {
		g := &m.Greens[k]
		n := t.Names[g.Spec]
		d := &g.Forward
		var sk, tk, sc, tc, cols []string
		for _, c := range g.KeyOf {
			sk = append(sk, d.ValueExpr(c)+"::pg_catalog.text")
			tk = append(tk, db.Ident("t", c)+"::pg_catalog.text")
		}
		for _, c := range d.Columns {
			sc = append(sc, d.CompareExpr(c.Target))
			tc = append(tc, db.Ident("t", c.Target))
			cols = append(cols, c.Target)
		}
		src := "SELECT ARRAY[" + strings.Join(sk, ", ") + "] AS k, ROW(" + strings.Join(sc, ", ") + ")::pg_catalog.text AS r FROM " + blue + " AS s"
		if g.Where != "" {
			src += " WHERE COALESCE((" + g.Where + ")::pg_catalog.bool, false)"
		}
		dst := "SELECT ARRAY[" + strings.Join(tk, ", ") + "] AS k, ROW(" + strings.Join(tc, ", ") + ")::pg_catalog.text AS r FROM " +
			db.Ident(n.Green.Schema, n.Green.Name) + " AS t"
		res, err := compareSplit(ctx, tx, src, dst, t.MaxReported)
		if err != nil {
			return nil, fmt.Errorf("verify %s: %w", n.Green, err)
		}
		res.Source, res.Target, res.Compared = n0.Blue.String()+whereNote(g.Where), n.Green.String(), cols
		res.SourceSide, res.TargetSide, res.KeyColumns = "blue", "green", g.KeyOf
		res.Direction, res.SnapshotAt = Forward, at
		out = append(out, SplitComparison{Table: n.Green.String(), Result: res})
	}
	var bk, rk, bc, rc, cols []string
	for _, k := range m.Key {
		bk = append(bk, db.Ident("b", k)+"::pg_catalog.text")
		rk = append(rk, db.Ident("r", k)+"::pg_catalog.text")
	}
	for _, c := range m.Reverse {
		bc = append(bc, db.Ident("b", c.Target))
		rc = append(rc, db.Ident("r", c.Target))
		cols = append(cols, c.Target)
	}
	src := "SELECT ARRAY[" + strings.Join(bk, ", ") + "] AS k, ROW(" + strings.Join(bc, ", ") + ")::pg_catalog.text AS r FROM " + blue + " AS b"
	dst := "SELECT ARRAY[" + strings.Join(rk, ", ") + "] AS k, ROW(" + strings.Join(rc, ", ") + ")::pg_catalog.text AS r FROM (" +
		m.RebuildSQL(n0.GreenSchema, nil) + ") AS r"
	res, err := compareSplit(ctx, tx, src, dst, t.MaxReported)
	if err != nil {
		return nil, fmt.Errorf("verify the old shape rebuilt from the greens: %w", err)
	}
	res.Source, res.Target, res.Compared = n0.Blue.String(), RebuiltTable, cols
	res.SourceSide, res.TargetSide, res.KeyColumns = "blue", "greens", m.Key
	res.Direction, res.SnapshotAt = Reverse, at
	if len(m.Dropped) > 0 {
		for _, c := range m.Dropped {
			res.Excluded = append(res.Excluded, Excluded{Column: c, Reason: "not mapped", Detail: "under drop: no green carries it"})
		}
	}
	out = append(out, SplitComparison{Table: RebuiltTable, Result: res})
	return out, nil
}

func whereNote(w string) string {
	if w == "" {
		return ""
	}
	return " where " + w
}

// compareSplit compares two row sets of (k text[], r text): rows whose
// key only one side has, or whose text forms differ.
func compareSplit(ctx context.Context, tx pgx.Tx, src, dst string, max int) (*Result, error) {
	t0 := time.Now()
	res := &Result{Exact: true}
	diff := "WITH s AS (" + src + "), t AS (" + dst + "), d AS (SELECT COALESCE(s.k, t.k) AS k, s.r AS sr, t.r AS tr FROM s FULL JOIN t ON s.k = t.k " +
		"WHERE s.r IS DISTINCT FROM t.r) "
	var nd int64
	if err := tx.QueryRow(ctx, diff+"SELECT (SELECT pg_catalog.count(*) FROM s), (SELECT pg_catalog.count(*) FROM t), (SELECT pg_catalog.count(*) FROM d)").
		Scan(&res.SourceRows, &res.TargetRows, &nd); err != nil {
		return nil, err
	}
	if nd > 0 {
		rows, err := tx.Query(ctx, diff+"SELECT k, COALESCE(sr, ''), COALESCE(tr, '') FROM d ORDER BY k LIMIT $1", max)
		if err != nil {
			return nil, err
		}
		diffs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Difference, error) {
			var d Difference
			err := r.Scan(&d.Key, &d.Source, &d.Target)
			switch {
			case d.Target == "":
				d.Kind = "missing"
			case d.Source == "":
				d.Kind = "extra"
			default:
				d.Kind = "different"
			}
			return d, err
		})
		if err != nil {
			return nil, err
		}
		res.Differences = diffs
	}
	res.DifferenceCount = int(nd)
	res.OK = nd == 0
	res.Chunks = 1
	if !res.OK {
		res.MismatchedChunks = 1
	}
	res.ChunkStats = []ChunkStat{}
	res.Rows = res.SourceRows
	res.Duration = time.Since(t0)
	res.DurationMS = ms(res.Duration)
	res.TotalMS = res.DurationMS
	return res, nil
}
