package verify

import (
	"context"
	"slices"
	"sort"
	"strings"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
)

// exprWords scans a SQL expression and returns the lowercased names it
// calls as functions (an identifier, quoted or not, followed by "(") and the
// bare words that are session-dependent keywords (CURRENT_TIMESTAMP takes no
// parentheses). String literals, dollar-quoted strings and comments are
// skipped, so coalesce(x, 'random()') calls nothing suspicious.
func exprWords(expr string) []string {
	var out []string
	s := expr
	i := 0
	n := len(s)
	isStart := func(c byte) bool { return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80 }
	isPart := func(c byte) bool { return isStart(c) || c >= '0' && c <= '9' || c == '$' }
	nextNonSpace := func(j int) byte {
		for j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r') {
			j++
		}
		if j < n {
			return s[j]
		}
		return 0
	}
	for i < n {
		c := s[i]
		switch {
		case c == '-' && i+1 < n && s[i+1] == '-':
			for i < n && s[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < n && s[i+1] == '*':
			depth := 0
			for i < n {
				if s[i] == '/' && i+1 < n && s[i+1] == '*' {
					depth++
					i += 2
					continue
				}
				if s[i] == '*' && i+1 < n && s[i+1] == '/' {
					depth--
					i += 2
					if depth == 0 {
						break
					}
					continue
				}
				i++
			}
		case c == '\'':
			// E'...' is handled by the identifier branch below (E is a word
			// immediately followed by a quote); here: standard strings.
			i = skipString(s, i, false)
		case c == '"':
			j := i + 1
			var b strings.Builder
			for j < n {
				if s[j] == '"' {
					if j+1 < n && s[j+1] == '"' {
						b.WriteByte('"')
						j += 2
						continue
					}
					break
				}
				b.WriteByte(s[j])
				j++
			}
			i = j + 1
			if nextNonSpace(i) == '(' {
				out = append(out, b.String())
			}
		case c == '$' && i+1 < n && (s[i+1] == '$' || isStart(s[i+1])):
			// dollar quote $tag$...$tag$ (a positional $1 never appears in specs)
			j := i + 1
			for j < n && s[j] != '$' && isPart(s[j]) {
				j++
			}
			if j < n && s[j] == '$' {
				tag := s[i : j+1]
				end := strings.Index(s[j+1:], tag)
				if end < 0 {
					return out
				}
				i = j + 1 + end + len(tag)
			} else {
				i = j
			}
		case isStart(c):
			j := i
			for j < n && isPart(s[j]) {
				j++
			}
			word := strings.ToLower(s[i:j])
			if j < n && s[j] == '\'' && (word == "e" || word == "x" || word == "b" || word == "n") {
				i = skipString(s, j, word == "e")
				continue
			}
			i = j
			if nextNonSpace(i) == '(' || shadow.SessionDependent(word) {
				out = append(out, word)
			}
		default:
			i++
		}
	}
	return out
}

// skipString returns the index after the string literal starting at the
// quote at i. backslash: E” escapes.
func skipString(s string, i int, backslash bool) int {
	j := i + 1
	for j < len(s) {
		switch {
		case backslash && s[j] == '\\':
			j += 2
			continue
		case s[j] == '\'':
			if j+1 < len(s) && s[j+1] == '\'' {
				j += 2
				continue
			}
			return j + 1
		}
		j++
	}
	return j
}

// volatileColumns returns, for each column of d whose expression cannot be
// recomputed to the value that was written (it calls a VOLATILE function, or
// one that depends on the writing session or transaction time), the names
// that make it so. Columns the plan already flagged (ColumnMap.Volatile) are
// included. Columns mapped by name are never volatile.
func volatileColumns(ctx context.Context, q db.Querier, d *shadow.Direction) (map[string][]string, error) {
	out := map[string][]string{}
	words := map[string][]string{} // column -> called names
	var all []string
	for _, c := range d.Columns {
		if c.Volatile {
			out[c.Target] = []string{"flagged by plan"}
		}
		if !c.Explicit {
			continue
		}
		w := exprWords(c.Expr)
		words[c.Target] = w
		all = append(all, w...)
	}
	volatile := map[string]bool{}
	if len(all) > 0 {
		slices.Sort(all)
		all = slices.Compact(all)
		rows, err := q.Query(ctx, `SELECT DISTINCT proname::text FROM pg_catalog.pg_proc WHERE proname = ANY($1) AND provolatile = 'v'`, all)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var name string
			if err := rows.Scan(&name); err != nil {
				rows.Close()
				return nil, err
			}
			volatile[name] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	for col, ws := range words {
		var why []string
		for _, w := range ws {
			if (volatile[w] || shadow.SessionDependent(w)) && !slices.Contains(why, w) {
				why = append(why, w)
			}
		}
		if len(why) > 0 {
			sort.Strings(why)
			out[col] = append(out[col], why...)
		}
	}
	return out, nil
}
