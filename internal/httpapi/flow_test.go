package httpapi_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/llm"
)

// sharedFlowDir holds the LangFlow exports the runtime must run unchanged.
const sharedFlowDir = "../../../shared/langflow"

// sharedFlows are the exports, as paths relative to sharedFlowDir.
var sharedFlows = []string{
	"basic-prompt-chaining.json",
	"basic-prompting.json",
	"document-qa.json",
	"memory-chatbot.json",
	"seo-keyword-generator.json",
	"simple-agent.json",
	"twitter-thread-generator.json",
	"v1.0/basic-prompting.json",
	"v1.0/memory-chatbot.json",
}

// readSharedFlow reads one of the shared LangFlow exports.
func readSharedFlow(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(sharedFlowDir, name))
	if err != nil {
		t.Fatalf("the shared LangFlow exports are missing (want them in %s, relative to internal/httpapi): %v", sharedFlowDir, err)
	}
	return data
}

// parsed parses a flow the test uploads, to know its node ids.
func parsed(t testing.TB, data []byte) *flow.Flow {
	t.Helper()
	f, err := flow.Parse(data)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return f
}

// onlyNodeOfType returns the id of the flow's one node of type typ.
func onlyNodeOfType(t testing.TB, f *flow.Flow, typ string) string {
	t.Helper()
	ns := f.NodesOfType(typ)
	if len(ns) != 1 {
		t.Fatalf("flow %q has %d nodes of type %s, want 1", f.Name, len(ns), typ)
	}
	return ns[0].ID
}

// executed returns, in execution order, the nodes a run executes: all but
// those only offered to an agent as tools.
func executed(t testing.TB, f *flow.Flow) []*flow.Node {
	t.Helper()
	order, err := flow.Order(f)
	if err != nil {
		t.Fatal(err)
	}
	var out []*flow.Node
	for _, n := range order {
		edges := f.Outgoing(n.ID)
		toolOnly := len(edges) > 0
		for _, e := range edges {
			toolOnly = toolOnly && e.SourceOutput == flow.ToolOutput
		}
		if !toolOnly {
			out = append(out, n)
		}
	}
	return out
}

// endpointOf makes an endpoint name from a file path: v1.0/memory-chatbot.json
// → v1-0-memory-chatbot.
func endpointOf(path string) string {
	return strings.NewReplacer("/", "-", ".", "-").Replace(strings.TrimSuffix(path, ".json"))
}

// uploadFlow stores a flow and returns its id.
func (e *env) uploadFlow(key string, data []byte, endpoint string) string {
	e.t.Helper()
	path := "/api/v1/flows"
	if endpoint != "" {
		path += "?endpoint_name=" + url.QueryEscape(endpoint)
	}
	r := e.must(201, key, "POST", path, string(data))
	if r.str("id") == "" {
		e.t.Fatalf("upload: no id in %s", r.raw)
	}
	return r.str("id")
}

// use makes e report to a subtest's t until the returned func is called.
func (e *env) use(t *testing.T) (restore func()) {
	old := e.t
	e.t = t
	return func() { e.t = old }
}

// runFlow runs a flow (non-streamed) and returns the answer, whatever its
// status.
func (e *env) runFlow(key, flowRef string, body map[string]any) resp {
	e.t.Helper()
	return e.do(key, "POST", "/api/v1/run/"+flowRef, body)
}

// runRecord fetches a run's record.
func (e *env) runRecord(key, runID string) resp {
	e.t.Helper()
	return e.must(200, key, "GET", "/api/v1/runs/"+runID, nil)
}

// firstOutput returns LangFlow's outputs[0].outputs[0].
func firstOutput(t testing.TB, body map[string]any) map[string]any {
	t.Helper()
	outs, _ := body["outputs"].([]any)
	if len(outs) == 0 {
		t.Fatalf("no outputs in %v", body)
	}
	inner, _ := outs[0].(map[string]any)["outputs"].([]any)
	if len(inner) == 0 {
		t.Fatalf("no outputs[0].outputs in %v", body)
	}
	return inner[0].(map[string]any)
}

// answerText returns outputs[0].outputs[0].results.message.text and the
// component that produced it.
func answerText(t testing.TB, body map[string]any) (text, componentID string) {
	t.Helper()
	o := firstOutput(t, body)
	msg, _ := o["results"].(map[string]any)["message"].(map[string]any)
	text, _ = msg["text"].(string)
	componentID, _ = o["component_id"].(string)
	return text, componentID
}

// traceOf returns a run record's trace entries by node id, and their order.
func traceOf(t testing.TB, rec resp) (map[string]map[string]any, []string) {
	t.Helper()
	raw, ok := rec.body["trace"].([]any)
	if !ok {
		t.Fatalf("run record has no trace: %s", rec.raw)
	}
	by := map[string]map[string]any{}
	var order []string
	for _, v := range raw {
		m := v.(map[string]any)
		id, _ := m["node_id"].(string)
		by[id] = m
		order = append(order, id)
	}
	return by, order
}

func usageNum(m map[string]any, key string) float64 {
	u, _ := m["usage"].(map[string]any)
	return num(u, key)
}

// errStr reads a string from an error body.
func errStr(r resp, key string) string {
	v, _ := errBody(r)[key].(string)
	return v
}

// event is one object of LangFlow's run event stream.
type event struct {
	Event string         `json:"event"`
	Data  map[string]any `json:"data"`
}

// streamRun runs a flow with ?stream=true and returns the events. Each
// event must be one JSON object, the events separated by blank lines.
func (e *env) streamRun(key, flowRef string, body map[string]any) (int, []event) {
	e.t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", e.url+"/api/v1/run/"+flowRef+"?stream=true", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+key)
	hr, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer hr.Body.Close()
	data, err := io.ReadAll(hr.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	if hr.StatusCode != 200 {
		return hr.StatusCode, nil
	}
	if ct := hr.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		e.t.Errorf("stream Content-Type: got %q, want text/event-stream", ct)
	}
	if !bytes.HasSuffix(data, []byte("\n\n")) {
		e.t.Errorf("stream does not end with a blank line: %q", data)
	}
	var events []event
	for _, part := range strings.Split(strings.TrimSpace(string(data)), "\n\n") {
		var ev event
		if err := json.Unmarshal([]byte(part), &ev); err != nil || ev.Event == "" {
			e.t.Fatalf("stream part %q is not an event object: %v", part, err)
		}
		events = append(events, ev)
	}
	return hr.StatusCode, events
}

// ---- fakes of third-party model servers, in their real wire formats ----

// openAIServer speaks OpenAI's chat completions API: JSON with usage, or
// server-sent events ending with a usage chunk when stream_options asks.
type openAIServer struct {
	*httptest.Server
	answer                   string
	promptTokens, completion int

	mu       sync.Mutex
	requests []map[string]any
	fail     int // answer with this HTTP status (429: rate limit) instead
}

func newOpenAIServer(t *testing.T, answer string, promptTokens, completion int) *openAIServer {
	t.Helper()
	s := &openAIServer{answer: answer, promptTokens: promptTokens, completion: completion}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *openAIServer) model() llm.ModelConfig {
	return llm.ModelConfig{Name: "gpt-4o-mini", Provider: llm.ProviderOpenAI, BaseURL: s.URL + "/v1", Default: true,
		InputPricePerMTok: 0.15, OutputPricePerMTok: 0.60, ContextWindow: 128000}
}

func (s *openAIServer) setFail(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = status
}

// bodies returns the request bodies received so far.
func (s *openAIServer) bodies() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

