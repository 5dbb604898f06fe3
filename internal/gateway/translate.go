package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/gate"
	"github.com/sluicehq/sluice/internal/llm"
)

// Answers in OpenAI's format from providers that do not speak it (the
// simulated model, Ollama's native API, Hugging Face): the request goes
// through llm.Provider, the answer is written as OpenAI would.

type oaUsage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

func usageOut(u llm.Usage) *oaUsage {
	return &oaUsage{PromptTokens: u.InputTokens, CompletionTokens: u.OutputTokens, TotalTokens: u.Total()}
}

type oaToolCall struct {
	Index    *int   `json:"index,omitempty"`
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

type oaMessage struct {
	Role      string       `json:"role,omitempty"`
	Content   *string      `json:"content,omitempty"`
	ToolCalls []oaToolCall `json:"tool_calls,omitempty"`
}

type oaChoice struct {
	Index        int        `json:"index"`
	Message      *oaMessage `json:"message,omitempty"`
	Delta        *oaMessage `json:"delta,omitempty"`
	Text         *string    `json:"text,omitempty"`
	FinishReason *string    `json:"finish_reason"`
}

type oaCompletion struct {
	ID      string     `json:"id"`
	Object  string     `json:"object"`
	Created int64      `json:"created"`
	Model   string     `json:"model"`
	Choices []oaChoice `json:"choices"`
	Usage   *oaUsage   `json:"usage,omitempty"`
}

func newID(prefix string) string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func toolCallsOut(calls []llm.ToolCall, indexed bool) []oaToolCall {
	out := make([]oaToolCall, 0, len(calls))
	for i, c := range calls {
		tc := oaToolCall{ID: c.ID, Type: "function"}
		if indexed {
			tc.Index = &i
		}
		tc.Function.Name, tc.Function.Arguments = c.Name, c.Arguments
		out = append(out, tc)
	}
	return out
}

func finish(r llm.Response) *string {
	f := r.FinishReason
	if f == "" {
		f = llm.FinishStop
	}
	return &f
}

// translateChat answers a chat completion from a provider that does not
// speak the OpenAI API, streamed or whole. completion writes the legacy
// text completion shape instead.
func translateChat(ctx context.Context, w http.ResponseWriter, a gate.Attempt, req llm.Request, stream, includeUsage bool) (gate.Outcome, error) {
	return translate(ctx, w, a, req, stream, includeUsage, false)
}

func translate(ctx context.Context, w http.ResponseWriter, a gate.Attempt, req llm.Request, stream, includeUsage, completion bool) (gate.Outcome, error) {
	req.MaxTokens = a.MaxTokens
	id, created, model := newID("chatcmpl-"), time.Now().Unix(), a.Model.Name()
	object := "chat.completion"
	if completion {
		id, object = newID("cmpl-"), "text_completion"
	}
	if !stream || len(req.Tools) > 0 {
		resp, err := a.Model.Chat(ctx, req)
		if err != nil {
			return gate.Outcome{Response: resp}, err
		}
		a.Started()
		ch := oaChoice{FinishReason: finish(resp)}
		if completion {
			ch.Text = &resp.Text
		} else {
			msg := &oaMessage{Role: llm.RoleAssistant, ToolCalls: toolCallsOut(resp.ToolCalls, stream)}
			if resp.Text != "" || len(resp.ToolCalls) == 0 {
				msg.Content = &resp.Text
			}
			ch.Message = msg
		}
		if !stream {
			writeJSON(w, http.StatusOK, oaCompletion{ID: id, Object: object, Created: created, Model: model, Choices: []oaChoice{ch}, Usage: usageOut(resp.Usage)})
			return gate.Outcome{Response: resp, Committed: true}, nil
		}
		// Tools on a stream: the answer in one chunk.
		ch.Delta, ch.Message = ch.Message, nil
		s := newSSE(w)
		s.send(oaCompletion{ID: id, Object: object + ".chunk", Created: created, Model: model, Choices: []oaChoice{ch}})
		if includeUsage {
			s.send(oaCompletion{ID: id, Object: object + ".chunk", Created: created, Model: model, Choices: []oaChoice{}, Usage: usageOut(resp.Usage)})
		}
		s.done()
		return gate.Outcome{Response: resp, Committed: true}, nil
	}
	var s *sse
	chunkObject := object + ".chunk"
	if completion {
		chunkObject = object
	}
	gone := false
	resp, err := a.Model.Stream(ctx, req, func(delta string) {
		if s == nil {
			a.Started()
			s = newSSE(w)
			if !completion {
				role := llm.RoleAssistant
				empty := ""
				s.send(oaCompletion{ID: id, Object: chunkObject, Created: created, Model: model,
					Choices: []oaChoice{{Delta: &oaMessage{Role: role, Content: &empty}}}})
			}
		}
		ch := oaChoice{}
		if completion {
			ch.Text = &delta
		} else {
			ch.Delta = &oaMessage{Content: &delta}
		}
		if !s.send(oaCompletion{ID: id, Object: chunkObject, Created: created, Model: model, Choices: []oaChoice{ch}}) {
			gone = true
		}
	})
	if s == nil && err != nil {
		return gate.Outcome{Response: resp}, err
	}
	if s == nil {
		a.Started()
		s = newSSE(w)
	}
	if err != nil {
		if !gone {
			s.raw(streamError("the model provider's stream broke off: the answer is incomplete"))
		}
		return gate.Outcome{Response: resp, Committed: true}, err
	}
	ch := oaChoice{FinishReason: finish(resp)}
	if completion {
		empty := ""
		ch.Text = &empty
	} else {
		ch.Delta = &oaMessage{}
	}
	s.send(oaCompletion{ID: id, Object: chunkObject, Created: created, Model: model, Choices: []oaChoice{ch}})
	if includeUsage {
		s.send(oaCompletion{ID: id, Object: chunkObject, Created: created, Model: model, Choices: []oaChoice{}, Usage: usageOut(resp.Usage)})
	}
	s.done()
	return gate.Outcome{Response: resp, Committed: true}, nil
}

// sse writes a server-sent event stream.
type sse struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func newSSE(w http.ResponseWriter) *sse {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	return &sse{w: w, rc: http.NewResponseController(w)}
}

func (s *sse) send(v any) bool {
	b, err := json.Marshal(v)
	if err != nil {
		return false
	}
	return s.raw(b)
}

func (s *sse) raw(b []byte) bool {
	buf := make([]byte, 0, len(b)+8)
	buf = append(append(append(buf, "data: "...), b...), "\n\n"...)
	if _, err := s.w.Write(buf); err != nil {
		return false
	}
	return s.rc.Flush() == nil
}

func (s *sse) done() { s.raw([]byte("[DONE]")) }

// fieldError is a 400 naming the request parameter at fault.
func fieldError(param, msg string) error { return errs.Field(errs.Invalid, param, "%s", msg) }

type errorString string

func (e errorString) Error() string { return string(e) }

func itoa(i int) string { return strconv.Itoa(i) }
