package llm_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/llm"
)

func simRequest(content string) llm.Request {
	return llm.Request{Model: "simulated", Messages: []llm.Message{
		{Role: llm.RoleSystem, Content: "You are helpful."},
		{Role: llm.RoleUser, Content: content},
	}}
}

func TestSimulatedIsDeterministic(t *testing.T) {
	p := llm.NewSimulated(llm.SimulatedOptions{})
	req := simRequest("How should we share one GPU between three teams?")
	a, err := p.Chat(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := p.Chat(context.Background(), req)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("two answers to one request differ:\n%+v\n%+v", a, b)
	}
	if !a.Simulated || a.Model != "simulated" || a.FinishReason != llm.FinishStop {
		t.Errorf("Simulated, Model, FinishReason = %v, %q, %q; want true, simulated, stop", a.Simulated, a.Model, a.FinishReason)
	}
	if !strings.Contains(a.Text, "How should we share one GPU between three teams") {
		t.Errorf("Text = %q, want it to quote the question", a.Text)
	}
	// Usage is counted like an OpenAI model's.
	want := llm.Usage{InputTokens: llm.CountTokens("gpt-4o", req.Messages), OutputTokens: llm.CountText("gpt-4o", a.Text)}
	if a.Usage != want || want.OutputTokens < 20 {
		t.Errorf("Usage = %+v, want %+v", a.Usage, want)
	}
	other, _ := p.Chat(context.Background(), simRequest("Something else entirely, please"))
	if other.Text == a.Text {
		t.Error("different questions got the same answer")
	}
}

