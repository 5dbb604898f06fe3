package llm_test

import (
	"context"
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

func ollamaRequest() llm.Request {
	return llm.Request{
		Model: "llama3.2",
		Messages: []llm.Message{
			{Role: llm.RoleSystem, Content: "You explain rate limiting in one sentence."},
			{Role: llm.RoleUser, Content: "How does a token bucket work?"},
		},
		MaxTokens:   100,
		Temperature: temp(0),
		Stop:        []string{"\n\n"},
	}
}

func TestOllamaChat(t *testing.T) {
	up := newUpstream(t, replay(t, 200, "application/json; charset=utf-8", "ollama/chat.json", nil))
	p := llm.NewOllama(up.URL, llm.Secret{}, nil)

	resp, err := p.Chat(context.Background(), ollamaRequest())
	if err != nil {
		t.Fatal(err)
	}
	if want := "Token buckets refill at a fixed rate; each request spends a token."; resp.Text != want {
		t.Errorf("Text = %q, want %q", resp.Text, want)
	}
	want := llm.Usage{InputTokens: 26, OutputTokens: 15, GPU: 5191566416 * time.Nanosecond}
	if resp.Usage != want {
		t.Errorf("Usage = %+v, want %+v (GPU = total_duration)", resp.Usage, want)
	}
	if resp.FinishReason != llm.FinishStop || resp.Model != "llama3.2" {
		t.Errorf("FinishReason, Model = %q, %q; want stop, llama3.2", resp.FinishReason, resp.Model)
	}
	got := up.last(t)
	if got.Path != "/api/chat" || got.Header.Get("Authorization") != "" {
		t.Errorf("request to %s with Authorization %q; want /api/chat without one", got.Path, got.Header.Get("Authorization"))
	}
	jsonEqual(t, "body", got.Body, `{
		"model": "llama3.2",
		"messages": [
			{"role": "system", "content": "You explain rate limiting in one sentence."},
			{"role": "user", "content": "How does a token bucket work?"}
		],
		"stream": false,
		"options": {"num_predict": 100, "temperature": 0, "stop": ["\n\n"]}
	}`)
}

func TestOllamaStream(t *testing.T) {
	up := newUpstream(t, replayStream(t, "ollama/stream.ndjson", ndjson()))
	p := llm.NewOllama(up.URL, llm.Secret{}, nil)

	var deltas []string
	resp, err := p.Stream(context.Background(), ollamaRequest(), func(s string) { deltas = append(deltas, s) })
	if err != nil {
		t.Fatal(err)
	}
	if len(deltas) != 14 || strings.Join(deltas, "") != resp.Text || resp.Text != "Token buckets refill at a fixed rate; each request spends a token." {
		t.Errorf("deltas = %q, Text = %q; want 14 deltas making the answer", deltas, resp.Text)
	}
	if want := (llm.Usage{InputTokens: 26, OutputTokens: 15, GPU: 5191566416}); resp.Usage != want {
		t.Errorf("Usage = %+v, want %+v", resp.Usage, want)
	}
	if up.last(t).Body["stream"] != true {
		t.Errorf("stream = %v, want true", up.last(t).Body["stream"])
	}
}

func TestOllamaStreamToolCalls(t *testing.T) {
	up := newUpstream(t, replayStream(t, "ollama/stream_tools.ndjson", ndjson()))
	p := llm.NewOllama(up.URL, llm.Secret{}, nil)
	req := llm.Request{
		Model: "llama3.1",
		Messages: []llm.Message{
			{Role: llm.RoleUser, Content: "What is 6*7?"},
			{Role: llm.RoleAssistant, ToolCalls: []llm.ToolCall{{ID: "call_0", Name: "calculator", Arguments: `{"expression": "6*7"}`}}},
			{Role: llm.RoleTool, ToolCallID: "call_0", Name: "calculator", Content: "42"},
			{Role: llm.RoleUser, Content: "And 12*7?"},
		},
		Tools: []llm.Tool{calculator},
	}
	resp, err := p.Stream(context.Background(), req, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []llm.ToolCall{{ID: "call_0", Name: "calculator", Arguments: `{"expression":"12*7"}`}}
	if fmt.Sprint(resp.ToolCalls) != fmt.Sprint(want) {
		t.Errorf("ToolCalls = %+v, want %+v", resp.ToolCalls, want)
	}
	if resp.FinishReason != llm.FinishToolCalls {
		t.Errorf("FinishReason = %q, want tool_calls", resp.FinishReason)
	}
	if want := (llm.Usage{InputTokens: 182, OutputTokens: 22, GPU: 1423571042}); resp.Usage != want {
		t.Errorf("Usage = %+v, want %+v", resp.Usage, want)
	}
	body := up.last(t).Body
	jsonEqual(t, "tools", body["tools"], `[{"type":"function","function":{"name":"calculator","description":"Evaluate an arithmetic expression.",
		"parameters":{"type":"object","properties":{"expression":{"type":"string"}},"required":["expression"]}}}]`)
	// Ollama takes arguments as an object, and names the tool a result came from.
	jsonEqual(t, "messages", body["messages"], `[
		{"role":"user","content":"What is 6*7?"},
		{"role":"assistant","content":"","tool_calls":[{"function":{"name":"calculator","arguments":{"expression":"6*7"}}}]},
		{"role":"tool","content":"42","tool_name":"calculator"},
		{"role":"user","content":"And 12*7?"}
	]`)
}

func TestOllamaPromptFromCacheIsEstimated(t *testing.T) {
	// Ollama leaves prompt_eval_count out when the prompt came from its cache.
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		fmt.Fprint(w, `{"model":"llama3.2","created_at":"2025-03-10T12:31:48.608155Z","message":{"role":"assistant","content":"Yes."},"done_reason":"stop","done":true,"total_duration":91566416,"load_duration":2154458,"prompt_eval_duration":0,"eval_count":2,"eval_duration":79921000}`)
	})
	req := ollamaRequest()
	resp, err := llm.NewOllama(up.URL, llm.Secret{}, nil).Chat(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	want := llm.Usage{InputTokens: llm.CountRequest(req), OutputTokens: 2, GPU: 91566416, Estimated: true}
	if resp.Usage != want {
		t.Errorf("Usage = %+v, want %+v", resp.Usage, want)
	}
}

func TestOllamaStreamCutOff(t *testing.T) {
	o := ndjson()
	o.cutAfter = 3
	up := newUpstream(t, replayStream(t, "ollama/stream.ndjson", o))
	req := ollamaRequest()
	resp, err := llm.NewOllama(up.URL, llm.Secret{}, nil).Stream(context.Background(), req, nil)
	if !errors.Is(err, io.ErrUnexpectedEOF) || !errs.Is(err, errs.Unavailable) {
		t.Fatalf("err = %v, want an unavailable io.ErrUnexpectedEOF", err)
	}
	if resp.Text != "Token buckets refill" {
		t.Errorf("Text = %q, want the three chunks received", resp.Text)
	}
	want := llm.Usage{InputTokens: llm.CountRequest(req), OutputTokens: llm.CountText("llama3.2", "Token buckets refill"), Estimated: true}
	if resp.Usage != want || resp.Usage.GPU != 0 {
		t.Errorf("Usage = %+v, want %+v", resp.Usage, want)
	}
}

func TestOllamaStreamCancel(t *testing.T) {
	o := ndjson()
	o.holdAfter = 2
	up := newUpstream(t, replayStream(t, "ollama/stream.ndjson", o))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	resp, err := llm.NewOllama(up.URL, llm.Secret{}, nil).Stream(ctx, ollamaRequest(), func(string) {
		if n++; n == 2 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if resp.Text != "Token buckets" || !resp.Usage.Estimated || resp.Usage.InputTokens == 0 || resp.Usage.OutputTokens == 0 {
		t.Errorf("resp = %+v, want the partial text with estimated usage", resp)
	}
}

func TestOllamaModelNotFound(t *testing.T) {
	up := newUpstream(t, replay(t, 404, "application/json; charset=utf-8", "ollama/error_404.json", nil))
	_, err := llm.NewOllama(up.URL, llm.Secret{}, nil).Chat(context.Background(), ollamaRequest())
	var pe *llm.ProviderError
	if !errors.As(err, &pe) || pe.Status != 404 || pe.Retryable || pe.Message != `model "llama9" not found, try pulling it first` {
		t.Fatalf("err = %#v, want a 404 *ProviderError with Ollama's message", err)
	}
	if !errs.Is(err, errs.Invalid) {
		t.Errorf("code = %s, want invalid", errs.CodeOf(err))
	}
}

func TestOllamaErrorInStream(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		fmt.Fprintln(w, `{"model":"llama3.2","created_at":"2025-03-10T12:31:43.416799Z","message":{"role":"assistant","content":"Token"},"done":false}`)
		fmt.Fprintln(w, `{"error":"an error was encountered while running the model: unexpected EOF"}`)
	})
	resp, err := llm.NewOllama(up.URL, llm.Secret{}, nil).Stream(context.Background(), ollamaRequest(), nil)
	var pe *llm.ProviderError
	if !errors.As(err, &pe) || !strings.Contains(pe.Message, "running the model") {
		t.Fatalf("err = %v, want the streamed error", err)
	}
	if resp.Text != "Token" || !resp.Usage.Estimated {
		t.Errorf("resp = %+v, want partial text, estimated usage", resp)
	}
}
