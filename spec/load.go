package spec

// Strict spec loading: YAML (gopkg.in/yaml.v3, walked as yaml.Node so every
// field keeps its line) and JSON (encoding/json tokens turned into the same
// node tree, with lines taken from byte offsets). One walker decodes both,
// so both formats share the same rules and error texts.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/greenswap/greenswap/internal/sqllex"
	"gopkg.in/yaml.v3"
)

// LoadSpecFile reads a spec from path. The extension picks the format:
// .yaml and .yml are YAML, .json is JSON; any other extension is sniffed
// (a '{' as the first non-space character means JSON, otherwise YAML).
func LoadSpecFile(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		msg := err.Error()
		var pe *os.PathError
		if errors.As(err, &pe) {
			msg = pe.Err.Error()
		}
		return nil, newSpecError(path, 0, "", "cannot read the spec file: "+msg, "check the path of the spec file")
	}
	format := ""
	switch strings.ToLower(filepath.Ext(path)) {
	case ".yaml", ".yml":
		format = "yaml"
	case ".json":
		format = "json"
	}
	return ParseSpec(data, path, format)
}

// ParseSpec decodes a spec from data and validates it (see Validate). file
// is used in error messages and kept in Spec.File; format is "yaml", "json"
// or "" to sniff. Every error it returns is a *SpecError. It never panics.
func ParseSpec(data []byte, file, format string) (*Spec, error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")) // a UTF-8 byte order mark
	if !utf8.Valid(data) {
		off := 0
		for off < len(data) {
			r, size := utf8.DecodeRune(data[off:])
			if r == utf8.RuneError && size <= 1 {
				break
			}
			off += size
		}
		return nil, newSpecError(file, 1+bytes.Count(data[:off], []byte("\n")), "",
			"the spec is not valid UTF-8 text", "save the file as UTF-8")
	}
	switch strings.ToLower(format) {
	case "yaml", "yml":
		format = "yaml"
	case "json":
		format = "json"
	case "":
		format = "yaml"
		if t := bytes.TrimLeft(data, " \t\r\n"); len(t) > 0 && t[0] == '{' {
			format = "json"
		}
	default:
		return nil, newSpecError(file, 0, "", fmt.Sprintf("unknown spec format %q", format), `use "yaml" or "json"`)
	}

	var root *yaml.Node
	var err *SpecError
	if format == "json" {
		root, err = parseJSONNode(data, file)
	} else {
		root, err = parseYAMLNode(data, file)
	}
	if err != nil {
		return nil, err
	}

	s := &Spec{File: file, Lines: map[string]int{}}
	d := &specDecoder{file: file, lines: s.Lines}
	if err := d.spec(root, s); err != nil {
		return nil, err
	}
	if s.Mode == "" {
		s.Mode = ModeTrigger
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return s, nil
}

// ---------------------------------------------------------------------------
// Parsing into a node tree.

// parseYAMLNode parses exactly one YAML document and returns its root node.
func parseYAMLNode(data []byte, file string) (root *yaml.Node, serr *SpecError) {
	defer func() {
		// yaml.v3 is not ours; whatever it does, ParseSpec must not panic.
		if r := recover(); r != nil {
			root, serr = nil, newSpecError(file, 0, "", fmt.Sprintf("cannot parse the YAML: %v", r), "check the YAML syntax")
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return nil, newSpecError(file, 0, "", "the spec is empty", "write at least name, table and target.ddl")
		}
		return nil, yamlError(file, data, err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == io.EOF:
	case err != nil:
		return nil, yamlError(file, data, err)
	default:
		line := extra.Line
		if line == 0 && len(extra.Content) > 0 {
			line = extra.Content[0].Line
		}
		return nil, newSpecError(file, line, "", "a second YAML document follows the spec", "keep one spec per file: remove the second '---' document")
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, newSpecError(file, 0, "", "the spec is empty", "write at least name, table and target.ddl")
	}
	return doc.Content[0], nil
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func yamlError(file string, data []byte, err error) *SpecError {
	msg := err.Error()
	line := 0
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	fix := "check the YAML syntax on that line"
	if line > 0 {
		lines := bytes.Split(data, []byte("\n"))
		// yaml.v3 sometimes reports the line after the culprit; look at both.
		for _, l := range []int{line - 1, line - 2} {
			if l >= 0 && l < len(lines) && bytes.IndexByte(lines[l], '\t') >= 0 {
				fix = "YAML does not allow tabs for indentation: indent with spaces"
				break
			}
		}
	}
	return newSpecError(file, line, "", "invalid YAML: "+msg, fix)
}

// maxJSONDepth bounds nesting; a spec needs three levels.
const maxJSONDepth = 64

type jsonParser struct {
	data       []byte
	dec        *json.Decoder
	lineStarts []int
	file       string
}

// parseJSONNode parses one JSON value into a yaml.Node tree (lines and
// columns included), so JSON goes through the same walker as YAML.
func parseJSONNode(data []byte, file string) (*yaml.Node, *SpecError) {
	p := &jsonParser{data: data, file: file, lineStarts: []int{0}}
	for i, c := range data {
		if c == '\n' {
			p.lineStarts = append(p.lineStarts, i+1)
		}
	}
	p.dec = json.NewDecoder(bytes.NewReader(data))
	p.dec.UseNumber()
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, newSpecError(file, 0, "", "the spec is empty", "write at least name, table and target.ddl")
	}
	root, err := p.value(0)
	if err != nil {
		return nil, err
	}
	line, _ := p.pos()
	if _, e := p.dec.Token(); e != io.EOF {
		if e != nil {
			return nil, p.syntaxError(e)
		}
		return nil, newSpecError(file, line, "", "unexpected text after the JSON object", "a spec is one JSON object: remove what follows its closing '}'")
	}
	return root, nil
}

// lineCol turns a byte offset into a 1-based line and column.
func (p *jsonParser) lineCol(off int) (int, int) {
	i := sort.Search(len(p.lineStarts), func(i int) bool { return p.lineStarts[i] > off }) - 1
	if i < 0 {
		i = 0
	}
	return i + 1, off - p.lineStarts[i] + 1
}

// pos is where the next token starts.
func (p *jsonParser) pos() (int, int) {
	off := int(p.dec.InputOffset())
	for off < len(p.data) {
		switch p.data[off] {
		case ' ', '\t', '\r', '\n', ',', ':':
			off++
			continue
		}
		break
	}
	return p.lineCol(off)
}

func (p *jsonParser) syntaxError(err error) *SpecError {
	var se *json.SyntaxError
	off := len(p.data)
	if errors.As(err, &se) {
		off = int(se.Offset)
		if off > 0 {
			off-- // Offset is just after the offending byte
		}
	}
	if off > len(p.data) {
		off = len(p.data)
	}
	msg := err.Error()
	if err == io.ErrUnexpectedEOF || err == io.EOF {
		msg = "unexpected end of input"
	}
	line, _ := p.lineCol(off)
	return newSpecError(p.file, line, "", "invalid JSON: "+msg, "check the JSON syntax on that line")
}

func (p *jsonParser) value(depth int) (*yaml.Node, *SpecError) {
	line, col := p.pos()
	if depth > maxJSONDepth {
		return nil, newSpecError(p.file, line, "", "the JSON is nested too deeply", "a spec has at most three levels of objects")
	}
	tok, err := p.dec.Token()
	if err != nil {
		return nil, p.syntaxError(err)
	}
	n := &yaml.Node{Line: line, Column: col}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			n.Kind, n.Tag = yaml.MappingNode, "!!map"
			for p.dec.More() {
				kl, kc := p.pos()
				kt, err := p.dec.Token()
				if err != nil {
					return nil, p.syntaxError(err)
				}
				key, ok := kt.(string)
				if !ok {
					return nil, newSpecError(p.file, kl, "", "invalid JSON: object key is not a string", "check the JSON syntax on that line")
				}
				v, serr := p.value(depth + 1)
				if serr != nil {
					return nil, serr
				}
				k := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Style: yaml.DoubleQuotedStyle, Value: key, Line: kl, Column: kc}
				n.Content = append(n.Content, k, v)
			}
		case '[':
			n.Kind, n.Tag = yaml.SequenceNode, "!!seq"
			for p.dec.More() {
				v, serr := p.value(depth + 1)
				if serr != nil {
					return nil, serr
				}
				n.Content = append(n.Content, v)
			}
		default:
			return nil, newSpecError(p.file, line, "", fmt.Sprintf("invalid JSON: unexpected %q", string(t)), "check the JSON syntax on that line")
		}
		if _, err := p.dec.Token(); err != nil { // the closing delimiter
			return nil, p.syntaxError(err)
		}
	case string:
		n.Kind, n.Tag, n.Style, n.Value = yaml.ScalarNode, "!!str", yaml.DoubleQuotedStyle, t
	case json.Number:
		n.Kind, n.Tag, n.Value = yaml.ScalarNode, "!!float", t.String()
		if jsonIntRE.MatchString(n.Value) {
			n.Tag = "!!int"
		}
	case bool:
		n.Kind, n.Tag, n.Value = yaml.ScalarNode, "!!bool", strconv.FormatBool(t)
	case nil:
		n.Kind, n.Tag, n.Value = yaml.ScalarNode, "!!null", "null"
	default:
		return nil, newSpecError(p.file, line, "", fmt.Sprintf("invalid JSON: unexpected token %v", t), "check the JSON syntax on that line")
	}
	return n, nil
}

