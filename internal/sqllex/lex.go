// Package sqllex is greenswap's one SQL tokenizer. The spec's checks
// (target.ddl, target.indexes, target.partitions, the mapping
// expressions) and the parsing of index statements read SQL through it,
// so a quote, a dollar quote or a comment means the same thing everywhere.
//
// It does not parse SQL: it splits text into tokens the way PostgreSQL's
// scanner does (scan.l) for what greenswap needs to know about a statement
// (its leading keywords, its names, where it ends), and says when a
// literal or comment is not closed.
package sqllex

import "strings"

// Kind is what a token is.
type Kind byte

const (
	Word   Kind = 'w' // an unquoted identifier or keyword: CREATE, orders, e
	Quoted Kind = 'q' // a quoted identifier: "Orders", U&"d\0061t\+000061"
	String Kind = 's' // '…', E'…', B'…', X'…', N'…', U&'…', $tag$…$tag$
	Number Kind = 'n' // 42, 1.5, .5, 1e10, 0x1F, 1_000
	Param  Kind = '$' // a positional parameter: $1
	Op     Kind = 'o' // an operator: +, <=, ->>, ::, ||
	Punct  Kind = 'p' // one of ( ) [ ] , ; : .
)

// Token is one token of the source: Text is exactly as written (quotes,
// prefixes and escapes included), Pos its byte offset.
type Token struct {
	Kind Kind
	Text string
	Pos  int
}

// End is the offset just after the token.
func (t Token) End() int { return t.Pos + len(t.Text) }

// Is reports whether t is the unquoted word w (case-insensitive).
func (t Token) Is(w string) bool { return t.Kind == Word && strings.EqualFold(t.Text, w) }

// IsPunct reports whether t is the punctuation (or operator) p.
func (t Token) IsPunct(p string) bool { return (t.Kind == Punct || t.Kind == Op) && t.Text == p }

// Ident is the name an identifier token stands for: an unquoted word folds
// to lower case (ASCII only, as PostgreSQL does in UTF-8 databases), a
// "quoted" one keeps its case with "" standing for a quote. ok is false for
// other tokens, an empty "" and a U&"…" (its escapes are not decoded).
func (t Token) Ident() (name string, ok bool) {
	switch t.Kind {
	case Word:
		return Fold(t.Text), true
	case Quoted:
		if len(t.Text) < 3 || t.Text[0] != '"' {
			return "", false
		}
		return strings.ReplaceAll(t.Text[1:len(t.Text)-1], `""`, `"`), true
	}
	return "", false
}

// Lexer reads tokens from a source text one at a time.
type Lexer struct {
	src string
	pos int
	err string
	// LineComment is set once a -- comment has been skipped: text embedded
	// into generated SQL must not contain one, it would swallow the rest of
	// its line.
	LineComment bool
}

// New returns a lexer at the start of src.
func New(src string) *Lexer { return &Lexer{src: src} }

// Err says what is unterminated ("" when nothing is): after Next returned
// false, an empty Err means the end of the text.
func (l *Lexer) Err() string { return l.err }

// Pos is the offset where the next token's search starts.
func (l *Lexer) Pos() int { return l.pos }

// Tokens is every token of src, and Err's message when the text ends
// inside a literal or comment.
func Tokens(src string) ([]Token, string) {
	l := New(src)
	var out []Token
	for {
		t, ok := l.Next()
		if !ok {
			return out, l.err
		}
		out = append(out, t)
	}
}

// IsIdentByte reports whether c can be part of an unquoted identifier
// (first: as its first byte). Bytes ≥ 0x80 are, as in PostgreSQL.
func IsIdentByte(c byte, first bool) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_', c >= 0x80:
		return true
	case c >= '0' && c <= '9', c == '$':
		return !first
	}
	return false
}