func TestSimulatedMaxTokens(t *testing.T) {
	p := llm.NewSimulated(llm.SimulatedOptions{})
	req := simRequest("Explain quotas.")
	full, _ := p.Chat(context.Background(), req)
	req.MaxTokens = 5
	cut, err := p.Chat(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if cut.FinishReason != llm.FinishLength || cut.Usage.OutputTokens != 5 || llm.CountText("gpt-4o", cut.Text) != 5 {
		t.Errorf("cut = %q (%d tokens, %q), want 5 tokens and finish length", cut.Text, cut.Usage.OutputTokens, cut.FinishReason)
	}
	if !strings.HasPrefix(full.Text, cut.Text) {
		t.Errorf("cut text %q is not a prefix of %q", cut.Text, full.Text)
	}
	req.MaxTokens = 1000
	if roomy, _ := p.Chat(context.Background(), req); roomy.FinishReason != llm.FinishStop || roomy.Text != full.Text {
		t.Errorf("with room: %q, %q; want the full answer, stop", roomy.Text, roomy.FinishReason)
	}
}

func TestSimulatedCalculatorAgent(t *testing.T) {
	p := llm.NewSimulated(llm.SimulatedOptions{})
	tools := []llm.Tool{{Name: "web_search"}, {Name: "Calculator", Parameters: calculator.Parameters}}
	req := llm.Request{Model: "simulated", Tools: tools, Messages: []llm.Message{
		{Role: llm.RoleUser, Content: "What is 12 * (3 + 4)? Thanks."},
	}}

	first, err := p.Chat(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.ToolCalls) != 1 || first.FinishReason != llm.FinishToolCalls || first.Text != "" {
		t.Fatalf("first = %+v, want one tool call", first)
	}
	call := first.ToolCalls[0]
	if call.Name != "Calculator" || call.Arguments != `{"expression":"12 * (3 + 4)"}` || call.ID == "" {
		t.Errorf("call = %+v, want Calculator with the expression", call)
	}
	if first.Usage.OutputTokens == 0 {
		t.Error("a tool call costs no output tokens")
	}

	req.Messages = append(req.Messages,
		llm.Message{Role: llm.RoleAssistant, ToolCalls: first.ToolCalls},
		llm.Message{Role: llm.RoleTool, ToolCallID: call.ID, Content: "84"})
	second, err := p.Chat(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if second.Text != "The result is 84." || len(second.ToolCalls) != 0 || second.FinishReason != llm.FinishStop {
		t.Errorf("second = %+v, want the answer using the result", second)
	}

	// No expression, or no tools: a plain answer.
	for _, r := range []llm.Request{
		{Model: "simulated", Tools: tools, Messages: []llm.Message{{Role: "user", Content: "Tell me about Go."}}},
		{Model: "simulated", Messages: []llm.Message{{Role: "user", Content: "What is 2+2?"}}},
	} {
		if resp, _ := p.Chat(context.Background(), r); len(resp.ToolCalls) != 0 || resp.Text == "" {
			t.Errorf("resp = %+v, want text and no tool call", resp)
		}
	}
	// Without a calc tool, the first tool is called.
	req2 := llm.Request{Model: "simulated", Tools: tools[:1], Messages: []llm.Message{{Role: "user", Content: "2^10"}}}
	if resp, _ := p.Chat(context.Background(), req2); len(resp.ToolCalls) != 1 || resp.ToolCalls[0].Name != "web_search" {
		t.Errorf("resp = %+v, want a call to the first tool", resp)
	}
}

func TestSimulatedLoop(t *testing.T) {
	tools := []llm.Tool{calculator}
	msgs := []llm.Message{
		{Role: llm.RoleUser, Content: "Add 1 + 1 forever"},
		{Role: llm.RoleAssistant, ToolCalls: []llm.ToolCall{{ID: "c1", Name: "calculator", Arguments: `{"expression":"1 + 1"}`}}},
		{Role: llm.RoleTool, ToolCallID: "c1", Content: "2"},
	}
	for name, p := range map[string]struct {
		p     *llm.Simulated
		model string
	}{
		"model name": {llm.NewSimulated(llm.SimulatedOptions{}), llm.SimulatedLoopModel},
		"option":     {llm.NewSimulated(llm.SimulatedOptions{AlwaysCallTool: true}), "simulated"},
	} {
		for i := 0; i < 3; i++ {
			resp, err := p.p.Chat(context.Background(), llm.Request{Model: p.model, Tools: tools, Messages: msgs})
			if err != nil || len(resp.ToolCalls) != 1 || resp.ToolCalls[0].Arguments != `{"expression":"1 + 1"}` {
				t.Fatalf("%s: resp = %+v, %v; want another tool call", name, resp, err)
			}
			msgs = append(msgs, llm.Message{Role: llm.RoleAssistant, ToolCalls: resp.ToolCalls}, llm.Message{Role: llm.RoleTool, ToolCallID: resp.ToolCalls[0].ID, Content: "2"})
		}
	}
}

func TestSimulatedStream(t *testing.T) {
	p := llm.NewSimulated(llm.SimulatedOptions{})
	req := simRequest("Explain token buckets in one line.")
	full, _ := p.Chat(context.Background(), req)
	var deltas []string
	resp, err := p.Stream(context.Background(), req, func(s string) { deltas = append(deltas, s) })
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(resp, full) {
		t.Errorf("Stream = %+v, want what Chat gives: %+v", resp, full)
	}
	if strings.Join(deltas, "") != full.Text || len(deltas) != len(strings.Fields(full.Text)) {
		t.Errorf("deltas = %q, want one per word of %q", deltas, full.Text)
	}
}

func TestSimulatedLatency(t *testing.T) {
	// Timing belongs in benchmarks; this checks only that the options are
	// waited at all (lower bounds) and that cancellation cuts the wait.
	p := llm.NewSimulated(llm.SimulatedOptions{Latency: 30 * time.Millisecond, TokenLatency: time.Millisecond})
	req := simRequest("Explain quotas.")
	start := time.Now()
	resp, err := p.Chat(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if min := 30*time.Millisecond + time.Duration(resp.Usage.OutputTokens)*time.Millisecond; time.Since(start) < min {
		t.Errorf("Chat took %v, want at least %v", time.Since(start), min)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var got strings.Builder
	sresp, err := p.Stream(ctx, req, func(s string) {
		if got.WriteString(s); strings.Count(got.String(), " ") >= 3 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if sresp.Text != got.String() || sresp.Usage.OutputTokens != llm.CountText("gpt-4o", got.String()) || !sresp.Usage.Estimated || sresp.Usage.InputTokens == 0 {
		t.Errorf("partial = %q %+v, want the text delivered (%q) and its tokens", sresp.Text, sresp.Usage, got.String())
	}

	slow := llm.NewSimulated(llm.SimulatedOptions{Latency: time.Hour})
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := slow.Chat(ctx, req); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want DeadlineExceeded", err)
	}
}

func TestFindExpression(t *testing.T) {
	for in, want := range map[string]string{
		"What is 12 * (3 + 4)? Thanks.": "12 * (3 + 4)",
		"compute 2^10":                  "2^10",
		"(what is 2+2)":                 "2+2",
		"What's 3.5 * 2.":               "3.5 * 2",
		"17 % 5 please":                 "17 % 5",
		"-3 + 4":                        "-3 + 4",
		"I have 3 apples":               "",
		"15% of it":                     "",
		"no numbers here":               "",
		"first 1+1 then 100 / 7 - 2":    "100 / 7 - 2",
	} {
		if got := llm.FindExpression(in); got != want {
			t.Errorf("FindExpression(%q) = %q, want %q", in, got, want)
		}
	}
}
