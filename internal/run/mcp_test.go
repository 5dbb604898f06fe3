package run_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/quota"
	"github.com/sluicehq/sluice/internal/run"
)

// notesServer is a real MCP server (the SDK's own server side, over its
// streamable HTTP handler) with two tools: add, whose input schema the SDK
// infers from addIn, and fetch_note. It requires the bearer token, and
// counts the tool calls it answered.
type notesServer struct {
	*httptest.Server
	calls atomic.Int64
}

type addIn struct {
	A float64 `json:"a" jsonschema:"the first number"`
	B float64 `json:"b" jsonschema:"the second number"`
}

type addOut struct {
	Sum float64 `json:"sum"`
}

type noteIn struct {
	ID string `json:"id" jsonschema:"the note's id"`
}

const notesToken = "Bearer notes-secret-7f3a"

func newNotesServer(t *testing.T) *notesServer {
	t.Helper()
	ns := &notesServer{}
	srv := mcp.NewServer(&mcp.Implementation{Name: "notes", Version: "1.0.0"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "add", Description: "Add two numbers."},
		func(_ context.Context, _ *mcp.CallToolRequest, in addIn) (*mcp.CallToolResult, addOut, error) {
			ns.calls.Add(1)
			return nil, addOut{Sum: in.A + in.B}, nil
		})
	mcp.AddTool(srv, &mcp.Tool{Name: "fetch_note", Description: "Fetch a note by its id."},
		func(_ context.Context, _ *mcp.CallToolRequest, in noteIn) (*mcp.CallToolResult, any, error) {
			ns.calls.Add(1)
			switch in.ID {
			case "groceries":
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "buy oat milk"}}}, nil, nil
			case "big":
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: strings.Repeat("x", 64<<10)}}}, nil, nil
			}
			return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: "no note " + in.ID}}}, nil, nil
		})
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil)
	ns.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != notesToken {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(ns.Close)
	return ns
}

// withNotes configures the harness's executor with the notes server, as
// mcp_servers would.
func withNotes(t *testing.T, h *harness) *notesServer {
	t.Helper()
	ns := newNotesServer(t)
	h.exec.MCPServers = []run.MCPServer{{Name: "notes", URL: ns.URL, Headers: map[string]string{"Authorization": notesToken}}}
	return ns
}

// The node as LangFlow exports it: mcp_server holds {name, config}; the
// config's URL (here the cloud metadata address) is never used.
const mcpServerValue = `{"name":"notes","config":{"url":"http://169.254.169.254/mcp"}}`

func TestMCPToolsNodeCallsTheSelectedTool(t *testing.T) {
	const plainFlow = `{"nodes":[
		{"id":"in","type":"ChatInput","data":{"should_store_message":false}},
		{"id":"mcp","type":"MCPTools","data":{"mcp_server":%s,"tool":%q,"a":2,"b":"%s","id":"groceries"}},
		{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
	],"edges":[{"source":"in","sourceHandle":"message","target":"mcp","targetHandle":"%s"},
		{"source":"mcp","sourceHandle":"response","target":"out","targetHandle":"input_value"}]}`
	tests := []struct {
		name, tool, b, edgeTo, input, want string
	}{
		// A JSON object in a text item becomes the row (LangFlow's
		// process_output_item); b arrives by edge as text and is read as the
		// number the schema asks for.
		{"add, b by edge", "add", "0", "b", "40", "|   sum |\n|------:|\n|    42 |"},
		// Plain text is a row {type, text}.
		{"fetch_note", "fetch_note", "0", "unused", "", "| type   | text         |\n|:-------|:-------------|\n| text   | buy oat milk |"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			ns := withNotes(t, h)
			data := fmt.Sprintf(plainFlow, mcpServerValue, tt.tool, tt.b, tt.edgeTo)
			if tt.edgeTo == "unused" {
				data = strings.Replace(data, `{"source":"in","sourceHandle":"message","target":"mcp","targetHandle":"unused"},`, "", 1)
			}
			got, err := runFlow(t, h, data, tt.input, nil)
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			if got != tt.want {
				t.Errorf("output:\ngot  %q\nwant %q", got, tt.want)
			}
			if n := ns.calls.Load(); n != 1 {
				t.Errorf("tool calls the server answered: got %d, want 1", n)
			}
		})
	}
}

