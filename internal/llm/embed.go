package llm

import (
	"context"
	"encoding/json"
	"hash/fnv"
	"math"
	"strings"
	"unicode"
)

// EmbedRequest is one embeddings call: a batch of texts.
type EmbedRequest struct {
	// Model is the model name the provider knows. Model.Embed fills it in.
	Model string
	Input []string
	// Dimensions asks for vectors of this length (OpenAI's dimensions,
	// text-embedding-3 models); 0 leaves it to the model.
	Dimensions int
}

// EmbedResponse is the vectors of one embeddings call, one per input in
// the order of the inputs, and what the call consumed (input tokens only).
type EmbedResponse struct {
	Vectors   [][]float32
	Usage     Usage
	Model     string
	Simulated bool
}

// Embedder is a provider that serves embeddings. Like Provider's methods,
// Embed returns the usage it knows about together with any error.
type Embedder interface {
	Embed(ctx context.Context, r EmbedRequest) (EmbedResponse, error)
}

var (
	_ Embedder = (*OpenAI)(nil)
	_ Embedder = (*Simulated)(nil)
)

// Embed computes embeddings with the model, r.Model set to its upstream
// name. A provider that serves none (Ollama's native API, Hugging Face
// text generation) answers a *ProviderError that is not retryable.
func (m *Model) Embed(ctx context.Context, r EmbedRequest) (EmbedResponse, error) {
	e, ok := m.provider.(Embedder)
	if !ok {
		return EmbedResponse{}, &ProviderError{Provider: m.cfg.Provider,
			Message: "model " + m.cfg.Name + " (" + m.cfg.Provider + ") serves no embeddings through Sluice; use an OpenAI-compatible deployment"}
	}
	r.Model = m.upstream
	return e.Embed(ctx, r)
}

// CanEmbed reports whether the model's provider serves embeddings.
func (m *Model) CanEmbed() bool {
	_, ok := m.provider.(Embedder)
	return ok
}

type oaEmbedRequest struct {
	Model      string   `json:"model"`
	Input      []string `json:"input"`
	Dimensions int      `json:"dimensions,omitempty"`
}

type oaEmbedResponse struct {
	Data []struct {
		Index     int       `json:"index"`
		Embedding []float32 `json:"embedding"`
	} `json:"data"`
	Model string `json:"model"`
	Usage *struct {
		PromptTokens int `json:"prompt_tokens"`
	} `json:"usage"`
}

// Embed posts the batch to the API's /embeddings and reads the vectors
// back in input order (the answer's index, not its order, places each).
func (p *OpenAI) Embed(ctx context.Context, r EmbedRequest) (EmbedResponse, error) {
	estimate := func() Usage {
		n := 0
		for _, s := range r.Input {
			n += CountText(r.Model, s)
		}
		return Usage{InputTokens: n, Estimated: true}
	}
	resp, err := postJSON(ctx, p.client, ProviderOpenAI, p.base+"/embeddings", p.key,
		oaEmbedRequest{Model: r.Model, Input: r.Input, Dimensions: r.Dimensions}, false)
	if err != nil {
		out := EmbedResponse{Model: r.Model}
		if ctx.Err() != nil {
			out.Usage = estimate() // the provider may have done the work
		}
		return out, err
	}
	status := resp.StatusCode
	body, err := readBody(ctx, ProviderOpenAI, resp)
	if err != nil {
		return EmbedResponse{Model: r.Model, Usage: estimate()}, err
	}
	var v oaEmbedResponse
	if err := json.Unmarshal(body, &v); err != nil {
		return EmbedResponse{Model: r.Model, Usage: estimate()}, malformed(ProviderOpenAI, status, err)
	}
	out := EmbedResponse{Model: v.Model, Vectors: make([][]float32, len(r.Input))}
	if out.Model == "" {
		out.Model = r.Model
	}
	if v.Usage != nil {
		out.Usage = Usage{InputTokens: v.Usage.PromptTokens}
	} else {
		out.Usage = estimate()
	}
	for _, d := range v.Data {
		if d.Index < 0 || d.Index >= len(r.Input) || out.Vectors[d.Index] != nil {
			return out, malformed(ProviderOpenAI, status, errBadIndex)
		}
		out.Vectors[d.Index] = d.Embedding
	}
	for _, vec := range out.Vectors {
		if vec == nil {
			return out, malformed(ProviderOpenAI, status, errMissingEmbedding)
		}
	}
	return out, nil
}

type embedError string

func (e embedError) Error() string { return string(e) }

const (
	errBadIndex         = embedError("embedding index out of range or repeated")
	errMissingEmbedding = embedError("an input has no embedding in the answer")
)

// SimulatedDimensions is the length of the simulated model's vectors when
// the request asks none.
const SimulatedDimensions = 256

// Embed answers with hashed bag-of-words vectors: every word (lowercased,
// letters and digits) and every pair of adjacent words adds ±1 at a
// position chosen by its hash, and the vector is scaled to unit length. No
// meaning, but texts that share words are near in cosine similarity, so
// retrieval flows and their tests behave as with a real model, offline and
// deterministically. A text with no word is the zero vector.
func (p *Simulated) Embed(ctx context.Context, r EmbedRequest) (EmbedResponse, error) {
	dims := r.Dimensions
	if dims <= 0 {
		dims = SimulatedDimensions
	}
	enc := encoders[encO200k]
	out := EmbedResponse{Model: r.Model, Simulated: true, Vectors: make([][]float32, len(r.Input))}
	if out.Model == "" {
		out.Model = ProviderSimulated
	}
	for i, s := range r.Input {
		out.Usage.InputTokens += enc.count(s)
		out.Vectors[i] = bagOfWords(s, dims)
	}
	if err := sleep(ctx, p.opts.Latency); err != nil {
		out.Vectors = nil
		out.Usage.Estimated = true
		return out, ctxError(ProviderSimulated, err)
	}
	return out, nil
}

// bagOfWords is the simulated embedding of s.
func bagOfWords(s string, dims int) []float32 {
	vec := make([]float64, dims)
	add := func(term string, weight float64) {
		h := fnv.New64a()
		_, _ = h.Write([]byte(term))
		x := h.Sum64()
		sign := 1.0
		if x>>63 == 1 {
			sign = -1
		}
		vec[x%uint64(dims)] += sign * weight
	}
	ws := strings.FieldsFunc(strings.ToLower(s), func(r rune) bool { return !unicode.IsLetter(r) && !unicode.IsDigit(r) })
	for i, w := range ws {
		add(w, 1)
		if i > 0 {
			add(ws[i-1]+" "+w, 0.5)
		}
	}
	var norm float64
	for _, v := range vec {
		norm += v * v
	}
	out := make([]float32, dims)
	if norm == 0 {
		return out
	}
	norm = math.Sqrt(norm)
	for i, v := range vec {
		out[i] = float32(v / norm)
	}
	return out
}
