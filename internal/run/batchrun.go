package run

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/llm"
)

// batchRun is LangFlow's BatchRunComponent: one governed model call per
// row of the DataFrame on df, with system_message as the system turn and,
// as the user turn, the row's column_name cell, or the whole row as TOML
// ([column] value = "…") when no column is named. Its "batch_results" are
// the rows with the answer in output_column_name (default
// "model_response"), the row's batch_index and, with enable_metadata, a
// metadata field. The model is the LanguageModel on "model", else the one
// the node selects itself (newer exports' model list). Each row's call
// counts as a step against max_steps, so a large table cannot run
// unbounded.
func (s *state) batchRun(ctx context.Context, n *flow.Node, t *NodeTrace) error {
	modelNode := n
	if mv, ok := s.in(n, "model"); ok && mv.model != nil {
		modelNode = mv.model.node
	}
	v, ok := s.in(n, "df")
	if !ok {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+".df", "node %s (Batch Run): no DataFrame connected to df", n.ID)
	}
	in := asTable(v)
	cols := in.columns()
	col := s.text(n, "column_name")
	if col != "" && !containsString(cols, col) {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+".column_name",
			"node %s (Batch Run): column '%s' not found in the DataFrame. Available columns: %s", n.ID, col, strings.Join(cols, ", "))
	}
	outCol := s.text(n, "output_column_name")
	if outCol == "" {
		outCol = "model_response"
	}
	system := s.text(n, "system_message")
	withMeta, _ := s.param(n, "enable_metadata").Bool()

	// The rows' answers are a table, not a chat reply: no token events.
	job := *s.job
	job.OnEvent = nil
	saved := s.job
	s.job = &job
	defer func() { s.job = saved }()

	rows := make([]row, 0, len(in.rows))
	for i, r := range in.rows {
		if i > 0 { // the node's own step counted the first row
			if err := s.step(n.ID); err != nil {
				return err
			}
		}
		text := rowTOML(r)
		if col != "" {
			cell, ok := r.get(col)
			if !ok {
				cell = "nan"
			}
			text = pyStr(cell)
		}
		var msgs []llm.Message
		if system != "" {
			msgs = append(msgs, llm.Message{Role: llm.RoleSystem, Content: system})
		}
		msgs = append(msgs, llm.Message{Role: llm.RoleUser, Content: text})
		resp, err := s.complete(ctx, n, modelNode, msgs, nil, t)
		if err != nil {
			return err
		}
		out := append(row(nil), r...)
		out = out.set(outCol, resp.Text).set("batch_index", float64(i))
		if withMeta {
			out = out.set("metadata", map[string]any{
				"has_system_message": system != "",
				// LangFlow measures a "text_input" field rows do not have.
				"input_length":      0.0,
				"response_length":   float64(utf8.RuneCountInString(resp.Text)),
				"processing_status": "success",
			})
		}
		rows = append(rows, out)
	}
	s.setOut(n.ID, "batch_results", dataValue(&table{kind: dataFrame, rows: rows}))
	return nil
}

func containsString(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

var bareKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// rowTOML writes a row as LangFlow's _format_row_as_toml does with the
// toml package: a [column] table per field holding value = "str(cell)".
func rowTOML(r row) string {
	var b strings.Builder
	for i, f := range r {
		if i > 0 {
			b.WriteString("\n")
		}
		key := f.name
		if !bareKey.MatchString(key) {
			key = tomlString(key)
		}
		fmt.Fprintf(&b, "[%s]\nvalue = %s\n", key, tomlString(pyStr(f.value)))
	}
	return b.String()
}

// tomlString quotes s as a TOML basic string, escaped as the toml package
// escapes (from Python's repr: \n, \r, \t, other controls as \u00XX).
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			if r < 0x20 || r == 0x7f {
				fmt.Fprintf(&b, `\u%04x`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}
