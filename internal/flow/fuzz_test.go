package flow_test

import (
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
)

// brokenFlows seed the fuzzer with near misses.
var brokenFlows = []string{
	``,
	`null`,
	`{"nodes":`,
	`{"nodes":{}}`,
	`{"data":{"nodes":[7,"x",null]}}`,
	`{"nodes":[{"id":"a","type":"Frobnicator"}],"edges":[{"source":"a","target":"b"}]}`,
	`{"nodes":[{"id":"a","type":"Prompt","data":{"template":"{x"}},{"id":"a","type":"Prompt"}]}`,
	`{"nodes":[{"id":"a","type":"Prompt","data":{"template":"a"}}],"edges":[{"source":"a","target":"a","targetHandle":"tool_placeholder"}]}`,
	`{"nodes":[{"id":"c","type":"LLMChain","data":{"prompt":"c","llm":["c"],"memory":{"x":1}}}]}`,
	`{"nodes":[{"id":"a","type":"Agent","data":{"tools":["a","b",3]}}],"edges":[{"source":1.5,"target":"a","sourceHandle":"a|b","targetHandle":"x|y|z|w"}]}`,
	`{"data":{"nodes":[{"id":"A","type":"genericNode","data":{"type":"TextInput","node":{"template":{"_type":"Component","x":5},"outputs":[3,{"name":7}]}}}],"edges":[{"data":{"sourceHandle":{},"targetHandle":"s"}}]}}`,
}

// parsed are the keys of a LangFlow export that Parse reads.
var parsed = map[string]bool{
	"name": true, "data": true, "nodes": true, "edges": true, "id": true, "type": true, "node": true,
	"template": true, "value": true, "load_from_db": true, "show": true, "advanced": true, "password": true,
	"outputs": true, "tool_mode": true, "edited": true, "source": true, "target": true,
	"sourceHandle": true, "targetHandle": true, "fieldName": true,
}

// slim keeps only what Parse reads from an export, and of long texts only
// their braces and what is inside them, so prompt variables survive. The
// fuzzer minimises every new interesting input, one re-parse per byte
// removed: mutants of 70-150 KB exports would spend a whole run there.
func slim(t testing.TB, data []byte) []byte {
	t.Helper()
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	var walk func(v any, fields bool) any
	walk = func(v any, fields bool) any {
		switch t := v.(type) {
		case map[string]any:
			out := map[string]any{}
			for k, x := range t {
				// A template's keys are its field names: keep them all but
				// the Python source.
				if s, ok := x.(string); fields && k != "code" || parsed[k] && !(ok && strings.ContainsAny(s, "œ")) {
					out[k] = walk(x, k == "template" && !fields)
				}
			}
			return out
		case []any:
			for i := range t {
				t[i] = walk(t[i], false)
			}
		case string:
			if len(t) > 80 {
				var b strings.Builder
				depth := 0
				for _, r := range t {
					switch {
					case r == '{':
						depth++
					case r == '}':
						depth--
					case depth <= 0:
						continue
					}
					b.WriteRune(r)
				}
				return "long text " + b.String()
			}
		}
		return v
	}
	out, err := json.Marshal(walk(v, false))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// fuzzing reports whether the test binary runs a fuzz target (-test.fuzz).
func fuzzing() bool {
	fl := flag.Lookup("test.fuzz")
	return fl != nil && fl.Value.String() != ""
}

func FuzzParse(f *testing.F) {
	var seeds []string
	for _, pattern := range []string{"*.json", "v1.0/*.json"} {
		m, _ := filepath.Glob(filepath.Join(sharedDir, pattern))
		seeds = append(seeds, m...)
	}
	if len(seeds) == 0 {
		f.Fatalf("no shared LangFlow exports in %s (expected /work/shared/langflow beside the repository checkout)", sharedDir)
	}
	for _, p := range seeds {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(slim(f, data))
		if !fuzzing() {
			f.Add(data) // checked as is, but too big to mutate well
		}
	}
	fixtures, _ := filepath.Glob("testdata/*.json")
	for _, p := range fixtures {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range brokenFlows {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fl, err := flow.Parse(data)
		if err != nil {
			if fl != nil {
				t.Fatalf("Parse returned a flow and an error")
			}
			var ve *flow.ValidationError
			if !errors.As(err, &ve) || len(ve.Problems) == 0 {
				t.Fatalf("Parse error %v (%T) is not a *ValidationError with problems", err, err)
			}
			if c := errs.CodeOf(err); c != errs.Unprocessable && c != errs.TooLarge {
				t.Fatalf("errs.CodeOf = %q", c)
			}
			for _, p := range ve.Problems {
				if p.Kind == "" || p.Message == "" {
					t.Fatalf("problem without kind or message: %+v", p)
				}
			}
			return
		}
		order, err := flow.Order(fl)
		if err != nil {
			t.Fatalf("accepted flow does not order: %v", err)
		}
		if len(order) != len(fl.Nodes) {
			t.Fatalf("Order has %d nodes, flow %d", len(order), len(fl.Nodes))
		}
		pos := map[string]int{}
		for i, n := range order {
			pos[n.ID] = i
			if n.Component() == nil {
				t.Fatalf("accepted node %q of unknown type %q", n.ID, n.Type)
			}
		}
		for _, e := range fl.Edges {
			if pos[e.Source] >= pos[e.Target] {
				t.Fatalf("Order puts %s after %s", e.Source, e.Target)
			}
		}
		if err := flow.Validate(fl); err != nil {
			t.Fatalf("accepted flow fails Validate again: %v", err)
		}
		again, err := flow.Parse(data)
		if err != nil || !slices.Equal(edgeStrings(again), edgeStrings(fl)) {
			t.Fatalf("Parse is not deterministic: %v", err)
		}
	})
}

func FuzzVariables(f *testing.F) {
	for _, s := range []string{
		"", "plain", "{a}", "{{a}}", "{{{a}}}", "请解释以下术语：{term}", "{术语}", "{a", "a}", "{}", "{0}",
		"{a.b}", "{a:>3}", "{ a }", "}}{{", "{a}{b}{a}", "\xff{a}\xfe", "{a{b}}", "{\u0301}", "{_}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tmpl string) {
		vars, err := flow.Variables(tmpl)
		if err != nil {
			var te *flow.TemplateError
			if !errors.As(err, &te) || te.Offset < 0 || te.Offset >= len(tmpl) || (tmpl[te.Offset] != '{' && tmpl[te.Offset] != '}') {
				t.Fatalf("Variables(%q) error %v does not point at a brace", tmpl, err)
			}
			if _, rerr := flow.Render(tmpl, nil); rerr == nil {
				t.Fatalf("Render(%q) succeeded where Variables failed", tmpl)
			}
		} else {
			values := map[string]string{}
			for _, v := range vars {
				if v == "" || values[v] != "" {
					t.Fatalf("Variables(%q) = %q: empty or repeated name", tmpl, vars)
				}
				values[v] = "<" + v + ">"
			}
			if _, err := flow.Render(tmpl, values); err != nil {
				t.Fatalf("Render(%q) with every variable: %v", tmpl, err)
			}
		}
		// Escaping round-trips any text, braces included.
		esc := flow.Escape(tmpl)
		if vs, err := flow.Variables(esc); err != nil || len(vs) != 0 {
			t.Fatalf("Variables(Escape(%q)) = %q, %v", tmpl, vs, err)
		}
		if got, err := flow.Render(esc, nil); err != nil || got != tmpl {
			t.Fatalf("Render(Escape(%q)) = %q, %v", tmpl, got, err)
		}
	})
}

