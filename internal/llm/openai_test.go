package llm_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/llm"
)

const testKey = "sk-test-SECRET-7f3a9c2e5b1d4680cdef"

func temp(v float64) *float64 { return &v }

func chatRequest() llm.Request {
	return llm.Request{
		Model: "gpt-4o-mini",
		Messages: []llm.Message{
			{Role: llm.RoleSystem, Content: "You explain rate limiting in one sentence."},
			{Role: llm.RoleUser, Content: "How does a token bucket work?", Name: "ada"},
		},
		MaxTokens:   100,
		Temperature: temp(0.2),
		Stop:        []string{"\n\n"},
	}
}

var calculator = llm.Tool{
	Name:        "calculator",
	Description: "Evaluate an arithmetic expression.",
	Parameters:  json.RawMessage(`{"type":"object","properties":{"expression":{"type":"string"}},"required":["expression"]}`),
}

func TestOpenAIChat(t *testing.T) {
	up := newUpstream(t, replay(t, 200, "application/json", "openai/chat.json", nil))
	p := llm.NewOpenAI(up.URL+"/v1", llm.NewSecret(testKey), nil)

	resp, err := p.Chat(context.Background(), chatRequest())
	if err != nil {
		t.Fatal(err)
	}
	if want := "Token buckets refill at a fixed rate; each request spends a token."; resp.Text != want {
		t.Errorf("Text = %q, want %q", resp.Text, want)
	}
	if want := (llm.Usage{InputTokens: 24, OutputTokens: 15}); resp.Usage != want {
		t.Errorf("Usage = %+v, want %+v", resp.Usage, want)
	}
	if resp.FinishReason != llm.FinishStop || resp.Model != "gpt-4o-mini-2024-07-18" || resp.Simulated {
		t.Errorf("FinishReason, Model, Simulated = %q, %q, %v; want stop, gpt-4o-mini-2024-07-18, false", resp.FinishReason, resp.Model, resp.Simulated)
	}

	got := up.last(t)
	if got.Method != http.MethodPost || got.Path != "/v1/chat/completions" {
		t.Errorf("request = %s %s, want POST /v1/chat/completions", got.Method, got.Path)
	}
	if h := got.Header.Get("Authorization"); h != "Bearer "+testKey {
		t.Errorf("Authorization = %q, want the Bearer key", h)
	}
	if ct := got.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	jsonEqual(t, "body", got.Body, `{
		"model": "gpt-4o-mini",
		"messages": [
			{"role": "system", "content": "You explain rate limiting in one sentence."},
			{"role": "user", "content": "How does a token bucket work?", "name": "ada"}
		],
		"max_tokens": 100,
		"temperature": 0.2,
		"stop": ["\n\n"]
	}`)
}