var jsonIntRE = regexp.MustCompile(`^-?[0-9]+$`)

// ---------------------------------------------------------------------------
// The walker: node tree → Spec, strictly.

type specDecoder struct {
	file  string
	lines map[string]int
}

var (
	specFields   = []string{"name", "table", "mode", "key", "alter", "target", "forward", "reverse", "sync", "guard", "tables", "split", "drop"}
	targetFields = []string{"ddl", "indexes", "partitions"}
	syncFields   = []string{"batch_size", "min_batch_size", "max_batch_size", "target_batch_time", "max_replica_lag", "lock_timeout", "nice_ratio", "apply_workers", "workers"}
)

func (d *specDecoder) errf(line int, field, fix, format string, args ...any) *SpecError {
	return newSpecError(d.file, line, field, fmt.Sprintf(format, args...), fix)
}

func (d *specDecoder) spec(root *yaml.Node, s *Spec) *SpecError {
	root = resolveAlias(root)
	if root.Kind != yaml.MappingNode {
		return d.errf(root.Line, "", "a spec is a mapping with name, table, target and so on",
			"the spec must be a mapping of fields, not %s", describeNode(root))
	}
	if err := d.refuseMerge(root); err != nil { // spec/split.go
		return err
	}
	return d.mapping(root, "", specFields, func(field, path string, line int, v *yaml.Node) *SpecError {
		var err *SpecError
		switch field {
		case "name":
			s.Name, err = d.str(v, path, line)
		case "table":
			s.Table, err = d.str(v, path, line)
		case "mode":
			var m string
			m, err = d.str(v, path, line)
			s.Mode = Mode(m)
		case "key":
			s.Key, err = d.strList(v, path, line, "a list of column names", "write key: [id] or key: [tenant_id, id]")
		case "alter":
			s.Alter, err = d.str(v, path, line)
		case "target":
			err = d.target(v, path, line, &s.Target)
		case "forward":
			s.Forward, err = d.strMap(v, path, line)
		case "reverse":
			s.Reverse, err = d.strMap(v, path, line)
		case "sync":
			err = d.sync(v, path, line, &s.Sync)
		case "guard":
			err = d.guard(v, path, line, &s.Guard) // spec/guard.go
		case "tables":
			s.Tables, err = d.tables(v, path, line)
		case "split":
			s.Split, err = d.split(v, path, line) // spec/split.go
		case "drop":
			s.Drop, err = d.strList(v, path, line, "a list of blue column names", "write drop: [legacy_col]")
		}
		return err
	})
}

