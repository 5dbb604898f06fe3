package llm

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
)

// DefaultOpenAIBaseURL is used when a model of provider "openai" names no
// base URL.
const DefaultOpenAIBaseURL = "https://api.openai.com/v1"

// OpenAI talks to an OpenAI-compatible chat completions API (OpenAI itself,
// vLLM, llama.cpp, LiteLLM, Ollama's /v1, …): POST {base}/chat/completions
// with a Bearer key, JSON or server-sent events.
type OpenAI struct {
	base   string // the API root, e.g. https://api.openai.com/v1
	url    string
	key    Secret
	client *http.Client
}

var _ Provider = (*OpenAI)(nil)

// NewOpenAI returns a provider for the API at baseURL (DefaultOpenAIBaseURL
// if empty). An empty key sends no Authorization header, for local servers.
// A nil client uses a shared one tuned for many concurrent calls.
func NewOpenAI(baseURL string, key Secret, client *http.Client) *OpenAI {
	base := trimBase(baseURL, DefaultOpenAIBaseURL)
	return &OpenAI{
		base:   base,
		url:    base + "/chat/completions",
		key:    key,
		client: clientOr(client),
	}
}

// String names the provider without its key.
func (p *OpenAI) String() string { return "openai(" + p.url + ")" }

// Chat makes one non-streamed call.
func (p *OpenAI) Chat(ctx context.Context, r Request) (Response, error) {
	resp, err := postJSON(ctx, p.client, ProviderOpenAI, p.url, p.key, openaiRequest(r, false), false)
	if err != nil {
		return failed(ctx, r, err)
	}
	return p.whole(ctx, r, resp)
}

// whole reads a non-streamed answer.
func (p *OpenAI) whole(ctx context.Context, r Request, resp *http.Response) (Response, error) {
	status := resp.StatusCode
	body, err := readBody(ctx, ProviderOpenAI, resp)
	if err != nil {
		return Response{Model: r.Model, Usage: estimateUsage(r, "", nil)}, err
	}
	var v oaResponse
	if err := json.Unmarshal(body, &v); err != nil {
		return Response{Model: r.Model, Usage: estimateUsage(r, "", nil)}, malformed(ProviderOpenAI, status, err)
	}
	if len(v.Choices) == 0 {
		pe := &ProviderError{Provider: ProviderOpenAI, Status: status}
		if !parseErrorBody(pe, body) {
			pe.Message = "response has no choices"
		}
		pe.Message = redact(pe.Message, p.key)
		return Response{Model: r.Model, Usage: estimateUsage(r, "", nil)}, pe
	}
	c := v.Choices[0]
	out := Response{Model: v.Model, FinishReason: c.FinishReason}
	if out.Model == "" {
		out.Model = r.Model
	}
	if c.Message.Content != nil {
		out.Text = *c.Message.Content
	} else if c.Message.Refusal != nil {
		out.Text = *c.Message.Refusal
	}
	for _, tc := range c.Message.ToolCalls {
		out.ToolCalls = append(out.ToolCalls, ToolCall{ID: tc.ID, Name: tc.Function.Name, Arguments: tc.Function.Arguments})
	}
	if v.Usage != nil {
		out.Usage = Usage{InputTokens: v.Usage.PromptTokens, OutputTokens: v.Usage.CompletionTokens}
	} else {
		// Some compatible servers omit usage.
		out.Usage = estimateUsage(r, out.Text, out.ToolCalls)
	}
	return out, nil
}

// Stream makes one streamed call, asking for the usage chunk at the end.
func (p *OpenAI) Stream(ctx context.Context, r Request, onDelta func(string)) (Response, error) {
	resp, err := postJSON(ctx, p.client, ProviderOpenAI, p.url, p.key, openaiRequest(r, true), true)
	if err != nil {
		return failed(ctx, r, err)
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		// A server that does not stream answers with one JSON body.
		out, err := p.whole(ctx, r, resp)
		if err == nil {
			emit(onDelta, out.Text)
		}
		return out, err
	}
	defer resp.Body.Close()
	var st streamState
	lr := newLineReader(resp.Body)
	for {
		data, err := lr.nextSSEData()
		if err != nil {
			if st.finish != "" && ctx.Err() == nil {
				// The answer was complete; only [DONE] (and maybe the
				// usage chunk) went missing.
				return st.response(r), nil
			}
			return st.response(r), interrupted(ctx, ProviderOpenAI, err)
		}
		if string(data) == "[DONE]" {
			if st.finish == "" && st.text.Len() == 0 && len(st.calls) == 0 {
				return st.response(r), cutError(ProviderOpenAI, nil)
			}
			return st.response(r), nil
		}
		var ch oaChunk
		if err := json.Unmarshal(data, &ch); err != nil {
			return st.response(r), malformed(ProviderOpenAI, resp.StatusCode, err)
		}
		if len(ch.Error) > 0 && string(ch.Error) != "null" {
			pe := &ProviderError{Provider: ProviderOpenAI, Status: resp.StatusCode, Retryable: true}
			parseErrorBody(pe, data)
			pe.Message = redact(pe.Message, p.key)
			return st.response(r), pe
		}
		if ch.Model != "" {
			st.model = ch.Model
		}
		if ch.Usage != nil {
			st.usage = &Usage{InputTokens: ch.Usage.PromptTokens, OutputTokens: ch.Usage.CompletionTokens}
		}
		for _, c := range ch.Choices {
			if c.Index != 0 {
				continue // only one choice is asked for
			}
			if c.Delta.Content != nil && *c.Delta.Content != "" {
				st.text.WriteString(*c.Delta.Content)
				emit(onDelta, *c.Delta.Content)
			} else if c.Delta.Refusal != nil && *c.Delta.Refusal != "" {
				st.text.WriteString(*c.Delta.Refusal)
				emit(onDelta, *c.Delta.Refusal)
			}
			for _, d := range c.Delta.ToolCalls {
				i := -1
				if d.Index != nil {
					i = *d.Index
				}
				tc := st.call(i)
				if d.ID != "" {
					tc.ID = d.ID
				}
				if d.Function.Name != "" {
					tc.Name = d.Function.Name
				}
				tc.Arguments += d.Function.Arguments
			}
			if c.FinishReason != nil && *c.FinishReason != "" {
				st.finish = *c.FinishReason
			}
		}
	}
}