func TestOpenAIChatToolCalls(t *testing.T) {
	up := newUpstream(t, replay(t, 200, "application/json", "openai/chat_tools.json", nil))
	p := llm.NewOpenAI(up.URL, llm.NewSecret(testKey), nil)
	req := llm.Request{
		Model: "gpt-4o-mini",
		Messages: []llm.Message{
			{Role: llm.RoleUser, Content: "What is 6*7?"},
			{Role: llm.RoleAssistant, ToolCalls: []llm.ToolCall{{ID: "call_1", Name: "calculator", Arguments: `{"expression":"6*7"}`}}},
			{Role: llm.RoleTool, ToolCallID: "call_1", Name: "calculator", Content: "42"},
			{Role: llm.RoleUser, Content: "And 12*7?"},
		},
		Tools: []llm.Tool{calculator},
	}
	resp, err := p.Chat(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	want := []llm.ToolCall{{ID: "call_7tY3Hs4QkEVz6n1mKc2RpXwA", Name: "calculator", Arguments: `{"expression":"12*7"}`}}
	if fmt.Sprint(resp.ToolCalls) != fmt.Sprint(want) {
		t.Errorf("ToolCalls = %+v, want %+v", resp.ToolCalls, want)
	}
	if resp.Text != "" || resp.FinishReason != llm.FinishToolCalls {
		t.Errorf("Text, FinishReason = %q, %q; want empty, tool_calls", resp.Text, resp.FinishReason)
	}
	if resp.Usage.InputTokens != 71 || resp.Usage.OutputTokens != 18 {
		t.Errorf("Usage = %+v, want 71 in, 18 out", resp.Usage)
	}
	body := up.last(t).Body
	jsonEqual(t, "tools", body["tools"], `[{"type":"function","function":{"name":"calculator","description":"Evaluate an arithmetic expression.",
		"parameters":{"type":"object","properties":{"expression":{"type":"string"}},"required":["expression"]}}}]`)
	jsonEqual(t, "messages", body["messages"], `[
		{"role":"user","content":"What is 6*7?"},
		{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"calculator","arguments":"{\"expression\":\"6*7\"}"}}]},
		{"role":"tool","content":"42","tool_call_id":"call_1"},
		{"role":"user","content":"And 12*7?"}
	]`)
	if _, ok := body["max_tokens"]; ok {
		t.Error("max_tokens sent although MaxTokens is 0")
	}
}

func TestOpenAIReasoningModelsGetMaxCompletionTokens(t *testing.T) {
	up := newUpstream(t, replay(t, 200, "application/json", "openai/chat.json", nil))
	p := llm.NewOpenAI(up.URL, llm.Secret{}, nil)
	if _, err := p.Chat(context.Background(), llm.Request{Model: "o3-mini", MaxTokens: 50, Messages: []llm.Message{{Role: "user", Content: "hi"}}}); err != nil {
		t.Fatal(err)
	}
	got := up.last(t)
	if got.Body["max_completion_tokens"] != 50.0 || got.Body["max_tokens"] != nil {
		t.Errorf("body = %v, want max_completion_tokens 50 and no max_tokens", got.Body)
	}
	if h := got.Header.Get("Authorization"); h != "" {
		t.Errorf("Authorization = %q, want none without a key", h)
	}
}

func TestOpenAIStream(t *testing.T) {
	up := newUpstream(t, replayStream(t, "openai/stream.sse", sse()))
	p := llm.NewOpenAI(up.URL, llm.NewSecret(testKey), nil)

	var deltas []string
	resp, err := p.Stream(context.Background(), chatRequest(), func(s string) { deltas = append(deltas, s) })
	if err != nil {
		t.Fatal(err)
	}
	wantDeltas := []string{"Token", " buckets", " refill", " at", " a", " fixed", " rate", ";", " each", " request", " spends", " a", " token", "."}
	if fmt.Sprintf("%q", deltas) != fmt.Sprintf("%q", wantDeltas) {
		t.Errorf("deltas = %q, want %q", deltas, wantDeltas)
	}
	if resp.Text != strings.Join(wantDeltas, "") {
		t.Errorf("Text = %q, want the deltas joined", resp.Text)
	}
	if want := (llm.Usage{InputTokens: 24, OutputTokens: 15}); resp.Usage != want {
		t.Errorf("Usage = %+v, want %+v (from the usage chunk)", resp.Usage, want)
	}
	if resp.FinishReason != llm.FinishStop || resp.Model != "gpt-4o-mini-2024-07-18" {
		t.Errorf("FinishReason, Model = %q, %q; want stop, gpt-4o-mini-2024-07-18", resp.FinishReason, resp.Model)
	}
	got := up.last(t)
	if got.Body["stream"] != true {
		t.Errorf("stream = %v, want true", got.Body["stream"])
	}
	jsonEqual(t, "stream_options", got.Body["stream_options"], `{"include_usage": true}`)
	if got.Body["max_tokens"] != 100.0 || got.Body["model"] != "gpt-4o-mini" {
		t.Errorf("model, max_tokens = %v, %v; want gpt-4o-mini, 100", got.Body["model"], got.Body["max_tokens"])
	}
	if h := got.Header.Get("Authorization"); h != "Bearer "+testKey {
		t.Errorf("Authorization = %q, want the Bearer key", h)
	}
}

func TestOpenAIStreamToolCalls(t *testing.T) {
	up := newUpstream(t, replayStream(t, "openai/stream_tools.sse", sse()))
	p := llm.NewOpenAI(up.URL, llm.NewSecret(testKey), nil)
	req := llm.Request{Model: "gpt-4o-mini", Messages: []llm.Message{{Role: "user", Content: "12*7, and the EUR rate?"}}, Tools: []llm.Tool{calculator, {Name: "web_search"}}}

	var deltas int
	resp, err := p.Stream(context.Background(), req, func(string) { deltas++ })
	if err != nil {
		t.Fatal(err)
	}
	want := []llm.ToolCall{
		{ID: "call_Qm2xJ8dP4sLkA1bN7cVt3ZrE", Name: "calculator", Arguments: `{"expression":"12*7"}`},
		{ID: "call_Hk9wT3nB6yRfD2sXq5LpM8aV", Name: "web_search", Arguments: `{"query":"exchange rate EUR"}`},
	}
	if fmt.Sprint(resp.ToolCalls) != fmt.Sprint(want) {
		t.Errorf("ToolCalls = %+v, want %+v", resp.ToolCalls, want)
	}
	if deltas != 0 || resp.Text != "" {
		t.Errorf("text deltas = %d, Text = %q; want none", deltas, resp.Text)
	}
	if resp.FinishReason != llm.FinishToolCalls || resp.Usage != (llm.Usage{InputTokens: 96, OutputTokens: 52}) {
		t.Errorf("FinishReason, Usage = %q, %+v; want tool_calls, 96/52", resp.FinishReason, resp.Usage)
	}
	if tools, _ := up.last(t).Body["tools"].([]any); len(tools) != 2 {
		t.Errorf("tools sent = %v, want 2", up.last(t).Body["tools"])
	}
}

func TestOpenAIStreamCutOff(t *testing.T) {
	// Role chunk plus four content chunks, then the connection drops.
	o := sse()
	o.cutAfter = 5
	up := newUpstream(t, replayStream(t, "openai/stream.sse", o))
	p := llm.NewOpenAI(up.URL, llm.NewSecret(testKey), nil)
	req := chatRequest()

	var got strings.Builder
	resp, err := p.Stream(context.Background(), req, func(s string) { got.WriteString(s) })
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v, want io.ErrUnexpectedEOF", err)
	}
	var pe *llm.ProviderError
	if !errors.As(err, &pe) || !pe.Retryable || pe.Provider != "openai" {
		t.Errorf("err = %#v, want a retryable openai *ProviderError", err)
	}
	if !errs.Is(err, errs.Unavailable) {
		t.Errorf("code = %s, want unavailable", errs.CodeOf(err))
	}
	if want := "Token buckets refill at"; resp.Text != want || got.String() != want {
		t.Errorf("Text = %q, deltas = %q; want %q", resp.Text, got.String(), want)
	}
	want := llm.Usage{InputTokens: llm.CountRequest(req), OutputTokens: llm.CountText(req.Model, resp.Text), Estimated: true}
	if resp.Usage != want || want.InputTokens == 0 || want.OutputTokens != 4 {
		t.Errorf("Usage = %+v, want %+v (estimated, 4 output tokens)", resp.Usage, want)
	}
}