func TestMCPToolErrorsNameTheNodeAndTool(t *testing.T) {
	const flowJSON = `{"nodes":[
		{"id":"mcp","type":"MCPTools","data":{"mcp_server":` + mcpServerValue + `,"tool":"fetch_note","id":%q}},
		{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
	],"edges":[{"source":"mcp","sourceHandle":"response","target":"out","targetHandle":"input_value"}]}`
	t.Run("the server's error", func(t *testing.T) {
		h := newHarness(t)
		withNotes(t, h)
		_, err := runFlow(t, h, fmt.Sprintf(flowJSON, "taxes"), "", nil)
		var re *run.RunError
		if !errors.As(err, &re) || re.NodeID != "mcp" {
			t.Fatalf("run: got %v, want a run error at node mcp", err)
		}
		for _, want := range []string{"node mcp", `"fetch_note"`, "no note taxes"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
	})
	t.Run("a result over the tool response cap", func(t *testing.T) {
		h := newHarness(t)
		withNotes(t, h)
		h.exec.Guard = &run.Guard{MaxResponseBytes: 16 << 10}
		_, err := runFlow(t, h, fmt.Sprintf(flowJSON, "big"), "", nil)
		if errs.CodeOf(err) != errs.TooLarge || !strings.Contains(err.Error(), "node mcp") || !strings.Contains(err.Error(), "max_tool_response_bytes") {
			t.Fatalf("run: got %v (code %q), want too_large naming node mcp and max_tool_response_bytes", err, errs.CodeOf(err))
		}
	})
	t.Run("a server refusing the headers", func(t *testing.T) {
		h := newHarness(t)
		withNotes(t, h)
		h.exec.MCPServers[0].Headers = nil
		_, err := runFlow(t, h, fmt.Sprintf(flowJSON, "groceries"), "", nil)
		if err == nil || !strings.Contains(err.Error(), "node mcp") || !strings.Contains(err.Error(), "MCP server notes") {
			t.Fatalf("run: got %v, want an error naming node mcp and server notes", err)
		}
	})
}

func TestMCPServerNotConfiguredIs422(t *testing.T) {
	const flowJSON = `{"nodes":[
		{"id":"mcp","type":"MCPTools","data":{"mcp_server":` + mcpServerValue + `,"tool":"add","a":1,"b":2}},
		{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
	],"edges":[{"source":"mcp","sourceHandle":"response","target":"out","targetHandle":"input_value"}]}`
	tests := []struct {
		name    string
		servers bool
		tweaks  map[string]map[string]any
		want    string
	}{
		{"no servers configured", false, nil, "no MCP servers are configured"},
		// A tweak may pick another server, but only a declared one.
		{"a server not declared", true, map[string]map[string]any{"mcp": {"mcp_server": map[string]any{"name": "elsewhere", "config": map[string]any{"url": "http://10.0.0.1/"}}}},
			`"elsewhere", which the mcp_servers config section does not declare`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			var ns *notesServer
			if tt.servers {
				ns = withNotes(t, h)
			}
			h.setUserLimits(`{"requests": "100/min"}`)
			f := h.upload([]byte(flowJSON), "mcp")
			_, err := h.svc.Run(h.member, f.ID, run.RunRequest{Tweaks: tt.tweaks}, nil)
			e, ok := errors.AsType[*errs.Error](err)
			if !ok || e.Code != errs.Unprocessable || e.Field != "nodes.mcp.mcp_server" {
				t.Fatalf("run: got %v, want unprocessable at nodes.mcp.mcp_server", err)
			}
			if !strings.Contains(e.Message, tt.want) || !strings.Contains(e.Message, "mcp_servers") {
				t.Errorf("message %q does not say %q and name mcp_servers", e.Message, tt.want)
			}
			if use := h.userUse(); use.Requests.Level != 0 {
				t.Errorf("requests charged for a refused run: got %d, want 0", use.Requests.Level)
			}
			if ns != nil && ns.calls.Load() != 0 {
				t.Errorf("the server answered %d calls, want none", ns.calls.Load())
			}
		})
	}
}