func (s *openAIServer) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != "POST" || r.URL.Path != "/v1/chat/completions" {
		http.Error(w, `{"error":{"message":"Invalid URL","type":"invalid_request_error","param":null,"code":null}}`, 404)
		return
	}
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, `{"error":{"message":"We could not parse the JSON body of your request.","type":"invalid_request_error","param":null,"code":null}}`, 400)
		return
	}
	s.mu.Lock()
	s.requests = append(s.requests, body)
	fail := s.fail
	s.mu.Unlock()
	if fail != 0 {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Retry-After", "20")
		w.Header().Set("x-ratelimit-remaining-requests", "0")
		w.WriteHeader(fail)
		fmt.Fprint(w, `{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-abc on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.","type":"requests","param":null,"code":"rate_limit_exceeded"}}`)
		return
	}
	const head = `"id":"chatcmpl-AbC123","created":1732665600,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1"`
	usage := fmt.Sprintf(`{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}`,
		s.promptTokens, s.completion, s.promptTokens+s.completion)
	if stream, _ := body["stream"].(bool); !stream {
		content, _ := json.Marshal(s.answer)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{%s,"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":%s,"refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":%s,"service_tier":"default"}`,
			head, content, usage)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	flusher := w.(http.Flusher)
	chunk := func(choices, usage string) {
		fmt.Fprintf(w, "data: {%s,\"object\":\"chat.completion.chunk\",\"choices\":%s,\"usage\":%s}\n\n", head, choices, usage)
		flusher.Flush()
	}
	chunk(`[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]`, "null")
	for _, piece := range strings.SplitAfter(s.answer, " ") {
		c, _ := json.Marshal(piece)
		chunk(fmt.Sprintf(`[{"index":0,"delta":{"content":%s},"logprobs":null,"finish_reason":null}]`, c), "null")
	}
	chunk(`[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]`, "null")
	if so, _ := body["stream_options"].(map[string]any); so["include_usage"] == true {
		chunk(`[]`, usage)
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
}

// ollamaServer speaks Ollama's /api/chat: one JSON object, or NDJSON when
// streaming, the last object carrying the counts and timings.
type ollamaServer struct {
	*httptest.Server
	answer        string
	totalDuration time.Duration

	mu    sync.Mutex
	calls int
}

func newOllamaServer(t *testing.T, answer string, totalDuration time.Duration) *ollamaServer {
	t.Helper()
	s := &ollamaServer{answer: answer, totalDuration: totalDuration}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

// Ollama's counts for every call.
const (
	ollamaPromptEval = 26
	ollamaEval       = 298
)

func (s *ollamaServer) callCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

func (s *ollamaServer) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != "POST" || r.URL.Path != "/api/chat" {
		http.Error(w, "404 page not found", 404)
		return
	}
	var body struct {
		Model  string `json:"model"`
		Stream *bool  `json:"stream"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		w.WriteHeader(400)
		fmt.Fprint(w, `{"error":"invalid character in request body"}`)
		return
	}
	s.mu.Lock()
	s.calls++
	s.mu.Unlock()
	const created = `"created_at":"2026-11-27T10:00:00.123456789Z"`
	final := fmt.Sprintf(`{"model":%q,%s,"message":{"role":"assistant","content":%%s},"done_reason":"stop","done":true,"total_duration":%d,"load_duration":5191566,"prompt_eval_count":%d,"prompt_eval_duration":383809000,"eval_count":%d,"eval_duration":%d}`,
		body.Model, created, s.totalDuration.Nanoseconds(), ollamaPromptEval, ollamaEval, s.totalDuration.Nanoseconds()-400_000_000)
	if body.Stream != nil && !*body.Stream {
		c, _ := json.Marshal(s.answer)
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		fmt.Fprintf(w, final+"\n", c)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	flusher := w.(http.Flusher)
	bw := bufio.NewWriter(w)
	for _, piece := range strings.SplitAfter(s.answer, " ") {
		c, _ := json.Marshal(piece)
		fmt.Fprintf(bw, `{"model":%q,%s,"message":{"role":"assistant","content":%s},"done":false}`+"\n", body.Model, created, c)
		bw.Flush()
		flusher.Flush()
	}
	fmt.Fprintf(bw, final+"\n", `""`)
	bw.Flush()
}

// hfServer speaks the Hugging Face inference API's text generation task:
// POST /models/{model} {"inputs": …} → [{"generated_text": …}].
type hfServer struct {
	*httptest.Server
	mu     sync.Mutex
	inputs []string
	paths  []string
}

func newHFServer(t *testing.T, answer string) *hfServer {
	t.Helper()
	s := &hfServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Inputs     string         `json:"inputs"`
			Parameters map[string]any `json:"parameters"`
		}
		if r.Method != "POST" || !strings.HasPrefix(r.URL.Path, "/models/") || json.NewDecoder(r.Body).Decode(&body) != nil {
			w.WriteHeader(400)
			fmt.Fprint(w, `{"error":"Input should be a valid dictionary"}`)
			return
		}
		s.mu.Lock()
		s.inputs = append(s.inputs, body.Inputs)
		s.paths = append(s.paths, r.URL.Path)
		s.mu.Unlock()
		c, _ := json.Marshal(answer)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `[{"generated_text":%s}]`, c)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *hfServer) received() (paths, inputs []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.paths), slices.Clone(s.inputs)
}

// isModelNode reports a node that calls a model when it runs.
func isModelNode(n *flow.Node) bool {
	c := n.Component()
	return c != nil && (c.IsModel || n.Type == flow.TypeAgent || n.Type == flow.TypeLLMChain)
}

// ---- 1. every shared flow runs ----

func TestSharedFlowsRunEndToEnd(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	for _, name := range sharedFlows {
		t.Run(name, func(t *testing.T) {
			defer e.use(t)()
			data := readSharedFlow(t, name)
			f := parsed(t, data)
			id := e.uploadFlow(w.memberKey, data, endpointOf(name))
			// The stored flow is found by id and by endpoint name.
			if got := e.must(200, w.memberKey, "GET", "/api/v1/flows/"+endpointOf(name), nil).str("id"); got != id {
				t.Fatalf("flow by endpoint name: got id %q, want %q", got, id)
			}
			r := e.runFlow(w.memberKey, endpointOf(name), map[string]any{
				"input_value": "What is a vector database?", "input_type": "chat", "output_type": "chat", "session_id": "s-" + endpointOf(name)})
			if name == "document-qa.json" {
				file := onlyNodeOfType(t, f, "File")
				if r.status != 422 || r.errCode() != "unprocessable" || r.errField() != "nodes."+file+".path" {
					t.Fatalf("document-qa without a file: got %d field %q, want 422 field nodes.%s.path: %s", r.status, r.errField(), file, r.raw)
				}
				if !strings.Contains(errStr(r, "message"), file) || errStr(r, "node_id") != file || errStr(r, "run_id") == "" {
					t.Fatalf("document-qa error does not name node %s and the run: %s", file, r.raw)
				}
				return
			}
			if r.status != 200 {
				t.Fatalf("run: got %d, want 200: %s", r.status, r.raw)
			}
			if r.str("session_id") != "s-"+endpointOf(name) {
				t.Errorf("session_id: got %q, want %q", r.str("session_id"), "s-"+endpointOf(name))
			}
			text, comp := answerText(t, r.body)
			if text == "" {
				t.Errorf("outputs[0].outputs[0].results.message.text is empty: %s", r.raw)
			}
			if want := onlyNodeOfType(t, f, "ChatOutput"); comp != want {
				t.Errorf("component_id: got %q, want the ChatOutput %q", comp, want)
			}
			rec := e.runRecord(w.memberKey, r.str("run_id"))
			if rec.str("status") != "succeeded" || rec.str("flow_id") != id {
				t.Fatalf("run record: got status %q flow %q, want succeeded %s: %s", rec.str("status"), rec.str("flow_id"), id, rec.raw)
			}
			trace, order := traceOf(t, rec)
			var want []string
			for _, n := range executed(t, f) {
				want = append(want, n.ID)
			}
			if !slices.Equal(order, want) {
				t.Fatalf("trace nodes: got %v, want %v", order, want)
			}
			models := 0
			for _, n := range executed(t, f) {
				tr := trace[n.ID]
				if tr["status"] != "succeeded" || tr["type"] != n.Type || tr["started_at"] == nil {
					t.Errorf("trace of %s: got %v, want succeeded %s with a start", n.ID, tr, n.Type)
				}
				if d, ok := tr["duration_ms"].(float64); !ok || d < 0 {
					t.Errorf("trace of %s: duration_ms %v, want a duration", n.ID, tr["duration_ms"])
				}
				if isModelNode(n) {
					models++
					if usageNum(tr, "input_tokens") <= 0 || usageNum(tr, "output_tokens") <= 0 || num(tr, "calls") < 1 || tr["model"] == "" {
						t.Errorf("trace of model node %s: got %v, want tokens > 0, a call and the model", n.ID, tr)
					}
					if d, _ := tr["duration_ms"].(float64); d <= 0 {
						t.Errorf("trace of model node %s: duration_ms %v, want > 0", n.ID, d)
					}
				}
			}
			// The run's usage is the sum of its nodes'.
			var in float64
			for _, tr := range trace {
				in += usageNum(tr, "input_tokens")
			}
			if got := usageNum(rec.body, "input_tokens"); got != in || (models > 0 && got == 0) {
				t.Errorf("run input_tokens: got %v, want the nodes' sum %v", got, in)
			}
		})
	}
}

