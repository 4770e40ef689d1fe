package sync

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/greenswap/greenswap/internal/db"
	"github.com/greenswap/greenswap/shadow"
)

// IndexStmt is one target.indexes statement, parsed just enough to build it
// concurrently and to find it again after a crash.
type IndexStmt struct {
	Source string // as written in the spec
	Name   string // the index name ("" when the statement names none)
	SQL    string // the statement with CONCURRENTLY, without a trailing ';'
}

// ParseIndexStmt reads "CREATE [UNIQUE] INDEX [IF NOT EXISTS] [name] ON ..."
// (comments and quoted identifiers allowed), adds CONCURRENTLY after INDEX
// and extracts the name (folded to lower case unless quoted).
func ParseIndexStmt(src string) (IndexStmt, error) {
	l := lexer{s: src}
	bad := func(what string) (IndexStmt, error) {
		return IndexStmt{}, fmt.Errorf("index statement %q: %s", oneLineStmt(src), what)
	}
	if !l.word("create") {
		return bad("expected CREATE")
	}
	l.word("unique")
	if !l.word("index") {
		return bad("expected CREATE [UNIQUE] INDEX")
	}
	insertAt := l.pos
	if l.word("concurrently") {
		return bad("remove CONCURRENTLY: greenswap adds it")
	}
	if l.word("if") {
		if !l.word("not") || !l.word("exists") {
			return bad("expected IF NOT EXISTS")
		}
	}
	save := l.pos
	var name string
	if !l.word("on") {
		l.pos = save
		n, ok := l.ident()
		if !ok {
			return bad("expected an index name or ON")
		}
		name = n
		if !l.word("on") {
			return bad("expected ON after the index name")
		}
	}
	body := strings.TrimRight(strings.TrimSpace(src), "; \t\r\n")
	return IndexStmt{Source: src, Name: name, SQL: body[:insertAt] + " CONCURRENTLY" + body[insertAt:]}, nil
}

func oneLineStmt(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return s
}

// lexer skips whitespace and SQL comments between tokens.
type lexer struct {
	s   string
	pos int
}

func (l *lexer) skip() {
	for l.pos < len(l.s) {
		switch {
		case strings.ContainsRune(" \t\r\n\f", rune(l.s[l.pos])):
			l.pos++
		case strings.HasPrefix(l.s[l.pos:], "--"):
			if i := strings.IndexByte(l.s[l.pos:], '\n'); i >= 0 {
				l.pos += i + 1
			} else {
				l.pos = len(l.s)
			}
		case strings.HasPrefix(l.s[l.pos:], "/*"):
			depth := 0
			for l.pos < len(l.s) {
				if strings.HasPrefix(l.s[l.pos:], "/*") {
					depth++
					l.pos += 2
				} else if strings.HasPrefix(l.s[l.pos:], "*/") {
					depth--
					l.pos += 2
					if depth == 0 {
						break
					}
				} else {
					l.pos++
				}
			}
		default:
			return
		}
	}
}

func isIdentChar(c byte, first bool) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80 ||
		!first && (c >= '0' && c <= '9' || c == '$')
}

// bareWord reads an unquoted identifier at pos (after skipping), or "".
func (l *lexer) bareWord() string {
	l.skip()
	i := l.pos
	for i < len(l.s) && isIdentChar(l.s[i], i == l.pos) {
		i++
	}
	return l.s[l.pos:i]
}

// word consumes the keyword kw (case-insensitive, unquoted) if it is next.
func (l *lexer) word(kw string) bool {
	w := l.bareWord()
	if w != "" && strings.EqualFold(w, kw) {
		l.pos += len(w)
		return true
	}
	return false
}

// ident consumes an identifier: unquoted (folded to lower case) or "quoted".
func (l *lexer) ident() (string, bool) {
	l.skip()
	if l.pos < len(l.s) && l.s[l.pos] == '"' {
		var b strings.Builder
		for i := l.pos + 1; i < len(l.s); i++ {
			if l.s[i] == '"' {
				if i+1 < len(l.s) && l.s[i+1] == '"' {
					b.WriteByte('"')
					i++
					continue
				}
				l.pos = i + 1
				return b.String(), b.Len() > 0
			}
			b.WriteByte(l.s[i])
		}
		return "", false
	}
	w := l.bareWord()
	if w == "" {
		return "", false
	}
	l.pos += len(w)
	return strings.ToLower(w), true
}

// IndexEvent is one thing BuildIndexes did, for the event log.
type IndexEvent struct {
	Action    string // "build", "drop-invalid", "drop-leftover"
	Statement int    // index into target.indexes; -1 for drops
	Index     string // the index name
	SQL       string
	Took      time.Duration
}

// IndexBuild builds target.indexes on green, concurrently, resumably.
type IndexBuild struct {
	ConnConfig *pgx.ConnConfig // a dedicated session is opened from it
	Migration  string
	Names      shadow.Names
	Statements []string
	// Built maps a statement's position to the index it created, as
	// recorded by earlier runs (needed for statements that name no index).
	Built map[int]string
	// OnEvent records what was done (required: unnamed statements are found
	// again through it after a crash).
	OnEvent func(ctx context.Context, ev IndexEvent) error
	Log     zerolog.Logger
}

