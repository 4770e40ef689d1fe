package verify

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/greenswap/greenswap/internal/db"
)

const (
	// smallTablePages: a table up to this many pages (8 MB at the default
	// block size) is read whole to place boundaries exactly.
	smallTablePages = 1024
	// maxChunks bounds the chunk count (and so the bind parameters of a
	// grouped scan) whatever the table size.
	maxChunks = 20000
	// samplePagesPerChunk: pages sampled per chunk on large tables, so each
	// boundary is a quantile of a few thousand keys.
	samplePagesPerChunk = 20
)

// boundaries splits the source's key space into chunks of about chunkRows
// rows. It runs in the coordinator's transaction (the shared snapshot).
// Small tables are read whole (exact quantiles); large ones are sampled with
// TABLESAMPLE SYSTEM, which reads a few random pages instead of the table:
// boundaries only have to partition the key space, not be exact, and every
// row falls in exactly one chunk whatever they are.
func (p *plan) boundaries(ctx context.Context, tx pgx.Tx, chunkRows int) ([]chunk, int64, error) {
	var pages int64
	var reltuples float64
	var relpages int64
	err := tx.QueryRow(ctx, `SELECT pg_catalog.pg_relation_size(c.oid) / pg_catalog.current_setting('block_size')::bigint, c.reltuples::float8, c.relpages::bigint
		FROM pg_class c WHERE c.oid = $1::regclass`, p.src.rel).Scan(&pages, &reltuples, &relpages)
	if err != nil {
		return nil, 0, fmt.Errorf("size of %s: %w", p.src.name, err)
	}
	keyCols := make([]string, len(p.key))
	keyText := make([]string, len(p.key))
	for i, k := range p.key {
		keyCols[i] = db.Ident(k)
		keyText[i] = db.Ident(k) + "::text"
	}
	order := strings.Join(keyCols, ", ")

	var est int64
	from := p.src.rel
	if pages <= smallTablePages {
		if err := tx.QueryRow(ctx, "SELECT pg_catalog.count(*) FROM "+p.src.rel).Scan(&est); err != nil {
			return nil, 0, err
		}
	} else {
		perPage := 60.0 // a guess for never-analyzed tables, refined by the sample below
		if reltuples > 0 && relpages > 0 {
			perPage = reltuples / float64(relpages)
		}
		est = int64(perPage * float64(pages))
	}
	n := int((est + int64(chunkRows) - 1) / int64(chunkRows))
	n = max(1, min(n, maxChunks))
	if n == 1 {
		return []chunk{{idx: 0}}, est, nil
	}
	if pages > smallTablePages {
		pct := math.Min(100, 100*float64(n*samplePagesPerChunk)/float64(pages))
		from += " TABLESAMPLE SYSTEM (" + strconv.FormatFloat(pct, 'f', 4, 64) + ") REPEATABLE (0)"
	}
	// The first key of tiles 2..n of the ordered sample are the lower
	// bounds of chunks 1..n-1.
	sql := "SELECT DISTINCT ON (tile) " + strings.Join(keyText, ", ") + " FROM (SELECT " + order + ", ntile(" + strconv.Itoa(n) +
		") OVER (ORDER BY " + order + ") AS tile FROM " + from + ") s WHERE tile > 1 ORDER BY tile, " + order
	rows, err := tx.Query(ctx, sql)
	if err != nil {
		return nil, 0, fmt.Errorf("chunk boundaries of %s: %w", p.src.name, err)
	}
	var bounds [][]string
	for rows.Next() {
		vals := make([]string, len(p.key))
		ptrs := make([]any, len(vals))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			rows.Close()
			return nil, 0, err
		}
		bounds = append(bounds, vals)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	chunks := make([]chunk, 0, len(bounds)+1)
	var lo []string
	for _, b := range bounds {
		chunks = append(chunks, chunk{idx: len(chunks), lo: lo, hi: b})
		lo = b
	}
	chunks = append(chunks, chunk{idx: len(chunks), lo: lo})
	return chunks, est, nil
}
