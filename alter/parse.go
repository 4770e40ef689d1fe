package alter

import (
	"fmt"
	"strings"

	"github.com/greenswap/greenswap/internal/exitcode"
	"github.com/greenswap/greenswap/internal/sqllex"
	"github.com/greenswap/greenswap/spec"
)

// ParseError is bad ALTER input: one line naming the statement or
// subcommand and what to do. It maps to exit code 2.
type ParseError struct {
	Msg string
}

func (e *ParseError) Error() string { return "alter: " + e.Msg }

// ExitCode makes a ParseError bad input (exit 2).
func (e *ParseError) ExitCode() exitcode.Code { return exitcode.BadInput }

func parseErr(format string, args ...any) error {
	return &ParseError{Msg: fmt.Sprintf(format, args...)}
}

// Parse reads one or more `ALTER TABLE [IF EXISTS] [ONLY] name sub, …;`
// and `CREATE [UNIQUE] INDEX [CONCURRENTLY] … ON name …;` statements. It
// names each subcommand's kind and keeps its exact text; it does not check
// the SQL beyond what it must understand (Classify runs it, so PostgreSQL
// has the last word on syntax).
func Parse(sql string) ([]Statement, error) {
	toks, lexErr := sqllex.Tokens(sql)
	if lexErr != "" {
		return nil, parseErr("%s: close it", lexErr)
	}
	var out []Statement
	for _, st := range splitOn(toks, ";") {
		if len(st) == 0 {
			continue
		}
		s, err := parseStatement(sql, st)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, parseErr("no statement: give an ALTER TABLE (or CREATE INDEX) statement")
	}
	return out, nil
}

// splitOn cuts toks at each punctuation sep outside parentheses and
// brackets.
func splitOn(toks []sqllex.Token, sep string) [][]sqllex.Token {
	var out [][]sqllex.Token
	depth, start := 0, 0
	for i, t := range toks {
		switch {
		case t.IsPunct("(") || t.IsPunct("["):
			depth++
		case t.IsPunct(")") || t.IsPunct("]"):
			depth--
		case depth <= 0 && t.IsPunct(sep):
			out = append(out, toks[start:i])
			start = i + 1
		}
	}
	return append(out, toks[start:])
}

func span(src string, toks []sqllex.Token) string {
	if len(toks) == 0 {
		return ""
	}
	return src[toks[0].Pos:toks[len(toks)-1].End()]
}

// oneLine shortens text for an error message.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}

func parseStatement(src string, toks []sqllex.Token) (Statement, error) {
	st := Statement{Text: span(src, toks)}
	switch {
	case len(toks) >= 2 && toks[0].Is("ALTER") && toks[1].Is("TABLE"):
		return parseAlterTable(src, toks, st)
	case len(toks) >= 2 && toks[0].Is("CREATE") && (toks[1].Is("INDEX") || toks[1].Is("UNIQUE")):
		return parseCreateIndex(src, toks, st)
	}
	return st, parseErr("%q is not an ALTER TABLE or CREATE INDEX statement: give only those", oneLine(st.Text))
}

// qualifiedName reads name or schema.name at toks[i]; n is how many tokens
// it took (0: none).
func qualifiedName(toks []sqllex.Token, i int) (q spec.QualifiedName, n int) {
	if i >= len(toks) {
		return q, 0
	}
	first, ok := toks[i].Ident()
	if !ok {
		return q, 0
	}
	if i+2 < len(toks) && toks[i+1].IsPunct(".") {
		if second, ok := toks[i+2].Ident(); ok {
			return spec.QualifiedName{Schema: first, Name: second}, 3
		}
		return q, 0
	}
	return spec.QualifiedName{Name: first}, 1
}

func parseAlterTable(src string, toks []sqllex.Token, st Statement) (Statement, error) {
	i := 2
	if i+1 < len(toks) && toks[i].Is("IF") && toks[i+1].Is("EXISTS") {
		st.IfExists, i = true, i+2
	}
	if i < len(toks) && toks[i].Is("ONLY") {
		st.Only, i = true, i+1
	}
	name, n := qualifiedName(toks, i)
	if n == 0 {
		return st, parseErr("%q: expected a table name after ALTER TABLE", oneLine(st.Text))
	}
	st.Table, i = name, i+n
	if i < len(toks) && toks[i].IsPunct("*") {
		i++
	}
	if i >= len(toks) {
		return st, parseErr("%q: no subcommand after the table name: give one (ADD COLUMN …, ALTER COLUMN … TYPE …)", oneLine(st.Text))
	}
	for _, sub := range splitOn(toks[i:], ",") {
		if len(sub) == 0 {
			return st, parseErr("%q: an empty subcommand (two commas, or a trailing one): remove it", oneLine(st.Text))
		}
		s, err := parseSub(src, sub)
		if err != nil {
			return st, err
		}
		st.Subs = append(st.Subs, s)
	}
	for _, s := range st.Subs {
		if (s.Kind == RenameColumn || s.Kind == RenameTable) && len(st.Subs) > 1 {
			return st, parseErr("%q: RENAME cannot be combined with other subcommands in one ALTER TABLE: give it its own statement", oneLine(s.Text))
		}
	}
	return st, nil
}

