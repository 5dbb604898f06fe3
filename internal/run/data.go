package run

import (
	"bytes"
	"encoding/json"
	"math"
	"regexp"
	"strings"
	"unicode/utf8"
)

// LangFlow passes three kinds of value between components: Message (text
// with metadata), Data (one record of named fields, whose text is its "text"
// field) and DataFrame (a table of such records). A Message travels here as
// value.text (with value.message for chat messages). Data, a list of Data
// and a DataFrame travel as value.data, and their value.text is what
// LangFlow shows for them (safe_convert: a Data as a JSON code block, a
// DataFrame as a Markdown table), so that a component reading text
// (ChatOutput, a Prompt variable) gets what LangFlow's would.

// dataKind says which of LangFlow's structured types a table is.
type dataKind int

const (
	oneData   dataKind = iota // a Data: one row
	dataList                  // a list of Data (SplitText's chunks)
	dataFrame                 // a DataFrame
)

// field is one named value of a row. Rows keep their fields in order, as
// Python dicts do: a Data prints its fields, and a DataFrame its columns, in
// the order they were made.
type field struct {
	name  string
	value any // nil, string, float64, bool, []any, map[string]any
}

// row is one Data, or one row of a DataFrame.
type row []field

// get returns the named field's value and whether the row has it.
func (r row) get(name string) (any, bool) {
	for _, f := range r {
		if f.name == name {
			return f.value, true
		}
	}
	return nil, false
}

// set sets a field, keeping its place if the row has it.
func (r row) set(name string, v any) row {
	for i := range r {
		if r[i].name == name {
			r[i].value = v
			return r
		}
	}
	return append(r, field{name, v})
}

// without returns the row less one field.
func (r row) without(name string) row {
	out := make(row, 0, len(r))
	for _, f := range r {
		if f.name != name {
			out = append(out, f)
		}
	}
	return out
}

// table is a Data, a list of Data or a DataFrame.
type table struct {
	kind dataKind
	rows []row
}

// columns are the field names of every row, in order of first appearance:
// pandas' columns for a DataFrame built from records.
func (t *table) columns() []string {
	var cols []string
	seen := map[string]bool{}
	for _, r := range t.rows {
		for _, f := range r {
			if !seen[f.name] {
				seen[f.name] = true
				cols = append(cols, f.name)
			}
		}
	}
	return cols
}

// dataValue makes the value that carries a table, its text rendered as
// LangFlow renders it.
func dataValue(t *table) value {
	return value{text: t.String(false), data: t}
}

// rowFromMap makes a row of a JSON object (a tweak's value), its fields in
// name order since a Go map keeps none.
func rowFromMap(m map[string]any) row {
	r := make(row, 0, len(m))
	for _, k := range sortedKeys(m) {
		r = append(r, field{k, m[k]})
	}
	return r
}

// asTable returns what arrives on an input as a table: the value's own
// table, else a Data holding its text (LangFlow's Message.to_data keeps the
// message's fields as well).
func asTable(v value) *table {
	if v.data != nil {
		return v.data
	}
	r := row{{"text", v.text}}
	if m := v.message; m != nil {
		r = messageRow(m)
	}
	return &table{kind: oneData, rows: []row{r}}
}

// messageRow is a chat message as a Data: its text and the fields of it
// that Sluice keeps.
func messageRow(m *Message) row {
	return row{{"text", m.Text}, {"sender", m.Sender}, {"sender_name", m.SenderName}, {"session_id", m.SessionID},
		{"timestamp", m.CreatedAt.Format("2006-01-02 15:04:05 MST")}, {"flow_id", m.FlowID}}
}

// String renders the table as LangFlow's safe_convert does: each Data as a
// ```json code block of its fields (indented by 2; a list's blocks one per
// line), a DataFrame as a Markdown table. clean is the DataFrame's
// clean_data: rows with no values dropped, blank lines inside cells
// removed.
func (t *table) String(clean bool) string {
	switch t.kind {
	case dataFrame:
		return t.markdown(clean)
	case dataList:
		parts := make([]string, len(t.rows))
		for i, r := range t.rows {
			parts[i] = dataJSON(r)
		}
		return strings.Join(parts, "\n")
	}
	if len(t.rows) == 0 {
		return dataJSON(nil)
	}
	return dataJSON(t.rows[0])
}

