package gateway

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/llm"
	"github.com/sluicehq/sluice/internal/metering"
)

// chatRequest is what Sluice reads of a chat completions request: enough
// to count, govern and route it. Everything else the caller sent
// (response_format, seed, logprobs, tool_choice, …) is passed through
// untouched from the raw body.
type chatRequest struct {
	Model               string          `json:"model"`
	Messages            []chatMessage   `json:"messages"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	N                   *int            `json:"n"`
	Stream              bool            `json:"stream"`
	StreamOptions       *streamOptions  `json:"stream_options"`
	Tools               []chatTool      `json:"tools"`
	Temperature         *float64        `json:"temperature"`
	Stop                json.RawMessage `json:"stop"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

type chatMessage struct {
	Role       string          `json:"role"`
	Content    json.RawMessage `json:"content"`
	Name       string          `json:"name"`
	ToolCallID string          `json:"tool_call_id"`
	ToolCalls  []struct {
		ID       string `json:"id"`
		Type     string `json:"type"`
		Function struct {
			Name      string `json:"name"`
			Arguments string `json:"arguments"`
		} `json:"function"`
	} `json:"tool_calls"`
}

type chatTool struct {
	Type     string `json:"type"`
	Function struct {
		Name        string          `json:"name"`
		Description string          `json:"description"`
		Parameters  json.RawMessage `json:"parameters"`
	} `json:"function"`
}

// imageTokens is what an image part of a message is counted as before the
// call (a low-detail image); the provider's report settles the truth.
const imageTokens = 85

// messages converts the request's messages for counting and for providers
// that do not speak the OpenAI API; extra counts image parts.
func (c *chatRequest) messages() (msgs []llm.Message, extra int, err error) {
	msgs = make([]llm.Message, 0, len(c.Messages))
	for i, m := range c.Messages {
		text, images, err := contentText(m.Content)
		if err != nil {
			return nil, 0, fieldError("messages["+itoa(i)+"].content", err.Error())
		}
		extra += images * imageTokens
		lm := llm.Message{Role: m.Role, Content: text, Name: m.Name, ToolCallID: m.ToolCallID}
		for _, tc := range m.ToolCalls {
			lm.ToolCalls = append(lm.ToolCalls, llm.ToolCall{ID: tc.ID, Name: tc.Function.Name, Arguments: tc.Function.Arguments})
		}
		msgs = append(msgs, lm)
	}
	return msgs, extra, nil
}

func (c *chatRequest) tools() []llm.Tool {
	out := make([]llm.Tool, 0, len(c.Tools))
	for _, t := range c.Tools {
		out = append(out, llm.Tool{Name: t.Function.Name, Description: t.Function.Description, Parameters: t.Function.Parameters})
	}
	return out
}

// contentText reads a message's content: a string, null, or a list of
// parts whose text parts are joined (images are counted apart).
func contentText(raw json.RawMessage) (string, int, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", 0, nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", 0, err
		}
		return s, 0, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", 0, errorString("must be a string or an array of content parts")
	}
	var b strings.Builder
	images := 0
	for _, p := range parts {
		switch p.Type {
		case "text", "input_text":
			b.WriteString(p.Text)
		default:
			images++
		}
	}
	return b.String(), images, nil
}

func (c *chatRequest) stop() []string {
	if len(c.Stop) == 0 || string(c.Stop) == "null" {
		return nil
	}
	var one string
	if json.Unmarshal(c.Stop, &one) == nil {
		return []string{one}
	}
	var many []string
	_ = json.Unmarshal(c.Stop, &many)
	return many
}

