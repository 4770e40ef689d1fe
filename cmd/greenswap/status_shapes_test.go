package main

import (
	"strings"
	"testing"
	"time"

	"github.com/greenswap/greenswap/cutover"
	"github.com/greenswap/greenswap/runner"
)

// TestWriteStatusTablesAndShapes: the text of a migration of two tables
// has each table's progress line and, under shapes, each table with each
// shape's clients, the write shares, greenswap's own sessions apart and
// what the sampling misses; a role that could not sample says why.
func TestWriteStatusTablesAndShapes(t *testing.T) {
	now := time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)
	rows := int64(120)
	rep := &runner.StatusReport{Migrations: []runner.MigrationStatus{{
		Name: "oc", Table: "public.orders", Mode: "trigger", State: "cut_over", PrimarySide: "green",
		Tables: []runner.TableProgress{
			{Table: "public.orders", RowsCopied: 100, RowsEstimate: 100, Percent: 100, Done: true},
			{Table: "public.order_items", RowsCopied: 50, RowsEstimate: 300, Percent: 16.7, Copying: true, RowsPerSec: 900},
		},
		Shapes: &cutover.ShapeReport{WindowS: 2, Samples: 21, Misses: cutover.ShapeMisses, LegacyShare: 0.25,
			WriteShare: map[string]float64{"app": 0.75, "blue": 0.25},
			Tables: []cutover.TableShapes{
				{Table: "public.orders", Shapes: []cutover.ShapeUse{
					{Shape: "app", Writes: 30, WriteShare: 0.75, Clients: []cutover.ShapeClient{{PID: 7, Application: "web", User: "app", ClientAddr: "10.0.0.1", Writes: 30, LastSeen: now}}},
					{Shape: "blue", Writes: 10, WriteShare: 0.25, RowsWritten: &rows, Clients: []cutover.ShapeClient{{PID: 8, Application: "old-api", User: "old", ClientAddr: "10.0.0.2", Writes: 10, LastSeen: now}}},
				}},
				{Table: "public.order_items", Shapes: []cutover.ShapeUse{{Shape: "app", Clients: []cutover.ShapeClient{}}}},
			},
			Greenswap: []cutover.ShapeClient{{PID: 9, Application: "greenswap:oc", Table: "public.orders", Shape: "green", Reads: 3, LastSeen: now}},
		},
	}, {
		Name: "other", Table: "public.acc", Mode: "trigger", State: "synced", ShapesUnavailable: "needs pg_read_all_stats",
	}}}
	var b strings.Builder
	writeStatus(&b, rep, now)
	out := b.String()
	for _, want := range []string{
		"    table public.orders  done: 100 rows copied",
		"    table public.order_items  50 of ~300 rows (16.7%), copying now, 900 rows/s",
		"shapes    over 2.0s (21 samples): writes: app 75%, blue 25%; legacy (blue) share of sightings 25%",
		"    public.orders\n      app        1 client(s), 0 read / 30 write sightings, 75% of writes\n        web (user app, from 10.0.0.1, pid 7)",
		"      blue       1 client(s), 0 read / 10 write sightings, 25% of writes, 120 rows written by any path\n        old-api (user old, from 10.0.0.2, pid 8)",
		"    public.order_items\n      app        0 client(s)",
		"greenswap's own (by application_name, not counted): greenswap:oc",
		"a statement that starts and commits between two samples",
		"shapes    not sampled: needs pg_read_all_stats",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status text lacks %q:\n%s", want, out)
		}
	}
}