// fakeOpenAI is an OpenAI chat completions endpoint that, as a model with
// tools does, first calls the tool "add" with {"a":2,"b":40}, then answers
// with what the tool returned. It keeps the request bodies.
type fakeOpenAI struct {
	*httptest.Server
	mu     sync.Mutex
	bodies []map[string]any
}

func newFakeOpenAI(t *testing.T) *fakeOpenAI {
	t.Helper()
	f := &fakeOpenAI{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/chat/completions") {
			http.NotFound(w, r)
			return
		}
		var body map[string]any
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.bodies = append(f.bodies, body)
		f.mu.Unlock()
		msgs, _ := body["messages"].([]any)
		last, _ := msgs[len(msgs)-1].(map[string]any)
		message := `{"role":"assistant","content":null,"tool_calls":[{"id":"call_Mx1","type":"function","function":{"name":"add","arguments":"{\"a\":2,\"b\":40}"}}]}`
		finish := "tool_calls"
		if last["role"] == "tool" {
			answer, _ := json.Marshal("The tool says " + fmt.Sprint(last["content"]))
			message = `{"role":"assistant","content":` + string(answer) + `,"refusal":null}`
			finish = "stop"
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"chatcmpl-9x","object":"chat.completion","created":1733260000,"model":"gpt-4o-mini-2024-07-18",
			"choices":[{"index":0,"message":%s,"logprobs":null,"finish_reason":%q}],
			"usage":{"prompt_tokens":120,"completion_tokens":20,"total_tokens":140},"system_fingerprint":"fp_0ba0d124f1"}`, message, finish)
	}))
	t.Cleanup(f.Close)
	return f
}

// agentFlowWithMCP is LangFlow's Simple Agent starter flow with its
// calculator tool replaced by an MCP Tools node in tool mode, as LangFlow
// exports one.
func agentFlowWithMCP(t *testing.T) []byte {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal(readFile(t, "../../examples/flows/simple-agent.json"), &doc); err != nil {
		t.Fatal(err)
	}
	g := doc
	if d, ok := doc["data"].(map[string]any); ok {
		g = d
	}
	var template map[string]any
	if err := json.Unmarshal([]byte(`{
		"_type": "Component",
		"mcp_server": {"_input_type": "McpInput", "name": "mcp_server", "type": "mcp", "value": `+mcpServerValue+`},
		"tool": {"_input_type": "DropdownInput", "name": "tool", "options": [], "show": false, "value": ""},
		"use_cache": {"_input_type": "BoolInput", "name": "use_cache", "value": false},
		"tool_execution_timeout": {"_input_type": "FloatInput", "name": "tool_execution_timeout", "value": 0},
		"tools_metadata": {"_input_type": "ToolsInput", "name": "tools_metadata", "type": "tools", "value": [
			{"name": "add", "description": "add(a, b) - Add two numbers.", "display_name": "add", "status": true, "tags": ["add"]},
			{"name": "fetch_note", "description": "Fetch a note by its id.", "display_name": "fetch_note", "status": false, "tags": ["fetch_note"]}
		]}
	}`), &template); err != nil {
		t.Fatal(err)
	}
	for _, n := range g["nodes"].([]any) {
		data := n.(map[string]any)["data"].(map[string]any)
		if data["type"] == "CalculatorComponent" {
			data["type"] = "MCPTools"
			node := data["node"].(map[string]any)
			node["template"] = template
			node["display_name"] = "MCP Tools"
			node["tool_mode"] = true
		}
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAgentCallsMCPTool(t *testing.T) {
	model := newFakeOpenAI(t)
	h := newHarness(t, llm.ModelConfig{Name: "gpt-4o-mini", Provider: llm.ProviderOpenAI, BaseURL: model.URL + "/v1",
		APIKey: llm.NewSecret("sk-test"), Default: true, ContextWindow: 128_000})
	ns := withNotes(t, h)
	// The starter flow's URL tool stays; its calls would be refused, and
	// the model never calls it.
	h.setUserLimits(`{"requests": "100/min"}`)
	f := h.upload(agentFlowWithMCP(t), "agent-mcp")
	out, err := h.svc.Run(h.member, f.ID, run.RunRequest{InputValue: "What is 2 + 40?"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if out.Err != nil {
		t.Fatalf("run: %v", out.Err)
	}
	if got, want := out.Result.Outputs[0].Text, `The tool says {"sum":42}`; got != want {
		t.Errorf("answer: got %q, want %q", got, want)
	}
	if n := ns.calls.Load(); n != 1 {
		t.Errorf("tool calls the server answered: got %d, want 1", n)
	}
	// The model was offered the MCP tool with its name, description (as
	// tools_metadata gives it) and input schema; fetch_note, switched off
	// there, was not offered.
	model.mu.Lock()
	first := model.bodies[0]
	model.mu.Unlock()
	var offered map[string]any
	for _, tl := range first["tools"].([]any) {
		fn := tl.(map[string]any)["function"].(map[string]any)
		if fn["name"] == "fetch_note" {
			t.Errorf("fetch_note was offered although tools_metadata switched it off")
		}
		if fn["name"] == "add" {
			offered = fn
		}
	}
	if offered == nil {
		t.Fatalf("the model was not offered add: %v", first["tools"])
	}
	if offered["description"] != "add(a, b) - Add two numbers." {
		t.Errorf("description: got %v", offered["description"])
	}
	params, _ := offered["parameters"].(map[string]any)
	props, _ := params["properties"].(map[string]any)
	a, _ := props["a"].(map[string]any)
	if a["type"] != "number" || a["description"] != "the first number" {
		t.Errorf("parameters: got %v, want add's input schema", params)
	}
	// Governed: the run is one request and the tool call another.
	if use := h.userUse(); use.Requests.Level != 2 {
		t.Errorf("requests the meter counted: got %d, want 2 (the run and the MCP call)", use.Requests.Level)
	}
	// Steps: the agent's node, its two turns and its tool call, and the
	// chat input and output.
	if out.Record.Steps != 6 {
		t.Errorf("steps: got %d, want 6", out.Record.Steps)
	}
}

func TestMCPToolCallIsAGovernedRequest(t *testing.T) {
	const flowJSON = `{"nodes":[
		{"id":"mcp","type":"MCPTools","data":{"mcp_server":` + mcpServerValue + `,"tool":"add","a":1,"b":2}},
		{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
	],"edges":[{"source":"mcp","sourceHandle":"response","target":"out","targetHandle":"input_value"}]}`
	t.Run("counted", func(t *testing.T) {
		h := newHarness(t)
		withNotes(t, h)
		h.setUserLimits(`{"requests": "100/min"}`)
		f := h.upload([]byte(flowJSON), "mcp")
		out, err := h.svc.Run(h.member, f.ID, run.RunRequest{}, nil)
		if err != nil || out.Err != nil {
			t.Fatalf("run: %v, %v", err, out.Err)
		}
		if use := h.userUse(); use.Requests.Level != 2 {
			t.Errorf("requests the meter counted: got %d, want 2 (the run and the MCP call)", use.Requests.Level)
		}
	})
	t.Run("refused past the rate", func(t *testing.T) {
		h := newHarness(t)
		ns := withNotes(t, h)
		// The run itself takes the one request the minute allows.
		h.setUserLimits(`{"requests": "1/min"}`)
		f := h.upload([]byte(flowJSON), "mcp")
		out, err := h.svc.Run(h.member, f.ID, run.RunRequest{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if d, ok := errors.AsType[*quota.Denial](out.Err); !ok || d.Code != quota.CodeRateLimited {
			t.Fatalf("run: got %v, want a rate_limited denial", out.Err)
		}
		if out.Record.Status != run.StatusRateLimited {
			t.Errorf("status: got %s, want %s", out.Record.Status, run.StatusRateLimited)
		}
		if n := ns.calls.Load(); n != 0 {
			t.Errorf("the server answered %d calls, want none", n)
		}
	})
}

func TestMCPSecretsStayOutOfErrorsAndPrints(t *testing.T) {
	srv := run.MCPServer{Name: "notes", URL: "http://mcp.example/mcp", Headers: map[string]string{"Authorization": notesToken}}
	for _, s := range []string{fmt.Sprint(srv), fmt.Sprintf("%+v", srv), fmt.Sprintf("%#v", srv)} {
		if strings.Contains(s, "notes-secret") {
			t.Errorf("printed server shows its header: %s", s)
		}
	}
}