func TestSimpleAgentCallsTheCalculator(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	data := readSharedFlow(t, "simple-agent.json")
	f := parsed(t, data)
	e.uploadFlow(w.memberKey, data, "agent")
	r := e.must(200, w.memberKey, "POST", "/api/v1/run/agent", map[string]any{"input_value": "What is 15*23+7?"})
	text, _ := answerText(t, r.body)
	if !strings.Contains(text, "352") {
		t.Fatalf("answer: got %q, want it to contain 352", text)
	}
	trace, _ := traceOf(t, e.runRecord(w.memberKey, r.str("run_id")))
	agent := onlyNodeOfType(t, f, flow.TypeAgent)
	if got := num(trace[agent], "calls"); got != 2 {
		t.Errorf("agent model calls: got %v, want 2 (call the tool, then answer)", got)
	}
	// Agent steps: the node, two turns, one tool call; plus input and output.
	if got := num(e.runRecord(w.memberKey, r.str("run_id")).body, "steps"); got != 6 {
		t.Errorf("steps: got %v, want 6", got)
	}
}

// ---- 2. the compact seed flow ----

func readCompactSeed(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile("../flow/testdata/compact-seed.json")
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestCompactSeedRunsThroughTheAPI(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	e.uploadFlow(w.memberKey, readCompactSeed(t), "seed")
	r := e.must(200, w.memberKey, "POST", "/api/v1/run/seed", map[string]any{"input_value": "熵"})
	text, comp := answerText(t, r.body)
	if comp != "chain_1" {
		t.Errorf("component_id: got %q, want chain_1 (the node nothing consumes)", comp)
	}
	// The simulated model quotes the prompt it got: the template, filled.
	if !strings.Contains(text, "请解释以下术语：熵") {
		t.Errorf("answer: got %q, want it to quote the rendered prompt 请解释以下术语：熵", text)
	}
	rec := e.runRecord(w.memberKey, r.str("run_id"))
	trace, order := traceOf(t, rec)
	if !slices.Equal(order, []string{"prompt_1", "llm_1", "chain_1"}) {
		t.Errorf("trace: got %v, want prompt_1, llm_1, chain_1", order)
	}
	if m, _ := trace["chain_1"]["model"].(string); !strings.Contains(m, "google/flan-t5-large") {
		t.Errorf("chain model: got %q, want it to say google/flan-t5-large ran on the simulated model", m)
	}
}

func TestCompactSeedOnHuggingFaceWireFormat(t *testing.T) {
	hf := newHFServer(t, " Entropy (熵) is a measure of disorder.")
	e := newEnv(t, llm.ModelConfig{Name: "google/flan-t5-large", Provider: llm.ProviderHuggingFace, BaseURL: hf.URL})
	w := e.makeWorld("acme")
	e.uploadFlow(w.memberKey, readCompactSeed(t), "seed")
	r := e.must(200, w.memberKey, "POST", "/api/v1/run/seed", map[string]any{"input_value": "熵"})
	if text, _ := answerText(t, r.body); text != " Entropy (熵) is a measure of disorder." {
		t.Errorf("answer: got %q, want the generated_text", text)
	}
	paths, inputs := hf.received()
	if len(inputs) != 1 || paths[0] != "/models/google/flan-t5-large" {
		t.Fatalf("Hugging Face calls: got %v, want one POST /models/google/flan-t5-large", paths)
	}
	if !strings.Contains(inputs[0], "请解释以下术语：熵") {
		t.Errorf("inputs: got %q, want the rendered prompt 请解释以下术语：熵", inputs[0])
	}
	rec := e.runRecord(w.memberKey, r.str("run_id"))
	if usageNum(rec.body, "input_tokens") <= 0 || usageNum(rec.body, "output_tokens") <= 0 {
		t.Errorf("usage: got %v, want estimated tokens > 0", rec.body["usage"])
	}
}

// ---- 3. real wire formats through flows ----

func TestOpenAIWireFormatThroughFlow(t *testing.T) {
	const answer = "Vector databases index embeddings for fast similarity search."
	oa := newOpenAIServer(t, answer, 57, 11)
	e := newEnv(t, oa.model())
	w := e.makeWorld("acme")
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/user/"+w.member, map[string]any{"limits": map[string]any{"concurrency": 2}})
	data := readSharedFlow(t, "basic-prompting.json")
	f := parsed(t, data)
	e.uploadFlow(w.memberKey, data, "basic")
	lm := onlyNodeOfType(t, f, "LanguageModelComponent")
	out := onlyNodeOfType(t, f, "ChatOutput")

	t.Run("json", func(t *testing.T) {
		defer e.use(t)()
		r := e.must(200, w.memberKey, "POST", "/api/v1/run/basic", map[string]any{"input_value": "What is a vector database?"})
		if text, _ := answerText(t, r.body); text != answer {
			t.Errorf("answer: got %q, want %q", text, answer)
		}
		// LangFlow's shape: the output's timedelta and duration; the
		// message's source names the model node and its model.
		o := r.body["outputs"].([]any)[0].(map[string]any)["outputs"].([]any)[0].(map[string]any)
		if _, ok := o["timedelta"].(float64); !ok || !strings.HasSuffix(fmt.Sprint(o["duration"]), "ms") && !strings.Contains(fmt.Sprint(o["duration"]), "second") {
			t.Errorf("output timedelta %v duration %v, want LangFlow's", o["timedelta"], o["duration"])
		}
		src := o["results"].(map[string]any)["message"].(map[string]any)["properties"].(map[string]any)["source"].(map[string]any)
		if src["id"] != lm || src["source"] != "gpt-4o-mini" || src["display_name"] == "" {
			t.Errorf("properties.source %v, want the model node %s and gpt-4o-mini", src, lm)
		}
		rec := e.runRecord(w.memberKey, r.str("run_id"))
		if in, o := usageNum(rec.body, "input_tokens"), usageNum(rec.body, "output_tokens"); in != 57 || o != 11 {
			t.Errorf("run usage: got %v in %v out, want the provider's 57 and 11", in, o)
		}
		if got := usageNum(rec.body, "cost_micros"); got != 16 { // 57×0.15 + 11×0.60 = 15.15 µ$, rounded up
			t.Errorf("cost: got %v micro-USD, want 16", got)
		}
		trace, _ := traceOf(t, rec)
		if m := trace[lm]["model"]; m != "gpt-4o-mini" {
			t.Errorf("trace model: got %v, want gpt-4o-mini", m)
		}
		bodies := oa.bodies()
		last := bodies[len(bodies)-1]
		if last["model"] != "gpt-4o-mini" || last["stream"] == true {
			t.Errorf("request: got model %v stream %v, want gpt-4o-mini unstreamed", last["model"], last["stream"])
		}
		msgs, _ := last["messages"].([]any)
		if len(msgs) != 2 || msgs[0].(map[string]any)["role"] != "system" || msgs[1].(map[string]any)["content"] != "What is a vector database?" {
			t.Errorf("messages: got %v, want the Prompt as system message and the input as user message", msgs)
		}
		if u := e.usageOf(w.memberKey, "", "user/"+w.member, "tokens", ""); num(u, "used") != 57+11 {
			t.Errorf("user tokens used: got %v, want 68", u)
		}
	})

	t.Run("stream, the model node not streaming", func(t *testing.T) {
		defer e.use(t)()
		// As LangFlow: a model node whose stream field is off (the export's
		// default) sends no tokens; the messages and the end still stream.
		status, events := e.streamRun(w.memberKey, "basic", map[string]any{"input_value": "Stream it"})
		if status != 200 {
			t.Fatalf("stream: got %d, want 200", status)
		}
		var kinds []string
		for _, ev := range events {
			kinds = append(kinds, ev.Event)
		}
		if want := []string{"add_message", "add_message", "end"}; !slices.Equal(kinds, want) {
			t.Errorf("events: got %v, want %v", kinds, want)
		}
		if last := oa.bodies()[len(oa.bodies())-1]; last["stream"] == true {
			t.Errorf("the provider was asked to stream for a node that does not")
		}
	})

	t.Run("stream", func(t *testing.T) {
		defer e.use(t)()
		status, events := e.streamRun(w.memberKey, "basic", map[string]any{"input_value": "Stream it",
			"tweaks": map[string]any{lm: map[string]any{"stream": true}}})
		if status != 200 {
			t.Fatalf("stream: got %d, want 200", status)
		}
		// LangFlow's order: the user's message, an empty AI message, the
		// tokens under its id (each with a timestamp), the AI message
		// complete under the same id, the end.
		if len(events) < 5 || events[1].Event != "add_message" || events[1].Data["text"] != "" || events[1].Data["sender"] != "Machine" {
			t.Fatalf("events: want an empty AI add_message second, got %v", events)
		}
		streamID := events[1].Data["id"]
		for _, ev := range events[2 : len(events)-2] {
			if ev.Event != "token" || ev.Data["id"] != streamID || ev.Data["timestamp"] == nil {
				t.Errorf("token event %v: want id %v and a timestamp", ev.Data, streamID)
			}
		}
		if got := events[len(events)-2].Data["id"]; got != streamID {
			t.Errorf("the complete AI message has id %v, want the streamed %v", got, streamID)
		}
		last := oa.bodies()[len(oa.bodies())-1]
		if so, _ := last["stream_options"].(map[string]any); last["stream"] != true || so["include_usage"] != true {
			t.Errorf("request: got stream %v stream_options %v, want streamed with include_usage", last["stream"], last["stream_options"])
		}
		var kinds []string
		var tokens strings.Builder
		for _, ev := range events {
			if len(kinds) == 0 || kinds[len(kinds)-1] != ev.Event {
				kinds = append(kinds, ev.Event)
			}
			if ev.Event == "token" {
				chunk, _ := ev.Data["chunk"].(string)
				tokens.WriteString(chunk)
			}
		}
		if want := []string{"add_message", "token", "add_message", "end"}; !slices.Equal(kinds, want) {
			t.Fatalf("events: got %v, want %v", kinds, want)
		}
		if events[0].Data["sender"] != "User" || events[0].Data["text"] != "Stream it" {
			t.Errorf("first add_message: got %v, want the user's message", events[0].Data)
		}
		ai := events[len(events)-2]
		if ai.Data["sender"] != "Machine" || ai.Data["text"] != answer {
			t.Errorf("second add_message: got %v, want the AI's answer", ai.Data)
		}
		if tokens.String() != answer {
			t.Errorf("token chunks: got %q, want %q", tokens.String(), answer)
		}
		result, _ := events[len(events)-1].Data["result"].(map[string]any)
		text, comp := answerText(t, result)
		if text != answer || comp != out {
			t.Errorf("end result: got %q from %q, want %q from %s", text, comp, answer, out)
		}
		rec := e.runRecord(w.memberKey, result["run_id"].(string))
		if in, o := usageNum(rec.body, "input_tokens"), usageNum(rec.body, "output_tokens"); in != 57 || o != 11 {
			t.Errorf("streamed run usage: got %v in %v out, want the usage chunk's 57 and 11", in, o)
		}
	})

	t.Run("provider error", func(t *testing.T) {
		defer e.use(t)()
		oa.setFail(429)
		defer oa.setFail(0)
		before := num(e.usageOf(w.memberKey, "", "user/"+w.member, "tokens", "day"), "used")
		r := e.runFlow(w.memberKey, "basic", map[string]any{"input_value": "fail please"})
		if r.status != 429 || r.errCode() != "rate_limited" || errStr(r, "node_id") != lm || errStr(r, "run_id") == "" {
			t.Fatalf("provider 429: got %d %s, want 429 rate_limited naming node %s and the run", r.status, r.raw, lm)
		}
		if !strings.Contains(errStr(r, "message"), "openai") {
			t.Errorf("message: got %q, want it to name the provider", errStr(r, "message"))
		}
		rec := e.runRecord(w.memberKey, errStr(r, "run_id"))
		if rec.str("status") == "succeeded" || rec.str("error_code") != "rate_limited" {
			t.Errorf("run record: got status %q code %q, want a failed run with rate_limited", rec.str("status"), rec.str("error_code"))
		}
		if in, o := usageNum(rec.body, "input_tokens"), usageNum(rec.body, "output_tokens"); in != 0 || o != 0 {
			t.Errorf("usage of a refused call: got %v/%v, want 0/0 as the provider reported", in, o)
		}
		if after := num(e.usageOf(w.memberKey, "", "user/"+w.member, "tokens", "day"), "used"); after != before {
			t.Errorf("tokens used: got %v after the failed run, want %v as before", after, before)
		}
		if c := e.usageOf(w.memberKey, "", "user/"+w.member, "concurrency", ""); num(c, "used") != 0 || num(c, "limit") != 2 {
			t.Errorf("concurrency after the failed run: got %v, want 0 of 2 used", c)
		}
	})
}

func TestOllamaWireFormatThroughFlow(t *testing.T) {
	const answer = "Sure. A vector database stores embeddings."
	ol := newOllamaServer(t, answer, 1500*time.Millisecond)
	e := newEnv(t, llm.ModelConfig{Name: "llama3.1:8b", Provider: llm.ProviderOllama, BaseURL: ol.URL, GPU: true})
	w := e.makeWorld("acme")
	e.uploadFlow(w.memberKey, readSharedFlow(t, "basic-prompting.json"), "basic")
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprint("stream=", stream), func(t *testing.T) {
			defer e.use(t)()
			var result map[string]any
			if stream {
				status, events := e.streamRun(w.memberKey, "basic", map[string]any{"input_value": "hi"})
				if status != 200 || len(events) == 0 || events[len(events)-1].Event != "end" {
					t.Fatalf("stream: got %d %v, want 200 ending with end", status, events)
				}
				result, _ = events[len(events)-1].Data["result"].(map[string]any)
			} else {
				result = e.must(200, w.memberKey, "POST", "/api/v1/run/basic", map[string]any{"input_value": "hi"}).body
			}
			if text, _ := answerText(t, result); text != answer {
				t.Errorf("answer: got %q, want %q", text, answer)
			}
			rec := e.runRecord(w.memberKey, result["run_id"].(string))
			u := rec.body["usage"].(map[string]any)
			if num(u, "input_tokens") != ollamaPromptEval || num(u, "output_tokens") != ollamaEval || num(u, "gpu_ms") != 1500 {
				t.Errorf("usage: got %v, want prompt_eval_count %d, eval_count %d, total_duration 1500 ms", u, ollamaPromptEval, ollamaEval)
			}
		})
	}
	if u := e.usageOf(w.memberKey, "", "user/"+w.member, "gpu_seconds", "month"); num(u, "used") != 3 {
		t.Errorf("gpu_seconds used: got %v, want 3 (two calls of 1.5 s)", u)
	}
}

