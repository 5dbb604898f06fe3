package run

import (
	"strings"
	"unicode/utf8"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
)

// splitText is LangFlow's SplitText (SplitTextComponent): it cuts the text
// of each Data, DataFrame row or Message on data_inputs into chunks of at
// most chunk_size characters (default 1000) that overlap by up to
// chunk_overlap (default 200), as LangChain's splitters cut them, and
// gives them as "chunks" (a list of Data) and "dataframe" (a DataFrame):
// each chunk's row is its text (under text_key, default "text") followed
// by the fields of the row it came from, or the text alone when
// clean_output is set.
//
// mode "Recursive" is LangChain's RecursiveCharacterTextSplitter (on
// "\n\n", then "\n", " ", "", or recursive_separators; separators kept at
// the start of the piece after them); any other mode, and exports without
// one, are its CharacterTextSplitter on separator (default "\n"; "Custom"
// means custom_separator; "/n", "/n/n", "/t", `" "` and `""` are LangFlow's
// spellings of line breaks, tab, space and every character), which puts
// the separator back between the pieces it merges unless keep_separator
// keeps it on them. keep_separator "True" and "Start" keep it at the start
// of a piece, "End" too: LangFlow hands LangChain the capitalised name,
// which LangChain compares with "end", and Sluice cuts as LangFlow does.
// Lengths count characters (Python's len), not bytes.
func (s *state) splitText(n *flow.Node) error {
	fail := func(field, format string, args ...any) error {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+"."+field, "node %s (SplitText): "+format, append([]any{n.ID}, args...)...)
	}
	sp := textSplitter{size: 1000, overlap: 200}
	if v, ok := s.param(n, "chunk_size").Int(); ok {
		sp.size = v
	}
	if v, ok := s.param(n, "chunk_overlap").Int(); ok {
		sp.overlap = v
	}
	switch {
	case sp.size <= 0:
		return fail("chunk_size", "chunk_size must be more than 0, not %d", sp.size)
	case sp.overlap < 0:
		return fail("chunk_overlap", "chunk_overlap must be 0 or more, not %d", sp.overlap)
	case sp.overlap > sp.size:
		return fail("chunk_overlap", "chunk_overlap %d is larger than chunk_size %d; it must be smaller", sp.overlap, sp.size)
	}
	textKey := s.text(n, "text_key")
	if textKey == "" {
		textKey = "text"
	}
	docs, err := s.splitInputs(n, textKey)
	if err != nil {
		return err
	}
	recursive := s.param(n, "mode").String() == "Recursive"
	var seps []string
	var sep string
	if recursive {
		sp.keep = "start" // RecursiveCharacterTextSplitter's default
		seps = []string{"\n\n", "\n", " ", ""}
		if on, _ := s.param(n, "recursive_separators_bool").Bool(); on {
			if list := s.param(n, "recursive_separators").Strings(); len(list) > 0 {
				seps = seps[:0]
				for _, e := range list {
					seps = append(seps, unescapeSeparator(e))
				}
			}
		}
	} else {
		if k := strings.ToLower(s.param(n, "keep_separator").String()); k != "" && k != "false" {
			sp.keep = "start" // "True", "Start", and "End" too (see above)
		}
		sep = "\n"
		if p := s.param(n, "separator"); p.Value != nil {
			sep = p.String()
		}
		if _, ok := s.in(n, "separator"); ok {
			sep = s.text(n, "separator")
		}
		if sep == "Custom" {
			sep = s.text(n, "custom_separator")
		}
		sep = unescapeSeparator(fixSeparator(sep))
	}
	clean, _ := s.param(n, "clean_output").Bool()
	var rows []row
	for _, d := range docs {
		var chunks []string
		if recursive {
			chunks = sp.recursive(d.text, seps)
		} else {
			chunks = sp.character(d.text, sep)
		}
		for _, c := range chunks {
			r := row{{textKey, c}}
			if !clean {
				r = append(r, d.meta...)
			}
			rows = append(rows, r)
		}
	}
	s.setOut(n.ID, "chunks", dataValue(&table{kind: dataList, rows: rows}))
	s.setOut(n.ID, "dataframe", dataValue(&table{kind: dataFrame, rows: rows}))
	return nil
}

// document is a text to split with the fields that go with each of its
// chunks (LangChain's Document: page_content and metadata).
type document struct {
	text string
	meta row
}

