package llm

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// DefaultOllamaBaseURL is used when a model of provider "ollama" names no
// base URL.
const DefaultOllamaBaseURL = "http://127.0.0.1:11434"

// Ollama talks to Ollama's native chat API: POST {base}/api/chat, one JSON
// object, or newline-delimited JSON objects when streaming, the last with
// "done": true and the counts and timings.
//
// Usage.GPU is Ollama's total_duration: the compute time Ollama reports for
// the call (model load, prompt evaluation and generation). Ollama does not
// say whether a GPU did the work; ModelConfig.GPU decides whether it is
// charged as GPU time. Ollama omits prompt_eval_count when the whole prompt
// came from its cache; the input is then estimated. Ollama gives tool calls
// no ids, so they are numbered "call_0", "call_1", … in answer order.
type Ollama struct {
	url    string
	key    Secret
	client *http.Client
}

var _ Provider = (*Ollama)(nil)

// NewOllama returns a provider for the Ollama server at baseURL
// (DefaultOllamaBaseURL if empty). Ollama needs no key; one is sent as a
// Bearer token when set, for servers behind an authenticating proxy.
func NewOllama(baseURL string, key Secret, client *http.Client) *Ollama {
	return &Ollama{url: trimBase(baseURL, DefaultOllamaBaseURL) + "/api/chat", key: key, client: clientOr(client)}
}

// String names the provider without its key.
func (p *Ollama) String() string { return "ollama(" + p.url + ")" }

// Chat makes one call with "stream": false.
func (p *Ollama) Chat(ctx context.Context, r Request) (Response, error) {
	resp, err := postJSON(ctx, p.client, ProviderOllama, p.url, p.key, ollamaRequest(r, false), false)
	if err != nil {
		return failed(ctx, r, err)
	}
	status := resp.StatusCode
	body, err := readBody(ctx, ProviderOllama, resp)
	if err != nil {
		return Response{Model: r.Model, Usage: estimateUsage(r, "", nil)}, err
	}
	var ch olChunk
	if err := json.Unmarshal(body, &ch); err != nil {
		return Response{Model: r.Model, Usage: estimateUsage(r, "", nil)}, malformed(ProviderOllama, status, err)
	}
	if ch.Error != "" {
		return Response{Model: r.Model, Usage: estimateUsage(r, "", nil)},
			&ProviderError{Provider: ProviderOllama, Status: status, Message: redact(ch.Error, p.key)}
	}
	var st streamState
	p.apply(&st, &ch, r)
	return st.response(r), nil
}