// ---- 4. quota denial in the middle of a flow ----

// twoModelFlow is ChatInput → model m1 → model m2 → ChatOutput, each model
// capped at 20 output tokens.
const twoModelFlow = `{"nodes":[
	{"id":"in","type":"ChatInput","data":{}},
	{"id":"m1","type":"LanguageModelComponent","data":{"max_tokens":20}},
	{"id":"m2","type":"LanguageModelComponent","data":{"max_tokens":20}},
	{"id":"out","type":"ChatOutput","data":{}}
],"edges":[
	{"source":"in","sourceHandle":"message","target":"m1","targetHandle":"input_value"},
	{"source":"m1","sourceHandle":"text_output","target":"m2","targetHandle":"input_value"},
	{"source":"m2","sourceHandle":"text_output","target":"out","targetHandle":"input_value"}
]}`

func TestQuotaDeniedMidFlow(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	e.uploadFlow(w.memberKey, []byte(twoModelFlow), "two")
	body := map[string]any{"input_value": "Explain token budgets in one paragraph, please."}
	// A probe run by another user measures the two calls (the simulated
	// model is deterministic).
	probe := e.must(200, w.adminKey, "POST", "/api/v1/run/two", body)
	pt, _ := traceOf(t, e.runRecord(w.adminKey, probe.str("run_id")))
	first := usageNum(pt["m1"], "input_tokens") + usageNum(pt["m1"], "output_tokens")
	secondIn := usageNum(pt["m2"], "input_tokens")
	if usageNum(pt["m1"], "output_tokens") != 20 || secondIn == 0 {
		t.Fatalf("probe: got m1 %v m2 %v, want m1 cut at 20 output tokens", pt["m1"], pt["m2"])
	}
	// The first call's reservation (input + 20) fits; after it, fewer tokens
	// are left than the second call's smallest acceptable reservation
	// (input + 16).
	budget := int(first) + 10
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/user/"+w.member,
		map[string]any{"limits": map[string]any{"tokens": fmt.Sprintf("%d/day", budget), "concurrency": 1}})

	r := e.runFlow(w.memberKey, "two", body)
	if r.status != 429 || r.errCode() != "quota_exceeded" {
		t.Fatalf("run: got %d %s, want 429 quota_exceeded", r.status, r.raw)
	}
	eb := errBody(r)
	if eb["scope"] != "user/"+w.member || eb["dimension"] != "tokens" || eb["node_id"] != "m2" || eb["run_id"] == "" {
		t.Fatalf("denial: got %s, want scope user/%s, dimension tokens, node_id m2 and the run", r.raw, w.member)
	}
	if num(eb, "used") != first || num(eb, "limit") != float64(budget) {
		t.Errorf("denial: got used %v limit %v, want %v of %d", eb["used"], eb["limit"], first, budget)
	}
	if !strings.Contains(errStr(r, "message"), "m2") {
		t.Errorf("message: got %q, want it to name node m2", errStr(r, "message"))
	}
	rec := e.runRecord(w.memberKey, eb["run_id"].(string))
	if rec.str("status") != "quota_exceeded" || rec.str("error_code") != "quota_exceeded" {
		t.Errorf("run record: got status %q code %q, want quota_exceeded", rec.str("status"), rec.str("error_code"))
	}
	trace, order := traceOf(t, rec)
	if !slices.Equal(order, []string{"in", "m1", "m2"}) || trace["m1"]["status"] != "succeeded" || trace["m2"]["status"] != "failed" {
		t.Errorf("trace: got %v (%v), want in, m1 succeeded, m2 failed", order, rec.body["trace"])
	}
	if got := usageNum(rec.body, "input_tokens") + usageNum(rec.body, "output_tokens"); got != first {
		t.Errorf("run usage: got %v tokens, want the first call's %v", got, first)
	}
	if u := e.usageOf(w.memberKey, "", "user/"+w.member, "tokens", "day"); num(u, "used") != first {
		t.Errorf("user tokens used: got %v, want exactly the first call's %v", u, first)
	}
	if c := e.usageOf(w.memberKey, "", "user/"+w.member, "concurrency", ""); num(c, "used") != 0 || num(c, "limit") != 1 {
		t.Errorf("concurrency: got %v, want 0 of 1 used", c)
	}
}

