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
	"testing"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/llm"
)

// structuredFlow is LangFlow's structured-output pattern: a chat input
// into StructuredOutput with a model on "llm", its DataFrame through a
// Parser into a ChatOutput.
const structuredFlow = `{"nodes":[
	{"id":"in","type":"ChatInput","data":{"should_store_message":false}},
	{"id":"lm","type":"OpenAIModel","data":{"model_name":"gpt-4o-mini"}},
	{"id":"so","type":"StructuredOutput","data":{"schema_name":"Person","output_schema":[
		{"name":"name","description":"The person's name","type":"str","multiple":"False"},
		{"name":"age","description":"Age in years","type":"int","multiple":"False"},
		{"name":"tags","description":"Topics","type":"str","multiple":"True"}]}},
	{"id":"p","type":"ParserComponent","data":{"pattern":"{name}/{age}/{tags}","sep":"; "}},
	{"id":"out","type":"ChatOutput","data":{"should_store_message":false}}
],"edges":[{"source":"in","target":"so","targetHandle":"input_value"},
	{"source":"lm","sourceHandle":"model_output","target":"so","targetHandle":"llm"},
	{"source":"so","sourceHandle":"dataframe_output","target":"p"},{"source":"p","target":"out"}]}`

// openAIJSONServer answers chat completions in OpenAI's wire format with
// content, and keeps the request bodies it received.
type openAIJSONServer struct {
	*httptest.Server
	mu     sync.Mutex
	bodies []map[string]any
}

func newOpenAIJSONServer(t *testing.T, content string) *openAIJSONServer {
	t.Helper()
	s := &openAIJSONServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var body map[string]any
		if err := json.Unmarshal(b, &body); err != nil || r.URL.Path != "/v1/chat/completions" {
			http.Error(w, `{"error":{"message":"bad request","type":"invalid_request_error"}}`, http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.bodies = append(s.bodies, body)
		s.mu.Unlock()
		c, _ := json.Marshal(content)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741570283,"model":"gpt-4o-mini-2024-07-18",`+
			`"choices":[{"index":0,"message":{"role":"assistant","content":%s,"refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],`+
			`"usage":{"prompt_tokens":120,"completion_tokens":40,"total_tokens":160,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},`+
			`"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},`+
			`"service_tier":"default","system_fingerprint":"fp_06737a9306"}`, c)
	}))
	t.Cleanup(s.Close)
	return s
}

func TestStructuredOutputOpenAI(t *testing.T) {
	const answer = `{"objects":[{"name":"Ada","age":36,"tags":["math","engines"]},{"name":"Alan","age":41,"tags":[]}]}`
	srv := newOpenAIJSONServer(t, answer)
	h := newHarness(t, llm.ModelConfig{Name: "gpt-4o-mini", Provider: llm.ProviderOpenAI, BaseURL: srv.URL + "/v1", APIKey: llm.NewSecret("sk-test"), Default: true})
	res, err := h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(structuredFlow)), "Ada, 36, likes math and engines. Alan is 41."))
	if err != nil {
		t.Fatal(err)
	}
	if want := "Ada/36/['math', 'engines']; Alan/41/[]"; res.Outputs[0].Text != want {
		t.Errorf("output: got %q, want %q", res.Outputs[0].Text, want)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.bodies) != 1 {
		t.Fatalf("requests: got %d, want 1", len(srv.bodies))
	}
	rf, _ := srv.bodies[0]["response_format"].(map[string]any)
	js, _ := rf["json_schema"].(map[string]any)
	if rf["type"] != "json_schema" || js["name"] != "Person" || js["strict"] != true {
		t.Fatalf("response_format: got %v, want a strict json_schema named Person", srv.bodies[0]["response_format"])
	}
	schema, _ := js["schema"].(map[string]any)
	items := schema["properties"].(map[string]any)["objects"].(map[string]any)["items"].(map[string]any)
	props := items["properties"].(map[string]any)
	if props["age"].(map[string]any)["type"] != "integer" || props["tags"].(map[string]any)["type"] != "array" || items["additionalProperties"] != false {
		t.Errorf("schema items: got %v, want age integer, tags array, closed object", items)
	}
	msgs := srv.bodies[0]["messages"].([]any)
	if sys := msgs[0].(map[string]any); sys["role"] != "system" || !strings.Contains(sys["content"].(string), "extracts structured JSON") {
		t.Errorf("system turn: got %v, want LangFlow's default format instructions", sys)
	}
	for _, tr := range res.Trace {
		if tr.NodeID == "so" && (tr.Calls != 1 || tr.Usage.InputTokens != 120 || tr.Usage.OutputTokens != 40) {
			t.Errorf("so trace: got %+v, want one governed call settling 120+40 tokens", tr)
		}
	}
	if got := h.userUse().TokensDay.Used; got != 160 {
		t.Errorf("user tokens: got %d, want 160", got)
	}
}

