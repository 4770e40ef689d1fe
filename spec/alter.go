package spec

import (
	"github.com/greenswap/greenswap/internal/sqllex"
)

// validateAlter checks the alter: field without a database: it replaces
// target, and every statement is an ALTER TABLE or a CREATE INDEX on the
// spec's table. Package alter parses it fully and the server rehearses it.
func (s *Spec) validateAlter() error {
	if s.Target.DDL != "" || len(s.Target.Indexes) > 0 || len(s.Target.Partitions) > 0 {
		return s.specErr("alter", "give either alter: (the change as ALTER TABLE) or target: (the green table), not both", "alter and target are both given")
	}
	toks, lexErr := sqllex.Tokens(s.Alter)
	if lexErr != "" {
		return s.specErr("alter", "close it", "%s", lexErr)
	}
	app := s.AppTable()
	start, n := 0, 0
	for i := 0; i <= len(toks); i++ {
		if i < len(toks) && !toks[i].IsPunct(";") {
			continue
		}
		st := toks[start:i]
		start = i + 1
		if len(st) == 0 {
			continue
		}
		n++
		name, ok := alterTable(st)
		if !ok {
			return s.specErr("alter", "write ALTER TABLE "+app.Name+" … or CREATE INDEX … ON "+app.Name+" …",
				"%s is not an ALTER TABLE or CREATE INDEX statement", oneLineQuote(s.Alter[st[0].Pos:st[len(st)-1].End()]))
		}
		if name.Name != app.Name || (name.Schema != "" && name.Schema != app.Schema) {
			shown := name.Name
			if name.Schema != "" {
				shown = name.String()
			}
			return s.specErr("alter", "alter only the spec's table "+app.String()+" (a migration changes one table)",
				"a statement changes %s, not %s", shown, app)
		}
	}
	if n == 0 {
		return s.specErr("alter", "write the change as ALTER TABLE "+app.Name+" …", "no statement")
	}
	return nil
}

// alterTable is the table an ALTER TABLE or CREATE INDEX statement names.
func alterTable(st []sqllex.Token) (QualifiedName, bool) {
	word := func(i int, w string) bool { return i < len(st) && st[i].Is(w) }
	i := 0
	switch {
	case word(0, "ALTER") && word(1, "TABLE"):
		i = 2
		if word(i, "IF") && word(i+1, "EXISTS") {
			i += 2
		}
		if word(i, "ONLY") {
			i++
		}
	case word(0, "CREATE") && (word(1, "INDEX") || word(1, "UNIQUE")):
		for i < len(st) && !st[i].Is("ON") {
			i++
		}
		i++
		if word(i, "ONLY") {
			i++
		}
	default:
		return QualifiedName{}, false
	}
	if i >= len(st) {
		return QualifiedName{}, false
	}
	first, ok := st[i].Ident()
	if !ok {
		return QualifiedName{}, false
	}
	if i+2 < len(st) && st[i+1].IsPunct(".") {
		second, ok := st[i+2].Ident()
		return QualifiedName{Schema: first, Name: second}, ok
	}
	return QualifiedName{Name: first}, true
}