// ---- 5. run_timeout and max_steps ----

func TestRunTimeout(t *testing.T) {
	e := newEnv(t, llm.ModelConfig{Name: "slow", Provider: llm.ProviderSimulated, Latency: llm.Duration(2 * time.Second), Default: true})
	w := e.makeWorld("acme")
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/user/"+w.member,
		map[string]any{"limits": map[string]any{"run_timeout": "200ms", "concurrency": 1}})
	e.uploadFlow(w.memberKey, readSharedFlow(t, "basic-prompting.json"), "basic")
	r := e.runFlow(w.memberKey, "basic", map[string]any{"input_value": "hi"})
	if r.status != 503 || r.errCode() != "unavailable" || errStr(r, "run_id") == "" {
		t.Fatalf("timed-out run: got %d %s, want 503 unavailable naming the run", r.status, r.raw)
	}
	if !strings.Contains(errStr(r, "message"), "run_timeout") {
		t.Errorf("message: got %q, want it to name run_timeout", errStr(r, "message"))
	}
	rec := e.runRecord(w.memberKey, errStr(r, "run_id"))
	if rec.str("status") != "timeout" {
		t.Errorf("run status: got %q, want timeout", rec.str("status"))
	}
	if c := e.usageOf(w.memberKey, "", "user/"+w.member, "concurrency", ""); num(c, "used") != 0 {
		t.Errorf("concurrency after the timeout: got %v, want 0 used", c)
	}
}

func TestAgentStepLimits(t *testing.T) {
	e := newEnv(t,
		llm.ModelConfig{Name: "simulated", Provider: llm.ProviderSimulated, Default: true},
		llm.ModelConfig{Name: llm.SimulatedLoopModel, Provider: llm.ProviderSimulated})
	w := e.makeWorld("acme")
	data := readSharedFlow(t, "simple-agent.json")
	agent := onlyNodeOfType(t, parsed(t, data), flow.TypeAgent)
	e.uploadFlow(w.memberKey, data, "agent")
	tests := []struct {
		name   string
		limits map[string]any
		tweak  map[string]any
		calls  float64
	}{
		// ChatInput, the Agent node, then turn, tool, turn, tool: the 6th step is refused.
		{"max_steps cap", map[string]any{"max_steps": 5}, map[string]any{"model_name": llm.SimulatedLoopModel}, 2},
		{"max_iterations of the node", map[string]any{}, map[string]any{"model_name": llm.SimulatedLoopModel, "max_iterations": 3}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer e.use(t)()
			if r := e.setLimits(e.admin, "user/"+w.member, map[string]any{"limits": tt.limits}); r.status != 200 {
				t.Fatalf("set limits: %d %s", r.status, r.raw)
			}
			r := e.runFlow(w.memberKey, "agent", map[string]any{"input_value": "loop forever", "tweaks": map[string]any{agent: tt.tweak}})
			if r.status != 429 || r.errCode() != "quota_exceeded" || errStr(r, "node_id") != agent {
				t.Fatalf("got %d %s, want 429 quota_exceeded naming node %s", r.status, r.raw, agent)
			}
			rec := e.runRecord(w.memberKey, errStr(r, "run_id"))
			if rec.str("status") != "step_limit_exceeded" {
				t.Errorf("run status: got %q, want step_limit_exceeded", rec.str("status"))
			}
			trace, _ := traceOf(t, rec)
			if got := num(trace[agent], "calls"); got != tt.calls {
				t.Errorf("agent model calls: got %v, want %v", got, tt.calls)
			}
			if m, _ := trace[agent]["model"].(string); m != llm.SimulatedLoopModel {
				t.Errorf("agent model: got %q, want %s", m, llm.SimulatedLoopModel)
			}
		})
	}
}

// ---- 6. GPU time ----

func TestGPUSecondsBudget(t *testing.T) {
	ol := newOllamaServer(t, "Answer from the GPU.", 1500*time.Millisecond)
	e := newEnv(t, llm.ModelConfig{Name: "llama3.1:70b", Provider: llm.ProviderOllama, BaseURL: ol.URL, GPU: true, Default: true})
	w := e.makeWorld("acme")
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/user/"+w.member,
		map[string]any{"limits": map[string]any{"gpu_seconds": "4/month", "concurrency": 1}})
	e.uploadFlow(w.memberKey, readSharedFlow(t, "basic-prompting.json"), "basic")
	for i, wantUsed := range []float64{2, 3, 5} { // 1.5 s each, shown rounded up
		r := e.runFlow(w.memberKey, "basic", map[string]any{"input_value": "hi"})
		if r.status != 200 {
			t.Fatalf("call %d: got %d %s, want 200", i+1, r.status, r.raw)
		}
		if got := num(r.body["usage"].(map[string]any), "gpu_seconds"); got != 1.5 {
			t.Errorf("call %d: charged %v GPU seconds, want 1.5", i+1, got)
		}
		if u := e.usageOf(w.memberKey, "", "user/"+w.member, "gpu_seconds", "month"); num(u, "used") != wantUsed {
			t.Errorf("after call %d: gpu_seconds %v, want used %v", i+1, u, wantUsed)
		}
	}
	r := e.runFlow(w.memberKey, "basic", map[string]any{"input_value": "hi"})
	if r.status != 429 || r.errCode() != "quota_exceeded" || errStr(r, "dimension") != "gpu_seconds" || errStr(r, "scope") != "user/"+w.member {
		t.Fatalf("call 4: got %d %s, want 429 quota_exceeded on gpu_seconds of user/%s", r.status, r.raw, w.member)
	}
	if got := ol.callCount(); got != 3 {
		t.Errorf("Ollama calls: got %d, want 3 (the refused call never reaches it)", got)
	}
	if c := e.usageOf(w.memberKey, "", "user/"+w.member, "concurrency", ""); num(c, "used") != 0 {
		t.Errorf("concurrency after the refusal: got %v, want 0 used", c)
	}
}

