package gateway

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"net/http"
	"strings"

	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/llm"
)

// completionRequest is what Sluice reads of a legacy completions request.
type completionRequest struct {
	Model         string          `json:"model"`
	Prompt        json.RawMessage `json:"prompt"`
	MaxTokens     *int            `json:"max_tokens"`
	N             *int            `json:"n"`
	BestOf        *int            `json:"best_of"`
	Stream        bool            `json:"stream"`
	StreamOptions *streamOptions  `json:"stream_options"`
	Temperature   *float64        `json:"temperature"`
	Stop          json.RawMessage `json:"stop"`
}

// texts reads a prompt or an embeddings input: a string, a list of
// strings, a list of token ids or a list of such lists. Token ids count
// one token each (tokens).
func texts(param string, raw json.RawMessage) (out []string, tokens int, err error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, 0, fieldError(param, "you must provide '"+param+"'")
	}
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}, 0, nil
	}
	var many []json.RawMessage
	if json.Unmarshal(raw, &many) != nil {
		return nil, 0, fieldError(param, "'"+param+"' must be a string, an array of strings or an array of token arrays")
	}
	for i, item := range many {
		var s string
		var ids []int
		var id int
		switch {
		case json.Unmarshal(item, &s) == nil:
			out = append(out, s)
		case json.Unmarshal(item, &ids) == nil:
			tokens += len(ids)
		case json.Unmarshal(item, &id) == nil:
			tokens++
		default:
			return nil, 0, fieldError(param+"["+itoa(i)+"]", "must be a string or an array of token ids")
		}
	}
	return out, tokens, nil
}

