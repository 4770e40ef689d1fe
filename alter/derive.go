package alter

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// deriveSpec builds the blue-green spec from the scratch copy with every
// rehearsed subcommand applied: green's DDL is read back from the catalog,
// not edited as text, so it is what PostgreSQL made of the ALTER.
func deriveSpec(ctx context.Context, q db.Querier, sc *scratch, blue *shadow.Table, plan *Plan) (*spec.Spec, error) {
	var schema string
	if err := q.QueryRow(ctx, `SELECT nspname::text FROM pg_catalog.pg_namespace WHERE oid = pg_catalog.pg_my_temp_schema()`).Scan(&schema); err != nil {
		return nil, fmt.Errorf("alter: the rehearsal's temporary schema: %w", err)
	}
	green, err := shadow.LoadTable(ctx, q, spec.QualifiedName{Schema: schema, Name: blue.Name.Name})
	if err != nil {
		return nil, fmt.Errorf("alter: reading the rehearsed table back: %w", err)
	}
	shared := map[string]bool{}
	for _, seq := range slices.Concat(blue.OwnedSequences, blue.FreeSequences) {
		shared[seq.Column] = true
	}
	opt := renderOptions{omitDefault: func(col string) bool {
		// green draws from blue's sequence (set by setup): no default of its own
		c := green.Column(col)
		return shared[col] && c != nil && c.Identity == ""
	}}
	for _, fk := range blue.ForeignKeys {
		if fk.RefTable == blue.Name {
			continue // a self-reference would point at the app name's view during sync
		}
		present := true
		for _, c := range fk.Columns {
			present = present && green.Column(c) != nil
		}
		if present {
			opt.extra = append(opt.extra, "CONSTRAINT "+db.Ident(fk.Name)+" "+fk.Def)
		}
	}
	var partitionBy string
	for _, st := range plan.Steps {
		switch st.Sub.Kind {
		case AddForeignKey:
			name := st.Sub.Constraint
			if name == "" {
				name = spec.TruncateIdent(blue.Name.Name + "_" + st.Sub.Column + "_fkey")
			}
			body := constraintBody(st.Sub.Text)
			if endsNotValid(body) {
				body = body[:len(body)-len("NOT VALID")]
			}
			opt.extra = append(opt.extra, "CONSTRAINT "+db.Ident(name)+" "+body)
		case PartitionBy:
			partitionBy = st.Sub.Text
		}
	}
	name := db.Ident(blue.Name.Name)
	def, err := renderTable(ctx, q, green, name, opt)
	if err != nil {
		return nil, fmt.Errorf("alter: rendering green: %w", err)
	}
	s := &spec.Spec{
		Name:  spec.TruncateIdent(blue.Name.Name + "_alter"),
		Table: blue.Name.String(),
		Mode:  spec.ModeTrigger,
		Target: spec.Target{
			DDL:     def.Create,
			Indexes: def.Indexes,
		},
	}
	if partitionBy != "" {
		s.Target.DDL += " " + partitionBy
		s.Target.Partitions = []string{"CREATE TABLE " + db.Ident(spec.TruncateIdent(blue.Name.Name+"_default")) + " PARTITION OF " + name + " DEFAULT"}
	}
	key := shadow.TableKey(blue)
	for _, st := range plan.Steps {
		if st.Strategy != BlueGreen || st.Sub.Kind != AlterType {
			continue
		}
		col := st.Sub.Column
		old := blue.Column(col)
		if old == nil {
			continue
		}
		src := st.Sub.Using
		if src == "" {
			src = db.Ident(col)
		}
		// The ALTER coerces with assignment semantics; the mapping's own
		// CAST is explicit (convert.go).
		expr, checked, unreproducible, err := assignExpr(ctx, q, green, col, src)
		if err != nil {
			return nil, err
		}
		fwd := st.Sub.Using
		switch {
		case unreproducible:
			plan.Hazards = append(plan.Hazards, shadow.Hazard{Code: HazardLengthCheckUnreproducible, Severity: shadow.Blocking,
				Message: fmt.Sprintf("column %s: the ALTER refuses array elements too long for %s, but the mapping's cast would truncate them silently", col, st.Sub.TypeName),
				Fix:     fmt.Sprintf("change %s to an unbounded element type (text[], varchar[]) with a CHECK on the lengths, or give forward.%s in a spec that checks them", col, col),
				Objects: []string{"forward." + col}})
		case checked && slices.Contains(key, col):
			// A key column is matched by value, never given a forward.
			plan.Hazards = append(plan.Hazards, shadow.Hazard{Code: HazardLengthCheckUnreproducible, Severity: shadow.Blocking,
				Message: fmt.Sprintf("column %s is blue's key: it is copied by value with an explicit cast to %s, which truncates what the ALTER would refuse", col, st.Sub.TypeName),
				Fix:     fmt.Sprintf("shorten the key's values first (the ALTER would fail on longer ones), or keep %s's length", col),
				Objects: []string{"forward." + col}})
		case checked:
			fwd = expr
		}
		if fwd == "" {
			continue // mapped by name: the mapping's cast is the ALTER's
		}
		if s.Forward == nil {
			s.Forward, s.Reverse = map[string]string{}, map[string]string{}
		}
		s.Forward[col] = fwd
		s.Reverse[col] = "(" + db.Ident(col) + ")::" + old.Type
		rev := &shadow.Direction{Source: spec.QualifiedName{Schema: schema, Name: blue.Name.Name},
			Columns: []shadow.ColumnMap{{Target: col, Expr: s.Reverse[col], Type: old.Type, Explicit: true}}}
		stable, err := sc.stableIn(ctx, schema, rev, "reverse")
		if err != nil {
			return nil, err
		}
		if len(stable) > 0 {
			plan.Hazards = append(plan.Hazards, shadow.Hazard{Code: HazardSessionDependentConversion, Severity: shadow.Warning,
				Message: fmt.Sprintf("column %s: the derived reverse %s calls %s (STABLE): rows written on green after cutover reach blue converted under each writer's session settings", col, s.Reverse[col], strings.Join(stable, ", ")),
				Fix:     fmt.Sprintf("give reverse.%s in a spec with alter: (e.g. %s AT TIME ZONE 'UTC' for a time zone change)", col, db.Ident(col)),
				Objects: []string{"reverse." + col}})
		}
	}
	if len(s.Forward) == 0 {
		s.Forward = nil
	}
	if len(s.Reverse) == 0 {
		s.Reverse = nil
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("alter: the derived spec: %w", err)
	}
	return s, nil
}