func TestFreePlanAndGPUModels(t *testing.T) {
	ol := newOllamaServer(t, "Answer from the GPU.", 1500*time.Millisecond)
	gpu := llm.ModelConfig{Name: "llama3.1:70b", Provider: llm.ProviderOllama, BaseURL: ol.URL, GPU: true, Default: true}
	t.Run("refused", func(t *testing.T) {
		e := newEnv(t, gpu)
		w := e.makeWorld("acme")
		e.must(200, e.admin, "PUT", "/api/v1/admin/limits/tenant/"+w.tenant, map[string]any{"plan": "free"})
		e.uploadFlow(w.memberKey, readSharedFlow(t, "basic-prompting.json"), "basic")
		r := e.runFlow(w.memberKey, "basic", map[string]any{"input_value": "hi"})
		if r.status != 429 || r.errCode() != "quota_exceeded" || errStr(r, "dimension") != "gpu_seconds" || errStr(r, "scope") != "tenant/"+w.tenant {
			t.Fatalf("GPU model on the free plan: got %d %s, want 429 quota_exceeded on gpu_seconds of the tenant", r.status, r.raw)
		}
		if !strings.Contains(errStr(r, "message"), "gpu_seconds") {
			t.Errorf("message: got %q, want it to say gpu_seconds", errStr(r, "message"))
		}
		if ol.callCount() != 0 {
			t.Errorf("Ollama was called %d times, want 0", ol.callCount())
		}
	})
	t.Run("cpu fallback", func(t *testing.T) {
		withFallback := gpu
		withFallback.CPUFallback = "llama3.2:3b"
		e := newEnv(t, withFallback, llm.ModelConfig{Name: "llama3.2:3b", Provider: llm.ProviderSimulated})
		w := e.makeWorld("acme")
		e.must(200, e.admin, "PUT", "/api/v1/admin/limits/tenant/"+w.tenant, map[string]any{"plan": "free"})
		data := readSharedFlow(t, "basic-prompting.json")
		lm := onlyNodeOfType(t, parsed(t, data), "LanguageModelComponent")
		e.uploadFlow(w.memberKey, data, "basic")
		r := e.must(200, w.memberKey, "POST", "/api/v1/run/basic", map[string]any{"input_value": "hi"})
		trace, _ := traceOf(t, e.runRecord(w.memberKey, r.str("run_id")))
		m, _ := trace[lm]["model"].(string)
		if !strings.HasPrefix(m, "llama3.2:3b") || !strings.Contains(m, "routed") {
			t.Errorf("trace model: got %q, want llama3.2:3b saying it was routed", m)
		}
		if num(r.body["usage"].(map[string]any), "gpu_seconds") != 0 {
			t.Errorf("usage: got %v, want no GPU time", r.body["usage"])
		}
		if ol.callCount() != 0 {
			t.Errorf("Ollama was called %d times, want 0", ol.callCount())
		}
	})
}

// ---- 7. memory ----

func TestMemoryChatbotRemembersTheSession(t *testing.T) {
	const answer = "Nice to meet you, Ada."
	oa := newOpenAIServer(t, answer, 40, 7)
	e := newEnv(t, oa.model())
	w := e.makeWorld("acme")
	data := readSharedFlow(t, "memory-chatbot.json")
	mem := onlyNodeOfType(t, parsed(t, data), "Memory")
	e.uploadFlow(w.memberKey, data, "memory")
	e.must(200, w.memberKey, "POST", "/api/v1/run/memory", map[string]any{"input_value": "My name is Ada.", "session_id": "chat-1"})
	r := e.must(200, w.memberKey, "POST", "/api/v1/run/memory", map[string]any{"input_value": "What is my name?", "session_id": "chat-1"})
	bodies := oa.bodies()
	if len(bodies) != 2 {
		t.Fatalf("model calls: got %d, want 2", len(bodies))
	}
	msgs := bodies[1]["messages"].([]any)
	sys, _ := msgs[0].(map[string]any)["content"].(string)
	for _, want := range []string{"User: My name is Ada.", "AI: " + answer} {
		if !strings.Contains(sys, want) {
			t.Errorf("second run's system message: got %q, want it to contain %q", sys, want)
		}
	}
	if strings.Contains(sys, "What is my name?") {
		t.Errorf("second run's history holds its own question: %q", sys)
	}
	trace, _ := traceOf(t, e.runRecord(w.memberKey, r.str("run_id")))
	if p, _ := trace[mem]["output_preview"].(string); !strings.Contains(p, "My name is Ada.") {
		t.Errorf("Memory output preview: got %q, want the first run's messages", p)
	}
	// Another session starts empty.
	e.must(200, w.memberKey, "POST", "/api/v1/run/memory", map[string]any{"input_value": "Who am I?", "session_id": "chat-2"})
	sys3, _ := oa.bodies()[2]["messages"].([]any)[0].(map[string]any)["content"].(string)
	if strings.Contains(sys3, "Ada") {
		t.Errorf("a new session sees another's history: %q", sys3)
	}
}

// ---- 8. bad input ----

func TestFlowValidationListsEveryProblem(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	bad := `{"nodes":[
		{"id":"in","type":"ChatInput","data":{}},
		{"id":"x","type":"NoSuchComponent","data":{}},
		{"id":"p1","type":"Prompt","data":{"template":"{a}"}},
		{"id":"p2","type":"Prompt","data":{"template":"{b}"}},
		{"id":"out","type":"ChatOutput","data":{}}
	],"edges":[
		{"source":"in","sourceHandle":"message","target":"ghost","targetHandle":"input_value"},
		{"source":"p1","sourceHandle":"prompt","target":"p2","targetHandle":"b"},
		{"source":"p2","sourceHandle":"prompt","target":"p1","targetHandle":"a"},
		{"source":"p2","sourceHandle":"prompt","target":"out","targetHandle":"input_value"}
	]}`
	r := e.do(w.memberKey, "POST", "/api/v1/flows", bad)
	if r.status != 422 || r.errCode() != "unprocessable" {
		t.Fatalf("got %d %s, want 422 unprocessable", r.status, r.raw)
	}
	got := map[string]bool{}
	for _, p := range errBody(r)["problems"].([]any) {
		pm := p.(map[string]any)
		got[pm["node_id"].(string)+"|"+pm["field"].(string)] = true
	}
	// The API lists what the parser found, each problem by node (and field).
	_, err := flow.Parse([]byte(bad))
	ve := err.(*flow.ValidationError)
	for _, kind := range []flow.ProblemKind{flow.UnknownComponent, flow.DanglingEdge, flow.Cycle} {
		if !ve.Has(kind) {
			t.Fatalf("the parser found no %s problem: %v", kind, ve)
		}
	}
	wantNodes := map[flow.ProblemKind]string{flow.UnknownComponent: "x", flow.DanglingEdge: "ghost", flow.Cycle: "p1"}
	for _, p := range ve.Problems {
		if want, ok := wantNodes[p.Kind]; ok && p.NodeID != want {
			t.Errorf("%s problem names node %q, want %q", p.Kind, p.NodeID, want)
		}
		if !got[p.NodeID+"|"+p.Field] {
			t.Errorf("the answer lacks the %s problem of node %q field %q: %s", p.Kind, p.NodeID, p.Field, r.raw)
		}
	}
	if len(got) < 3 {
		t.Errorf("problems: got %v, want at least 3", got)
	}
	// Nothing was stored.
	if n := len(e.must(200, w.memberKey, "GET", "/api/v1/flows", nil).items()); n != 0 {
		t.Errorf("flows after a refused upload: got %d, want 0", n)
	}
}