// tables decodes the several-tables form: a list of mappings with the
// single-table fields; lines go under tables[i].
func (d *specDecoder) tables(n *yaml.Node, path string, line int) ([]TableSpec, *SpecError) {
	var out []TableSpec
	err := d.mappings(n, path, line, "write one '- table: ...' item per table, each with its own target, key, forward and reverse",
		"a list of tables", "a mapping with table, target and so on", tableFields, func() fieldFunc {
			out = append(out, TableSpec{})
			t := &out[len(out)-1]
			return func(field, fpath string, fline int, v *yaml.Node) *SpecError {
				var err *SpecError
				switch field {
				case "table":
					t.Table, err = d.str(v, fpath, fline)
				case "key":
					t.Key, err = d.strList(v, fpath, fline, "a list of column names", "write key: [id] or key: [tenant_id, id]")
				case "target":
					err = d.target(v, fpath, fline, &t.Target)
				case "forward":
					t.Forward, err = d.strMap(v, fpath, fline)
				case "reverse":
					t.Reverse, err = d.strMap(v, fpath, fline)
				}
				return err
			}
		})
	return out, err
}

// mappings decodes a list of mappings (tables:, split:) with fields: for
// each item, item() gives the function that decodes its fields; lines go
// under path[i].
func (d *specDecoder) mappings(n *yaml.Node, path string, line int, fix, list, item string, fields []string, each func() fieldFunc) *SpecError {
	n = resolveAlias(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		return d.errf(line, path, fix, "must be %s, not %s", list, describeNode(n))
	}
	for i, it := range n.Content {
		ipath := fmt.Sprintf("%s[%d]", path, i)
		iline := it.Line
		if iline == 0 {
			iline = line
		}
		d.lines[ipath] = iline
		it = resolveAlias(it)
		if it.Kind != yaml.MappingNode {
			return d.errf(iline, ipath, fix, "must be %s, not %s", item, describeNode(it))
		}
		if err := d.mapping(it, ipath, fields, each()); err != nil {
			return err
		}
	}
	return nil
}

func (d *specDecoder) target(n *yaml.Node, path string, line int, t *Target) *SpecError {
	return d.object(n, path, line, targetFields, func(field, fpath string, fline int, v *yaml.Node) *SpecError {
		var err *SpecError
		switch field {
		case "ddl":
			t.DDL, err = d.str(v, fpath, fline)
		case "indexes":
			t.Indexes, err = d.strList(v, fpath, fline, "a list of CREATE INDEX statements", "write one '- CREATE INDEX ...' item per index")
		case "partitions":
			t.Partitions, err = d.strList(v, fpath, fline, "a list of CREATE TABLE ... PARTITION OF statements",
				"write one '- CREATE TABLE name PARTITION OF table FOR VALUES ...' item per partition")
		}
		return err
	})
}

func (d *specDecoder) sync(n *yaml.Node, path string, line int, o *SyncOptions) *SpecError {
	return d.object(n, path, line, syncFields, func(field, fpath string, fline int, v *yaml.Node) *SpecError {
		var err *SpecError
		switch field {
		case "batch_size":
			o.BatchSize, err = d.int(v, fpath, fline)
		case "min_batch_size":
			o.MinBatchSize, err = d.int(v, fpath, fline)
		case "max_batch_size":
			o.MaxBatchSize, err = d.int(v, fpath, fline)
		case "target_batch_time":
			o.TargetBatchTime, err = d.duration(v, fpath, fline)
		case "max_replica_lag":
			o.MaxReplicaLag, err = d.duration(v, fpath, fline)
		case "lock_timeout":
			o.LockTimeout, err = d.duration(v, fpath, fline)
		case "nice_ratio":
			o.NiceRatio, err = d.float(v, fpath, fline)
		case "apply_workers":
			o.ApplyWorkers, err = d.int(v, fpath, fline)
		case "workers":
			o.Workers, err = d.int(v, fpath, fline)
		}
		return err
	})
}

// object decodes a nested mapping; null (an empty value) leaves it zero.
func (d *specDecoder) object(n *yaml.Node, path string, line int, fields []string, fn fieldFunc) *SpecError {
	n = resolveAlias(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return d.errf(line, path, "write the fields of "+path+" indented below it: "+strings.Join(fields, ", "),
			"must be a mapping, not %s", describeNode(n))
	}
	return d.mapping(n, path, fields, fn)
}

type fieldFunc func(field, path string, line int, v *yaml.Node) *SpecError

// mapping walks the pairs of n: every key must be one of fields and appear
// once; its line is recorded under its path.
func (d *specDecoder) mapping(n *yaml.Node, prefix string, fields []string, fn fieldFunc) *SpecError {
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolveAlias(n.Content[i]), n.Content[i+1]
		name, kerr := d.key(k, prefix)
		if kerr != nil {
			return kerr
		}
		path := join(prefix, name)
		if !slices.Contains(fields, name) {
			fix := "valid fields: " + strings.Join(fields, ", ")
			if name == "<<" {
				fix = "YAML merge keys are not supported: write the fields out; " + fix
			}
			return d.errf(k.Line, path, fix, "unknown field")
		}
		if first, dup := seen[name]; dup {
			return d.errf(k.Line, path, "remove one of them", "duplicate field (first given on line %d)", first)
		}
		seen[name] = k.Line
		d.lines[path] = k.Line
		if err := fn(name, path, k.Line, v); err != nil {
			return err
		}
	}
	return nil
}

// key returns the text of a mapping key, which must be a plain scalar.
func (d *specDecoder) key(k *yaml.Node, prefix string) (string, *SpecError) {
	if k.Kind != yaml.ScalarNode {
		return "", d.errf(k.Line, prefix, "write plain names as keys", "a key must be a name, not %s", describeNode(k))
	}
	switch k.ShortTag() {
	case "!!null":
		return "", d.errf(k.Line, prefix, "write a name before the ':'", "a key is missing")
	case "!!str", "!!int", "!!float", "!!bool", "!!timestamp", "!!merge":
		return k.Value, nil
	}
	return "", d.errf(k.Line, prefix, "remove the tag", "YAML tag %s is not supported on a key", oneLineQuote(k.Tag))
}