func TestStructuredOutputRefusesBadAnswers(t *testing.T) {
	for _, tt := range []struct{ name, answer, want string }{
		{"not JSON", "Sure! Ada is 36.", "not JSON"},
		{"wrong type", `{"objects":[{"name":"Ada","age":"thirty-six","tags":[]}]}`, "objects[0].age is not of type integer"},
		{"missing field", `{"objects":[{"name":"Ada","age":36}]}`, `has no field "tags"`},
		{"no objects", `{"objects":[]}`, "no structured output"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := newOpenAIJSONServer(t, tt.answer)
			h := newHarness(t, llm.ModelConfig{Name: "gpt-4o-mini", Provider: llm.ProviderOpenAI, BaseURL: srv.URL + "/v1", APIKey: llm.NewSecret("sk-test"), Default: true})
			res, err := h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(structuredFlow)), "Ada"))
			var e *errs.Error
			if !errors.As(err, &e) || e.Code != errs.Unprocessable || e.Field != "nodes.so.output_schema" || !strings.Contains(e.Message, tt.want) || !strings.Contains(e.Message, "node so") {
				t.Fatalf("run: got %v, want unprocessable at nodes.so.output_schema saying %q", err, tt.want)
			}
			if res.Usage.InputTokens != 120 {
				t.Errorf("usage: got %+v, want the failed node's call still accounted", res.Usage)
			}
		})
	}
}

// TestStructuredOutputSimulated: offline, the simulated model answers
// with JSON of the schema, the same every time; the Data output holds one
// object as LangFlow's does.
func TestStructuredOutputSimulated(t *testing.T) {
	flowJSON := strings.Replace(structuredFlow, `"sourceHandle":"dataframe_output"`, `"sourceHandle":"structured_output"`, 1)
	h := newHarness(t)
	var outs []string
	for range 2 {
		res, err := h.exec.Execute(context.Background(), h.job(parseFlow(t, []byte(flowJSON)), "Grace Hopper wrote compilers"))
		if err != nil {
			t.Fatal(err)
		}
		outs = append(outs, res.Outputs[0].Text)
		if !res.Simulated {
			t.Errorf("run: want Simulated")
		}
	}
	if want := "Grace Hopper wrote compilers/1/['Grace Hopper wrote compilers']"; outs[0] != want || outs[1] != outs[0] {
		t.Errorf("outputs: got %q, want %q twice", outs, want)
	}
}

func TestStructuredOutputSchemaErrors(t *testing.T) {
	for _, tt := range []struct{ name, schema, want string }{
		{"unknown type", `[{"name":"x","type":"datetime"}]`, `type "datetime"`},
		{"no name", `[{"type":"str"}]`, "has no name"},
		{"duplicate", `[{"name":"x"},{"name":"x"}]`, "twice"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			f := strings.Replace(structuredFlow, `"output_schema":[`, `"output_schema":`+tt.schema+`,"unused":[`, 1)
			_, err := runFlow(t, h, f, "x", nil)
			var e *errs.Error
			if !errors.As(err, &e) || e.Field != "nodes.so.output_schema" || !strings.Contains(e.Message, tt.want) {
				t.Fatalf("run: got %v, want an error at nodes.so.output_schema saying %q", err, tt.want)
			}
		})
	}
}