func TestRunAndUploadRefusals(t *testing.T) {
	e := newEnv(t)
	a := e.makeWorld("a")
	b := e.makeWorld("b")
	data := readSharedFlow(t, "basic-prompting.json")
	id := e.uploadFlow(a.memberKey, data, "basic")
	big := `{"nodes":[],"pad":"` + strings.Repeat("x", 6<<20) + `"}`
	tests := []struct {
		name, key, method, path string
		body                    any
		status                  int
		code, field             string
	}{
		{"6 MiB flow", a.memberKey, "POST", "/api/v1/flows", big, 413, "too_large", ""},
		{"empty flow body", a.memberKey, "POST", "/api/v1/flows", "", 400, "invalid", ""},
		{"flow of another tenant by id", b.memberKey, "POST", "/api/v1/run/" + id, map[string]any{"input_value": "hi"}, 404, "not_found", ""},
		{"flow of another tenant by name", b.memberKey, "POST", "/api/v1/run/basic", map[string]any{"input_value": "hi"}, 404, "not_found", ""},
		{"another tenant's admin", b.adminKey, "POST", "/api/v1/run/" + id, map[string]any{"input_value": "hi"}, 404, "not_found", ""},
		{"upload into another tenant's project", a.memberKey, "POST", "/api/v1/flows?project_id=" + b.project, string(data), 404, "not_found", "project_id"},
		{"unknown flow", a.memberKey, "POST", "/api/v1/run/nope", map[string]any{}, 404, "not_found", ""},
		{"input_type video", a.memberKey, "POST", "/api/v1/run/basic", map[string]any{"input_value": "hi", "input_type": "video"}, 400, "invalid", "input_type"},
		{"output_type bad", a.memberKey, "POST", "/api/v1/run/basic", map[string]any{"output_type": "pdf"}, 400, "invalid", "output_type"},
		{"known run field of the wrong type", a.memberKey, "POST", "/api/v1/run/basic", `{"input_value":5}`, 400, "invalid", "input_value"},
		{"record of another tenant's run", b.memberKey, "GET", "/api/v1/runs/run_nope", nil, 404, "not_found", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer e.use(t)()
			r := e.do(tt.key, tt.method, tt.path, tt.body)
			if r.status != tt.status || r.errCode() != tt.code || r.errField() != tt.field {
				t.Fatalf("got %d %s field %q, want %d %s field %q: %.300s", r.status, r.errCode(), r.errField(), tt.status, tt.code, tt.field, r.raw)
			}
		})
	}
	// As LangFlow: fields and query parameters it does not know are
	// ignored; errors on its routes carry {"detail"} beside Sluice's error.
	e.must(200, a.memberKey, "POST", "/api/v1/run/basic?fast=1", `{"input_value":"hi","colour":"red"}`)
	if r := e.do(a.memberKey, "POST", "/api/v1/run/nope", map[string]any{}); r.status != 404 || !strings.Contains(r.raw, `"detail":"`) {
		t.Errorf("an error on a LangFlow route: %d %s, want 404 with detail", r.status, r.raw)
	}
	if r := e.do(a.memberKey, "GET", "/api/v1/admin/users/nope", nil); strings.Contains(r.raw, `"detail"`) {
		t.Errorf("an error on Sluice's own route carries LangFlow's detail: %s", r.raw)
	}
	// B cannot read A's run record either.
	run := e.must(200, a.memberKey, "POST", "/api/v1/run/basic", map[string]any{"input_value": "hi"}).str("run_id")
	e.must(404, b.memberKey, "GET", "/api/v1/runs/"+run, nil)
	e.must(404, b.adminKey, "GET", "/api/v1/runs/"+run, nil)
}

func TestTweaksOverrideParametersByNodeID(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	data := readSharedFlow(t, "basic-prompting.json")
	prompt := onlyNodeOfType(t, parsed(t, data), flow.TypePrompt)
	e.uploadFlow(w.memberKey, data, "basic")
	r := e.must(200, w.memberKey, "POST", "/api/v1/run/basic", map[string]any{
		"input_value": "hi", "tweaks": map[string]any{prompt: map[string]any{"template": "Answer like a pirate."}}})
	trace, _ := traceOf(t, e.runRecord(w.memberKey, r.str("run_id")))
	if p := trace[prompt]["output_preview"]; p != "Answer like a pirate." {
		t.Errorf("Prompt output with the tweak: got %q, want the tweaked template", p)
	}
	// Without the tweak, the stored template is used.
	r = e.must(200, w.memberKey, "POST", "/api/v1/run/basic", map[string]any{"input_value": "hi"})
	trace, _ = traceOf(t, e.runRecord(w.memberKey, r.str("run_id")))
	if p, _ := trace[prompt]["output_preview"].(string); !strings.HasPrefix(p, "Answer the user as if you were a GenAI expert") {
		t.Errorf("Prompt output without the tweak: got %q, want the stored template", p)
	}
}

// TestMemoryIsPrivateToItsOwner: a session id is a name the caller picks
// ("chat-1"), so Memory must not hand one user's conversation to another
// user who picks the same name, least of all in a project they do not
// belong to.
func TestMemoryIsPrivateToItsOwner(t *testing.T) {
	const answer = "Nice to meet you, Ada."
	oa := newOpenAIServer(t, answer, 40, 7)
	e := newEnv(t, oa.model())
	w := e.makeWorld("acme")
	data := readSharedFlow(t, "memory-chatbot.json")
	e.uploadFlow(w.memberKey, data, "memory")
	e.must(200, w.memberKey, "POST", "/api/v1/run/memory", map[string]any{"input_value": "My name is Ada and my PIN is 4321.", "session_id": "chat-1"})

	// Bob works in another project of the same tenant, with his own flow.
	p2 := e.must(201, e.admin, "POST", "/api/v1/admin/projects", map[string]any{"tenant_id": w.tenant, "name": "support"}).str("id")
	e.must(201, e.admin, "POST", "/api/v1/admin/memberships", map[string]any{"user_id": w.other, "project_id": p2})
	bob := e.must(201, e.admin, "POST", "/api/v1/admin/keys", map[string]any{"user_id": w.other, "project_id": p2}).str("secret")
	e.uploadFlow(bob, data, "bobs-memory")
	e.must(200, bob, "POST", "/api/v1/run/bobs-memory", map[string]any{"input_value": "What do you know about me?", "session_id": "chat-1"})
	bodies := oa.bodies()
	sys, _ := bodies[len(bodies)-1]["messages"].([]any)[0].(map[string]any)["content"].(string)
	if strings.Contains(sys, "4321") {
		t.Errorf("bob's run was given alice's conversation: %q", sys)
	}
}

func TestModelAllowListAppliesToFlows(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/user/"+w.member,
		map[string]any{"limits": map[string]any{"models": []string{"gpt-4o"}, "concurrency": 1}})
	data := readSharedFlow(t, "basic-prompting.json")
	lm := onlyNodeOfType(t, parsed(t, data), "LanguageModelComponent")
	e.uploadFlow(w.memberKey, data, "basic")
	r := e.runFlow(w.memberKey, "basic", map[string]any{"input_value": "hi"})
	if r.status != 403 || r.errCode() != "model_not_allowed" || errStr(r, "node_id") != lm || errStr(r, "model") != "simulated" {
		t.Fatalf("got %d %s, want 403 model_not_allowed for model simulated at node %s", r.status, r.raw, lm)
	}
	rec := e.runRecord(w.memberKey, errStr(r, "run_id"))
	if rec.str("status") != "quota_exceeded" || rec.str("error_code") != "model_not_allowed" {
		t.Errorf("run record: got status %q code %q, want quota_exceeded, model_not_allowed", rec.str("status"), rec.str("error_code"))
	}
	if c := e.usageOf(w.memberKey, "", "user/"+w.member, "concurrency", ""); num(c, "used") != 0 {
		t.Errorf("concurrency: got %v, want 0 used", c)
	}
}

func TestStreamedRunFailureAndDisconnect(t *testing.T) {
	oa := newOpenAIServer(t, "never sent", 10, 2)
	e := newEnv(t, oa.model(), llm.ModelConfig{Name: "slow", Provider: llm.ProviderSimulated, Latency: llm.Duration(time.Hour)})
	w := e.makeWorld("acme")
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/user/"+w.member, map[string]any{"limits": map[string]any{"concurrency": 1}})
	data := readSharedFlow(t, "basic-prompting.json")
	lm := onlyNodeOfType(t, parsed(t, data), "LanguageModelComponent")
	e.uploadFlow(w.memberKey, data, "basic")

	t.Run("provider error", func(t *testing.T) {
		defer e.use(t)()
		oa.setFail(429)
		defer oa.setFail(0)
		status, events := e.streamRun(w.memberKey, "basic", map[string]any{"input_value": "hi"})
		if status != 200 || len(events) != 2 || events[0].Event != "add_message" || events[1].Event != "error" {
			t.Fatalf("stream: got %d %v, want the user's add_message then error", status, events)
		}
		ev := events[1].Data
		if ev["status"] != "rate_limited" || ev["run_id"] == nil || !strings.Contains(fmt.Sprint(ev["error"]), lm) {
			t.Errorf("error event: got %v, want status rate_limited, the run and node %s", ev, lm)
		}
	})

	t.Run("client goes away", func(t *testing.T) {
		defer e.use(t)()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		body := `{"input_value":"hi","tweaks":{"` + lm + `":{"model_name":"slow"}}}`
		req, _ := http.NewRequestWithContext(ctx, "POST", e.url+"/api/v1/run/basic?stream=true", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+w.memberKey)
		hr, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		first, err := bufio.NewReader(hr.Body).ReadString('\n')
		if err != nil || !strings.Contains(first, `"add_message"`) {
			t.Fatalf("first event: got %q %v, want add_message", first, err)
		}
		cancel() // the model has not answered: the run is in flight
		hr.Body.Close()
		var rec map[string]any
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			runs := e.must(200, w.memberKey, "GET", "/api/v1/runs", nil).items()
			latest := slices.MaxFunc(runs, func(a, b map[string]any) int { return strings.Compare(a["id"].(string), b["id"].(string)) })
			if latest["status"] != "running" {
				rec = latest
				break
			}
		}
		if rec == nil || rec["status"] != "cancelled" {
			t.Fatalf("run after the client left: got %v, want status cancelled", rec)
		}
		if c := e.usageOf(w.memberKey, "", "user/"+w.member, "concurrency", ""); num(c, "used") != 0 {
			t.Errorf("concurrency after the client left: got %v, want 0 used", c)
		}
		// The slot is free: the next run is admitted.
		e.must(200, w.memberKey, "POST", "/api/v1/run/basic", map[string]any{"input_value": "again"})
	})
}

