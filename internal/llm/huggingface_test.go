package llm_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/llm"
)

const hfModel = "mistralai/Mistral-7B-Instruct-v0.3"

func hfRequest() llm.Request {
	return llm.Request{
		Model: hfModel,
		Messages: []llm.Message{
			{Role: llm.RoleSystem, Content: "You are terse."},
			{Role: llm.RoleUser, Content: "What is rate limiting?"},
		},
		MaxTokens:   64,
		Temperature: temp(0.7),
	}
}

func TestHuggingFaceChat(t *testing.T) {
	up := newUpstream(t, replay(t, 200, "application/json", "huggingface/generate.json", nil))
	p := llm.NewHuggingFace(up.URL, llm.NewSecret("hf_SECRET_token_0123456789"), nil)
	req := hfRequest()

	resp, err := p.Chat(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	// The stop sequence the API leaves on the end is trimmed.
	if want := " Rate limiting caps how often a client may call an API in a window of time."; resp.Text != want {
		t.Errorf("Text = %q, want %q", resp.Text, want)
	}
	prompt := "System: You are terse.\n\nUser: What is rate limiting?\n\nAssistant:"
	want := llm.Usage{InputTokens: llm.EstimateText(prompt), OutputTokens: llm.EstimateText(resp.Text), Estimated: true}
	if resp.Usage != want {
		t.Errorf("Usage = %+v, want %+v (estimated)", resp.Usage, want)
	}
	if resp.FinishReason != llm.FinishStop {
		t.Errorf("FinishReason = %q, want stop", resp.FinishReason)
	}
	got := up.last(t)
	if got.Path != "/models/"+hfModel {
		t.Errorf("path = %q, want /models/%s", got.Path, hfModel)
	}
	if h := got.Header.Get("Authorization"); h != "Bearer hf_SECRET_token_0123456789" {
		t.Errorf("Authorization = %q, want the Bearer token", h)
	}
	jsonEqual(t, "body", got.Body, `{
		"inputs": "System: You are terse.\n\nUser: What is rate limiting?\n\nAssistant:",
		"parameters": {"max_new_tokens": 64, "temperature": 0.7, "return_full_text": false, "stop": ["\nUser:"]}
	}`)

	var deltas []string
	sresp, err := p.Stream(context.Background(), req, func(s string) { deltas = append(deltas, s) })
	if err != nil || len(deltas) != 1 || deltas[0] != resp.Text || sresp.Text != resp.Text {
		t.Errorf("Stream = %q, %v with deltas %q; want the answer as one delta", sresp.Text, err, deltas)
	}
}

func TestHuggingFaceGreedyWhenTemperatureIsZero(t *testing.T) {
	up := newUpstream(t, replay(t, 200, "application/json", "huggingface/generate.json", nil))
	req := hfRequest()
	req.Temperature = temp(0)
	req.MaxTokens = 5
	resp, err := llm.NewHuggingFace(up.URL, llm.Secret{}, nil).Chat(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	jsonEqual(t, "parameters", up.last(t).Body["parameters"], `{"max_new_tokens": 5, "do_sample": false, "return_full_text": false, "stop": ["\nUser:"]}`)
	if resp.FinishReason != llm.FinishLength {
		t.Errorf("FinishReason = %q, want length: the answer reached MaxTokens", resp.FinishReason)
	}
}

func TestHuggingFaceErrors(t *testing.T) {
	tests := []struct {
		name, fixture string
		status        int
		retryable     bool
		retryAfter    time.Duration
		typ           string
		code          errs.Code
	}{
		{"loading", "huggingface/loading_503.json", 503, true, 20 * time.Second, "", errs.Unavailable},
		{"validation", "huggingface/validation_400.json", 400, false, 0, "validation", errs.Invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newUpstream(t, replay(t, tt.status, "application/json", tt.fixture, nil))
			resp, err := llm.NewHuggingFace(up.URL, llm.NewSecret("hf_SECRET"), nil).Chat(context.Background(), hfRequest())
			var pe *llm.ProviderError
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v, want *ProviderError", err)
			}
			if pe.Provider != "huggingface" || pe.Status != tt.status || pe.Retryable != tt.retryable || pe.RetryAfter != tt.retryAfter || pe.Type != tt.typ || pe.Message == "" {
				t.Errorf("got %+v; want status %d retryable %v after %v type %q", pe, tt.status, tt.retryable, tt.retryAfter, tt.typ)
			}
			if errs.CodeOf(err) != tt.code {
				t.Errorf("code = %s, want %s", errs.CodeOf(err), tt.code)
			}
			if resp.Usage != (llm.Usage{}) {
				t.Errorf("Usage = %+v, want none", resp.Usage)
			}
		})
	}
}

func TestRenderPrompt(t *testing.T) {
	got := llm.RenderPrompt([]llm.Message{
		{Role: llm.RoleSystem, Content: "You are terse."},
		{Role: llm.RoleUser, Content: "What is Go?"},
		{Role: llm.RoleAssistant, Content: "A programming language."},
		{Role: llm.RoleTool, Name: "calc", Content: "42"},
		{Role: llm.RoleUser, Content: "And Rust?"},
	})
	want := "System: You are terse.\n\nUser: What is Go?\n\nAssistant: A programming language.\n\nTool result (calc): 42\n\nUser: And Rust?\n\nAssistant:"
	if got != want {
		t.Errorf("RenderPrompt = %q, want %q", got, want)
	}
}