// Wire format of the chat completions API.

type oaRequest struct {
	Model               string           `json:"model"`
	Messages            []oaMessage      `json:"messages"`
	MaxTokens           int              `json:"max_tokens,omitempty"`
	MaxCompletionTokens int              `json:"max_completion_tokens,omitempty"`
	Temperature         *float64         `json:"temperature,omitempty"`
	Stop                []string         `json:"stop,omitempty"`
	Tools               []oaTool         `json:"tools,omitempty"`
	ResponseFormat      *oaFormat        `json:"response_format,omitempty"`
	Stream              bool             `json:"stream,omitempty"`
	StreamOptions       *oaStreamOptions `json:"stream_options,omitempty"`
}

// oaFormat is response_format in its json_schema form (structured outputs).
type oaFormat struct {
	Type       string          `json:"type"`
	JSONSchema *ResponseSchema `json:"json_schema,omitempty"`
}

type oaStreamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type oaMessage struct {
	Role       string       `json:"role"`
	Content    *string      `json:"content"` // null on an assistant turn that only calls tools
	Name       string       `json:"name,omitempty"`
	ToolCallID string       `json:"tool_call_id,omitempty"`
	ToolCalls  []oaToolCall `json:"tool_calls,omitempty"`
}

type oaTool struct {
	Type     string     `json:"type"`
	Function oaFunction `json:"function"`
}

type oaFunction struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
}

type oaToolCall struct {
	Index    *int   `json:"index,omitempty"` // stream deltas only
	ID       string `json:"id,omitempty"`
	Type     string `json:"type,omitempty"`
	Function struct {
		Name      string `json:"name,omitempty"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type oaUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

type oaResponse struct {
	Model   string `json:"model"`
	Choices []struct {
		Message struct {
			Content   *string      `json:"content"`
			Refusal   *string      `json:"refusal"`
			ToolCalls []oaToolCall `json:"tool_calls"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage *oaUsage `json:"usage"`
}

type oaChunk struct {
	Model   string `json:"model"`
	Choices []struct {
		Index int `json:"index"`
		Delta struct {
			Content   *string      `json:"content"`
			Refusal   *string      `json:"refusal"`
			ToolCalls []oaToolCall `json:"tool_calls"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *oaUsage        `json:"usage"`
	Error json.RawMessage `json:"error"`
}

func openaiRequest(r Request, stream bool) oaRequest {
	req := oaRequest{
		Model:       r.Model,
		Messages:    make([]oaMessage, 0, len(r.Messages)),
		Temperature: r.Temperature,
		Stop:        r.Stop,
		Stream:      stream,
	}
	if usesMaxCompletionTokens(r.Model) {
		req.MaxCompletionTokens = r.MaxTokens
	} else {
		req.MaxTokens = r.MaxTokens
	}
	if r.Schema != nil {
		req.ResponseFormat = &oaFormat{Type: "json_schema", JSONSchema: r.Schema}
	}
	if stream {
		req.StreamOptions = &oaStreamOptions{IncludeUsage: true}
	}
	for _, m := range r.Messages {
		om := oaMessage{Role: m.Role, ToolCallID: m.ToolCallID}
		if m.Role != RoleTool {
			om.Name = m.Name
		}
		content := m.Content
		if content != "" || len(m.ToolCalls) == 0 {
			om.Content = &content
		}
		for _, c := range m.ToolCalls {
			tc := oaToolCall{ID: c.ID, Type: "function"}
			tc.Function.Name = c.Name
			tc.Function.Arguments = c.Arguments
			om.ToolCalls = append(om.ToolCalls, tc)
		}
		req.Messages = append(req.Messages, om)
	}
	for _, t := range r.Tools {
		req.Tools = append(req.Tools, oaTool{Type: "function", Function: oaFunction{Name: t.Name, Description: t.Description, Parameters: t.Parameters}})
	}
	return req
}

// usesMaxCompletionTokens is true for OpenAI's reasoning models, which
// reject max_tokens.
func usesMaxCompletionTokens(model string) bool {
	m := strings.ToLower(model)
	if i := strings.LastIndexByte(m, '/'); i >= 0 {
		m = m[i+1:]
	}
	for _, p := range []string{"o1", "o3", "o4"} {
		if m == p || strings.HasPrefix(m, p+"-") {
			return true
		}
	}
	return strings.HasPrefix(m, "gpt-5")
}