// Stream makes one call with "stream": true.
func (p *Ollama) Stream(ctx context.Context, r Request, onDelta func(string)) (Response, error) {
	resp, err := postJSON(ctx, p.client, ProviderOllama, p.url, p.key, ollamaRequest(r, true), true)
	if err != nil {
		return failed(ctx, r, err)
	}
	defer resp.Body.Close()
	var st streamState
	lr := newLineReader(resp.Body)
	for {
		line, err := lr.next()
		if err != nil {
			return st.response(r), interrupted(ctx, ProviderOllama, err)
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		var ch olChunk
		if err := json.Unmarshal(line, &ch); err != nil {
			return st.response(r), malformed(ProviderOllama, resp.StatusCode, err)
		}
		if ch.Error != "" {
			return st.response(r), &ProviderError{Provider: ProviderOllama, Status: resp.StatusCode, Message: redact(ch.Error, p.key), Retryable: true}
		}
		emit(onDelta, ch.Message.Content)
		p.apply(&st, &ch, r)
		if ch.Done {
			return st.response(r), nil
		}
	}
}

// apply adds one answer object to st.
func (p *Ollama) apply(st *streamState, ch *olChunk, r Request) {
	if ch.Model != "" {
		st.model = ch.Model
	}
	st.text.WriteString(ch.Message.Content)
	for _, tc := range ch.Message.ToolCalls {
		c := st.call(-1)
		c.ID = tc.ID
		if c.ID == "" {
			c.ID = "call_" + strconv.Itoa(len(st.calls)-1)
		}
		c.Name = tc.Function.Name
		c.Arguments = compactJSON(tc.Function.Arguments)
	}
	if !ch.Done {
		return
	}
	switch {
	case len(st.calls) > 0:
		st.finish = FinishToolCalls
	case ch.DoneReason == "":
		st.finish = FinishStop
	default:
		st.finish = ch.DoneReason
	}
	u := Usage{
		InputTokens:  ch.PromptEvalCount,
		OutputTokens: ch.EvalCount,
		GPU:          time.Duration(ch.TotalDuration),
	}
	if u.InputTokens == 0 && len(r.Messages) > 0 {
		// Omitted when the prompt was served from Ollama's cache.
		u.InputTokens = CountRequest(r)
		u.Estimated = true
	}
	st.usage = &u
}

// Wire format of Ollama's /api/chat.

type olRequest struct {
	Model    string      `json:"model"`
	Messages []olMessage `json:"messages"`
	Stream   bool        `json:"stream"` // Ollama streams unless told false
	Tools    []oaTool    `json:"tools,omitempty"`
	Options  *olOptions  `json:"options,omitempty"`
	// Format is a JSON schema the answer must follow (structured outputs).
	Format json.RawMessage `json:"format,omitempty"`
}

type olOptions struct {
	NumPredict  int      `json:"num_predict,omitempty"`
	Temperature *float64 `json:"temperature,omitempty"`
	Stop        []string `json:"stop,omitempty"`
}

type olMessage struct {
	Role      string       `json:"role"`
	Content   string       `json:"content"`
	ToolCalls []olToolCall `json:"tool_calls,omitempty"`
	ToolName  string       `json:"tool_name,omitempty"`
}

type olToolCall struct {
	ID       string `json:"id,omitempty"`
	Function struct {
		Index     *int            `json:"index,omitempty"`
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"` // an object, not JSON text
	} `json:"function"`
}

type olChunk struct {
	Model   string `json:"model"`
	Message struct {
		Content   string       `json:"content"`
		ToolCalls []olToolCall `json:"tool_calls"`
	} `json:"message"`
	Done            bool   `json:"done"`
	DoneReason      string `json:"done_reason"`
	TotalDuration   int64  `json:"total_duration"` // nanoseconds
	PromptEvalCount int    `json:"prompt_eval_count"`
	EvalCount       int    `json:"eval_count"`
	Error           string `json:"error"`
}

func ollamaRequest(r Request, stream bool) olRequest {
	req := olRequest{Model: r.Model, Stream: stream, Messages: make([]olMessage, 0, len(r.Messages))}
	if r.MaxTokens > 0 || r.Temperature != nil || len(r.Stop) > 0 {
		req.Options = &olOptions{NumPredict: r.MaxTokens, Temperature: r.Temperature, Stop: r.Stop}
	}
	for _, m := range r.Messages {
		om := olMessage{Role: m.Role, Content: m.Content}
		if m.Role == RoleTool {
			om.ToolName = m.Name
		}
		for _, c := range m.ToolCalls {
			var tc olToolCall
			tc.Function.Name = c.Name
			tc.Function.Arguments = argumentsObject(c.Arguments)
			om.ToolCalls = append(om.ToolCalls, tc)
		}
		req.Messages = append(req.Messages, om)
	}
	for _, t := range r.Tools {
		req.Tools = append(req.Tools, oaTool{Type: "function", Function: oaFunction{Name: t.Name, Description: t.Description, Parameters: t.Parameters}})
	}
	if r.Schema != nil {
		req.Format = r.Schema.Schema // Ollama takes the schema itself as "format"
	}
	return req
}

// argumentsObject turns JSON text into the object Ollama expects; text
// that is not a JSON object becomes {} (Ollama rejects anything else).
func argumentsObject(args string) json.RawMessage {
	b := bytes.TrimSpace([]byte(args))
	if len(b) > 0 && b[0] == '{' && json.Valid(b) {
		return b
	}
	return json.RawMessage("{}")
}

func compactJSON(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return "{}"
	}
	var text string
	if raw[0] == '"' && json.Unmarshal(raw, &text) == nil {
		return text // some servers send the arguments as JSON text
	}
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}
