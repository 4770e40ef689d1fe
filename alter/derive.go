package alter

import (
	"context"
	"fmt"
	"slices"

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
	for _, st := range plan.Steps {
		if st.Strategy != BlueGreen || st.Sub.Kind != AlterType || st.Sub.Using == "" {
			continue
		}
		old := blue.Column(st.Sub.Column)
		if old == nil {
			continue
		}
		if s.Forward == nil {
			s.Forward, s.Reverse = map[string]string{}, map[string]string{}
		}
		s.Forward[st.Sub.Column] = st.Sub.Using
		s.Reverse[st.Sub.Column] = "(" + db.Ident(st.Sub.Column) + ")::" + old.Type
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("alter: the derived spec: %w", err)
	}
	return s, nil
}