type greenIndex struct {
	name       string
	valid      bool
	constraint bool
}

const greenIndexesSQL = `SELECT c.relname::text, i.indisvalid,
	EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid AND con.conrelid = i.indrelid)
	FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
	WHERE i.indrelid = to_regclass($1) ORDER BY c.relname`

func listGreenIndexes(ctx context.Context, q db.Querier, n shadow.Names) (map[string]greenIndex, error) {
	rows, err := q.Query(ctx, greenIndexesSQL, db.Ident(n.Green.Schema, n.Green.Name))
	if err != nil {
		return nil, err
	}
	out := map[string]greenIndex{}
	var x greenIndex
	_, err = pgx.ForEachRow(rows, []any{&x.name, &x.valid, &x.constraint}, func() error {
		out[x.name] = x
		return nil
	})
	return out, err
}

// Run builds every statement not yet built. First it drops what a crash
// can leave behind: INVALID indexes (a CREATE INDEX CONCURRENTLY that did
// not finish) and, when some statement names no index, valid indexes that
// no statement accounts for (built, but killed before it was recorded).
// Green's only other indexes back its constraints, from target.ddl.
//
// The session runs with lock_timeout and statement_timeout off: CREATE
// INDEX CONCURRENTLY takes SHARE UPDATE EXCLUSIVE, which blocks no reads or
// writes, and waits for older transactions through lock waits that a short
// lock_timeout would turn into a failed, INVALID index.
func (ib *IndexBuild) Run(ctx context.Context) error {
	stmts := make([]IndexStmt, len(ib.Statements))
	for i, s := range ib.Statements {
		st, err := ParseIndexStmt(s)
		if err != nil {
			return fmt.Errorf("target.indexes[%d]: %w", i, err)
		}
		stmts[i] = st
	}
	cfg := ib.ConnConfig.Copy()
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["application_name"] = "greenswap:" + ib.Migration + ":index"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to build indexes: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "SET lock_timeout = 0; SET statement_timeout = 0; SET search_path TO "+
		db.Ident(ib.Names.GreenSchema)+", "+db.Ident(ib.Names.App.Schema), pgx.QueryExecModeSimpleProtocol); err != nil {
		return err
	}
	have, err := listGreenIndexes(ctx, conn, ib.Names)
	if err != nil {
		return err
	}
	drop := func(action, name string) error {
		sql := "DROP INDEX CONCURRENTLY IF EXISTS " + db.Ident(ib.Names.Green.Schema, name)
		t0 := time.Now()
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("drop index %s: %w", name, err)
		}
		delete(have, name)
		ib.Log.Info().Str("index", name).Str("action", action).Msg("dropped an index left by an interrupted build")
		return ib.OnEvent(ctx, IndexEvent{Action: action, Statement: -1, Index: name, SQL: sql, Took: time.Since(t0)})
	}
	for _, name := range slices.Sorted(maps.Keys(have)) {
		if !have[name].valid {
			if err := drop("drop-invalid", name); err != nil {
				return err
			}
		}
	}
	known := map[string]bool{}
	var todo []int
	unnamedTodo := false
	for i, st := range stmts {
		name := st.Name
		if name == "" {
			name = ib.Built[i]
		}
		if name != "" {
			known[name] = true
		}
		if _, ok := have[name]; name != "" && ok {
			continue
		}
		todo = append(todo, i)
		if st.Name == "" {
			unnamedTodo = true
		}
	}
	if unnamedTodo {
		for _, name := range slices.Sorted(maps.Keys(have)) {
			if x := have[name]; !x.constraint && !known[name] {
				if err := drop("drop-leftover", name); err != nil {
					return err
				}
			}
		}
	}
	for _, i := range todo {
		st := stmts[i]
		ib.Log.Info().Int("statement", i).Str("sql", st.SQL).Msg("building index")
		t0 := time.Now()
		if _, err := conn.Exec(ctx, st.SQL); err != nil {
			return fmt.Errorf("target.indexes[%d]: %s: %w", i, oneLineStmt(st.SQL), err)
		}
		took := time.Since(t0)
		after, err := listGreenIndexes(ctx, conn, ib.Names)
		if err != nil {
			return err
		}
		name := st.Name
		if name == "" {
			for n := range after {
				if _, old := have[n]; !old {
					name = n
				}
			}
		}
		have = after
		if err := ib.OnEvent(ctx, IndexEvent{Action: "build", Statement: i, Index: name, SQL: st.SQL, Took: took}); err != nil {
			return err
		}
	}
	return nil
}

// Analyze collects statistics on green (SHARE UPDATE EXCLUSIVE: blocks
// neither reads nor writes). It returns the SQL it ran.
func Analyze(ctx context.Context, q db.Querier, n shadow.Names) (string, error) {
	sql := "ANALYZE " + db.Ident(n.Green.Schema, n.Green.Name)
	_, err := q.Exec(ctx, sql)
	return sql, err
}
