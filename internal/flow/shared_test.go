package flow_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/flow"
)

// sharedDir holds LangFlow's starter projects, unchanged. The repository
// checkout sits beside shared/, so the path climbs out of it.
const sharedDir = "../../../shared/langflow"

func readShared(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(sharedDir, name))
	if err != nil {
		t.Fatalf("read shared LangFlow export %s: %v (the exports are expected in %s, i.e. /work/shared/langflow beside the repository checkout)", name, err, sharedDir)
	}
	return data
}

func parseFile(t *testing.T, data []byte) *flow.Flow {
	t.Helper()
	f, err := flow.Parse(data)
	if err != nil {
		var ve *flow.ValidationError
		if errors.As(err, &ve) {
			for _, p := range ve.Problems {
				t.Errorf("problem: %+v", p)
			}
		}
		t.Fatalf("Parse: %v", err)
	}
	return f
}

// edgeStrings renders edges as "src.output -> tgt.input".
func edgeStrings(f *flow.Flow) []string {
	var out []string
	for _, e := range f.Edges {
		out = append(out, e.Source+"."+e.SourceOutput+" -> "+e.Target+"."+e.TargetInput)
	}
	slices.Sort(out)
	return out
}

func typeCounts(f *flow.Flow) map[string]int {
	m := map[string]int{}
	for _, n := range f.Nodes {
		m[n.Type]++
	}
	return m
}

