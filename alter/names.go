package alter

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/internal/sqllex"
	"github.com/greenswap/greenswap/shadow"
	"github.com/greenswap/greenswap/spec"
)

// Names greenswap gives a constraint PostgreSQL would have named (an
// unnamed ADD FOREIGN KEY, which a temporary copy cannot rehearse) or
// that is its own (the SET NOT NULL check) are chosen as PostgreSQL
// chooses them (ChooseConstraintName): each part shortened in turn so the
// label survives the 63-byte limit, then a number added until the name is
// free among the constraints of blue's schema. Cutting the whole name at
// 63 bytes would drop the label and make two long columns' names collide.

// objectName is PostgreSQL's makeObjectName: name1_name2_label within
// the identifier limit, the longer of name1 and name2 shortened first.
func objectName(name1, name2, label string) string {
	overhead := 0
	if label != "" {
		overhead += len(label) + 1
	}
	if name2 != "" {
		overhead++
	}
	avail := spec.MaxIdentLen - overhead
	n1, n2 := len(name1), len(name2)
	for n1+n2 > avail {
		if n1 > n2 {
			n1--
		} else {
			n2--
		}
	}
	out := clip(name1, n1)
	if name2 != "" {
		out += "_" + clip(name2, n2)
	}
	if label != "" {
		out += "_" + label
	}
	return out
}

// clip cuts s to at most n bytes on a character boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// freeConstraintName is the first of name1_name2_label, …label1, …label2
// not used by a constraint in blue's schema nor in taken.
func freeConstraintName(ctx context.Context, q db.Querier, blue *shadow.Table, name1, name2, label string, taken map[string]bool) (string, error) {
	for pass := 0; pass < 1000; pass++ {
		l := label
		if pass > 0 {
			l += strconv.Itoa(pass)
		}
		name := objectName(name1, name2, l)
		if taken[name] {
			continue
		}
		var used bool
		if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace
 WHERE n.nspname = $1 AND c.conname = $2)`, blue.Name.Schema, name).Scan(&used); err != nil {
			return "", fmt.Errorf("alter: choosing a constraint name: %w", err)
		}
		if !used {
			return name, nil
		}
	}
	return "", fmt.Errorf("alter: no free constraint name for %s_%s_%s", name1, name2, label)
}

// fkColumns are the columns of a FOREIGN KEY (…) body.
func fkColumns(body string) []string {
	toks, _ := sqllex.Tokens(body)
	for i := 0; i+2 < len(toks); i++ {
		if !toks[i].Is("FOREIGN") || !toks[i+1].Is("KEY") || !toks[i+2].IsPunct("(") {
			continue
		}
		var cols []string
		for j := i + 3; j < len(toks) && !toks[j].IsPunct(")"); j++ {
			if n, ok := toks[j].Ident(); ok {
				cols = append(cols, n)
			}
		}
		return cols
	}
	return nil
}

// qualifyReference rewrites the REFERENCES table of an ADD FOREIGN KEY to
// the table the ALTER means: resolved with the app schema on the path, as
// the rehearsal resolves the ALTER's names, and written schema-qualified,
// so green's DDL (created with green's schema first on the path) and the
// in-place statement (run with greenswap's bare path) reference that
// table and no other of the same name.
func qualifyReference(ctx context.Context, q db.Querier, blue *shadow.Table, sub Subcommand) (string, error) {
	toks, _ := sqllex.Tokens(sub.Text)
	for i, t := range toks {
		if !t.Is("REFERENCES") {
			continue
		}
		ref, n := qualifiedName(toks, i+1)
		if n == 0 {
			return sub.Text, nil
		}
		name := db.Ident(ref.Name)
		if ref.Schema != "" {
			name = db.Ident(ref.Schema, ref.Name)
		}
		if _, err := q.Exec(ctx, "SET LOCAL search_path TO "+shadow.SearchPathFor(blue.Name.Schema)); err != nil {
			return "", err
		}
		var schema, rel string
		var found bool
		err := q.QueryRow(ctx, `SELECT coalesce(n.nspname::text, ''), coalesce(c.relname::text, ''), c.oid IS NOT NULL
  FROM (SELECT pg_catalog.to_regclass($1) AS oid) r
  LEFT JOIN pg_catalog.pg_class c ON c.oid = r.oid LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace`, name).Scan(&schema, &rel, &found)
		if _, rerr := q.Exec(ctx, "SET LOCAL search_path TO pg_catalog, pg_temp"); rerr != nil && err == nil {
			err = rerr
		}
		if err != nil {
			return "", fmt.Errorf("alter: resolving %s: %w", name, err)
		}
		if !found || strings.HasPrefix(schema, "pg_temp") {
			return "", &SubError{Sub: sub, Err: fmt.Errorf("the referenced table %s does not exist", name)}
		}
		end := toks[i+n].End()
		return sub.Text[:toks[i+1].Pos] + db.Ident(schema, rel) + sub.Text[end:], nil
	}
	return sub.Text, nil
}

// freeRelationName is name if no relation of blue's schema has it, else
// what PostgreSQL's ChooseRelationName would have chosen there: its label
// (what follows the last "_": idx, key, pkey) numbered until free.
func freeRelationName(ctx context.Context, q db.Querier, blue *shadow.Table, name string) (string, error) {
	prefix, label := name, ""
	if i := strings.LastIndexByte(name, '_'); i > 0 {
		prefix, label = name[:i], name[i+1:]
	}
	for pass := 0; pass < 1000; pass++ {
		cand := name
		if pass > 0 {
			cand = objectName(prefix, "", label+strconv.Itoa(pass))
		}
		var used bool
		if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2)`, blue.Name.Schema, cand).Scan(&used); err != nil {
			return "", fmt.Errorf("alter: choosing an index name: %w", err)
		}
		if !used {
			return cand, nil
		}
	}
	return "", fmt.Errorf("alter: no free index name for %s", name)
}
