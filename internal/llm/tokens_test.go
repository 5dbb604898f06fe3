package llm_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/sluicehq/sluice/internal/llm"
)

func TestCountTextKnownCounts(t *testing.T) {
	// Counts from OpenAI's tokenizer (tiktoken's README and cookbook).
	tests := []struct {
		text          string
		cl100k, o200k int
	}{
		{"hello world", 2, 2},
		{"tiktoken is great!", 6, 6},
		{"お誕生日おめでとう", 9, 8},
		{"Hello, world!", 4, 4},
		{"", 0, 0},
	}
	for _, tt := range tests {
		if got := llm.CountText("gpt-4", tt.text); got != tt.cl100k {
			t.Errorf("cl100k_base(%q) = %d, want %d", tt.text, got, tt.cl100k)
		}
		if got := llm.CountText("gpt-4o", tt.text); got != tt.o200k {
			t.Errorf("o200k_base(%q) = %d, want %d", tt.text, got, tt.o200k)
		}
	}
}

// cookbookMessages is the example of OpenAI's "How to count tokens with
// tiktoken", whose counts the API confirmed: 129 prompt tokens on gpt-4 and
// gpt-3.5-turbo, 124 on gpt-4o and gpt-4o-mini.
var cookbookMessages = []llm.Message{
	{Role: "system", Content: "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
	{Role: "system", Name: "example_user", Content: "New synergies will help drive top-line growth."},
	{Role: "system", Name: "example_assistant", Content: "Things working well together will increase revenue."},
	{Role: "system", Name: "example_user", Content: "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
	{Role: "system", Name: "example_assistant", Content: "Let's talk later when we're less busy about how to do better."},
	{Role: "user", Content: "This late pivot means we don't have time to boil the ocean for the client deliverable."},
}

func TestCountTokensMatchesOpenAI(t *testing.T) {
	for model, want := range map[string]int{
		"gpt-3.5-turbo":          129,
		"gpt-4-0613":             129,
		"gpt-4o":                 124,
		"gpt-4o-mini":            124,
		"openai/gpt-4o-mini":     124, // provider prefix ignored
		"o3-mini":                124,
		"gpt-4.1-nano":           124,
		"text-embedding-3-small": 129,
	} {
		if got := llm.CountTokens(model, cookbookMessages); got != want {
			t.Errorf("CountTokens(%s) = %d, want %d", model, got, want)
		}
	}
}

func TestCountTokensOverhead(t *testing.T) {
	msg := llm.Message{Role: "user", Content: "hello world"}
	// 3 per message + "user" (1) + "hello world" (2) + 3 to prime the reply.
	if got := llm.CountTokens("gpt-4o", []llm.Message{msg}); got != 9 {
		t.Errorf("one message = %d, want 9", got)
	}
	// Each further message adds 3 + role + content.
	if got := llm.CountTokens("gpt-4o", []llm.Message{msg, msg}); got != 15 {
		t.Errorf("two messages = %d, want 15", got)
	}
	// A name adds 1 + its tokens ("ada" is 1).
	named := msg
	named.Name = "ada"
	if got := llm.CountTokens("gpt-4o", []llm.Message{named}); got != 11 {
		t.Errorf("named message = %d, want 11", got)
	}
	if got := llm.CountTokens("gpt-4o", nil); got != 0 {
		t.Errorf("no messages = %d, want 0", got)
	}
	// Tool definitions count in CountRequest only.
	req := llm.Request{Model: "gpt-4o", Messages: []llm.Message{msg}, Tools: []llm.Tool{calculator}}
	if got := llm.CountRequest(req); got <= 9 {
		t.Errorf("CountRequest with a tool = %d, want more than the 9 of the message", got)
	}
}

func TestNonOpenAIModelsAreEstimated(t *testing.T) {
	// cl100k_base × 1.1, rounded up.
	if got := llm.EstimateText("hello world"); got != 3 {
		t.Errorf("EstimateText(hello world) = %d, want ceil(2 × 1.1) = 3", got)
	}
	if got := llm.CountText("llama3.1:8b", "tiktoken is great!"); got != 7 {
		t.Errorf("CountText(llama) = %d, want ceil(6 × 1.1) = 7", got)
	}
	if got, want := llm.CountTokens("mistral", cookbookMessages), (129*11+9)/10; got != want {
		t.Errorf("CountTokens(mistral) = %d, want ceil(129 × 1.1) = %d", got, want)
	}
	for model, exact := range map[string]bool{"gpt-4o": true, "gpt-3.5-turbo-0125": true, "o1": true, "llama3": false, "gpt4all": false, "orca-mini": false} {
		if got := llm.IsExactTokenizer(model); got != exact {
			t.Errorf("IsExactTokenizer(%s) = %v, want %v", model, got, exact)
		}
	}
}

func TestCountTokensConcurrently(t *testing.T) {
	texts := []string{"hello world", "tiktoken is great!", "お誕生日おめでとう", strings.Repeat("rate limits ", 50)}
	want := make([]int, len(texts))
	for i, s := range texts {
		want[i] = llm.CountTokens("gpt-4o", []llm.Message{{Role: "user", Content: s}}) + llm.CountText("gpt-4", s)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				k := (g + i) % len(texts)
				if got := llm.CountTokens("gpt-4o", []llm.Message{{Role: "user", Content: texts[k]}}) + llm.CountText("gpt-4", texts[k]); got != want[k] {
					t.Errorf("concurrent count of %q = %d, want %d", texts[k], got, want[k])
				}
			}
		}()
	}
	wg.Wait()
}