// dataJSON is LangFlow's _serialize_data: the fields as indented JSON in a
// Markdown code block, then clean_string.
func dataJSON(r row) string {
	var b bytes.Buffer
	b.WriteString("```json\n")
	if len(r) == 0 {
		b.WriteString("{}")
	} else {
		b.WriteString("{\n")
		for i, f := range r {
			b.WriteString("  ")
			writeJSON(&b, f.name, "  ")
			b.WriteString(": ")
			writeJSON(&b, f.value, "  ")
			if i < len(r)-1 {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		b.WriteString("}")
	}
	b.WriteString("\n```")
	return cleanString(b.String())
}

// writeJSON writes v as orjson writes it: UTF-8 unescaped, nested values
// indented below prefix.
func writeJSON(b *bytes.Buffer, v any, prefix string) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent(prefix, "  ")
	if f, ok := v.(float64); ok && (math.IsNaN(f) || math.IsInf(f, 0)) {
		v = nil // orjson writes NaN and infinities as null
	}
	if err := enc.Encode(v); err != nil {
		b.WriteString("null")
		return
	}
	b.Write(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
}

var (
	blankLines = regexp.MustCompile(`(?m)^\s*$`)
	manyBreaks = regexp.MustCompile(`\n{3,}`)
)

// cleanString is LangFlow's clean_string: whitespace-only lines emptied,
// three or more line breaks made two.
func cleanString(s string) string {
	s = blankLines.ReplaceAllString(s, "")
	return manyBreaks.ReplaceAllString(s, "\n\n")
}

var (
	crlf         = regexp.MustCompile(`\r\n?`)
	edgeBreaks   = regexp.MustCompile(`^\n+|\n+$`)
	breakRuns    = regexp.MustCompile(`\n+`)
	blankInCells = regexp.MustCompile(`^\s*$`)
)

// markdown renders a DataFrame as pandas' to_markdown(index=False) does
// after LangFlow's safe_convert has tidied its text cells: tabulate's
// "pipe" table, text columns left-aligned, number columns right-aligned on
// the decimal point, a missing cell as "nan".
func (t *table) markdown(clean bool) string {
	cols := t.columns()
	if len(cols) == 0 {
		return ""
	}
	rows := t.rows
	if clean {
		rows = make([]row, 0, len(t.rows))
		for _, r := range t.rows {
			for _, f := range r {
				if f.value != nil {
					rows = append(rows, r)
					break
				}
			}
		}
	}
	cells := make([][]string, len(cols))
	numeric := make([]bool, len(cols))
	for c, name := range cols {
		numeric[c] = len(rows) > 0
		for _, r := range rows {
			v, ok := r.get(name)
			if !ok {
				v = math.NaN()
			}
			if s, isText := v.(string); isText {
				s = crlf.ReplaceAllString(s, "\n")
				if clean {
					s = blankInCells.ReplaceAllString(s, "")
					s = breakRuns.ReplaceAllString(s, "\n")
				}
				s = edgeBreaks.ReplaceAllString(s, "")
				s = strings.ReplaceAll(s, "\n", "<br/>")
				v = strings.ReplaceAll(s, "|", `\|`)
			}
			if _, isNum := v.(float64); !isNum {
				numeric[c] = false
			}
			cells[c] = append(cells[c], tableCell(v))
		}
	}
	widths := make([]int, len(cols))
	for c, name := range cols {
		if numeric[c] {
			alignDecimal(cells[c])
		}
		widths[c] = utf8.RuneCountInString(name) + 2 // tabulate's MIN_PADDING
		for _, s := range cells[c] {
			widths[c] = max(widths[c], utf8.RuneCountInString(s))
		}
	}
	pad := func(s string, c int) string {
		n := widths[c] - utf8.RuneCountInString(s)
		if numeric[c] {
			return strings.Repeat(" ", n) + s
		}
		return s + strings.Repeat(" ", n)
	}
	var b strings.Builder
	line := func(cell func(c int) string) {
		b.WriteString("|")
		for c := range cols {
			b.WriteString(" " + cell(c) + " |")
		}
	}
	line(func(c int) string { return pad(cols[c], c) })
	b.WriteString("\n|")
	for c := range cols {
		if numeric[c] {
			b.WriteString(strings.Repeat("-", widths[c]+1) + ":|")
		} else {
			b.WriteString(":" + strings.Repeat("-", widths[c]+1) + "|")
		}
	}
	for i := range rows {
		b.WriteString("\n")
		line(func(c int) string { return pad(cells[c][i], c) })
	}
	return b.String()
}

// tableCell is how tabulate writes a cell: numbers in Python's "g" format,
// None as nothing.
func tableCell(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case float64:
		if v == math.Trunc(v) && math.Abs(v) < 1e15 {
			return pyStr(v)
		}
		return pyFormatFloat(v, 'g', 6, false)
	}
	return pyStr(v)
}

// alignDecimal pads numbers on the right so that their decimal points line
// up once right-aligned (tabulate's numalign="decimal").
func alignDecimal(cells []string) {
	after := func(s string) int {
		if i := strings.LastIndexByte(s, '.'); i >= 0 && !strings.ContainsAny(s, "en") {
			return len(s) - i - 1
		}
		return -1
	}
	most := -1
	for _, s := range cells {
		most = max(most, after(s))
	}
	for i, s := range cells {
		cells[i] = s + strings.Repeat(" ", most-after(s))
	}
}

// rowMap is a row as a JSON object (a Data's data).
func rowMap(r row) map[string]any {
	m := make(map[string]any, len(r))
	for _, f := range r {
		m[f.name] = f.value
	}
	return m
}
