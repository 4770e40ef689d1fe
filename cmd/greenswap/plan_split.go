package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/greenswap/greenswap/runner"
)

// writeSplitPlan prints the plan of a table split: the data flow into each
// green, the rebuild of blue from them, then the steps and hazards.
func writeSplitPlan(w io.Writer, r *runner.PlanResult, path string) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	sp := r.Split
	p("greenswap plan: %s — split %s into %d greens: %s (%s mode)", r.Migration, r.Table, len(sp.Greens), r.GreenTable, r.Mode)
	e := r.Estimate
	p("  PostgreSQL %s · key (%s) · ~%s rows · blue %s + %s indexes", planFirstWord(r.Server.Version), strings.Join(r.Key, ", "),
		thousands(e.Rows), runner.HumanBytes(e.BlueTableBytes), runner.HumanBytes(e.BlueIndexBytes))
	p("  Rehearsed in one transaction and rolled back: nothing was changed (ACCESS EXCLUSIVE on %s held %.0f ms)", r.Table, r.Rehearsal.LockHeldMS)
	s := sp.Sample
	p("  Sample: %s blue rows copied into every green and rebuilt back: %d in no root green, %d in several, %d not equal after the round trip",
		thousands(s.Rows), s.NoRoot, s.ManyRoots, s.Lossy)
	p("  Result: %d blocking · %d warning%s · %d info", r.Blocking, r.Warnings, planPlural(r.Warnings), r.Infos)
	p("")
	p("Data flow: blue %s.%s → greens (written in this order: parents first; deleted children first)", r.BlueSchema, strings.TrimPrefix(r.Table, strings.SplitN(r.Table, ".", 2)[0]+"."))
	for _, g := range sp.Greens {
		rows := "every blue row"
		if g.Where != "" {
			rows = "blue rows where " + g.Where
		}
		role := "root"
		if !g.Root {
			role = "references " + strings.Join(g.References, ", ")
		}
		p("  %s ← %s (%s; key %s; %d of the sample)", g.Table, rows, role, strings.Join(g.Key, ", "), g.SampleRows)
		for _, c := range g.Columns {
			planWrap(w, "      ", "        ", c)
		}
	}
	p("")
	p("Rebuild: blue ← roots (UNION ALL) LEFT JOIN every green on the key; a blue row exists while a root holds its key")
	for _, c := range sp.Rebuild {
		planWrap(w, "      ", "        ", c)
	}
	if len(sp.Dropped) > 0 {
		p("  dropped (blue only): %s", strings.Join(sp.Dropped, ", "))
	}
	p("")
	p("Backfill: ~%s rows × %d greens at a conservative %s rows/s ≈ %s; keep at least %s of disk free", thousands(e.Rows), len(sp.Greens),
		thousands(int64(e.RowsPerSecond)), (time.Duration(e.BackfillSeconds * float64(time.Second))).Round(time.Second), runner.HumanBytes(e.DiskNeededBytes))
	if len(r.Steps) > 0 {
		p("")
		p("Steps")
		writePlanSteps(w, r.Steps)
	}
	p("")
	writeHazards(w, r.Hazards)
	p("")
	if r.Blocking > 0 {
		p("BLOCKED: fix the %d blocking hazard%s above, then plan again. Nothing was changed.", r.Blocking, planPlural(r.Blocking))
		return
	}
	p("Nothing blocking. Nothing was changed. Next: greenswap sync -f %s", path)
}
