package llm

import (
	"context"
	"net/http"
)

// Forwarder is a provider that speaks the OpenAI API itself, so that a
// request in that format can be passed through with every field the caller
// set (tools, response_format, n, seed, logprobs, …) instead of being
// rebuilt from a Request.
type Forwarder interface {
	// Forward posts body, an OpenAI API request the caller has already
	// edited (model, max_tokens, stream_options), to path under the API
	// root ("/chat/completions", "/completions", "/embeddings"). A 2xx
	// answer is returned for the caller to read and close; any other
	// answer, or none, is a *ProviderError with the key scrubbed (or the
	// context's error).
	Forward(ctx context.Context, path string, body []byte, stream bool) (*http.Response, error)
}

var _ Forwarder = (*OpenAI)(nil)

// Forward implements Forwarder.
func (p *OpenAI) Forward(ctx context.Context, path string, body []byte, stream bool) (*http.Response, error) {
	return postBody(ctx, p.client, ProviderOpenAI, p.base+path, p.key, body, stream)
}

// Forwarder returns the model's provider as a Forwarder, or nil when it
// does not speak the OpenAI API (Ollama's native API, Hugging Face, the
// simulated model): callers then translate through Chat and Stream.
func (m *Model) Forwarder() Forwarder {
	f, _ := m.provider.(Forwarder)
	return f
}

// MaxTokensField is the request field that caps a model's output at an
// OpenAI-compatible API: max_completion_tokens for OpenAI's reasoning
// models, which reject max_tokens, else max_tokens (which every
// compatible server knows).
func MaxTokensField(model string) string {
	if usesMaxCompletionTokens(model) {
		return "max_completion_tokens"
	}
	return "max_tokens"
}
