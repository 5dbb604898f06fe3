package flow_test

import (
	"os"
	"slices"
	"testing"

	"github.com/sluicehq/sluice/internal/flow"
)

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func ids(nodes []*flow.Node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.ID
	}
	return out
}

func TestCompactSeed(t *testing.T) {
	f := parseFile(t, readTestdata(t, "compact-seed.json"))
	if f.Format != flow.FormatCompact {
		t.Errorf("Format = %q, want %q", f.Format, flow.FormatCompact)
	}
	order := checkOrder(t, f)
	if got, want := ids(order), []string{"prompt_1", "llm_1", "chain_1"}; !slices.Equal(got, want) {
		t.Errorf("Order = %q, want %q", got, want)
	}
	// The data references and the explicit edges say the same thing once.
	want := []string{
		"llm_1.model_output -> chain_1.llm",
		"prompt_1.template -> chain_1.prompt",
	}
	if got := edgeStrings(f); !slices.Equal(got, want) {
		t.Errorf("edges = %q, want %q", got, want)
	}
	chain := f.Node("chain_1")
	if len(chain.Params) != 0 {
		t.Errorf("chain_1 params = %v, want none: references became edges", chain.Params)
	}
	prompt := f.Node("prompt_1")
	if prompt.Type != flow.TypePrompt || prompt.RawType != "PromptTemplate" {
		t.Errorf("prompt_1 Type, RawType = %q, %q; want Prompt, PromptTemplate", prompt.Type, prompt.RawType)
	}
	vars, err := prompt.PromptVariables()
	if err != nil || !slices.Equal(vars, []string{"term"}) {
		t.Errorf("prompt_1 variables = %q, %v; want [term]", vars, err)
	}
	out, err := flow.Render(prompt.Param("template").String(), map[string]string{"term": "熵"})
	if err != nil || out != "请解释以下术语：熵" {
		t.Errorf("Render = %q, %v; want 请解释以下术语：熵", out, err)
	}
	if got := f.Node("llm_1").Param("model").String(); got != "google/flan-t5-large" {
		t.Errorf("llm_1 model = %q, want google/flan-t5-large", got)
	}
	if !f.Node("llm_1").Component().IsModel {
		t.Errorf("HuggingFaceHub is not a model")
	}
}

