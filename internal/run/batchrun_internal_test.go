package run

import "testing"

// The expected texts are what LangFlow's _format_row_as_toml gives: the
// toml package's dumps of {column: {"value": str(cell)}}.
func TestRowTOML(t *testing.T) {
	tests := []struct {
		in   row
		want string
	}{
		{row{{"text", "hello"}}, "[text]\nvalue = \"hello\"\n"},
		{row{{"text", "a \"b\"\nc\\d"}, {"score", 1.5}, {"n", 2.0}, {"ok", true}, {"none", nil}},
			"[text]\nvalue = \"a \\\"b\\\"\\nc\\\\d\"\n\n[score]\nvalue = \"1.5\"\n\n[n]\nvalue = \"2\"\n\n[ok]\nvalue = \"True\"\n\n[none]\nvalue = \"None\"\n"},
		{row{{"file path", "é\x08"}}, "[\"file path\"]\nvalue = \"é\\u0008\"\n"},
	}
	for _, tt := range tests {
		if got := rowTOML(tt.in); got != tt.want {
			t.Errorf("rowTOML(%v):\ngot  %q\nwant %q", tt.in, got, tt.want)
		}
	}
}