// rawNoteCount counts annotation nodes in the raw export.
func rawNoteCount(t *testing.T, data []byte) (notes, all int) {
	t.Helper()
	var raw struct {
		Data struct {
			Nodes []struct {
				Type string `json:"type"`
			} `json:"nodes"`
		} `json:"data"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatalf("decode raw export: %v", err)
	}
	for _, n := range raw.Data.Nodes {
		if n.Type == "noteNode" {
			notes++
		}
	}
	return notes, len(raw.Data.Nodes)
}

func TestSharedFlows(t *testing.T) {
	tests := []struct {
		file  string
		name  string
		types map[string]int
		edges []string
		vars  map[string][]string // Prompt node id → variables
	}{
		{
			file:  "basic-prompting.json",
			name:  "Basic Prompting",
			types: map[string]int{"ChatInput": 1, "Prompt": 1, "LanguageModelComponent": 1, "ChatOutput": 1},
			edges: []string{
				"ChatInput-ybSRx.message -> LanguageModelComponent-LsJMR.input_value",
				"LanguageModelComponent-LsJMR.text_output -> ChatOutput-hJNhd.input_value",
				"Prompt-xvuxC.prompt -> LanguageModelComponent-LsJMR.system_message",
			},
			vars: map[string][]string{"Prompt-xvuxC": nil},
		},
		{
			file:  "memory-chatbot.json",
			name:  "Memory Chatbot",
			types: map[string]int{"ChatInput": 1, "Memory": 1, "Prompt": 1, "LanguageModelComponent": 1, "ChatOutput": 1},
			edges: []string{
				"ChatInput-xLWhw.message -> LanguageModelComponent-n8KRg.input_value",
				"LanguageModelComponent-n8KRg.text_output -> ChatOutput-2ljRT.input_value",
				"Memory-MKGtC.messages_text -> Prompt-9wc4j.memory",
				"Prompt-9wc4j.prompt -> LanguageModelComponent-n8KRg.system_message",
			},
			vars: map[string][]string{"Prompt-9wc4j": {"memory"}},
		},
		{
			file:  "basic-prompt-chaining.json",
			name:  "Basic Prompt Chaining",
			types: map[string]int{"ChatInput": 1, "Prompt": 3, "ChatOutput": 1},
			edges: []string{
				"ChatInput-B7vXK.message -> Prompt-RcCgD.tool_placeholder",
				"Prompt-7PuDH.prompt -> ChatOutput-mc2Rz.input_value",
				"Prompt-RcCgD.prompt -> Prompt-gxyFu.tool_placeholder",
				"Prompt-gxyFu.prompt -> Prompt-7PuDH.tool_placeholder",
			},
			// The [placeholders] in these templates are square brackets: no variables.
			vars: map[string][]string{"Prompt-RcCgD": nil, "Prompt-gxyFu": nil, "Prompt-7PuDH": nil},
		},
		{
			file:  "document-qa.json",
			name:  "Document Q&A",
			types: map[string]int{"File": 1, "Prompt": 1, "LanguageModelComponent": 1, "ChatInput": 1, "ChatOutput": 1},
			edges: []string{
				"ChatInput-e74mn.message -> LanguageModelComponent-htMuI.input_value",
				"File-b2gOG.message -> Prompt-odlqe.Document",
				"LanguageModelComponent-htMuI.text_output -> ChatOutput-bcQIH.input_value",
				"Prompt-odlqe.prompt -> LanguageModelComponent-htMuI.system_message",
			},
			vars: map[string][]string{"Prompt-odlqe": {"Document"}},
		},
		{
			file:  "simple-agent.json",
			name:  "Simple Agent",
			types: map[string]int{"ChatInput": 1, "Agent": 1, "CalculatorComponent": 1, "URLComponent": 1, "ChatOutput": 1},
			edges: []string{
				"Agent-D0Kx2.response -> ChatOutput-yhCn0.input_value",
				"CalculatorComponent-hMbFw.component_as_tool -> Agent-D0Kx2.tools",
				"ChatInput-iPUSx.message -> Agent-D0Kx2.input_value",
				"URLComponent-TpTHB.component_as_tool -> Agent-D0Kx2.tools",
			},
		},
		{
			file:  "seo-keyword-generator.json",
			name:  "SEO Keyword Generator",
			types: map[string]int{"Prompt": 2, "LanguageModelComponent": 1, "ChatOutput": 1},
			edges: []string{
				"LanguageModelComponent-zY7m0.text_output -> ChatOutput-S7Bzs.input_value",
				"Prompt-KS0e2.prompt -> LanguageModelComponent-zY7m0.input_value",
				"Prompt-YWJzc.prompt -> LanguageModelComponent-zY7m0.system_message",
			},
			vars: map[string][]string{
				"Prompt-KS0e2": {"product", "pain_points", "goals", "current_solutions", "target_audience", "expertise_level"},
				"Prompt-YWJzc": nil,
			},
		},
		{
			file:  "twitter-thread-generator.json",
			name:  "Twitter Thread Generator",
			types: map[string]int{"ChatInput": 1, "TextInput": 6, "Prompt": 1, "LanguageModelComponent": 1, "ChatOutput": 1},
			edges: []string{
				"ChatInput-JpNZb.message -> LanguageModelComponent-URKKz.input_value",
				"LanguageModelComponent-URKKz.text_output -> ChatOutput-GgTGu.input_value",
				"Prompt-JXzxV.prompt -> LanguageModelComponent-URKKz.system_message",
				"TextInput-3nKXg.text -> Prompt-JXzxV.PROFILE_DETAILS",
				"TextInput-58oH9.text -> Prompt-JXzxV.OUTPUT_LANGUAGE",
				"TextInput-MlxGC.text -> Prompt-JXzxV.PROFILE_TYPE",
				"TextInput-OAt8o.text -> Prompt-JXzxV.OUTPUT_FORMAT",
				"TextInput-i5Z2Y.text -> Prompt-JXzxV.CONTENT_GUIDELINES",
				"TextInput-rIJMY.text -> Prompt-JXzxV.TONE_AND_STYLE",
			},
			// {{CONTEXT}} and the other doubled names are literal text.
			vars: map[string][]string{"Prompt-JXzxV": {"PROFILE_TYPE", "PROFILE_DETAILS", "CONTENT_GUIDELINES", "TONE_AND_STYLE", "OUTPUT_FORMAT", "OUTPUT_LANGUAGE"}},
		},
		{
			file:  "v1.0/basic-prompting.json",
			name:  "Basic Prompting (Hello, World)",
			types: map[string]int{"ChatInput": 1, "Prompt": 1, "OpenAIModel": 1, "ChatOutput": 1},
			edges: []string{
				"ChatInput-Y6mi1.message -> Prompt-Z4WYI.user_input",
				"OpenAIModel-26Eve.text_output -> ChatOutput-cQnVI.input_value",
				"Prompt-Z4WYI.prompt -> OpenAIModel-26Eve.input_value",
			},
			vars: map[string][]string{"Prompt-Z4WYI": {"user_input"}},
		},
		{
			file:  "v1.0/memory-chatbot.json",
			name:  "Memory Chatbot",
			types: map[string]int{"ChatInput": 1, "Memory": 1, "Prompt": 1, "OpenAIModel": 1, "ChatOutput": 1},
			edges: []string{
				"ChatInput-gIy9N.message -> Prompt-gEaWL.user_message",
				"Memory-VIq7F.messages_text -> Prompt-gEaWL.context",
				"OpenAIModel-uNcAU.text_output -> ChatOutput-KtSB9.input_value",
				"Prompt-gEaWL.prompt -> OpenAIModel-uNcAU.input_value",
			},
			vars: map[string][]string{"Prompt-gEaWL": {"context", "user_message"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data := readShared(t, tt.file)
			f := parseFile(t, data)
			if f.Format != flow.FormatLangFlow {
				t.Errorf("Format = %q, want %q", f.Format, flow.FormatLangFlow)
			}
			if f.Name != tt.name {
				t.Errorf("Name = %q, want %q", f.Name, tt.name)
			}
			if f.ID == "" || f.Description == "" {
				t.Errorf("ID = %q, Description = %q, want both set", f.ID, f.Description)
			}

			notes, all := rawNoteCount(t, data)
			if got := len(f.Nodes); got != all-notes {
				t.Errorf("got %d nodes, want %d (%d in the file less %d notes)", got, all-notes, all, notes)
			}
			if got := typeCounts(f); !mapsEqual(got, tt.types) {
				t.Errorf("node types = %v, want %v", got, tt.types)
			}
			for _, n := range f.Nodes {
				if n.Component() == nil {
					t.Errorf("node %s: type %q (raw %q) not in the catalog", n.ID, n.Type, n.RawType)
				}
				if strings.Contains(n.Type, "note") {
					t.Errorf("node %s: note %q kept", n.ID, n.Type)
				}
				if _, ok := n.Params["code"]; ok {
					t.Errorf("node %s: Python source kept in Params; want it in Code only", n.ID)
				}
				if n.Code == "" {
					t.Errorf("node %s: Code empty, want the export's Python source", n.ID)
				}
				if len(n.Outputs) == 0 {
					t.Errorf("node %s: no declared outputs", n.ID)
				}
			}
			if got := edgeStrings(f); !slices.Equal(got, tt.edges) {
				t.Errorf("edges:\n got %q\nwant %q", got, tt.edges)
			}
			for id, want := range tt.vars {
				n := f.Node(id)
				if n == nil {
					t.Fatalf("no node %s", id)
				}
				got, err := n.PromptVariables()
				if err != nil {
					t.Fatalf("%s: PromptVariables: %v", id, err)
				}
				if !slices.Equal(got, want) {
					t.Errorf("%s: variables = %q, want %q", id, got, want)
				}
			}
			checkOrder(t, f)
		})
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// checkOrder asserts Order lists every node once, sources before targets.
func checkOrder(t *testing.T, f *flow.Flow) []*flow.Node {
	t.Helper()
	order, err := flow.Order(f)
	if err != nil {
		t.Fatalf("Order: %v", err)
	}
	if len(order) != len(f.Nodes) {
		t.Fatalf("Order returned %d nodes, want %d", len(order), len(f.Nodes))
	}
	pos := map[string]int{}
	for i, n := range order {
		if _, dup := pos[n.ID]; dup {
			t.Fatalf("Order lists %s twice", n.ID)
		}
		pos[n.ID] = i
	}
	for _, e := range f.Edges {
		if pos[e.Source] >= pos[e.Target] {
			t.Errorf("Order puts %s (position %d) after %s (position %d), which it feeds", e.Source, pos[e.Source], e.Target, pos[e.Target])
		}
	}
	again, _ := flow.Order(f)
	for i := range order {
		if order[i] != again[i] {
			t.Fatalf("Order is not deterministic at %d: %s then %s", i, order[i].ID, again[i].ID)
		}
	}
	return order
}

func TestSharedAgentTools(t *testing.T) {
	f := parseFile(t, readShared(t, "simple-agent.json"))
	agent := f.NodesOfType(flow.TypeAgent)
	if len(agent) != 1 {
		t.Fatalf("got %d agents, want 1", len(agent))
	}
	tools := f.EdgesInto(agent[0].ID, "tools")
	if len(tools) != 2 {
		t.Fatalf("got %d tool edges, want 2", len(tools))
	}
	for _, e := range tools {
		n := f.Node(e.Source)
		if e.SourceOutput != flow.ToolOutput {
			t.Errorf("tool edge from %s leaves %q, want %q", e.Source, e.SourceOutput, flow.ToolOutput)
		}
		if !n.ToolMode {
			t.Errorf("%s: ToolMode = false, want true", n.ID)
		}
		if !n.Component().IsTool {
			t.Errorf("%s: component %s is not a tool", n.ID, n.Type)
		}
		md, ok := n.Params["tools_metadata"].Value.([]any)
		if !ok || len(md) != 1 {
			t.Errorf("%s: tools_metadata = %#v, want one tool description", n.ID, n.Params["tools_metadata"].Value)
		}
	}
	order := checkOrder(t, f)
	if last := order[len(order)-1]; last.Type != "ChatOutput" {
		t.Errorf("last in order = %s, want the ChatOutput", last.ID)
	}
	if got, _ := agent[0].Param("max_iterations").Int(); got != 15 {
		t.Errorf("max_iterations = %d, want 15", got)
	}
	if p := agent[0].Param("model"); !p.Empty() || p.Type != "model" {
		t.Errorf("Agent model = %#v (type %q), want an empty selection of type model", p.Value, p.Type)
	}
}

func TestSharedDocumentQAFile(t *testing.T) {
	f := parseFile(t, readShared(t, "document-qa.json"))
	files := f.NodesOfType("File")
	if len(files) != 1 {
		t.Fatalf("got %d File nodes, want 1", len(files))
	}
	file := files[0]
	if p := file.Param("path"); p.Type != "file" || !p.Empty() {
		t.Errorf("path = %#v (type %q), want an empty file field: the file arrives at run time", p.Value, p.Type)
	}
	for _, name := range []string{"aws_access_key_id", "aws_secret_access_key", "service_account_key"} {
		p := file.Param(name)
		if !p.LoadFromDB || !p.Password || p.Show {
			t.Errorf("%s: LoadFromDB=%v Password=%v Show=%v, want a hidden secret reference", name, p.LoadFromDB, p.Password, p.Show)
		}
	}
	if got := f.Outgoing(file.ID); len(got) != 1 || got[0].SourceOutput != "message" {
		t.Errorf("File feeds %v, want one edge from output message", got)
	}
}

func TestSharedV1Params(t *testing.T) {
	f := parseFile(t, readShared(t, "v1.0/basic-prompting.json"))
	m := f.Node("OpenAIModel-26Eve")
	if m == nil {
		t.Fatal("no node OpenAIModel-26Eve")
	}
	if m.Type != "OpenAIModel" || m.RawType != "OpenAIModelComponent" {
		t.Errorf("Type, RawType = %q, %q; want OpenAIModel, OpenAIModelComponent", m.Type, m.RawType)
	}
	if !m.Edited {
		t.Errorf("Edited = false, want true (the export marks its code edited)")
	}
	key := m.Param("openai_api_key")
	if !key.LoadFromDB || !key.Password || key.String() != "OPENAI_API_KEY" {
		t.Errorf("openai_api_key = %+v, want a LoadFromDB reference to OPENAI_API_KEY", key)
	}
	if got := m.Param("model_name").String(); got != "gpt-4-turbo" {
		t.Errorf("model_name = %q, want gpt-4-turbo", got)
	}
	if got, ok := m.Param("temperature").Float(); !ok || got != 0.1 {
		t.Errorf("temperature = %v, %v; want 0.1", got, ok)
	}
	if got, ok := m.Param("seed").Int(); !ok || got != 1 {
		t.Errorf("seed = %v, %v; want 1", got, ok)
	}
	if _, ok := m.Param("max_tokens").Int(); ok {
		t.Errorf("max_tokens reported set, want unset (the export has \"\")")
	}
	if got, ok := m.Param("stream").Bool(); !ok || got {
		t.Errorf("stream = %v, %v; want false", got, ok)
	}
	if p := m.Param("system_message"); !p.Advanced || !p.Show {
		t.Errorf("system_message Advanced=%v Show=%v, want both true", p.Advanced, p.Show)
	}
}

func TestSharedPromptRenders(t *testing.T) {
	f := parseFile(t, readShared(t, "twitter-thread-generator.json"))
	p := f.Node("Prompt-JXzxV")
	vars, err := p.PromptVariables()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]string{}
	for _, v := range vars {
		values[v] = "<" + v + ">"
	}
	out, err := flow.Render(p.Param("template").String(), values)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	for _, want := range []string{"<PROFILE_TYPE>", "{PROFILE_TYPE}", "{CONTEXT}"} {
		if !strings.Contains(out, want) {
			t.Errorf("rendered prompt lacks %q", want)
		}
	}
	if strings.Contains(out, "{{") {
		t.Errorf("rendered prompt still has doubled braces")
	}
}

func TestFlowLookups(t *testing.T) {
	f := parseFile(t, readShared(t, "basic-prompting.json"))
	const model = "LanguageModelComponent-LsJMR"
	if got := f.Incoming(model); len(got) != 2 {
		t.Errorf("Incoming(%s) = %d edges, want 2", model, len(got))
	}
	if got := f.Outgoing(model); len(got) != 1 || got[0].Target != "ChatOutput-hJNhd" {
		t.Errorf("Outgoing(%s) = %v, want one edge to the ChatOutput", model, got)
	}
	if got := f.EdgesInto(model, "system_message"); len(got) != 1 || f.Node(got[0].Source).Type != flow.TypePrompt {
		t.Errorf("EdgesInto(system_message) = %v, want the Prompt", got)
	}
	if f.Node("nope") != nil || len(f.NodesOfType("Agent")) != 0 || len(f.Incoming("nope")) != 0 {
		t.Errorf("lookups of absent things found something")
	}
	if got := len(f.NodesOfType("ChatInput")); got != 1 {
		t.Errorf("NodesOfType(ChatInput) = %d, want 1", got)
	}
}