func (h *Handler) completions(w http.ResponseWriter, r *http.Request) {
	var req completionRequest
	cl, body, ok := h.begin(w, r, &req)
	if !ok {
		return
	}
	prompts, tokenIDs, err := texts("prompt", req.Prompt)
	switch {
	case err != nil:
	case req.Model == "":
		err = fieldError("model", "you must provide a model parameter")
	case req.N != nil && (*req.N < 1 || *req.N > 128):
		err = fieldError("n", "'n' must be between 1 and 128")
	case req.BestOf != nil && (*req.BestOf < 1 || *req.BestOf > 20):
		err = fieldError("best_of", "'best_of' must be between 1 and 20")
	case req.MaxTokens != nil && *req.MaxTokens < 1:
		err = fieldError("max_tokens", "'max_tokens' must be at least 1")
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	cands, ok := h.route(w, r, cl, req.Model)
	if !ok {
		return
	}
	in := tokenIDs
	for _, p := range prompts {
		in += cands[0].CountText(p)
	}
	choices := max(1, len(prompts)+min(tokenIDs, 1))
	if req.N != nil {
		choices *= *req.N
	}
	if req.BestOf != nil && *req.BestOf > 1 {
		choices *= *req.BestOf // best_of generates them all server-side
	}
	lreq := llm.Request{Messages: []llm.Message{{Role: llm.RoleUser, Content: strings.Join(prompts, "\n")}}, Temperature: req.Temperature}
	if req.MaxTokens != nil {
		lreq.MaxTokens = *req.MaxTokens
	} else {
		lreq.MaxTokens = 16 // the completions API's default
	}
	var chat chatRequest
	chat.MaxTokens = req.MaxTokens
	call := h.call(w, cl, "completion", cands, lreq)
	call.InputTokens = max(in, 1)
	call.Choices = choices
	if h.LogPrompts {
		call.Prompt = strings.Join(prompts, "\n")
	}
	includeUsage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
	call.Invoke = func(ctx context.Context, a gate.Attempt) (gate.Outcome, error) {
		if f := a.Model.Forwarder(); f != nil {
			edited, err := editBody(body, a.Model, a.MaxTokens, completionAsChat(req), req.Stream)
			if err != nil {
				return gate.Outcome{}, err
			}
			p := &pass{w: w, model: a.Model, input: call.InputTokens, includeUsage: includeUsage, started: a.Started}
			if req.Stream {
				return p.stream(ctx, f, "/completions", edited)
			}
			return p.whole(ctx, f, "/completions", edited)
		}
		if choices > 1 || tokenIDs > 0 {
			return gate.Outcome{}, fieldError("prompt", "model "+a.Model.Name()+" takes one text prompt and answers one choice")
		}
		return translate(ctx, w, a, lreq, req.Stream, includeUsage, true)
	}
	res, err := h.Gate.Do(r.Context(), call)
	if err != nil && !res.Committed {
		h.fail(w, r, err)
	}
}

// completionAsChat carries the fields editBody reads.
func completionAsChat(c completionRequest) chatRequest {
	return chatRequest{MaxTokens: c.MaxTokens}
}

// ---- embeddings ----

type embeddingRequest struct {
	Model          string          `json:"model"`
	Input          json.RawMessage `json:"input"`
	EncodingFormat string          `json:"encoding_format"`
	Dimensions     *int            `json:"dimensions"`
}

func (h *Handler) embeddings(w http.ResponseWriter, r *http.Request) {
	var req embeddingRequest
	cl, body, ok := h.begin(w, r, &req)
	if !ok {
		return
	}
	inputs, tokenIDs, err := texts("input", req.Input)
	switch {
	case err != nil:
	case req.Model == "":
		err = fieldError("model", "you must provide a model parameter")
	case len(inputs) == 0 && tokenIDs == 0:
		err = fieldError("input", "'input' must not be empty")
	case len(inputs)+tokenIDs > 2048 && tokenIDs == 0:
		err = fieldError("input", "'input' may hold at most 2048 items")
	case req.Dimensions != nil && (*req.Dimensions < 1 || *req.Dimensions > 8192):
		err = fieldError("dimensions", "'dimensions' must be between 1 and 8192")
	case req.EncodingFormat != "" && req.EncodingFormat != "float" && req.EncodingFormat != "base64":
		err = fieldError("encoding_format", "'encoding_format' must be float or base64")
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	cands, ok := h.route(w, r, cl, req.Model)
	if !ok {
		return
	}
	in := tokenIDs
	for _, s := range inputs {
		in += cands[0].CountText(s)
	}
	call := h.call(w, cl, "embedding", cands, llm.Request{})
	call.InputTokens, call.NoOutput = max(in, 1), true
	call.Invoke = func(ctx context.Context, a gate.Attempt) (gate.Outcome, error) {
		if f := a.Model.Forwarder(); f != nil {
			edited, err := editBody(body, a.Model, 0, chatRequest{}, false)
			if err != nil {
				return gate.Outcome{}, err
			}
			p := &pass{w: w, model: a.Model, input: call.InputTokens, started: a.Started, noOutput: true}
			return p.whole(ctx, f, "/embeddings", edited)
		}
		if a.Model.Config().Provider != llm.ProviderSimulated {
			return gate.Outcome{}, fieldError("model", "model "+a.Model.Name()+" ("+a.Model.Config().Provider+
				") does not serve embeddings through Sluice; use an OpenAI-compatible deployment")
		}
		return simulatedEmbeddings(ctx, w, a, req, inputs, call.InputTokens)
	}
	res, err := h.Gate.Do(r.Context(), call)
	if err != nil && !res.Committed {
		h.fail(w, r, err)
	}
}

// simulatedEmbeddings answers with the simulated model's embeddings
// (llm.Simulated.Embed: deterministic hashed bag-of-words vectors, so that
// texts sharing words are near), so that clients that store and search
// embeddings run without a provider. The usage is the prompt as counted.
func simulatedEmbeddings(ctx context.Context, w http.ResponseWriter, a gate.Attempt, req embeddingRequest, inputs []string, tokens int) (gate.Outcome, error) {
	dims := 256
	if req.Dimensions != nil {
		dims = *req.Dimensions
	}
	type item struct {
		Object    string `json:"object"`
		Index     int    `json:"index"`
		Embedding any    `json:"embedding"` // floats, or base64 of little-endian float32s
	}
	r, err := a.Model.Embed(ctx, llm.EmbedRequest{Input: inputs, Dimensions: dims})
	if err != nil {
		return gate.Outcome{Response: llm.Response{Usage: r.Usage}}, err
	}
	data := make([]item, 0, len(inputs))
	for i, vec := range r.Vectors {
		var emb any = vec
		if req.EncodingFormat == "base64" {
			raw := make([]byte, 4*len(vec))
			for j, v := range vec {
				binary.LittleEndian.PutUint32(raw[4*j:], math.Float32bits(v))
			}
			emb = base64.StdEncoding.EncodeToString(raw)
		}
		data = append(data, item{Object: "embedding", Index: i, Embedding: emb})
	}
	a.Started()
	u := llm.Usage{InputTokens: tokens}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data, "model": a.Model.Name(),
		"usage": map[string]int{"prompt_tokens": tokens, "total_tokens": tokens}})
	return gate.Outcome{Response: llm.Response{Usage: u}, Committed: true}, nil
}