// splitInputs turns what arrives on data_inputs into documents: each Data,
// list item or DataFrame row, its text the field textKey (Python's str()
// of it; "None" when the row lacks it, as in LangFlow).
func (s *state) splitInputs(n *flow.Node, textKey string) ([]document, error) {
	vs := s.inputs[n.ID]["data_inputs"]
	if len(vs) == 0 {
		if p := s.param(n, "data_inputs"); !p.Empty() {
			if m, ok := p.Value.(map[string]any); ok {
				if d, ok := m["data"].(map[string]any); ok {
					vs = []value{{data: &table{kind: oneData, rows: []row{rowFromMap(d)}}}}
				}
			} else {
				vs = []value{{text: p.String()}}
			}
		}
	}
	if len(vs) == 0 {
		return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID+".data_inputs", "node %s (SplitText): no data inputs provided", n.ID)
	}
	var docs []document
	for _, v := range vs {
		t := asTable(v)
		if t.kind == dataFrame && len(t.rows) == 0 {
			return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID+".data_inputs", "node %s (SplitText): the DataFrame is empty", n.ID)
		}
		for _, r := range t.rows {
			text := "None"
			if v, ok := r.get(textKey); ok {
				text = pyStr(v)
			}
			docs = append(docs, document{text: text, meta: r.without(textKey)})
		}
	}
	return docs, nil
}

// fixSeparator maps LangFlow's spellings of separators to the separators.
func fixSeparator(sep string) string {
	switch sep {
	case "/n/n":
		return "\n\n"
	case "/n":
		return "\n"
	case "/t":
		return "\t"
	case `" "`:
		return " "
	case `""`:
		return ""
	}
	return sep
}

// unescapeSeparator is LangFlow's unescape_string: a written \n is a line
// break.
func unescapeSeparator(sep string) string { return strings.ReplaceAll(sep, `\n`, "\n") }

// textSplitter is LangChain's TextSplitter with length_function len and
// strip_whitespace on, as LangFlow builds it.
type textSplitter struct {
	size, overlap int
	keep          string // "" (drop separators), "start" or "end"
}

func length(s string) int { return utf8.RuneCountInString(s) }

// character is CharacterTextSplitter.split_text: split on sep, then merge.
func (sp textSplitter) character(text, sep string) []string {
	merge := sep
	if sp.keep != "" {
		merge = ""
	}
	return sp.merge(splitKeeping(text, sep, sp.keep), merge)
}

// recursive is RecursiveCharacterTextSplitter._split_text: split on the
// first separator the text has, merge the pieces shorter than a chunk, and
// split the longer ones again on the separators after it.
func (sp textSplitter) recursive(text string, seps []string) []string {
	sep := seps[len(seps)-1]
	var rest []string
	for i, s := range seps {
		if s == "" {
			sep = s
			break
		}
		if strings.Contains(text, s) {
			sep, rest = s, seps[i+1:]
			break
		}
	}
	merge := sep
	if sp.keep != "" {
		merge = ""
	}
	var out, good []string
	for _, piece := range splitKeeping(text, sep, sp.keep) {
		if length(piece) < sp.size {
			good = append(good, piece)
			continue
		}
		if len(good) > 0 {
			out = append(out, sp.merge(good, merge)...)
			good = nil
		}
		if len(rest) == 0 {
			out = append(out, piece)
		} else {
			out = append(out, sp.recursive(piece, rest)...)
		}
	}
	if len(good) > 0 {
		out = append(out, sp.merge(good, merge)...)
	}
	return out
}

// splitKeeping is LangChain's _split_text_with_regex on a literal
// separator: the pieces between separators, the separator kept at the
// start or end of a piece when keep says so, empty pieces dropped; an
// empty separator splits into characters.
func splitKeeping(text, sep, keep string) []string {
	var pieces []string
	switch {
	case sep == "":
		for _, r := range text {
			pieces = append(pieces, string(r))
		}
	case keep == "":
		pieces = strings.Split(text, sep)
	default:
		parts := strings.Split(text, sep)
		if keep == "end" {
			for _, p := range parts[:len(parts)-1] {
				pieces = append(pieces, p+sep)
			}
			pieces = append(pieces, parts[len(parts)-1])
		} else {
			pieces = append(pieces, parts[0])
			for _, p := range parts[1:] {
				pieces = append(pieces, sep+p)
			}
		}
	}
	out := pieces[:0]
	for _, p := range pieces {
		if p != "" {
			out = append(out, p)
		}
	}
	return out
}

// merge is TextSplitter._merge_splits: pieces joined by sep into chunks of
// at most size characters (a single longer piece stays whole), each chunk
// starting with as much of the previous one's end as fits in overlap.
func (sp textSplitter) merge(pieces []string, sep string) []string {
	sepLen := length(sep)
	var docs, cur []string
	total := 0
	join := func() {
		if t := strings.TrimSpace(strings.Join(cur, sep)); t != "" {
			docs = append(docs, t)
		}
	}
	for _, d := range pieces {
		n := length(d)
		extra := 0
		if len(cur) > 0 {
			extra = sepLen
		}
		if total+n+extra > sp.size && len(cur) > 0 {
			join()
			for total > sp.overlap || (total+n+sepLenIf(len(cur) > 0, sepLen) > sp.size && total > 0) {
				total -= length(cur[0]) + sepLenIf(len(cur) > 1, sepLen)
				cur = cur[1:]
			}
		}
		cur = append(cur, d)
		total += n + sepLenIf(len(cur) > 1, sepLen)
	}
	join()
	return docs
}

func sepLenIf(cond bool, n int) int {
	if cond {
		return n
	}
	return 0
}
