package main

// plan --alter / --alter-file, and plan -f of a spec with alter:.

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"

	"github.com/greenswap/greenswap/alter"
	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/runner"
	"github.com/greenswap/greenswap/spec"
)

func planAlterFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "alter", Usage: "the change as ALTER TABLE (and CREATE INDEX) statements, instead of -f"},
		&cli.StringFlag{Name: "alter-file", Usage: "read the ALTER TABLE statements from this file, instead of -f", TakesFile: true},
		&cli.StringFlag{Name: "write-spec", Usage: "write the spec derived from --alter (its blue-green part) to this file", TakesFile: true},
		&cli.StringFlag{Name: "name", Usage: "the migration name of the spec derived from --alter (default: <table>_alter)"},
	}
}

// alterInput is the ALTER text given by --alter or --alter-file ("" when
// neither), refusing both together and either with -f.
func alterInput(c *cli.Context) (string, error) {
	sql, file := c.String("alter"), c.String("alter-file")
	switch {
	case sql != "" && file != "":
		return "", exitcode.Errorf(exitcode.BadInput, "give --alter or --alter-file, not both")
	case (sql != "" || file != "") && c.String("file") != "":
		return "", exitcode.Errorf(exitcode.BadInput, "give -f SPEC or --alter, not both (a spec can carry the ALTER in its alter: field)")
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", exitcode.Errorf(exitcode.BadInput, "--alter-file: %w", err)
		}
		return string(b), nil
	}
	if sql == "" && (c.String("write-spec") != "" || c.String("name") != "") && c.String("file") == "" {
		return "", exitcode.Errorf(exitcode.BadInput, "--write-spec and --name go with --alter or --alter-file")
	}
	return sql, nil
}

// runPlanAlter plans an ALTER given on the command line (given nil) or in
// a spec's alter: field.
func runPlanAlter(c *cli.Context, sql string, given *spec.Spec, path string, fail func(error) error) error {
	env, err := connect(c)
	if err != nil {
		return fail(err)
	}
	defer env.Close()
	res, err := runner.PlanAlter(c.Context, env, sql, given, c.String("name"), planOptions(c))
	if res == nil {
		return fail(err)
	}
	if out := c.String("write-spec"); out != "" {
		if werr := writeDerivedSpec(out, res.Alter); werr != nil {
			return fail(werr)
		}
		path = out
	}
	if err != nil {
		// The blue-green part does not plan: show the classification,
		// then the reason (with --json, only the error document).
		if !c.Bool("json") {
			writeAlterPlan(c.App.Writer, res.Alter)
		}
		return fail(err)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	} else {
		writeAlterPlan(c.App.Writer, res.Alter)
		if res.BlueGreen != nil {
			fmt.Fprintln(c.App.Writer)
			if path == "" {
				path = "SPEC (write it with --write-spec FILE)"
			}
			writePlan(c.App.Writer, res.BlueGreen, path)
		} else {
			fmt.Fprintln(c.App.Writer, "\nEverything runs in place. Nothing was changed.")
		}
	}
	if res.BlueGreen != nil && res.BlueGreen.Blocking > 0 {
		return exitcode.Errorf(exitcode.Blocked, "plan found %d blocking hazard%s; nothing was changed", res.BlueGreen.Blocking, planPlural(res.BlueGreen.Blocking))
	}
	return nil
}

// writeAlterPlan prints, per subcommand, the strategy, the lock, why and
// the SQL, then the derived spec.
func writeAlterPlan(w io.Writer, pl *alter.Plan) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("greenswap plan --alter: %s on PostgreSQL %d — each subcommand rehearsed on an empty copy, rolled back; nothing was changed", pl.Table, pl.ServerMajor)
	p("  Order: %s", pl.Order)
	p("")
	p("Subcommands")
	for i, st := range pl.Steps {
		p("  %d. %s", i+1, oneLineSQL(st.Sub.Text))
		p("     strategy: %s", st.Strategy)
		if st.Strategy == alter.BlueGreen {
			planWrap(w, "     lock:     ", "               ", st.Lock.Held)
		} else {
			planWrap(w, "     lock:     ", "               ", st.Lock.Mode+" — "+st.Lock.Held)
		}
		rewrite := "no rewrite"
		if st.Rewrite {
			rewrite = "rewrites the table"
		} else if st.IndexRebuild {
			rewrite = "rebuilds an index"
		}
		p("     rehearsal: %s", rewrite)
		planWrap(w, "     why:      ", "               ", st.Why)
		for j, q := range st.SQL {
			lead := "     SQL:      "
			if j > 0 {
				lead = "               "
			}
			p("%s%s", lead, oneLineSQL(q))
		}
		for _, warn := range st.Warnings {
			planWrap(w, "     warning:  ", "               ", warn)
		}
	}
	if pl.BlueGreen != nil {
		p("")
		p("Derived spec (the blue-green part; --write-spec FILE saves it)")
		doc, err := derivedSpecYAML(pl)
		if err != nil {
			p("  (cannot render: %v)", err)
			return
		}
		for _, line := range strings.Split(strings.TrimRight(doc, "\n"), "\n") {
			p("  %s", line)
		}
	}
}

func oneLineSQL(s string) string { return strings.Join(strings.Fields(s), " ") }

// specDoc is the derived spec as written by --write-spec: only the fields
// derived, in the order a person would write them.
type specDoc struct {
	Name    string            `yaml:"name"`
	Table   string            `yaml:"table"`
	Mode    spec.Mode         `yaml:"mode"`
	Key     []string          `yaml:"key,omitempty,flow"`
	Target  targetDoc         `yaml:"target"`
	Forward map[string]string `yaml:"forward,omitempty"`
	Reverse map[string]string `yaml:"reverse,omitempty"`
}

type targetDoc struct {
	DDL        string   `yaml:"ddl"`
	Indexes    []string `yaml:"indexes,omitempty"`
	Partitions []string `yaml:"partitions,omitempty"`
}

func derivedSpecYAML(pl *alter.Plan) (string, error) {
	s := pl.BlueGreen
	doc := specDoc{Name: s.Name, Table: s.Table, Mode: s.Mode, Key: s.Key,
		Target:  targetDoc{DDL: s.Target.DDL + "\n", Indexes: s.Target.Indexes, Partitions: s.Target.Partitions},
		Forward: s.Forward, Reverse: s.Reverse}
	var buf strings.Builder
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return "", err
	}
	if err := enc.Close(); err != nil {
		return "", err
	}
	b := buf.String()
	var head strings.Builder
	head.WriteString("# Derived by greenswap plan --alter: green is " + s.Table + " with the ALTER applied, read back\n# from a rehearsal on an empty copy.\n")
	if pl.Order == alter.InPlaceFirst {
		head.WriteString("# Run these in-place steps on " + s.Table + " first (green already has them):\n")
		for _, st := range pl.Steps {
			for _, q := range st.SQL {
				head.WriteString("#   " + oneLineSQL(q) + ";\n")
			}
		}
	}
	return head.String() + b, nil
}

func writeDerivedSpec(path string, pl *alter.Plan) error {
	if pl.BlueGreen == nil {
		return exitcode.Errorf(exitcode.BadInput, "--write-spec: every subcommand runs in place: there is no blue-green spec to write")
	}
	doc, err := derivedSpecYAML(pl)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		return exitcode.Errorf(exitcode.BadInput, "--write-spec: %w", err)
	}
	return nil
}
