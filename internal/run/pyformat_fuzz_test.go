package run

import (
	"strings"
	"testing"
)

// FuzzPyFormat: any template either renders or is refused with an error;
// it never panics, and a template without braces renders as itself.
func FuzzPyFormat(f *testing.F) {
	for _, seed := range []string{"Text: {text}", "{n:>08.3f}", "{tags[1]}{meta[k]!r:^9}", "{{x}}", "{", "}", "{a.b}", "{0}", "{x:,}", "{x:%}", "{text:é>5}", "{text[0]}"} {
		f.Add(seed)
	}
	values := map[string]any{"text": "héllo", "n": -3.5, "x": 1234567.0, "tags": []any{"a", 2.0}, "meta": map[string]any{"k": nil}, "b": true}
	f.Fuzz(func(t *testing.T, pattern string) {
		got, err := pyFormat(pattern, func(name string) (any, bool) {
			v, ok := values[name]
			return v, ok
		})
		if !strings.ContainsAny(pattern, "{}") && (err != nil || got != pattern) {
			t.Errorf("pyFormat(%q) = %q, %v; want the text unchanged", pattern, got, err)
		}
	})
}
