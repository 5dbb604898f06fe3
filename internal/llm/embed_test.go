package llm_test

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/llm"
)

func cosine(a, b []float32) float64 {
	var dot, na, nb float64
	for i := range a {
		dot += float64(a[i]) * float64(b[i])
		na += float64(a[i]) * float64(a[i])
		nb += float64(b[i]) * float64(b[i])
	}
	if na == 0 || nb == 0 {
		return 0
	}
	return dot / math.Sqrt(na*nb)
}

func TestSimulatedEmbedPutsSimilarTextsNear(t *testing.T) {
	p := llm.NewSimulated(llm.SimulatedOptions{})
	in := []string{
		"Sluice governs tokens per tenant and project",
		"How does Sluice govern tokens for a tenant?",
		"The cat sat on the warm windowsill all afternoon",
		"",
	}
	r, err := p.Embed(context.Background(), llm.EmbedRequest{Input: in})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Vectors) != len(in) || len(r.Vectors[0]) != llm.SimulatedDimensions {
		t.Fatalf("got %d vectors of %d, want %d of %d", len(r.Vectors), len(r.Vectors[0]), len(in), llm.SimulatedDimensions)
	}
	near, far := cosine(r.Vectors[0], r.Vectors[1]), cosine(r.Vectors[0], r.Vectors[2])
	if near <= far || near < 0.3 {
		t.Errorf("similar texts at cosine %.3f, unrelated at %.3f: want the similar ones nearer", near, far)
	}
	if n := cosine(r.Vectors[3], r.Vectors[3]); n != 0 {
		t.Errorf("empty text: got a non-zero vector")
	}
	if r.Usage.InputTokens == 0 || !r.Simulated {
		t.Errorf("got usage %+v simulated %v, want input tokens counted and simulated", r.Usage, r.Simulated)
	}
	again, _ := p.Embed(context.Background(), llm.EmbedRequest{Input: in[:1], Dimensions: 64})
	if len(again.Vectors[0]) != 64 {
		t.Errorf("dimensions 64: got %d", len(again.Vectors[0]))
	}
	twice, _ := p.Embed(context.Background(), llm.EmbedRequest{Input: in[:1], Dimensions: 64})
	for i := range again.Vectors[0] {
		if again.Vectors[0][i] != twice.Vectors[0][i] {
			t.Fatal("simulated embeddings are not deterministic")
		}
	}
}

func TestOpenAIEmbedWireFormat(t *testing.T) {
	// The answer lists the inputs out of order: index places each.
	u := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"object":"list","data":[` +
			`{"object":"embedding","index":1,"embedding":[0,1,0]},` +
			`{"object":"embedding","index":0,"embedding":[1,0,0]}],` +
			`"model":"text-embedding-3-small","usage":{"prompt_tokens":7,"total_tokens":7}}`))
	})
	p := llm.NewOpenAI(u.URL+"/v1", llm.NewSecret(testKey), nil)
	r, err := p.Embed(context.Background(), llm.EmbedRequest{Model: "text-embedding-3-small", Input: []string{"alpha", "beta"}, Dimensions: 3})
	if err != nil {
		t.Fatal(err)
	}
	req := u.last(t)
	if req.Path != "/v1/embeddings" || req.Body["model"] != "text-embedding-3-small" || req.Body["dimensions"] != float64(3) {
		t.Errorf("got request %s %v", req.Path, req.Body)
	}
	if in, _ := req.Body["input"].([]any); len(in) != 2 || in[0] != "alpha" {
		t.Errorf("got input %v, want [alpha beta]", req.Body["input"])
	}
	if got := req.Header.Get("Authorization"); got != "Bearer "+testKey {
		t.Errorf("got Authorization %q", got)
	}
	if r.Vectors[0][0] != 1 || r.Vectors[1][1] != 1 {
		t.Errorf("got vectors %v, want them in input order", r.Vectors)
	}
	if r.Usage.InputTokens != 7 || r.Usage.Estimated {
		t.Errorf("got usage %+v, want the reported 7 prompt tokens", r.Usage)
	}
}

func TestOpenAIEmbedErrors(t *testing.T) {
	u := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error"}}`))
	})
	p := llm.NewOpenAI(u.URL, llm.NewSecret(testKey), nil)
	r, err := p.Embed(context.Background(), llm.EmbedRequest{Model: "text-embedding-3-small", Input: []string{"x"}})
	var pe *llm.ProviderError
	if !errors.As(err, &pe) || pe.Status != http.StatusBadRequest || !strings.Contains(pe.Message, "context length") {
		t.Fatalf("got %v, want the provider's 400", err)
	}
	if r.Usage.InputTokens != 0 {
		t.Errorf("refused call: got usage %+v, want none", r.Usage)
	}

	short := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"object":"list","data":[{"object":"embedding","index":0,"embedding":[1]}],"usage":{"prompt_tokens":2,"total_tokens":2}}`))
	})
	p = llm.NewOpenAI(short.URL, llm.NewSecret(testKey), nil)
	if _, err := p.Embed(context.Background(), llm.EmbedRequest{Model: "m", Input: []string{"a", "b"}}); !errors.As(err, &pe) {
		t.Errorf("an answer missing an input's vector: got %v, want a malformed-answer error", err)
	}
}