// validate checks what Sluice relies on, naming the parameter at fault.
func (c *chatRequest) validate() error {
	switch {
	case c.Model == "":
		return fieldError("model", "you must provide a model parameter")
	case len(c.Messages) == 0:
		return fieldError("messages", "'messages' must contain at least one message")
	case c.N != nil && (*c.N < 1 || *c.N > 128):
		return fieldError("n", "'n' must be between 1 and 128")
	case c.MaxTokens != nil && *c.MaxTokens < 1:
		return fieldError("max_tokens", "'max_tokens' must be at least 1")
	case c.MaxCompletionTokens != nil && *c.MaxCompletionTokens < 1:
		return fieldError("max_completion_tokens", "'max_completion_tokens' must be at least 1")
	}
	for i, m := range c.Messages {
		switch m.Role {
		case "system", "developer", "user", "assistant", "tool", "function":
		default:
			return fieldError("messages["+itoa(i)+"].role", "'"+m.Role+"' is not one of system, developer, user, assistant, tool")
		}
	}
	return nil
}

func (c *chatRequest) maxTokens() int {
	switch {
	case c.MaxCompletionTokens != nil:
		return *c.MaxCompletionTokens
	case c.MaxTokens != nil:
		return *c.MaxTokens
	}
	return 0
}

func (h *Handler) chat(w http.ResponseWriter, r *http.Request) {
	var req chatRequest
	cl, body, ok := h.begin(w, r, &req)
	if !ok {
		return
	}
	if err := req.validate(); err != nil {
		h.fail(w, r, err)
		return
	}
	cands, ok := h.route(w, r, cl, req.Model)
	if !ok {
		return
	}
	msgs, extra, err := req.messages()
	if err != nil {
		h.fail(w, r, err)
		return
	}
	lreq := llm.Request{Messages: msgs, Tools: req.tools(), MaxTokens: req.maxTokens(), Temperature: req.Temperature, Stop: req.stop()}
	n := 1
	if req.N != nil {
		n = *req.N
	}
	includeUsage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
	call := h.call(w, cl, "chat_completion", cands, lreq)
	call.InputTokens = cands[0].CountRequest(lreq) + extra
	call.Choices = n
	if h.LogPrompts {
		call.Prompt = lastUser(msgs)
	}
	call.Invoke = func(ctx context.Context, a gate.Attempt) (gate.Outcome, error) {
		if f := a.Model.Forwarder(); f != nil {
			edited, err := editBody(body, a.Model, a.MaxTokens, req, req.Stream)
			if err != nil {
				return gate.Outcome{}, err
			}
			p := &pass{w: w, model: a.Model, input: call.InputTokens, includeUsage: includeUsage, started: a.Started}
			if req.Stream {
				return p.stream(ctx, f, "/chat/completions", edited)
			}
			return p.whole(ctx, f, "/chat/completions", edited)
		}
		if n > 1 {
			return gate.Outcome{}, fieldError("n", "model "+a.Model.Name()+" answers one choice per request; 'n' must be 1")
		}
		return translateChat(ctx, w, a, lreq, req.Stream, includeUsage)
	}
	res, err := h.Gate.Do(r.Context(), call)
	if err != nil && !res.Committed {
		h.fail(w, r, err)
	}
}

// call builds the governed call common to the endpoints.
func (h *Handler) call(w http.ResponseWriter, cl *caller, kind string, cands []*llm.Model, lreq llm.Request) gate.Call {
	def := h.MaxTokensDefault
	if def <= 0 {
		def = 4096
	}
	ttl := h.TTL
	if ttl <= 0 {
		ttl = 15 * time.Minute
	}
	return gate.Call{
		Who: cl.who, Kind: kind, Model: cands[0], Candidates: cands, Request: lreq, Requests: 1, Concurrency: true,
		MaxTokensDefault: def, TTL: ttl, Field: "max_tokens", Subject: "the request", QueueUsage: h.QueueUsage,
		OnAdmit: func(adm *metering.Admission) {
			setRateHeaders(w, &adm.Ticket)
			adm.Waited.SetHeaders(w.Header())
		},
		RequestID: w.Header().Get("X-Request-Id"), KeyID: cl.p.KeyID, KeyPrefix: cl.p.KeyPrefix,
	}
}

// lastUser is the last user message: the prompt, for a call log that
// logs prompts.
func lastUser(msgs []llm.Message) string {
	for i := len(msgs) - 1; i >= 0; i-- {
		if msgs[i].Role == llm.RoleUser {
			return msgs[i].Content
		}
	}
	return ""
}
