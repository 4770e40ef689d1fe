package sqllex

import (
	"fmt"
	"strings"
	"testing"
)

// show renders tokens as kind:text, one space apart, for table tests.
func show(toks []Token) string {
	var b strings.Builder
	for i, t := range toks {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%c:%s", t.Kind, t.Text)
	}
	return b.String()
}

func TestTokens(t *testing.T) {
	t.Parallel()
	cases := []struct{ in, want, err string }{
		{"", "", ""},
		{"  \t\n", "", ""},
		{"CREATE TABLE t (id int)", "w:CREATE w:TABLE w:t p:( w:id w:int p:)", ""},
		// Strings: doubled quotes, E'' with backslashes, prefixes.
		{`'it''s' || 'x'`, `s:'it''s' o:|| s:'x'`, ""},
		{`E'a\'b' e'\\' x'1F' B'01' N'n'`, `s:E'a\'b' s:e'\\' s:x'1F' s:B'01' s:N'n'`, ""},
		{`U&'d\0061' U&"d\0061t"`, `s:U&'d\0061' q:U&"d\0061t"`, ""},
		// A word ending in e before a quote is a word, then a string.
		{`type'x'`, `w:type s:'x'`, ""},
		// Quoted identifiers keep everything, "" included.
		{`"a""b" "Orders"."Id"`, `q:"a""b" q:"Orders" p:. q:"Id"`, ""},
		{`"--not a comment" "/*"`, `q:"--not a comment" q:"/*"`, ""},
		// Dollar quotes: empty tag, a tag, nested other tags, ; inside.
		{`$$a;b$$ $x$ $$ ; $x$`, `s:$$a;b$$ s:$x$ $$ ; $x$`, ""},
		{`$1 + $23`, `$:$1 o:+ $:$23`, ""},
		{`a$b$ $`, `w:a$b$ p:$`, ""},
		// Comments nest and are skipped; -- runs to the end of the line.
		{"a /* x /* y */ z */ b", "w:a w:b", ""},
		{"a -- c ; d\nb", "w:a w:b", ""},
		{"a+--c\nb", "w:a o:+ w:b", ""},
		{"a*/*c*/b", "w:a o:* w:b", ""},
		// Numbers.
		{"1 1.5 .5 1e10 1.5E-3 0x1F 1_000 3.", "n:1 n:1.5 n:.5 n:1e10 n:1.5E-3 n:0x1F n:1_000 n:3.", ""},
		{"a.b 1..2", "w:a p:. w:b n:1 p:. n:.2", ""}, // as PostgreSQL: 1, then . and .2
		// Operators and punctuation.
		{"x::int <= y->>'k' != z", "w:x o::: w:int o:<= w:y o:->> s:'k' o:!= w:z", ""},
		{"f(a, b[1]);", "w:f p:( w:a p:, w:b p:[ n:1 p:] p:) p:;", ""},
		{"\\", "p:\\", ""},
		// Non-ASCII identifiers.
		{"café ünïcode", "w:café w:ünïcode", ""},
		// Unterminated: the tokens before, and what is open.
		{"a 'b", "w:a", "unterminated string literal"},
		{`a E'b\'`, "w:a", "unterminated string literal"},
		{`a "b`, "w:a", "unterminated quoted identifier"},
		{"a $q$ b $Q$", "w:a", "unterminated dollar-quoted string $q$"},
		{"a /* /* */", "w:a", "unterminated /* comment"},
	}
	for _, c := range cases {
		toks, err := Tokens(c.in)
		if got := show(toks); got != c.want || err != c.err {
			t.Errorf("Tokens(%q)\n got %s (err %q)\nwant %s (err %q)", c.in, got, err, c.want, c.err)
		}
	}
}

func TestTokenPositions(t *testing.T) {
	t.Parallel()
	src := "CREATE /* c */ INDEX \"i\" ON t (a)"
	toks, err := Tokens(src)
	if err != "" {
		t.Fatal(err)
	}
	for _, tk := range toks {
		if src[tk.Pos:tk.End()] != tk.Text {
			t.Errorf("token %q at %d: source there is %q", tk.Text, tk.Pos, src[tk.Pos:tk.End()])
		}
	}
	if toks[1].Pos != 15 || !toks[1].Is("index") {
		t.Errorf("INDEX at %d (%q)", toks[1].Pos, toks[1].Text)
	}
}

func TestIdent(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{"Orders", "orders", true},
		{"ÄB", "Äb", true}, // ASCII only, as PostgreSQL folds in UTF-8
		{`"Orders"`, "Orders", true},
		{`"a""b"`, `a"b`, true},
		{`""`, "", false},
		{`U&"x"`, "", false},
		{"'s'", "", false},
		{"(", "", false},
	} {
		toks, _ := Tokens(c.in)
		if len(toks) != 1 {
			t.Fatalf("%q: %d tokens", c.in, len(toks))
		}
		if got, ok := toks[0].Ident(); got != c.want || ok != c.ok {
			t.Errorf("Ident(%q) = %q, %v; want %q, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

func TestLineComment(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]bool{"a -- x": true, "'--' \"--\" $$--$$ /* -- */": false, "a - -b": false} {
		l := New(in)
		for {
			if _, ok := l.Next(); !ok {
				break
			}
		}
		if l.LineComment != want {
			t.Errorf("%q: LineComment = %v, want %v", in, l.LineComment, want)
		}
	}
}

// FuzzTokens: the lexer never panics, never loops, and its tokens are the
// source's own bytes, in order, separated only by whitespace and comments;
// on an error nothing follows the last token but the unterminated part.
//
//	go test ./internal/sqllex -run XXX -fuzz FuzzTokens -fuzztime 60s
func FuzzTokens(f *testing.F) {
	for _, s := range []string{"CREATE INDEX i ON t (a) WHERE b <> 'x'", `E'\''`, "$a$ $b$ $a$", "/* /* */ */ --\n", `"a""b".c`, "1.5e+3::numeric", "U&'x' U&\"y\"", "'", "$", "/*", "a+--b", ".5..6"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, src string) {
		l := New(src)
		last := 0
		for i := 0; ; i++ {
			if i > len(src)+1 {
				t.Fatalf("%q: more tokens than bytes", src)
			}
			tk, ok := l.Next()
			if !ok {
				break
			}
			if tk.Pos < last || tk.End() > len(src) || tk.Text == "" || src[tk.Pos:tk.End()] != tk.Text {
				t.Fatalf("%q: token %+v out of place (after %d)", src, tk, last)
			}
			between := src[last:tk.Pos]
			if rest, _ := Tokens(between); len(rest) != 0 {
				t.Fatalf("%q: tokens %v skipped between %d and %d", src, rest, last, tk.Pos)
			}
			last = tk.End()
		}
		if l.Err() == "" {
			if rest, _ := Tokens(src[last:]); len(rest) != 0 {
				t.Fatalf("%q: tokens after the end: %v", src, rest)
			}
		}
	})
}
