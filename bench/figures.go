package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Figure is one line of the results table: a measurement, the baseline it
// was measured against in the same run, their ratio, and the target from the
// issues (printed only: the bench has no pass/fail).
type Figure struct {
	Name     string   `json:"name"`
	Value    string   `json:"value"`              // human-readable
	Baseline string   `json:"baseline,omitempty"` // human-readable
	Ratio    *float64 `json:"ratio,omitempty"`    // value / baseline
	Target   string   `json:"target"`
	Status   string   `json:"status"` // ok | n/a | failed
	Note     string   `json:"note,omitempty"`
	// Raw numbers for scripts (units in the key names).
	Raw map[string]float64 `json:"raw,omitempty"`
}

func (f *Figure) ratio(v, base float64) {
	if base > 0 && v >= 0 {
		r := v / base
		f.Ratio = &r
	}
}

// na marks the figure as not measurable: short goes in the table ("not
// built yet"), detail in the notes.
func (f *Figure) na(short, detail string) {
	f.Status, f.Value, f.Note = "n/a", "n/a ("+short+")", detail
}

func (f *Figure) fail(err error) {
	f.Status, f.Value = "failed", "failed"
	f.Note = oneLine(err.Error(), 300)
}

func (f *Figure) raw(key string, v float64) {
	if f.Raw == nil {
		f.Raw = map[string]float64{}
	}
	f.Raw[key] = v
}

func (f Figure) ratioText() string {
	if f.Ratio == nil {
		return "—"
	}
	return fmt.Sprintf("%.2f×", *f.Ratio)
}

// Machine describes where the figures were measured.
type Machine struct {
	Cores      int               `json:"cores"`
	CPU        string            `json:"cpu,omitempty"`
	RAM        string            `json:"ram"`
	OS         string            `json:"os"`
	Go         string            `json:"go"`
	PostgreSQL string            `json:"postgresql"`
	Settings   map[string]string `json:"settings"`
	Date       string            `json:"date"`
	// LoadStart and LoadEnd are the 1-minute load averages when the bench
	// started and ended: other work on the machine skews every ratio.
	LoadStart string `json:"load_start,omitempty"`
	LoadEnd   string `json:"load_end,omitempty"`
}

// loadAvg is the 1-minute load average, "" when unknown.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return ""
}

// Results is bench/results.json.
type Results struct {
	Machine  Machine   `json:"machine"`
	Rows     int64     `json:"rows"`
	Elapsed  string    `json:"elapsed"`
	Figures  []*Figure `json:"figures"`
	Notes    []string  `json:"notes,omitempty"`
	Complete bool      `json:"complete"` // false when the run was interrupted
}

