package flow_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
)

// problemsOf returns the problems in err, failing unless err is a
// *ValidationError.
func problemsOf(t *testing.T, err error) []flow.Problem {
	t.Helper()
	var ve *flow.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v (%T) is not a *flow.ValidationError", err, err)
	}
	return ve.Problems
}

func findProblem(ps []flow.Problem, kind flow.ProblemKind, node, field string) (flow.Problem, bool) {
	for _, p := range ps {
		if p.Kind == kind && p.NodeID == node && p.Field == field {
			return p, true
		}
	}
	return flow.Problem{}, false
}

func manyNodes(n int) string {
	var b strings.Builder
	b.WriteString(`{"nodes":[`)
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"id":"t%d","type":"TextInput"}`, i)
	}
	b.WriteString(`]}`)
	return b.String()
}

func TestValidationProblems(t *testing.T) {
	tests := []struct {
		name  string
		json  string
		kind  flow.ProblemKind
		node  string
		field string
		code  errs.Code // default Unprocessable
		msg   string    // substring of the message, when it matters
	}{
		{
			name: "unknown component type",
			json: `{"nodes":[{"id":"x","type":"Frobnicator"}]}`,
			kind: flow.UnknownComponent, node: "x", field: "type", msg: `"Frobnicator"`,
		},
		{
			name: "vendor component",
			json: `{"nodes":[{"id":"yt","type":"YouTubeTranscripts"},{"id":"out","type":"ChatOutput"}],"edges":[{"source":"yt","target":"out","targetHandle":"input_value"}]}`,
			kind: flow.VendorComponent, node: "yt", field: "type", msg: "calls YouTube, an outside service Sluice does not run natively; run flows that use it through the LangFlow front (see docs/langflow-front.md)",
		},
		{
			name: "vendor tool of an agent",
			json: `{"nodes":[{"id":"q","type":"AgentQL"},{"id":"a","type":"Agent"}],"edges":[{"source":"q","sourceHandle":"component_as_tool","target":"a","targetHandle":"tools"}]}`,
			kind: flow.VendorComponent, node: "q", field: "type", msg: "AgentQL",
		},
		{
			name: "node without a type",
			json: `{"nodes":[{"id":"x","data":{}}]}`,
			kind: flow.UnknownComponent, node: "x", field: "type",
		},
		{
			name: "missing required input",
			json: `{"nodes":[{"id":"out","type":"ChatOutput"}]}`,
			kind: flow.MissingInput, node: "out", field: "input_value",
		},
		{
			name: "missing required edge-only input",
			json: `{"nodes":[{"id":"p","type":"PromptTemplate","data":{"template":"hi"}},{"id":"c","type":"LLMChain","data":{"prompt":"p"}}]}`,
			kind: flow.MissingInput, node: "c", field: "llm",
		},
		{
			name: "required value empty",
			json: `{"nodes":[{"id":"p","type":"Prompt","data":{"template":""}},{"id":"out","type":"ChatOutput"}],"edges":[{"source":"p","target":"out"}]}`,
			kind: flow.MissingInput, node: "p", field: "template",
		},
		{
			name: "dangling edge target",
			json: `{"nodes":[{"id":"in","type":"ChatInput"}],"edges":[{"source":"in","target":"ghost","targetHandle":"input_value"}]}`,
			kind: flow.DanglingEdge, node: "ghost", field: "input_value",
		},
		{
			name: "dangling edge source",
			json: `{"nodes":[{"id":"out","type":"ChatOutput"}],"edges":[{"source":"ghost","sourceHandle":"message","target":"out"}]}`,
			kind: flow.DanglingEdge, node: "ghost", field: "message",
		},
		{
			name: "dangling reference",
			json: `{"nodes":[{"id":"p","type":"PromptTemplate","data":{"template":"hi"}},{"id":"c","type":"LLMChain","data":{"prompt":"p","llm":"nope"}}]}`,
			kind: flow.DanglingEdge, node: "nope", field: "",
		},
		{
			name: "edge without a source",
			json: `{"nodes":[{"id":"out","type":"ChatOutput","data":{"input_value":"x"}}],"edges":[{"target":"out","targetHandle":"input_value"}]}`,
			kind: flow.DanglingEdge, node: "", field: "edges[0].source",
		},
		{
			name: "cycle",
			json: `{"nodes":[{"id":"a","type":"Prompt","data":{"template":"a"}},{"id":"b","type":"Prompt","data":{"template":"b"}}],
			        "edges":[{"source":"a","target":"b","targetHandle":"tool_placeholder"},{"source":"b","target":"a","targetHandle":"tool_placeholder"}]}`,
			kind: flow.Cycle, node: "a", field: "", msg: "a → b → a",
		},
		{
			name: "self loop",
			json: `{"nodes":[{"id":"a","type":"Prompt","data":{"template":"a"}}],"edges":[{"source":"a","target":"a","targetHandle":"tool_placeholder"}]}`,
			kind: flow.Cycle, node: "a", field: "", msg: "a → a",
		},
		{
			name: "too many nodes",
			json: manyNodes(flow.MaxNodes + 1),
			kind: flow.TooManyNodes, node: "", field: "nodes", msg: "501",
		},
		{
			name: "too large",
			json: `{"nodes":[],"pad":"` + strings.Repeat("x", flow.MaxBytes) + `"}`,
			kind: flow.TooLarge, node: "", field: "", code: errs.TooLarge,
		},
		{
			name: "prompt variable without a source",
			json: `{"nodes":[{"id":"p","type":"Prompt","data":{"template":"{a} and {b}","b":"bee"}},{"id":"out","type":"ChatOutput"}],"edges":[{"source":"p","target":"out"}]}`,
			kind: flow.UnboundVariable, node: "p", field: "a", msg: "{a}",
		},
		{
			name: "prompt variable of a prompt that also feeds a rendered prompt",
			json: `{"nodes":[{"id":"p","type":"Prompt","data":{"template":"{q}"}},{"id":"m","type":"OpenAI"},{"id":"c","type":"LLMChain","data":{"prompt":"p","llm":"m"}},{"id":"out","type":"ChatOutput"}],
			        "edges":[{"source":"p","sourceHandle":"prompt","target":"out"}]}`,
			kind: flow.UnboundVariable, node: "p", field: "q",
		},
		{
			name: "malformed JSON",
			json: "{\n  \"nodes\": [\n    {\"id\": \"a\",,}\n  ]\n}",
			kind: flow.Malformed, node: "", field: "", msg: "line 3, column 17",
		},
		{
			name: "truncated JSON",
			json: `{"nodes": [`,
			kind: flow.Malformed, node: "", field: "", msg: "line 1",
		},
		{
			name: "nodes not an array",
			json: `{"nodes": {}}`,
			kind: flow.Malformed, node: "", field: "nodes",
		},
		{
			name: "node not an object",
			json: `{"data":{"nodes":[{"id":"a","type":"genericNode","data":{"type":"ChatInput","node":{"template":{}}}}, 7]}}`,
			kind: flow.Malformed, node: "", field: "data.nodes[1]",
		},
		{
			name: "template not an object",
			json: `{"data":{"nodes":[{"id":"a","type":"genericNode","data":{"type":"ChatInput","node":{"template":[]}}}]}}`,
			kind: flow.Malformed, node: "", field: "data.nodes[0].data.node.template",
		},
		{
			name: "not an object",
			json: `["nodes"]`,
			kind: flow.Malformed, node: "", field: "",
		},
		{
			name: "no nodes key",
			json: `{"name":"x"}`,
			kind: flow.Malformed, node: "", field: "nodes",
		},
		{
			name: "id of the wrong type",
			json: `{"nodes":[{"id":{"x":1},"type":"TextInput"}]}`,
			kind: flow.Malformed, node: "", field: "nodes[0].id",
		},
		{
			name: "node without an id",
			json: `{"nodes":[{"type":"TextInput"}]}`,
			kind: flow.Malformed, node: "", field: "nodes[0].id",
		},
		{
			name: "duplicate node id",
			json: `{"nodes":[{"id":"x","type":"TextInput"},{"id":"x","type":"ChatInput"}]}`,
			kind: flow.DuplicateID, node: "x", field: "id",
		},
		{
			name: "no nodes",
			json: `{"data":{"nodes":[],"edges":[]}}`,
			kind: flow.NoNodes, node: "", field: "nodes",
		},
		{
			name: "only notes",
			json: `{"data":{"nodes":[{"id":"n","type":"noteNode","data":{"node":{"template":{"backgroundColor":"neutral"}}}}]}}`,
			kind: flow.NoNodes, node: "", field: "nodes",
		},
		{
			name: "edge into a field that takes none",
			json: `{"nodes":[{"id":"in","type":"ChatInput"},{"id":"m","type":"OpenAI"}],"edges":[{"source":"in","target":"m","targetHandle":"temperature"}]}`,
			kind: flow.UnknownInput, node: "m", field: "temperature",
		},
		{
			name: "edge into an unknown field",
			json: `{"nodes":[{"id":"in","type":"ChatInput"},{"id":"out","type":"ChatOutput"}],"edges":[{"source":"in","target":"out","targetHandle":"bogus"},{"source":"in","target":"out"}]}`,
			kind: flow.UnknownInput, node: "out", field: "bogus",
		},
		{
			name: "edge no input fits",
			json: `{"nodes":[{"id":"in","type":"ChatInput"},{"id":"t","type":"Calculator"}],"edges":[{"source":"in","target":"t"},{"source":"in","target":"t"},{"source":"t","target":"t","sourceHandle":"result"}]}`,
			kind: flow.UnknownInput, node: "t", field: "",
		},
		{
			name: "edge from an unknown output",
			json: `{"nodes":[{"id":"in","type":"ChatInput"},{"id":"out","type":"ChatOutput"}],"edges":[{"source":"in","sourceHandle":"bogus","target":"out"}]}`,
			kind: flow.UnknownOutput, node: "in", field: "bogus", msg: `"message"`,
		},
		{
			name: "non-tool wired as a tool",
			json: `{"nodes":[{"id":"in","type":"ChatInput"},{"id":"a","type":"Agent"}],"edges":[{"source":"in","sourceHandle":"component_as_tool","target":"a","targetHandle":"tools"}]}`,
			kind: flow.NotATool, node: "in", field: "component_as_tool",
		},
		{
			name: "message into tools",
			json: `{"nodes":[{"id":"in","type":"ChatInput"},{"id":"a","type":"Agent"}],"edges":[{"source":"in","sourceHandle":"message","target":"a","targetHandle":"tools"}]}`,
			kind: flow.TypeMismatch, node: "a", field: "tools",
		},
		{
			name: "two edges into one input",
			json: `{"nodes":[{"id":"a","type":"TextInput"},{"id":"b","type":"TextInput"},{"id":"out","type":"ChatOutput"}],
			        "edges":[{"source":"a","target":"out","targetHandle":"input_value"},{"source":"b","target":"out","targetHandle":"input_value"}]}`,
			kind: flow.MultipleEdges, node: "out", field: "input_value",
		},
		{
			name: "unclosed brace",
			json: `{"nodes":[{"id":"p","type":"Prompt","data":{"template":"Hello {name"}}]}`,
			kind: flow.BadTemplate, node: "p", field: "template", msg: "unclosed",
		},
		{
			name: "positional field",
			json: `{"nodes":[{"id":"p","type":"Prompt","data":{"template":"Hello {0}"}}]}`,
			kind: flow.BadTemplate, node: "p", field: "template",
		},
		{
			name: "double-bracket mode",
			json: `{"nodes":[{"id":"p","type":"Prompt","data":{"template":"Hello {{name}}","use_double_brackets":true}}]}`,
			kind: flow.BadTemplate, node: "p", field: "use_double_brackets",
		},
		{
			name: "mustache mode",
			json: `{"nodes":[{"id":"p","type":"Prompt","data":{"template":"Hello","mode":"{{variable}}"}}]}`,
			kind: flow.BadTemplate, node: "p", field: "mode",
		},
		{
			name: "variable named after a prompt field",
			json: `{"nodes":[{"id":"p","type":"Prompt","data":{"template":"Hello {tool_placeholder}"}}]}`,
			kind: flow.BadTemplate, node: "p", field: "tool_placeholder",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := flow.Parse([]byte(tt.json))
			if err == nil {
				t.Fatalf("Parse succeeded (%d nodes), want a %s problem", len(f.Nodes), tt.kind)
			}
			if f != nil {
				t.Errorf("Parse returned a flow with its error")
			}
			ps := problemsOf(t, err)
			p, ok := findProblem(ps, tt.kind, tt.node, tt.field)
			if !ok {
				t.Fatalf("no %s problem for node %q field %q; got %+v", tt.kind, tt.node, tt.field, ps)
			}
			if !strings.Contains(p.Message, tt.msg) {
				t.Errorf("message %q does not contain %q", p.Message, tt.msg)
			}
			want := tt.code
			if want == "" {
				want = errs.Unprocessable
			}
			if got := errs.CodeOf(err); got != want {
				t.Errorf("errs.CodeOf = %q, want %q", got, want)
			}
		})
	}
}

func TestValidFlowsHaveNoProblems(t *testing.T) {
	tests := map[string]string{
		"prompt that only feeds a chain leaves variables to it": `{"nodes":[
			{"id":"p","type":"PromptTemplate","data":{"template":"Define {term}"}},
			{"id":"m","type":"HuggingFaceHub","data":{"repo_id":"google/flan-t5-large"}},
			{"id":"c","type":"LLMChain","data":{"prompt":"p","llm":"m"}}]}`,
		"variable bound by value":              `{"nodes":[{"id":"p","type":"Prompt","data":{"template":"Hi {who}","who":"you"}},{"id":"o","type":"TextOutput"}],"edges":[{"source":"p","target":"o"}]}`,
		"variable bound by a secret reference": `{"data":{"nodes":[{"id":"p","type":"genericNode","data":{"type":"Prompt","node":{"template":{"template":{"value":"key {k}"},"k":{"value":"MY_VAR","load_from_db":true}}}}}]}}`,
		"variable bound by edge":               `{"nodes":[{"id":"i","type":"TextInput"},{"id":"p","type":"Prompt","data":{"template":"Hi {who}"}}],"edges":[{"source":"i","target":"p","targetHandle":"who"}]}`,
		"custom component takes any field":     `{"nodes":[{"id":"i","type":"TextInput"},{"id":"c","type":"CustomComponent"}],"edges":[{"source":"i","target":"c","targetHandle":"anything"}]}`,
		"single node":                          `{"nodes":[{"id":"i","type":"TextInput"}]}`,
		"exactly MaxNodes":                     manyNodes(flow.MaxNodes),
	}
	for name, js := range tests {
		t.Run(name, func(t *testing.T) {
			f := parseFile(t, []byte(js))
			checkOrder(t, f)
		})
	}
}

func TestAllProblemsReportedTogether(t *testing.T) {
	js := `{"nodes":[
		{"id":"in","type":"ChatInput"},
		{"id":"x1","type":"Frobnicator"},
		{"id":"x2","type":"Wobbler"},
		{"id":"p","type":"Prompt","data":{"template":"Use {ctx} and {q}"}},
		{"id":"p","type":"TextInput"},
		{"id":"out","type":"ChatOutput"},
		{"id":"a","type":"Prompt","data":{"template":"a"}},
		{"id":"b","type":"Prompt","data":{"template":"b"}}
	],"edges":[
		{"source":"in","target":"p","targetHandle":"q"},
		{"source":"ghost","target":"a","targetHandle":"tool_placeholder"},
		{"source":"a","target":"b","targetHandle":"tool_placeholder"},
		{"source":"b","target":"a","targetHandle":"tool_placeholder"},
		{"source":"p","target":"x1","targetHandle":"z"}
	]}`
	_, err := flow.Parse([]byte(js))
	ps := problemsOf(t, err)
	want := []struct {
		kind        flow.ProblemKind
		node, field string
	}{
		{flow.DuplicateID, "p", "id"},
		{flow.UnknownComponent, "x1", "type"},
		{flow.UnknownComponent, "x2", "type"},
		{flow.DanglingEdge, "ghost", ""},
		{flow.MissingInput, "out", "input_value"},
		{flow.UnboundVariable, "p", "ctx"},
		{flow.Cycle, "a", ""},
	}
	for _, w := range want {
		if _, ok := findProblem(ps, w.kind, w.node, w.field); !ok {
			t.Errorf("no %s problem for node %q field %q", w.kind, w.node, w.field)
		}
	}
	if len(ps) != len(want) {
		t.Errorf("got %d problems, want %d: %+v", len(ps), len(want), ps)
	}
	cyc, _ := findProblem(ps, flow.Cycle, "a", "")
	if !slices.Equal(cyc.Nodes, []string{"a", "b"}) {
		t.Errorf("cycle nodes = %q, want [a b]", cyc.Nodes)
	}

	// One error for the HTTP layer: the first problem's place, every message.
	var e *errs.Error
	if !errors.As(err, &e) {
		t.Fatalf("errors.As(*errs.Error) = false, want true")
	}
	if e.Code != errs.Unprocessable {
		t.Errorf("Code = %q, want %q", e.Code, errs.Unprocessable)
	}
	if e.Field != "nodes.x1.type" {
		t.Errorf("Field = %q, want nodes.x1.type (problems follow file order)", e.Field)
	}
	for _, s := range []string{"Frobnicator", "Wobbler", "ghost", "{ctx}", "a → b → a"} {
		if !strings.Contains(e.Message, s) {
			t.Errorf("message %q lacks %q", e.Message, s)
		}
	}
	if !strings.Contains(err.Error(), "7 problems") {
		t.Errorf("Error() = %q, want it to count 7 problems", err.Error())
	}
}

func TestValidateHandBuiltFlows(t *testing.T) {
	tests := []struct {
		name        string
		f           *flow.Flow
		kind        flow.ProblemKind
		node, field string
	}{
		{"nil flow", nil, flow.Malformed, "", ""},
		{"nil node", &flow.Flow{Nodes: []*flow.Node{nil}}, flow.Malformed, "", "nodes[0]"},
		{
			"nil edge",
			&flow.Flow{Nodes: []*flow.Node{{ID: "a", Type: "TextInput"}}, Edges: []*flow.Edge{nil}},
			flow.Malformed, "", "edges[0]",
		},
		{
			"edge without input",
			&flow.Flow{
				Nodes: []*flow.Node{{ID: "a", Type: "TextInput"}, {ID: "b", Type: "TextOutput"}},
				Edges: []*flow.Edge{{Source: "a", SourceOutput: "text", Target: "b"}},
			},
			flow.UnknownInput, "b", "",
		},
		{
			"edge without output",
			&flow.Flow{
				Nodes: []*flow.Node{{ID: "a", Type: "TextInput"}, {ID: "b", Type: "TextOutput"}},
				Edges: []*flow.Edge{{Source: "a", Target: "b", TargetInput: "input_value"}},
			},
			flow.UnknownOutput, "a", "",
		},
		{
			"edge without target",
			&flow.Flow{
				Nodes: []*flow.Node{{ID: "a", Type: "TextInput"}},
				Edges: []*flow.Edge{{Source: "a", SourceOutput: "text"}},
			},
			flow.DanglingEdge, "", "edges[0].target",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := flow.Validate(tt.f)
			if err == nil {
				t.Fatal("Validate succeeded, want a problem")
			}
			ps := problemsOf(t, err)
			if _, ok := findProblem(ps, tt.kind, tt.node, tt.field); !ok {
				t.Errorf("no %s problem for node %q field %q; got %+v", tt.kind, tt.node, tt.field, ps)
			}
		})
	}
}

func TestDecodeKeepsInvalidGraph(t *testing.T) {
	// Decode gives the graph of a flow that does not validate, so a UI can
	// show it with its problems.
	f, err := flow.Decode([]byte(`{"nodes":[{"id":"x","type":"Frobnicator"}]}`))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if len(f.Nodes) != 1 || f.Nodes[0].Type != "Frobnicator" || f.Nodes[0].Component() != nil {
		t.Errorf("nodes = %+v, want the unknown node kept as written", f.Nodes)
	}
	if err := flow.Validate(f); err == nil {
		t.Errorf("Validate succeeded, want unknown_component")
	}
}

func TestProblemPaths(t *testing.T) {
	tests := []struct {
		p          flow.Problem
		path, text string
	}{
		{flow.Problem{NodeID: "n", Field: "f", Message: "m"}, "nodes.n.f", `node "n", field "f": m`},
		{flow.Problem{NodeID: "n", Message: "m"}, "nodes.n", `node "n": m`},
		{flow.Problem{Field: "edges[2].source", Message: "m"}, "edges[2].source", "edges[2].source: m"},
		{flow.Problem{Message: "m"}, "", "m"},
	}
	for _, tt := range tests {
		if got := tt.p.Path(); got != tt.path {
			t.Errorf("Path() = %q, want %q", got, tt.path)
		}
		if got := tt.p.String(); got != tt.text {
			t.Errorf("String() = %q, want %q", got, tt.text)
		}
	}
}

func TestErrsErrorCapsMessage(t *testing.T) {
	ve := &flow.ValidationError{}
	for i := range 25 {
		ve.Problems = append(ve.Problems, flow.Problem{Kind: flow.UnknownComponent, NodeID: fmt.Sprint("n", i), Field: "type", Message: "unknown"})
	}
	e := ve.ErrsError()
	if !strings.Contains(e.Message, "and 5 more") {
		t.Errorf("Message = %q, want the first 20 and a count of the rest", e.Message)
	}
	if e.Field != "nodes.n0.type" {
		t.Errorf("Field = %q, want nodes.n0.type", e.Field)
	}
	if !ve.Has(flow.UnknownComponent) || ve.Has(flow.Cycle) {
		t.Errorf("Has reports wrongly")
	}
}