// Fold lowercases like PostgreSQL does for unquoted identifiers: ASCII
// letters only.
func Fold(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// opChars are PostgreSQL's operator characters (scan.l's "self" and "op_chars").
const opChars = "+-*/<>=~!@#%^&|`?"

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// Next returns the next token; ok is false at the end of the text and when
// a literal or comment is unterminated (Err says which).
func (l *Lexer) Next() (tok Token, ok bool) {
	if l.err != "" {
		return Token{}, false
	}
	s := l.src
	for l.pos < len(s) {
		c := s[l.pos]
		start := l.pos
		switch {
		case isSpace(c):
			l.pos++
		case strings.HasPrefix(s[l.pos:], "--"):
			l.LineComment = true
			if j := strings.IndexByte(s[l.pos:], '\n'); j >= 0 {
				l.pos += j + 1
			} else {
				l.pos = len(s)
			}
		case strings.HasPrefix(s[l.pos:], "/*"):
			if !l.blockComment() {
				return Token{}, false
			}
		case c == '\'':
			return l.quoted(start, l.pos, '\'', false)
		case c == '"':
			return l.quoted(start, l.pos, '"', false)
		case c == '$':
			return l.dollar()
		case (c == 'e' || c == 'E') && l.pos+1 < len(s) && s[l.pos+1] == '\'':
			return l.quoted(start, l.pos+1, '\'', true)
		case strings.ContainsRune("bBxXnN", rune(c)) && l.pos+1 < len(s) && s[l.pos+1] == '\'':
			return l.quoted(start, l.pos+1, '\'', false)
		case (c == 'u' || c == 'U') && l.pos+2 < len(s) && s[l.pos+1] == '&' && (s[l.pos+2] == '\'' || s[l.pos+2] == '"'):
			return l.quoted(start, l.pos+2, s[l.pos+2], false)
		case IsIdentByte(c, true):
			for l.pos < len(s) && IsIdentByte(s[l.pos], false) {
				l.pos++
			}
			return Token{Word, s[start:l.pos], start}, true
		case isDigit(c) || c == '.' && l.pos+1 < len(s) && isDigit(s[l.pos+1]):
			return l.number()
		case c == ':' && l.pos+1 < len(s) && s[l.pos+1] == ':':
			l.pos += 2
			return Token{Op, "::", start}, true
		case strings.IndexByte("()[],;:.", c) >= 0:
			l.pos++
			return Token{Punct, s[start:l.pos], start}, true
		case strings.IndexByte(opChars, c) >= 0:
			// An operator is the longest run of operator characters that
			// does not start a comment.
			for l.pos < len(s) && strings.IndexByte(opChars, s[l.pos]) >= 0 {
				if l.pos > start && (strings.HasPrefix(s[l.pos:], "--") || strings.HasPrefix(s[l.pos:], "/*")) {
					break
				}
				l.pos++
			}
			return Token{Op, s[start:l.pos], start}, true
		default:
			// Anything else (a stray backslash, a control character) is one
			// token of its own: PostgreSQL would reject it, the callers
			// only need to step over it.
			l.pos++
			return Token{Punct, s[start:l.pos], start}, true
		}
	}
	return Token{}, false
}

// blockComment skips a /* comment */ at pos; they nest.
func (l *Lexer) blockComment() bool {
	s := l.src
	depth := 0
	for l.pos < len(s) {
		switch {
		case strings.HasPrefix(s[l.pos:], "/*"):
			depth++
			l.pos += 2
		case strings.HasPrefix(s[l.pos:], "*/"):
			depth--
			l.pos += 2
			if depth == 0 {
				return true
			}
		default:
			l.pos++
		}
	}
	l.err = "unterminated /* comment"
	return false
}

// quoted scans a literal whose opening quote q is at open (the token starts
// at start, before any prefix): a doubled q stands for itself, and with
// backslash (E'…') so does any byte after a backslash.
func (l *Lexer) quoted(start, open int, q byte, backslash bool) (Token, bool) {
	s := l.src
	for i := open + 1; i < len(s); i++ {
		switch {
		case backslash && s[i] == '\\':
			i++
		case s[i] == q:
			if i+1 < len(s) && s[i+1] == q {
				i++
				continue
			}
			l.pos = i + 1
			kind := String
			if q == '"' {
				kind = Quoted
			}
			return Token{kind, s[start:l.pos], start}, true
		}
	}
	if q == '"' {
		l.err = "unterminated quoted identifier"
	} else {
		l.err = "unterminated string literal"
	}
	l.pos = len(s)
	return Token{}, false
}

// dollar scans what starts with '$' at pos: a dollar-quoted string
// ($$…$$, $tag$…$tag$; a tag does not start with a digit) or a positional
// parameter ($1).
func (l *Lexer) dollar() (Token, bool) {
	s := l.src
	start := l.pos
	j := start + 1
	for j < len(s) && s[j] != '$' && IsIdentByte(s[j], j == start+1) {
		j++
	}
	if j < len(s) && s[j] == '$' {
		tag := s[start : j+1]
		end := strings.Index(s[j+1:], tag)
		if end < 0 {
			l.err = "unterminated dollar-quoted string " + tag
			l.pos = len(s)
			return Token{}, false
		}
		l.pos = j + 1 + end + len(tag)
		return Token{String, s[start:l.pos], start}, true
	}
	l.pos = start + 1
	for l.pos < len(s) && isDigit(s[l.pos]) {
		l.pos++
	}
	if l.pos == start+1 {
		return Token{Punct, "$", start}, true
	}
	return Token{Param, s[start:l.pos], start}, true
}

// number scans a numeric literal: digits, one '.', an exponent with its
// sign, and (as PostgreSQL 16 reads them) 0x/0o/0b prefixes and '_'
// separators. Trailing letters stay part of it, as they did before: a
// caller sees "1abc" as one token, never as a number followed by a name.
func (l *Lexer) number() (Token, bool) {
	s := l.src
	start := l.pos
	dot := false
	for l.pos < len(s) {
		c := s[l.pos]
		switch {
		case c == '.' && !dot && !(l.pos+1 < len(s) && s[l.pos+1] == '.'):
			dot = true
		case (c == 'e' || c == 'E') && l.pos+1 < len(s) && (s[l.pos+1] == '+' || s[l.pos+1] == '-'):
			l.pos++
		case IsIdentByte(c, false):
		default:
			return Token{Number, s[start:l.pos], start}, true
		}
		l.pos++
	}
	return Token{Number, s[start:l.pos], start}, true
}
