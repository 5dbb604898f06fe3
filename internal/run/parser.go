package run

import (
	"errors"
	"math"
	"strings"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
)

// parser is LangFlow's Parser (ParserComponent; "parser" in older exports):
// it turns the Data or DataFrame on input_data into one text, its
// "parsed_text" Message. In mode "Parser" (the default) each row is written
// through the template pattern with Python's str.format and the rows are
// joined by sep (default a line break): a DataFrame's row must have every
// field the template names (a missing column is an error, an empty cell
// "nan"), a Data's missing field is "". In mode "Stringify" the input is
// written as LangFlow's safe_convert writes it (a Data as a JSON code block,
// a DataFrame as a Markdown table, cleaned when clean_data is set).
func (s *state) parser(n *flow.Node) error {
	t, err := s.parserInput(n)
	if err != nil {
		return err
	}
	var text string
	if s.param(n, "mode").String() == "Stringify" {
		clean, _ := s.param(n, "clean_data").Bool()
		text = t.String(clean)
	} else {
		text, err = parseRows(t, s.parserPattern(n), s.parserSep(n))
		if err != nil {
			field := "pattern"
			if s.param(n, "pattern").Value == nil && s.param(n, "format").Value != nil {
				field = "format"
			}
			return errs.Field(errs.Unprocessable, "nodes."+n.ID+"."+field, "node %s (Parser): %v", n.ID, err)
		}
	}
	s.setOut(n.ID, "parsed_text", value{text: text})
	return nil
}

// parseRows writes each row through the template and joins them.
func parseRows(t *table, pattern, sep string) (string, error) {
	cols := t.columns()
	lines := make([]string, 0, len(t.rows))
	for _, r := range t.rows {
		lookup := func(name string) (any, bool) {
			if v, ok := r.get(name); ok {
				return v, true
			}
			if t.kind != dataFrame {
				return "", true // Data: a missing key is ""
			}
			for _, c := range cols {
				if c == name {
					return math.NaN(), true // a cell this row lacks
				}
			}
			return nil, false
		}
		line, err := pyFormat(pattern, lookup)
		if err != nil {
			var mk *missingKey
			if errors.As(err, &mk) {
				return "", formatErrorf("the template names {%s}, which is not a column of the table (its columns: %s)", mk.name, strings.Join(cols, ", "))
			}
			return "", err
		}
		lines = append(lines, line)
	}
	return strings.Join(lines, sep), nil
}

// parserInput is what arrives on input_data: an edge's Data or DataFrame,
// else a tweak holding a Data as LangFlow's API takes one ({"data": {…}}).
func (s *state) parserInput(n *flow.Node) (*table, error) {
	if v, ok := s.in(n, "input_data"); ok {
		return asTable(v), nil
	}
	if m, ok := s.param(n, "input_data").Value.(map[string]any); ok {
		if d, ok := m["data"].(map[string]any); ok {
			r := rowFromMap(d)
			if text, ok := m["text"]; ok {
				r = append(row{{"text", text}}, r.without("text")...)
			}
			return &table{kind: oneData, rows: []row{r}}, nil
		}
	}
	return nil, errs.Field(errs.Unprocessable, "nodes."+n.ID+".input_data",
		"node %s (Parser): input_data needs a Data or a DataFrame: connect one, or pass the tweak {\"data\": {…}}", n.ID)
}

// parserPattern is the template: "pattern", or "format" in the oldest
// exports; "Text: {text}" when the node sets neither.
func (s *state) parserPattern(n *flow.Node) string {
	if _, ok := s.in(n, "pattern"); ok {
		return s.text(n, "pattern")
	}
	for _, name := range []string{"pattern", "format"} {
		if p := s.param(n, name); p.Value != nil {
			return p.String()
		}
	}
	return "Text: {text}"
}

// parserSep is the separator between rows: a line break unless set.
func (s *state) parserSep(n *flow.Node) string {
	if _, ok := s.in(n, "sep"); ok {
		return s.text(n, "sep")
	}
	if p := s.param(n, "sep"); p.Value != nil {
		return p.String()
	}
	return "\n"
}