// TestTokenizerNeedsNoNetwork counts in a fresh process (so no encoder is
// cached yet) where every HTTP request fails the test and proxies point
// nowhere: the BPE tables must come from the binary.
func TestTokenizerNeedsNoNetwork(t *testing.T) {
	if os.Getenv("LLM_OFFLINE_CHILD") == "1" {
		http.DefaultTransport = failingTransport{t}
		llm.WarmTokenizers()
		if got := llm.CountText("gpt-4o", "hello world") + llm.CountText("gpt-4", "hello world"); got != 4 {
			t.Fatalf("counts offline = %d, want 2 + 2", got)
		}
		return
	}
	if testing.Short() {
		t.Skip("starts a process")
	}
	cache := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestTokenizerNeedsNoNetwork$", "-test.count=1")
	cmd.Env = append(os.Environ(),
		"LLM_OFFLINE_CHILD=1",
		"TIKTOKEN_CACHE_DIR="+cache,
		"HTTP_PROXY=http://127.0.0.1:9", "HTTPS_PROXY=http://127.0.0.1:9", "NO_PROXY=",
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("offline child failed: %v\n%s", err, out)
	}
	if entries, _ := os.ReadDir(cache); len(entries) != 0 {
		t.Errorf("tiktoken cache dir has %d entries, want none: something was downloaded", len(entries))
	}
}

type failingTransport struct{ t *testing.T }

func (f failingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	f.t.Errorf("network request to %s during token counting", r.URL)
	return nil, &net.OpError{Op: "dial", Err: errors.New("no network in this test")}
}

func BenchmarkCountTokens(b *testing.B) {
	llm.WarmTokenizers()
	for _, n := range []int{1, 10} {
		msgs := []llm.Message{{Role: "system", Content: "You are a helpful assistant."}}
		for i := 0; i < n; i++ {
			msgs = append(msgs, llm.Message{Role: "user", Content: "How does a token bucket work, and how is it different from a leaky bucket? Please answer briefly."})
		}
		b.Run(fmt.Sprintf("gpt-4o/%d-messages", n+1), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				llm.CountTokens("gpt-4o", msgs)
			}
		})
	}
	text := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 100)
	b.Run("EstimateText/4.5KB", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			llm.EstimateText(text)
		}
	})
}

func BenchmarkSimulatedChat(b *testing.B) {
	llm.WarmTokenizers()
	p := llm.NewSimulated(llm.SimulatedOptions{})
	req := llm.Request{Model: "simulated", Messages: []llm.Message{{Role: "user", Content: "How does a token bucket work?"}}, MaxTokens: 256}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Chat(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
}