func TestOpenAIStreamCancel(t *testing.T) {
	// Role chunk plus three content chunks, then the server waits.
	o := sse()
	o.holdAfter = 4
	up := newUpstream(t, replayStream(t, "openai/stream.sse", o))
	p := llm.NewOpenAI(up.URL, llm.NewSecret(testKey), nil)
	req := chatRequest()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	resp, err := p.Stream(ctx, req, func(string) {
		if n++; n == 3 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if resp.Text != "Token buckets refill" {
		t.Errorf("Text = %q, want the three chunks received", resp.Text)
	}
	want := llm.Usage{InputTokens: llm.CountRequest(req), OutputTokens: 3, Estimated: true}
	if resp.Usage != want {
		t.Errorf("Usage = %+v, want %+v", resp.Usage, want)
	}
}

func TestOpenAIErrors(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		fixture    string
		header     map[string]string
		wantType   string
		wantCode   string
		retryable  bool
		retryAfter time.Duration
		domain     errs.Code
	}{
		{"invalid key", 401, "openai/error_401.json", nil, "invalid_request_error", "invalid_api_key", false, 0, errs.Unavailable},
		{"rate limit", 429, "openai/error_429.json", map[string]string{"Retry-After": "20", "X-Ratelimit-Remaining-Requests": "0"}, "requests", "rate_limit_exceeded", true, 20 * time.Second, errs.RateLimited},
		{"out of credit", 429, "openai/error_429_quota.json", nil, "insufficient_quota", "insufficient_quota", false, 0, errs.Unavailable},
		{"server error", 500, "openai/error_500.json", nil, "server_error", "", true, 0, errs.Unavailable},
		{"context too long", 400, "openai/error_400.json", nil, "invalid_request_error", "context_length_exceeded", false, 0, errs.Invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newUpstream(t, replay(t, tt.status, "application/json", tt.fixture, tt.header))
			p := llm.NewOpenAI(up.URL, llm.NewSecret(testKey), nil)
			for _, stream := range []bool{false, true} {
				var resp llm.Response
				var err error
				if stream {
					resp, err = p.Stream(context.Background(), chatRequest(), nil)
				} else {
					resp, err = p.Chat(context.Background(), chatRequest())
				}
				var pe *llm.ProviderError
				if !errors.As(err, &pe) {
					t.Fatalf("stream %v: err = %v, want *ProviderError", stream, err)
				}
				if pe.Provider != "openai" || pe.Status != tt.status || pe.Type != tt.wantType || pe.Code != tt.wantCode {
					t.Errorf("stream %v: got provider %q status %d type %q code %q; want openai %d %q %q", stream, pe.Provider, pe.Status, pe.Type, pe.Code, tt.status, tt.wantType, tt.wantCode)
				}
				if pe.Retryable != tt.retryable || pe.RetryAfter != tt.retryAfter {
					t.Errorf("stream %v: Retryable, RetryAfter = %v, %v; want %v, %v", stream, pe.Retryable, pe.RetryAfter, tt.retryable, tt.retryAfter)
				}
				if pe.Message == "" {
					t.Errorf("stream %v: empty message", stream)
				}
				if got := errs.CodeOf(err); got != tt.domain {
					t.Errorf("stream %v: code = %s, want %s", stream, got, tt.domain)
				}
				if resp.Usage != (llm.Usage{}) {
					t.Errorf("stream %v: Usage = %+v, want none for a refused call", stream, resp.Usage)
				}
				for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", pe), pe.Message} {
					if strings.Contains(s, testKey) || strings.Contains(s, "*****") {
						t.Errorf("stream %v: error text %q gives the key away", stream, s)
					}
				}
			}
		})
	}
}

