package run

import (
	"testing"

	"github.com/sluicehq/sluice/internal/flow"
)

// The expected texts are what LangFlow's File (parse_text_file_to_data)
// and SaveToFile (_save_message, _save_data, _save_dataframe) produce.

func TestFileText(t *testing.T) {
	tests := []struct {
		name, ext, in, want string
		wantErr             bool
	}{
		{"text as written", "txt", "line one\n\nline two\n", "line one\n\nline two\n", false},
		{"a byte order mark is dropped", "md", "\xef\xbb\xbf# Title", "# Title", false},
		{"json is re-serialised compactly", "json", "{\n  \"a\": [1, 2],\n  \"b\": \"x y\"\n}\n", `{"a":[1,2],"b":"x y"}`, false},
		{"invalid json fails", "json", "{\"a\":", "", true},
		{"not UTF-8 fails", "txt", "caf\xe9", "", true},
		{"csv as written", "csv", "a,b\n1,2\n", "a,b\n1,2\n", false},
	}
	for _, tt := range tests {
		got, err := fileText(tt.ext, []byte(tt.in))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("%s: got %q, %v; want %q (error %t)", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestSaveContent(t *testing.T) {
	msg := value{text: "Hello, wörld"}
	one := dataValue(data(row{{"text", "hi"}, {"n", 2.0}}))
	df := dataValue(frame(row{{"name", "a,b"}, {"score", 1.5}}, row{{"name", `say "x"`}, {"score", nil}}))
	tests := []struct {
		name, kind, format string
		in                 value
		old                string
		appending          bool
		want               string
	}{
		{"message txt", "Message", "txt", msg, "", false, "Hello, wörld"},
		{"message txt appended", "Message", "txt", msg, "before", true, "before\nHello, wörld"},
		{"message json escapes non-ASCII as json.dumps", "Message", "json", msg, "", false, "{\n  \"message\": \"Hello, w\\u00f6rld\"\n}"},
		{"message json appended to an object", "Message", "json", value{text: "b"}, `{"message": "a"}`, true,
			"[\n  {\n    \"message\": \"a\"\n  },\n  {\n    \"message\": \"b\"\n  }\n]"},
		{"message markdown", "Message", "markdown", msg, "", false, "**Message:**\n\nHello, wörld"},
		{"data json keeps field order", "Data", "json", one, "", false, "{\n  \"text\": \"hi\",\n  \"n\": 2\n}"},
		{"dataframe csv quotes only when it must", "DataFrame", "csv", df, "", false, "name,score\n\"a,b\",1.5\n\"say \"\"x\"\"\",\n"},
		{"dataframe csv appended has no header", "DataFrame", "csv", df, "name,score\n", true, "name,score\n\"a,b\",1.5\n\"say \"\"x\"\"\",\n"},
		{"dataframe json records", "DataFrame", "json", dataValue(frame(row{{"a", 1.0}}, row{{"a", 2.0}})), "", false,
			"[\n  {\n    \"a\": 1\n  },\n  {\n    \"a\": 2\n  }\n]"},
		{"dataframe markdown", "DataFrame", "markdown", dataValue(frame(row{{"a", "x"}})), "", false, "| a   |\n|:----|\n| x   |"},
	}
	for _, tt := range tests {
		got, err := saveContent(tt.kind, tt.format, tt.in, []byte(tt.old), tt.appending)
		if err != nil || got != tt.want {
			t.Errorf("%s: got %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
}

func TestStorageLocation(t *testing.T) {
	for _, tt := range []struct {
		in   any
		want string
	}{
		{[]any{map[string]any{"name": "AWS", "icon": "Amazon"}}, "AWS"},
		{map[string]any{"name": "Local"}, "Local"},
		{"Google Drive", "Google Drive"},
		{nil, ""},
	} {
		if got := storageLocation(paramOf(tt.in)); got != tt.want {
			t.Errorf("storageLocation(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func paramOf(v any) flow.Param { return flow.Param{Value: v} }