func parseCreateIndex(src string, toks []sqllex.Token, st Statement) (Statement, error) {
	sub := Subcommand{Kind: CreateIndex, Text: st.Text}
	i := 1
	if toks[i].Is("UNIQUE") {
		sub.Unique, i = true, i+1
	}
	if i >= len(toks) || !toks[i].Is("INDEX") {
		return st, parseErr("%q: expected INDEX after CREATE UNIQUE", oneLine(st.Text))
	}
	i++
	if i < len(toks) && toks[i].Is("CONCURRENTLY") {
		sub.Concurrently, i = true, i+1
	}
	if i+2 < len(toks) && toks[i].Is("IF") && toks[i+1].Is("NOT") && toks[i+2].Is("EXISTS") {
		i += 3
	}
	if i < len(toks) && !toks[i].Is("ON") {
		name, ok := toks[i].Ident()
		if !ok {
			return st, parseErr("%q: expected an index name or ON", oneLine(st.Text))
		}
		sub.Constraint, i = name, i+1
	}
	if i >= len(toks) || !toks[i].Is("ON") {
		return st, parseErr("%q: expected ON table", oneLine(st.Text))
	}
	i++
	if i < len(toks) && toks[i].Is("ONLY") {
		st.Only, i = true, i+1
	}
	name, n := qualifiedName(toks, i)
	if n == 0 {
		return st, parseErr("%q: expected a table name after ON", oneLine(st.Text))
	}
	st.Table = name
	if i+n >= len(toks) {
		return st, parseErr("%q: no column list: give (column, …)", oneLine(st.Text))
	}
	st.Subs = []Subcommand{sub}
	return st, nil
}

// ident reads an identifier at toks[i].
func ident(toks []sqllex.Token, i int) (string, bool) {
	if i >= len(toks) {
		return "", false
	}
	return toks[i].Ident()
}

// constraintWords start a table constraint in ADD.
var constraintWords = []string{"CONSTRAINT", "CHECK", "FOREIGN", "UNIQUE", "PRIMARY", "EXCLUDE"}

func isAny(t sqllex.Token, words ...string) bool {
	for _, w := range words {
		if t.Is(w) {
			return true
		}
	}
	return false
}

// parseSub names one subcommand. Unsupported ones are an error naming
// them: greenswap would not know their cost.
func parseSub(src string, toks []sqllex.Token) (Subcommand, error) {
	s := Subcommand{Kind: Other, Text: span(src, toks)}
	unsupported := func() (Subcommand, error) {
		return s, parseErr("subcommand %q is not supported: run it yourself, or write a spec (greenswap plan -f)", oneLine(s.Text))
	}
	word := func(i int, w ...string) bool { return i < len(toks) && isAny(toks[i], w...) }
	switch {
	case word(0, "ADD"):
		i := 1
		if word(i, constraintWords...) {
			return parseAddConstraint(toks, s, i)
		}
		if word(i, "COLUMN") {
			i++
		}
		if word(i, "IF") && word(i+1, "NOT") && word(i+2, "EXISTS") {
			i += 3
		}
		col, ok := ident(toks, i)
		if !ok || i+1 >= len(toks) {
			return s, parseErr("%q: expected a column name and type after ADD COLUMN", oneLine(s.Text))
		}
		s.Kind, s.Column = AddColumn, col
		s.TypeName = typeText(src, toks[i+1:], "COLLATE", "DEFAULT", "NOT", "NULL", "CONSTRAINT", "CHECK", "PRIMARY", "UNIQUE", "REFERENCES", "GENERATED")
		return s, nil
	case word(0, "DROP"):
		i := 1
		if word(i, "CONSTRAINT") {
			// Dropping a constraint is metadata only (its index, if any,
			// is dropped with it): the rehearsal confirms.
			if name, ok := ident(toks, i+1); ok && !word(i+1, "IF") {
				s.Constraint = name
			} else if name, ok := ident(toks, i+3); ok {
				s.Constraint = name
			}
			return s, nil
		}
		if word(i, "COLUMN") {
			i++
		}
		if word(i, "IF") && word(i+1, "EXISTS") {
			i += 2
		}
		col, ok := ident(toks, i)
		if !ok || word(i, "EXPRESSION", "IDENTITY") {
			return unsupported()
		}
		s.Kind, s.Column = DropColumn, col
		return s, nil
	case word(0, "ALTER"):
		return parseAlterColumn(src, toks, s)
	case word(0, "RENAME"):
		i := 1
		if word(i, "TO") {
			name, ok := ident(toks, i+1)
			if !ok || len(toks) != 3 {
				return s, parseErr("%q: expected RENAME TO new_name", oneLine(s.Text))
			}
			s.Kind, s.NewName = RenameTable, name
			return s, nil
		}
		if word(i, "CONSTRAINT") {
			return s, nil
		}
		if word(i, "COLUMN") {
			i++
		}
		col, ok1 := ident(toks, i)
		name, ok2 := ident(toks, i+2)
		if !ok1 || !word(i+1, "TO") || !ok2 || len(toks) != i+3 {
			return s, parseErr("%q: expected RENAME [COLUMN] old TO new", oneLine(s.Text))
		}
		s.Kind, s.Column, s.NewName = RenameColumn, col, name
		return s, nil
	case word(0, "VALIDATE") && word(1, "CONSTRAINT"):
		s.Constraint, _ = ident(toks, 2)
		return s, nil
	case word(0, "SET", "RESET") && len(toks) > 1 && toks[1].IsPunct("("):
		// Storage parameters: the rehearsal says whether one rewrites.
		return s, nil
	case word(0, "PARTITION") && word(1, "BY"):
		s.Kind = PartitionBy
		return s, nil
	}
	return unsupported()
}