// TestProviderRateLimitKeepsRetryAfter: a run refused by the provider's rate
// limit answers 429 rate_limited like Sluice's own limits do, so it should
// pass on the provider's Retry-After hint.
func TestProviderRateLimitKeepsRetryAfter(t *testing.T) {
	oa := newOpenAIServer(t, "unused", 1, 1)
	oa.setFail(429) // Retry-After: 20
	e := newEnv(t, oa.model())
	w := e.makeWorld("acme")
	e.uploadFlow(w.memberKey, readSharedFlow(t, "basic-prompting.json"), "basic")
	r := e.runFlow(w.memberKey, "basic", map[string]any{"input_value": "hi"})
	if r.status != 429 || r.header.Get("Retry-After") != "20" {
		t.Fatalf("got %d with Retry-After %q, want 429 with the provider's Retry-After 20", r.status, r.header.Get("Retry-After"))
	}
}

func TestUpdatedFlowRunsItsNewVersion(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	data := readSharedFlow(t, "basic-prompting.json")
	f := parsed(t, data)
	prompt := onlyNodeOfType(t, f, flow.TypePrompt)
	id := e.uploadFlow(w.memberKey, data, "basic")
	previewAfterRun := func() string {
		r := e.must(200, w.memberKey, "POST", "/api/v1/run/basic", map[string]any{"input_value": "hi"})
		trace, _ := traceOf(t, e.runRecord(w.memberKey, r.str("run_id")))
		p, _ := trace[prompt]["output_preview"].(string)
		return p
	}
	if p := previewAfterRun(); !strings.HasPrefix(p, "Answer the user as if you were a GenAI expert") {
		t.Fatalf("first version: got %q", p)
	}
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	for _, n := range raw["data"].(map[string]any)["nodes"].([]any) {
		nm := n.(map[string]any)
		if nm["id"] == prompt {
			nm["data"].(map[string]any)["node"].(map[string]any)["template"].(map[string]any)["template"].(map[string]any)["value"] = "Version two."
		}
	}
	v2, _ := json.Marshal(raw)
	e.must(200, w.memberKey, "PUT", "/api/v1/flows/"+id, string(v2))
	if p := previewAfterRun(); p != "Version two." {
		t.Errorf("after the update: got Prompt output %q, want the new template", p)
	}
}

// TestTenantDefaultModel: a model node that selects no model runs on the
// first model its tenant's limits allow, not the deployment's default.
func TestTenantDefaultModel(t *testing.T) {
	e := newEnv(t,
		llm.ModelConfig{Name: "house-model", Provider: llm.ProviderSimulated, Default: true},
		llm.ModelConfig{Name: "tenant-model", Provider: llm.ProviderSimulated})
	w := e.makeWorld("acme")
	e.uploadFlow(w.memberKey, readSharedFlow(t, "basic-prompting.json"), "basic")
	modelOf := func() string {
		t.Helper()
		r := e.runFlow(w.memberKey, "basic", map[string]any{"input_value": "hi"})
		if r.status != 200 {
			t.Fatalf("run: %d %s", r.status, r.raw)
		}
		rec := e.must(200, w.memberKey, "GET", "/api/v1/runs/"+r.str("run_id"), nil)
		for _, tr := range rec.body["trace"].([]any) {
			if m, _ := tr.(map[string]any)["model"].(string); m != "" {
				return m
			}
		}
		return ""
	}
	if got := modelOf(); got != "house-model" {
		t.Fatalf("before the tenant lists models: ran on %q, want house-model", got)
	}
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/tenant/"+w.tenant, map[string]any{"limits": map[string]any{"models": []string{"tenant-model"}}})
	if got := modelOf(); got != "tenant-model" {
		t.Fatalf("with the tenant's models: ran on %q, want tenant-model", got)
	}
}

// TestRunResponsesCarryRateLimitHeaders: a run is a governed response.
func TestRunResponsesCarryRateLimitHeaders(t *testing.T) {
	e := newEnv(t)
	w := e.makeWorld("acme")
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/user/"+w.member, map[string]any{"limits": map[string]any{"requests": "30/min"}})
	e.uploadFlow(w.memberKey, readSharedFlow(t, "basic-prompting.json"), "basic")
	r := e.runFlow(w.memberKey, "basic", map[string]any{"input_value": "hi"})
	if r.status != 200 || r.header.Get("RateLimit-Limit") != "30" || r.header.Get("RateLimit-Remaining") != "29" || r.header.Get("x-ratelimit-limit-requests") != "30" {
		t.Fatalf("run response: %d with headers %v, want RateLimit-Limit 30, Remaining 29", r.status, r.header)
	}
}

// TestCancelARun: the owner cancels a run waiting on a slow model; it ends
// cancelled at once, says by whom, and gives its slot back. A member of
// another tenant cannot touch it (404), an ended run answers 409, and a
// cancel asked through another instance (the run marked in the store)
// stops the run at its instance's next check.
func TestCancelARun(t *testing.T) {
	e := newEnv(t, llm.ModelConfig{Name: "slow", Provider: llm.ProviderSimulated, Latency: llm.Duration(time.Hour), Default: true})
	w := e.makeWorld("acme")
	v := e.makeWorld("rival")
	e.must(200, e.admin, "PUT", "/api/v1/admin/limits/user/"+w.member, map[string]any{"limits": map[string]any{"concurrency": 1}})
	e.uploadFlow(w.memberKey, readSharedFlow(t, "basic-prompting.json"), "basic")
	start := func() (string, chan int) {
		t.Helper()
		done := make(chan int, 1)
		go func() {
			req, _ := http.NewRequest("POST", e.url+"/api/v1/run/basic", strings.NewReader(`{"input_value":"hi"}`))
			req.Header.Set("Authorization", "Bearer "+w.memberKey)
			hr, err := http.DefaultClient.Do(req)
			if err != nil {
				done <- 0
				return
			}
			hr.Body.Close()
			done <- hr.StatusCode
		}()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			for _, r := range e.must(200, w.memberKey, "GET", "/api/v1/runs", nil).items() {
				if r["status"] == "running" {
					return r["id"].(string), done
				}
			}
		}
		t.Fatal("the run never started")
		return "", nil
	}
	ended := func(id string, done chan int) map[string]any {
		t.Helper()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the cancelled run is still running")
		}
		return e.must(200, w.memberKey, "GET", "/api/v1/runs/"+id, nil).body
	}

	id, done := start()
	e.must(404, v.memberKey, "POST", "/api/v1/runs/"+id+"/cancel", nil)
	if got := e.must(202, w.memberKey, "POST", "/api/v1/runs/"+id+"/cancel", nil).str("status"); got != "cancelling" {
		t.Errorf("cancel answered status %q, want cancelling", got)
	}
	rec := ended(id, done)
	if rec["status"] != "cancelled" || !strings.Contains(fmt.Sprint(rec["error_message"]), "cancelled by user "+w.member) {
		t.Errorf("after cancel: %v %v, want cancelled by the member", rec["status"], rec["error_message"])
	}
	if c := e.usageOf(w.memberKey, "", "user/"+w.member, "concurrency", ""); num(c, "used") != 0 {
		t.Errorf("concurrency after the cancel: %v, want 0 used", c)
	}
	e.must(409, w.memberKey, "POST", "/api/v1/runs/"+id+"/cancel", nil)

	// Another instance asked: the mark in the store, this instance's watch.
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go e.runs.WatchCancels(ctx, 20*time.Millisecond)
	id, done = start()
	if err := e.store.RequestCancel(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	rec = ended(id, done)
	if rec["status"] != "cancelled" || !strings.Contains(fmt.Sprint(rec["error_message"]), "another instance") {
		t.Errorf("after a cancel through another instance: %v %v", rec["status"], rec["error_message"])
	}
}