func TestCompactForms(t *testing.T) {
	tests := []struct {
		name  string
		json  string
		edges []string
		order []string
	}{
		{
			name: "references only",
			json: `{"nodes":[
				{"id":"c","type":"LLMChain","data":{"prompt":"p","llm":"m"}},
				{"id":"p","type":"PromptTemplate","data":{"template":"{q}"}},
				{"id":"m","type":"OpenAI","data":{"model_name":"gpt-4o-mini"}}]}`,
			edges: []string{"m.model_output -> c.llm", "p.template -> c.prompt"},
			order: []string{"p", "m", "c"},
		},
		{
			name: "edges only, inputs inferred by type",
			json: `{"nodes":[
				{"id":"in","type":"ChatInput","data":{}},
				{"id":"p","type":"Prompt","data":{"template":"Translate: {text}"}},
				{"id":"m","type":"Ollama","data":{"model":"llama3"}},
				{"id":"out","type":"ChatOutput","data":{}}],
			 "edges":[{"source":"in","target":"p"},{"source":"p","target":"m"},{"source":"m","target":"out"}]}`,
			edges: []string{"in.message -> p.text", "m.text_output -> out.input_value", "p.prompt -> m.input_value"},
			order: []string{"in", "p", "m", "out"},
		},
		{
			name: "handles as plain names",
			json: `{"nodes":[
				{"id":"sys","type":"Prompt","data":{"template":"Be brief."}},
				{"id":"in","type":"ChatInput"},
				{"id":"m","type":"LanguageModel"},
				{"id":"out","type":"ChatOutput"}],
			 "edges":[{"source":"sys","target":"m","targetHandle":"system_message"},
			          {"source":"in","target":"m","sourceHandle":"message","targetHandle":"input_value"},
			          {"source":"m","target":"out"}]}`,
			edges: []string{"in.message -> m.input_value", "m.text_output -> out.input_value", "sys.prompt -> m.system_message"},
			order: []string{"sys", "in", "m", "out"},
		},
		{
			name: "tools list reference and agent",
			json: `{"nodes":[
				{"id":"calc","type":"Calculator"},
				{"id":"web","type":"URL"},
				{"id":"a","type":"Agent","data":{"tools":["calc","web"],"max_iterations":5}},
				{"id":"in","type":"ChatInput"},
				{"id":"out","type":"ChatOutput"}],
			 "edges":[{"source":"in","target":"a"},{"source":"a","target":"out"}]}`,
			edges: []string{"a.response -> out.input_value", "calc.component_as_tool -> a.tools", "in.message -> a.input_value", "web.component_as_tool -> a.tools"},
			order: []string{"calc", "web", "in", "a", "out"},
		},
		{
			name: "numeric ids and notes",
			json: `{"nodes":[{"id":1,"type":"TextInput","data":{"input_value":"hi"}},{"id":"n","type":"noteNode"},{"id":2,"type":"TextOutput"}],
			 "edges":[{"source":1,"target":2}]}`,
			edges: []string{"1.text -> 2.input_value"},
			order: []string{"1", "2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := parseFile(t, []byte(tt.json))
			if f.Format != flow.FormatCompact {
				t.Errorf("Format = %q, want compact", f.Format)
			}
			if got := edgeStrings(f); !slices.Equal(got, tt.edges) {
				t.Errorf("edges:\n got %q\nwant %q", got, tt.edges)
			}
			if got := ids(checkOrder(t, f)); !slices.Equal(got, tt.order) {
				t.Errorf("Order = %q, want %q", got, tt.order)
			}
		})
	}
}

func TestLegacyLLMChain(t *testing.T) {
	f := parseFile(t, readTestdata(t, "legacy-llmchain.json"))
	if f.Format != flow.FormatLegacy {
		t.Errorf("Format = %q, want %q", f.Format, flow.FormatLegacy)
	}
	if f.Name != "Company Namer" {
		t.Errorf("Name = %q, want Company Namer", f.Name)
	}
	wantTypes := map[string][2]string{
		"PromptTemplate-Xk2Pq": {"Prompt", "PromptTemplate"},
		"OpenAI-q9Lm4":         {"OpenAIModel", "OpenAI"},
		"LLMChain-7bN3e":       {"LLMChain", "LLMChain"},
	}
	for id, want := range wantTypes {
		n := f.Node(id)
		if n == nil {
			t.Fatalf("no node %s", id)
		}
		if n.Type != want[0] || n.RawType != want[1] {
			t.Errorf("%s: Type, RawType = %q, %q; want %q, %q", id, n.Type, n.RawType, want[0], want[1])
		}
	}
	want := []string{
		"OpenAI-q9Lm4.model_output -> LLMChain-7bN3e.llm",
		"PromptTemplate-Xk2Pq.template -> LLMChain-7bN3e.prompt",
	}
	if got := edgeStrings(f); !slices.Equal(got, want) {
		t.Errorf("edges = %q, want %q", got, want)
	}
	m := f.Node("OpenAI-q9Lm4")
	if got := m.Param("model_name").String(); got != "text-davinci-003" {
		t.Errorf("model_name = %q, want text-davinci-003", got)
	}
	if got, _ := m.Param("max_tokens").Int(); got != 256 {
		t.Errorf("max_tokens = %d, want 256", got)
	}
	if !m.Param("openai_api_key").Password {
		t.Errorf("openai_api_key not marked Password")
	}
	vars, err := f.Node("PromptTemplate-Xk2Pq").PromptVariables()
	if err != nil || !slices.Equal(vars, []string{"product"}) {
		t.Errorf("variables = %q, %v; want [product] ({{brackets}} is literal)", vars, err)
	}
	if got := ids(checkOrder(t, f)); !slices.Equal(got, []string{"PromptTemplate-Xk2Pq", "OpenAI-q9Lm4", "LLMChain-7bN3e"}) {
		t.Errorf("Order = %q", got)
	}
}