func TestOpenAIErrorEchoingTheKeyIsRedacted(t *testing.T) {
	// Some proxies echo the credentials they were given.
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprintf(w, `{"error":{"message":"key %s is not valid for this deployment","type":"auth_error","code":"%s"}}`,
			strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "), strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
	})
	_, err := llm.NewOpenAI(up.URL, llm.NewSecret(testKey), nil).Chat(context.Background(), chatRequest())
	if err == nil || strings.Contains(fmt.Sprintf("%v %+v %#v", err, err, err), testKey) {
		t.Fatalf("err = %v, want an error without the key", err)
	}
}

func TestOpenAIConnectionRefused(t *testing.T) {
	up := newUpstream(t, replay(t, 200, "application/json", "openai/chat.json", nil))
	url := up.URL
	up.Close()
	resp, err := llm.NewOpenAI(url, llm.NewSecret(testKey), nil).Chat(context.Background(), chatRequest())
	var pe *llm.ProviderError
	if !errors.As(err, &pe) || pe.Status != 0 || !pe.Retryable || !errs.Is(err, errs.Unavailable) {
		t.Fatalf("err = %v, want a retryable, unavailable *ProviderError with no status", err)
	}
	if resp.Usage != (llm.Usage{}) {
		t.Errorf("Usage = %+v, want none: nothing reached the provider", resp.Usage)
	}
}

func TestOpenAIStreamErrorEvent(t *testing.T) {
	// OpenAI reports failures after the headers inside the stream.
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, `data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1741570680,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Partial"},"logprobs":null,"finish_reason":null}]}`+"\n\n")
		fmt.Fprint(w, `data: {"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}`+"\n\n")
	})
	resp, err := llm.NewOpenAI(up.URL, llm.NewSecret(testKey), nil).Stream(context.Background(), chatRequest(), nil)
	var pe *llm.ProviderError
	if !errors.As(err, &pe) || pe.Type != "server_error" || !pe.Retryable {
		t.Fatalf("err = %v, want a retryable server_error", err)
	}
	if resp.Text != "Partial" || !resp.Usage.Estimated || resp.Usage.OutputTokens != 1 {
		t.Errorf("resp = %+v, want the partial text with estimated usage", resp)
	}
}

func TestOpenAIStreamFromServerThatDoesNotStream(t *testing.T) {
	// Some compatible servers ignore "stream" and answer with one body.
	up := newUpstream(t, replay(t, 200, "application/json", "openai/chat.json", nil))
	var deltas []string
	resp, err := llm.NewOpenAI(up.URL, llm.Secret{}, nil).Stream(context.Background(), chatRequest(), func(s string) { deltas = append(deltas, s) })
	if err != nil {
		t.Fatal(err)
	}
	if len(deltas) != 1 || deltas[0] != resp.Text || resp.Usage != (llm.Usage{InputTokens: 24, OutputTokens: 15}) {
		t.Errorf("resp = %+v, deltas %q; want the whole answer as one delta with its usage", resp, deltas)
	}
}
