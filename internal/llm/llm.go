// Package llm owns Sluice's view of language models: one small Provider
// interface with implementations for OpenAI-compatible servers, Ollama,
// Hugging Face text generation and a built-in simulated model; the model
// table operators configure (providers, prices, GPU use, fallbacks, keys);
// and token counting, so the quota engine can reserve tokens before a call
// and settle what the provider reports after it.
//
// Nothing here decides whether a call may happen: callers reserve quota
// first, call a Provider, and settle Response.Usage on every exit path. For
// that reason Chat and Stream return the usage they know about together with
// any error (see Provider).
package llm

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"time"
)

// Message roles.
const (
	RoleSystem    = "system"
	RoleUser      = "user"
	RoleAssistant = "assistant"
	RoleTool      = "tool"
)

// Finish reasons, normalised across providers.
const (
	FinishStop      = "stop"       // the model ended its answer or hit a stop sequence
	FinishLength    = "length"     // MaxTokens (or the context window) cut the answer
	FinishToolCalls = "tool_calls" // the model asks for tools to be run
)

// Message is one turn of a conversation.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
	// Name is the optional participant name (OpenAI "name"); on a tool
	// result it may carry the tool's name.
	Name string `json:"name,omitempty"`
	// ToolCallID links a RoleTool message to the ToolCall it answers.
	ToolCallID string `json:"tool_call_id,omitempty"`
	// ToolCalls are the calls an assistant message asked for.
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
}

// ToolCall is a model's request to run one tool.
type ToolCall struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Arguments is JSON text, as the model wrote it (it may be invalid JSON:
	// models make mistakes, and the tool runner reports them).
	Arguments string `json:"arguments"`
}

// Tool is a function the model may call.
type Tool struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"` // JSON schema
}

// Request is one chat call.
type Request struct {
	// Model is the model name the provider knows. Model.Chat fills it in.
	Model    string
	Messages []Message
	// MaxTokens caps output tokens; 0 leaves it to the provider.
	MaxTokens int
	// Temperature is nil for the provider's default.
	Temperature *float64
	Tools       []Tool
	Stop        []string
	// Schema, when set, asks for an answer that is one JSON value
	// conforming to a JSON schema: the provider's structured-output mode
	// where it has one (OpenAI's response_format, Ollama's format), else
	// an instruction in the conversation (SchemaInstruction). Either way
	// the caller validates the answer.
	Schema *ResponseSchema
}

// ResponseSchema is a JSON schema an answer must conform to.
type ResponseSchema struct {
	// Name names the schema (OpenAI requires one: letters, digits, _ and -).
	Name   string          `json:"name"`
	Schema json.RawMessage `json:"schema"`
	// Strict asks the provider to hold the answer to the schema exactly
	// (OpenAI's strict mode, which needs every object closed).
	Strict bool `json:"strict,omitempty"`
}

// SchemaInstruction returns msgs with a system turn that asks for JSON
// conforming to rs: for providers without a structured-output mode.
func SchemaInstruction(msgs []Message, rs *ResponseSchema) []Message {
	if rs == nil {
		return msgs
	}
	note := "Answer with only one JSON value, no prose and no code fence, that conforms to this JSON schema:\n" + string(rs.Schema)
	out := make([]Message, 0, len(msgs)+1)
	out = append(out, msgs...)
	for i := range out {
		if out[i].Role == RoleSystem {
			out[i].Content += "\n\n" + note
			return out
		}
	}
	return append([]Message{{Role: RoleSystem, Content: note}}, msgs...)
}

// Usage is what one call consumed.
type Usage struct {
	InputTokens  int
	OutputTokens int
	// GPU is the compute time the provider reported (Ollama's
	// total_duration), 0 when it reports none. Whether it is charged as GPU
	// time, and whether wall time stands in when it is 0, is the caller's
	// decision (ModelConfig.GPU).
	GPU time.Duration
	// Estimated is true when some count is Sluice's estimate rather than the
	// provider's report: a provider that reports no usage (Hugging Face), or
	// a call cut short by an error or cancellation.
	Estimated bool
}

// Total is input plus output tokens, the unit of token budgets.
func (u Usage) Total() int { return u.InputTokens + u.OutputTokens }

// Response is the result of one call.
type Response struct {
	Text         string
	ToolCalls    []ToolCall
	Usage        Usage
	FinishReason string // FinishStop, FinishLength, FinishToolCalls, or the provider's own word
	Simulated    bool   // produced by the simulated provider, not a model
	Model        string // the model that answered, as the provider names it
}

// Provider is a model backend.
//
// Both methods return usage on every exit path, because quota must be
// settled even when a call fails:
//   - success: the provider's reported usage (estimated where it reports none);
//   - an HTTP error answer (4xx/5xx) or a failure to connect: zero usage,
//     since nothing was generated and providers do not bill it;
//   - cancellation, a deadline, or a stream cut off after the provider
//     accepted the request: the input tokens and the output received so far,
//     Estimated, together with the error. Cancellation errors satisfy
//     errors.Is(err, context.Canceled) (or DeadlineExceeded).
type Provider interface {
	Chat(ctx context.Context, r Request) (Response, error)
	// Stream calls onDelta (when not nil) with each piece of answer text as
	// it arrives, on the calling goroutine, and returns the full response
	// with usage at the end. On error or cancellation it returns what was
	// received so far with the error. onDelta should not block for long:
	// the provider's connection waits while it runs.
	Stream(ctx context.Context, r Request, onDelta func(string)) (Response, error)
}

// defaultHTTPClient is shared by the providers a Registry builds. It has no
// overall timeout, because a stream may rightly last minutes; callers bound
// calls with their context. Idle connections per host are raised well above
// net/http's 2 so a busy gateway reuses connections to its upstream instead
// of opening one per request.
var defaultHTTPClient = &http.Client{Transport: newTransport()}

func newTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 512
	t.MaxIdleConnsPerHost = 256
	t.IdleConnTimeout = 90 * time.Second
	t.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.ResponseHeaderTimeout = 0 // a local model may take minutes to load before it answers
	return t
}

func clientOr(c *http.Client) *http.Client {
	if c == nil {
		return defaultHTTPClient
	}
	return c
}