func TestLegacyMemory(t *testing.T) {
	f := parseFile(t, readTestdata(t, "legacy-memory.json"))
	if f.Format != flow.FormatLegacy {
		t.Errorf("Format = %q, want %q", f.Format, flow.FormatLegacy)
	}
	want := []string{
		"ChatOpenAI-Vb81t.model_output -> LLMChain-k4Nq8.llm",
		"ConversationBufferMemory-p2Rw0.memory -> LLMChain-k4Nq8.memory",
		"PromptTemplate-d7Hs2.template -> LLMChain-k4Nq8.prompt",
	}
	if got := edgeStrings(f); !slices.Equal(got, want) {
		t.Errorf("edges = %q, want %q", got, want)
	}
	if got := f.Node("ConversationBufferMemory-p2Rw0"); got.Type != "Memory" || got.Param("memory_key").String() != "history" {
		t.Errorf("memory node Type = %q, memory_key = %q; want Memory, history", got.Type, got.Param("memory_key").String())
	}
	if got := f.Node("ChatOpenAI-Vb81t").Type; got != "OpenAIModel" {
		t.Errorf("ChatOpenAI Type = %q, want OpenAIModel", got)
	}
	checkOrder(t, f)
}

// A LangFlow graph without the export envelope, and an export with no edges,
// are still recognised.
func TestLangFlowShapes(t *testing.T) {
	bare := `{"nodes":[{"id":"TextInput-1","type":"genericNode","data":{"type":"TextInput","node":{"template":{"input_value":{"type":"str","value":"x"}},"outputs":[{"name":"text"}]}}},
	                  {"id":"TextOutput-1","type":"genericNode","data":{"type":"TextOutput","node":{"template":{"input_value":{"type":"str","value":""}},"outputs":[{"name":"text"}]}}}],
	          "edges":[{"source":"TextInput-1","target":"TextOutput-1","data":{"sourceHandle":{"id":"TextInput-1","name":"text"},"targetHandle":{"id":"TextOutput-1","fieldName":"input_value"}}}]}`
	f := parseFile(t, []byte(bare))
	if f.Format != flow.FormatLangFlow || len(f.Edges) != 1 || f.Edges[0].TargetInput != "input_value" {
		t.Errorf("bare graph: Format %q, edges %v", f.Format, edgeStrings(f))
	}

	noEdgesLegacy := `{"data":{"nodes":[{"id":"PromptTemplate-1","type":"genericNode","data":{"type":"PromptTemplate","node":{"template":{"template":{"value":"hello","type":"prompt"},"_type":"PromptTemplate"}}}}],"edges":[]}}`
	if f := parseFile(t, []byte(noEdgesLegacy)); f.Format != flow.FormatLegacy {
		t.Errorf("edge-less 2023 export: Format %q, want %q", f.Format, flow.FormatLegacy)
	}

	// Handle ids fill in a missing source/target, and the top-level œ strings are ignored.
	handlesOnly := `{"data":{"nodes":[{"id":"A","type":"genericNode","data":{"type":"TextInput","node":{"template":{},"outputs":[{"name":"text"}]}}},
	                                    {"id":"B","type":"genericNode","data":{"type":"ChatOutput","node":{"template":{}}}}],
	          "edges":[{"sourceHandle":"{œnameœ:œtextœ}","targetHandle":"{œfieldNameœ:œinput_valueœ}","data":{"sourceHandle":{"id":"A","name":"text"},"targetHandle":{"id":"B","fieldName":"input_value"}}}]}}`
	f = parseFile(t, []byte(handlesOnly))
	if got := edgeStrings(f); !slices.Equal(got, []string{"A.text -> B.input_value"}) {
		t.Errorf("handles only: edges %q", got)
	}
}