// str decodes a string scalar; null gives "". Plain numbers and booleans
// are taken as written (an expression "0" or "true" is fine).
func (d *specDecoder) str(n *yaml.Node, path string, line int) (string, *SpecError) {
	n = resolveAlias(n)
	if n.Kind != yaml.ScalarNode {
		return "", d.errf(line, path, "write a single value; quote it if it contains ': ' or starts with '['",
			"must be a string, not %s", describeNode(n))
	}
	switch n.ShortTag() {
	case "!!null":
		return "", nil
	case "!!str", "!!int", "!!float", "!!bool", "!!timestamp":
		return n.Value, nil
	}
	return "", d.errf(line, path, "remove the tag and write plain text", "must be a string, not %s", describeNode(n))
}

func (d *specDecoder) strList(n *yaml.Node, path string, line int, what, fix string) ([]string, *SpecError) {
	n = resolveAlias(n)
	if isNull(n) {
		return nil, nil
	}
	if n.Kind != yaml.SequenceNode {
		return nil, d.errf(line, path, fix, "must be %s, not %s", what, describeNode(n))
	}
	var out []string
	for i, item := range n.Content {
		ipath := fmt.Sprintf("%s[%d]", path, i)
		iline := item.Line
		if iline == 0 {
			iline = line
		}
		d.lines[ipath] = iline
		s, err := d.str(item, ipath, iline)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// strMap decodes forward/reverse: column name → SQL expression.
func (d *specDecoder) strMap(n *yaml.Node, path string, line int) (map[string]string, *SpecError) {
	n = resolveAlias(n)
	if isNull(n) {
		return nil, nil
	}
	if n.Kind != yaml.MappingNode {
		return nil, d.errf(line, path, "write one 'column: expression' line per column, indented below "+path,
			"must be a mapping of column to SQL expression, not %s", describeNode(n))
	}
	var out map[string]string
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolveAlias(n.Content[i]), n.Content[i+1]
		col, err := d.key(k, path)
		if err != nil {
			return nil, err
		}
		if col == "<<" && k.ShortTag() == "!!merge" {
			return nil, d.errf(k.Line, path, "write the columns out", "YAML merge keys are not supported")
		}
		cpath := join(path, col)
		if first, dup := seen[col]; dup {
			return nil, d.errf(k.Line, cpath, "give each column one expression", "duplicate column (first given on line %d)", first)
		}
		seen[col] = k.Line
		d.lines[cpath] = k.Line
		expr, err := d.str(v, cpath, k.Line)
		if err != nil {
			return nil, err
		}
		if out == nil {
			out = map[string]string{}
		}
		out[col] = expr
	}
	return out, nil
}

func (d *specDecoder) int(n *yaml.Node, path string, line int) (int, *SpecError) {
	n = resolveAlias(n)
	if isNull(n) {
		return 0, nil
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		return 0, d.errf(line, path, "write a plain whole number without quotes, e.g. 1000",
			"must be a whole number, not %s", describeNode(n))
	}
	var v int64
	if err := n.Decode(&v); err != nil || int64(int(v)) != v {
		return 0, d.errf(line, path, "write a smaller number", "number %s is out of range", oneLineQuote(n.Value))
	}
	return int(v), nil
}

func (d *specDecoder) float(n *yaml.Node, path string, line int) (float64, *SpecError) {
	n = resolveAlias(n)
	if isNull(n) {
		return 0, nil
	}
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!int" && n.ShortTag() != "!!float") {
		return 0, d.errf(line, path, "write a plain number without quotes, e.g. 0.5",
			"must be a number, not %s", describeNode(n))
	}
	var v float64
	if err := n.Decode(&v); err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, d.errf(line, path, "write a finite number, e.g. 0.5", "number %s is not finite", oneLineQuote(n.Value))
	}
	return v, nil
}

func (d *specDecoder) duration(n *yaml.Node, path string, line int) (Duration, *SpecError) {
	n = resolveAlias(n)
	if isNull(n) {
		return Duration{}, nil
	}
	v, msg, fix := durationFromNode(n)
	if msg != "" {
		return Duration{}, d.errf(line, path, fix, "%s", msg)
	}
	return Duration{v}, nil
}

func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && n.Alias != nil && i < 16; i++ {
		n = n.Alias
	}
	if n == nil || n.Kind == yaml.AliasNode {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null"}
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describeNode names what a node is, for "must be X, not Y" messages.
func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str":
			return "the string " + oneLineQuote(n.Value)
		case "!!int", "!!float":
			return "the number " + oneLineQuote(n.Value)
		case "!!bool":
			return "the boolean " + n.Value
		case "!!null":
			return "an empty value"
		case "!!timestamp":
			return "the date " + oneLineQuote(n.Value)
		}
		return "a value tagged " + oneLineQuote(n.Tag)
	}
	return "an unsupported YAML node"
}

// ---------------------------------------------------------------------------
// Duration: "200ms", "2s", "5m". Only strings; a bare number is an error
// because its unit would be a guess.

func durationFromNode(n *yaml.Node) (time.Duration, string, string) {
	const fix = `write a number with a unit, e.g. "200ms", "2s" or "5m"`
	if n.Kind != yaml.ScalarNode {
		return 0, "must be a duration string, not " + describeNode(n), fix
	}
	switch n.ShortTag() {
	case "!!str":
		return parseDurationText(n.Value)
	case "!!int", "!!float":
		return 0, "a duration needs a unit, got the bare number " + oneLineQuote(n.Value),
			fmt.Sprintf(`write "%sms" for milliseconds or "%ss" for seconds`, n.Value, n.Value)
	}
	return 0, "must be a duration string, not " + describeNode(n), fix
}

func parseDurationText(s string) (time.Duration, string, string) {
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, "invalid duration " + oneLineQuote(s), `write a number with a unit, e.g. "200ms", "2s" or "5m"`
	}
	return v, "", ""
}