// typeText is the text of toks up to the first of stop at depth 0.
func typeText(src string, toks []sqllex.Token, stop ...string) string {
	depth := 0
	for i, t := range toks {
		switch {
		case t.IsPunct("("):
			depth++
		case t.IsPunct(")"):
			depth--
		case depth == 0 && isAny(t, stop...):
			return span(src, toks[:i])
		}
	}
	return span(src, toks)
}

func parseAddConstraint(toks []sqllex.Token, s Subcommand, i int) (Subcommand, error) {
	word := func(i int, w ...string) bool { return i < len(toks) && isAny(toks[i], w...) }
	if word(i, "CONSTRAINT") {
		name, ok := ident(toks, i+1)
		if !ok {
			return s, parseErr("%q: expected a constraint name after CONSTRAINT", oneLine(s.Text))
		}
		s.Constraint, i = name, i+2
	}
	switch {
	case word(i, "CHECK"):
		s.Kind = AddCheck
	case word(i, "FOREIGN") && word(i+1, "KEY"):
		s.Kind = AddForeignKey
		if i+2 < len(toks) && toks[i+2].IsPunct("(") {
			s.Column, _ = ident(toks, i+3)
		}
	case word(i, "UNIQUE"):
		s.Kind = AddUnique
	case word(i, "PRIMARY") && word(i+1, "KEY"):
		s.Kind = AddPrimaryKey
		if word(i+2, "USING") && word(i+3, "INDEX") {
			s.Kind = AddPrimaryKeyUsingIndex
		}
	default:
		return s, parseErr("subcommand %q is not supported (an EXCLUDE constraint builds its index under ACCESS EXCLUSIVE): write a spec (greenswap plan -f)", oneLine(s.Text))
	}
	return s, nil
}

func parseAlterColumn(src string, toks []sqllex.Token, s Subcommand) (Subcommand, error) {
	word := func(i int, w ...string) bool { return i < len(toks) && isAny(toks[i], w...) }
	i := 1
	if word(i, "COLUMN") {
		i++
	}
	col, ok := ident(toks, i)
	if !ok || word(i, "CONSTRAINT") {
		return s, parseErr("subcommand %q is not supported: run it yourself, or write a spec (greenswap plan -f)", oneLine(s.Text))
	}
	s.Column = col
	i++
	rest := toks[i:]
	switch {
	case word(i, "TYPE") || (word(i, "SET") && word(i+1, "DATA") && word(i+2, "TYPE")):
		j := i + 1
		if word(i, "SET") {
			j = i + 3
		}
		s.Kind = AlterType
		s.TypeName = typeText(src, toks[j:], "COLLATE", "USING")
		for k := j; k < len(toks); k++ {
			if toks[k].Is("USING") && k+1 < len(toks) {
				s.Using = span(src, toks[k+1:])
				break
			}
		}
		if s.TypeName == "" {
			return s, parseErr("%q: expected a type after TYPE", oneLine(s.Text))
		}
	case word(i, "SET") && word(i+1, "DEFAULT") && len(rest) > 2:
		s.Kind = SetDefault
	case word(i, "DROP") && word(i+1, "DEFAULT") && len(rest) == 2:
		s.Kind = DropDefault
	case word(i, "SET") && word(i+1, "NOT") && word(i+2, "NULL") && len(rest) == 3:
		s.Kind = SetNotNull
	case word(i, "DROP") && word(i+1, "NOT") && word(i+2, "NULL") && len(rest) == 3:
		s.Kind = DropNotNull
	case word(i, "SET") && word(i+1, "STATISTICS", "STORAGE", "COMPRESSION"):
		// metadata; the rehearsal confirms there is no rewrite
	case word(i, "SET", "RESET") && i+1 < len(toks) && toks[i+1].IsPunct("("):
		// attribute options (n_distinct): metadata
	default:
		return s, parseErr("subcommand %q is not supported: run it yourself, or write a spec (greenswap plan -f)", oneLine(s.Text))
	}
	return s, nil
}