func machine(pgRelease string, settings map[string]string) Machine {
	m := Machine{
		Cores:      runtime.NumCPU(),
		OS:         runtime.GOOS + "/" + runtime.GOARCH,
		Go:         runtime.Version(),
		PostgreSQL: pgRelease,
		Settings:   settings,
		Date:       time.Now().UTC().Format("2006-01-02 15:04 UTC"),
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				if kb, err := strconv.ParseFloat(f[1], 64); err == nil {
					m.RAM = fmt.Sprintf("%.1f GiB", kb/1024/1024)
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if m.RAM == "" {
		m.RAM = "unknown"
	}
	return m
}

// table renders the figures as a fixed-width text table for the terminal.
func (r *Results) table() string {
	head := []string{"figure", "measured", "baseline (same run)", "ratio", "target"}
	rows := [][]string{head}
	for _, f := range r.Figures {
		base := f.Baseline
		if base == "" {
			base = "—"
		}
		rows = append(rows, []string{f.Name, f.Value, base, f.ratioText(), f.Target})
	}
	width := make([]int, len(head))
	for _, row := range rows {
		for i, c := range row {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	var b strings.Builder
	line := func(row []string) {
		for i, c := range row {
			if i > 0 {
				b.WriteString("  ")
			}
			b.WriteString(c)
			if i < len(row)-1 {
				b.WriteString(strings.Repeat(" ", width[i]-len([]rune(c))))
			}
		}
		b.WriteString("\n")
	}
	line(rows[0])
	sep := make([]string, len(head))
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
	}
	line(sep)
	for _, row := range rows[1:] {
		line(row)
	}
	var notes []string
	for _, f := range r.Figures {
		if f.Note != "" {
			notes = append(notes, fmt.Sprintf("- %s: %s", f.Name, f.Note))
		}
	}
	if len(notes) > 0 {
		b.WriteString("\n" + strings.Join(notes, "\n") + "\n")
	}
	for _, n := range r.Notes {
		b.WriteString("- " + n + "\n")
	}
	return b.String()
}

// markdown renders bench/results.md.
func (r *Results) markdown() string {
	var b strings.Builder
	m := r.Machine
	b.WriteString("# greenswap bench results\n\n")
	b.WriteString("Produced by `make bench` (`go run ./bench`); every ratio compares two measurements taken side by side in the same run. ")
	b.WriteString("Targets come from the issues and are printed, not enforced.\n\n")
	fmt.Fprintf(&b, "- **date**: %s\n", m.Date)
	fmt.Fprintf(&b, "- **machine**: %d cores", m.Cores)
	if m.CPU != "" {
		fmt.Fprintf(&b, " (%s)", m.CPU)
	}
	fmt.Fprintf(&b, ", %s RAM, %s\n", m.RAM, m.OS)
	if m.LoadStart != "" {
		fmt.Fprintf(&b, "- **load average** (1 min) at start %s, at end %s: with %d cores, anything above ~%d means other work shared the machine and skewed the ratios\n",
			m.LoadStart, m.LoadEnd, m.Cores, m.Cores)
	}
	fmt.Fprintf(&b, "- **PostgreSQL**: %s (throwaway local cluster from internal/pgtest)\n", m.PostgreSQL)
	var keys []string
	for k, v := range m.Settings {
		keys = append(keys, k+"="+v)
	}
	slices.Sort(keys)
	fmt.Fprintf(&b, "- **server settings** (beyond pgtest's defaults fsync=off, synchronous_commit=off, full_page_writes=off): %s\n", strings.Join(keys, ", "))
	fmt.Fprintf(&b, "- **rows**: %d (`BENCH_ROWS`)\n", r.Rows)
	fmt.Fprintf(&b, "- **go**: %s; bench took %s", m.Go, r.Elapsed)
	if !r.Complete {
		b.WriteString(" (**interrupted: partial results**)")
	}
	b.WriteString("\n\nThe last column says whether the figure could be measured, not whether it meets its target: compare ratio and target.\n")
	b.WriteString("\n| figure | measured | baseline (same run) | ratio | target | measurement |\n|---|---|---|---|---|---|\n")
	for _, f := range r.Figures {
		base := f.Baseline
		if base == "" {
			base = "—"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", mdEscape(f.Name), mdEscape(f.Value), mdEscape(base), f.ratioText(), mdEscape(f.Target), f.Status)
	}
	var notes []string
	for _, f := range r.Figures {
		if f.Note != "" {
			notes = append(notes, fmt.Sprintf("- **%s**: %s", mdEscape(f.Name), mdEscape(f.Note)))
		}
	}
	for _, n := range r.Notes {
		notes = append(notes, "- "+mdEscape(n))
	}
	if len(notes) > 0 {
		b.WriteString("\n## Notes\n\n" + strings.Join(notes, "\n") + "\n")
	}
	b.WriteString("\nHow each figure is measured: see [bench/README.md](README.md).\n")
	return b.String()
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// write saves results.json and results.md into dir.
func (r *Results) write(dir string) error {
	// BENCH_OUT may name a directory that does not exist yet: a whole run's
	// figures are not lost to a missing folder.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.md"), []byte(r.markdown()), 0o644)
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}

func fmtRate(v float64, unit string) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM %s", v/1e6, unit)
	case v >= 1e4:
		return fmt.Sprintf("%.0fk %s", v/1e3, unit)
	default:
		return fmt.Sprintf("%.0f %s", v, unit)
	}
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
}

func fmtRows(n int64) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	default:
		return strconv.FormatInt(n, 10)
	}
}