// UnmarshalYAML accepts a duration string such as "200ms" or "2s".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	n = resolveAlias(n)
	if isNull(n) {
		return nil
	}
	v, msg, fix := durationFromNode(n)
	if msg != "" {
		return fmt.Errorf("line %d: %s (%s)", n.Line, msg, fix)
	}
	d.Duration = v
	return nil
}

// MarshalYAML writes the duration as a string such as "2s".
func (d Duration) MarshalYAML() (any, error) { return d.Duration.String(), nil }

// UnmarshalJSON accepts a duration string such as "200ms" or "2s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if string(b) == "null" {
		return nil
	}
	if len(b) == 0 || b[0] != '"' {
		return fmt.Errorf(`a duration needs a unit, got %s: write e.g. "200ms" or "2s"`, oneLineQuote(string(b)))
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, msg, fix := parseDurationText(s)
	if msg != "" {
		return fmt.Errorf("%s: %s", msg, fix)
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes the duration as a string such as "2s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.Duration.String()) }

// ---------------------------------------------------------------------------
// Validation that needs no database.

var specNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// MaxSpecNameLen bounds Spec.Name: it is embedded in schema, trigger and
// slot names, which PostgreSQL truncates at 63 bytes.
const MaxSpecNameLen = 40

// Validate runs the checks that need no database. It returns the first
// problem as a *SpecError naming file, line and field.
func (s *Spec) Validate() error {
	if s.Name == "" {
		return s.specErr("name", "add e.g. name: orders_v2", "required")
	}
	if !specNameRE.MatchString(s.Name) || len(s.Name) > MaxSpecNameLen {
		return s.specErr("name", fmt.Sprintf("use lowercase letters, digits and _, starting with a letter or _, at most %d characters: it becomes part of schema and slot names", MaxSpecNameLen),
			"invalid migration name %s", oneLineQuote(s.Name))
	}

	switch s.Mode {
	case "", ModeTrigger, ModeLogical:
	default:
		return s.specErr("mode", "write mode: trigger or mode: logical (or leave it out for trigger)", "unknown mode %s", oneLineQuote(string(s.Mode)))
	}

	if (s.MultiTable() || s.IsSplit()) && s.Alter != "" {
		return s.specErr("alter", "write one spec per table for alter:, or give each table a target", "alter: is for one table, and the spec has tables: or split:")
	}
	switch {
	case s.IsSplit():
		if err := s.validateBlue(); err != nil {
			return err
		}
		if err := s.validateSplit(); err != nil { // spec/split.go
			return err
		}
	case len(s.Drop) > 0:
		return s.specErr("drop", "remove it: drop: lists the blue columns a split: does not carry", "applies only to a split")
	case s.MultiTable():
		if err := s.validateTables(); err != nil {
			return err
		}
	default:
		if err := s.validateTable(); err != nil {
			return err
		}
	}

	o := s.Sync
	for _, b := range []struct {
		f string
		v int
	}{{"sync.batch_size", o.BatchSize}, {"sync.min_batch_size", o.MinBatchSize}, {"sync.max_batch_size", o.MaxBatchSize}} {
		if b.v < 0 {
			return s.specErr(b.f, "write a positive number, or leave it out for the default", "must not be negative, got %d", b.v)
		}
	}
	if o.MinBatchSize > 0 && o.MaxBatchSize > 0 && o.MinBatchSize > o.MaxBatchSize {
		return s.specErr("sync.min_batch_size", "make min_batch_size at most max_batch_size",
			"min_batch_size %d is larger than max_batch_size %d", o.MinBatchSize, o.MaxBatchSize)
	}
	if o.ApplyWorkers != 0 && s.Mode != ModeLogical {
		return s.specErr("sync.apply_workers", "remove it, or set mode: logical (trigger mode has no stream to apply)",
			"applies only to mode: logical, and the mode is %s", s.Mode)
	}
	if o.ApplyWorkers < 0 || o.ApplyWorkers > MaxApplyWorkers {
		return s.specErr("sync.apply_workers", fmt.Sprintf("write a number from 1 to %d, or leave it out for the default", MaxApplyWorkers),
			"must be between 1 and %d, got %d", MaxApplyWorkers, o.ApplyWorkers)
	}
	if o.Workers < 0 || o.Workers > MaxWorkers {
		return s.specErr("sync.workers", fmt.Sprintf("write a number from 1 (one cursor) to %d, or leave it out for the default (%d)", MaxWorkers, DefaultWorkers),
			"must be between 1 and %d, got %d", MaxWorkers, o.Workers)
	}
	if o.NiceRatio < 0 || o.NiceRatio > MaxNiceRatio {
		return s.specErr("sync.nice_ratio", fmt.Sprintf("write a number from 0 (no pause) to %g, e.g. 0.5", MaxNiceRatio),
			"must be between 0 and %g, got %g", MaxNiceRatio, o.NiceRatio)
	}
	for _, dd := range []struct {
		f string
		v time.Duration
	}{{"sync.target_batch_time", o.TargetBatchTime.Duration}, {"sync.max_replica_lag", o.MaxReplicaLag.Duration}, {"sync.lock_timeout", o.LockTimeout.Duration}} {
		if dd.v < 0 {
			return s.specErr(dd.f, "write a positive duration such as \"2s\", or leave it out for the default", "must not be negative, got %s", dd.v)
		}
	}
	if err := s.validateGuard(); err != nil { // spec/guard.go
		return err
	}
	return nil
}

// validateTable checks the single-table fields: of the spec, or of one
// member of a multi-table spec (whose errors then name tables[i].).
func (s *Spec) validateTable() error {
	if err := s.validateBlue(); err != nil {
		return err
	}
	return s.validateGreen()
}

// validateBlue checks the fields that name blue: its table and key.
func (s *Spec) validateBlue() error {
	if strings.TrimSpace(s.Table) == "" {
		return s.specErr("table", "add the table to migrate, e.g. table: public.orders", "required")
	}
	if _, msg := parseQualifiedName(s.Table); msg != "" {
		return s.specErr("table", `write table or schema.table; quote parts with "" to keep case or special characters`,
			"invalid table name %s: %s", oneLineQuote(s.Table), msg)
	}

	return s.checkColumnList("key", s.Key, "write a column name, or leave key out to use the primary key", "list each key column once")
}

// checkColumnList checks the column names of list field (key, drop):
// none empty (fixEmpty), none twice (fixDup).
func (s *Spec) checkColumnList(field string, cols []string, fixEmpty, fixDup string) error {
	seen := map[string]int{}
	for i, c := range cols {
		f := fmt.Sprintf("%s[%d]", field, i)
		if strings.TrimSpace(c) == "" {
			return s.specErr(f, fixEmpty, "empty column name")
		}
		if j, dup := seen[c]; dup {
			return s.specErr(f, fixDup, "column %s is already %s[%d]", oneLineQuote(c), field, j)
		}
		seen[c] = i
	}
	return nil
}

// validateGreen checks the fields that describe green: target (or the
// alter: it is derived from) and the mappings.
func (s *Spec) validateGreen() error {
	if s.Alter != "" {
		if err := s.validateAlter(); err != nil {
			return err
		}
	} else if err := s.validateTarget(); err != nil {
		return err
	}

	for _, side := range []struct {
		name string
		m    map[string]string
	}{{"forward", s.Forward}, {"reverse", s.Reverse}} {
		// Report the first problem in file order.
		for _, c := range sortedByLine(s, side.name, side.m) {
			f := side.name + "." + c
			if strings.TrimSpace(c) == "" {
				return s.specErr(f, "write the column name before the ':'", "empty column name")
			}
			if msg, fix := checkExpression(side.m[c]); msg != "" {
				return s.specErr(f, fix, "%s", msg)
			}
		}
	}
	return nil
}

// validateTarget checks target.ddl, target.indexes and target.partitions.
func (s *Spec) validateTarget() error {
	if strings.TrimSpace(s.Target.DDL) == "" {
		return s.specErr("target.ddl", "write the green table as one CREATE TABLE statement under target.ddl: |", "required")
	}
	if msg, fix := checkCreateTable(s.Target.DDL); msg != "" {
		return s.specErr("target.ddl", fix, "%s", msg)
	}
	partitioned := ddlPartitioned(s.Target.DDL)
	for i, ix := range s.Target.Indexes {
		f := fmt.Sprintf("target.indexes[%d]", i)
		if msg, fix := checkCreateIndex(ix); msg != "" {
			return s.specErr(f, fix, "%s", msg)
		}
		st, err := ParseIndexStmt(ix)
		if err != nil {
			return s.specErr(f, "write CREATE [UNIQUE] INDEX [name] ON table (columns) ...", "%s", err.Error())
		}
		// On a partitioned green each partition gets its own index, named
		// after the statement's (sync/indexes.go): an unnamed statement
		// would leave nothing to derive those names from, nor to find a
		// half-built index by after a crash.
		if msg, fix := s.checkIndexTable(st); msg != "" {
			return s.specErr(f, fix, "%s", msg)
		}
		if partitioned && st.Name == "" {
			return s.specErr(f, "write CREATE INDEX <name> ON ...: greenswap names each partition's index after it",
				"target.ddl is partitioned: every index needs a name")
		}
	}
	if err := s.validatePartitions(partitioned); err != nil {
		return err
	}
	return nil
}

// Line returns the line of field in File: its own line, else the line of
// the nearest enclosing field that has one, else the first field's line
// (1 for a spec without fields); 0 when the spec has no line information.
func (s *Spec) Line(field string) int {
	for p := field; p != ""; {
		if l := s.Lines[p]; l > 0 {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			break
		}
		p = p[:i]
	}
	if s.Lines == nil {
		return 0
	}
	first := 0
	for _, l := range s.Lines {
		if l > 0 && (first == 0 || l < first) {
			first = l
		}
	}
	if first == 0 {
		first = 1 // read from a file, but not a single field in it
	}
	return first
}

func (s *Spec) specErr(field, fix, format string, args ...any) *SpecError {
	return newSpecError(s.File, s.Line(field), s.fieldPath(field), fmt.Sprintf(format, args...), fix)
}

// AppTable is Table split into schema and name, following SQL identifier
// rules: unquoted parts are lowercased, "quoted" parts keep their case and
// "" stands for a quote. Without a schema it is public.
func (s *Spec) AppTable() QualifiedName {
	q, msg := parseQualifiedName(s.Table)
	if msg != "" {
		return QualifiedName{Schema: "public", Name: strings.TrimSpace(s.Table)}
	}
	return q
}

// parseQualifiedName parses [schema.]name; msg says what is wrong.
func parseQualifiedName(in string) (QualifiedName, string) {
	var parts []string
	s := in
	for {
		s = strings.TrimLeft(s, " \t\r\n")
		if s == "" {
			return QualifiedName{}, "a name is missing"
		}
		var part string
		if s[0] == '"' {
			var b strings.Builder
			i := 1
			closed := false
			for i < len(s) {
				if s[i] == '"' {
					if i+1 < len(s) && s[i+1] == '"' {
						b.WriteByte('"')
						i += 2
						continue
					}
					closed = true
					i++
					break
				}
				b.WriteByte(s[i])
				i++
			}
			if !closed {
				return QualifiedName{}, "unterminated quoted identifier"
			}
			part = b.String()
			if part == "" {
				return QualifiedName{}, `empty quoted identifier ""`
			}
			if strings.IndexByte(part, 0) >= 0 {
				return QualifiedName{}, "identifier contains a NUL character"
			}
			s = s[i:]
		} else {
			i := 0
			for i < len(s) && sqllex.IsIdentByte(s[i], i == 0) {
				i++
			}
			if i == 0 {
				r, _ := utf8.DecodeRuneInString(s)
				return QualifiedName{}, fmt.Sprintf("unexpected character %s", oneLineQuote(string(r)))
			}
			part = sqllex.Fold(s[:i])
			s = s[i:]
		}
		if len(part) > 63 {
			return QualifiedName{}, fmt.Sprintf("identifier %s is longer than 63 bytes", oneLineQuote(part))
		}
		parts = append(parts, part)
		s = strings.TrimLeft(s, " \t\r\n")
		if s == "" {
			break
		}
		if s[0] != '.' {
			r, _ := utf8.DecodeRuneInString(s)
			return QualifiedName{}, fmt.Sprintf("unexpected character %s", oneLineQuote(string(r)))
		}
		s = s[1:]
	}
	switch len(parts) {
	case 1:
		return QualifiedName{Schema: "public", Name: parts[0]}, ""
	case 2:
		return QualifiedName{Schema: parts[0], Name: parts[1]}, ""
	}
	return QualifiedName{}, "too many dots: write schema.table"
}

// checkStatementStart reads the leading keywords of a statement. It returns
// the words read (up to n) and, when the text ends early, fewer.
func statementWords(l *sqllex.Lexer, n int) []sqllex.Token {
	var toks []sqllex.Token
	for len(toks) < n {
		t, ok := l.Next()
		if !ok {
			break
		}
		toks = append(toks, t)
	}
	return toks
}

// checkSingleStatement continues l to the end: a ';' may only be followed
// by whitespace and comments.
func checkSingleStatement(l *sqllex.Lexer, what string) (string, string) {
	for {
		t, ok := l.Next()
		if !ok {
			break
		}
		if t.IsPunct(";") {
			if t2, ok := l.Next(); ok {
				return fmt.Sprintf("more than one statement: %s follows the ';'", oneLineQuote(clip(t2.Text, 30))),
					what
			}
			break
		}
	}
	if l.Err() != "" {
		return l.Err(), "close it: the statement must be complete"
	}
	return "", ""
}

func describeStart(toks []sqllex.Token) string {
	if len(toks) == 0 {
		return "nothing"
	}
	var words []string
	for _, t := range toks {
		words = append(words, t.Text)
	}
	return oneLineQuote(clip(strings.Join(words, " "), 40))
}

// checkCreateTable: a single CREATE TABLE statement.
func checkCreateTable(ddl string) (string, string) {
	l := sqllex.New(ddl)
	toks := statementWords(l, 2)
	if len(toks) < 2 || !toks[0].Is("create") || !toks[1].Is("table") {
		if l.Err() != "" {
			return l.Err(), "close it: the statement must be complete"
		}
		return "must be a CREATE TABLE statement, found " + describeStart(toks),
			"write the green table as the DBA would: CREATE TABLE name (columns ...)"
	}
	return checkSingleStatement(l, "target.ddl is one CREATE TABLE statement: put indexes under target.indexes and remove anything else")
}

// checkCreateIndex: CREATE [UNIQUE] INDEX, without CONCURRENTLY.
func checkCreateIndex(ix string) (string, string) {
	const fix = "write CREATE INDEX name ON table (columns), one statement per item"
	if strings.TrimSpace(ix) == "" {
		return "empty index statement", fix
	}
	l := sqllex.New(ix)
	toks := statementWords(l, 2)
	if len(toks) > 0 && toks[0].Is("create") && len(toks) > 1 && toks[1].Is("unique") {
		toks = append(toks, statementWords(l, 1)...)
		toks = append(toks[:1], toks[2:]...)
	}
	if len(toks) < 2 || !toks[0].Is("create") || !toks[1].Is("index") {
		if l.Err() != "" {
			return l.Err(), "close it: the statement must be complete"
		}
		return "must be a CREATE INDEX or CREATE UNIQUE INDEX statement, found " + describeStart(toks), fix
	}
	save := *l
	if t, ok := l.Next(); ok && t.Is("concurrently") {
		return "must not say CONCURRENTLY",
			"remove CONCURRENTLY: greenswap builds every index CONCURRENTLY itself, after the backfill"
	}
	*l = save
	return checkSingleStatement(l, "write one CREATE INDEX statement per item of target.indexes")
}

// ddlPartitioned reports whether a CREATE TABLE statement has a PARTITION
// BY clause (outside its parentheses).
func ddlPartitioned(ddl string) bool {
	l := sqllex.New(ddl)
	depth := 0
	var prev sqllex.Token
	for {
		t, ok := l.Next()
		if !ok {
			return false
		}
		switch {
		case t.IsPunct("("):
			depth++
		case t.IsPunct(")"):
			depth--
		case depth == 0 && prev.Is("partition") && t.Is("by"):
			return true
		}
		prev = t
	}
}

// partitionStmt is one target.partitions item, parsed.
type partitionStmt struct {
	name, parent string // identifier rules applied
	partitioned  bool   // it has PARTITION BY: later items may be its partitions
}

// parsePartitionStmt reads CREATE TABLE [IF NOT EXISTS] name PARTITION OF
// parent {( ... ) | FOR VALUES ... | DEFAULT} [PARTITION BY ...], one
// statement, both names unqualified. msg says what is wrong, fix what to do.
func parsePartitionStmt(src string) (p partitionStmt, msg, fix string) {
	const shape = "write CREATE TABLE <name> PARTITION OF <table> FOR VALUES ... (or DEFAULT), one statement per item"
	if strings.TrimSpace(src) == "" {
		return p, "empty partition statement", shape
	}
	l := sqllex.New(src)
	toks := statementWords(l, 2)
	if len(toks) < 2 || !toks[0].Is("create") || !toks[1].Is("table") {
		if l.Err() != "" {
			return p, l.Err(), "close it: the statement must be complete"
		}
		return p, "must be a CREATE TABLE ... PARTITION OF statement, found " + describeStart(toks), shape
	}
	t, ok := l.Next()
	if ok && t.Is("if") {
		if w := statementWords(l, 2); len(w) != 2 || !w[0].Is("not") || !w[1].Is("exists") {
			return p, "expected IF NOT EXISTS", shape
		}
		t, ok = l.Next()
	}
	var good bool
	if p.name, good = t.Ident(); !ok || !good {
		return p, "expected the partition's name after CREATE TABLE", shape
	}
	t, ok = l.Next()
	if ok && t.IsPunct(".") {
		return p, "the partition's name must not name a schema",
			"write the bare name: greenswap creates every partition in green's schema, and finalize moves it into the app's schema"
	}
	if !ok || !t.Is("partition") {
		return p, fmt.Sprintf("%s is not a partition: expected PARTITION OF after its name", oneLineQuote(p.name)), shape
	}
	if t, ok = l.Next(); !ok || !t.Is("of") {
		return p, "expected PARTITION OF", shape
	}
	t, ok = l.Next()
	if p.parent, good = t.Ident(); !ok || !good {
		return p, "expected the partitioned table's name after PARTITION OF", shape
	}
	t, ok = l.Next()
	if ok && t.IsPunct(".") {
		return p, "PARTITION OF must not name a schema",
			"write PARTITION OF <the green table's name>, unqualified: it resolves to green in green's schema"
	}
	if !ok || !(t.IsPunct("(") || t.Is("for") || t.Is("default")) {
		if l.Err() != "" {
			return p, l.Err(), "close it: the statement must be complete"
		}
		return p, fmt.Sprintf("expected FOR VALUES or DEFAULT after PARTITION OF %s", oneLineQuote(p.parent)), shape
	}
	depth := 0
	prev := sqllex.Token{}
	for ; ok; t, ok = l.Next() {
		switch {
		case t.IsPunct("("):
			depth++
		case t.IsPunct(")"):
			depth--
		case t.IsPunct(";"):
			if t2, more := l.Next(); more {
				return p, fmt.Sprintf("more than one statement: %s follows the ';'", oneLineQuote(clip(t2.Text, 30))),
					"write one CREATE TABLE ... PARTITION OF statement per item of target.partitions"
			}
		case depth == 0 && prev.Is("partition") && t.Is("by"):
			p.partitioned = true
		}
		prev = t
	}
	if l.Err() != "" {
		return p, l.Err(), "close it: the statement must be complete"
	}
	return p, "", ""
}

// validatePartitions checks target.partitions: only on a partitioned
// target.ddl, each item one CREATE TABLE <bare name> PARTITION OF <green,
// or a partitioned partition listed before it>, every name once.
// Qualified names are refused because they would escape green's schema
// (PARTITION OF public.orders would attach to the live table).
func (s *Spec) validatePartitions(partitioned bool) error {
	if len(s.Target.Partitions) == 0 {
		return nil
	}
	if !partitioned {
		return s.specErr("target.partitions", "add PARTITION BY RANGE | LIST | HASH (...) to target.ddl, or remove target.partitions",
			"target.ddl is not partitioned (it has no PARTITION BY clause): there is nothing to make partitions of")
	}
	green := s.AppTable().Name
	seen := map[string]int{}
	parents := map[string]bool{green: true}
	for i, src := range s.Target.Partitions {
		f := fmt.Sprintf("target.partitions[%d]", i)
		p, msg, fix := parsePartitionStmt(src)
		if msg != "" {
			return s.specErr(f, fix, "%s", msg)
		}
		if p.name == green {
			return s.specErr(f, "give the partition its own name", "partition %s has the name of the green table", oneLineQuote(p.name))
		}
		if j, dup := seen[p.name]; dup {
			return s.specErr(f, "give each partition its own name", "partition %s is already target.partitions[%d]", oneLineQuote(p.name), j)
		}
		if !parents[p.parent] {
			if _, ok := seen[p.parent]; ok {
				return s.specErr(f, "add PARTITION BY ... to that partition to sub-partition it",
					"PARTITION OF %s: that partition is not partitioned itself", oneLineQuote(p.parent))
			}
			return s.specErr(f, fmt.Sprintf("write PARTITION OF %s (the table of target.ddl), or of a partitioned partition listed before this one", green),
				"PARTITION OF %s names another table than green", oneLineQuote(p.parent))
		}
		seen[p.name] = i
		if p.partitioned {
			parents[p.name] = true
		}
	}
	return nil
}

// checkExpression: one SQL expression, as embedded into generated SQL.
func checkExpression(expr string) (string, string) {
	l := sqllex.New(expr)
	depth, n := 0, 0
	for {
		t, ok := l.Next()
		if !ok {
			break
		}
		n++
		if t.Kind != sqllex.Punct {
			continue
		}
		switch t.Text {
		case ";":
			return "a mapping is one SQL expression, not a statement: it contains ';'", "remove the ';'"
		case "(":
			depth++
		case ")":
			depth--
			if depth < 0 {
				return "unbalanced parentheses: a ')' has no '('", "fix the parentheses"
			}
		}
	}
	switch {
	case l.Err() != "":
		return l.Err(), "close it: the expression must be complete"
	case n == 0:
		return "empty expression", "write an SQL expression, e.g. lower(email); to map to NULL write 'NULL' in quotes"
	case depth > 0:
		return "unbalanced parentheses: a '(' is not closed", "fix the parentheses"
	case l.LineComment:
		return "an SQL -- comment would swallow the generated SQL that follows", "remove the -- comment (use a # YAML comment or /* */)"
	}
	return "", ""
}

// ---------------------------------------------------------------------------
// Error helpers: every error is one line.

func newSpecError(file string, line int, field, msg, fix string) *SpecError {
	return &SpecError{File: file, Line: line, Field: showField(field), Msg: oneLine(msg), Fix: oneLine(fix)}
}

var lineBreaks = strings.NewReplacer("\r\n", `\n`, "\n", `\n`, "\r", `\r`, "\u2028", `\u2028`, "\u2029", `\u2029`, "\x85", `\x85`)

func oneLine(s string) string { return lineBreaks.Replace(s) }

// showField quotes a field path that would not print cleanly (a column
// name with a newline, say).
func showField(f string) string {
	for _, r := range f {
		if !unicode.IsPrint(r) {
			return strconv.Quote(f)
		}
	}
	return f
}

func oneLineQuote(s string) string { return strconv.Quote(clip(s, 60)) }

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