func FuzzRender(f *testing.F) {
	f.Add("请解释以下术语：{term}", "熵")
	f.Add("{a} {{b}} {a}", "{x}")
	f.Add("{{{a}}}", "}}")
	f.Add("no vars", "")
	f.Add("{a", "v")
	f.Fuzz(func(t *testing.T, tmpl, value string) {
		vars, err := flow.Variables(tmpl)
		if err != nil {
			return
		}
		values := map[string]string{}
		for _, v := range vars {
			values[v] = value
		}
		out, err := flow.Render(tmpl, values)
		if err != nil {
			t.Fatalf("Render(%q) with every variable: %v", tmpl, err)
		}
		// Rendering with empty values, then substituting by hand, agrees.
		blank := map[string]string{}
		for _, v := range vars {
			blank[v] = ""
		}
		empty, err := flow.Render(tmpl, blank)
		if err != nil {
			t.Fatal(err)
		}
		if len(out) != len(empty)+len(value)*countFields(t, tmpl) {
			t.Fatalf("Render(%q, %q) = %q: length %d, want %d", tmpl, value, out, len(out), len(empty)+len(value)*countFields(t, tmpl))
		}
		if len(vars) > 0 {
			delete(values, vars[0])
			_, err := flow.Render(tmpl, values)
			var te *flow.TemplateError
			if !errors.As(err, &te) || te.Var != vars[0] {
				t.Fatalf("Render(%q) without %q: %v, want a missing-variable error", tmpl, vars[0], err)
			}
		}
		if got, err := flow.Render(flow.Escape(value), nil); err != nil || got != value {
			t.Fatalf("Render(Escape(%q)) = %q, %v", value, got, err)
		}
	})
}

// countFields counts variable occurrences by rendering each as one byte.
func countFields(t *testing.T, tmpl string) int {
	t.Helper()
	vars, _ := flow.Variables(tmpl)
	one := map[string]string{}
	for _, v := range vars {
		one[v] = "\x00"
	}
	out, err := flow.Render(strings.ReplaceAll(tmpl, "\x00", ""), one)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(out, "\x00")
}

// The slimmed seeds must still be the same flows, or FuzzParse would start
// from rejected input.
func TestSlimSeedsParseAlike(t *testing.T) {
	for _, name := range []string{"basic-prompting.json", "memory-chatbot.json", "basic-prompt-chaining.json", "document-qa.json",
		"simple-agent.json", "seo-keyword-generator.json", "twitter-thread-generator.json", "v1.0/basic-prompting.json", "v1.0/memory-chatbot.json"} {
		full := readShared(t, name)
		small := slim(t, full)
		a, b := parseFile(t, full), parseFile(t, small)
		if !slices.Equal(edgeStrings(a), edgeStrings(b)) || len(a.Nodes) != len(b.Nodes) {
			t.Errorf("%s: slimmed export parses differently", name)
		}
		if len(small) > 12_000 {
			t.Errorf("%s: slimmed to %d bytes, want under 12 kB", name, len(small))
		}
		for _, n := range a.Nodes {
			va, _ := n.PromptVariables()
			vb, _ := b.Node(n.ID).PromptVariables()
			if !slices.Equal(va, vb) {
				t.Errorf("%s: %s: slimmed variables %q, want %q", name, n.ID, vb, va)
			}
		}
		t.Logf("%s: %d bytes slimmed to %d", name, len(full), len(small))
	}
}
