package run

import (
	"testing"
)

// The expected texts below are what LangFlow's Parser (Python str.format,
// pandas' to_markdown) gives for the same input.

func frame(rows ...row) *table { return &table{kind: dataFrame, rows: rows} }
func data(r row) *table        { return &table{kind: oneData, rows: []row{r}} }

func TestParseRows(t *testing.T) {
	hello := row{{"text", "hello"}, {"n", 3.0}, {"tags", []any{"a", "b"}}, {"meta", map[string]any{"k": "v"}}}
	scores := frame(row{{"text", "a"}, {"score", 1.5}}, row{{"text", "b"}})
	tests := []struct {
		name    string
		in      *table
		pattern string
		sep     string
		want    string
		wantErr bool
	}{
		{"data fields", data(hello), "Text: {text} ({n})", "\n", "Text: hello (3)", false},
		{"data: a missing field is empty", data(hello), "{text}|{missing}|", "\n", "hello||", false},
		{"data: index and key", data(hello), "{tags[1]}-{meta[k]}", "\n", "b-v", false},
		{"data: a list prints as Python's", data(hello), "{tags}", "\n", "['a', 'b']", false},
		{"repr conversion", data(hello), "{text!r}", "\n", "'hello'", false},
		{"format spec", data(row{{"x", "ab"}, {"y", -3.14159}, {"z", 1234567.0}}), "{x:^7}|{x:*<4}|{y:08.3f}|{z:,}", "\n", "  ab   |ab**|-003.142|1,234,567", false},
		{"literal braces", data(hello), "{{text}} is {text}", "\n", "{text} is hello", false},
		{"frame: one line per row, sep between", scores, "{text}={score}", " ; ", "a=1.5 ; b=nan", false},
		{"frame: a missing column is an error", scores, "{text} {nope}", "\n", "", true},
		{"list of data", &table{kind: dataList, rows: []row{{{"text", "one"}}, {{"text", "two"}}}}, "- {text}", "\n", "- one\n- two", false},
		{"positional field", data(hello), "{}", "\n", "", true},
		{"unclosed field", data(hello), "{text", "\n", "", true},
		{"lone closing brace", data(hello), "a } b", "\n", "", true},
		{"attribute access", data(hello), "{meta.k}", "\n", "", true},
		{"spec on a list", data(hello), "{tags:>5}", "\n", "", true},
		{"width beyond the limit", data(hello), "{text:>100000000}", "\n", "", true},
		{"precision beyond the limit", data(row{{"x", 1.5}}), "{x:.99999999999999999999f}", "\n", "", true},
		{"whole numbers print as ints", data(row{{"n", 2.0}, {"f", 0.1}, {"b", true}, {"z", nil}}), "{n} {f} {b} {z}", "\n", "2 0.1 True None", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseRows(tt.in, tt.pattern, tt.sep)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseRows: got error %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseRows: got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTableString(t *testing.T) {
	tests := []struct {
		name  string
		in    *table
		clean bool
		want  string
	}{
		{"data as a JSON code block", data(row{{"text", "héllo <b>"}, {"n", 3.0}, {"list", []any{1.0, "x"}}}), false,
			"```json\n{\n  \"text\": \"héllo <b>\",\n  \"n\": 3,\n  \"list\": [\n    1,\n    \"x\"\n  ]\n}\n```"},
		{"empty data", data(nil), false, "```json\n{}\n```"},
		{"list of data: one block a line", &table{kind: dataList, rows: []row{{{"text", "a"}}, {{"text", "b"}}}}, false,
			"```json\n{\n  \"text\": \"a\"\n}\n```\n```json\n{\n  \"text\": \"b\"\n}\n```"},
		{"frame as a Markdown table", frame(row{{"text", "a"}, {"score", 1.5}}, row{{"text", "bb"}, {"score", 22.0}}), false,
			"| text   |   score |\n|:-------|--------:|\n| a      |     1.5 |\n| bb     |    22   |"},
		{"frame: missing cell, pipes and line breaks", frame(row{{"text", "x|y\r\nz\n"}, {"k", "v"}}, row{{"text", "w"}}), false,
			"| text       | k   |\n|:-----------|:----|\n| x\\|y<br/>z | v   |\n| w          | nan |"},
		{"frame cleaned: blank rows dropped, line runs made one", frame(row{{"text", "a\n\n\nb"}}, row{{"text", nil}}), true,
			"| text    |\n|:--------|\n| a<br/>b |"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.in.String(tt.clean); got != tt.want {
				t.Errorf("String:\ngot\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}
